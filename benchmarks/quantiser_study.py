"""Stronger additive quantisers at equal bytes: rate, MSE against the Gaussian bound, validation ranking quality,
encode and decode time, for reelpack's residual variants and faiss's RQ / LSQ (one seed; choices are not made here).

Every figure is on the validation split (fit items excluded, validation items as positives) of the protocol in
``benchmarks/validation_sweep.py``; the test split is not read.

Usage (from the project root)::

    python benchmarks/quantiser_study.py --data ../shared/data/amazon-book/interactions.txt --dim 64 \\
        --budgets 8,16 --users 5000 --out results/quantiser-study

Decode time is the time to reconstruct 100k items from their codes (what a phone does after the download, for
codecs that score by decode + GEMM), the median of 5 calls after a warm-up call; faiss's is ``sa_decode``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from reelpack.bench.latency import median_seconds
from reelpack.codecs import make_codec
from reelpack.metrics.ranking import dense_score_fn, evaluate_scores
from reelpack.metrics.ratedistortion import gaussian_distortion_bound, pca_variances
from validation_protocol import load_validation_protocol  # benchmarks/, beside this script

DECODE_ITEMS = 100_000



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/amazon-book/interactions.txt")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--budgets", default="8,16")
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--specs", default="rq{B} rq{B}-r rq{B}-n rq{B}-r-n", help="reelpack templates, {B} = budget")
    ap.add_argument("--faiss", default="RQ{B}x8 LSQ{B}x8", help="faiss factory templates")
    ap.add_argument("--out", default="results/quantiser-study")
    args = ap.parse_args(argv)
    faiss.omp_set_num_threads(1)
    proto = load_validation_protocol(args.data, args.dim, args.users)
    fit, U, X, users, ref = proto.fit, proto.U, proto.X, proto.users, proto.ref
    variances = pca_variances(X)
    rng = np.random.default_rng(0)
    decode_rows = rng.integers(0, len(X), DECODE_ITEMS)
    rows = []

    def finish(name, budget, recon, fit_s, encode_s, decode_s):
        mse = float(((recon.astype(np.float64) - X) ** 2).sum(1).mean())
        bound = gaussian_distortion_bound(variances, 8 * budget)
        m, _ = evaluate_scores(dense_score_fn(U, recon), fit, users, ks=(10, 50))
        row = {"method": name, "bytes": budget, "bits": 8 * budget, "mse": mse, "gaussian_bound": bound,
               "mse_over_bound": mse / bound, "val_rel_recall@50": m["recall@50"] / ref["recall@50"],
               "val_rel_ndcg@10": m["ndcg@10"] / ref["ndcg@10"], "fit_s": fit_s, "encode_s": encode_s,
               "encode_us_per_item": 1e6 * encode_s / len(X), "decode_ms_per_100k": 1e3 * decode_s}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    for b in (int(x) for x in args.budgets.split(",")):
        for t in args.specs.split():
            spec = t.format(B=b)
            t0 = time.perf_counter()
            c = make_codec(spec).fit(X, seed=0)
            t1 = time.perf_counter()
            codes = c.encode(X)
            t2 = time.perf_counter()
            decode_s = median_seconds(lambda: c.decode(codes[decode_rows]))
            finish(spec, b, c.decode(codes), t1 - t0, t2 - t1, decode_s)
        for t in args.faiss.split():
            f = t.format(B=b)
            index = faiss.index_factory(args.dim, f, faiss.METRIC_INNER_PRODUCT)
            sample = X if len(X) <= 65536 else X[np.sort(rng.choice(len(X), 65536, replace=False))]
            if f.startswith("LSQ"):
                sample = sample[:20000]
            t0 = time.perf_counter()
            index.train(np.ascontiguousarray(sample))
            t1 = time.perf_counter()
            codes = index.sa_encode(X)
            t2 = time.perf_counter()
            decode_s = median_seconds(lambda: index.sa_decode(codes[decode_rows]))
            finish(f"faiss {f}", b, index.sa_decode(codes), t1 - t0, t2 - t1, decode_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"study-d{args.dim}.json").write_text(json.dumps({"dim": args.dim, "rows": rows, "users": len(users)}, indent=1))
    print("| method | B | MSE | Gaussian bound | MSE/bound | val rel R@50 | val rel NDCG@10 | fit s | encode us/item | decode ms/100k |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['method']}` | {r['bytes']} | {r['mse']:.4f} | {r['gaussian_bound']:.4f} | {r['mse_over_bound']:.2f} | "
              f"{r['val_rel_recall@50']:.4f} | {r['val_rel_ndcg@10']:.4f} | {r['fit_s']:.0f} | {r['encode_us_per_item']:.0f} | "
              f"{r['decode_ms_per_100k']:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
