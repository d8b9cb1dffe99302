"""Cold-start study: Recall@50 / NDCG@10 on held-out COLD items embedded from metadata.

Data: the SYNTHETIC default catalog (``synthetic_interactions()``) with SYNTHETIC item metadata
(``synthetic_item_metadata()``: creator, category, 4 numeric features drawn from the same
latent clusters and popularity as the interactions). Real interaction files carry no item
metadata, so this study runs on the synthetic catalog only.

Protocol (``reelpack.models.content.cold_start_eval``): a seeded ``--cold-fraction`` of the
catalog is COLD; their train interactions are removed before the two-tower is trained; the
content tower learns metadata -> ID item embedding on the warm items and embeds the cold ones.
Targets are the users' test interactions with cold items, ranked among the cold items only
(``cold-only``) or in the full catalog (``full/cold``); ``full/all`` ranks the full catalog
against every test interaction. Baselines: random cold embeddings, popularity (cold = 0), and
the oracle (a two-tower trained with the cold items' train interactions: the upper bound).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/cold_start.py            # ~1 minute, 3 cold draws
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/cold_start.py --seeds 0 --ablations
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from reelpack.data import synthetic_interactions, train_test_split
from reelpack.data.metadata import synthetic_item_metadata
from reelpack.models import TwoTowerConfig
from reelpack.models.content import ColdStartResult, ContentTowerConfig, cold_start_eval


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold-fraction", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="cold-item draws (and content seeds)")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=5, help="two-tower epochs")
    ap.add_argument("--content-epochs", type=int, default=ContentTowerConfig().epochs)
    ap.add_argument("--category-noise", type=float, default=0.25)
    ap.add_argument("--creator-noise", type=float, default=0.1)
    ap.add_argument("--ablations", action="store_true", help="also score content without creator / features")
    ap.add_argument("--json", type=str, default="", help="write every row to this JSON file")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    inter = synthetic_interactions()
    meta = synthetic_item_metadata(
        interactions=inter, category_noise=args.category_noise, creator_noise=args.creator_noise
    )
    split = train_test_split(inter, seed=0)
    item_meta = meta.take(split.item_ids)
    tt = TwoTowerConfig.for_synthetic(dim=args.dim, epochs=args.epochs)
    print(f"data: {split.label}")
    print(f"metadata: {meta.label}")
    print(f"two-tower: {tt.dim}-d, {tt.epochs} epochs; cold fraction {args.cold_fraction}; seeds {args.seeds}\n")
    results: list[ColdStartResult] = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        ct = ContentTowerConfig(epochs=args.content_epochs, seed=seed)
        res = cold_start_eval(
            split, item_meta, args.cold_fraction, seed=seed, two_tower=tt, content=ct, ablations=args.ablations
        )
        results.append(res)
        info = res.info
        print(
            f"seed {seed}: {info['n_cold']} cold of {info['n_items']} items, {info['train_removed']} train "
            f"interactions removed; two-tower {info['two_tower_seconds']:.1f}s, content tower "
            f"{info['content_seconds']:.1f}s, oracle {info['oracle_seconds']:.1f}s, "
            f"total {time.perf_counter() - t0:.1f}s"
        )
        print(res.table() + "\n")
    if len(results) > 1:
        rows = []
        for r0 in results[0].rows:
            vals = {
                k: np.array([r.get(r0["method"], r0["scope"], k) for r in results]) for k in ("recall@50", "ndcg@10")
            }
            rows.append({**r0, **{k: float(v.mean()) for k, v in vals.items()},
                         **{f"{k}_std": float(v.std()) for k, v in vals.items()}})  # fmt: skip
        mean = ColdStartResult(rows, results[0].cold_items, {})
        print(f"mean over {len(results)} cold draws (SYNTHETIC):")
        print(mean.table())
        print("std of cold-only Recall@50: " + ", ".join(
            f"{r['method']} {r['recall@50_std']:.4f}" for r in rows if r["scope"] == "cold-only"))  # fmt: skip
    if args.json:
        out = [{"seed": s, **row} for s, r in zip(args.seeds, results) for row in r.rows]
        with open(args.json, "w") as fh:
            json.dump({"synthetic": True, "data": split.label, "metadata": meta.label, "rows": out}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
