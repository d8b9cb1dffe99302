"""What the residual options cost at search time in the C runtime: ``rqB`` against ``rqB-n`` and ``rqB-pD-n``.

``-n`` (cosine scores: each score divided by the item's reconstruction norm) and ``-pD`` (stages on the top D
principal coordinates) won the validation sweeps of BENCHMARKS 1.6; the runtime reads both since the
``rq`` post-scale landed. This script times one query, top-``--k``, over ``--items`` codes (SYNTHETIC unit
vectors, a fixed seed), through :class:`reelpack.search.native.NativeScanner` and the numba scanner
(:func:`reelpack.search.make_scanner`), median of ``--repeats`` after warm-up, one thread everywhere, and checks
that both return the same top-K ids.

Usage (from the project root, after ``make -C runtime``)::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 REELPACK_RUNTIME_LIB=runtime/build/libreelpack.so \\
        python benchmarks/rq_native_speed.py [--items 100000] [--dim 64] [--specs "rq8 rq8-n rq8-p32-n"]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from reelpack.bench.latency import median_seconds
from reelpack.codecs import make_codec
from reelpack.search import make_scanner



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--queries", type=int, default=50, help="distinct queries; each is timed, the median kept")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--specs", default="rq8 rq8-n rq8-p32-n rq16 rq16-n rq16-p32-n")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    # SYNTHETIC: correlated Gaussian vectors (a decaying spectrum, as embeddings have), L2-normalised
    scale = np.linspace(1.0, 0.2, args.dim).astype(np.float32)
    X = rng.standard_normal((args.items, args.dim)).astype(np.float32) * scale
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q = rng.standard_normal((args.queries, args.dim)).astype(np.float32) * scale

    print(f"SYNTHETIC {args.items} x {args.dim}-d unit vectors, top-{args.k}, one query per call, one thread; "
          f"{platform.machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")  # fmt: skip
    print("| spec | B | C kernel | C ms | numba ms | C / numba | same top-K ids |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for spec in args.specs.split():
        codec = make_codec(spec).fit(X[: min(20_000, args.items)], seed=0)
        codes = codec.encode(X)
        native = make_scanner(codec, codes, backend="native")
        numba = make_scanner(codec, codes)
        c_ms, n_ms, same = [], [], 0
        for q in Q:
            one = q[None, :]
            c_ms.append(1e3 * median_seconds(lambda: native.search(one, args.k), args.repeats, warmup=3))
            n_ms.append(1e3 * median_seconds(lambda: numba.search(one, args.k), args.repeats, warmup=3))
            same += int(np.array_equal(native.search(one, args.k)[0], numba.search(one, args.k)[0]))
        c, n = statistics.median(c_ms), statistics.median(n_ms)
        print(f"| `{spec}` | {codec.bytes_per_vector} | {native.kernel} | {c:.3f} | {n:.3f} | {c / n:.2f} | "
              f"{same / len(Q):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
