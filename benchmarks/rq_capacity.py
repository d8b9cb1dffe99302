"""Where does an ``rq -r -n`` codec lose quality: its fit sample, its refinement rounds, or its encoder?

For one spec (optionally popularity-weighted, ``rq8-r-n@pop1``) and each seed, this fits the codec under several
settings and scores it on the validation users (the protocol of ``benchmarks/validation_sweep.py``: fit items
excluded, validation items the positives; the test split is not read). Each variant changes one thing:

* ``base``: the library's settings.
* ``sample=N``: fit on at most ``N`` rows (``reelpack.codecs.residual.MAX_TRAIN_SAMPLE``; the library fitted at most
  65,536 before stop 27 and fits up to 262,144 since).
* ``rounds=R`` / ``refine-beam=B``: ``-r``'s rounds of re-encoding and least-squares update, and their beam width.
* ``encode-beam=B``: encode with a beam of ``B`` instead of the stored ``max_beam_size`` (16).
* ``icm``: after the beam encode, polish each item's codes by iterated conditional modes on the ``-n`` objective
  (per codebook, the codeword that maximises ``cos(x, x_hat)`` with the other codes fixed, up to 4 passes). A
  study-only encoder: it shows how far the beam encoder is from the codebooks' best codes for the cosine score.

Variants combine with ``+``: ``sample=65536+encode-beam=64``. The first variant is the reference of the paired
differences.

Printed per variant and seed: validation relative Recall@50 and NDCG@10, the mean ``1 - cos(x, x_hat)`` over the
catalog, fit and encode seconds, and ``-r``'s sample MSE per stage before and after refinement; then the mean
over seeds and the paired difference from ``base``. A JSON report goes to ``--out``.

Usage (from the project root; one thread, as every benchmark on BENCHMARKS.md 1.6)::

    OMP_NUM_THREADS=1 python benchmarks/rq_capacity.py --data ../shared/data/amazon-book/interactions.txt \\
        --dim 64 --spec rq8-r-n@pop1 --seeds 3 --variants "sample=65536 base" --out results/rq-capacity-64
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numba
import numpy as np

import reelpack.codecs.residual as residual
from reelpack.codecs import make_codec
from reelpack.data import popularity_weights
from reelpack.metrics.ranking import evaluate_scores
from validation_protocol import load_validation_protocol  # benchmarks/, beside this script

ICM_PASSES = 4


@numba.njit(cache=True)
def icm_cosine(codebooks, codes, X, passes):  # pragma: no cover - compiled
    """Codes uint8 [n, M] polished for ``max cos(x, sum_m C[m, code_m])`` one codebook at a time (float64 math)."""
    m_books, k_words, d = codebooks.shape
    out = codes.copy()
    xh = np.zeros(d, np.float64)
    for i in range(X.shape[0]):
        xh[:] = 0.0
        for m in range(m_books):
            xh += codebooks[m, out[i, m]]
        for _ in range(passes):
            changed = False
            for m in range(m_books):
                base = xh - codebooks[m, out[i, m]]
                best = -2.0
                best_k = out[i, m]
                for k in range(k_words):
                    num = 0.0
                    sq = 0.0
                    for j in range(d):
                        v = base[j] + codebooks[m, k, j]
                        num += X[i, j] * v
                        sq += v * v
                    c = num / np.sqrt(sq) if sq > 0 else -1.0
                    if c > best + 1e-12:
                        best = c
                        best_k = k
                if best_k != out[i, m]:
                    changed = True
                    out[i, m] = best_k
                xh[:] = base + codebooks[m, best_k]
            if not changed:
                break
    return out


def parse_variant(text: str) -> dict:
    """``base``, ``icm``, ``key=int`` (key in sample, rounds, refine-beam, encode-beam), or several joined by ``+``
    (``sample=65536+encode-beam=64``)."""
    out: dict = {"name": text}
    for part in text.split("+"):
        if part == "base":
            continue
        if part == "icm":
            out["icm"] = True
            continue
        key, _, value = part.partition("=")
        if key not in ("sample", "rounds", "refine-beam", "encode-beam") or not value.isdigit() or int(value) < 1:
            raise SystemExit(
                f"unknown variant {text!r}: use base, icm, sample=N, rounds=R, refine-beam=B, encode-beam=B, "
                "or several joined by +"
            )
        out[key] = int(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/amazon-book/interactions.txt")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--spec", default="rq8-r-n@pop1", help="an rq -n spec, optionally @popB (popularity-weighted fit)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--users", type=int, default=None, help="validation users scored (default: every one)")
    ap.add_argument("--variants", default="sample=65536 base", help="space-separated; see the module docstring")
    ap.add_argument("--out", default="results/rq-capacity")
    args = ap.parse_args(argv)
    variants = [parse_variant(v) for v in args.variants.split()]
    spec, _, beta = args.spec.partition("@pop")
    if not spec.startswith("rq") or "-n" not in spec:
        raise SystemExit(f"--spec must be an rq -n codec (the ICM variant polishes cosines), got {args.spec!r}")
    t0 = time.time()
    proto = load_validation_protocol(args.data, args.dim, args.users)
    fit, U, X, users, ref = proto.fit, proto.U, proto.X, proto.users, proto.ref
    weights = popularity_weights(fit.item_counts, float(beta)) if beta else None
    print(f"d={args.dim}: {X.shape[0]} items, {len(users)} validation users, {args.spec}", file=sys.stderr)
    defaults = (residual.MAX_TRAIN_SAMPLE, residual.REFINE_ROUNDS, residual.REFINE_BEAM_SIZE)
    rows = []
    for seed in range(args.seeds):
        for v in variants:
            residual.MAX_TRAIN_SAMPLE = v.get("sample", defaults[0])
            residual.REFINE_ROUNDS = v.get("rounds", defaults[1])
            residual.REFINE_BEAM_SIZE = v.get("refine-beam", defaults[2])
            try:
                t = time.time()
                codec = make_codec(spec).fit(X, seed=seed, weights=weights)
                fit_s = time.time() - t
            finally:
                residual.MAX_TRAIN_SAMPLE, residual.REFINE_ROUNDS, residual.REFINE_BEAM_SIZE = defaults
            if "encode-beam" in v:
                codec.max_beam_size = v["encode-beam"]
                codec._faiss_rq = None  # study only: rebuild faiss's encoder with the wider beam
            t = time.time()
            codes = codec.encode(X)
            if v.get("icm"):
                polished = icm_cosine(codec.codebooks.astype(np.float64), codes[:, : codec.n_codebooks],
                                      X.astype(np.float64), ICM_PASSES)  # fmt: skip
                codes = np.ascontiguousarray(polished, np.uint8)
            encode_s = time.time() - t
            m, _ = evaluate_scores(lambda us, c=codec, z=codes: c.score(U[us], z), fit, users, ks=(10, 50))
            one_minus_cos = float(1.0 - (codec.decode(codes).astype(np.float64) * X).sum(1).mean())
            row = {"variant": v["name"], "seed": seed, "rel_recall": m["recall@50"] / ref["recall@50"],
                   "rel_ndcg": m["ndcg@10"] / ref["ndcg@10"], "one_minus_cos": one_minus_cos, "fit_s": fit_s,
                   "encode_s": encode_s, "refine_history": codec.refine_history}  # fmt: skip
            rows.append(row)
            print(f"[{time.time() - t0:6.0f}s] seed {seed} {v['name']:>14}: val rel R@50 {row['rel_recall']:.4f}  "
                  f"NDCG@10 {row['rel_ndcg']:.4f}  1-cos {one_minus_cos:.5f}  fit {fit_s:.0f}s  "
                  f"encode {encode_s:.0f}s", flush=True)  # fmt: skip
    print(f"\n{args.spec}, d={args.dim}, {len(users)} validation users, {args.seeds} seeds")
    base = {r["seed"]: r for r in rows if r["variant"] == variants[0]["name"]}
    for v in variants:
        rs = [r for r in rows if r["variant"] == v["name"]]
        rec = np.array([r["rel_recall"] for r in rs])
        diff = np.array([r["rel_recall"] - base[r["seed"]]["rel_recall"] for r in rs])
        print(f"  {v['name']:>14}: {rec.mean():.4f} ± {rec.std(ddof=1) if len(rec) > 1 else 0.0:.4f}  "
              f"paired diff from {variants[0]['name']} {diff.mean():+.4f} (per seed "
              f"{' '.join(f'{x:+.4f}' for x in diff)})  1-cos {np.mean([r['one_minus_cos'] for r in rs]):.5f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"spec": args.spec, "dim": args.dim, "users": int(len(users)), "variants": [v["name"] for v in variants],
              "rows": rows, "machine": platform.machine(), "date": datetime.now(timezone.utc).isoformat()}  # fmt: skip
    (out / f"rq-capacity-d{args.dim}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
