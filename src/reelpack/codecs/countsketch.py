"""CountSketch with ``m`` buckets, one byte per bucket (``"countsketch32"``).

Fit draws, from ``np.random.default_rng(seed)``, a bucket ``h(j)`` uniform in
``[0, m)`` and a sign ``s_j`` in {-1, +1} for every input dimension ``j``.
The sketch of ``x`` float32 [d] is ``v_b = sum_{j : h(j) = b} s_j x_j`` (float32 [m]).

Each bucket value is stored as one byte with a per-bucket affine scale fitted
on the training sketches (min/max, as in ``"sq8"``)::

    code_b = clip(round((v_b - lo_b) / step_b), 0, 255),   v_hat_b = lo_b + code_b * step_b

so a code is ``m`` bytes (byte ``b`` is bucket ``b``). Empty or constant
buckets get ``step_b = 0`` and decode to ``lo_b``.

* Decode: ``x_hat_j = s_j * v_hat_{h(j)}``. Before byte quantisation this is
  unbiased over the random hash: ``E[x_hat_j] = x_j`` because every other
  dimension that shares ``j``'s bucket enters with an independent random sign.
* Score: ``q . x_hat = CS(q) . v_hat = (CS(q) * step) @ codes.T + CS(q) . lo``
  (:func:`reelpack.search.sq_dot`), exactly ``q @ decode(codes).T`` up to
  float32 rounding; unbiased for ``q . x`` before quantisation, with variance
  ``<= 2 |q|^2 |x|^2 / m``.

``encode(decode(codes)) == codes`` does not hold in general: dimensions sharing
a bucket add up again on re-encoding.

Serialised state: ``bucket`` int32 [d] (values in ``[0, m)``), ``sign`` int8 [d]
(values in {-1, +1}), ``lo`` and ``step`` float32 [m]; meta is empty.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from reelpack.util.validate import as_float_matrix
from reelpack.codecs._common import (
    affine_encode,
    affine_params,
    check_state_keys,
    inverse_step,
    row_blocks,
    state_array,
    sub_seeds,
)
from reelpack.codecs.base import Codec
from reelpack.codecs.registry import register_codec
from reelpack.errors import CodecSpecError, SerializationError
from reelpack.kernels.dense import sq_dot

__all__ = ["CountSketchCodec"]

MAX_BUCKETS = 1 << 16
_LEVELS = 255


class CountSketchCodec(Codec):
    """CountSketch into ``m`` byte-quantised buckets (``m`` bytes per vector).

    Args:
        m: number of buckets, 1..65536.

    Fitted attributes:
        bucket: int32 [d], ``h(j)``; sign: int8 [d], ``s_j``;
        lo, step: float32 [m], the per-bucket affine byte quantiser.
    """

    family = "countsketch"

    def __init__(self, m: int) -> None:
        super().__init__()
        m = int(m)
        if not 1 <= m <= MAX_BUCKETS:
            raise CodecSpecError(f"countsketch bucket count must be in 1..{MAX_BUCKETS}, got {m}")
        self.m = m
        self.bucket: np.ndarray | None = None
        self.sign: np.ndarray | None = None
        self.lo: np.ndarray | None = None
        self.step: np.ndarray | None = None
        self._inv_step: np.ndarray | None = None

    @property
    def spec(self) -> str:
        return f"countsketch{self.m}"

    def _bytes_per_vector(self) -> int:
        return self.m

    def _set_params(self, bucket: np.ndarray, sign: np.ndarray, lo: np.ndarray, step: np.ndarray) -> None:
        self.bucket = np.ascontiguousarray(bucket, np.int32)
        self.sign = np.ascontiguousarray(sign, np.int8)
        self.lo = np.ascontiguousarray(lo, np.float32)
        self.step = np.ascontiguousarray(step, np.float32)
        self._inv_step = inverse_step(self.step)
        # dimensions grouped by bucket, for a reduceat over columns (no dense [d, m] matrix)
        self._order = np.argsort(self.bucket, kind="stable")
        grouped = self.bucket[self._order]
        self._starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
        self._filled = grouped[self._starts]
        self._signs_f32 = self.sign.astype(np.float32)

    def _sketch(self, X: np.ndarray) -> np.ndarray:
        out = np.zeros((X.shape[0], self.m), np.float32)
        for sl in row_blocks(X.shape[0], X.shape[1] + self.m):
            signed = (X[sl] * self._signs_f32)[:, self._order]
            out[sl, self._filled] = np.add.reduceat(signed, self._starts, axis=1)
        return out

    def sketch(self, X: np.ndarray) -> np.ndarray:
        """CountSketch float32 [n, m] of X float [n, d] (before byte quantisation)."""
        self._require_fitted("sketch")
        return self._sketch(as_float_matrix(X, "X", dim=self.dim, allow_empty=True))

    # ---- fit / encode / decode / score ----------------------------------------------------------
    def _fit(self, X: np.ndarray, seed: int) -> None:
        d = X.shape[1]
        rng = np.random.default_rng(sub_seeds(seed, 1)[0])
        bucket = rng.integers(0, self.m, size=d)
        sign = rng.integers(0, 2, size=d) * 2 - 1
        self._set_params(bucket, sign, np.zeros(self.m), np.zeros(self.m))
        V = self._sketch(X)
        self._set_params(bucket, sign, *affine_params(V.min(axis=0), V.max(axis=0), _LEVELS))

    def _encode(self, X: np.ndarray) -> np.ndarray:
        return affine_encode(self._sketch(X), self.lo, self._inv_step, _LEVELS)  # type: ignore[arg-type]

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        v = self.lo + codes.astype(np.float32) * self.step  # type: ignore[operator]
        return v[:, self.bucket] * self.sign.astype(np.float32)  # type: ignore[index,union-attr]

    def _score(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        cq = self._sketch(queries)
        return sq_dot(cq * self.step, codes) + (cq @ self.lo)[:, None]

    # ---- state ----------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays = {"bucket": self.bucket, "sign": self.sign, "lo": self.lo, "step": self.step}
        return {}, arrays  # type: ignore[return-value]

    def _load_state(self, dim: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        check_state_keys(self.spec, meta, arrays, ("bucket", "sign", "lo", "step"))
        bucket = state_array(self.spec, arrays, "bucket", (dim,), "<i4")
        sign = state_array(self.spec, arrays, "sign", (dim,), "|i1")
        lo = state_array(self.spec, arrays, "lo", (self.m,), "<f4")
        step = state_array(self.spec, arrays, "step", (self.m,), "<f4")
        if ((bucket < 0) | (bucket >= self.m)).any():
            raise SerializationError(f"{self.spec} state has bucket indexes outside [0, {self.m})")
        if not np.isin(sign, (-1, 1)).all():
            raise SerializationError(f"{self.spec} state has signs other than -1/+1")
        if (step < 0).any():
            raise SerializationError(f"{self.spec} state has negative steps")
        self._set_params(bucket, sign, lo, step)


@register_codec("countsketch", r"countsketch(?P<m>\d{1,6})", "countsketch32")
def _build_countsketch(m: re.Match[str]) -> Codec:
    return CountSketchCodec(int(m.group("m")))
