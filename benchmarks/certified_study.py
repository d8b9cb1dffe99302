"""Certified progressive retrieval study: bytes per item against relative Recall@50.

For every evaluated user the client ranks the whole catalog (train items excluded) with
:func:`reelpack.search.certified.certified_topk`: layer 0 (stage 0 of ``--codec`` for every
item), the later stages fetched only for items whose upper bound can still reach the top
K (codecs with bounds) or for a fixed top R per step (codecs without), then an exact
layer (``--exact fp16``: 2*d bytes per item) for what remains. Reported per setting:
Recall@50 and NDCG@10 relative to float32 over the same users, the average transfer per
catalog item ((layer 0 + refinement bytes) / n_items, averaged over users), the share of
users whose top K was certified, the mean items fetched per step and the seconds taken.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/certified_study.py --codec "pq4 pq8" \\
        --fallback "200 1000" --users 2000 --out runs/certified.json 2>/dev/null

Embeddings come from the two-tower cache (``reelpack.models.load_cached`` with
``TwoTowerConfig(dim=--dim, seed=0)``), the split from ``train_test_split(seed=0)``.
"""

from __future__ import annotations

import argparse
import os
import json
import sys
import time

import numpy as np

from reelpack.codecs import make_codec
from reelpack.data import load_interactions, train_test_split
from reelpack.metrics.quality import ranking_metrics
from reelpack.search.certified import certified_topk_batch
from reelpack.models import TwoTowerConfig, load_cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("REELPACK_DATA", "../shared/data/amazon-book/interactions.txt"),
        help="interactions file (default: $REELPACK_DATA, else ../shared/data/amazon-book/interactions.txt)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--users", type=int, default=2000, help="sampled eval users (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="user sample and codec fitting seed")
    ap.add_argument("--codec", default="pq4 pq8", help="space-separated codec specs")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--confidence", default="0.99", help="space-separated confidences (codecs with bounds)")
    ap.add_argument("--fallback", default="200", help="space-separated R settings (codecs without bounds); "
                    "comma-separated for one R per refinement step, e.g. 1000,200")
    ap.add_argument("--exact", choices=["fp16", "fp32", "none"], default="fp16")
    ap.add_argument("--budget", type=int, default=None, help="refinement bytes per user (default: none)")
    ap.add_argument("--fit-rows", type=int, default=0, help="fit each codec on this many sampled items (0: all)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    command = "PYTHONPATH=src python benchmarks/certified_study.py " + " ".join(sys.argv[1:])

    t0 = time.perf_counter()
    split = train_test_split(load_interactions(args.data), seed=0)
    emb = load_cached(split, TwoTowerConfig(dim=args.dim, seed=0))
    if emb is None:
        sys.exit(f"no cached two-tower embeddings for dim={args.dim}; train them first (reelpack train)")
    U, items = emb.user_emb.astype(np.float32), emb.item_emb.astype(np.float32)
    n, d = items.shape
    eval_users = split.eval_users()
    rng = np.random.default_rng(args.seed)
    users = eval_users
    if args.users:
        users = np.sort(rng.choice(eval_users, min(args.users, eval_users.size), replace=False))
    ip = split.train_indptr
    exclude = [split.train_items[ip[u] : ip[u + 1]] for u in users]
    ks = (10, 50)

    # float32 reference over the same users (the same exclusion)
    scores = U[users] @ items.T
    for i, ex in enumerate(exclude):
        scores[i, ex] = -np.inf
    ref_ids = np.argsort(-scores, axis=1, kind="stable")[:, : args.k]
    del scores
    ref = ranking_metrics(ref_ids, users, split.test_indptr, split.test_items, ks)

    if args.exact == "none":
        exact, exact_bytes = None, None
    else:
        dt = np.float16 if args.exact == "fp16" else np.float32
        exact_vecs = items.astype(dt)
        exact_bytes = int(np.dtype(dt).itemsize) * d

        def exact(rows: np.ndarray) -> np.ndarray:
            return exact_vecs[rows]

    print(f"# {n} items, d={d}, {len(users)} users (seed {args.seed}); float32 Recall@50 {ref['recall@50']:.4f} "
          f"NDCG@10 {ref['ndcg@10']:.4f}; exact layer {args.exact}", file=sys.stderr)

    rows_out = []
    for spec in args.codec.split():
        t = time.perf_counter()
        fit_on = items
        if 0 < args.fit_rows < n:
            fit_on = items[np.sort(np.random.default_rng(args.seed).choice(n, args.fit_rows, replace=False))]
        codec = make_codec(spec).fit(fit_on, seed=args.seed)
        codes = codec.encode(items)
        widths = codec.stage_bytes
        offsets = np.concatenate([[0], np.cumsum(widths)])
        layer0 = np.ascontiguousarray(codes[:, : widths[0]])
        stage_codes = [np.ascontiguousarray(codes[:, offsets[s] : offsets[s + 1]]) for s in range(len(widths))]
        fit_s = time.perf_counter() - t

        def fetch(stage: int, rows: np.ndarray, stage_codes=stage_codes) -> np.ndarray:
            return stage_codes[stage][rows]

        if codec.has_bounds:
            settings = [("confidence", float(c)) for c in args.confidence.split()]
        else:
            settings = [
                ("fallback", [int(v) for v in r.split(",")] if "," in r else int(r)) for r in args.fallback.split()
            ]
        for name, value in settings:
            t = time.perf_counter()
            kw = {"confidence": value} if name == "confidence" else {"fallback_candidates": value}
            res = certified_topk_batch(U[users], codec, layer0, fetch, args.k, exact=exact,
                                       exact_bytes_per_item=exact_bytes, budget_bytes=args.budget,
                                       exclude=exclude, **kw)
            m = ranking_metrics(res.ids, users, split.test_indptr, split.test_items, ks)
            overlap = np.mean([np.intersect1d(a, b).size for a, b in zip(res.ids, ref_ids)]) / args.k
            row = {
                "codec": spec, "stage_bytes": list(widths), "has_bounds": bool(codec.has_bounds),
                name: value, "exact": args.exact, "k": args.k, "budget": args.budget,
                "rel_recall50": m["recall@50"] / ref["recall@50"], "rel_ndcg10": m["ndcg@10"] / ref["ndcg@10"],
                "topk_overlap": float(overlap),
                "bytes_per_item": res.mean_bytes_per_item,
                "bytes_per_item_p90": float(np.quantile(res.bytes_per_item, 0.9)),
                "layer0_bytes_per_item": res.bytes_layer0 / n,
                "refined_bytes_per_item_by_step": dict(zip(res.steps, (res.bytes_refined.mean(0) / n).tolist())),
                "items_fetched_by_step": dict(zip(res.steps, res.items_fetched.mean(0).tolist())),
                "certified_share": float(res.certified.mean()),
                "users": int(len(users)), "fit_seconds": fit_s, "seconds": time.perf_counter() - t,
            }
            rows_out.append(row)
            print(json.dumps(row), file=sys.stderr)

    print(f"Command: `{command}`  ")
    print(f"amazon-book d={d}, {n} items, {len(users)} sampled eval users, K={args.k}, exact layer {args.exact}. "
          f"B/item = mean over users of (layer 0 + refinement bytes) / n_items.\n")
    head = ["codec", "setting", "rel R@50", "rel N@10", "top-K overlap", "B/item", "B/item p90", "certified",
            "items fetched per step"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows_out:
        setting = f"conf {r['confidence']}" if "confidence" in r else f"R {r['fallback']}"
        fetched = ", ".join(f"{k} {v:.0f}" for k, v in r["items_fetched_by_step"].items())
        print(f"| {r['codec']} | {setting} | {r['rel_recall50']:.4f} | {r['rel_ndcg10']:.4f} | "
              f"{r['topk_overlap']:.4f} | {r['bytes_per_item']:.2f} | {r['bytes_per_item_p90']:.2f} | "
              f"{r['certified_share']:.3f} | {fetched} |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": command, "reference": ref, "rows": rows_out}, f, indent=1)


if __name__ == "__main__":
    main()
