"""Format overhead and parse + verify time of a pack of 100k items x 16 bytes (pq16 codes on random data).

Overhead = every byte that is not layer codes (header, section table, ITEM_IDS,
LAYERS, CODEC, METADATA, BLOCK_INDEX with its per-block CRCs and bounds), as a
percentage of the codes. Timing = open (mmap + directory parse and checks) +
verify() (CRC32C of every block) + item_ids + codec load + the zero-copy codes
view, pinned to one core, file in the page cache; median of --repeats runs.

Usage: PYTHONPATH=src python benchmarks/format_overhead.py [--items 100000] [--repeats 30] 2>/dev/null
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from reelpack.codecs import make_codec
from reelpack.format import PackReader, inspect, write_pack


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def open_and_verify(path: Path) -> None:
    with PackReader(path) as pack:
        report = pack.verify()
        assert report.ok
        _ = pack.item_ids
        pack.codec(0)
        pack.layer_codes(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--items-per-block", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    rng = np.random.default_rng(args.seed)
    X = rng.normal(size=(args.items, args.dim)).astype(np.float32)
    codec = make_codec("pq16").fit(X[: min(args.items, 20_000)], seed=args.seed)
    codes = codec.encode(X)
    n = args.items
    id_sets = {
        "dense ids 0..n-1": np.arange(n),
        "1% of ids missing": np.sort(rng.choice(int(n * 1.01), size=n, replace=False)),
        "sparse ids (n of 100n)": np.sort(rng.choice(100 * n, size=n, replace=False)),
    }
    metadata = {"catalog_version": "bench", "created_at": "2026-01-01T00:00:00Z"}
    print(f"machine: {cpu_name()}, {platform.system()} {platform.machine()}, python {platform.python_version()}, "
          f"numpy {np.__version__}; timing pinned to one core")  # fmt: skip
    print(f"pack: {n} items x {codec.bytes_per_vector} B (pq16, d={args.dim}), {args.items_per_block} items/block\n")
    with tempfile.TemporaryDirectory() as tmp:
        for label, ids in id_sets.items():
            path = Path(tmp) / "bench.rpak"
            write_pack(path, ids, [(codec, codes)], vectors=X, metadata=metadata, items_per_block=args.items_per_block)
            info = inspect(path)
            by_type: dict[str, int] = {}
            for s in info["sections"]:
                if s["type_name"] != "LAYER_CODES":
                    by_type[s["type_name"]] = by_type.get(s["type_name"], 0) + s["length"]
            table = 24 * info["header"]["section_count"]
            open_and_verify(path)  # warm the page cache
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                open_and_verify(path)
                times.append(time.perf_counter() - t0)
            print(f"== {label}")
            print(f"   file {info['file_bytes']} B, codes {info['payload_bytes']} B, overhead {info['overhead_bytes']} B "
                  f"= {100 * info['overhead_fraction']:.3f} % of payload")  # fmt: skip
            codec_bytes = by_type.get("CODEC", 0)
            container = info["overhead_bytes"] - codec_bytes
            print(f"   without the CODEC section (the codec's fitted parameters): {container} B "
                  f"= {100 * container / info['payload_bytes']:.3f} % of payload")  # fmt: skip
            parts = {"header": 64, "section table": table, **by_type}
            print("   overhead by part: " + ", ".join(f"{k} {v} B" for k, v in parts.items()))
            print(f"   open + verify + ids + codec: median {1e3 * statistics.median(times):.3f} ms "
                  f"(min {1e3 * min(times):.3f}, max {1e3 * max(times):.3f}, {args.repeats} runs)\n")  # fmt: skip


if __name__ == "__main__":
    main()
