"""Delta packs on the amazon-book item embeddings: how small is a catalog update, and when do codebooks get re-fitted?

Catalog version A is a random 90 % of the items (codecs fitted on it, seed 0).
Version B drops 2 % of A's items, brings in 2 % new ones (held-out items of the
catalog, never seen by the codecs) and changes 1 % (Gaussian noise of
``--change-noise`` times the per-dimension std). A drifted version C applies a
random rotation and a norm scale (``--drift-scale``) to ``--drift-share`` of B's
vectors (a model retrain that moved embeddings), so the codecs' distortion rises past the threshold and they are
re-fitted; version D adds Gaussian noise of ``--drift-noise`` std to all of B's
vectors. For each codec (one layer per pack) the table reports the full pack of
the new version, the delta, their ratio, the bytes of the (re-sent) CODEC section,
the base codec's distortion ratio (MSE on the new catalog / MSE at fit time), whether
the codebook was reused, and that applying the delta gives the fresh build byte for byte.

Usage::

    PYTHONPATH=src python benchmarks/delta_study.py 2>/dev/null
    PYTHONPATH=src python benchmarks/delta_study.py --codecs sq4 pq16 --threshold 0.1 --dim 64

The cache is looked up in ``--cache`` (default ``~/.cache/reelpack/twotower``): the
first folder whose meta.json says ``"synthetic": false`` and has ``"dim"`` ``--dim``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from reelpack.codecs import make_codec
from reelpack.format.delta import apply_delta, build_pack, make_delta


def find_items(cache: Path, dim: int) -> Path:
    for meta_path in sorted(cache.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        if meta.get("dim") == dim and not meta.get("synthetic", True) and (meta_path.parent / "items.npy").exists():
            return meta_path.parent / "items.npy"
    raise SystemExit(f"no non-synthetic item cache with dim {dim} under {cache}")


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def versions(X: np.ndarray, args: argparse.Namespace) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A (90 %), B (2 % removed, 2 % added from the held-out 10 %, 1 % changed) and C (B with drift)."""
    rng = np.random.default_rng(args.seed)
    n = X.shape[0]
    perm = rng.permutation(n)
    n_a = int(round(0.9 * n))
    ids_a = np.sort(perm[:n_a]).astype(np.int64)
    held = perm[n_a:]
    n_rm, n_add, n_ch = int(round(0.02 * n_a)), int(round(0.02 * n_a)), int(round(0.01 * n_a))
    removed = rng.choice(ids_a, n_rm, replace=False)
    kept = np.setdiff1d(ids_a, removed)
    added = rng.choice(held, n_add, replace=False)
    ids_b = np.concatenate([kept, added]).astype(np.int64)
    X_b = X[ids_b].copy()
    ch = rng.choice(kept.size, n_ch, replace=False)
    X_b[ch] += (rng.normal(size=(n_ch, X.shape[1])) * X.std(axis=0) * args.change_noise).astype(np.float32)
    X_c = X_b.copy()
    drift = rng.random(ids_b.size) < args.drift_share
    X_c[drift] = (X_c[drift] @ random_rotation(X.shape[1], rng)) * np.float32(args.drift_scale)
    X_d = X_b + (rng.normal(size=X_b.shape) * X.std(axis=0) * args.drift_noise).astype(np.float32)
    return {"A": (ids_a, X[ids_a]), "B": (ids_b, X_b), "C": (ids_b, X_c), "D": (ids_b, X_d)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "reelpack" / "twotower")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--codecs", nargs="+", default=["sq4", "pq16"])
    ap.add_argument("--threshold", type=float, default=0.1)
    ap.add_argument("--change-noise", type=float, default=0.1, help="changed items: noise std / per-dim std")
    ap.add_argument("--drift-share", type=float, default=0.5, help="share of B's vectors rotated in version C")
    ap.add_argument("--drift-scale", type=float, default=1.5, help="norm scale of the rotated vectors in version C")
    ap.add_argument("--drift-noise", type=float, default=0.5, help="version D: noise std / per-dim std on all of B")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    items = find_items(args.cache, args.dim)
    X = np.ascontiguousarray(np.load(items), dtype=np.float32)
    vers = versions(X, args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for spec in args.codecs:
            ids_a, X_a = vers["A"]
            codec = make_codec(spec).fit(X_a, seed=0)
            base = build_pack(tmp / f"{spec}_A.rpak", ids_a, X_a, [codec], metadata={"catalog_version": "A"})
            for name, prev in (("B", base), ("C (rotated)", base), ("D (noisy)", base)):
                ids_n, X_n = vers[name[0]]
                print(f"[delta_study] {spec} A -> {name} ...", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                rep = make_delta(prev, ids_n, X_n, tmp / "d.rpak", distortion_threshold=args.threshold,
                                 metadata={"catalog_version": name[0]}, target_path=tmp / "fresh.rpak")  # fmt: skip
                t_make = time.perf_counter() - t0
                t0 = time.perf_counter()
                out = apply_delta(prev, tmp / "d.rpak", tmp / "applied.rpak")
                t_apply = time.perf_counter() - t0
                identical = out.read_bytes() == (tmp / "fresh.rpak").read_bytes()
                lay = rep.layers[0]
                rows.append({
                    "codec": spec, "update": f"A -> {name}", "n_items": rep.n_target, "removed": rep.n_removed,
                    "added": rep.n_added, "changed": rep.n_changed, "sent": rep.n_sent,
                    "full_bytes": rep.target_bytes, "delta_bytes": rep.delta_bytes, "ratio": rep.size_ratio,
                    "codec_bytes": rep.codec_bytes, "distortion_ratio": lay.ratio, "reused": lay.reused,
                    "refit_mse_ratio": None if lay.refit_mse is None else lay.refit_mse / lay.reference_mse,
                    "identical": identical, "make_s": t_make, "apply_s": t_apply,
                })  # fmt: skip

    print(f"Command: `{' '.join(shlex.quote(a) for a in ['PYTHONPATH=src', 'python', *sys.argv])}`  ")
    print(f"Items: {items} ({X.shape[0]} x {X.shape[1]}); threshold {args.threshold}; "
          f"change noise {args.change_noise} std; drift: random rotation and x{args.drift_scale} scale of "
          f"{args.drift_share:.0%} of the vectors (C); Gaussian noise {args.drift_noise} std on all (D)  ")  # fmt: skip
    print()
    head = ["codec", "update", "items", "rm/add/chg", "sent", "full pack", "delta", "delta/full", "codec sect.",
            "MSE new/fit", "codebook", "applied == fresh", "make s", "apply s"]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|")
    for r in rows:
        if not r["reused"]:
            cb = f"re-fitted (MSE {r['refit_mse_ratio']:.3f}x fit)"
        elif r["refit_mse_ratio"] is not None:
            cb = f"kept: re-fit no better ({r['refit_mse_ratio']:.3f}x fit)"
        else:
            cb = "reused"
        print(f"| {r['codec']} | {r['update']} | {r['n_items']} | {r['removed']}/{r['added']}/{r['changed']} | "
              f"{r['sent']} | {r['full_bytes']:,} | {r['delta_bytes']:,} | {r['ratio']:.2%} | {r['codec_bytes']:,} | "
              f"{r['distortion_ratio']:.3f} | {cb} | {'yes' if r['identical'] else 'NO'} | {r['make_s']:.2f} | "
              f"{r['apply_s']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
