"""Guest instructions per query of the aarch64 runtime, counted under qemu-aarch64 (NEON and portable paths).

qemu's timings say nothing about a phone, but the number of aarch64 instructions a query executes does not
depend on the host: it is what the NEON kernels cost, before a phone's IPC turns it into time. qemu 7.2 in
Debian has no instruction-count plugin, so this script counts from qemu's own logs: ``-d in_asm`` prints each
translated block's guest instructions once, ``-d exec,nochain`` logs every block execution; instructions =
sum over executions of the block's length. ``rp-rank --bench N`` runs open + verify + one scanner + N
searches, so the per-query count is the difference between N = 3 and N = 1, halved.

For comparison the x86-64 build is counted the same way with valgrind (callgrind), AVX2 and portable.

Usage (from the repository root, after ``make -C runtime`` and
``make -C runtime CROSS=aarch64-linux-gnu- STATIC=1 BUILD=runtime/build-aarch64``):

    python benchmarks/qemu_insn_count.py [--items 100000] [--out results/qemu-insn.json]

The packs are SYNTHETIC (clustered Gaussian, unit norm, 64-d), codecs fitted with reelpack.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from reelpack.bench.speed import synthetic_catalog
from reelpack.codecs import make_codec
from reelpack.format import write_pack

INSN = re.compile(r"^0x([0-9a-f]+):\s")
EXEC = re.compile(r"^Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/")


def count_instructions(cmd: list[str], log: Path) -> int:
    """Guest instructions executed by ``cmd`` (a static aarch64 program) under qemu-aarch64.

    ``in_asm`` lists each translated block's instructions (``IN:`` then one ``0xADDR:`` line each); ``exec`` with
    ``nochain`` logs one ``Trace`` line per block execution with the block's guest address."""
    subprocess.run(["qemu-aarch64", "-d", "in_asm,exec,nochain", "-D", str(log), *cmd],
                   check=True, capture_output=True, timeout=3600)  # fmt: skip
    sizes: dict[int, int] = {}
    total = 0
    start: int | None = None
    with open(log, errors="replace") as f:
        for line in f:
            if line.startswith("IN:"):
                start = None
                continue
            m = INSN.match(line)
            if m:
                addr = int(m.group(1), 16)
                if start is None:
                    start = addr
                    sizes[start] = 0
                sizes[start] += 1
                continue
            if line.startswith("Trace"):
                start = None
                e = EXEC.match(line)
                if e:
                    total += sizes.get(int(e.group(1), 16), 0)
    log.unlink()
    return total


def count_instructions_valgrind(cmd: list[str]) -> int:
    """Instructions executed by a native (x86-64) program, from valgrind's callgrind summary."""
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd],
                          capture_output=True, text=True, timeout=3600)  # fmt: skip
    m = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode or not m:
        sys.exit(f"valgrind failed: {proc.stderr[-500:]}")
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--build", default="runtime/build-aarch64", help="static aarch64 build folder (rp-rank)")
    ap.add_argument("--specs", default="pq16,pq32x4,sq8,simhash128-hamming")
    ap.add_argument("--native-build", default="runtime/build",
                    help="x86-64 build folder: its rp-rank is counted with valgrind for comparison ('' to skip)")
    ap.add_argument("--out", default="results/qemu-insn.json")
    args = ap.parse_args()
    rank = Path(args.build) / "rp-rank"
    if not rank.is_file():
        sys.exit(f"{rank} not found: build it with make -C runtime CROSS=aarch64-linux-gnu- STATIC=1 BUILD=...")
    X = synthetic_catalog(args.items, 64, 0)
    q = synthetic_catalog(1, 64, 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        qfile = Path(tmp) / "q.f32"
        qfile.write_bytes(q.astype("<f4").tobytes())
        for spec in args.specs.split(","):
            codec = make_codec(spec).fit(X[:20_000], seed=0)
            pack = Path(tmp) / f"{spec}.rpak"
            write_pack(pack, np.arange(args.items), [(codec, codec.encode(X))], items_per_block=4096)
            for kernel in ("neon", "portable"):
                counts = {}
                for n in (1, 3):
                    cmd = [str(rank), str(pack), str(qfile), "--bench", str(n), "--kernel", kernel, "-k", "50"]
                    counts[n] = count_instructions(cmd, Path(tmp) / "qemu.log")
                per_query = (counts[3] - counts[1]) / 2
                row = {"spec": spec, "kernel": kernel, "n_items": args.items, "insn_per_query": per_query,
                       "insn_per_item": per_query / args.items, "insn_open_verify_prepare_1query": counts[1]}  # fmt: skip
                print(json.dumps(row), flush=True)
                rows.append(row)
            native = Path(args.native_build) / "rp-rank" if args.native_build else None
            if native is not None and native.is_file():
                for kernel in ("avx2", "portable"):
                    counts = {n: count_instructions_valgrind([str(native), str(pack), str(qfile), "--bench", str(n),
                                                             "--kernel", kernel, "-k", "50"]) for n in (1, 3)}  # fmt: skip
                    per_query = (counts[3] - counts[1]) / 2
                    row = {"spec": spec, "kernel": f"x86-64 {kernel} (valgrind)", "n_items": args.items,
                           "insn_per_query": per_query, "insn_per_item": per_query / args.items}  # fmt: skip
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    Path(args.out).write_text(json.dumps({"kind": "qemu-insn", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
