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
    pq_lut,
    pq_lut_reference,
    signs_dot,
    signs_dot_reference,
    sq4_dot,
    sq4_dot_reference,
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
