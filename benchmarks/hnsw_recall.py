"""Recall@50 of the server-side HNSW index (usearch) vs exact float32, and its single-query latency.

On amazon-book (two-tower item vectors as the catalog, the users' vectors as queries; the
embeddings come from the reelpack cache, trained on first use) and on the SYNTHETIC 100k x 64
catalog (queries: held-out draws from the same clusters), for several ``expansion_search`` values. One thread.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/hnsw_recall.py --data ../shared/data/amazon-book/interactions.txt
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from reelpack.data import load_interactions, train_test_split
from reelpack.bench.speed import synthetic_catalog
from reelpack.catalog.ann import HNSWIndex
from reelpack.models import TwoTowerConfig, load_or_train


def measure(name: str, items: np.ndarray, queries: np.ndarray, efs: tuple[int, ...]) -> None:
    ids = np.arange(items.shape[0], dtype=np.int64)
    t0 = time.perf_counter()
    index = HNSWIndex.build(items, ids)
    build_s = time.perf_counter() - t0
    print(f"{name}: {items.shape[0]:,} x {items.shape[1]} items, {queries.shape[0]} queries, build {build_s:.1f} s")
    print("| expansion_search | Recall@50 vs exact | mean ms / query | p99 ms |")
    print("|---:|---:|---:|---:|")
    for ef in efs:
        index.expansion_search = ef
        recall = index.recall_at(items, queries, k=50)
        times = []
        for q in queries:
            t = time.perf_counter()
            index.search(q[None, :], 50)
            times.append(time.perf_counter() - t)
        ms = 1e3 * np.asarray(times)
        print(f"| {ef} | {recall:.4f} | {ms.mean():.3f} | {np.percentile(ms, 99):.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="interactions file (amazon-book); skipped when absent")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=1000)
    args = p.parse_args()
    efs = (64, 128, 256, 512)
    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        if args.data:
            split = train_test_split(load_interactions(args.data), seed=0)
            emb, _ = load_or_train(split, TwoTowerConfig(dim=args.dim, seed=0), progress=False)
            users = rng.choice(emb.user_emb.shape[0], args.queries, replace=False)
            measure("amazon-book two-tower", np.asarray(emb.item_emb, np.float32),
                    np.asarray(emb.user_emb[users], np.float32), efs)  # fmt: skip
        # queries drawn like the items (same clusters): the last rows of one draw, not part of the index
        both = synthetic_catalog(100_000 + args.queries, args.dim, 0)
        measure("SYNTHETIC clustered", both[:100_000], both[100_000:], efs)


if __name__ == "__main__":
    main()
