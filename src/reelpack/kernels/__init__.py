"""Numba kernels, the bottom layer: dense scoring of codes, fused score + top-K scans, the bounded heap.

* :mod:`reelpack.kernels.dense`: full score matrices (PQ lookup tables and ADC, SQ dot products, Hamming,
  sign dot products, int4 packing) for batches of queries.
* :mod:`reelpack.kernels.scan`: fused score + top-K for one query against 10^5-10^6 codes (SIMD where the
  CPU has it, :mod:`reelpack.kernels.simd`).
* :mod:`reelpack.kernels.topk`: top-K of score matrices; :mod:`reelpack.kernels.heap`: the heap they share.

Nothing here imports reelpack beyond :mod:`reelpack.errors` and :mod:`reelpack.util`.
"""

from reelpack.kernels.topk import mask_rows, topk

__all__ = ["topk", "mask_rows"]
