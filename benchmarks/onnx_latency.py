"""Latency of the exported ONNX scorer (onnxruntime, 1 thread) against reelpack's numpy/numba path.

One query, top-50, over 100k items x 16 B (``pq16`` at d=64 on random Gaussian data,
fitted on a 20k-row sample). Timed paths, median of ``--repeats`` runs after warm-up:

* ``reelpack``: ``codec.score(q, codes)`` (LUT + numba ADC) + :func:`reelpack.kernels.topk`;
* ``onnx (codes input)``: :meth:`OnnxScorer.search` with the codes as a model input
  (includes the Python-side input checks);
* ``onnx (embedded)``: the codes baked into the model;
* ``onnx raw session``: ``session.run`` on the codes-input model, no reelpack checks.

Every path runs single-threaded (OMP/BLAS/numba 1 thread, onnxruntime intra_op 1).
Ids of every path are checked against the reelpack path.

Usage: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \\
       PYTHONPATH=src python benchmarks/onnx_latency.py [--items 100000] [--repeats 50] 2>/dev/null
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np

from reelpack.bench.latency import median_seconds
from reelpack.codecs import make_codec
from reelpack.kernels import topk
from reelpack.search.onnx_export import OnnxScorer, export_onnx


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--spec", default="pq16")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import onnxruntime

    rng = np.random.default_rng(args.seed)
    X = rng.normal(size=(args.items, args.dim)).astype(np.float32)
    q = rng.normal(size=(1, args.dim)).astype(np.float32)
    codec = make_codec(args.spec).fit(X[:20_000], seed=args.seed)
    codes = codec.encode(X)

    model = export_onnx(codec, args.k)
    scorer = OnnxScorer(model, threads=1)
    embedded = OnnxScorer(export_onnx(codec, args.k, codes=codes), threads=1)
    session = scorer.session

    ref_ids, _ = topk(codec.score(q, codes), args.k)
    assert (scorer.search(q, codes)[0] == ref_ids).all()
    assert (embedded.search(q)[0] == ref_ids).all()

    def ms(fn) -> float:
        return 1e3 * median_seconds(fn, args.repeats, warmup=3)

    rows = {
        "reelpack score + topk": ms(lambda: topk(codec.score(q, codes), args.k)),
        "onnx (codes input)": ms(lambda: scorer.search(q, codes)),
        "onnx (embedded)": ms(lambda: embedded.search(q)),
        "onnx raw session.run": ms(lambda: session.run(None, {"query": q, "codes": codes})),
    }
    print(f"{args.spec} d={args.dim}, {args.items} items x {codec.bytes_per_vector} B, 1 query, top-{args.k}, "
          f"median of {args.repeats} runs, 1 thread; onnxruntime {onnxruntime.__version__}; {cpu_name()}")  # fmt: skip
    print(f"model bytes: {len(model)} (codes input)")
    for name, ms in rows.items():
        print(f"  {name:<24} {ms:8.3f} ms")


if __name__ == "__main__":
    main()
