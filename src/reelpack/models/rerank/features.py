"""Per-candidate features of the on-device re-ranker: only signals the phone already has.

A user's candidates are the top-``R`` items of the codec's own ranking (train items
excluded). For candidate ``t`` of a user with query vector ``q`` the features are, in
this fixed order (:func:`feature_names`):

=================  =====================================================================
``codec_score``    the codec's score ``q . decode(code_t)`` (ADC for PQ codecs)
``score_gap``      ``codec_score - max(codec_score over the user's candidates)`` (<= 0)
``rank_frac``      the candidate's rank in the codec's list divided by ``R`` (0 = best)
``code_norm``      ``|decode(code_t)|``; for PQ families from per-centroid norms (the
                   subspaces are disjoint, so ``|x_hat|^2 = sum_j |C_j[code_tj]|^2``)
``codec_cos``      ``codec_score / max(code_norm, 1e-12)``: the score of the normalised
                   reconstruction (ranking by it alone lifts pq8's rel Recall@50 on the
                   unit-norm amazon-book items from 0.820 to 0.847: quantisation shrinks norms
                   unevenly)
``sub_score_j``    PQ families only (``pq``, ``opq``, ``apq``, ``opq-apq``), one per
                   sub-quantiser ``j < M``: the partial ADC score ``q_j . C_j[code_tj]``
                   (``q`` rotated first for OPQ); they sum to ``codec_score``
``coarse_score``   codecs with more than one progressive stage only (``rq8+8``, ...):
                   ``score_prefix(q, code_t, 1)``, the first (coarse) layer's score
``log_pop``        item popularity ``log1p(train count)``, shipped per item as one byte
                   (:func:`quantise_popularity`: ``byte = round(255 log1p(c) / log1p(c_max))``)
                   and restored as ``byte / 255 * log1p(c_max)``; omitted by
                   ``feature_names(codec, popularity=False)`` (a re-ranker on the codes
                   alone: 8 bytes/item for an 8-byte codec instead of 8 + 1)
``recent_max``     ``max_l decode(code_t) . decode(code_l)`` over the user's last ``L``
``recent_mean``    train items ``l`` (mean for ``recent_mean``); 0 without history
``has_recent``     1.0 when the user has at least one history item, else 0.0
=================  =====================================================================

History order. reelpack's interactions file lists each user's items in order and
:func:`reelpack.data.train_test_split` keeps that order inside the train part, so the
last ``L`` train items are taken as the most recent. The split itself is random within a
user (not by time), so "recent" means "the last ``L`` listed train items".

Missing signals (documented behaviour, tested):

* no history (``recent_codes`` with zero valid rows, or ``None``): the recency
  features ``recent_max``, ``recent_mean`` and ``has_recent`` are all 0; the model was trained with such users
  (a share of training users have their history dropped), so this is a normal input;
* popularity bytes missing (``None``) while the model uses ``log_pop``: the re-ranker
  raises :class:`~reelpack.errors.InvalidInputError`, unless the caller passes
  ``fallback=True`` to :meth:`reelpack.models.rerank.Reranker.rerank`, which then returns the
  codec's own order and scores (and says so in its result);
* NaN/Inf in the query: :class:`~reelpack.errors.NonFiniteError`; codes of the wrong
  width: :class:`~reelpack.errors.DimensionMismatchError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reelpack.codecs.base import Codec
from reelpack.errors import DimensionMismatchError, DTypeError, InvalidInputError, NonFiniteError

__all__ = [
    "PQ_FAMILIES",
    "feature_names",
    "quantise_popularity",
    "dequantise_popularity",
    "CandidateBatch",
    "compute_features",
]

#: Codec families whose per-subspace partial scores are features.
PQ_FAMILIES = ("pq", "opq", "apq", "opq-apq")


def _family(codec: Codec) -> str:
    return str(type(codec).family)


def _n_stages(codec: Codec) -> int:
    try:
        return len(codec.stage_bytes)
    except Exception:  # codecs without a progressive interface have one stage
        return 1


def feature_names(codec: Codec, popularity: bool = True) -> tuple[str, ...]:
    """The fixed, named feature order for a fitted ``codec`` (see the module docstring).

    ``popularity=False`` omits ``log_pop`` (no per-item popularity byte is needed).
    """
    names = ["codec_score", "score_gap", "rank_frac", "code_norm", "codec_cos"]
    if _family(codec) in PQ_FAMILIES:
        names += [f"sub_score_{j}" for j in range(int(codec.m))]  # type: ignore[attr-defined]
    if _n_stages(codec) > 1:
        names.append("coarse_score")
    if popularity:
        names.append("log_pop")
    names += ["recent_max", "recent_mean", "has_recent"]
    return tuple(names)


def quantise_popularity(counts: np.ndarray) -> tuple[np.ndarray, float]:
    """Train counts int [n_items] -> (bytes uint8 [n_items], ``scale = log1p(max count)``).

    ``byte = round(255 * log1p(count) / scale)``; one byte per item ships with the catalog.
    """
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size == 0:
        raise InvalidInputError(f"popularity counts must be a non-empty 1-D array, got shape {counts.shape}")
    if counts.dtype.kind not in "iuf" or not np.isfinite(counts).all() or (counts < 0).any():
        raise InvalidInputError("popularity counts must be finite and non-negative")
    logs = np.log1p(counts.astype(np.float64))
    scale = float(logs.max()) or 1.0
    return np.rint(255.0 * logs / scale).astype(np.uint8), scale


def dequantise_popularity(pop_bytes: np.ndarray, scale: float) -> np.ndarray:
    """uint8 bytes (any shape) -> float32 ``log1p(count)`` estimates of the same shape."""
    return (np.asarray(pop_bytes, np.float32) * np.float32(scale / 255.0)).astype(np.float32)


@dataclass
class CandidateBatch:
    """What the phone holds for ``b`` users' candidate lists (``R`` candidates each, best codec score first).

    Attributes:
        queries: float32 [b, d] user vectors.
        cand_codes: uint8 [b, R, bytes_per_vector] codes of the candidates, in codec rank order.
        pop_bytes: uint8 [b, R] quantised popularity of each candidate, or None (missing; not
            needed by a re-ranker trained with ``popularity=False``).
        recent_codes: uint8 [b, L, bytes_per_vector] codes of each user's last L history items, or None.
        recent_mask: bool [b, L], True where ``recent_codes`` holds a real item (users with fewer
            than L items are padded), or None (all rows valid when ``recent_codes`` is given).
    """

    queries: np.ndarray
    cand_codes: np.ndarray
    pop_bytes: np.ndarray | None = None
    recent_codes: np.ndarray | None = None
    recent_mask: np.ndarray | None = None


def _check_batch(codec: Codec, batch: CandidateBatch) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(batch.queries)
    codes = np.asarray(batch.cand_codes)
    if q.ndim != 2 or q.shape[1] != codec.dim:
        raise DimensionMismatchError(f"queries must be [b, {codec.dim}], got shape {q.shape}")
    if q.dtype.kind not in "fiu":
        raise DTypeError(f"queries must be real numbers, got dtype {q.dtype}")
    q = np.ascontiguousarray(q, np.float32)
    if not np.isfinite(q).all():
        bad = np.flatnonzero(~np.isfinite(q).all(axis=1))
        raise NonFiniteError(f"queries hold NaN or Inf in row(s) {bad[:20].tolist()}", rows=bad[:20].tolist())
    bpv = codec.bytes_per_vector
    if codes.dtype != np.uint8:
        raise DTypeError(f"candidate codes must be uint8, got dtype {codes.dtype}")
    if codes.ndim != 3 or codes.shape[0] != q.shape[0] or codes.shape[2] != bpv or codes.shape[1] == 0:
        raise DimensionMismatchError(
            f"candidate codes must be [b={q.shape[0]}, R>=1, {bpv}] for {codec.spec}, got shape {codes.shape}"
        )
    return q, codes


def _sub_scores(codec: Codec, q: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Partial ADC scores float32 [b, R, M] and ``|x_hat|`` float32 [b, R] of PQ-family codes uint8 [b, R, bytes]."""
    cents = np.asarray(codec.centroids, np.float32)  # type: ignore[attr-defined]
    m, ksub, dsub = cents.shape
    rot = getattr(codec, "rotation", None)
    qr = q if rot is None else q @ np.asarray(rot, np.float32).T
    b, r, _ = codes.shape
    sub = codes.reshape(b * r, -1)
    if getattr(codec, "nbits", 8) == 4:
        sub = codec._subcodes(sub)  # type: ignore[attr-defined]
    sub = sub.reshape(b, r, m)
    if int(sub.max(initial=0)) >= ksub:
        raise InvalidInputError(f"codes hold value {int(sub.max())}, but each sub-quantiser has only {ksub} centroids")
    lut = np.matmul(qr.reshape(b, m, 1, dsub), cents.transpose(0, 2, 1))[:, :, 0, :]  # [b, M, ksub]
    bi = np.arange(b)[:, None, None]
    mi = np.arange(m)[None, None, :]
    norms = (cents.astype(np.float32) ** 2).sum(axis=2)  # [M, ksub]
    code_norm = np.sqrt(norms[np.arange(m)[None, None, :], sub].sum(axis=2)).astype(np.float32)
    return lut[bi, mi, sub].astype(np.float32), code_norm  # [b, R, M], [b, R]


def compute_features(
    codec: Codec,
    batch: CandidateBatch,
    names: tuple[str, ...],
    pop_scale: float,
) -> np.ndarray:
    """Features float32 [b, R, F] of ``batch`` in the order of ``names``.

    ``names`` must be ``feature_names(codec, popularity)`` for ``popularity`` True or False
    (the names stored in a re-ranker file); ``batch.pop_bytes`` is read only when
    ``names`` holds ``log_pop`` (otherwise it may be None and is ignored).

    Raises:
        InvalidInputError: ``names`` needs a signal the batch lacks (popularity) or does not
            match the codec's feature set; also bad shapes/dtypes/values (typed subclasses).
    """
    names = tuple(names)
    if names not in (feature_names(codec, True), feature_names(codec, False)):
        raise InvalidInputError(
            f"feature names {list(names)} do not match the codec's features {list(feature_names(codec))} "
            "(with or without log_pop)"
        )
    q, codes = _check_batch(codec, batch)
    b, r, bpv = codes.shape
    flat = codes.reshape(b * r, bpv)
    cols: dict[str, np.ndarray] = {}
    if _family(codec) in PQ_FAMILIES:
        sub, cols["code_norm"] = _sub_scores(codec, q, codes)
        score = sub.sum(axis=2)
        for j in range(sub.shape[2]):
            cols[f"sub_score_{j}"] = sub[:, :, j]
        dec = None
    else:
        dec = codec.decode(flat).reshape(b, r, -1)
        score = np.matmul(dec, q[:, :, None])[:, :, 0]
        cols["code_norm"] = np.sqrt((dec * dec).sum(axis=2))
    cols["codec_score"] = score
    cols["codec_cos"] = score / np.maximum(cols["code_norm"], np.float32(1e-12))
    cols["score_gap"] = score - score.max(axis=1, keepdims=True)
    cols["rank_frac"] = np.broadcast_to(np.arange(r, dtype=np.float32) / np.float32(r), (b, r))
    if "coarse_score" in names:
        width = codec.prefix_bytes(1)  # one call per user (its candidates at once)
        coarse = np.stack([codec.score_prefix(q[i : i + 1], codes[i, :, :width], 1)[0] for i in range(b)])
        cols["coarse_score"] = coarse
    if "log_pop" in names:
        if batch.pop_bytes is None:
            raise InvalidInputError("the re-ranker needs the candidates' popularity bytes (log_pop); none given")
        pop = np.asarray(batch.pop_bytes)
        if pop.dtype != np.uint8 or pop.shape != (b, r):
            raise DimensionMismatchError(f"popularity bytes must be uint8 [{b}, {r}], got {pop.dtype} {pop.shape}")
        cols["log_pop"] = dequantise_popularity(pop, pop_scale)
    zeros = np.zeros((b, r), np.float32)
    cols["recent_max"], cols["recent_mean"], cols["has_recent"] = zeros, zeros, zeros
    if batch.recent_codes is not None:
        rc = np.asarray(batch.recent_codes)
        if rc.dtype != np.uint8 or rc.ndim != 3 or rc.shape[0] != b or rc.shape[2] != bpv:
            raise DimensionMismatchError(
                f"recent codes must be uint8 [{b}, L, {bpv}], got {rc.dtype} {rc.shape}"
            )
        length = rc.shape[1]
        mask = np.ones((b, length), bool) if batch.recent_mask is None else np.asarray(batch.recent_mask, bool)
        if mask.shape != (b, length):
            raise DimensionMismatchError(f"recent mask must be bool [{b}, {length}], got shape {mask.shape}")
        if length and mask.any():
            if dec is None:
                dec = codec.decode(flat).reshape(b, r, -1)
            rdec = codec.decode(rc.reshape(b * length, bpv)).reshape(b, length, -1)
            sims = np.matmul(dec, rdec.transpose(0, 2, 1))  # [b, R, L]
            n_valid = mask.sum(axis=1).astype(np.float32)  # [b]
            has = (n_valid > 0).astype(np.float32)
            if mask.all():
                cols["recent_max"] = sims.max(axis=2)
                cols["recent_mean"] = sims.sum(axis=2) / np.float32(length)
            else:
                m3 = mask[:, None, :]
                best = np.where(m3, sims, -np.inf).max(axis=2)
                cols["recent_max"] = np.where(has[:, None] > 0, best, 0.0)
                cols["recent_mean"] = np.where(m3, sims, 0.0).sum(axis=2) / np.maximum(n_valid, 1.0)[:, None]
            cols["has_recent"] = np.broadcast_to(has[:, None], (b, r))
    out = np.empty((b, r, len(names)), np.float32)
    for i, name in enumerate(names):
        out[:, :, i] = cols[name]
    return out
