"""Residual quantisation in progressive stages (``"rq8+8"``, ``"rq4+4+8-b"``, ``"rq16"``).

An additive residual quantiser (RQ) of ``M`` codebooks, each of 256 codewords over
the full dimension ``d``, approximates ``x`` by ``sum_m C[m, code[m]]``. Codebook
``m`` is trained (by faiss's ``ResidualQuantizer``, beam search) on what the first
``m`` codebooks leave over, so any prefix of the code is itself a coarser
reconstruction: ``prefix_decode_j(x) = sum_{m < j} C[m, code[m]]``. That is what maps
an RQ code onto a pack's progressive layers.

Spec grammar (lower-case, no spaces)::

    rq S1 [+ S2 [+ S3 ...]] [-r] [-pD] [-n] [-b]

Options (each chosen on validation by ``reelpack tune``, never on the test split):

* ``-r`` refined training: per stage, greedy training as below, then up to :data:`REFINE_ROUNDS` rounds
  of beam re-encoding (width :data:`REFINE_BEAM_SIZE`) and a joint least-squares update of the stage's
  codebooks for the fixed codes (LSQ++-style; a round is kept only if it lowers the training error). Same
  state, codes and scoring as without ``-r`` (the native runtime reads it), 10x the training time.
* ``-pD`` PCA projection: the stages quantise the top ``D`` principal coordinates ``(x - mean) @ P``;
  reconstructions are ``mean + y_hat @ P.T`` and a query is projected once, ``<q, x_hat> = <q, mean> +
  <q @ P, y_hat>``. State adds ``projection`` float32 [d, D] (orthonormal columns) and ``mean`` float32 [d].
  Smaller codebooks and faster training and encoding at high ``d`` (512-d video embeddings).
* ``-n`` unit-norm items (two-tower outputs are L2-normalised): the reconstruction is rescaled to unit
  length, ``x_hat / ||x_hat||``, so ``score = cos(q, x_hat) * ||q||``; no extra byte (the norm is known to
  be 1), fitting and encoding refuse rows whose norm is not 1 within :data:`UNIT_NORM_TOLERANCE`.
* ``-pD`` and ``-n`` cannot carry ``-b`` (the bounds are on the unprojected, unnormalised residual). The
  native runtime reads ``-r``, ``-pD`` and ``-n`` (docs/FORMAT.md, "Residual codecs").

``S_k >= 1`` codebooks in stage ``k``; ``M = S1 + S2 + ...`` codebooks in all,
``1 <= M <= 64``. ``"rq8+8"`` is 16 codebooks (16 bytes) in two stages of 8
bytes; ``"rq16"`` is the same quantiser as one stage. Bad values raise
:class:`~reelpack.errors.CodecSpecError` with the valid range.

Code layout (uint8 [n, bytes_per_vector])::

    stage 0: S1 bytes (indexes in codebooks 0..S1-1) [+ 1 bound byte with "-b"]
    stage 1: S2 bytes (codebooks S1..S1+S2-1)        [+ 1 bound byte with "-b"]
    ...

Byte ``j`` of a stage's codebook bytes is the codeword index in that stage's
``j``-th codebook. faiss packs 8-bit RQ codes one byte per codebook in codebook
order, so its codes are our codebook bytes unchanged (checked on every encode).

Bounds (``"-b"``): after stage ``k``'s codebook bytes comes one byte ``b`` that
encodes an upper bound of the item's residual norm after that stage,
``rho_k = ||x - prefix_decode_{through stage k}(x)||``, on a logarithmic grid::

    bound_k(b) = norm_scale[k] * 2 ** ((b - 191) / 24)   for b in 0..254
    bound_k(255) = +inf                                  (residual beyond the grid)

(24 steps per octave: the bound exceeds the norm by at most 2.9 %, plus the
1e-3 relative margin below; ``bound_k(254) = 6.2 * norm_scale[k]``, ``bound_k(0) =
norm_scale[k] / 249``.) ``norm_scale[k]`` is the largest residual norm after stage
``k`` over the calibration rows of the training sample. The encoder inflates the
float32-computed norm by ``1 + 1e-3`` (room for float32 rounding of the norm and
of the scores), rounds the grid position up, and checks the result in float64,
so ``bound_k(b) >= rho_k`` for every encoded item, whatever its distribution.

:meth:`ResidualCodec.score_bounds` with ``stages = k`` returns ``estimate =
score_prefix(q, codes, k) = <q, prefix_decode_k(x)>`` (exactly what stage ``k``
codes give) and, since ``<q, x> - estimate = <q, r_k>``::

    half_width = ||q|| * bound_k * min(1, z(confidence) * calib[k] / sqrt(d))

where ``z(c)`` is the two-sided standard normal quantile (``P(|N(0,1)| <= z) = c``).

* ``||q|| * bound_k`` is the Cauchy-Schwarz bound: certain (up to float32 rounding
  below the 1e-3 margin). The half width equals it whenever
  ``z(confidence) * calib[k] >= sqrt(d)``, so ``confidence -> 1`` gives the
  certain bound (at d = 16 already from z >= 4 / calib, i.e. about 0.99994 for
  calib = 1; at d = 64 from z >= 8 / calib, about 1 - 1e-15).
* The calibrated term models ``<q, r> / (||q|| ||r|| / sqrt(d))`` as a standard
  normal scaled by ``calib[k]``: true for a random direction in high dimension
  with ``calib = 1``. ``calib[k]`` is measured at fit time on the training data:
  training vectors act as queries (1024 rows) against the stage-``k`` residuals of
  2048 other training rows; with ``t = |<q, r>| sqrt(d) / (||q|| ||r||)`` over those
  pairs, ``calib[k] = max_p quantile_p(t) / z(p)`` for ``p`` in 0.5, 0.9, 0.99, 0.999
  (the most conservative of the four, so that the normal-shaped rule covers at
  least the empirical quantile at each of these levels).

What the confidence means: for a (query, item) pair drawn like the calibration
pairs (a query distributed like the training vectors, an item like the training
vectors), ``|<q, x> - estimate| <= half_width`` holds with probability at least
about ``confidence`` (exactly so at the four calibrated levels, up to sampling
error of the quantiles, and by the normal tail beyond 0.999). It is a statement
about the calibration distribution, not about every pair: queries from another
distribution (user towers against item vectors) may be covered less often, and
only the Cauchy-Schwarz limit holds for every pair. Without ``"-b"`` the codec
has no bounds (``has_bounds`` is False).

Scoring is asymmetric: ``LUT[i, m, k] = queries[i] . C[m, k]`` and ``score[i, t] =
sum_m LUT[i, m, code[t, m]]`` (:func:`reelpack.search.pq_adc`) for up to
:data:`~reelpack.search.GEMM_MIN_QUERIES` queries, decode + GEMM for more; both
equal ``queries @ decode(codes).T`` up to float32 rounding. Decoding and scoring
need only numpy/numba and the stored codebooks; encoding rebuilds faiss's
quantiser from the stored codebooks (beam search of width ``max_beam_size``).

Training: faiss ``ResidualQuantizer(d, M, 8)`` on a seeded sample of at most
:data:`MAX_TRAIN_SAMPLE` = 262144 rows, so a catalog of up to that size is fitted whole
(the codec encodes the very items it is fitted on). On the amazon-book split's 79,227
items, fitting ``rq8-r-n@pop1`` on all of them instead of 65,536 raised validation
relative Recall@50 in 5 of 6 paired seeds at 64-d and 128-d (BENCHMARKS.md 1.6, stop 27).
At least 256 rows are needed, one per codeword: plain k-means per codebook
(``train_type = 0``, 10 iterations, seeded through ``cp.seed``) on greedy residuals
(training beam :data:`TRAIN_BEAM_SIZE` = 1), then encoding with beam search of width
``max_beam_size`` (:data:`MAX_BEAM_SIZE` = 16, stored in the state). Training with a
wide beam was both far slower (faiss then clusters the residuals of every beam
entry) and worse: on 2000 clustered 32-d rows with 8 codebooks the training error was
0.36 (beam 1) against 1.03 (beam 16). faiss's default progressive-dimension k-means
(``train_type = 1``) lowered that 0.36 to 0.29 but trained 10x slower, too slow for
the 2-core budget here. On the amazon-book 64-d items with 16 codebooks,
greedy training took 51 s on a loaded 2-core machine; encoding with beam 16
instead of 1 raised relative Recall@50 from 0.942 to 0.962 (3000 users) at 20x the
encode time, which is why the encoder, not the trainer, gets the wide beam.

Serialised state (meta empty): ``codebooks`` float32 [M, 256, d];
``max_beam_size`` int32 [1]; with ``"-b"`` also ``norm_scale`` float32 [n_stages]
and ``calib`` float32 [n_stages] (both finite and positive).
"""

from __future__ import annotations

import math
import re
from statistics import NormalDist
from typing import Any

import faiss
import numba
import numpy as np

from reelpack.util.validate import as_codes
from reelpack.codecs._common import check_state_keys, row_blocks, state_array, sub_seeds
from reelpack.codecs.base import Codec
from reelpack.codecs.pq import _faiss_kmeans_settings
from reelpack.codecs.registry import register_codec
from reelpack.codecs.scanner import GenericScanner, Scanner
from reelpack.errors import CodecSpecError, InvalidInputError, SerializationError
from reelpack.kernels.dense import GEMM_MIN_QUERIES, pq_adc

__all__ = [
    "ResidualCodec",
    "ResidualScanner",
    "rq_lut",
    "rq_decode",
    "rq_decode_reference",
    "rq_residual_norms",
    "rq_residual_norms_reference",
    "KSUB",
    "MAX_CODEBOOKS",
    "MAX_BEAM_SIZE",
    "TRAIN_BEAM_SIZE",
    "TRAIN_TYPE",
    "BOUND_STEPS_PER_OCTAVE",
    "BOUND_ZERO_CODE",
    "BOUND_INF_CODE",
]

KSUB = 256
MAX_CODEBOOKS = 64
#: beam width of the encoder (faiss ``max_beam_size`` at encode time)
MAX_BEAM_SIZE = 16
#: beam width while training the codebooks (see the module docstring)
TRAIN_BEAM_SIZE = 1
#: faiss ``train_type``: 0 is plain k-means per codebook (faiss's default adds progressive-dimension k-means)
TRAIN_TYPE = 0
#: rows the codebooks are fitted on (a seeded sample of larger inputs); faiss's k-means subsamples
#: 256 rows per centroid itself, the ``-r`` least-squares rounds use them all
MAX_TRAIN_SAMPLE = 262144
#: ``-n``: largest allowed ``| ||x|| - 1 |`` of an item
UNIT_NORM_TOLERANCE = 1e-3
#: largest ``-pD``
MAX_PROJECT_DIM = 8192
ENCODE_BLOCK = 8192
#: ``-r``: rounds of (beam re-encode, least-squares codebook update) per stage
REFINE_ROUNDS = 4
#: ``-r``: beam width of the re-encoding between codebook updates
REFINE_BEAM_SIZE = 8
#: ``-r``: ridge added to the normal equations, relative to the mean code count (keeps empty codewords put)
REFINE_RIDGE = 1e-3
#: residual-norm grid: ``bound(b) = norm_scale * 2 ** ((b - BOUND_ZERO_CODE) / BOUND_STEPS_PER_OCTAVE)``
BOUND_STEPS_PER_OCTAVE = 24
BOUND_ZERO_CODE = 191
#: bound byte meaning "no finite bound" (the residual lies beyond the grid)
BOUND_INF_CODE = 255
BOUND_MARGIN = 1e-3
CALIB_QUERIES = 1024
CALIB_ITEMS = 2048
CALIB_LEVELS = (0.5, 0.9, 0.99, 0.999)
_MAX_BEAM_LOADED = 4096


# ---- kernels ------------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _rq_decode_kernel(codebooks, codes, out):  # pragma: no cover - compiled
    m = codes.shape[1]
    d = codebooks.shape[2]
    for t in range(codes.shape[0]):
        for j in range(d):
            out[t, j] = 0.0
        for c in range(m):
            w = codebooks[c, codes[t, c]]
            for j in range(d):
                out[t, j] += w[j]


def rq_decode(codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Sum of the selected codewords: float32 [n, d] from codebooks float32 [m, 256, d] and codes uint8 [n, m].

    Codes with fewer columns than ``m`` use the first ``codes.shape[1]`` codebooks (a prefix decode).
    """
    codebooks = np.ascontiguousarray(codebooks, np.float32)
    codes = np.ascontiguousarray(codes, np.uint8)
    if codes.shape[1] > codebooks.shape[0]:
        raise InvalidInputError(f"codes have {codes.shape[1]} columns, only {codebooks.shape[0]} codebooks")
    out = np.empty((codes.shape[0], codebooks.shape[2]), np.float32)
    if out.size:
        _rq_decode_kernel(codebooks, codes, out)
    return out


def rq_decode_reference(codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Oracle for :func:`rq_decode` (fancy indexing, float64 sum)."""
    codebooks = np.asarray(codebooks, np.float64)
    codes = np.asarray(codes).astype(np.int64)
    m = codes.shape[1]
    return codebooks[np.arange(m)[None, :], codes].sum(axis=1).astype(np.float32)


@numba.njit(cache=True, nogil=True)
def _rq_residual_norms_kernel(codebooks, codes, X, ends, out):  # pragma: no cover - compiled
    d = X.shape[1]
    acc = np.empty(d, np.float32)
    for t in range(X.shape[0]):
        for j in range(d):
            acc[j] = X[t, j]
        c = 0
        for s in range(ends.shape[0]):
            while c < ends[s]:
                w = codebooks[c, codes[t, c]]
                for j in range(d):
                    acc[j] -= w[j]
                c += 1
            ss = 0.0
            for j in range(d):
                ss += np.float64(acc[j]) * np.float64(acc[j])
            out[t, s] = math.sqrt(ss)


def rq_residual_norms(codebooks: np.ndarray, codes: np.ndarray, X: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Residual norms after each stage: float64 [n, len(ends)].

    ``out[t, s] = ||X[t] - sum_{c < ends[s]} codebooks[c, codes[t, c]]||`` (residual kept
    in float32 as the decoder adds codewords in float32; the norm is summed in float64).

    Args:
        codebooks: float32 [m, 256, d]; codes: uint8 [n, m]; X: float32 [n, d];
        ends: int64 [s], increasing, each in 1..m (the codebook count through each stage).
    """
    ends = np.ascontiguousarray(ends, np.int64)
    out = np.empty((X.shape[0], ends.shape[0]), np.float64)
    if out.size:
        _rq_residual_norms_kernel(
            np.ascontiguousarray(codebooks, np.float32),
            np.ascontiguousarray(codes, np.uint8),
            np.ascontiguousarray(X, np.float32),
            ends,
            out,
        )
    return out


def rq_residual_norms_reference(
    codebooks: np.ndarray, codes: np.ndarray, X: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """Oracle for :func:`rq_residual_norms` (float64 throughout)."""
    cb = np.asarray(codebooks, np.float64)
    idx = np.asarray(codes).astype(np.int64)
    X = np.asarray(X, np.float64)
    words = cb[np.arange(idx.shape[1])[None, :], idx]  # [n, m, d]
    return np.stack([np.linalg.norm(X - words[:, : int(e)].sum(axis=1), axis=1) for e in ends], axis=1)


def rq_lut(queries: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Lookup tables float32 [q, m, 256]: ``LUT[i, c, k] = queries[i] . codebooks[c, k]`` (one GEMM)."""
    m, ksub, d = codebooks.shape
    lut = np.ascontiguousarray(queries, np.float32) @ np.ascontiguousarray(codebooks, np.float32).reshape(m * ksub, d).T
    return np.ascontiguousarray(lut.reshape(queries.shape[0], m, ksub))


def _inverse_lengths(R: np.ndarray) -> np.ndarray:
    """float32 [n]: one over the length of each row of float32 R [n, d], summed in float64 (0 for a zero row)."""
    R64 = R.astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", R64, R64))
    with np.errstate(divide="ignore"):
        return np.where(norms > 0, 1.0 / norms, 0.0).astype(np.float32)


def _rq_ip(queries: np.ndarray, codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``queries @ rq_decode(codebooks, codes).T`` float32 [q, n]: LUT + ADC for few queries, else decode + GEMM."""
    cb = np.ascontiguousarray(codebooks[: codes.shape[1]])
    if queries.shape[0] <= GEMM_MIN_QUERIES:
        return pq_adc(rq_lut(queries, cb), codes)
    out = np.empty((queries.shape[0], codes.shape[0]), np.float32)
    for sl in row_blocks(codes.shape[0], cb.shape[2] * cb.shape[0]):
        out[:, sl] = queries @ rq_decode(cb, codes[sl]).T
    return out


def _two_sided_z(confidence: float) -> float:
    """``z`` with ``P(|N(0, 1)| <= z) = confidence`` (accurate for tails down to ~1e-300)."""
    return -NormalDist().inv_cdf((1.0 - confidence) / 2.0)


# ---- codec --------------------------------------------------------------------------------------------
def _train_greedy(X: np.ndarray, n_codebooks: int, seed: int) -> Any:
    """faiss ``ResidualQuantizer`` of ``n_codebooks`` 8-bit codebooks trained on X float32 [n, d] by greedy
    plain k-means (:data:`TRAIN_BEAM_SIZE`, :data:`TRAIN_TYPE`; see the module docstring)."""
    rq = faiss.ResidualQuantizer(X.shape[1], n_codebooks, 8)
    rq.max_beam_size = TRAIN_BEAM_SIZE
    rq.train_type = TRAIN_TYPE
    rq.cp.seed = int(seed)
    rq.cp.verbose = False
    rq.cp.min_points_per_centroid = 1  # only silences faiss's "please provide at least ..." warning
    rq.verbose = False
    with _faiss_kmeans_settings():
        rq.train(np.ascontiguousarray(X, np.float32))
    return rq


def _faiss_codebooks(rq: Any) -> np.ndarray:
    """The codebooks float32 [M, 256, d] of a trained faiss ``ResidualQuantizer``."""
    return np.ascontiguousarray(faiss.vector_to_array(rq.codebooks).astype(np.float32).reshape(rq.M, KSUB, rq.d))


def _rq_from_codebooks(codebooks: np.ndarray, beam: int) -> Any:
    """A trained faiss ``ResidualQuantizer`` holding ``codebooks`` float32 [M, 256, d], encoding with ``beam``."""
    m, _, d = codebooks.shape
    rq = faiss.ResidualQuantizer(d, m, 8)
    faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, np.float32).ravel(), rq.codebooks)
    rq.max_beam_size = int(beam)
    rq.is_trained = True
    return rq


def _compute_codes(rq: Any, X: np.ndarray) -> np.ndarray:
    """Beam-search codes uint8 [n, M] of X float32 [n, d] by the faiss quantiser ``rq``, in row blocks."""
    if rq.code_size != rq.M:  # 8-bit codes: faiss writes one byte per codebook, in order
        raise AssertionError(f"faiss RQ code size {rq.code_size} != {rq.M} codebooks")
    out = np.empty((X.shape[0], rq.M), np.uint8)
    with _faiss_kmeans_settings():
        for s in range(0, X.shape[0], ENCODE_BLOCK):
            out[s : s + ENCODE_BLOCK] = rq.compute_codes(np.ascontiguousarray(X[s : s + ENCODE_BLOCK], np.float32))
    return out


def _sq_error(codebooks: np.ndarray, codes: np.ndarray, X: np.ndarray) -> float:
    """Total squared reconstruction error (float64) of X [n, d] by ``codebooks`` [M, 256, d] and ``codes`` [n, M]."""
    norms = rq_residual_norms(codebooks, codes, X, np.array([codes.shape[1]], np.int64))
    return float(np.square(norms).sum())


def _least_squares_codebooks(X: np.ndarray, codes: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Codebooks float32 [M, 256, d] minimising ``sum_i ||X_i - sum_m C[m, codes[i, m]]||^2`` for fixed codes.

    The normal equations ``(B^T B + lam I) C = B^T X + lam C_prev`` of the one-hot code matrix ``B``
    [n, M*256] are built from pairwise code co-occurrence counts and solved jointly (float64); the small
    ridge ``lam`` pulls unused codewords towards their previous values instead of leaving them singular.
    """
    n, m = codes.shape
    d = X.shape[1]
    size = m * KSUB
    idx = codes.astype(np.int64) + (np.arange(m, dtype=np.int64) * KSUB)[None, :]  # [n, M] columns of B
    gram = np.zeros((size, size), np.float64)
    for a in range(m):
        for b in range(a, m):
            block = np.bincount(codes[:, a].astype(np.int64) * KSUB + codes[:, b], minlength=KSUB * KSUB)
            block = block.reshape(KSUB, KSUB).astype(np.float64)
            gram[a * KSUB : (a + 1) * KSUB, b * KSUB : (b + 1) * KSUB] = block
            if b != a:
                gram[b * KSUB : (b + 1) * KSUB, a * KSUB : (a + 1) * KSUB] = block.T
    rhs = np.zeros((size, d), np.float64)
    Xd = X.astype(np.float64)
    for a in range(m):
        _scatter_rows(rhs, idx[:, a], Xd)
    lam = REFINE_RIDGE * max(1.0, n / KSUB)
    gram[np.diag_indices(size)] += lam
    rhs += lam * previous.reshape(size, d).astype(np.float64)
    try:
        sol = np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:
        return previous
    if not np.isfinite(sol).all():
        return previous
    return np.ascontiguousarray(sol.reshape(m, KSUB, d), np.float32)


def _scatter_rows(out: np.ndarray, rows: np.ndarray, X: np.ndarray) -> None:
    """``out[rows[i]] += X[i]`` for all i (rows int64 [n], X float64 [n, d]) by sorting, faster than ``np.add.at``."""
    order = np.argsort(rows, kind="stable")
    r = rows[order]
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    out[r[starts]] += np.add.reduceat(X[order], starts, axis=0)


def _pca_basis(X: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean float32 [d], basis float32 [d, dims]): the top-``dims`` principal directions of X float32 [n, d]."""
    Xd = X.astype(np.float64)
    mean = Xd.mean(axis=0)
    C = Xd - mean
    cov = C.T @ C / max(1, len(C) - 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:dims]
    basis = vecs[:, order]
    basis *= np.where(basis[np.abs(basis).argmax(axis=0), np.arange(dims)] < 0, -1.0, 1.0)  # fixed signs
    return mean.astype(np.float32), np.ascontiguousarray(basis, np.float32)


class ResidualCodec(Codec):
    """Residual quantiser of ``sum(stages)`` 8-bit codebooks split into progressive stages.

    Args:
        stages: codebooks per stage, each >= 1, total 1..64.
        bounds: append one residual-norm bound byte to each stage (``"-b"``).

    Fitted attributes:
        codebooks: float32 [M, 256, d].
        norm_scale, calib: float32 [n_stages] (bounds only; see the module docstring).
    """

    family = "rq"

    def __init__(
        self,
        stages: tuple[int, ...],
        bounds: bool = False,
        refine: bool = False,
        project: int | None = None,
        unit: bool = False,
    ) -> None:
        super().__init__()
        stages = tuple(int(s) for s in stages)
        if not stages or any(s < 1 for s in stages):
            raise CodecSpecError(f"rq stages must each hold at least 1 codebook, got {'+'.join(map(str, stages))}")
        if not 1 <= sum(stages) <= MAX_CODEBOOKS:
            raise CodecSpecError(
                f"rq needs 1..{MAX_CODEBOOKS} codebooks in all, got {'+'.join(map(str, stages))} = {sum(stages)}"
            )
        if project is not None and not 1 <= int(project) <= MAX_PROJECT_DIM:
            raise CodecSpecError(f"rq -p needs 1..{MAX_PROJECT_DIM} projected dimensions, got {project}")
        if unit and bounds:
            raise CodecSpecError(
                "rq -n (unit-norm reconstructions) cannot carry -b bounds: the bounds are on unnormalised residuals"
            )
        if project is not None and bounds:
            raise CodecSpecError(
                "rq -p (a PCA projection) cannot carry -b bounds: the bounds would miss what the projection drops"
            )
        self.stages = stages
        self.bounds = bool(bounds)
        self.refine = bool(refine)
        #: ``-n``: the items are unit vectors; reconstructions (and so scores) are normalised to unit length
        self.unit = bool(unit)
        #: ``-pD``: PCA dimensions the residual stages quantise (None: the full dimension)
        self.project = None if project is None else int(project)
        #: ``-pD`` fits only: float32 [d, D] orthonormal PCA basis (columns) and float32 [d] mean
        self.projection: np.ndarray | None = None
        self.mean: np.ndarray | None = None
        self.n_codebooks = sum(stages)
        #: ``-r`` fits only: sample MSE per stage before and after the refinement rounds
        self.refine_history: list[dict[str, float]] = []
        self.codebooks: np.ndarray | None = None
        self.norm_scale: np.ndarray | None = None
        self.calib: np.ndarray | None = None
        self.max_beam_size = MAX_BEAM_SIZE
        self._faiss_rq: Any = None
        extra = 1 if self.bounds else 0
        widths = [s + extra for s in stages]
        starts = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
        self._widths = tuple(widths)
        #: code column of each codebook's byte, int64 [M]; bound byte columns int64 [n_stages]
        self._cb_cols = np.concatenate([np.arange(s0, s0 + s) for s0, s in zip(starts, stages)]).astype(np.int64)
        self._bound_cols = (starts + np.asarray(stages)).astype(np.int64)
        self._ends = np.cumsum(stages).astype(np.int64)

    # ---- identity -----------------------------------------------------------------------------------
    @property
    def spec(self) -> str:
        return (
            "rq"
            + "+".join(map(str, self.stages))
            + ("-r" if self.refine else "")
            + (f"-p{self.project}" if self.project is not None else "")
            + ("-n" if self.unit else "")
            + ("-b" if self.bounds else "")
        )

    def _bytes_per_vector(self) -> int:
        return int(sum(self._widths))

    def _stage_bytes(self) -> tuple[int, ...]:
        return self._widths

    @property
    def has_bounds(self) -> bool:
        return self.bounds

    # ---- fit ----------------------------------------------------------------------------------------
    def _check_unit_rows(self, X: np.ndarray) -> None:
        """``-n``: InvalidInputError unless every row of X has norm 1 (within :data:`UNIT_NORM_TOLERANCE`)."""
        if not self.unit or X.shape[0] == 0:
            return
        norms = np.linalg.norm(X.astype(np.float64), axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE)
        if bad.size:
            raise InvalidInputError(
                f"{self.spec} (-n) encodes unit vectors only; {bad.size} rows have other norms (row {int(bad[0])}: "
                f"{norms[bad[0]]:.4g}); normalise them or drop -n"
            )

    def _check_fit_input(self, X: np.ndarray) -> None:
        self._check_unit_rows(X)
        if self.project is not None and self.project > X.shape[1]:
            raise InvalidInputError(f"{self.spec} projects to {self.project} dimensions, the vectors have {X.shape[1]}")
        if X.shape[0] < KSUB:
            raise InvalidInputError(
                f"{self.spec} needs at least {KSUB} training rows (one per codeword of each codebook), got {X.shape[0]}"
            )

    def _fit(self, X: np.ndarray, seed: int) -> None:
        n = X.shape[0]
        s_sample, s_faiss, s_calib = sub_seeds(seed, 3)
        rng = np.random.default_rng(s_sample)
        sample = X if n <= MAX_TRAIN_SAMPLE else X[np.sort(rng.choice(n, MAX_TRAIN_SAMPLE, replace=False))]
        if self.project is not None:
            self.mean, self.projection = _pca_basis(sample, self.project)
            sample = self._to_subspace(sample)
        if self.refine:
            self.codebooks = self._fit_refined(np.ascontiguousarray(sample, np.float32), s_faiss)
            self._faiss_rq = None
        else:
            rq = _train_greedy(sample, self.n_codebooks, s_faiss)
            rq.max_beam_size = self.max_beam_size
            self.codebooks = _faiss_codebooks(rq)
            self._faiss_rq = rq
        if self.bounds:
            self._calibrate(sample, s_calib)

    def _fit_refined(self, sample: np.ndarray, seed: int) -> np.ndarray:
        """``-r``: per stage, greedy RQ training, then rounds of beam re-encoding and a joint least-squares update
        of the stage's codebooks (LSQ++-style); returns float32 [M, 256, d].

        Stage ``k`` is fitted to what stages ``< k`` leave over, so every prefix stays a coarse reconstruction.
        A round is kept only when it lowers the sample's squared error (each round is a descent step: the
        least-squares update is optimal for the codes, and beam re-encoding rarely raises the error).
        """
        books: list[np.ndarray] = []
        residual = sample.astype(np.float32, copy=True)
        self.refine_history = []
        for k, width in enumerate(self.stages):
            cb = _faiss_codebooks(_train_greedy(residual, width, int(seed) + k))
            codes = _compute_codes(_rq_from_codebooks(cb, REFINE_BEAM_SIZE), residual)
            err = _sq_error(cb, codes, residual)
            first = err
            for _ in range(REFINE_ROUNDS):
                new_cb = _least_squares_codebooks(residual, codes, cb)
                new_codes = _compute_codes(_rq_from_codebooks(new_cb, REFINE_BEAM_SIZE), residual)
                new_err = _sq_error(new_cb, new_codes, residual)
                if not new_err < err:
                    break
                cb, codes, err = new_cb, new_codes, new_err
            self.refine_history.append(
                {"stage": float(k), "mse_greedy": first / len(residual), "mse_refined": err / len(residual)}
            )
            books.append(cb)
            residual -= rq_decode(cb, codes)
        return np.ascontiguousarray(np.concatenate(books, axis=0), np.float32)

    def _calibrate(self, sample: np.ndarray, seed: int) -> None:
        """Set ``norm_scale`` and ``calib`` [n_stages] from disjoint query and item rows of the sample."""
        n, d = sample.shape
        rng = np.random.default_rng(seed)
        perm = rng.permutation(n)
        n_items = min(CALIB_ITEMS, n - min(CALIB_QUERIES, n // 2))
        items = sample[np.sort(perm[:n_items])]
        queries = sample[np.sort(perm[n_items : n_items + CALIB_QUERIES])]
        codes = self._faiss_codes(items)
        norms = rq_residual_norms(self.codebooks, codes, items, self._ends)  # [n_items, n_stages]
        qn = np.linalg.norm(queries.astype(np.float64), axis=1)
        queries = queries[qn > 0]
        qn = qn[qn > 0]
        scale = np.empty(len(self.stages), np.float32)
        calib = np.ones(len(self.stages), np.float32)
        for k, end in enumerate(self._ends):
            rmax = float(norms[:, k].max())
            scale[k] = rmax if rmax > 0 else 1.0
            ok = norms[:, k] > 0
            if not ok.any() or queries.shape[0] == 0:
                continue
            R = items[ok].astype(np.float64) - rq_decode(self.codebooks, codes[ok, : int(end)]).astype(np.float64)
            t = np.abs(queries.astype(np.float64) @ R.T) * math.sqrt(d) / (qn[:, None] * norms[ok, k][None, :])
            quant = np.quantile(t.ravel(), CALIB_LEVELS)
            calib[k] = max(float(qv) / _two_sided_z(p) for qv, p in zip(quant, CALIB_LEVELS))
        self.norm_scale = scale
        self.calib = np.maximum(calib, np.float32(1e-6))

    # ---- faiss encoder ------------------------------------------------------------------------------
    def _rq(self) -> Any:
        """faiss's quantiser, rebuilt from the stored codebooks after loading."""
        if self._faiss_rq is None:
            self._faiss_rq = _rq_from_codebooks(self.codebooks, self.max_beam_size)  # type: ignore[arg-type]
        return self._faiss_rq

    def _faiss_codes(self, X: np.ndarray) -> np.ndarray:
        """Beam-search codes uint8 [n, M] (codebook m's index in column m)."""
        return _compute_codes(self._rq(), X)

    # ---- bounds grid ----------------------------------------------------------------------------------
    def _bound_table(self) -> np.ndarray:
        """float64 [n_stages, 256]: the residual-norm upper bound each bound byte stands for."""
        b = np.arange(256, dtype=np.float64)
        grid = np.exp2((b - BOUND_ZERO_CODE) / BOUND_STEPS_PER_OCTAVE)
        table = self.norm_scale.astype(np.float64)[:, None] * grid[None, :]  # type: ignore[union-attr]
        table[:, BOUND_INF_CODE] = np.inf
        return table

    def _bound_bytes(self, norms: np.ndarray) -> np.ndarray:
        """Quantise residual norms float64 [n, n_stages] up onto the grid: uint8 [n, n_stages]."""
        table = self._bound_table()
        target = norms * (1.0 + BOUND_MARGIN)
        with np.errstate(divide="ignore"):
            pos = np.log2(target / self.norm_scale.astype(np.float64)[None, :])  # type: ignore[union-attr]
        b = np.ceil(pos * BOUND_STEPS_PER_OCTAVE) + BOUND_ZERO_CODE
        b = np.clip(np.nan_to_num(b, nan=BOUND_INF_CODE, neginf=0.0), 0, BOUND_INF_CODE).astype(np.int64)
        rows = np.arange(len(self.stages))[None, :]
        short = table[rows, b] < target  # log2 rounding: step up once
        b[short] += 1
        b = np.minimum(b, BOUND_INF_CODE)
        return b.astype(np.uint8)

    # ---- encode / decode / score --------------------------------------------------------------------
    def _to_subspace(self, X: np.ndarray) -> np.ndarray:
        """``-pD``: float32 [n, D] PCA coordinates ``(X - mean) @ projection`` of X float32 [n, d]."""
        return np.ascontiguousarray((X - self.mean) @ self.projection, np.float32)  # type: ignore[operator]

    def _from_subspace(self, Y: np.ndarray) -> np.ndarray:
        """``-pD``: float32 [n, d] ``mean + Y @ projection.T`` of Y float32 [n, D]."""
        return np.ascontiguousarray(self.mean + Y @ self.projection.T, np.float32)  # type: ignore[union-attr,operator]

    def _ip(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Inner products float32 [q, n] of queries [q, d] with the reconstructions of codebook bytes [n, m]
        (``-n``: with the unit-length reconstructions, decoded once: their norms need the decode anyway)."""
        if self.unit:
            return np.ascontiguousarray(queries @ self._finish_decode(codes).T, np.float32)
        return self._raw_ip(queries, codes)

    def _raw_ip(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Inner products float32 [q, n] with the reconstructions of codebook bytes [n, m] before any ``-n``
        rescaling: ADC over the codebooks (``-pD``: of the projected query, plus ``<q, mean>``)."""
        if self.project is None:
            return _rq_ip(queries, self.codebooks, codes)  # type: ignore[arg-type]
        q = np.ascontiguousarray(queries @ self.projection, np.float32)  # type: ignore[operator]
        return _rq_ip(q, self.codebooks, codes) + (queries @ self.mean)[:, None].astype(np.float32)  # type: ignore[operator]

    def inverse_norms(self, codes: np.ndarray) -> np.ndarray:
        """``-n``: float32 [n], one over each item's reconstruction norm before rescaling (0 for a zero
        reconstruction), from codes uint8 [n, bytes_per_vector]; decoded in row blocks. The ``-n`` score is
        the raw ADC score times this factor, which is how the scanners (numba and C) rank without decoding."""
        self._require_fitted("inverse_norms")
        if not self.unit:
            raise InvalidInputError(f"{self.spec}: inverse_norms is for rq -n codecs (unit-length reconstructions)")
        codes = as_codes(codes, self._bytes_per_vector())
        out = np.empty(codes.shape[0], np.float32)
        for rows in row_blocks(codes.shape[0], self.dim):
            out[rows] = _inverse_lengths(self._raw_decode(self._cb_codes(codes[rows], len(self.stages))))
        return out

    def scanner(self, codes: np.ndarray, *, exact: bool = True, query_bits: int = 8,
                rerank: int | None = None) -> Scanner:  # fmt: skip
        """``-n`` codecs: a :class:`ResidualScanner` (inverse norms computed once, then ADC + rescale per
        block); otherwise the ADC :class:`~reelpack.codecs.scanner.GenericScanner`."""
        self._require_fitted("scanner")
        return ResidualScanner(self, codes) if self.unit else GenericScanner(self, codes)

    def _raw_decode(self, codes: np.ndarray) -> np.ndarray:
        """Reconstructions float32 [n, d] of codebook bytes [n, m], before any ``-n`` normalisation."""
        Y = rq_decode(self.codebooks, codes)  # type: ignore[arg-type]
        return Y if self.project is None else self._from_subspace(Y)

    def _finish_decode(self, codes: np.ndarray) -> np.ndarray:
        """Reconstructions float32 [n, d] of codebook bytes [n, m]; ``-n``: rescaled to unit length (a zero
        reconstruction stays zero)."""
        R = self._raw_decode(codes)
        if self.unit:
            R *= _inverse_lengths(R)[:, None]
        return R

    def _encode(self, X: np.ndarray) -> np.ndarray:
        out = np.empty((X.shape[0], self._bytes_per_vector()), np.uint8)
        if X.shape[0] == 0:
            return out
        self._check_unit_rows(X)
        if self.project is not None:
            X = self._to_subspace(X)
        codes = self._faiss_codes(X)
        out[:, self._cb_cols] = codes
        if self.bounds:
            norms = rq_residual_norms(self.codebooks, codes, X, self._ends)
            out[:, self._bound_cols] = self._bound_bytes(norms)
        return out

    def _cb_codes(self, codes: np.ndarray, stages: int) -> np.ndarray:
        """Codebook bytes uint8 [n, codebooks through ``stages``] of a code prefix."""
        if not self.bounds:
            return codes[:, : int(self._ends[stages - 1])]
        return np.ascontiguousarray(codes[:, self._cb_cols[: int(self._ends[stages - 1])]])

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return self._finish_decode(self._cb_codes(codes, len(self.stages)))

    def decode_prefix(self, codes: np.ndarray, stages: int) -> np.ndarray:
        """Coarse reconstruction float32 [n, d] from the first ``stages`` stages (codes uint8 [n, prefix_bytes])."""
        self._require_fitted("decode_prefix")
        codes = as_codes(codes, self.prefix_bytes(stages))
        return self._finish_decode(self._cb_codes(codes, int(stages)))

    def _score(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return self._ip(queries, self._cb_codes(codes, len(self.stages)))

    def _score_prefix(self, queries: np.ndarray, codes: np.ndarray, stages: int) -> np.ndarray:
        return self._ip(queries, self._cb_codes(codes, stages))

    def _score_bounds(
        self, queries: np.ndarray, codes: np.ndarray, stages: int, confidence: float
    ) -> tuple[np.ndarray, np.ndarray]:
        est = _rq_ip(queries, self.codebooks, self._cb_codes(codes, stages))  # type: ignore[arg-type]
        k = stages - 1
        rnorm = self._bound_table()[k][codes[:, int(self._bound_cols[k])]]  # float64 [n]
        factor = min(1.0, _two_sided_z(confidence) * float(self.calib[k]) / math.sqrt(self.dim))  # type: ignore[index]
        qn = np.linalg.norm(queries.astype(np.float64), axis=1) * factor
        with np.errstate(invalid="ignore"):
            half = qn[:, None] * rnorm[None, :]
        half[np.isnan(half)] = 0.0  # 0 * inf: a zero query has an exact score
        return est, half

    # ---- state --------------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays = {"codebooks": self.codebooks, "max_beam_size": np.array([self.max_beam_size], np.int32)}
        if self.project is not None:
            arrays["projection"] = self.projection
            arrays["mean"] = self.mean
        if self.bounds:
            arrays["norm_scale"] = self.norm_scale
            arrays["calib"] = self.calib
        return {}, arrays  # type: ignore[return-value]

    def _load_state(self, dim: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        names = ("codebooks", "max_beam_size") + (("norm_scale", "calib") if self.bounds else ())
        names += ("projection", "mean") if self.project is not None else ()
        check_state_keys(self.spec, meta, arrays, names)
        sub = dim
        if self.project is not None:
            if self.project > dim:
                raise SerializationError(f"{self.spec} state projects to {self.project} of only {dim} dimensions")
            sub = self.project
            projection = state_array(self.spec, arrays, "projection", (dim, sub), "<f4")
            mean = state_array(self.spec, arrays, "mean", (dim,), "<f4")
            if not (np.isfinite(projection).all() and np.isfinite(mean).all()):
                raise SerializationError(f"{self.spec} state projection and mean must be finite")
            if float(np.abs(projection).max(initial=0.0)) > 1.0 + 1e-3:
                raise SerializationError(f"{self.spec} state projection must hold orthonormal columns")
            self.projection, self.mean = projection, mean
        codebooks = state_array(self.spec, arrays, "codebooks", (self.n_codebooks, KSUB, sub), "<f4")
        beam = state_array(self.spec, arrays, "max_beam_size", (1,), "<i4")
        if not 1 <= int(beam[0]) <= _MAX_BEAM_LOADED:
            raise SerializationError(f"{self.spec} state max_beam_size {int(beam[0])} is outside 1..{_MAX_BEAM_LOADED}")
        if self.bounds:
            s = len(self.stages)
            scale = state_array(self.spec, arrays, "norm_scale", (s,), "<f4")
            calib = state_array(self.spec, arrays, "calib", (s,), "<f4")
            if not ((scale > 0).all() and (calib > 0).all()):
                raise SerializationError(f"{self.spec} state norm_scale and calib must be positive")
            if not (scale < 1e30).all():
                raise SerializationError(f"{self.spec} state norm_scale must stay below 1e30")
            self.norm_scale, self.calib = scale, calib
        self.codebooks = codebooks
        self.max_beam_size = int(beam[0])
        self._faiss_rq = None


@register_codec(
    "rq", r"rq(?P<stages>\d{1,4}(?:\+\d{1,4})*)(?P<r>-r)?(?:-p(?P<p>[1-9]\d{0,4}))?(?P<n>-n)?(?P<b>-b)?", "rq8+8"
)
def _build_rq(match: re.Match[str]) -> Codec:
    stages = tuple(int(s) for s in match.group("stages").split("+"))
    project = int(match.group("p")) if match.group("p") else None
    return ResidualCodec(
        stages,
        bounds=match.group("b") is not None,
        refine=match.group("r") is not None,
        project=project,
        unit=match.group("n") is not None,
    )


class ResidualScanner(GenericScanner):
    """``rq ... -n``: each item's inverse reconstruction norm computed once (float32 [n], ``prepared_bytes``),
    then per row block the raw ADC scores (:meth:`ResidualCodec._raw_ip`) times those factors, so a query never
    decodes the catalog. Scores equal :meth:`ResidualCodec.score` up to float32 rounding."""

    def __init__(self, codec: ResidualCodec, codes: np.ndarray) -> None:
        super().__init__(codec, codes)
        self.inv_norms = codec.inverse_norms(self.codes)
        self.prepared_bytes = int(self.inv_norms.nbytes)
        self.kernel = "rq-adc-norm+topk"

    def _block_scores(self, queries: np.ndarray, start: int, stop: int) -> np.ndarray:
        codec: ResidualCodec = self.codec  # type: ignore[assignment]
        raw = codec._raw_ip(queries, codec._cb_codes(self.codes[start:stop], len(codec.stages)))
        return raw * self.inv_norms[start:stop][None, :]
