"""Full loopback load test of the pack service: 200 simulated users for 60 s against one process.

Builds a SYNTHETIC catalog (100,000 x 64, clustered Gaussian unit vectors) into a temporary store with
``build_catalog`` (codecs pq4 + sq8 and the HNSW index), starts ``reelpack serve`` in a child process
on 127.0.0.1, runs :func:`reelpack.bench.loadtest.run_load` and prints the report (errors, throughput,
p50/p90/p99 per request type). Exit status 1 when any request failed.

Also measures the HNSW index's Recall@50 against exact float32 on 1,000 user vectors drawn like
the items (held-out draws from the same clusters), at the index's ``expansion_search``.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/load_test.py [--items 100000] [--clients 200] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from reelpack.bench.speed import synthetic_catalog
from reelpack.catalog.ann import HNSWIndex
from reelpack.bench.loadtest import LoadConfig, run_load, start_server, stop_server
from reelpack.catalog.store import CatalogStore, build_catalog


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="reelpack-load-") as tmp:
        store = CatalogStore(tmp)
        both = synthetic_catalog(args.items + 1000, args.dim, seed=0)
        X, users = both[: args.items], both[args.items :]  # users: held-out draws from the same clusters
        t0 = time.perf_counter()
        entry = build_catalog(store, "synthetic", np.arange(args.items, dtype=np.int64), X)
        build_s = time.perf_counter() - t0
        index = HNSWIndex.load(
            store.file("synthetic", entry["version"], "index"), expansion_search=entry["index"]["expansion_search"]
        )
        recall = index.recall_at(X, users, k=50, ids=np.arange(args.items, dtype=np.int64))
        proc, url = start_server(tmp, log_path=Path(tmp) / "server.log")
        try:
            report = run_load(url, "synthetic", LoadConfig(clients=args.clients, seconds=args.seconds))
        finally:
            stop_server(proc)
        result = {
            "catalog": f"SYNTHETIC {args.items} x {args.dim}",
            "build_seconds": build_s,
            "version_entry": entry,
            "hnsw_recall_at_50_vs_exact": recall,
            "hnsw_expansion_search": index.expansion_search,
            "load": report.to_dict(),
        }
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if report.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
