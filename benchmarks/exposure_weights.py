"""Exposure-weighted against popularity-weighted codec fits: one spec, several weightings and seeds, every user.

``Codec.fit(X, seed, weights=w)`` trains on rows drawn in proportion to ``w``. The weightings compared:

* ``uniform``: no weights;
* ``popB``: ``(fit interactions + 1) ** B`` (:func:`reelpack.data.popularity_weights`), what ``@popB`` candidates
  of ``reelpack tune`` use;
* ``expoB``: ``(exposure + 1) ** B``, an item's exposure being the number of users whose float32 top-K (``--k``,
  default :data:`reelpack.data.DEFAULT_EXPOSURE_K`) holds it (:func:`reelpack.data.exposure_weights`: the
  embeddings only, no interaction); ``@expoB`` candidates.

For each weighting and seed this prints the validation relative Recall@50 and NDCG@10 on the validation users
(the protocol of ``benchmarks/validation_sweep.py``; every one by default), then the mean, the standard deviation
and the paired difference from the first weighting, seed by seed. The choice is the highest validation mean.
With ``--test`` the test split is then read once for the report: the same codecs on every test user (or a seeded
sample of ``--users``), relative to float32 on the same users.

Usage (from the project root; one thread, as every benchmark on BENCHMARKS.md 1.6)::

    OMP_NUM_THREADS=1 python benchmarks/exposure_weights.py --data ../shared/data/amazon-book/interactions.txt \\
        --dim 512 --spec rq8-r-n --weightings pop1,expo1 --seeds 3 --test --out results/exposure-512-8
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
from reelpack.data import (
    DEFAULT_EXPOSURE_K,
    exposure_counts,
    load_interactions,
    popularity_weights,
    train_test_split,
    weights_from_exposure,
)
from reelpack.metrics.ranking import dense_score_fn, evaluate_scores
from validation_protocol import load_validation_protocol  # benchmarks/, beside this script

KEYS = ("recall@50", "ndcg@10")


def weights_for(name: str, counts: np.ndarray, exposure: np.ndarray) -> np.ndarray | None:
    """The fit weights float64 [n_items] of a weighting name (``uniform``, ``popB``, ``expoB``)."""
    if name == "uniform":
        return None
    if name.startswith("pop"):
        return popularity_weights(counts, float(name[3:]))
    if name.startswith("expo"):
        return weights_from_exposure(exposure, float(name[4:]))
    raise SystemExit(f"unknown weighting {name!r}: uniform, popB or expoB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/amazon-book/interactions.txt")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--spec", default="rq8-r-n")
    ap.add_argument("--weightings", default="pop1,expo1", help="comma-separated: uniform, popB, expoB")
    ap.add_argument("--k", type=int, default=DEFAULT_EXPOSURE_K, help="top-K of the exposure counts")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--users", type=int, default=None, help="a seeded sample of users (default: every one)")
    ap.add_argument("--test", action="store_true", help="then read the test split once, for the report")
    ap.add_argument("--out", default="results/exposure-weights")
    args = ap.parse_args(argv)
    names = [w.strip() for w in args.weightings.split(",") if w.strip()]
    t_start = time.time()
    P = load_validation_protocol(args.data, args.dim, args.users)
    t0 = time.time()
    exposure = exposure_counts(P.U, P.X, args.k) if any(n.startswith("expo") for n in names) else np.zeros(0)
    expo_s = time.time() - t0
    print(f"d={args.dim} {args.spec}: {len(P.users)} validation users, {P.X.shape[0]} items; exposure top-{args.k} "
          f"in {expo_s:.0f} s", flush=True)  # fmt: skip
    if args.test:
        split = train_test_split(load_interactions(args.data), 0.2, 0)
        test_users = split.eval_users()
        if args.users and len(test_users) > args.users:
            test_users = np.sort(np.random.default_rng(2).choice(test_users, args.users, replace=False))
    rows: dict[str, list[dict]] = {}
    for name in names:
        w = weights_for(name, P.fit.item_counts, exposure)
        rows[name] = []
        for seed in range(args.seeds):
            t0 = time.time()
            codec = make_codec(args.spec).fit(P.X, seed=seed, weights=w)
            codes = codec.encode(P.X)
            fit_s = time.time() - t0
            m, _ = evaluate_scores(lambda us, c=codec, z=codes: c.score(P.U[us], z), P.fit, P.users, ks=(10, 50))
            row = {"seed": seed, "val": {k: m[k] / P.ref[k] for k in KEYS}, "fit_encode_s": fit_s,
                   "codec": codec}  # fmt: skip
            rows[name].append(row)
            print(f"{name:>8} seed {seed}: val rel R@50 {row['val']['recall@50']:.4f}  rel NDCG@10 "
                  f"{row['val']['ndcg@10']:.4f}  ({fit_s:.0f} s)", flush=True)  # fmt: skip
    summary = {}
    base = names[0]
    for name in names:
        v = np.array([r["val"]["recall@50"] for r in rows[name]])
        n = np.array([r["val"]["ndcg@10"] for r in rows[name]])
        d = v - np.array([r["val"]["recall@50"] for r in rows[base]])
        summary[name] = {"val_rel_recall": float(v.mean()), "val_rel_recall_std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                         "val_rel_ndcg": float(n.mean()), "paired_diff_vs_first": float(d.mean())}  # fmt: skip
        print(f"{name:>8}: val rel R@50 {v.mean():.4f} ± {summary[name]['val_rel_recall_std']:.4f}, rel NDCG@10 "
              f"{n.mean():.4f}; minus {base}, seed by seed: {' '.join(f'{x:+.4f}' for x in d)}")  # fmt: skip
    chosen = max(names, key=lambda s: summary[s]["val_rel_recall"])
    print(f"chosen on validation: {chosen}")
    if args.test:  # read once, for the report
        ref_test, _ = evaluate_scores(dense_score_fn(P.U, P.X), split, test_users, ks=(10, 50))
        for name in names:
            for r in rows[name]:
                c = r["codec"]
                z = c.encode(P.X)
                m, _ = evaluate_scores(lambda us, c=c, z=z: c.score(P.U[us], z), split, test_users, ks=(10, 50))
                r["test"] = {k: m[k] / ref_test[k] for k in KEYS}
            t = np.array([r["test"]["recall@50"] for r in rows[name]])
            tn = np.array([r["test"]["ndcg@10"] for r in rows[name]])
            summary[name].update(test_rel_recall=float(t.mean()), test_rel_recall_std=float(t.std(ddof=1)) if t.size > 1 else 0.0,
                                 test_rel_ndcg=float(tn.mean()))  # fmt: skip
            print(f"{name:>8}: test rel R@50 {t.mean():.4f} ± {summary[name]['test_rel_recall_std']:.4f} "
                  f"({' '.join(f'{x:.4f}' for x in t)}), rel NDCG@10 {tn.mean():.4f}{'  (chosen)' if name == chosen else ''}")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"dim": args.dim, "spec": args.spec, "k": args.k, "weightings": names, "chosen": chosen,
           "n_validation_users": int(len(P.users)), "summary": summary,
           "rows": {n: [{k: v for k, v in r.items() if k != "codec"} for r in rs] for n, rs in rows.items()},
           "seconds": time.time() - t_start, "machine": platform.platform(), "command": " ".join(sys.argv),
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}  # fmt: skip
    (out / f"exposure-d{args.dim}-{args.spec}.json").write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
