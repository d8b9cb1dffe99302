"""On-device re-ranking of a codec's top-R candidates with a tiny MLP (numpy or ONNX runtime).

The phone ranks the catalog with the codec (:meth:`reelpack.codecs.Codec.score`), keeps the
top ``R`` (about 200), computes per-candidate features from signals it already holds
(:mod:`reelpack.models.rerank.features`) and re-orders them with a :class:`Reranker`
(:mod:`reelpack.models.rerank.model`), trained offline on the train split
(:func:`reelpack.models.rerank.train.train_reranker`). ``train_reranker(..., popularity=False)``
drops the ``log_pop`` feature, so the phone needs only the codes (e.g. 8 bytes/item for
``pq8``) instead of codes + 1 popularity byte per item; the file records the feature names.
"""

from reelpack.models.rerank.features import (
    CandidateBatch,
    compute_features,
    dequantise_popularity,
    feature_names,
    quantise_popularity,
)
from reelpack.models.rerank.model import (
    FORMAT_VERSION,
    OnnxReranker,
    Reranker,
    RerankResult,
    codec_fingerprint,
    load_reranker,
)
from reelpack.models.rerank.train import candidate_lists, make_batch, train_reranker, user_history

__all__ = [
    "CandidateBatch",
    "compute_features",
    "dequantise_popularity",
    "feature_names",
    "quantise_popularity",
    "FORMAT_VERSION",
    "OnnxReranker",
    "Reranker",
    "RerankResult",
    "codec_fingerprint",
    "load_reranker",
    "candidate_lists",
    "make_batch",
    "train_reranker",
    "user_history",
]
