"""Scoring kernels for compressed codes, each with a plain NumPy reference (oracle).

Fast kernels and their ``*_reference`` twins compute the same values (up to
float32 rounding) and are tested against each other. Fast kernels never loop
in Python over items: they call numba-compiled loops or BLAS on row blocks
(the Python loops here run over blocks of ~10^4-10^5 rows to bound memory).

Kernels (each ``name`` has an oracle ``name_reference``, except the router :func:`pq_ip`):

* :func:`pq_lut`: ``LUT[i, j, k] = queries[i, subspace j] . centroids[j, k]``.
* :func:`pq_adc`: ``ADC[i, t] = sum_j LUT[i, j, codes[t, j]]`` (numba).
* :func:`pq_decode`: ``x_hat[t] = concat_j centroids[j, codes[t, j]]``.
* :func:`pq_ip`: LUT + ADC for few queries, decode + GEMM for many (same values).
* :func:`hamming`: ``popcount(query_code XOR code)`` (numba, hardware popcount).
* :func:`sq_dot`: ``queries_scaled @ codes.T`` for uint8 codes.
* :func:`sq4_dot`: the same on nibble-packed int4 codes.
* :func:`unpack_int4` / :func:`pack_int4`: nibble-packed <-> one uint8 per dimension.
* :func:`signs_dot`: ``proj @ (2*bits - 1).T`` for ``np.packbits`` sign codes.

Nibble order (int4): dimension ``2j`` is the low nibble (bits 0-3) of byte ``j``
and dimension ``2j + 1`` the high nibble (bits 4-7); for odd ``d`` the high
nibble of the last byte is padding, written as 0 and ignored on read.

Bit order (sign bits, :func:`signs_dot` / :func:`hamming`): ``np.packbits``
default (big-endian within a byte): bit ``i`` is bit ``7 - i % 8`` of byte
``i // 8``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from reelpack.errors import DimensionMismatchError, DTypeError, InvalidInputError
from reelpack.kernels.checks import check_queries

__all__ = [
    "check_score_bound",
    "pq_lut",
    "pq_adc",
    "pq_decode",
    "pq_ip",
    "pair_tables",
    "finite_scores",
    "refuse_tables",
    "TABLE_OVERFLOW",
    "GEMM_MIN_QUERIES",
    "hamming",
    "sq_dot",
    "sq_decode",
    "sq4_dot",
    "unpack_int4",
    "pack_int4",
    "signs_dot",
]

#: :func:`pq_ip` switches from LUT+ADC to decode+GEMM above this many queries.
GEMM_MIN_QUERIES = 64

# Row-block sizes: bound temporaries to a few tens of MiB whatever n is.
_BLOCK_ELEMS = 1 << 22


def _block_rows(row_elems: int) -> int:
    return max(1, _BLOCK_ELEMS // max(1, int(row_elems)))


# ---- input checks (cheap: dtype/shape only) ---------------------------------------------------------
def _f32_matrix(x: object, name: str, ndim: int = 2) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise DTypeError(f"{name} must be a real float array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise DimensionMismatchError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _u8_matrix(x: object, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != np.uint8:
        raise DTypeError(f"{name} must be uint8, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DimensionMismatchError(f"{name} must be 2-D [n, bytes], got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _check_code_range(codes: np.ndarray, ksub: int) -> None:
    """Codes index a table of ``ksub`` entries: refuse values beyond it (memory safety)."""
    if ksub < 256 and codes.size and int(codes.max()) >= ksub:
        raise InvalidInputError(
            f"codes hold value {int(codes.max())}, but each sub-quantiser has only {ksub} centroids"
        )


# ---- product quantisation ---------------------------------------------------------------------------
def pq_lut(queries: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Inner-product lookup tables for asymmetric distance computation.

    Args:
        queries: float32 [q, d].
        centroids: float32 [m, ksub, dsub] with ``m * dsub == d``.

    Returns:
        float32 [q, m, ksub]: ``LUT[i, j, k] = queries[i, j*dsub:(j+1)*dsub] . centroids[j, k]``.
    """
    queries = _f32_matrix(queries, "queries")
    centroids = _f32_matrix(centroids, "centroids", ndim=3)
    m, ksub, dsub = centroids.shape
    if queries.shape[1] != m * dsub:
        raise DimensionMismatchError(
            f"queries have dimension {queries.shape[1]}, centroids cover {m}x{dsub}={m * dsub}"
        )
    qs = queries.reshape(queries.shape[0], m, dsub).transpose(1, 0, 2)  # [m, q, dsub]
    lut = np.matmul(qs, centroids.transpose(0, 2, 1))  # [m, q, ksub], one GEMM per subspace
    return np.ascontiguousarray(lut.transpose(1, 0, 2))


@numba.njit(cache=True, nogil=True)
def _pq_adc_kernel(luts, codes, out):  # pragma: no cover - compiled
    # serial on purpose: no second OpenMP runtime next to faiss's; callers may thread over blocks (nogil)
    nq, m, _ = luts.shape
    n = codes.shape[0]
    for i in range(nq):
        lut = luts[i]
        for t in range(n):
            acc = np.float32(0.0)
            for j in range(m):
                acc += lut[j, codes[t, j]]
            out[i, t] = acc


def pq_adc(luts: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Asymmetric scores by table lookup: ``out[i, t] = sum_j luts[i, j, codes[t, j]]``.

    Args:
        luts: float32 [q, m, ksub] from :func:`pq_lut`.
        codes: uint8 [n, m]; every value must be < ksub.

    Returns:
        float32 [q, n] (numba loop over items, m lookups each; float32 accumulation).
    """
    luts = _f32_matrix(luts, "luts", ndim=3)
    codes = _u8_matrix(codes, "codes")
    if codes.shape[1] != luts.shape[1]:
        raise DimensionMismatchError(f"codes have {codes.shape[1]} sub-codes, luts have {luts.shape[1]} sub-quantisers")
    _check_code_range(codes, luts.shape[2])
    out = np.empty((luts.shape[0], codes.shape[0]), np.float32)
    if out.size:
        _pq_adc_kernel(luts, codes, out)
    return out


@numba.njit(cache=True, nogil=True)
def _pq_decode_kernel(centroids, codes, out):  # pragma: no cover - compiled
    n, m = codes.shape
    dsub = centroids.shape[2]
    for t in range(n):
        for j in range(m):
            c = centroids[j, codes[t, j]]
            base = j * dsub
            for s in range(dsub):
                out[t, base + s] = c[s]


def pq_decode(centroids: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Reconstruct PQ vectors: float32 [n, m*dsub] from centroids [m, ksub, dsub] and codes uint8 [n, m].

    A numba copy loop (one centroid row per sub-code); codes may be a read-only memmap.
    """
    centroids = _f32_matrix(centroids, "centroids", ndim=3)
    codes = _u8_matrix(codes, "codes")
    m, ksub, dsub = centroids.shape
    if codes.shape[1] != m:
        raise DimensionMismatchError(f"codes have {codes.shape[1]} sub-codes, centroids have {m} sub-quantisers")
    _check_code_range(codes, ksub)
    out = np.empty((codes.shape[0], m * dsub), np.float32)
    if out.size:
        _pq_decode_kernel(centroids, codes, out)
    return out


def pq_ip(
    queries: np.ndarray, centroids: np.ndarray, codes: np.ndarray, gemm_min_queries: int = GEMM_MIN_QUERIES
) -> np.ndarray:
    """Inner products of queries with PQ-coded vectors, choosing the faster exact route.

    For inner product, ADC is mathematically ``queries @ pq_decode(centroids, codes).T``.
    With at most ``gemm_min_queries`` queries this runs :func:`pq_lut` + :func:`pq_adc`;
    with more, it decodes blocks of codes and multiplies (one GEMM per block),
    which amortises the decode over many queries. The two agree to float32 rounding.

    Args:
        queries: float32 [q, d]; centroids float32 [m, ksub, dsub]; codes uint8 [n, m].

    Returns:
        float32 [q, n].
    """
    queries = _f32_matrix(queries, "queries")
    codes = _u8_matrix(codes, "codes")
    if queries.shape[0] <= gemm_min_queries:
        return pq_adc(pq_lut(queries, centroids), codes)
    centroids = _f32_matrix(centroids, "centroids", ndim=3)
    d = centroids.shape[0] * centroids.shape[2]
    if queries.shape[1] != d:
        raise DimensionMismatchError(f"queries have dimension {queries.shape[1]}, centroids cover {d}")
    out = np.empty((queries.shape[0], codes.shape[0]), np.float32)
    step = _block_rows(d)
    for s in range(0, codes.shape[0], step):
        out[:, s : s + step] = queries @ pq_decode(centroids, codes[s : s + step]).T
    return out


#: The message of the refusal when finite queries give lookup tables or scores beyond float32.
TABLE_OVERFLOW = (
    "the scores would exceed float32's range (about 3.4e38): query magnitude times item magnitude is too "
    "large for this codec's float32 tables and sums; scale the queries (or the item vectors) down"
)


def finite_scores(scores: np.ndarray) -> np.ndarray:
    """``scores`` unchanged if all finite, else :class:`~reelpack.errors.InvalidInputError` (:data:`TABLE_OVERFLOW`).

    For scores of queries already checked finite: an inf or NaN then means float32 overflow of the lookup
    tables or of the sums (query magnitude times codebook magnitude beyond ~3.4e38), never a valid ranking.
    """
    if not np.isfinite(scores).all():
        raise InvalidInputError(TABLE_OVERFLOW)
    return scores


def check_score_bound(queries: np.ndarray, column_max: np.ndarray) -> None:
    """Refuse queries whose scores could leave float32's range before a scan sums them.

    Args:
        queries: float32 [q, d], finite. column_max: float64 [d], the largest ``|x_j|`` any item can decode to.

    Raises:
        InvalidInputError: :data:`TABLE_OVERFLOW`, when ``max_i sum_j |q_ij| column_max_j`` exceeds 1e38 (a sum
        past ~3.4e38 turns into inf, or NaN when infinities of both signs meet, and would silently reorder).
    """
    if float((np.abs(queries).astype(np.float64) @ column_max).max(initial=0.0)) > 1e38:
        raise InvalidInputError(TABLE_OVERFLOW)


def refuse_tables(queries: np.ndarray) -> None:
    """Raise after a scan kernel reported unusable lookup tables: :class:`~reelpack.errors.NonFiniteError` naming
    the rows if a query holds NaN/Inf, else :class:`~reelpack.errors.InvalidInputError` (:data:`TABLE_OVERFLOW`)."""
    check_queries(queries, queries.shape[1])
    raise InvalidInputError(TABLE_OVERFLOW)


def pair_tables(luts: np.ndarray) -> np.ndarray:
    """Tables per byte of nibble-packed 4-bit PQ codes: [q, m, 16] -> [q, m/2, 256] (same dtype).

    ``out[i, p, b] = luts[i, 2p, b & 15] + luts[i, 2p + 1, b >> 4]``: byte ``p`` of a code holds
    sub-code ``2p`` in its low nibble and ``2p + 1`` in its high nibble, so ADC over the
    ``m/2`` bytes with these tables equals ADC over the ``m`` nibbles.
    """
    luts = np.asarray(luts)
    if luts.ndim != 3 or luts.shape[1] % 2 or luts.shape[2] != 16:
        raise DimensionMismatchError(f"4-bit tables must be [q, even m, 16], got shape {luts.shape}")
    b = np.arange(256)
    return np.ascontiguousarray(luts[:, 0::2, :][:, :, b & 15] + luts[:, 1::2, :][:, :, b >> 4])


# ---- Hamming distance -------------------------------------------------------------------------------
@intrinsic
def popcount(typingctx, x):  # type: ignore[no-untyped-def]
    """LLVM ``ctpop`` on an unsigned integer (one POPCNT instruction on x86-64)."""
    if not isinstance(x, types.Integer) or x.signed:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.ctpop(args[0])

    return x(x), codegen


@numba.njit(cache=True, nogil=True)
def _hamming_kernel(qv: np.ndarray, codes_t: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - numba
    """out[i, t] = sum_w popcount(qv[i, w] ^ codes_t[w, t]); codes word-major so the t loop vectorises."""
    nq = qv.shape[0]
    width, n = codes_t.shape
    for i in range(nq):
        row = out[i]
        word = qv[i, 0]
        for t in range(n):
            row[t] = numba.int32(popcount(word ^ codes_t[0, t]))
        for w in range(1, width):
            word = qv[i, w]
            for t in range(n):
                row[t] += numba.int32(popcount(word ^ codes_t[w, t]))


def hamming(query_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Hamming distances between bit codes: popcount(query XOR code).

    A numba loop with one hardware popcount per 64-bit word (on uint64 views
    when the width is a multiple of 8 bytes, else per byte). Items go in blocks
    of 8192, transposed word-major so that the inner loop over items is
    contiguous and the block stays in cache while every query passes over it.

    Args:
        query_codes: uint8 [q, B]; codes: uint8 [n, B].

    Returns:
        int32 [q, n].
    """
    query_codes = _u8_matrix(query_codes, "query_codes")
    codes = _u8_matrix(codes, "codes")
    if query_codes.shape[1] != codes.shape[1]:
        raise DimensionMismatchError(f"query codes have {query_codes.shape[1]} bytes, codes have {codes.shape[1]}")
    nq, nbytes = query_codes.shape
    n = codes.shape[0]
    out = np.empty((nq, n), np.int32)
    if out.size == 0:
        return out
    if nbytes % 8 == 0:
        qv = np.ascontiguousarray(query_codes).view(np.uint64)
        cv = np.ascontiguousarray(codes).view(np.uint64)
    else:
        qv, cv = np.ascontiguousarray(query_codes), np.ascontiguousarray(codes)
    cstep = 8192
    for cs in range(0, n, cstep):
        codes_t = np.ascontiguousarray(cv[cs : cs + cstep].T)
        _hamming_kernel(qv, codes_t, out[:, cs : cs + cstep])
    return out


# ---- scalar-quantised dot products ------------------------------------------------------------------
def sq_dot(queries_scaled: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Dot products of float queries with uint8 codes: ``queries_scaled @ codes.T``.

    Codes are widened to float32 (exact for 0..255) one block at a time and
    multiplied with BLAS.

    Args:
        queries_scaled: float32 [q, d] (for SQ: ``queries * step``).
        codes: uint8 [n, d].

    Returns:
        float32 [q, n].
    """
    queries_scaled = _f32_matrix(queries_scaled, "queries_scaled")
    codes = _u8_matrix(codes, "codes")
    if codes.shape[1] != queries_scaled.shape[1]:
        raise DimensionMismatchError(f"codes have {codes.shape[1]} dimensions, queries {queries_scaled.shape[1]}")
    out = np.empty((queries_scaled.shape[0], codes.shape[0]), np.float32)
    step = _block_rows(codes.shape[1])
    for s in range(0, codes.shape[0], step):
        out[:, s : s + step] = queries_scaled @ codes[s : s + step].astype(np.float32).T
    return out


@numba.njit(cache=True, nogil=True)
def _sq_decode_kernel(lo, step, codes, d, bits, out):  # pragma: no cover - compiled
    n = codes.shape[0]
    for t in range(n):
        if bits == 8:
            for j in range(d):
                out[t, j] = lo[j] + step[j] * np.float32(codes[t, j])
        else:
            for j in range(d):
                c = codes[t, j >> 1]
                v = (c >> 4) if j & 1 else (c & 15)
                out[t, j] = lo[j] + step[j] * np.float32(v)


def sq_decode(lo: np.ndarray, step: np.ndarray, codes: np.ndarray, bits: int = 8) -> np.ndarray:
    """Affine decode ``lo + step * code`` of uint8 codes [n, d] (bits 8) or nibble-packed [n, ceil(d/2)] (bits 4).

    Args:
        lo, step: float32 [d]; codes: uint8 (a memmap is fine); bits: 8 or 4.

    Returns:
        float32 [n, d].
    """
    lo = np.ascontiguousarray(lo, np.float32).reshape(-1)
    step = np.ascontiguousarray(step, np.float32).reshape(-1)
    codes = _u8_matrix(codes, "codes")
    d = lo.shape[0]
    if step.shape[0] != d:
        raise DimensionMismatchError(f"lo has {d} entries, step {step.shape[0]}")
    if bits not in (4, 8):
        raise InvalidInputError(f"bits must be 4 or 8, got {bits}")
    width = d if bits == 8 else (d + 1) // 2
    if codes.shape[1] != width:
        raise DimensionMismatchError(f"{bits}-bit codes for d={d} need {width} bytes per vector, got {codes.shape[1]}")
    out = np.empty((codes.shape[0], d), np.float32)
    if out.size:
        _sq_decode_kernel(lo, step, codes, d, bits, out)
    return out


def unpack_int4(codes: np.ndarray, d: int) -> np.ndarray:
    """Split nibble-packed codes uint8 [n, ceil(d/2)] into uint8 [n, d] values 0..15 (module nibble order)."""
    codes = _u8_matrix(codes, "codes")
    d = int(d)
    if d <= 0 or codes.shape[1] != (d + 1) // 2:
        raise DimensionMismatchError(f"int4 codes for d={d} need {(d + 1) // 2} bytes per vector, got {codes.shape[1]}")
    out = np.empty((codes.shape[0], 2 * codes.shape[1]), np.uint8)
    np.bitwise_and(codes, 0x0F, out=out[:, 0::2])
    np.right_shift(codes, 4, out=out[:, 1::2])
    return np.ascontiguousarray(out[:, :d]) if d % 2 else out


def pack_int4(values: np.ndarray) -> np.ndarray:
    """Pack uint8 [n, d] values 0..15 into uint8 [n, ceil(d/2)] (module nibble order; pad nibble 0)."""
    values = _u8_matrix(values, "values")
    n, d = values.shape
    if d % 2:
        values = np.concatenate([values, np.zeros((n, 1), np.uint8)], axis=1)
    return np.ascontiguousarray(values[:, 0::2] | (values[:, 1::2] << 4))


def sq4_dot(queries_scaled: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """:func:`sq_dot` on nibble-packed int4 codes without interleaving them.

    ``score = qs[:, 0::2] @ low_nibbles.T + qs[:, 1::2] @ high_nibbles.T``.

    Args:
        queries_scaled: float32 [q, d]; codes: uint8 [n, ceil(d/2)].

    Returns:
        float32 [q, n].
    """
    queries_scaled = _f32_matrix(queries_scaled, "queries_scaled")
    codes = _u8_matrix(codes, "codes")
    d = queries_scaled.shape[1]
    if codes.shape[1] != (d + 1) // 2:
        raise DimensionMismatchError(f"int4 codes for d={d} need {(d + 1) // 2} bytes per vector, got {codes.shape[1]}")
    q_lo = np.ascontiguousarray(queries_scaled[:, 0::2])
    q_hi = np.zeros_like(q_lo)
    q_hi[:, : d // 2] = queries_scaled[:, 1::2]  # odd d: the pad nibble meets a zero weight
    out = np.empty((queries_scaled.shape[0], codes.shape[0]), np.float32)
    step = _block_rows(codes.shape[1] * 2)
    for s in range(0, codes.shape[0], step):
        block = codes[s : s + step]
        lo = np.bitwise_and(block, 0x0F).astype(np.float32)
        hi = np.right_shift(block, 4).astype(np.float32)
        out[:, s : s + step] = q_lo @ lo.T + q_hi @ hi.T
    return out


# ---- sign-bit dot products --------------------------------------------------------------------------
def signs_dot(proj: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``proj @ s.T`` with ``s = 2*bits - 1`` in {-1, +1}, bits packed by ``np.packbits`` (big bit order).

    Computed as ``2 * proj @ bits.T - proj.sum(1)``, unpacking one block of codes at a time.

    Args:
        proj: float32 [q, b]; codes: uint8 [n, b // 8].

    Returns:
        float32 [q, n].
    """
    proj = _f32_matrix(proj, "proj")
    codes = _u8_matrix(codes, "codes")
    b = proj.shape[1]
    if codes.shape[1] * 8 != b:
        raise DimensionMismatchError(f"codes hold {codes.shape[1] * 8} bits, projections have {b}")
    out = np.empty((proj.shape[0], codes.shape[0]), np.float32)
    twice = 2.0 * proj
    total = proj.sum(axis=1, keepdims=True)
    step = _block_rows(b)
    for s in range(0, codes.shape[0], step):
        bits = np.unpackbits(codes[s : s + step], axis=1).astype(np.float32)
        out[:, s : s + step] = twice @ bits.T - total
    return out


