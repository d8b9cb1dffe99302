"""Sharded catalog build on Dask: throughput with 1 and 2 workers, peak memory per worker, bytes written.

A SYNTHETIC clustered catalog (:class:`reelpack.catalog.build.SyntheticSource`: each shard is generated on its
worker from (seed, chunk), so the catalog never exists in one process) is encoded to a single-layer PQ16 pack
(``pack.rpk`` + ``layer0.rpk``) plus ``vectors.npy``/``ids.npy`` (unless ``--no-arrays``), without the HNSW index,
by ``build_catalog_sharded`` on a LocalCluster of N worker processes (one thread each), for each N in
``--workers``. Every run starts from an empty store and work folder (codecs fitted each time).

Reported per run: wall time of each phase (cluster start, fit, encode, assemble, publish), encode throughput
(items/s over the encode phase: generation + encoding + shard files, the parallel part) and end-to-end
throughput, peak RSS (VmHWM) of each worker process and of the driver, bytes written (shard files + published
files). The packs of all runs must be byte-identical (checked).

Usage (the 10M measurement, on a quiet machine; see docs/SCALE.md for time and disk):
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \\
        python benchmarks/scale_out.py --n 10000000 --workers 1,2 --root runs/scale-out --out scale_10m.json
Quick check:
    python benchmarks/scale_out.py --n 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from reelpack.util.memory import reset_peak_rss, status_kb
from reelpack.format.delta import sha256_file
from reelpack.catalog.build import SyntheticSource, build_catalog_sharded
from reelpack.catalog.store import CatalogStore


def run_once(root: Path, n: int, dim: int, codec: str, workers: int, shard_size: int, ipb: int, arrays: bool,
             seed: int) -> dict:  # fmt: skip
    store_dir = root / f"store-w{workers}"
    shutil.rmtree(store_dir, ignore_errors=True)
    reset_peak_rss()
    stats: dict = {}
    t0 = time.perf_counter()
    entry = build_catalog_sharded(
        CatalogStore(store_dir), "bench", SyntheticSource(n, dim, seed=seed), codecs=codec, items_per_block=ipb,
        seed=seed, index=False, arrays=arrays, scheduler="local", n_workers=workers, shard_size=shard_size,
        stats=stats,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    published = sum(f["bytes"] for f in entry["files"].values())
    pack = store_dir / "bench" / entry["files"]["pack"]["path"]
    out = {
        "workers": workers,
        "n": n,
        "dim": dim,
        "codec": codec,
        "shards": stats["shards"],
        "wall_s": round(wall, 2),
        **{k: round(stats[k], 2) for k in ("cluster_s", "fit_s", "warm_s", "encode_s", "assemble_s", "publish_s")},
        "shard_busy_s": round(stats["shard_busy_s"], 2),
        "worker_utilisation": round(stats["shard_busy_s"] / (workers * stats["encode_s"]), 3),
        "encode_items_per_s": round(n / stats["encode_s"]),
        "end_to_end_items_per_s": round(n / wall),
        "worker_peak_rss_mb": sorted(round(kb / 1024, 1) for kb in stats["workers"].values()),
        "driver_peak_rss_mb": round((status_kb("VmHWM") or 0) / 1024, 1),
        "shard_bytes": stats["shard_bytes"],
        "published_bytes": published,
        "bytes_written": stats["shard_bytes"] + published,
        "files": {k: f["bytes"] for k, f in entry["files"].items()},
        "pack_sha256": entry["files"]["pack"]["sha256"],
    }
    assert out["pack_sha256"] == sha256_file(pack)
    shutil.rmtree(store_dir, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000_000, help="catalog rows (default 10M)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--codec", default="pq16")
    p.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated")
    p.add_argument("--shard-size", type=int, default=262_144)
    p.add_argument("--items-per-block", type=int, default=1024)
    p.add_argument("--no-arrays", action="store_true", help="skip vectors.npy / ids.npy (packs only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", help="folder for the stores and shard files (default: a temporary folder)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="reelpack-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for w in (int(x) for x in args.workers.split(",")):
        r = run_once(root, args.n, args.dim, args.codec, w, args.shard_size, args.items_per_block, not args.no_arrays,
                     args.seed)  # fmt: skip
        rows.append(r)
        print(json.dumps(r), flush=True)
    if len({r["pack_sha256"] for r in rows}) != 1:
        raise SystemExit("the packs differ between worker counts")
    base = rows[0]
    print(f"\n{args.n:,} x {args.dim} SYNTHETIC, {args.codec}, {rows[0]['shards']} shards, "
          f"items per block {args.items_per_block}; packs identical across runs: yes")  # fmt: skip
    print("| workers | wall s | cluster s | fit s | warm s | encode s | assemble s | encode items/s | end-to-end items/s | "
          "encode speed-up | end-to-end speed-up | peak RSS per worker MB | driver peak MB | GB written |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['workers']} | {r['wall_s']} | {r['cluster_s']} | {r['fit_s']} | {r['warm_s']} | {r['encode_s']} | "
              f"{r['assemble_s']} | {r['encode_items_per_s']:,} | {r['end_to_end_items_per_s']:,} | "
              f"{base['encode_s'] / r['encode_s']:.2f}x | {base['wall_s'] / r['wall_s']:.2f}x | {', '.join(map(str, r['worker_peak_rss_mb']))} | "
              f"{r['driver_peak_rss_mb']} | {r['bytes_written'] / 1e9:.2f} |")  # fmt: skip
    if args.out:
        meta = {"command": "python benchmarks/scale_out.py " + " ".join(
                    f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False)),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "runs": rows}  # fmt: skip
        Path(args.out).write_text(json.dumps(meta, indent=1) + "\n")
        print(f"wrote {args.out}")
    if not args.root:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
