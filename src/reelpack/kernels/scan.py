"""Fused score + top-K scans: one query (or a small batch) against 10^5-10^6 compressed items.

:mod:`reelpack.kernels.dense` returns full score matrices, which suits batches of
users. A phone ranks one user at a time, so the kernels here never build the
score row: each item is scored and offered to a bounded heap of the K best in
the same loop (numba, ``cache=True``, one thread), and items are visited in
index order so that ties go to the lower index, as in :func:`reelpack.kernels.topk`.

Kernels (all return ``(ids int64 [q, k], scores float32 [q, k])``, best first):

* :func:`pq_search`: 8-bit PQ by lookup-table ADC. Exact scores. On CPUs with
  AVX-512 VBMI the codes are first laid out in blocks of 64 (:class:`PQ8Blocks`)
  and scanned with quantised uint8 tables held in registers
  (:func:`reelpack.kernels.simd.pq8_block`); every item whose quantised sum could
  still reach the K-th best is then rescored with the float tables, so the
  result equals exact ADC (proof at :func:`_candidate_slack`). Elsewhere a scalar
  loop computes exact ADC directly.
* :func:`fastscan_search`: 4-bit PQ ("fast-scan"): codes in blocks of 32
  (:class:`FastScanBlocks`), quantised uint8 tables, AVX2 ``vpshufb``
  (:func:`reelpack.kernels.simd.fs4_block`; a portable numba loop computes the
  same integers elsewhere). ``exact=True`` (default) rescores the candidates
  with the float tables as above; ``exact=False`` returns the quantised
  ranking and its dequantised scores, as faiss's ``IndexPQFastScan`` does.
* :func:`hamming_search` (in :mod:`reelpack.kernels.binscan`, re-exported here): popcount Hamming distance,
  smallest first.
* :func:`binary_ip_search`: asymmetric binary scoring ``proj . (2b - 1)`` with the
  float query quantised to ``query_bits`` bit planes and one popcount per plane
  and word (RaBitQ's query quantisation); optional per-item scale and offset,
  which is the RaBitQ estimator.
* :func:`sq8_search` / :func:`sq4_search`: scalar-quantised dot products
  (uint8 / nibble-packed codes) with a per-dimension affine map.

Each codec family wraps these kernels in its own scanner (``codec.scanner(codes)``, see
:class:`reelpack.codecs.Scanner`), which prepares a catalog once (block layouts, factors) and answers
queries. Codes may be a read-only ``numpy.memmap`` view of a pack
(:meth:`reelpack.format.PackReader.layer_codes`): row-major kernels read it in
place; block layouts copy it once (``n x bytes_per_vector`` bytes). The bounded heap is
:mod:`reelpack.kernels.heap`.

(About 800 lines on purpose: the 8-bit and 4-bit PQ scans share the quantised block passes and the
candidate-slack argument; the binary-code scans are in :mod:`reelpack.kernels.binscan`.)

Bad input raises typed errors: queries of the wrong dimension
(:class:`~reelpack.errors.DimensionMismatchError`), NaN/Inf queries
(:class:`~reelpack.errors.NonFiniteError`), codes of the wrong width or dtype,
code values beyond the codebook (:class:`~reelpack.errors.InvalidInputError`),
``K <= 0`` or ``K > n`` (:class:`~reelpack.errors.InvalidKError`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from reelpack.util.validate import check_k
from reelpack.errors import DimensionMismatchError, DTypeError, InvalidInputError
from reelpack.kernels.dense import refuse_tables
from reelpack.kernels.simd import HAS_AVX2, HAS_AVX512BW, HAS_VBMI, PQ8_BLOCK, ctz64, fs4_block, fs4_block64, pq8_block
from reelpack.kernels.checks import check_codes, check_queries, empty_results
from reelpack.kernels.heap import (
    PACKED_ID_BITS,
    PACKED_ID_MASK,
    heap_drain,
    heap_offer,
    heap_reset,
    packed_to_pairs,
    sift_down_packed,
)

__all__ = [
    "pq_search",
    "PQ8Blocks",
    "fastscan_search",
    "FastScanBlocks",
    "sq8_search",
    "sq4_search",
    "check_tables",
    "check_code_values",
    "pq8_work",
    "pq_run",
    "fs4_call",
    "fs4_run",
    "check_affine",
    "sq_run",
]

# ================================================================================================
# input checks
# ================================================================================================
def check_tables(centroids: object, ksub_max: int) -> np.ndarray:
    c = np.asarray(centroids)
    if c.dtype.kind != "f" or c.ndim != 3:
        raise DTypeError(f"centroids must be a float array [m, ksub, dsub], got {c.dtype} {c.shape}")
    if not 1 <= c.shape[1] <= ksub_max:
        raise DimensionMismatchError(f"centroids have {c.shape[1]} entries per sub-quantiser, at most {ksub_max}")
    c = np.ascontiguousarray(c, dtype=np.float32)
    if not np.isfinite(c).all():
        raise InvalidInputError("centroids hold NaN or Inf")
    return c


def check_code_values(values: np.ndarray, ksub: int, what: str) -> None:
    if ksub < 256 and values.size and int(values.max()) >= ksub:
        raise InvalidInputError(f"{what} hold value {int(values.max())}, but each sub-quantiser has only {ksub} centroids")


def _candidate_slack(m: int) -> int:
    """Quantised units below the K-th best quantised sum that an exact top-K item can sit.

    With per-entry rounding error at most 1/2 unit, a sum of ``m`` entries is within
    ``m/2`` of the exact (scaled) score. The K items with quantised sum >= tau have exact
    scores >= tau - m/2, so the exact K-th best is >= tau - m/2; an item with quantised sum
    < tau - m has an exact score < tau - m/2 and cannot be in the exact top K. Two more
    units absorb float32 rounding of the tables and sums.
    """
    return m + 2


# ================================================================================================
# 8-bit PQ
# ================================================================================================
@numba.njit(cache=True, nogil=True)
def _pq8_scan_scalar(lut, codes, hv, hi, out_ids, out_vals):  # pragma: no cover - compiled
    n, m = codes.shape
    heap_reset(hv, hi)
    thr = hv[0]
    for t in range(n):
        acc = np.float32(0.0)
        for j in range(m):
            acc += lut[j, codes[t, j]]
        if acc > thr:
            heap_offer(hv, hi, acc, t)
            thr = hv[0]
    heap_drain(hv, hi, out_ids, out_vals)


@numba.njit(cache=True, nogil=True)
def _lut_into(q, centroids, out):  # pragma: no cover - compiled
    """out[j, c] = q[j*dsub:(j+1)*dsub] . centroids[j, c] (float32); entries c >= ksub of ``out`` set to 0.

    Returns False (tables unusable) for a NaN/Inf or a value beyond 1e30 in ``q`` (the limit every query check
    applies), or for a table entry beyond ``3e38 / m``: with every entry within that bound no sum of ``m``
    entries leaves float32's range, so the scan's scores are finite and need no check afterwards."""
    for s in range(q.shape[0]):
        if not abs(q[s]) <= 1e30:  # NaN, Inf or too large
            return False
    m, ksub, dsub = centroids.shape
    limit = np.float32(3.0e38 / m)
    ok = True
    for j in range(m):
        for c in range(ksub):
            acc = np.float32(0.0)
            for s in range(dsub):
                acc += q[j * dsub + s] * centroids[j, c, s]
            out[j, c] = acc
            if not abs(acc) <= limit:
                ok = False
        for c in range(ksub, out.shape[1]):
            out[j, c] = 0.0
    return ok


# Integer sums (uint16) rank with one int64 key per item: key = sum << 40 | (2^40 - 1 - id), so a larger
# key is a larger sum or, for equal sums, a lower id; a min-heap of K keys then needs one compare per level.
@numba.njit(cache=True, nogil=True)
def _offer_mask(accs, acc_base, base, mask, keys):  # pragma: no cover - compiled
    """Offer items ``base + t`` (sum ``accs[acc_base + t]``) for each bit t set in ``mask`` to the key heap;
    return the next floor (the smallest sum that can still enter: root sum + 1, or 0 while not full)."""
    while mask:
        t = ctz64(mask)
        mask &= mask - np.uint64(1)
        key = (np.int64(accs[acc_base + t]) << PACKED_ID_BITS) | (PACKED_ID_MASK - (base + np.int64(t)))
        if key > keys[0]:
            keys[0] = key
            sift_down_packed(keys, 0, keys.shape[0])
    if keys[0] < 0:
        return np.uint16(0)
    return np.uint16(min(65535, (keys[0] >> PACKED_ID_BITS) + 1))


@numba.njit(cache=True, nogil=True)
def _block_maxima(accs, width, n, bmax):  # pragma: no cover - compiled
    """bmax[b] = largest sum of block b over its real items (the exact pass skips blocks below the floor)."""
    for b in range(bmax.shape[0]):
        base = b * width
        mx = 0
        for j in range(min(width, n - base)):
            mx = max(mx, accs[base + j])
        bmax[b] = mx


@numba.njit(cache=True, nogil=True)
def _offer_block(accs, base, lim, hv, hi):  # pragma: no cover - compiled
    """Offer items base..base+lim-1 (uint16 sums); return the new integer threshold (-1 while not full)."""
    for j in range(lim):
        v = np.float32(accs[base + j])
        if v > hv[0]:
            heap_offer(hv, hi, v, base + j)
    return np.int64(hv[0]) if hv[0] > -np.inf else np.int64(-1)


@numba.njit(cache=True, nogil=True)
def _quantize_one(lut, qlut):  # pragma: no cover - compiled
    """uint8 table qlut [m, ksub] = round((lut - min_j) * scale); returns (scale, bias = sum_j min_j)."""
    m, ksub = lut.shape
    span = 0.0
    bias = 0.0
    for j in range(m):
        lo = lut[j, 0]
        hi = lut[j, 0]
        for c in range(1, ksub):
            lo = min(lo, lut[j, c])
            hi = max(hi, lut[j, c])
        span = max(span, np.float64(hi) - np.float64(lo))
        bias += lo
    scale = 255.0 / span if span > 0 else 1.0
    for j in range(m):
        lo = lut[j, 0]
        for c in range(1, ksub):
            lo = min(lo, lut[j, c])
        for c in range(ksub):
            v = np.floor((np.float64(lut[j, c]) - np.float64(lo)) * scale + 0.5)
            qlut[j, c] = np.uint8(min(255.0, max(0.0, v)))
    return scale, bias


@numba.njit(cache=True, nogil=True)
def _pq8_exact(blocks, m, t, lut):  # pragma: no cover - compiled
    b = t // 64
    col = t - b * 64
    off = b * m * 64 + col
    acc = np.float32(0.0)
    for j in range(m):
        acc += lut[j, blocks[off + j * 64]]
    return acc


@numba.njit(cache=True, nogil=True)
def _pq8_rescore(blocks, n, m, lut, accs, bmax, floor, hv, hi, out_ids, out_vals):  # pragma: no cover - compiled
    heap_reset(hv, hi)
    for b in range(bmax.shape[0]):
        if bmax[b] < floor:
            continue
        base = b * 64
        for j in range(min(64, n - base)):
            if accs[base + j] >= floor:
                heap_offer(hv, hi, _pq8_exact(blocks, m, base + j, lut), base + j)
    heap_drain(hv, hi, out_ids, out_vals)


@numba.njit(cache=True, nogil=True)
def _pq8_blocks_pass(blocks, n, m, qlut, accs, keep, hv, hi):  # pragma: no cover - compiled
    """First pass over 64-item blocks with quantised tables: the heap gets the K best integer sums.

    ``keep``: write every block's sums to ``accs`` (for a rescoring pass); else reuse ``accs[:64]``."""
    keys = np.full(hv.shape[0], -1, np.int64)
    floor = np.uint16(0)
    nb = -(-n // 64)
    for b in range(nb):
        acc_base = b * 64 if keep else 0
        mask = pq8_block(blocks, b * m * 64, qlut, m, accs, acc_base, floor)
        if b == nb - 1 and n - b * 64 < 64:  # last block: padding lanes excluded
            mask &= (np.uint64(1) << np.uint64(n - b * 64)) - np.uint64(1)
        if mask:
            floor = _offer_mask(accs, acc_base, b * 64, mask, keys)
    packed_to_pairs(keys, hv, hi)


@numba.njit(cache=True, nogil=True)
def _pq8_scan_vbmi(blocks, n, m, q, centroids, lut, qlut2, slack, accs, bmax, hv, hi, out_ids, out_vals):  # pragma: no cover
    if not _lut_into(q, centroids, lut):  # NaN/Inf query or float32 overflow of the tables
        return False
    _quantize_one(lut, qlut2)
    _pq8_blocks_pass(blocks, n, m, qlut2.reshape(-1), accs, True, hv, hi)
    _block_maxima(accs, 64, n, bmax)
    floor = hv[0] - slack
    _pq8_rescore(blocks, n, m, lut, accs, bmax, floor, hv, hi, out_ids, out_vals)
    return True


def _to_blocks(codes: np.ndarray, width: int) -> np.ndarray:
    """Row-major codes [n, B] -> blocks [ceil(n / width), B, width] (zero padded), as one 1-D array."""
    n, nbytes = codes.shape
    nb = -(-n // width)
    out = np.zeros((nb, nbytes, width), np.uint8)
    full = n // width
    if full:
        out[:full] = codes[: full * width].reshape(full, width, nbytes).transpose(0, 2, 1)
    if n % width:
        out[full, :, : n - full * width] = codes[full * width :].T
    return out.reshape(-1)


@dataclass(frozen=True)
class PQ8Blocks:
    """8-bit PQ codes laid out for :func:`pq_search`'s SIMD scan: blocks of 64 items, sub-code major.

    Attributes:
        data: uint8 [ceil(n/64) * m * 64]; block ``b`` row ``j`` byte ``t`` = code[64 b + t, j].
        n: items; m: sub-quantisers.
    """

    data: np.ndarray
    n: int
    m: int

    @classmethod
    def from_codes(cls, codes: np.ndarray) -> PQ8Blocks:
        """Lay out uint8 codes [n, m] (one copy of the code bytes; a memmap is read once)."""
        arr = np.asarray(codes)
        if arr.ndim != 2:
            raise DimensionMismatchError(f"codes must be 2-D [n, m], got shape {arr.shape}")
        codes = check_codes(arr, arr.shape[1])
        return cls(_to_blocks(codes, PQ8_BLOCK), codes.shape[0], codes.shape[1])

    def codes(self, rows: np.ndarray) -> np.ndarray:
        """Row-major codes uint8 [len(rows), m] of ``rows`` (int64)."""
        rows = np.asarray(rows, np.int64)
        b, col = rows // PQ8_BLOCK, rows % PQ8_BLOCK
        idx = (b * self.m * PQ8_BLOCK + col)[:, None] + np.arange(self.m)[None, :] * PQ8_BLOCK
        return self.data[idx]


def pq_search(
    queries: np.ndarray,
    centroids: np.ndarray,
    codes: np.ndarray | PQ8Blocks,
    k: int,
    *,
    simd: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items by exact PQ inner product (ADC) for each query.

    Args:
        queries: float32 [q, d] (or [d]); already rotated for OPQ.
        centroids: float32 [m, ksub, d/m], ksub <= 256.
        codes: uint8 [n, m] row-major (a memmap is fine), or :class:`PQ8Blocks`.
        k: 1 <= k <= n.
        simd: use the AVX-512 VBMI scan (default: when the CPU has it). Row-major codes are laid
            out in blocks first (a copy); pass :class:`PQ8Blocks` to do that once per catalog.

    Returns:
        ids int64 [q, k] and scores float32 [q, k] (sum_j LUT[j, code_j] in float32, j = 0..m-1),
        best first, ties to the lower index.
    """
    centroids = check_tables(centroids, 256)
    m, ksub, dsub = centroids.shape
    queries = check_queries(queries, m * dsub)
    use_simd = HAS_VBMI if simd is None else bool(simd) and HAS_VBMI
    if isinstance(codes, PQ8Blocks):
        if codes.m != m:
            raise DimensionMismatchError(f"blocks hold {codes.m} sub-codes, centroids have {m} sub-quantisers")
        blocks, n = codes, codes.n
        if ksub < 256:
            check_code_values(blocks.data, ksub, "codes")
    else:
        codes = check_codes(codes, m)
        check_code_values(codes, ksub, "codes")
        n = codes.shape[0]
        blocks = PQ8Blocks.from_codes(codes) if use_simd else None
    k = check_k(k, n)
    return pq_run(queries, centroids, blocks if blocks is not None else codes, n, k, use_simd)


def pq8_work(m: int, n: int, k: int) -> tuple[np.ndarray, ...]:
    """Scratch of one 8-bit SIMD scan: (lut, qlut, accs, bmax, heap values, heap ids)."""
    nb = -(-n // PQ8_BLOCK)
    return (
        np.empty((m, 256), np.float32), np.empty((m, 256), np.uint8), np.empty(nb * PQ8_BLOCK, np.uint16),
        np.empty(nb, np.uint16), np.empty(k, np.float32), np.empty(k, np.int64),
    )  # fmt: skip


def pq_run(
    queries: np.ndarray,
    centroids: np.ndarray,
    codes: np.ndarray | PQ8Blocks,
    n: int,
    k: int,
    use_simd: bool,
    work: tuple[np.ndarray, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pq_search` after its checks (queries float32 [q, d] finite, centroids checked, 1 <= k <= n)."""
    m, ksub, _ = centroids.shape
    ids, vals = empty_results(queries.shape[0], k)
    hv, hi = np.empty(k, np.float32), np.empty(k, np.int64)
    if isinstance(codes, PQ8Blocks) and use_simd and HAS_VBMI:
        if work is None:
            work = pq8_work(m, n, k)
        lut, qlut, accs, bmax, hv, hi = work
        slack = np.float32(_candidate_slack(m))
        for i in range(queries.shape[0]):
            if not _pq8_scan_vbmi(codes.data, n, m, queries[i], centroids, lut, qlut, slack, accs, bmax, hv, hi, ids[i], vals[i]):
                refuse_tables(queries)
        return ids, vals  # tables within 3e38 / m (checked by _lut_into): every score is finite
    rows = codes.codes(np.arange(n)) if isinstance(codes, PQ8Blocks) else codes
    lut = np.empty((m, 256), np.float32) if work is None else work[0]
    for i in range(queries.shape[0]):
        if not _lut_into(queries[i], centroids, lut):  # NaN/Inf, beyond 1e30, or tables beyond 3e38 / m
            refuse_tables(queries)
        _pq8_scan_scalar(lut, rows, hv, hi, ids[i], vals[i])
    return ids, vals  # tables within 3e38 / m: every score is finite


# ================================================================================================
# 4-bit PQ (fast-scan)
# ================================================================================================
@numba.njit(cache=True, nogil=True)
def _fs4_block_portable(blocks, block_off, lut16, n_pairs, width, accs, out_off):  # pragma: no cover - compiled
    for t in range(width):
        accs[out_off + t] = 0
    for p in range(n_pairs):
        row = block_off + p * width
        for t in range(width):
            accs[out_off + t] += lut16[p, blocks[row + t]]
    mx = 0
    for t in range(width):
        mx = max(mx, accs[out_off + t])
    return mx


@numba.njit(cache=True, nogil=True)
def _fs4_exact(blocks, n_pairs, width, t, lut):  # pragma: no cover - compiled
    # float32 (lut[2p, lo] + lut[2p+1, hi]) summed over p: the value of pair_tables + ADC (the codec's score)
    b = t // width
    off = b * n_pairs * width + (t - b * width)
    acc = np.float32(0.0)
    for p in range(n_pairs):
        c = blocks[off + p * width]
        acc += lut[2 * p, c & 15] + lut[2 * p + 1, c >> 4]
    return acc


@numba.njit(cache=True, nogil=True)
def _fs4_tables(lut, qlut, tab, lut16, copies):  # pragma: no cover - compiled
    """Quantise float tables [m, 16]; fill the SIMD layout ``tab`` (``copies`` = lanes / 16 copies of each
    16-entry table, per pair the even table then the odd one) or, with ``copies == 0``, the byte tables ``lut16``."""
    scale, bias = _quantize_one(lut, qlut)
    n_pairs = lut.shape[0] // 2
    if copies > 0:
        row = 32 * copies
        for p in range(n_pairs):
            for r in range(copies):
                for c in range(16):
                    tab[p * row + 16 * r + c] = qlut[2 * p, c]
                    tab[p * row + 16 * (copies + r) + c] = qlut[2 * p + 1, c]
    else:
        for p in range(n_pairs):
            for byte in range(256):
                lut16[p, byte] = np.uint16(qlut[2 * p, byte & 15]) + np.uint16(qlut[2 * p + 1, byte >> 4])
    return scale, bias


@numba.njit(cache=True, nogil=True)
def _fs4_finish(blocks, n, n_pairs, width, lut2, accs, bmax, slack, scale_inv, bias, hv, hi, out_ids, out_vals):  # pragma: no cover
    if slack < 0:  # quantised ranking, dequantised scores
        heap_drain(hv, hi, out_ids, out_vals)
        for j in range(out_vals.shape[0]):
            out_vals[j] = np.float32(bias + out_vals[j] * scale_inv)
        return
    floor = hv[0] - slack
    heap_reset(hv, hi)
    for b in range(bmax.shape[0]):
        if bmax[b] < floor:
            continue
        base = b * width
        for j in range(min(width, n - base)):
            if accs[base + j] >= floor:
                heap_offer(hv, hi, _fs4_exact(blocks, n_pairs, width, base + j, lut2), base + j)
    heap_drain(hv, hi, out_ids, out_vals)


# The AVX2 and AVX-512 scans differ only in the intrinsic and the block width. They stay two functions
# on purpose: numba compiles every branch of a function, and a branch holding an AVX-512 intrinsic
# fails instruction selection on a CPU without AVX-512, even if it never runs.
@numba.njit(cache=True, nogil=True)
def _fs4_scan_avx2(blocks, n, n_pairs, q, centroids, lut, qlut, tab, lut16, slack, accs, bmax, hv, hi, out_ids, out_vals):  # pragma: no cover
    if not _lut_into(q, centroids, lut):  # NaN/Inf query or float32 overflow of the tables
        return False
    scale, bias = _fs4_tables(lut, qlut, tab, lut16, 2)
    keys = np.full(hv.shape[0], -1, np.int64)
    floor = np.uint16(0)
    nb = bmax.shape[0]
    keep = slack >= 0  # exact mode keeps every sum for the rescoring pass; else one block's sums at a time
    for b in range(nb):  # the kernel returns a bit mask of the items at or above the heap's floor
        acc_base = b * 32 if keep else 0
        mask = fs4_block(blocks, b * n_pairs * 32, tab, 0, n_pairs, accs, acc_base, floor)
        if b == nb - 1 and n - b * 32 < 32:  # last block: padding lanes excluded
            mask &= (np.uint64(1) << np.uint64(n - b * 32)) - np.uint64(1)
        if mask:
            floor = _offer_mask(accs, acc_base, b * 32, mask, keys)
    packed_to_pairs(keys, hv, hi)
    if slack >= 0:
        _block_maxima(accs, 32, n, bmax)
    _fs4_finish(blocks, n, n_pairs, 32, lut, accs, bmax, slack, 1.0 / scale, bias, hv, hi, out_ids, out_vals)
    return True


@numba.njit(cache=True, nogil=True)
def _fs4_scan_avx512(blocks, n, n_pairs, q, centroids, lut, qlut, tab, lut16, slack, accs, bmax, hv, hi, out_ids, out_vals):  # pragma: no cover
    if not _lut_into(q, centroids, lut):  # NaN/Inf query or float32 overflow of the tables
        return False
    scale, bias = _fs4_tables(lut, qlut, tab, lut16, 4)
    keys = np.full(hv.shape[0], -1, np.int64)
    floor = np.uint16(0)
    nb = bmax.shape[0]
    keep = slack >= 0  # exact mode keeps every sum for the rescoring pass; else one block's sums at a time
    for b in range(nb):  # the kernel returns a bit mask of the items at or above the heap's floor
        acc_base = b * 64 if keep else 0
        mask = fs4_block64(blocks, b * n_pairs * 64, tab, 0, n_pairs, accs, acc_base, floor)
        if b == nb - 1 and n - b * 64 < 64:  # last block: padding lanes excluded
            mask &= (np.uint64(1) << np.uint64(n - b * 64)) - np.uint64(1)
        if mask:
            floor = _offer_mask(accs, acc_base, b * 64, mask, keys)
    packed_to_pairs(keys, hv, hi)
    if slack >= 0:
        _block_maxima(accs, 64, n, bmax)
    _fs4_finish(blocks, n, n_pairs, 64, lut, accs, bmax, slack, 1.0 / scale, bias, hv, hi, out_ids, out_vals)
    return True


@numba.njit(cache=True, nogil=True)
def _fs4_scan_portable(blocks, n, n_pairs, width, q, centroids, lut, qlut, tab, lut16, slack, accs, bmax, hv, hi, out_ids, out_vals):  # pragma: no cover
    if not _lut_into(q, centroids, lut):  # NaN/Inf query or float32 overflow of the tables
        return False
    scale, bias = _fs4_tables(lut, qlut, tab, lut16, 0)
    heap_reset(hv, hi)
    thr = np.int64(-1)
    for b in range(bmax.shape[0]):
        mx = _fs4_block_portable(blocks, b * n_pairs * width, lut16, n_pairs, width, accs, b * width)
        lim = min(width, n - b * width)
        if lim < width:  # last block: padding lanes excluded
            mx = 0
            for j in range(lim):
                mx = max(mx, accs[b * width + j])
        bmax[b] = mx
        if mx > thr:
            thr = _offer_block(accs, b * width, lim, hv, hi)
    _fs4_finish(blocks, n, n_pairs, width, lut, accs, bmax, slack, 1.0 / scale, bias, hv, hi, out_ids, out_vals)
    return True


#: Items per 4-bit block on this machine: 64 with AVX-512BW, else 32.
FS4_WIDTH = 64 if HAS_AVX512BW else 32


@dataclass(frozen=True)
class FastScanBlocks:
    """Nibble-packed 4-bit PQ codes in blocks of ``width`` items for :func:`fastscan_search`.

    Attributes:
        data: uint8 [ceil(n/width) * (m/2) * width]; block ``b`` row ``p`` byte ``t`` is byte ``p`` of
            item ``width * b + t``'s code (``code[2p] | code[2p+1] << 4``).
        n: items; m: sub-quantisers (even); width: 32 or 64 (:data:`FS4_WIDTH` by default: 64 where the
            CPU has AVX-512BW).
    """

    data: np.ndarray
    n: int
    m: int
    width: int = 32

    @classmethod
    def from_codes(cls, codes: np.ndarray, m: int, width: int | None = None) -> FastScanBlocks:
        """Lay out nibble-packed codes uint8 [n, m/2] (sub-quantiser ``2p`` in the low nibble of byte ``p``)."""
        if m <= 0 or m % 2:
            raise DimensionMismatchError(f"4-bit PQ needs an even number of sub-quantisers, got {m}")
        width = FS4_WIDTH if width is None else int(width)
        if width not in (32, 64):
            raise InvalidInputError(f"block width must be 32 or 64, got {width}")
        codes = check_codes(codes, m // 2)
        return cls(_to_blocks(codes, width), codes.shape[0], m, width)


def fastscan_search(
    queries: np.ndarray,
    centroids: np.ndarray,
    codes: np.ndarray | FastScanBlocks,
    k: int,
    *,
    exact: bool = True,
    simd: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items for 4-bit PQ codes by the fast-scan kernel.

    Args:
        queries: float32 [q, d] (or [d]).
        centroids: float32 [m, 16, d/m] (m even).
        codes: nibble-packed uint8 [n, m/2] or :class:`FastScanBlocks`.
        k: 1 <= k <= n.
        exact: rescore candidates with float tables (result = exact ADC top-k, scores = sum over
            bytes of :func:`reelpack.kernels.dense.pair_tables`, the codec's score); ``False``: ranking by the uint8-quantised tables and
            their dequantised sums (faiss ``IndexPQFastScan`` semantics).
        simd: use ``vpshufb`` (default: when the CPU has it: AVX-512BW for 64-wide blocks, AVX2
            for 32-wide); the portable loop computes the same integer sums.

    Returns:
        ids int64 [q, k], scores float32 [q, k], best first, ties to the lower index.
    """
    centroids = check_tables(centroids, 16)
    m, ksub, dsub = centroids.shape
    if m % 2:
        raise DimensionMismatchError(f"4-bit PQ needs an even number of sub-quantisers, got {m}")
    queries = check_queries(queries, m * dsub)
    blocks = codes if isinstance(codes, FastScanBlocks) else FastScanBlocks.from_codes(codes, m)
    if blocks.m != m:
        raise DimensionMismatchError(f"blocks hold {blocks.m} sub-codes, centroids have {m} sub-quantisers")
    if ksub < 16:
        lo, hi = blocks.data & 15, blocks.data >> 4
        if (lo >= ksub).any() or (hi >= ksub).any():
            raise InvalidInputError(f"codes hold a nibble >= {ksub}, the number of centroids per sub-quantiser")
    k = check_k(k, blocks.n)
    return fs4_run(queries, centroids, blocks, k, exact, True if simd is None else bool(simd))


@numba.njit(cache=True, nogil=True)
def _fs4_batch_avx512(blocks, n, n_pairs, queries, centroids, lut, qlut, tab, lut16, slack, accs, bmax, hv, hi):  # pragma: no cover
    k = hv.shape[0]
    ids = np.empty((queries.shape[0], k), np.int64)
    vals = np.empty((queries.shape[0], k), np.float32)
    for i in range(queries.shape[0]):
        if not _fs4_scan_avx512(blocks, n, n_pairs, queries[i], centroids, lut, qlut, tab, lut16, slack, accs, bmax,
                                hv, hi, ids[i], vals[i]):  # fmt: skip
            return ids, vals, False
    return ids, vals, True


@numba.njit(cache=True, nogil=True)
def _fs4_batch_avx2(blocks, n, n_pairs, queries, centroids, lut, qlut, tab, lut16, slack, accs, bmax, hv, hi):  # pragma: no cover
    k = hv.shape[0]
    ids = np.empty((queries.shape[0], k), np.int64)
    vals = np.empty((queries.shape[0], k), np.float32)
    for i in range(queries.shape[0]):
        if not _fs4_scan_avx2(blocks, n, n_pairs, queries[i], centroids, lut, qlut, tab, lut16, slack, accs, bmax,
                              hv, hi, ids[i], vals[i]):  # fmt: skip
            return ids, vals, False
    return ids, vals, True


@numba.njit(cache=True, nogil=True)
def _fs4_batch_portable(blocks, n, n_pairs, width, queries, centroids, lut, qlut, tab, lut16, slack, accs, bmax, hv, hi):  # pragma: no cover
    k = hv.shape[0]
    ids = np.empty((queries.shape[0], k), np.int64)
    vals = np.empty((queries.shape[0], k), np.float32)
    for i in range(queries.shape[0]):
        if not _fs4_scan_portable(blocks, n, n_pairs, width, queries[i], centroids, lut, qlut, tab, lut16, slack,
                                  accs, bmax, hv, hi, ids[i], vals[i]):  # fmt: skip
            return ids, vals, False
    return ids, vals, True


def _fs4_work(m: int, n: int, width: int, k: int) -> tuple[np.ndarray, ...]:
    """Scratch of one 4-bit scan: (lut, qlut, tab, lut16, accs, bmax, heap values, heap ids)."""
    n_pairs = m // 2
    nb = -(-n // width)
    return (
        np.empty((m, 16), np.float32), np.empty((m, 16), np.uint8), np.empty(n_pairs * 2 * width, np.uint8),
        np.empty((n_pairs, 256), np.uint16), np.empty(nb * width, np.uint16), np.empty(nb, np.uint16),
        np.empty(k, np.float32), np.empty(k, np.int64),
    )  # fmt: skip


def fs4_call(centroids: np.ndarray, blocks: FastScanBlocks, k: int, exact: bool, want_simd: bool) -> tuple:
    """The numba batch scan for these blocks and CPU, with its arguments before and after the queries.

    Returns ``(fn, head, tail)``: ``fn(*head, queries, *tail)`` gives ``(ids, vals, all_finite)``; the
    scratch arrays in ``tail`` are reused by every call made with them (one thread at a time).
    """
    m, n, width = centroids.shape[0], blocks.n, blocks.width
    lut, qlut, tab, lut16, accs, bmax, hv, hi = _fs4_work(m, n, width, k)
    slack = np.float32(_candidate_slack(m) if exact else -1.0)
    tail = (centroids, lut, qlut, tab, lut16, slack, accs, bmax, hv, hi)
    if want_simd and width == 64 and HAS_AVX512BW:
        return _fs4_batch_avx512, (blocks.data, n, m // 2), tail
    if want_simd and width == 32 and HAS_AVX2:
        return _fs4_batch_avx2, (blocks.data, n, m // 2), tail
    return _fs4_batch_portable, (blocks.data, n, m // 2, width), tail


def fs4_run(
    queries: np.ndarray, centroids: np.ndarray, blocks: FastScanBlocks, k: int, exact: bool, want_simd: bool
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fastscan_search` after its checks (queries float32 C-contiguous [q, d]; NaN is re-checked)."""
    fn, head, tail = fs4_call(centroids, blocks, k, exact, want_simd)
    ids, vals, ok = fn(*head, queries, *tail)
    if not ok:
        refuse_tables(queries)  # NonFiniteError naming the rows, or float32 overflow of the tables
    return ids, vals  # tables within 3e38 / m (checked by _lut_into): every score is finite


# ================================================================================================
# scalar quantisation
# ================================================================================================
@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _sq8_scan(qs, codes, offset, hv, hi, out_ids, out_vals):  # pragma: no cover - compiled
    n, d = codes.shape
    heap_reset(hv, hi)
    thr = hv[0]
    for t in range(n):
        acc = np.float32(0.0)
        for j in range(d):
            acc += qs[j] * np.float32(codes[t, j])
        v = acc + offset
        if v > thr:
            heap_offer(hv, hi, v, t)
            thr = hv[0]
    heap_drain(hv, hi, out_ids, out_vals)


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _sq4_scan(q_lo, q_hi, codes, offset, hv, hi, out_ids, out_vals):  # pragma: no cover - compiled
    n, nbytes = codes.shape
    heap_reset(hv, hi)
    thr = hv[0]
    for t in range(n):
        acc = np.float32(0.0)
        for j in range(nbytes):
            c = codes[t, j]
            acc += q_lo[j] * np.float32(c & 15) + q_hi[j] * np.float32(c >> 4)
        v = acc + offset
        if v > thr:
            heap_offer(hv, hi, v, t)
            thr = hv[0]
    heap_drain(hv, hi, out_ids, out_vals)


def check_affine(lo: np.ndarray, step: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """lo, step as float32 [d], finite (DimensionMismatchError / InvalidInputError otherwise)."""
    lo = np.asarray(lo, np.float32).reshape(-1)
    step = np.asarray(step, np.float32).reshape(-1)
    if lo.shape[0] != d or step.shape[0] != d:
        raise DimensionMismatchError(f"lo and step must have {d} entries, got {lo.shape[0]} and {step.shape[0]}")
    if not (np.isfinite(lo).all() and np.isfinite(step).all()):
        raise InvalidInputError("lo and step must be finite")
    return lo, step


def sq8_search(
    queries: np.ndarray, lo: np.ndarray, step: np.ndarray, codes: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by ``q . (lo + step * c)`` for uint8 codes [n, d] (a memmap is read in place).

    Args:
        queries: float32 [q, d] (or [d]); lo, step: float32 [d]; codes: uint8 [n, d]; 1 <= k <= n.

    Returns:
        ids int64 [q, k], scores float32 [q, k], best first (float32 sums, reassociated per item).
    """
    lo, step = check_affine(lo, step, len(np.asarray(lo).reshape(-1)))
    queries = check_queries(queries, lo.shape[0])
    codes = check_codes(codes, lo.shape[0])
    k = check_k(k, codes.shape[0])
    return sq_run(queries, lo, step, codes, k, 8)


def sq4_search(
    queries: np.ndarray, lo: np.ndarray, step: np.ndarray, codes: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sq8_search` for nibble-packed 4-bit codes uint8 [n, ceil(d/2)] (dimension 2j = low nibble)."""
    lo, step = check_affine(lo, step, len(np.asarray(lo).reshape(-1)))
    d = lo.shape[0]
    queries = check_queries(queries, d)
    codes = check_codes(codes, (d + 1) // 2)
    k = check_k(k, codes.shape[0])
    return sq_run(queries, lo, step, codes, k, 4)


def sq_run(
    queries: np.ndarray,
    lo: np.ndarray,
    step: np.ndarray,
    codes: np.ndarray,
    k: int,
    bits: int,
    heap: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sq8_search` (``bits=8``) / :func:`sq4_search` (``bits=4``) after their checks: queries float32
    [q, d] finite, lo and step from :func:`check_affine`, codes checked, 1 <= k <= n. ``heap`` (values float32
    [k], ids int64 [k]) is reused when given (a scanner keeps one per thread)."""
    d = lo.shape[0]
    ids, vals = empty_results(queries.shape[0], k)
    hv, hi = (np.empty(k, np.float32), np.empty(k, np.int64)) if heap is None else heap
    for i in range(queries.shape[0]):
        qs = queries[i] * step
        offset = np.float32(queries[i] @ lo)
        if bits == 8:
            _sq8_scan(qs, codes, offset, hv, hi, ids[i], vals[i])
            continue
        q_lo = np.ascontiguousarray(qs[0::2])
        q_hi = np.zeros_like(q_lo)
        q_hi[: d // 2] = qs[1::2]
        _sq4_scan(q_lo, q_hi, codes, offset, hv, hi, ids[i], vals[i])
    return ids, vals


_BINSCAN = ("hamming_search", "binary_ip_search", "quantize_query_planes")


def __getattr__(name: str):
    """The binary-code scans live in :mod:`reelpack.kernels.binscan`; they are reachable here too, so that every
    fused scan has one namespace (loaded on first use: binscan itself imports this module's checks)."""
    if name in _BINSCAN:
        from reelpack.kernels import binscan

        return getattr(binscan, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
