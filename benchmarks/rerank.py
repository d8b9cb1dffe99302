"""On-device re-ranker on amazon-book: float32 brute force, each 8 B/item codec's own ranking and the re-ranked one.

Same run, same users: the cached two-tower embeddings (``--dim``, seed 0; train them first
with ``reelpack train --dim 64`` if absent), the seed-0 split, ``--users`` evaluated users
(a seeded sample; 0 = every user with test items) and ``--train-users`` training users
drawn from the remaining users (when fewer remain, e.g. --users 0, they are drawn from all users:
training only reads train items and float32 scores, never a test item). Reports rel
Recall@50, rel NDCG@10, rel MRR of the codec's ranking and of the re-ranked top-``R``
(targets: +0.03 rel Recall@50 and rel NDCG@10) for a re-ranker with the popularity feature
(codes + 1 byte/item) and one without it (codes only; ``--popularity``), and per-user re-rank latency for ``R``
candidates with numpy and onnxruntime (one thread; target < 1 ms).

Usage: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \\
       python benchmarks/rerank.py [--codecs 'pq8;opq8,pq8;apq8'] [--users 5000] [--popularity both|on|off] \\
       [--out rerank.json] 2>/dev/null
"""

from __future__ import annotations

import argparse
import os
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("REELPACK_DATA", "../shared/data/amazon-book/interactions.txt"),
        help="interactions file (default: $REELPACK_DATA, else ../shared/data/amazon-book/interactions.txt)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--codecs", default="pq8;opq8,pq8;apq8", help="';'-separated codec specs")
    parser.add_argument("--users", type=int, default=5000, help="evaluated users (0 = all with test items)")
    parser.add_argument("--train-users", type=int, default=10000)
    parser.add_argument("--r", type=int, default=200)
    parser.add_argument("--latency-users", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.03)
    parser.add_argument("--popularity", choices=("both", "on", "off"), default="both",
                        help="re-ranker variants: with the log_pop feature (codes + 1 B/item), without (codes only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-dir", default=None, help="write each trained re-ranker file here")
    parser.add_argument("--out", default=None, help="JSON results file")
    args = parser.parse_args()

    import faiss
    from threadpoolctl import threadpool_limits

    from reelpack.data import load_interactions, train_test_split
    from reelpack.models.rerank.evaluate import rerank_benchmark
    from reelpack.models import TwoTowerConfig, load_cached

    faiss.omp_set_num_threads(1)
    limits = threadpool_limits(1)
    split = train_test_split(load_interactions(args.data), seed=0)
    emb = load_cached(split, TwoTowerConfig(dim=args.dim, seed=0))
    if emb is None:
        sys.exit(f"no cached {args.dim}-d embeddings for {args.data}: run `reelpack train --dim {args.dim}` first")
    rng = np.random.default_rng(args.seed)
    eval_all = split.eval_users()
    users = eval_all if args.users <= 0 or args.users >= len(eval_all) else np.sort(
        rng.choice(eval_all, args.users, replace=False))  # fmt: skip
    pool = np.setdiff1d(np.arange(split.n_users), users)
    # too few users outside the evaluated ones (e.g. --users 0): train on all users; training reads only
    # their train items and float32 scores, never a test item
    pool = pool if len(pool) >= args.train_users else np.arange(split.n_users)
    train_users = np.sort(rng.choice(pool, min(args.train_users, len(pool)), replace=False))
    specs = tuple(s for s in args.codecs.split(";") if s)
    t0 = time.perf_counter()
    result = rerank_benchmark(
        split, emb.user_emb, emb.item_emb, specs, users, train_users, r=args.r, latency_users=args.latency_users,
        seed=args.seed, popularity={"both": (True, False), "on": (True,), "off": (False,)}[args.popularity],
        train_kwargs={"epochs": args.epochs, "hidden": args.hidden, "temperature": args.temperature},
        save_dir=args.save_dir, progress=lambda s: print(s, flush=True),
    )  # fmt: skip
    result["provenance"] = {
        "command": " ".join(sys.argv), "data": args.data, "data_hash": split.data_hash, "dim": args.dim,
        "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
        "wall_s": time.perf_counter() - t0,
        "train_users_disjoint_from_eval": bool(len(np.intersect1d(users, train_users)) == 0),
    }  # fmt: skip
    print(f"\n{'codec':12s} {'pop':>3s} {'B/item':>6s} {'rel R@50':>17s} {'rel NDCG@10':>17s} {'rel MRR':>17s} "
          f"{'numpy ms':>9s} {'onnx ms':>8s}")  # fmt: skip
    for row in result["rows"]:
        c, n = row["codec_rel"], row["rerank_rel"]
        cells = [f"{c[k]:.3f}->{n[k]:.3f} ({n[k] - c[k]:+.3f})" for k in ("rel_recall@50", "rel_ndcg@10", "rel_mrr")]
        lat = row["latency"]
        pop = "on" if row["popularity"] else "off"
        print(f"{row['codec']:12s} {pop:>3s} {row['bytes_per_item']:>6d} {cells[0]:>17s} {cells[1]:>17s} "
              f"{cells[2]:>17s} "
              f"{lat['numpy_ms_mean']:9.3f} {lat['onnx_ms_mean']:8.3f}")  # fmt: skip
    print(f"users {len(users)}, train users {len(train_users)}, R {args.r}, float32 {result['float32']}")
    if args.out:
        from reelpack.util.atomic import atomic_write_bytes

        atomic_write_bytes(args.out, json.dumps(result, indent=2).encode())
        print(f"wrote {args.out}")
    del limits


if __name__ == "__main__":
    main()
