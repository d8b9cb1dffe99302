#!/usr/bin/env bash
# Rate-quality sweep (beating faiss at equal bytes): reelpack's codecs at 8/16/32 bytes per item, including compression-aware
# training, against faiss PQ/OPQ/RQ/LSQ/SQ/RaBitQ in the same run, at 64-d and 128-d, on amazon-book.
# Usage: benchmarks/rate_quality.sh [DATA] [MAX_USERS]   (results in results/rate-quality/bench-d{64,128}.json)
set -euo pipefail
DATA=${1:-../shared/data/amazon-book/interactions.txt}
USERS=${2:-20000}
for DIM in 64 128; do
  OMP_NUM_THREADS=1 reelpack bench --data "$DATA" --dim "$DIM" --sweep --max-users "$USERS" \
    --out results/rate-quality 2> >(grep -v "WARNING clustering" >&2)
done
