"""Per-dimension asymmetric scalar quantisation: 8-bit (``"sq8"``) and 4-bit (``"sq4"``).

Each dimension ``j`` has a calibrated range ``[lo_j, hi_j]`` and a step
``step_j = (hi_j - lo_j) / (2^b - 1)`` (but at least ``2^-20 * max(|lo_j|, |hi_j|)``,
so that the grid stays representable in float32)::

    code_j  = clip(round((x_j - lo_j) / step_j), 0, 2^b - 1)     (round half to even)
    x_hat_j = lo_j + code_j * step_j

Inside the calibrated range ``|x_j - x_hat_j| <= step_j / 2`` (plus float32
rounding); outside it values are clipped to the range. A constant dimension
(``hi_j == lo_j``) gets ``step_j = 0``: it encodes to 0 and decodes to ``lo_j``.

Calibration (factory string):

* ``"sq8"``, ``"sq4"``: ``lo``/``hi`` are the per-dimension min/max of the training set.
* ``"sq8-p99.9"``: ``lo``/``hi`` are the per-dimension 0.1th/99.9th percentiles
  (generally ``-pP`` clips to the ``100-P``/``P`` percentiles, ``50 < P <= 100``).

Code layout: ``sq8`` stores one byte per dimension (``d`` bytes). ``sq4``
stores two dimensions per byte (``ceil(d/2)`` bytes): dimension ``2j`` in the
low nibble (bits 0-3) of byte ``j``, dimension ``2j+1`` in the high nibble; for
odd ``d`` the last high nibble is 0 on write and ignored on read.

Scores are computed without decoding: ``score = (q * step) @ codes.T + q @ lo``
(:func:`reelpack.search.sq_dot` / :func:`reelpack.search.sq4_dot`), which equals
``q @ decode(codes).T`` up to float32 rounding.

Serialised state: arrays ``lo`` and ``step``, float32 [d] each; meta is empty.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from reelpack.codecs._common import (
    affine_encode,
    affine_params,
    check_state_keys,
    inverse_step,
    state_array,
)
from reelpack.codecs.base import Codec
from reelpack.codecs.registry import register_codec
from reelpack.codecs.scanner import Scanner
from reelpack.kernels.checks import check_codes, fast_queries
from reelpack.kernels.dense import check_score_bound
from reelpack.kernels.scan import check_affine, sq_run
from reelpack.util.validate import check_k
from reelpack.errors import CodecSpecError, SerializationError
from reelpack.kernels.dense import pack_int4, sq4_dot, sq_decode, sq_dot, unpack_int4

__all__ = ["ScalarQuantizer"]


def _format_percentile(p: float) -> str:
    text = repr(float(p))
    return text[:-2] if text.endswith(".0") else text


class ScalarQuantizer(Codec):
    """Asymmetric per-dimension scalar quantiser with ``bits`` in {4, 8}.

    Args:
        bits: 8 (1 byte per dimension) or 4 (two dimensions per byte).
        percentile: ``None`` to calibrate on min/max, or ``P`` in (50, 100] to
            calibrate on the ``100-P`` / ``P`` percentiles of each dimension.

    Fitted attributes:
        lo: float32 [d], the lower end of each dimension's range.
        step: float32 [d], the quantisation step (0 for constant dimensions).
    """

    family = "sq"

    def __init__(self, bits: int = 8, percentile: float | None = None) -> None:
        super().__init__()
        if bits not in (4, 8):
            raise CodecSpecError(f"scalar quantiser bits must be 4 or 8, got {bits}")
        if percentile is not None:
            percentile = float(percentile)
            if not 50.0 < percentile <= 100.0:
                raise CodecSpecError(f"sq percentile must be in (50, 100], got {percentile}")
        self.bits = int(bits)
        self.percentile = percentile
        self.levels = (1 << self.bits) - 1
        self.lo: np.ndarray | None = None
        self.step: np.ndarray | None = None
        self._inv_step: np.ndarray | None = None

    @property
    def spec(self) -> str:
        base = f"sq{self.bits}"
        return base if self.percentile is None else f"{base}-p{_format_percentile(self.percentile)}"

    def _bytes_per_vector(self) -> int:
        d = int(self.dim)  # type: ignore[arg-type]
        return d if self.bits == 8 else (d + 1) // 2

    # ---- fit / encode / decode / score ---------------------------------------------------------
    def _fit(self, X: np.ndarray, seed: int) -> None:
        if self.percentile is None:
            lo, hi = X.min(axis=0), X.max(axis=0)
        else:
            lo = np.percentile(X, 100.0 - self.percentile, axis=0)
            hi = np.percentile(X, self.percentile, axis=0)
        self._set_params(*affine_params(lo, hi, self.levels))

    def _set_params(self, lo: np.ndarray, step: np.ndarray) -> None:
        self.lo = np.ascontiguousarray(lo, np.float32)
        self.step = np.ascontiguousarray(step, np.float32)
        self._inv_step = inverse_step(self.step)

    def _encode(self, X: np.ndarray) -> np.ndarray:
        codes = affine_encode(X, self.lo, self._inv_step, self.levels)  # type: ignore[arg-type]
        return codes if self.bits == 8 else pack_int4(codes)

    def _levels_of(self, codes: np.ndarray) -> np.ndarray:
        return codes if self.bits == 8 else unpack_int4(codes, int(self.dim))  # type: ignore[arg-type]

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return sq_decode(self.lo, self.step, codes, self.bits)  # type: ignore[arg-type]

    def _score(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        scaled = queries * self.step
        offset = (queries @ self.lo)[:, None]
        dot = sq_dot if self.bits == 8 else sq4_dot
        return dot(scaled, codes) + offset

    # ---- state ----------------------------------------------------------------------------------
    def scanner(self, codes: np.ndarray, *, exact: bool = True, query_bits: int = 8,
                rerank: int | None = None) -> Scanner:  # fmt: skip
        """Fused SQ8 / SQ4 dot-product scan (:class:`SQScanner`)."""
        self._require_fitted("scanner")
        return SQScanner(self, codes)

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {"lo": self.lo, "step": self.step}  # type: ignore[dict-item]

    def _load_state(self, dim: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        check_state_keys(self.spec, meta, arrays, ("lo", "step"))
        lo = state_array(self.spec, arrays, "lo", (dim,), "<f4")
        step = state_array(self.spec, arrays, "step", (dim,), "<f4")
        if (step < 0).any():
            raise SerializationError(f"{self.spec} state has negative steps")
        self._set_params(lo, step)


@register_codec("sq", r"sq(?P<bits>4|8)(?:-p(?P<p>\d{1,3}(?:\.\d{1,15})?))?", "sq8")
def _build_sq(m: re.Match[str]) -> Codec:
    p = m.group("p")
    return ScalarQuantizer(int(m.group("bits")), None if p is None else float(p))


# ================================================================================================
# scanner (how a catalog of these codes is searched: codec.scanner(codes))
# ================================================================================================
class SQScanner(Scanner):
    """SQ8 / SQ4: fused integer dot products with the per-dimension affine map."""

    def __init__(self, codec, codes: np.ndarray) -> None:
        self.codec = codec
        self.codes = check_codes(codes, codec.bytes_per_vector)
        self.n_items = self.codes.shape[0]
        self.lo, self.step = check_affine(codec.lo, codec.step, int(codec.dim))  # checked once per catalog
        top = self.lo.astype(np.float64) + ((1 << int(codec.bits)) - 1) * self.step.astype(np.float64)
        self.column_max = np.maximum(np.abs(self.lo.astype(np.float64)), np.abs(top))
        self.kernel = f"sq{codec.bits}-dot"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = fast_queries(queries, int(self.codec.dim))
        k = check_k(k, self.n_items)
        check_score_bound(q, self.column_max)
        heap = self.work(k, lambda kk: (np.empty(kk, np.float32), np.empty(kk, np.int64)))
        return sq_run(q, self.lo, self.step, self.codes, k, int(self.codec.bits), heap)
