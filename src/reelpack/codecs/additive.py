"""Additive codebooks with cosine scoring: the codec that compression-aware training tunes (``"qat-pq16"``).

A code is ``M`` bytes; byte ``m`` picks row ``codes[t, m]`` of codebook ``m``
(``codebooks`` float32 [M, K, d], ``K <= 256``), and the reconstruction is the sum
``x_hat = sum_m codebooks[m, codes[t, m]]``. Every codebook codec of reelpack is
such a sum: PQ's codebooks are zero outside their sub-space, OPQ's rotation folds
into them (``C_full[m, k] = C[m, k] @ R[m*dsub:(m+1)*dsub]``), and a residual
quantiser's (``"rqS1+S2"``) already are full-dimensional.

``"qat-BASE"`` (``BASE`` one of ``pqM``, ``opqM,pqM``, ``apqM[-tT]``, ``rqS1+...``)
fits ``BASE`` (post-training quantisation), converts it to additive codebooks and
scores by **cosine**: ``score = q . x_hat / |x_hat|``. The two-tower model
L2-normalises its item vectors, so the direction of ``x_hat`` is what the float
model would score; the norms ``|x_hat|`` are computed from the codes (no bytes on
the wire: a phone computes them once after download, :meth:`item_norms`).

:func:`reelpack.models.qat.finetune_codebooks` then tunes the codebooks (and the
user tower) through this decoder by distilling the float32 scores; the codes stay
those of the base encoder. ``encode`` of new vectors after tuning assigns codebooks
greedily (codebook ``m`` picks the row nearest to the residual left by codebooks
``0..m-1``), which is the exact nearest-centroid rule for disjoint (PQ) supports.

Progressive stages are those of ``BASE`` (a residual base gives coarse-to-fine
stages; the prefix score is the cosine of the prefix sum).

Serialised state: ``codebooks`` float32 [M, K, d]; meta ``{"stages": [S1, ...]}``; while the
codebooks are those of the base fit, also ``base_state`` uint8 [n], the base codec's own state,
so that a loaded codec encodes exactly as the base did (beam search for ``rq``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from reelpack.codecs._common import row_blocks
from reelpack.codecs.base import Codec
from reelpack.codecs.registry import make_codec, register_codec
from reelpack.errors import CodecSpecError, InvalidInputError, SerializationError
from reelpack.kernels.dense import pq_adc

__all__ = ["AdditiveCodebookCodec", "to_additive_codebooks"]

MAX_CODEBOOKS = 256
_EPS = 1e-12


def to_additive_codebooks(codec: Codec) -> np.ndarray:
    """Full-dimensional codebooks float32 [M, K, d] of a fitted PQ, OPQ, anisotropic PQ or residual codec.

    Raises:
        CodecSpecError: the codec has no codebook form.
    """
    codec._require_fitted("to_additive_codebooks")
    d = int(codec.dim)  # type: ignore[arg-type]
    if hasattr(codec, "codebooks") and getattr(codec, "codebooks") is not None:
        cb = np.asarray(codec.codebooks, np.float32)  # residual family: [M, K, d] already
        if cb.ndim == 3 and cb.shape[2] == d:
            return np.ascontiguousarray(cb)
    cents = getattr(codec, "centroids", None)
    if cents is None or np.asarray(cents).ndim != 3:
        raise CodecSpecError(f"{codec.spec!r} has no codebooks; qat- needs pq, opq, apq or rq")
    cents = np.asarray(cents, np.float32)
    m, ksub, dsub = cents.shape
    full = np.zeros((m, ksub, d), np.float32)
    for j in range(m):
        full[j, :, j * dsub : (j + 1) * dsub] = cents[j]
    rotation = getattr(codec, "rotation", None)
    if rotation is not None:
        full = full @ np.asarray(rotation, np.float32)  # x_hat = y_hat @ R
    return np.ascontiguousarray(full, dtype=np.float32)


def _stage_widths(codec: Codec) -> tuple[int, ...]:
    widths = tuple(int(w) for w in codec.stage_bytes)
    # a residual codec with per-stage bound bytes ("-b") has no additive form for those bytes
    if sum(widths) != to_additive_codebooks(codec).shape[0]:
        raise CodecSpecError(f"{codec.spec!r}: qat- needs one byte per codebook (no bound bytes)")
    return widths


class AdditiveCodebookCodec(Codec):
    """``"qat-BASE"``: additive codebooks float32 [M, K, d], cosine scoring, ``M`` bytes per vector."""

    family = "qat"

    def __init__(self, base_spec: str) -> None:
        super().__init__()
        base = make_codec(base_spec)  # validates the base spec
        if base.family not in ("pq", "opq", "apq", "opq-apq", "rq"):
            raise CodecSpecError(f"qat- needs a codebook codec (pqM, opqM,pqM, apqM, rqS1+...), got {base_spec!r}")
        if getattr(base, "bounds", False):  # rq "-b": bound bytes have no additive form
            raise CodecSpecError(f"qat- needs one byte per codebook: drop the bound bytes '-b' from {base_spec!r}")
        self.base_spec = base.spec
        self.codebooks: np.ndarray | None = None
        self.stages: tuple[int, ...] = ()
        self._base_encoder: Codec | None = None

    @property
    def spec(self) -> str:
        return f"qat-{self.base_spec}"

    def _bytes_per_vector(self) -> int:
        return int(self.codebooks.shape[0])  # type: ignore[union-attr]

    def _stage_bytes(self) -> tuple[int, ...]:
        return self.stages

    # ---- fit / set --------------------------------------------------------------------------------
    def _check_fit_input(self, X: np.ndarray) -> None:
        make_codec(self.base_spec)._check_fit_input(X)

    def _fit(self, X: np.ndarray, seed: int) -> None:
        base = make_codec(self.base_spec).fit(X, seed=seed)
        self.stages = _stage_widths(base)
        self.codebooks = to_additive_codebooks(base)
        self._base_encoder = base  # encodes as the base codec (beam search for rq) until the codebooks change

    def set_codebooks(self, codebooks: np.ndarray) -> None:
        """Replace the codebooks (same shape) after tuning; float32 [M, K, d], finite."""
        self._require_fitted("set_codebooks")
        cb = np.ascontiguousarray(codebooks, dtype=np.float32)
        if cb.shape != self.codebooks.shape or not np.isfinite(cb).all():  # type: ignore[union-attr]
            raise InvalidInputError(f"codebooks must be finite with shape {self.codebooks.shape}, got {cb.shape}")  # type: ignore[union-attr]
        self.codebooks = cb
        self._base_encoder = None

    # ---- encode / decode --------------------------------------------------------------------------
    def _encode(self, X: np.ndarray) -> np.ndarray:
        if self._base_encoder is not None:
            return self._base_encoder.encode(X)
        cb = self.codebooks  # type: ignore[assignment]
        m_books, ksub, d = cb.shape
        sq = np.einsum("mkd,mkd->mk", cb, cb)
        out = np.empty((X.shape[0], m_books), np.uint8)
        for sl in row_blocks(X.shape[0], ksub + d):
            r = X[sl].astype(np.float32, copy=True)
            for m in range(m_books):
                k = np.argmin(sq[m][None, :] - 2.0 * (r @ cb[m].T), axis=1)
                out[sl, m] = k
                r -= cb[m][k]
        return out

    def _prefix_decode(self, codes: np.ndarray, books: int) -> np.ndarray:
        cb = self.codebooks  # type: ignore[index]
        self._check_codes(codes)
        out = np.zeros((codes.shape[0], cb.shape[2]), np.float32)
        for m in range(books):
            out += cb[m][codes[:, m]]
        return out

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return self._prefix_decode(codes, codes.shape[1])

    def _check_codes(self, codes: np.ndarray) -> None:
        ksub = self.codebooks.shape[1]  # type: ignore[union-attr]
        if codes.size and ksub < 256 and int(codes.max()) >= ksub:
            raise InvalidInputError(f"codes hold value {int(codes.max())}, but each codebook has only {ksub} rows")

    def item_norms(self, codes: np.ndarray) -> np.ndarray:
        """``|x_hat|`` float32 [n] of the reconstructions of ``codes`` uint8 [n, B'] (B' codebooks used)."""
        self._require_fitted("item_norms")
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        m_books = self.codebooks.shape[0]  # type: ignore[union-attr]
        if codes.ndim != 2 or not 1 <= codes.shape[1] <= m_books:
            from reelpack.errors import InvalidInputError

            raise InvalidInputError(f"codes must be uint8 [n, 1..{m_books}] (a prefix of the codebooks), got shape {codes.shape}")
        out = np.empty(codes.shape[0], np.float32)
        for sl in row_blocks(codes.shape[0], self.codebooks.shape[2]):  # type: ignore[union-attr]
            out[sl] = np.linalg.norm(self._prefix_decode(codes[sl], codes.shape[1]), axis=1)
        return out

    # ---- score ------------------------------------------------------------------------------------
    def _cosine_scores(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        books = codes.shape[1]
        cb = self.codebooks[:books]  # type: ignore[index]
        self._check_codes(codes)
        norms = np.maximum(self.item_norms(codes), _EPS)
        if queries.shape[0] <= 64:
            luts = np.ascontiguousarray(np.einsum("qd,mkd->qmk", queries, cb), dtype=np.float32)
            ip = pq_adc(luts, codes)
        else:
            ip = np.empty((queries.shape[0], codes.shape[0]), np.float32)
            for sl in row_blocks(codes.shape[0], cb.shape[2]):
                ip[:, sl] = queries @ self._prefix_decode(codes[sl], books).T
        return ip / norms[None, :]

    def _score(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return self._cosine_scores(queries, codes)

    def _score_prefix(self, queries: np.ndarray, codes: np.ndarray, stages: int) -> np.ndarray:
        return self._cosine_scores(queries, codes)

    # ---- state ------------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays = {"codebooks": self.codebooks}
        if self._base_encoder is not None:  # untuned: keep the base encoder (e.g. rq's beam search)
            arrays["base_state"] = np.frombuffer(self._base_encoder.to_bytes(), np.uint8)
        return {"stages": list(self.stages)}, arrays  # type: ignore[dict-item]

    def _load_state(self, dim: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if set(meta) != {"stages"} or not {"codebooks"} <= set(arrays) <= {"codebooks", "base_state"}:
            raise SerializationError(f"{self.spec} state needs meta 'stages' and array 'codebooks' (and optionally 'base_state')")
        cb = arrays["codebooks"]
        if (
            cb.dtype != np.dtype("<f4")
            or cb.ndim != 3
            or not 1 <= cb.shape[0] <= MAX_CODEBOOKS
            or not 1 <= cb.shape[1] <= 256
            or cb.shape[2] != dim
            or not np.isfinite(cb).all()
        ):
            raise SerializationError(f"{self.spec} state codebooks must be finite float32 [1..{MAX_CODEBOOKS}, 1..256, {dim}]")
        stages = meta["stages"]
        if (
            not isinstance(stages, list)
            or not stages
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in stages)
            or sum(stages) != cb.shape[0]
        ):
            raise SerializationError(f"{self.spec} state stages {stages!r} must be positive and sum to {cb.shape[0]}")
        self.codebooks = np.ascontiguousarray(cb)
        self.stages = tuple(stages)
        self._base_encoder = None
        if "base_state" in arrays:
            from reelpack.codecs.registry import codec_from_bytes

            raw = arrays["base_state"]
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise SerializationError(f"{self.spec} state base_state must be uint8 [n]")
            base = codec_from_bytes(raw.tobytes())
            if base.spec != self.base_spec or base.dim != dim or not np.array_equal(to_additive_codebooks(base), cb):
                raise SerializationError(f"{self.spec} state base_state does not match its codebooks")
            self._base_encoder = base


@register_codec("qat", r"qat-(?P<base>[a-z0-9.,+\-]{1,64})", "qat-pq16")
def _build_qat(match: re.Match[str]) -> Codec:
    base = match.group("base")
    if base.startswith("qat-"):
        raise CodecSpecError("qat- cannot wrap another qat- codec")
    return AdditiveCodebookCodec(base)
