"""Search over compressed catalogs: fused top-K scanners, progressive and certified refinement, ONNX export.

* :func:`make_scanner` prepares a layer's codes for one-user-at-a-time ranking (the codec's own scanner).
* :func:`progressive_topk` ranks with a coarse layer and refines only the candidates;
  :func:`certified_topk` does so with per-item score bounds, stopping once the top-K is proven.
* :func:`export_onnx` writes a portable scorer (``onnx`` / ``onnxruntime``: the ``[onnx]`` extra).

The kernels themselves are in :mod:`reelpack.kernels`.
"""

from reelpack.search.certified import CertifiedBatchResult, CertifiedResult, certified_topk, certified_topk_batch
from reelpack.search.onnx_export import OnnxScorer, export_onnx, onnx_supported
from reelpack.search.progressive import PackLayerFetcher, ProgressiveResult, progressive_topk
from reelpack.search.scan import Scanner, make_scanner

__all__ = [
    "make_scanner",
    "Scanner",
    "progressive_topk",
    "ProgressiveResult",
    "PackLayerFetcher",
    "certified_topk",
    "certified_topk_batch",
    "CertifiedResult",
    "CertifiedBatchResult",
    "export_onnx",
    "onnx_supported",
    "OnnxScorer",
]
