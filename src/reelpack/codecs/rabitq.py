"""RaBitQ and extended RaBitQ: ``B`` bits per dimension with unbiased estimates and error bounds.

Factory strings: ``"rabitq"`` (1 bit per dimension; ``"rabitq1"`` is an alias
whose spec reads ``"rabitq"``) and ``"rabitqB"`` for ``B`` in 1..8 total bits
per dimension: one sign bit plus ``B - 1`` extended bits (extended RaBitQ). Other
``B`` raise :class:`~reelpack.errors.CodecSpecError`.

Method (after Gao & Long, "RaBitQ", SIGMOD 2024, and Gao et al., "Practical and
Asymptotically Optimal Quantization of High-Dimensional Vectors in Euclidean
Space for Approximate Nearest Neighbor Search", SIGMOD 2025; written from the papers):

* Fit: the centroid ``c`` (mean of the training set, float32 [d]), a seeded
  Haar-random rotation ``P`` float32 [d, d]
  (:func:`reelpack.codecs._common.orthogonal_rows`) and a reference norm
  ``rho`` = the largest training residual norm ``max |x - c|`` (1 if all are 0),
  which only scales the stored factors into float16's range.
* Item ``o``: residual ``r = o - c`` and unit vector ``u = P r / |r|``
  (``u = 0`` for ``r = 0``).
* Grid: with ``L = 2^(B-1)`` each dimension gets a full code ``k_j`` in
  ``0 .. 2^B - 1`` whose most significant bit is the sign bit ``[u_j > 0]``; the
  grid value is ``g_j = k_j - (2^B - 1) / 2``, i.e. ``sign_j * (e_j + 1/2)`` with
  ``e_j`` in ``0 .. L-1`` (the stored low bits are ``e_j`` for positive and
  ``L - 1 - e_j`` for negative signs). Stage 0 (the 1-bit code) uses
  ``g = sign`` in {-1, +1}^d. For ``B > 1`` the magnitudes are ``e_j = min(floor(t |u_j|), L - 1)`` for the scale
  ``t`` that maximises the cosine ``a = <g, u> / |g|`` (the extended-RaBitQ
  rescaling search: ``a`` is piecewise constant in ``t`` and changes only at the
  ``d (L - 1)`` critical points ``t = k / |u_j|``; all of them are visited in
  increasing order with a heap, :func:`ext_magnitudes`; for ``B >= 4`` only those in a
  window around the scale where the largest coordinate reaches the top level, see
  ``SEARCH_WINDOWS``).
* Estimator of ``<q, o>`` with ``x = g / |g|`` (unit) and ``a = <x, u>``::

      est = <q, c> + |r| * <P q, x> / a  =  <q, c> + s * <P q, g>,   s = |r| / (a |g|)

  Unbiased over the rotation: given ``u``, the part of ``P q`` orthogonal to
  ``u`` points in a uniformly random direction of ``u``'s orthogonal complement,
  so ``est - <q, o> = |r| * sqrt(1 - a^2) / a * |q_perp| * t`` where ``t`` is one
  coordinate of a uniform unit vector in ``R^(d-1)`` (``E t = 0``;
  ``t^2 ~ Beta(1/2, (d-2)/2)``) and ``q_perp`` the part of ``q`` orthogonal to
  ``r``. This holds for every stage (the 1-bit code and the ``B``-bit code).

Progressive stages (:attr:`Codec.stage_bytes`): stage 0 is the 1-bit code (sign
bits and their factors; identical to the ``"rabitq"`` code of the same fit);
stage 1 (only for ``B > 1``) adds the ``B - 1`` low bits and the ``B``-bit
factors. ``score_prefix(q, codes[:, :prefix_bytes(1)], 1)`` is the 1-bit estimate.

Code layout of one vector (``nb0 = ceil(d / 8)``, ``nb1 = ceil(d (B - 1) / 8)``)::

    stage 0  [0, nb0)            sign bits, np.packbits big bit order: bit j is bit 7 - j % 8 of byte j // 8
             [nb0, nb0 + 4)      float16 LE sigma0, float16 LE eps0
    stage 1  [nb0 + 4, +nb1)     low bits as one bit stream (dimension j's B-1 bits most significant
                                 first at stream positions j (B-1) ..), packed like the signs
             [.., + 4)           float16 LE sigma1, float16 LE eps1

so ``bytes_per_vector = ceil(d/8) + 4`` for ``B = 1`` and
``ceil(d/8) + ceil(d (B-1)/8) + 8`` otherwise (pad bits are 0). The factors are
stored relative to ``rho`` and a per-stage constant ``kappa`` (``kappa0 = 1/sqrt(d)``,
``kappa1 = 1 / (L sqrt(d))``) so that they are O(1); ``s = kappa * rho * sigma``::

    sigma = |r| / (a |g| kappa rho),   eps = |r| sqrt(1 - a^2) / (a rho)   (eps rounded up to float16)

An item whose ``sigma`` would exceed float16's 65504 (a residual more than
about ``65504 / (2L)`` times ``rho``) is stored with ``sigma = 65504`` and
``eps = inf``: its estimate is wrong but its bound stays honest (infinite).

Bounds (:meth:`Codec.score_bounds`): ``half = eps * rho * |q| * t_conf + rounding``
where ``t_conf`` is the exact ``confidence`` quantile of ``|t|`` above
(:func:`t_quantile`; about ``eps0 / sqrt(d - 1)`` with the Gaussian ``eps0``, e.g.
1.96 for 95 %; the exact value is slightly smaller) and ``rounding`` covers the
float16 rounding of ``sigma`` (``spacing(sigma16) * kappa * rho * |<P q, g>|``)
and float32 arithmetic (``2^-20`` of the terms' magnitudes). Statement: for a
fixed query ``q`` and item ``o`` (neither chosen after seeing the rotation), the
probability over the Haar-random rotation ``P`` that
``|<q, o> - est| <= half`` is at least ``confidence``, also conditionally on the
stored factors. (Using ``|q|`` for ``|q_perp|`` makes it conservative; different
items share one rotation, so their errors are not independent.)

Decode returns the vector whose inner products are the estimator,
``c + s * P^T g`` (:meth:`decode`), so ``score == queries @ decode(codes).T`` up
to float32 rounding. Its residual has norm ``|r| / a >= |r|``: it is not the
least-squares reconstruction (that would be ``c + |r| a P^T x``) and
``encode(decode(codes))`` differs from ``codes`` in the factors.

Scoring unpacks codes into float32 grid values one row block at a time and
multiplies with the rotated queries (BLAS); :func:`grid_values_reference` is the
per-bit numpy oracle.

Serialised state: ``centroid`` float32 [d], ``rotation`` float32 [d, d]
(checked orthogonal on load), ``rho`` float32 [1] (positive); meta is empty.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import numba
import numpy as np

from reelpack.codecs._common import check_state_keys, orthogonal_rows, row_blocks, state_array, sub_seeds
from reelpack.codecs.base import Codec
from reelpack.codecs.registry import register_codec
from reelpack.codecs.scanner import Scanner
from reelpack.kernels.binscan import binary_ip_search
from reelpack.kernels.dense import TABLE_OVERFLOW
from reelpack.kernels.checks import check_codes, check_queries
from reelpack.kernels.topk import topk
from reelpack.util.validate import check_k
from reelpack.kernels.heap import sift_down
from reelpack.errors import CodecSpecError, InvalidInputError, SerializationError

__all__ = ["RaBitQCodec", "ext_magnitudes", "ext_magnitudes_reference", "grid_values_reference", "t_quantile"]

MAX_BITS = 8
FACTOR_BYTES = 4  # two float16 per stage
_F16_MAX = float(np.finfo(np.float16).max)
_F32_SLACK = 2.0**-20


# ---- the confidence quantile ----------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def t_quantile(d: int, confidence: float) -> float:
    """The ``confidence`` quantile of ``|t|``, ``t`` one coordinate of a uniform unit vector in ``R^(d-1)``.

    With ``t = sin(theta)`` the density of ``theta`` in ``[0, pi/2]`` is proportional to
    ``cos(theta)^(d-3)``; its CDF is integrated numerically (65537-point trapezoid
    on ``[0, min(pi/2, 16/sqrt(d-3))]``, outside which the mass is below 1e-50) and
    inverted by interpolation. ``d = 1`` gives 0 (no orthogonal complement) and
    ``d = 2`` gives 1 (``|t| = 1`` always).

    Returns:
        float in ``[0, 1]``.
    """
    d = int(d)
    if d <= 1:
        return 0.0
    if d == 2:
        return 1.0
    hi = math.pi / 2 if d <= 4 else min(math.pi / 2, 16.0 / math.sqrt(d - 3))
    theta = np.linspace(0.0, hi, 65537)
    with np.errstate(divide="ignore"):
        dens = np.exp((d - 3) * np.log(np.cos(theta))) if d > 3 else np.ones_like(theta)
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) * 0.5 * np.diff(theta))])
    cdf /= cdf[-1]
    return float(min(1.0, math.sin(float(np.interp(float(confidence), cdf, theta)))))


# ---- extended-bit magnitude search ----------------------------------------------------------------
# For B >= 4 the search visits only the critical points t in [lo T, hi T], T = (L - 1) / max|u| (the
# scale at which the largest coordinate reaches the top level), with (lo, hi) by B below, in the spirit
# of the authors' library (a per-bit-width start fraction and an end just past T). On 4000 random unit
# vectors per d in {8, 16, 32, 64, 128} the exact optimum lay in [0.33 T, 1.45 T] (B = 4),
# [0.33 T, 1.19 T] (5), [0.35 T, 1.07 T] (6), [0.36 T, 1.03 T] (7), [0.41 T, 1.013 T] (8).
# A window that misses the optimum only costs accuracy: unbiasedness and the bounds hold for any
# code chosen as a function of u. B <= 3 searches every critical point (cheap; the optimum lies up to 5 T).
SEARCH_WINDOWS = {4: (0.25, 2.0), 5: (0.25, 1.5), 6: (0.3, 1.25), 7: (0.3, 1.15), 8: (0.3, 1.1)}


@numba.njit(cache=True)
def _ext_kernel(absu: np.ndarray, levels: int, lo: float, hi: float, out: np.ndarray) -> None:  # pragma: no cover
    n, d = absu.shape
    keys = np.empty(d, np.float64)
    idx = np.empty(d, np.int64)
    ext = np.empty(d, np.int64)
    order = np.empty(max(1, d * (levels - 1)), np.int64)
    for row in range(n):
        m = 0.0
        for i in range(d):
            m = max(m, absu[row, i])
        t_top = (levels - 1) / m if m > 0 else 0.0
        t_hi = hi * t_top if hi < np.inf else np.inf
        t_lo = lo * t_top if lo > 0 else 0.0
        dot = 0.0
        nrm = 0.0
        for i in range(d):
            a = absu[row, i]
            e = max(0, min(int(math.floor(t_lo * a)), levels - 1))
            ext[i] = e
            out[row, i] = e
            dot += (e + 0.5) * a
            nrm += (e + 0.5) * (e + 0.5)
            nxt = (e + 1) / a if a > 0 and e < levels - 1 else np.inf
            keys[i] = nxt if nxt <= t_hi else np.inf
            idx[i] = i
        # maximise dot / sqrt(nrm) by comparing dot^2 * best_nrm > best_dot^2 * nrm (dot > 0 throughout)
        best_dot = dot
        best_nrm = nrm
        best_count = 0
        for start in range(d // 2 - 1, -1, -1):
            sift_down(keys, idx, start, d)
        count = 0
        while keys[0] < np.inf:
            i = idx[0]
            a = absu[row, i]
            ext[i] += 1
            k = ext[i]
            dot += a
            nrm += 2.0 * k
            order[count] = i
            count += 1
            if dot * dot * best_nrm > best_dot * best_dot * nrm:
                best_dot = dot
                best_nrm = nrm
                best_count = count
            nxt = (k + 1) / a if k < levels - 1 else np.inf
            keys[0] = nxt if nxt <= t_hi else np.inf
            sift_down(keys, idx, 0, d)
        for j in range(best_count):
            out[row, order[j]] += 1


def _search_range(levels: int, search: tuple[float, float] | None) -> tuple[float, float]:
    if search is not None:
        return float(search[0]), float(search[1])
    return SEARCH_WINDOWS.get(int(levels).bit_length(), (0.0, np.inf))


def ext_magnitudes(absu: np.ndarray, levels: int, search: tuple[float, float] | None = None) -> np.ndarray:
    """Magnitude codes ``e`` uint8 [n, d] in ``0 .. levels-1`` maximising ``<e + 1/2, |u|> / |e + 1/2|``.

    ``e_j = min(floor(t |u_j|), levels - 1)`` for the best scale ``t`` among the critical
    points ``t = k / |u_j|`` in ``[lo T, hi T]``, ``T = (levels - 1) / max|u|``, visited in
    increasing order (numba heap, float64) from the configuration at ``lo T``; the first maximum wins.

    Args:
        absu: float [n, d] of non-negative values (``|u|``).
        levels: ``L = 2^(B-1)``, 1..128.
        search: ``(lo, hi)``; default ``SEARCH_WINDOWS[B]`` for B >= 4, else
            ``(0, inf)``, which searches every critical point (the exact maximum).
    """
    absu = np.ascontiguousarray(absu, dtype=np.float64)
    out = np.empty(absu.shape, np.uint8)
    lo, hi = _search_range(levels, search)
    if absu.size:
        _ext_kernel(absu, int(levels), lo, hi, out)
    return out


def ext_magnitudes_reference(absu: np.ndarray, levels: int, search: tuple[float, float] | None = None) -> np.ndarray:
    """Oracle for :func:`ext_magnitudes`: sort the critical points, take the best prefix (numpy, float64)."""
    absu = np.asarray(absu, dtype=np.float64)
    n, d = absu.shape
    if levels == 1 or n == 0:
        return np.zeros((n, d), np.uint8)
    lo, hi = _search_range(levels, search)
    m = absu.max(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_top = np.where(m > 0, (levels - 1) / m, 0.0)
    t_hi = hi * t_top if hi < np.inf else np.full_like(t_top, np.inf)
    init = np.minimum(np.floor(lo * t_top * absu), levels - 1) if lo > 0 else np.zeros_like(absu)
    k = np.arange(1, levels, dtype=np.float64)
    with np.errstate(divide="ignore"):
        times = np.where(absu[:, :, None] > 0, k[None, None, :] / absu[:, :, None], np.inf)
    times = np.where((k[None, None, :] > init[:, :, None]) & (times <= t_hi[:, :, None]), times, np.inf).reshape(n, -1)
    order = np.argsort(times, axis=1, kind="stable")
    dims = order // (levels - 1)
    kk = order % (levels - 1) + 1
    valid = np.isfinite(np.take_along_axis(times, order, axis=1))
    y0 = init + 0.5
    dot0 = (y0 * absu).sum(axis=1, keepdims=True)
    nrm0 = (y0 * y0).sum(axis=1, keepdims=True)
    dot = dot0 + np.cumsum(np.take_along_axis(absu, dims, axis=1) * valid, axis=1)
    nrm = nrm0 + np.cumsum(2.0 * kk * valid, axis=1)
    cos = np.where(valid, dot / np.sqrt(nrm), -np.inf)
    cos = np.concatenate([dot0 / np.sqrt(nrm0), cos], axis=1)
    best = np.argmax(cos, axis=1)  # number of events taken (first maximum)
    take = np.arange(order.shape[1])[None, :] < best[:, None]
    out = init.astype(np.int64)
    rows = np.broadcast_to(np.arange(n)[:, None], dims.shape)
    np.add.at(out, (rows[take], dims[take]), 1)
    return out.astype(np.uint8)


def grid_values_reference(codes: np.ndarray, d: int, bits: int, stage: int) -> np.ndarray:
    """Oracle: grid values float64 [n, d] of a stage, bit by bit (``stage`` 0: ``sign``; 1: ``g``).

    Stage 0 returns ``2 * signbit - 1``; stage 1 returns ``k - (2^B - 1) / 2`` with the full code ``k``.
    """
    codes = np.asarray(codes, np.uint8)
    nb0 = -(-d // 8)
    sign = np.stack([(codes[:, j // 8] >> (7 - j % 8)) & 1 for j in range(d)], axis=1).astype(np.int64)
    if stage == 0:
        return 2.0 * sign - 1.0
    off = nb0 + FACTOR_BYTES
    low = np.zeros_like(sign)
    for j in range(d):
        for b in range(bits - 1):
            pos = j * (bits - 1) + b
            low[:, j] = (low[:, j] << 1) | ((codes[:, off + pos // 8] >> (7 - pos % 8)) & 1)
    k = (sign << (bits - 1)) | low
    return k - ((1 << bits) - 1) / 2.0


# ---- the codec --------------------------------------------------------------------------------------
class RaBitQCodec(Codec):
    """RaBitQ with ``bits`` per dimension (1 sign bit + ``bits - 1`` extended bits); see the module docstring.

    Args:
        bits: ``B`` in 1..8.

    Fitted attributes:
        centroid: float32 [d]. rotation: float32 [d, d] (rows orthonormal). rho: float, the factor scale.
    """

    family = "rabitq"

    def __init__(self, bits: int = 1) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
            raise CodecSpecError(f"rabitq bits per dimension must be in 1..{MAX_BITS}, got {bits!r}")
        self.bits = int(bits)
        self.levels = 1 << (self.bits - 1)  # L
        self.centroid: np.ndarray | None = None
        self.rotation: np.ndarray | None = None
        self.rho: float = 1.0

    @property
    def spec(self) -> str:
        return "rabitq" if self.bits == 1 else f"rabitq{self.bits}"

    # ---- layout -----------------------------------------------------------------------------------
    def _nb(self) -> tuple[int, int]:
        d = int(self.dim)  # type: ignore[arg-type]
        return -(-d // 8), -(-(d * (self.bits - 1)) // 8)

    def _stage_bytes(self) -> tuple[int, ...]:
        nb0, nb1 = self._nb()
        if self.bits == 1:
            return (nb0 + FACTOR_BYTES,)
        return (nb0 + FACTOR_BYTES, nb1 + FACTOR_BYTES)

    def _bytes_per_vector(self) -> int:
        return int(sum(self._stage_bytes()))

    def _kappa(self, stage: int) -> float:
        d = int(self.dim)  # type: ignore[arg-type]
        return 1.0 / math.sqrt(d) if stage == 0 else 1.0 / (self.levels * math.sqrt(d))

    @property
    def has_bounds(self) -> bool:
        return True

    # ---- fit / encode -----------------------------------------------------------------------------
    def _fit(self, X: np.ndarray, seed: int) -> None:
        d = X.shape[1]
        centroid = X.mean(axis=0, dtype=np.float64).astype(np.float32)
        rho = 0.0
        for sl in row_blocks(X.shape[0], d):
            rho = max(rho, float(np.sqrt(((X[sl] - centroid).astype(np.float64) ** 2).sum(axis=1)).max()))
        rho = float(np.float32(rho))
        self._set_params(centroid, orthogonal_rows(d, d, sub_seeds(seed, 1)[0]), rho if rho > 0 else 1.0)

    def _set_params(self, centroid: np.ndarray, rotation: np.ndarray, rho: float) -> None:
        self.centroid = np.ascontiguousarray(centroid, np.float32)
        self.rotation = np.ascontiguousarray(rotation, np.float32)
        self._rotation64 = self.rotation.astype(np.float64)
        self.rho = float(rho)

    def _factors(self, norms: np.ndarray, dot_gu: np.ndarray, gnorm: np.ndarray, stage: int) -> np.ndarray:
        """Stored factor bytes uint8 [n, 4] from |r|, <g, u> and |g| (float64 [n] each)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(norms > 0, dot_gu / gnorm, 1.0)
            a = np.where(a > 0, a, 1.0)  # a > 0 whenever r != 0 (the signs match u)
            sigma = norms / (a * gnorm * self._kappa(stage) * self.rho)
            eps = norms * np.sqrt(np.maximum(0.0, 1.0 - a * a)) / (a * self.rho)
        saturated = ~(sigma <= _F16_MAX)
        sigma16 = np.where(saturated, _F16_MAX, sigma).astype(np.float16)
        with np.errstate(over="ignore"):
            eps16 = eps.astype(np.float16)
        low = eps16.astype(np.float64) < eps
        eps16[low] = np.nextafter(eps16[low], np.float16(np.inf))  # round up: the bound stays a bound
        eps16[saturated] = np.inf
        return np.stack([sigma16, eps16], axis=1).astype("<f2").view(np.uint8)

    def _encode(self, X: np.ndarray) -> np.ndarray:
        d = X.shape[1]
        nb0, nb1 = self._nb()
        out = np.zeros((X.shape[0], self._bytes_per_vector()), np.uint8)
        for sl in row_blocks(X.shape[0], d * (self.bits + 2)):
            # float64: the codes must not depend on the row blocking (gemv and gemm round differently)
            rot64 = (X[sl] - self.centroid).astype(np.float64) @ self._rotation64.T  # type: ignore[operator]
            norms = np.sqrt((rot64**2).sum(axis=1))
            with np.errstate(divide="ignore", invalid="ignore"):
                u = np.where(norms[:, None] > 0, rot64 / norms[:, None], 0.0)
            positive = u > 0
            absu = np.abs(u)
            out[sl, :nb0] = np.packbits(positive, axis=1)
            out[sl, nb0 : nb0 + FACTOR_BYTES] = self._factors(norms, absu.sum(axis=1), np.full(len(u), math.sqrt(d)), 0)
            if self.bits == 1:
                continue
            ext = ext_magnitudes(absu, self.levels)
            y = ext.astype(np.float64) + 0.5
            low = np.where(positive, ext, self.levels - 1 - ext).astype(np.uint8)
            stream = np.unpackbits(low[:, :, None], axis=2)[:, :, 8 - (self.bits - 1) :].reshape(len(u), -1)
            off = nb0 + FACTOR_BYTES
            out[sl, off : off + nb1] = np.packbits(stream, axis=1)
            out[sl, off + nb1 :] = self._factors(norms, (y * absu).sum(axis=1), np.sqrt((y * y).sum(axis=1)), 1)
        return out

    # ---- unpacking --------------------------------------------------------------------------------
    def _stage_factors(self, codes: np.ndarray, stage: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(s, s_rounding, eps*rho) float64 [n] of ``stage``; raises for factor bytes no encoder writes."""
        nb0, nb1 = self._nb()
        off = nb0 if stage == 0 else nb0 + FACTOR_BYTES + nb1
        f16 = np.ascontiguousarray(codes[:, off : off + FACTOR_BYTES]).view("<f2")
        sigma16, eps16 = f16[:, 0], f16[:, 1]
        if not (np.isfinite(sigma16).all() and (sigma16 >= 0).all() and (eps16 >= 0).all()):
            raise InvalidInputError(
                f"{self.spec} codes hold factor bytes no encoder writes (NaN, Inf or negative float16 at "
                f"columns {off}..{off + FACTOR_BYTES - 1}); they are not {self.spec} codes of this dimension"
            )
        scale = self._kappa(stage) * self.rho
        s = sigma16.astype(np.float64) * scale
        with np.errstate(over="ignore"):
            rounding = np.spacing(sigma16).astype(np.float64) * scale
        return s, rounding, eps16.astype(np.float64) * self.rho

    def _grid(self, codes: np.ndarray, stage: int) -> np.ndarray:
        """Grid values float32 [n, d] of ``stage`` (0: ``sign``; 1: ``g = k - (2^B-1)/2``)."""
        d = int(self.dim)  # type: ignore[arg-type]
        nb0, nb1 = self._nb()
        sign = np.unpackbits(codes[:, :nb0], axis=1, count=d).astype(np.float32)
        if stage == 0:
            return sign * 2.0 - 1.0
        off = nb0 + FACTOR_BYTES
        bits = np.unpackbits(codes[:, off : off + nb1], axis=1, count=d * (self.bits - 1)).reshape(len(codes), d, -1)
        low = np.zeros((len(codes), d), np.uint8)
        for b in range(self.bits - 1):
            low = (low << 1) | bits[:, :, b]
        g = sign * float(self.levels) + low.astype(np.float32)
        g -= ((1 << self.bits) - 1) / 2.0
        return g

    def _estimate(
        self, queries: np.ndarray, codes: np.ndarray, stage: int, with_bounds: bool, confidence: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Estimate float32 [q, n] (and half-width float32 [q, n] when ``with_bounds``) from ``stage``."""
        for earlier in range(stage):
            self._stage_factors(codes, earlier)  # every stage's factors must be valid, not only the last
        s, rounding, eps_rho = self._stage_factors(codes, stage)
        qrot = queries @ self.rotation.T  # type: ignore[union-attr]
        qc = (queries @ self.centroid)[:, None]  # type: ignore[operator]
        est = np.empty((queries.shape[0], codes.shape[0]), np.float32)
        half = np.empty_like(est) if with_bounds else None
        if with_bounds:
            qnorm = np.sqrt((queries.astype(np.float64) ** 2).sum(axis=1))[:, None]
            tq = t_quantile(int(self.dim), confidence)  # type: ignore[arg-type]
        for sl in row_blocks(codes.shape[0], int(self.dim) * self.bits):  # type: ignore[arg-type]
            dot = qrot @ self._grid(codes[sl], stage).T
            term = dot * s[sl].astype(np.float32)
            est[:, sl] = qc + term
            if half is not None:
                with np.errstate(invalid="ignore"):
                    h = eps_rho[sl] * (qnorm * tq)
                h = np.where(np.isnan(h), 0.0, h)  # inf * 0: a zero query has no error
                h += rounding[sl] * np.abs(dot) + _F32_SLACK * (np.abs(qc) + np.abs(term))
                half[:, sl] = h
        return est, half

    # ---- decode / score ---------------------------------------------------------------------------
    def _last_stage(self) -> int:
        return 0 if self.bits == 1 else 1

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        stage = self._last_stage()
        if stage:
            self._stage_factors(codes, 0)
        s = self._stage_factors(codes, stage)[0].astype(np.float32)
        out = np.empty((codes.shape[0], int(self.dim)), np.float32)  # type: ignore[arg-type]
        for sl in row_blocks(codes.shape[0], int(self.dim) * self.bits):  # type: ignore[arg-type]
            scaled = self._grid(codes[sl], stage) * s[sl, None]
            out[sl] = scaled @ self.rotation + self.centroid  # type: ignore[operator]
        return out

    def _score(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return self._estimate(queries, codes, self._last_stage(), False)[0]

    def _score_prefix(self, queries: np.ndarray, codes: np.ndarray, stages: int) -> np.ndarray:
        return self._estimate(queries, codes, stages - 1, False)[0]

    def _score_bounds(
        self, queries: np.ndarray, codes: np.ndarray, stages: int, confidence: float
    ) -> tuple[np.ndarray, np.ndarray]:
        est, half = self._estimate(queries, codes, stages - 1, True, confidence)
        return est, half  # type: ignore[return-value]

    # ---- state ------------------------------------------------------------------------------------
    def scanner(self, codes: np.ndarray, *, exact: bool = True, query_bits: int = 8,
                rerank: int | None = None) -> Scanner:  # fmt: skip
        """Bit-plane sign scan, then full-code rescoring of the top ``rerank`` (:class:`RaBitQScanner`)."""
        self._require_fitted("scanner")
        return RaBitQScanner(self, codes, query_bits, rerank)

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {
            "centroid": self.centroid,  # type: ignore[dict-item]
            "rotation": self.rotation,  # type: ignore[dict-item]
            "rho": np.array([self.rho], np.float32),
        }

    def _load_state(self, dim: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        check_state_keys(self.spec, meta, arrays, ("centroid", "rotation", "rho"))
        centroid = state_array(self.spec, arrays, "centroid", (dim,), "<f4")
        rotation = state_array(self.spec, arrays, "rotation", (dim, dim), "<f4")
        rho = float(state_array(self.spec, arrays, "rho", (1,), "<f4")[0])
        if not rho > 0:
            raise SerializationError(f"{self.spec} state has a non-positive rho {rho}")
        gram = rotation.astype(np.float64) @ rotation.T.astype(np.float64)
        if not np.allclose(gram, np.eye(dim), atol=1e-4):
            raise SerializationError(f"{self.spec} state rotation is not orthogonal")
        self._set_params(centroid, rotation, rho)


@register_codec("rabitq", r"rabitq(?P<b>\d{1,4})?", "rabitq")
def _build_rabitq(m: re.Match[str]) -> Codec:
    b = m.group("b")
    if b is not None and (b.startswith("0") or not 1 <= int(b) <= MAX_BITS):
        raise CodecSpecError(f"rabitq bits per dimension must be in 1..{MAX_BITS} (no leading zeros), got {b!r}")
    return RaBitQCodec(1 if b is None else int(b))


# ================================================================================================
# scanner (how a catalog of these codes is searched: codec.scanner(codes))
# ================================================================================================
class RaBitQScanner(Scanner):
    """Stage 0 (sign bits) by bit-plane popcounts; for B > 1 bits the top ``rerank`` are rescored in full."""

    def __init__(self, codec, codes: np.ndarray, query_bits: int, rerank: int | None) -> None:
        self.codec, self.query_bits, self.rerank = codec, query_bits, rerank
        codes = check_codes(codes, codec.bytes_per_vector)
        self.codes = codes
        self.n_items = codes.shape[0]
        nb0 = codec._nb()[0]
        # sign bits padded to whole 64-bit words, factors as float64: prepared once per catalog
        width = -(-nb0 // 8) * 8
        self.signs = np.zeros((codes.shape[0], width), np.uint8)
        self.signs[:, :nb0] = codes[:, :nb0]
        self.s = codec._stage_factors(codes, 0)[0]
        self.prepared_bytes = int(self.signs.nbytes + self.s.nbytes)
        self.kernel = f"rabitq-bitplane-{query_bits}bit" + ("+rerank" if codec.bits > 1 else "")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        codec = self.codec
        q = check_queries(queries, int(codec.dim))
        k = check_k(k, self.n_items)
        qrot = q @ codec.rotation.T
        if not np.abs(qrot).max() <= 1e30:
            raise InvalidInputError(TABLE_OVERFLOW)
        qc = (q @ codec.centroid).astype(np.float64)
        rerank = max(20 * k, 1000) if self.rerank is None else max(k, int(self.rerank))
        first = min(self.n_items, rerank if codec.bits > 1 else k)
        ids = np.empty((q.shape[0], k), np.int64)
        vals = np.empty((q.shape[0], k), np.float32)
        for i in range(q.shape[0]):
            cand, est = binary_ip_search(
                qrot[i : i + 1], self.signs, first, query_bits=self.query_bits, item_scale=self.s, offset=qc[i]
            )
            if codec.bits == 1:
                ids[i], vals[i] = cand[0, :k], est[0, :k]
                continue
            rows = np.sort(cand[0])
            full = codec.score(q[i : i + 1], self.codes[rows])
            top, top_vals = topk(full, k)
            ids[i], vals[i] = rows[top[0]], top_vals[0]
        return ids, vals
