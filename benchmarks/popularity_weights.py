"""Popularity-weighted codec training on the validation split: one spec, several popularity exponents and seeds.

``Codec.fit(X, seed, weights=popularity_weights(item_counts, beta))`` trains on rows drawn in proportion to
``(fit interactions + 1) ** beta`` (:func:`reelpack.data.popularity_weights`); ``beta = 0`` is the uniform fit.
For each exponent and seed this prints the validation relative Recall@50 and NDCG@10 (the protocol of
``benchmarks/validation_sweep.py``: fit items excluded, validation items the positives; the test split is not
read), the mean squared reconstruction error over the items (``mse``) and the same weighted by the items' fit
interactions (``pop mse``, the error the users' positives see), then the mean and standard deviation per
exponent. ``reelpack tune`` makes the choice itself (``--popularity-betas``); this study shows the curve.

``--faiss RQ8x8`` also trains that faiss index (default training, at most 65,536 rows) on the same weighted rows
(:func:`reelpack.codecs.base.weighted_rows`) for the exponents of ``--faiss-betas``: whether the gain is the
weighting's, which any quantiser can use, or reelpack's.

Usage (from the project root)::

    python benchmarks/popularity_weights.py --data ../shared/data/amazon-book/interactions.txt --dim 128 \\
        --spec rq8-n --betas 0,0.5,1,1.5,2 --seeds 3 --users 10000 --out results/popularity-weights
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from reelpack.codecs import make_codec
from reelpack.codecs.base import weighted_rows
from reelpack.data import popularity_weights
from reelpack.metrics.ranking import dense_score_fn, evaluate_scores
from validation_protocol import load_validation_protocol  # benchmarks/, beside this script

FAISS_MAX_TRAIN = 65536


def _faiss_row(factory: str, X: np.ndarray, U: np.ndarray, fit, users, ref, counts, beta: float, seed: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)
    rows = weighted_rows(X, popularity_weights(fit.item_counts, beta), seed) if beta > 0 else X
    rng = np.random.default_rng(seed)
    sample = rows if len(rows) <= FAISS_MAX_TRAIN else rows[np.sort(rng.choice(len(rows), FAISS_MAX_TRAIN, replace=False))]
    index = faiss.index_factory(X.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if hasattr(index, "rq"):
        index.rq.cp.seed = seed
    if hasattr(index, "pq"):
        index.pq.cp.seed = seed
    t0 = time.perf_counter()
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.add(X)
    seconds = time.perf_counter() - t0
    recon = index.reconstruct_n(0, X.shape[0]).astype(np.float32)
    m, _ = evaluate_scores(dense_score_fn(U, recon), fit, users, ks=(10, 50))
    err = ((recon.astype(np.float64) - X) ** 2).sum(axis=1)
    return {"codec": f"faiss {factory}", "beta": beta, "seed": seed, "rel_recall": m["recall@50"] / ref["recall@50"],
            "rel_ndcg": m["ndcg@10"] / ref["ndcg@10"], "mse": float(err.mean()),
            "pop_mse": float((err * counts).sum() / counts.sum()), "fit_encode_s": seconds}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/amazon-book/interactions.txt")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--spec", default="rq8-n")
    ap.add_argument("--betas", default="0,0.5,1,1.5,2")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--faiss", default="", help="a faiss factory (e.g. RQ8x8) trained on the same weighted rows")
    ap.add_argument("--faiss-betas", default="0,1")
    ap.add_argument("--out", default="results/popularity-weights")
    args = ap.parse_args(argv)
    betas = [float(b) for b in args.betas.split(",")]
    t_start = time.time()
    proto = load_validation_protocol(args.data, args.dim, args.users)
    fit, U, X, users, ref = proto.fit, proto.U, proto.X, proto.users, proto.ref
    counts = fit.item_counts.astype(np.float64)
    rows = []
    for beta in betas:
        weights = popularity_weights(fit.item_counts, beta) if beta > 0 else None
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            codec = make_codec(args.spec).fit(X, seed=seed, weights=weights)
            codes = codec.encode(X)
            seconds = time.perf_counter() - t0
            m, _ = evaluate_scores(lambda us, c=codec, z=codes: c.score(U[us], z), fit, users, ks=(10, 50))
            err = ((codec.decode(codes).astype(np.float64) - X) ** 2).sum(axis=1)
            row = {"codec": args.spec, "beta": beta, "seed": seed, "rel_recall": m["recall@50"] / ref["recall@50"],
                   "rel_ndcg": m["ndcg@10"] / ref["ndcg@10"], "mse": float(err.mean()),
                   "pop_mse": float((err * counts).sum() / counts.sum()), "fit_encode_s": seconds}  # fmt: skip
            rows.append(row)
            print(f"[{time.time() - t_start:6.0f}s] beta {beta:g} seed {seed}: val rel R@50 {row['rel_recall']:.4f} "
                  f"rel NDCG@10 {row['rel_ndcg']:.4f} mse {row['mse']:.4f} pop mse {row['pop_mse']:.4f}",
                  file=sys.stderr, flush=True)  # fmt: skip
    if args.faiss:
        for beta in [float(b) for b in args.faiss_betas.split(",")]:
            for seed in range(args.seeds):
                rows.append(_faiss_row(args.faiss, X, U, fit, users, ref, counts, beta, seed))
                print(f"[{time.time() - t_start:6.0f}s] faiss {args.faiss} beta {beta:g} seed {seed}: val rel R@50 "
                      f"{rows[-1]['rel_recall']:.4f}", file=sys.stderr, flush=True)  # fmt: skip
    lines = [f"`{args.spec}` at d = {args.dim}, {len(users)} validation users, {args.seeds} seeds", "",
             "| codec, beta | val rel R@50 | val rel NDCG@10 | mse | pop mse |", "|---|---|---|---|---|"]  # fmt: skip
    for name, beta in [(args.spec, b) for b in betas] + sorted({(r["codec"], r["beta"]) for r in rows if r["codec"] != args.spec}):
        got = [r for r in rows if r["beta"] == beta and r["codec"] == name]

        def ms(key: str) -> str:
            v = np.array([r[key] for r in got])
            return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}"

        lines.append(f"| {name} {beta:g} | {ms('rel_recall')} | {ms('rel_ndcg')} | {ms('mse')} | {ms('pop_mse')} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"rows": rows, "spec": args.spec, "dim": args.dim, "users": int(len(users)),
              "machine": f"{platform.machine()} {__import__('os').cpu_count()} cores",
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
              "command": "python " + " ".join(["benchmarks/popularity_weights.py"] + (argv if argv is not None else sys.argv[1:]))}  # fmt: skip
    (out / f"popularity-{args.spec}-d{args.dim}.json").write_text(json.dumps(report, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
