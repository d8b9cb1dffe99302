"""Scoring: top-K selection and the kernels that score float queries against compressed codes."""

from reelpack.score.kernels import (
    GEMM_MIN_QUERIES,
    hamming,
    hamming_reference,
    pack_int4,
    pack_int4_reference,
    pq_adc,
    pq_adc_reference,
    pq_decode,
    pq_decode_reference,
    pq_ip,
    pair_tables,
    pq_lut,
    pq_lut_reference,
    signs_dot,
    signs_dot_reference,
    sq4_dot,
    sq4_dot_reference,
    sq_decode,
    sq_dot,
    sq_dot_reference,
    unpack_int4,
    unpack_int4_reference,
)
from reelpack.score.topk import mask_rows, topk, topk_reference

__all__ = [
    "topk",
    "topk_reference",
    "mask_rows",
    "GEMM_MIN_QUERIES",
    "pq_lut",
    "pq_lut_reference",
    "pq_adc",
    "pq_adc_reference",
    "pq_decode",
    "pq_decode_reference",
    "pq_ip",
    "pair_tables",
    "sq_decode",
    "hamming",
    "hamming_reference",
    "sq_dot",
    "sq_dot_reference",
    "sq4_dot",
    "sq4_dot_reference",
    "unpack_int4",
    "unpack_int4_reference",
    "pack_int4",
    "pack_int4_reference",
    "signs_dot",
    "signs_dot_reference",
]

# Progressive refinement (issue 4): imported last, it uses the codecs, which use the kernels above.
from reelpack.score.progressive import PackLayerFetcher, ProgressiveResult, progressive_topk  # noqa: E402

__all__ += ["progressive_topk", "ProgressiveResult", "PackLayerFetcher"]

# Certified progressive retrieval (issue 5): bounds-guided refinement over a codec's stages.
from reelpack.score.certified import (  # noqa: E402
    CertifiedBatchResult,
    CertifiedResult,
    certified_topk,
    certified_topk_batch,
)

__all__ += ["certified_topk", "certified_topk_batch", "CertifiedResult", "CertifiedBatchResult"]

# Fused single-query scans and the portable ONNX scorer (issue 6).
from reelpack.score.scan import (  # noqa: E402
    FastScanBlocks,
    PQ8Blocks,
    Scanner,
    binary_ip_search,
    fastscan_search,
    hamming_search,
    make_scanner,
    pq_search,
    sq4_search,
    sq8_search,
)
from reelpack.score.onnx_export import OnnxScorer, export_onnx, onnx_supported  # noqa: E402
from reelpack.score.simd import host_simd  # noqa: E402

__all__ += [
    "make_scanner", "Scanner", "pq_search", "PQ8Blocks", "fastscan_search", "FastScanBlocks", "hamming_search",
    "binary_ip_search", "sq8_search", "sq4_search", "host_simd", "export_onnx", "onnx_supported", "OnnxScorer",
]  # fmt: skip
