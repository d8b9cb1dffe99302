"""Fused score + top-K over binary codes (one query or a small batch against 10^5-10^6 items).

* :func:`hamming_search`: popcount Hamming distance, smallest first.
* :func:`binary_ip_search`: asymmetric binary scoring ``proj . (2b - 1)`` with the float query quantised to
  ``query_bits`` bit planes and one popcount per plane and word (RaBitQ's query quantisation); optional
  per-item scale and offset, which is the RaBitQ estimator.

Same conventions as :mod:`reelpack.kernels.scan` (ids int64 [q, k], scores float32 [q, k], best first, ties to
the lower index, typed errors for bad input).
"""

from __future__ import annotations

import numba
import numpy as np

from reelpack.errors import DimensionMismatchError, InvalidInputError
from reelpack.kernels.dense import popcount
from reelpack.kernels.heap import heap_drain, heap_offer, heap_reset
from reelpack.kernels.checks import check_codes, empty_results
from reelpack.util.validate import as_float_matrix, check_k

__all__ = ["hamming_search", "hamming_run", "code_words", "binary_ip_search", "quantize_query_planes"]


# ================================================================================================
# binary codes
# ================================================================================================
def _words(codes: np.ndarray) -> np.ndarray:
    """uint64 view [n, B/8] when the width is a multiple of 8 bytes, else the uint8 array itself."""
    return codes.view(np.uint64) if codes.shape[1] % 8 == 0 and codes.flags.c_contiguous else codes


@numba.njit(cache=True, nogil=True)
def _offer_distance(hv, hi, dist, t):  # pragma: no cover - compiled
    """Offer -dist; return the distance of the worst kept item afterwards (huge while not full)."""
    heap_offer(hv, hi, -np.float32(dist), t)
    return np.int64(-hv[0]) if hv[0] > -np.inf else np.int64(1) << 40


@numba.njit(cache=True, nogil=True)
def _hamming_scan(qw, cw, hv, hi, out_ids, out_vals):  # pragma: no cover - compiled
    # explicit loops for 1 and 2 words: a word loop of unknown length costs ~3x at these widths
    n, w = cw.shape
    heap_reset(hv, hi)
    worst = np.int64(1) << 40
    if w == 2:
        q0, q1 = qw[0], qw[1]
        for t in range(n):
            dist = numba.int64(popcount(q0 ^ cw[t, 0])) + numba.int64(popcount(q1 ^ cw[t, 1]))
            if dist < worst:
                worst = _offer_distance(hv, hi, dist, t)
    elif w == 1:
        q0 = qw[0]
        for t in range(n):
            dist = numba.int64(popcount(q0 ^ cw[t, 0]))
            if dist < worst:
                worst = _offer_distance(hv, hi, dist, t)
    else:
        for t in range(n):
            dist = 0
            for j in range(w):
                dist += numba.int64(popcount(qw[j] ^ cw[t, j]))
            if dist < worst:
                worst = _offer_distance(hv, hi, dist, t)
    heap_drain(hv, hi, out_ids, out_vals)


def hamming_search(query_codes: np.ndarray, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` codes nearest each query code in Hamming distance (popcount of XOR).

    Args:
        query_codes: uint8 [q, B] (or [B]); codes: uint8 [n, B] (a memmap is read in place).
        k: 1 <= k <= n.

    Returns:
        ids int64 [q, k] and distances int32 [q, k], nearest first, ties to the lower index.
    """
    qc = np.asarray(query_codes)
    if qc.ndim == 1:
        qc = qc[None, :]
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise DimensionMismatchError(f"codes must be 2-D [n, bytes], got shape {codes.shape}")
    qc = check_codes(qc, codes.shape[1])
    codes = check_codes(codes, qc.shape[1])
    k = check_k(k, codes.shape[0])
    return hamming_run(qc, code_words(codes), k)


def code_words(codes: np.ndarray) -> np.ndarray:
    """Checked codes uint8 [n, B] as the scan reads them: a uint64 view [n, B/8] when B is a multiple of 8 and
    the rows are contiguous, else the uint8 array itself (no copy either way)."""
    return _words(codes)


def hamming_run(
    query_codes: np.ndarray, words: np.ndarray, k: int, heap: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hamming_search` after its checks: query codes uint8 [q, B] of the catalog's width, ``words`` from
    :func:`code_words`, 1 <= k <= n; ``heap`` (float32 [k], int64 [k]) is reused when given."""
    qw = _words(np.ascontiguousarray(query_codes))
    if qw.dtype != words.dtype:
        qw = np.ascontiguousarray(query_codes)
    ids, vals = empty_results(query_codes.shape[0], k)
    hv, hi = (np.empty(k, np.float32), np.empty(k, np.int64)) if heap is None else heap
    for i in range(query_codes.shape[0]):
        _hamming_scan(qw[i], words, hv, hi, ids[i], vals[i])
    return ids, (-vals).astype(np.int32)


def quantize_query_planes(proj: np.ndarray, query_bits: int, nbits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantise float projections [q, b] to ``query_bits``-bit unsigned integers, as packed bit planes.

    ``u = round((proj - lo) / delta)`` in 0..2^B-1 with ``lo = min``, ``delta = (max - min) / (2^B - 1)``
    per query. Plane ``i`` holds bit ``i`` of ``u`` packed like ``np.packbits`` (padded to ``nbits``).

    Returns:
        planes uint8 [q, B, nbits/8], lo float64 [q], delta float64 [q].
    """
    if not 1 <= query_bits <= 16:
        raise InvalidInputError(f"query_bits must be in 1..16, got {query_bits}")
    proj = np.asarray(proj, np.float64)
    lo = proj.min(axis=1)
    span = proj.max(axis=1) - lo
    levels = (1 << query_bits) - 1
    delta = np.where(span > 0, span / levels, 1.0)
    u = np.clip(np.rint((proj - lo[:, None]) / delta[:, None]), 0, levels).astype(np.int64)
    padded = np.zeros((proj.shape[0], nbits), np.int64)
    padded[:, : proj.shape[1]] = u
    planes = np.stack([np.packbits((padded >> i) & 1, axis=1) for i in range(query_bits)], axis=1)
    return planes.astype(np.uint8), lo, delta


@numba.njit(cache=True, nogil=True)
def _bitplane_scan(planes, cw, alpha, beta, gamma, item_scale, offset, hv, hi, out_ids, out_vals):  # pragma: no cover
    # score_t = offset + item_scale[t] * (alpha * dot_u + beta * popcount(c_t) + gamma),
    # dot_u = sum_i 2^i popcount(plane_i & c_t)
    n, w = cw.shape
    nplanes = planes.shape[0]
    scaled = item_scale.shape[0] > 0
    heap_reset(hv, hi)
    thr = hv[0]
    for t in range(n):
        dot = 0
        ones = 0
        if w == 1:
            c = cw[t, 0]
            ones = numba.int64(popcount(c))
            for i in range(nplanes):
                dot += numba.int64(popcount(planes[i, 0] & c)) << i
        elif w == 2:
            c0 = cw[t, 0]
            c1 = cw[t, 1]
            ones = numba.int64(popcount(c0)) + numba.int64(popcount(c1))
            for i in range(nplanes):
                dot += (numba.int64(popcount(planes[i, 0] & c0)) + numba.int64(popcount(planes[i, 1] & c1))) << i
        else:
            for j in range(w):
                c = cw[t, j]
                ones += numba.int64(popcount(c))
                for i in range(nplanes):
                    dot += numba.int64(popcount(planes[i, j] & c)) << i
        v = alpha * np.float64(dot) + beta * np.float64(ones) + gamma
        if scaled:
            v *= item_scale[t]
        s = np.float32(v + offset)
        if s > thr:
            heap_offer(hv, hi, s, t)
            thr = hv[0]
    heap_drain(hv, hi, out_ids, out_vals)


def binary_ip_search(
    proj: np.ndarray,
    codes: np.ndarray,
    k: int,
    *,
    query_bits: int = 8,
    item_scale: np.ndarray | None = None,
    offset: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items by the asymmetric binary score ``proj . (2 b - 1)`` (optionally scaled per item).

    The float query is quantised to ``query_bits`` bit planes (:func:`quantize_query_planes`), so
    ``proj . b ~ delta * sum_i 2^i popcount(plane_i & b) + lo * popcount(b)``: one AND + popcount
    per plane and 64-bit word. Each score is exact for the quantised query ``lo + delta * u``; its
    distance to the float score is at most ``delta / 2 * b`` (``b`` = bits per code).

    Args:
        proj: float32 [q, b] (or [b]), b <= 8 * code bytes; code bits beyond ``b`` must be 0 (padding).
        codes: uint8 [n, B], ``np.packbits`` order (a memmap is read in place when B % 8 == 0).
        k: 1 <= k <= n.
        query_bits: bits per query coordinate (1..16).
        item_scale: optional float [n]; offset: a constant: ``score_t = offset + scale_t * proj . (2 b_t - 1)``
            (the RaBitQ estimator).

    Returns:
        ids int64 [q, k], scores float32 [q, k], best first, ties to the lower index.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise DimensionMismatchError(f"codes must be 2-D [n, bytes], got shape {codes.shape}")
    nbits = codes.shape[1] * 8
    proj = np.asarray(proj)
    proj = as_float_matrix(proj[None, :] if proj.ndim == 1 else proj, "proj")
    if proj.shape[1] > nbits:
        raise DimensionMismatchError(f"proj has {proj.shape[1]} coordinates, codes hold {nbits} bits")
    codes = check_codes(codes, codes.shape[1])
    n = codes.shape[0]
    k = check_k(k, n)
    empty = np.zeros(0, np.float64)
    scale = empty if item_scale is None else _per_item(item_scale, n, "item_scale")
    if not np.isfinite(offset):
        raise InvalidInputError(f"offset must be finite, got {offset}")
    planes, lo, delta = quantize_query_planes(proj, query_bits, nbits)
    cw = _words(codes)
    ids, vals = empty_results(proj.shape[0], k)
    hv, hi = np.empty(k, np.float32), np.empty(k, np.int64)
    for i in range(proj.shape[0]):
        pw = _words(np.ascontiguousarray(planes[i])) if cw.dtype == np.uint64 else np.ascontiguousarray(planes[i])
        u_sum = float(np.rint((proj[i].astype(np.float64) - lo[i]) / delta[i]).clip(0, (1 << query_bits) - 1).sum())
        total = lo[i] * proj.shape[1] + delta[i] * u_sum  # sum of the quantised query
        # proj . (2b - 1) = 2 (delta * dot_u + lo * ones) - total
        _bitplane_scan(pw, cw, 2.0 * delta[i], 2.0 * lo[i], -total, scale, float(offset), hv, hi, ids[i], vals[i])
    return ids, vals


def _per_item(x: np.ndarray, n: int, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n:
        raise DimensionMismatchError(f"{name} has {arr.shape[0]} entries, the catalog {n}")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name} holds NaN or Inf")
    return np.ascontiguousarray(arr)
