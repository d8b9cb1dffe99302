"""Product quantisation (``"pq16"``) and optimised PQ with a learned rotation (``"opq16,pq16"``).

PQ splits the ``d`` dimensions into ``m`` contiguous sub-vectors of
``dsub = d / m`` dimensions (``m`` must divide ``d``; otherwise ``fit`` raises
:class:`~reelpack.errors.DimensionMismatchError`) and quantises each to the
nearest of ``ksub`` centroids learned by k-means (``faiss.Kmeans``, seeded,
25 iterations, at most 256 training points per centroid as in faiss). A code is
``m`` bytes: byte ``j`` is the centroid index of sub-vector ``j``.

``ksub`` is 256, or the number of training rows when fewer than 256 rows are
given (every training row then becomes a centroid). With ``ksub < 256`` code
bytes ``>= ksub`` are invalid and ``decode``/``score`` raise
:class:`~reelpack.errors.InvalidInputError` for them.

Scoring is asymmetric (ADC): a lookup table ``LUT[q, j, k] = q_j . C[j, k]``
(:func:`reelpack.search.pq_lut`), then ``score[q, t] = sum_j LUT[q, j, code[t, j]]``
(:func:`reelpack.search.pq_adc`); for more than 64 queries the same inner
products come from decode + GEMM (:func:`reelpack.search.pq_ip`). Either way
``score == queries @ decode(codes).T`` up to float32 rounding.

OPQ (``"opqM,pqM"``; both ``M`` must be equal) learns an orthogonal rotation
``R`` [d, d] and applies PQ to ``y = x @ R.T``; ``decode`` returns ``y_hat @ R``
and queries are rotated the same way before ADC. Training (Ge et al., "Optimized
Product Quantization", the non-parametric alternation):

1. a seeded sample of at most 65536 training rows;
2. ``R`` starts as a seeded random rotation
   (:func:`reelpack.codecs._common.orthogonal_rows`), as in faiss's ``OPQMatrix``.
   The paper's parametric start (PCA basis with eigenvalue allocation) reached a
   5 % lower reconstruction error on the amazon-book 64-d embeddings but a
   lower relative Recall@50 (0.908 against 0.939 for the random start, 12
   alternations each, and 0.936 for plain PQ16; 8,000 sampled users): balancing variance across subspaces spreads the error into
   the high-variance directions that carry most of the inner product;
3. 50 outer iterations (faiss's default; with 12 the random start stayed 40 %
   above faiss's error on the test data): k-means on the rotated sample (20
   iterations the first time, then 4 warm-started), reconstruction ``Y_hat``, and the
   orthogonal Procrustes update ``R = V U^T`` where ``U S V^T = svd(X^T Y_hat)``;
4. final PQ training (25 warm-started k-means iterations) on the rotated training set.

4-bit PQ (``"pqMx4"``, ``M`` even): ``ksub`` = 16 centroids per sub-quantiser,
codes nibble-packed into ``M/2`` bytes (sub-code ``2p`` in the low nibble of
byte ``p``, ``2p + 1`` in the high nibble). Scoring combines each pair of
16-entry tables into one 256-entry table per byte
(:func:`reelpack.kernels.dense.pair_tables`) and runs the same ADC over the
``M/2`` bytes; :func:`reelpack.kernels.scan.fastscan_search` scans these codes
with in-register uint8 tables. ``"pq32x4"`` is 16 bytes, like ``"pq16"``.

Serialised state: ``centroids`` float32 [m, ksub, dsub]; OPQ adds ``rotation``
float32 [d, d] (checked orthogonal on load). Meta is empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import faiss
import numpy as np

from reelpack.codecs._common import check_state_keys, orthogonal_rows, row_blocks, state_array, sub_seeds
from reelpack.codecs.base import Codec
from reelpack.codecs.registry import register_codec
from reelpack.errors import CodecSpecError, DimensionMismatchError, InvalidInputError, SerializationError
from reelpack.codecs.scanner import Scanner
from reelpack.kernels.checks import check_codes, fast_queries
from reelpack.kernels.dense import (
    pack_int4,
    pair_tables,
    pq_adc,
    pq_decode,
    pq_ip,
    pq_lut,
    refuse_tables,
    unpack_int4,
)
from reelpack.kernels.scan import (
    FastScanBlocks,
    PQ8Blocks,
    check_code_values,
    check_tables,
    fastscan_search,
    fs4_call,
    pq8_work,
    pq_run,
)
from reelpack.kernels.simd import HAS_AVX2, HAS_AVX512BW, HAS_VBMI
from reelpack.util.validate import check_k

__all__ = ["ProductQuantizer", "OPQProductQuantizer"]

MAX_KSUB = 256
MAX_M = 4096
KMEANS_NITER = 25
OPQ_MAX_SAMPLE = 65536
OPQ_OUTER_ITERS = 50
OPQ_NITER_FIRST = 20
OPQ_NITER_INNER = 4


# faiss assigns points by a scalar loop below distance_compute_blas_threshold queries (128000 in
# faiss 1.15), ~15x slower than its BLAS path for k-means on 2k-30k points; k-means lowers it to 20.
_KMEANS_BLAS_THRESHOLD = 20


@contextmanager
def _faiss_kmeans_settings() -> Iterator[None]:
    """Run faiss single-threaded with a low BLAS threshold, restoring both settings on exit.

    Each k-means here is small (at most 65536 x 256 x dsub per iteration): OpenMP start-up
    and spin-waiting made it 3-15x slower with 2 threads on a busy 2-core machine. These
    are process-wide faiss settings (not safe against other threads using faiss meanwhile).
    """
    threads = faiss.omp_get_max_threads()
    threshold = faiss.cvar.distance_compute_blas_threshold
    faiss.omp_set_num_threads(1)
    faiss.cvar.distance_compute_blas_threshold = _KMEANS_BLAS_THRESHOLD
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = threshold
        faiss.omp_set_num_threads(threads)


def _kmeans(x: np.ndarray, k: int, niter: int, seed: int, init: np.ndarray | None = None) -> np.ndarray:
    """faiss k-means of x float32 [n, dsub] into k centroids float32 [k, dsub] (seeded, quiet)."""
    km = faiss.Kmeans(
        x.shape[1], k, niter=niter, seed=seed, verbose=False, min_points_per_centroid=1, max_points_per_centroid=256
    )
    with _faiss_kmeans_settings():
        km.train(np.ascontiguousarray(x, np.float32), init_centroids=init)
    return np.ascontiguousarray(km.centroids, np.float32)


def pq_assign(Y: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid of each sub-vector: Y float32 [n, m*dsub] -> codes uint8 [n, m].

    One ``faiss.knn`` (L2, k=1; BLAS distances ``|y|^2 + |c|^2 - 2 y.c``) per subspace and
    block of rows, single-threaded (see :func:`_faiss_kmeans_settings`): 50x faster here
    than stacked numpy matmuls, whose many small multi-threaded GEMMs stall on a busy machine.
    """
    m, _, dsub = centroids.shape
    n = Y.shape[0]
    out = np.empty((n, m), np.uint8)
    with _faiss_kmeans_settings():
        for sl in row_blocks(n, 64 * dsub):
            for j in range(m):
                sub = np.ascontiguousarray(Y[sl, j * dsub : (j + 1) * dsub], dtype=np.float32)
                out[sl, j] = faiss.knn(sub, centroids[j], 1)[1][:, 0]
    return out


def _train_pq(
    Y: np.ndarray, m: int, ksub: int, seeds: list[int], niter: int, init: np.ndarray | None = None
) -> np.ndarray:
    """k-means per subspace: Y float32 [n, d] -> centroids float32 [m, ksub, dsub]."""
    dsub = Y.shape[1] // m
    cents = np.empty((m, ksub, dsub), np.float32)
    for j in range(m):
        sub = np.ascontiguousarray(Y[:, j * dsub : (j + 1) * dsub])
        cents[j] = _kmeans(sub, ksub, niter, seeds[j], None if init is None else init[j])
    return cents


def _procrustes(X: np.ndarray, Yhat: np.ndarray) -> np.ndarray:
    """Orthogonal R minimising ``|X R^T - Yhat|_F``: ``R = V U^T`` with ``U S V^T = svd(X^T Yhat)``."""
    M = X.astype(np.float64).T @ Yhat.astype(np.float64)
    U, _, Vt = np.linalg.svd(M)
    return np.ascontiguousarray((Vt.T @ U.T).astype(np.float32))


class ProductQuantizer(Codec):
    """PQ with ``m`` sub-quantisers of ``nbits`` bits each (``m`` bytes per vector at 8 bits, ``m/2`` at 4).

    Args:
        m: number of sub-quantisers; must divide the data dimension (checked at fit).
        nbits: 8 (256 centroids, one byte per sub-code) or 4 (16 centroids, nibble-packed; m even).

    Fitted attributes:
        centroids: float32 [m, ksub, d/m].
    """

    family = "pq"

    def __init__(self, m: int, nbits: int = 8) -> None:
        super().__init__()
        m, nbits = int(m), int(nbits)
        if not 1 <= m <= MAX_M:
            raise CodecSpecError(f"pq sub-quantiser count must be in 1..{MAX_M}, got {m}")
        if nbits not in (4, 8):
            raise CodecSpecError(f"pq bits per sub-code must be 4 or 8, got {nbits}")
        if nbits == 4 and m % 2:
            raise CodecSpecError(f"4-bit pq packs two sub-codes per byte: m must be even, got {m}")
        self.m = m
        self.nbits = nbits
        self.centroids: np.ndarray | None = None

    @property
    def spec(self) -> str:
        return f"pq{self.m}" + ("x4" if self.nbits == 4 else "")

    @property
    def ksub(self) -> int:
        """Centroids per sub-quantiser (256 unless trained on fewer rows)."""
        self._require_fitted("ksub")
        return int(self.centroids.shape[1])  # type: ignore[union-attr]

    def _bytes_per_vector(self) -> int:
        return self.m if self.nbits == 8 else self.m // 2

    @property
    def _max_ksub(self) -> int:
        return 1 << self.nbits

    # ---- fit ------------------------------------------------------------------------------------
    def _check_fit_input(self, X: np.ndarray) -> None:
        d = X.shape[1]
        if d % self.m:
            raise DimensionMismatchError(
                f"{self.spec} needs a dimension divisible by {self.m}, got d={d} ({d} % {self.m} = {d % self.m})"
            )

    def _fit(self, X: np.ndarray, seed: int) -> None:
        ksub = min(self._max_ksub, X.shape[0])
        self.centroids = _train_pq(X, self.m, ksub, sub_seeds(seed, self.m), KMEANS_NITER)

    def scanner(self, codes: np.ndarray, *, exact: bool = True, query_bits: int = 8,
                rerank: int | None = None) -> Scanner:  # fmt: skip
        """8-bit codes: :class:`PQScanner`; 4-bit: :class:`FastScanScanner` (``exact`` rescoring)."""
        self._require_fitted("scanner")
        return FastScanScanner(self, codes, exact) if self.nbits == 4 else PQScanner(self, codes)

    # ---- transform hooks (identity for plain PQ) ------------------------------------------------
    def _rotate(self, X: np.ndarray) -> np.ndarray:
        return X

    def _unrotate(self, Y: np.ndarray) -> np.ndarray:
        return Y

    # ---- encode / decode / score ----------------------------------------------------------------
    def _encode(self, X: np.ndarray) -> np.ndarray:
        codes = pq_assign(self._rotate(X), self.centroids)  # type: ignore[arg-type]
        return codes if self.nbits == 8 else pack_int4(codes)

    def _subcodes(self, codes: np.ndarray) -> np.ndarray:
        """One uint8 per sub-code [n, m] (unpacks 4-bit codes)."""
        return codes if self.nbits == 8 else unpack_int4(codes, self.m)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return self._unrotate(pq_decode(self.centroids, self._subcodes(codes)))  # type: ignore[arg-type]

    def _score(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        # (scores that overflow float32 are refused by Codec.score, for every codec)
        if self.nbits == 8:
            return pq_ip(self._rotate(queries), self.centroids, codes)  # type: ignore[arg-type]
        ksub = self.centroids.shape[1]  # type: ignore[union-attr]
        if ksub < 16:
            top = max(int((codes & 15).max(initial=0)), int((codes >> 4).max(initial=0)))
            if top >= ksub:
                raise InvalidInputError(f"codes hold value {top}, but each sub-quantiser has only {ksub} centroids")
        queries = self._rotate(queries)
        if queries.shape[0] > 64:  # decode + GEMM amortises over many queries
            out = np.empty((queries.shape[0], codes.shape[0]), np.float32)
            for sl in row_blocks(codes.shape[0], queries.shape[1]):
                out[:, sl] = queries @ pq_decode(self.centroids, self._subcodes(codes[sl])).T  # type: ignore[arg-type]
            return out
        luts = np.zeros((queries.shape[0], self.m, 16), np.float32)
        luts[:, :, :ksub] = pq_lut(queries, self.centroids)  # type: ignore[arg-type]
        return pq_adc(pair_tables(luts), codes)

    # ---- state ----------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {"centroids": self.centroids}  # type: ignore[dict-item]

    def _load_centroids(self, dim: int, arrays: dict[str, np.ndarray]) -> None:
        if dim % self.m:
            raise SerializationError(f"{self.spec} state has dim {dim}, not divisible by {self.m}")
        shape = arrays["centroids"].shape
        ksub = shape[1] if len(shape) == 3 else -1
        if not 1 <= ksub <= self._max_ksub:
            raise SerializationError(
                f"{self.spec} state centroids have shape {shape}, expected [m, 1..{self._max_ksub}, d/m]"
            )
        self.centroids = state_array(self.spec, arrays, "centroids", (self.m, ksub, dim // self.m), "<f4")

    def _load_state(self, dim: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        check_state_keys(self.spec, meta, arrays, ("centroids",))
        self._load_centroids(dim, arrays)


class OPQProductQuantizer(ProductQuantizer):
    """PQ on data rotated by a learned orthogonal matrix (``"opqM,pqM"``; ``m`` bytes per vector).

    Fitted attributes:
        rotation: float32 [d, d], orthogonal; codes quantise ``x @ rotation.T``.
        centroids: float32 [m, ksub, d/m] in the rotated space.
    """

    family = "opq"

    def __init__(self, m: int, outer_iters: int = OPQ_OUTER_ITERS) -> None:
        super().__init__(m)
        self.outer_iters = int(outer_iters)
        self.rotation: np.ndarray | None = None

    @property
    def spec(self) -> str:
        return f"opq{self.m},pq{self.m}"

    def _fit(self, X: np.ndarray, seed: int) -> None:
        n, d = X.shape
        m = self.m
        ksub = min(MAX_KSUB, n)
        rng = np.random.default_rng(sub_seeds(seed, 1)[0])
        sample = X if n <= OPQ_MAX_SAMPLE else X[np.sort(rng.choice(n, OPQ_MAX_SAMPLE, replace=False))]
        R = orthogonal_rows(d, d, sub_seeds(seed, 2)[1])
        cents = None
        for it in range(self.outer_iters):
            Y = sample @ R.T
            seeds = sub_seeds(seed + 7919 * (it + 1), m)
            niter = OPQ_NITER_FIRST if cents is None else OPQ_NITER_INNER
            cents = _train_pq(Y, m, ksub, seeds, niter, init=cents)
            Yhat = pq_decode(cents, pq_assign(Y, cents))
            R = _procrustes(sample, Yhat)
        self.rotation = R
        self.centroids = _train_pq(X @ R.T, m, ksub, sub_seeds(seed, m), KMEANS_NITER, init=cents)

    def _rotate(self, X: np.ndarray) -> np.ndarray:
        out = np.empty_like(X)
        for sl in row_blocks(X.shape[0], X.shape[1]):
            out[sl] = X[sl] @ self.rotation.T  # type: ignore[union-attr]
        return out

    def _unrotate(self, Y: np.ndarray) -> np.ndarray:
        return Y @ self.rotation  # type: ignore[operator]

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {"centroids": self.centroids, "rotation": self.rotation}  # type: ignore[dict-item]

    def _load_state(self, dim: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        check_state_keys(self.spec, meta, arrays, ("centroids", "rotation"))
        self._load_centroids(dim, arrays)
        R = state_array(self.spec, arrays, "rotation", (dim, dim), "<f4")
        err = np.abs(R.astype(np.float64) @ R.T.astype(np.float64) - np.eye(dim)).max()
        if err > 1e-3:
            raise SerializationError(f"{self.spec} state rotation is not orthogonal (|R R^T - I| = {err:.3g})")
        self.rotation = R


@register_codec("opq", r"opq(?P<o>\d{1,6}),pq(?P<m>\d{1,6})", "opq16,pq16")
def _build_opq(match: re.Match[str]) -> Codec:
    o, m = int(match.group("o")), int(match.group("m"))
    if o != m:
        raise CodecSpecError(f"in 'opqM,pqM' the rotation's M must equal the PQ's M, got opq{o},pq{m}")
    return OPQProductQuantizer(m)


@register_codec("pq", r"pq(?P<m>\d{1,6})(?P<x4>x4)?", "pq16")
def _build_pq(match: re.Match[str]) -> Codec:
    return ProductQuantizer(int(match.group("m")), nbits=4 if match.group("x4") else 8)


# ================================================================================================
# scanners (how a PQ catalog is searched: codec.scanner(codes))
# ================================================================================================
def rotated_queries(codec: Codec, queries: np.ndarray) -> np.ndarray:
    """Queries float32 C-contiguous [q, d], rotated by the codec (OPQ) for a PQ scan; shape and dtype checked
    cheaply; NaN/Inf and magnitudes beyond 1e30 by the kernels, which then raise the typed errors of
    :func:`check_queries`."""
    rotated = getattr(codec, "rotation", None) is not None
    # values are checked here before a rotation spreads one over the coordinates; unrotated, by the kernel
    q = fast_queries(queries, int(codec.dim), check_values=rotated)
    return np.ascontiguousarray(codec._rotate(q), np.float32) if rotated else q


class PQScanner(Scanner):
    """8-bit PQ (and OPQ, anisotropic PQ): exact ADC, AVX-512 VBMI blocks where the CPU has them."""

    def __init__(self, codec, codes: np.ndarray) -> None:
        self.codec, self.centroids = codec, check_tables(codec.centroids, 256)
        codes = check_codes(codes, codec.bytes_per_vector)
        check_code_values(codes, self.centroids.shape[1], "codes")
        self.n_items = codes.shape[0]
        if HAS_VBMI:
            self.blocks: PQ8Blocks | np.ndarray = PQ8Blocks.from_codes(codes)
            self.prepared_bytes = int(self.blocks.data.nbytes)
            self.kernel = "pq8-vbmi"
        else:
            self.blocks, self.kernel = codes, "pq8-scalar"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = rotated_queries(self.codec, queries)
        k = check_k(k, self.n_items)
        m = self.centroids.shape[0]
        if isinstance(self.blocks, PQ8Blocks):
            work = self.work(k, lambda kk: pq8_work(m, self.n_items, kk))
        else:  # the scalar scan needs only the lookup table
            work = self.work(k, lambda kk: (np.empty((m, 256), np.float32),))
        return pq_run(q, self.centroids, self.blocks, self.n_items, k, HAS_VBMI, work)


class FastScanScanner(Scanner):
    """4-bit PQ fast-scan (AVX2 / AVX-512BW / portable), exact rescoring unless ``exact=False``."""

    def __init__(self, codec, codes: np.ndarray, exact: bool = True) -> None:
        self.codec, self.exact = codec, exact
        self.centroids = check_tables(codec.centroids, 16)
        self.blocks = FastScanBlocks.from_codes(codes, codec.m)
        if self.centroids.shape[1] < 16:
            fastscan_search(np.zeros((1, int(codec.dim)), np.float32), self.centroids, self.blocks, 1)  # code range check
        self.n_items = self.blocks.n
        self.prepared_bytes = int(self.blocks.data.nbytes)
        simd = {64: HAS_AVX512BW, 32: HAS_AVX2}[self.blocks.width]
        self.kernel = (f"fs4-{'avx512' if self.blocks.width == 64 else 'avx2'}" if simd else "fs4-portable") + (
            "" if exact else "-approx"
        )

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # the hot path of a phone ranking one user: checks and call kept to a few microseconds
        q = rotated_queries(self.codec, queries)
        fn, head, tail = self.work(check_k(k, self.n_items), self._make_call)
        ids, vals, ok = fn(*head, q, *tail)
        if not ok:
            refuse_tables(q)  # NonFiniteError naming the rows, the 1e30 limit, or float32 overflow of the tables
        return ids, vals  # the kernel bounds every table entry by 3e38 / m: the scores are finite

    def _make_call(self, k: int) -> tuple:
        """The numba batch kernel and its arguments before and after the queries (per thread and K)."""
        return fs4_call(self.centroids, self.blocks, k, self.exact, True)
