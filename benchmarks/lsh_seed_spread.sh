#!/usr/bin/env bash
# Spread of the randomised Hamming SimHash and its faiss twin (IndexLSH) over codec seeds, on the same
# cached embeddings (BENCHMARKS.md, "seed spread"). Both draw a random rotation, so a single seed's
# difference between them is partly luck; this measures how much.
# Usage: benchmarks/lsh_seed_spread.sh [PATH_TO_INTERACTIONS] [SEEDS...]
set -euo pipefail
DATA="${1:-${REELPACK_DATA:-../shared/data/amazon-book/interactions.txt}}"
shift || true
SEEDS="${*:-0 1 2 3 4}"
for DIM in 64 128; do
  for S in $SEEDS; do
    reelpack bench --data "$DATA" --dim "$DIM" --codecs simhash128-hamming --codec-seed "$S" \
      --out "results/lsh-seeds/seed$S"
  done
done
python - <<'PY'
import glob, json, statistics
for dim in (64, 128):
    ours, theirs = [], []
    for path in sorted(glob.glob(f"results/lsh-seeds/seed*/bench-d{dim}.json")):
        rows = {r["method"]: r for r in json.load(open(path))["rows"]}
        ours.append(rows["simhash128-hamming"]["rel_recall@50"])
        theirs.append(rows["faiss:LSH128"]["rel_recall@50"])
    if ours:
        fmt = lambda xs: f"mean {statistics.mean(xs):.3f} min {min(xs):.3f} max {max(xs):.3f}"
        print(f"d={dim} seeds={len(ours)} simhash128-hamming rel R@50 {fmt(ours)} | faiss:LSH128 {fmt(theirs)} | "
              f"mean difference {statistics.mean(ours) - statistics.mean(theirs):+.3f}")
PY
