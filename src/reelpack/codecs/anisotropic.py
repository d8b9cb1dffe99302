"""Score-aware (anisotropic) product quantisation: ``"apq16"``, ``"apq16-t0.3"``, ``"opq16,apq16"``.

Guo et al., "Accelerating Large-Scale Inference with Anisotropic Vector
Quantization" (ICML 2020, the ScaNN quantiser). The code layout, decode and
scoring are exactly those of plain PQ (:mod:`reelpack.codecs.pq`): ``m``
sub-quantisers of 256 centroids over contiguous sub-vectors of ``d / m``
dimensions (``m`` must divide ``d``, else :class:`~reelpack.errors.DimensionMismatchError`),
``m`` bytes per vector, ``decode`` concatenates centroids and ``score`` is ADC
(:func:`reelpack.search.pq_ip`), so ``score == queries @ decode(codes).T``.
Only the training objective and the encoder differ.

Factory strings: ``"apqM"`` or ``"apqM-tT"`` with ``1 <= M <= 4096`` and the
threshold ``T`` in (0, 1) (default 0.2; out-of-range values raise
:class:`~reelpack.errors.CodecSpecError`), optionally after OPQ's rotation,
``"opqM,apqM[-tT]"`` (both ``M`` equal). The canonical spec omits ``-t0.2`` and
writes ``T`` as Python's shortest ``repr`` (``"apq16-t.30"`` becomes ``"apq16-t0.3"``).

Loss. For a datapoint ``x`` with reconstruction ``x~`` and residual ``r = x - x~``,
split ``r`` into the part parallel to ``x``, ``r_par = (r.x) x / |x|^2``, and the
rest ``r_perp``. The loss is (perpendicular weight normalised to 1)::

    L(x, x~) = eta(x) * |r_par|^2 + |r_perp|^2 = |r|^2 + (eta(x) - 1) * (r.x)^2 / |x|^2

With a threshold ``T`` on the inner products that matter (queries uniform on the
sphere; only scores above ``T`` count) the paper gives, for ``|x| = 1``,
``eta = (d - 1) T^2 / (1 - T^2)``; for other norms ``T`` is measured against
``|x|``: ``t^2 = min((T s)^2 / |x|^2, 0.99)`` and ``eta(x) = (d - 1) t^2 / (1 - t^2)``,
where ``s`` is the mean norm of the training rows (1 for unit-norm embeddings,
so ``T`` is scale-free and matches the paper there). ``eta > 1`` (for example
``T >= 0.18`` at ``d = 64``) penalises the parallel error, which is what moves
the large inner products (a query aligned with ``x``); it costs plain
reconstruction error (MSE). Zero rows use ``L = |r|^2``.

Training (on a seeded sample of at most 65536 rows; at least 256 rows, one per centroid):

1. plain PQ: faiss k-means per subspace (the same seeds and iterations as ``"pqM"``),
   codes = nearest centroids;
2. ``APQ_ITERS`` (8) alternations of

   a. code assignment by coordinate descent over subspaces, warm-started from the
      current codes: for each subspace in turn, pick the centroid minimising the
      full loss ``L`` given the other subspaces' choices (exact; vectorised per
      point in a numba kernel from the inner products ``x_j . C_j`` of one GEMM per
      subspace); sweeps repeat until no code changes, at most ``APQ_SWEEPS`` (3);
   b. codebook update, block-exact per subspace (Gauss-Seidel over subspaces):
      with the other subspaces fixed, ``L`` summed over the rows is quadratic in
      subspace ``j``'s centroids and separates by centroid, so each centroid ``c``
      is the solution of the ``dsub x dsub`` normal equations
      ``sum_i (I + w_i u_ij u_ij^T) c = sum_i (x_ij + w_i t_i u_ij)`` over its rows,
      where ``u = x / |x|``, ``w = eta - 1`` and ``t_i = |x_i| - sum_{l != j} u_il . C_l[code_il]``
      (centroids without rows keep their value).

   Each step never increases the total loss on the sample.

Encoding starts from the nearest centroids and runs the same coordinate descent
(at most ``APQ_SWEEPS`` sweeps). ``encode(decode(codes)) == codes`` is not
guaranteed (the loss of a reconstruction depends on its own direction).

``"opqM,apqM"`` first learns OPQ's orthogonal rotation ``R`` exactly as
``"opqM,pqM"`` does (:class:`reelpack.codecs.pq.OPQProductQuantizer`), then trains
the anisotropic quantiser on ``x @ R.T``; rotations keep norms and inner
products, so the loss is unchanged by the rotation.

Measured on the amazon-book two-tower item embeddings (79,227 unit-norm items,
seed 0, relative Recall@50 / NDCG@10 against float32 over 12,000 sampled users):
at 64-d ``pq16`` 0.938 / 0.855, ``apq16`` (T = 0.2) 0.944 / 0.899, ``apq16-t0.3``
0.961 / 0.895 (the best T for Recall@50; NDCG@10 is flat for T in 0.2..0.4);
at 128-d ``pq16`` 0.844 / 0.736, ``apq16`` 0.865 / 0.804, ``apq16-t0.3`` 0.881 / 0.797,
``pq32`` 0.955 / 0.895 against ``apq32`` 0.969 / 0.944. Fitting takes about
15 s for 64-d ``apq16`` on one core (k-means + 8 alternations on 65,536 rows).

Serialised state: ``centroids`` float32 [m, 256, d/m], ``norm_scale`` float32 [1]
(``s`` above, positive); the rotated form adds ``rotation`` float32 [d, d]
(checked orthogonal on load). Meta is empty.
"""

from __future__ import annotations

import re
from typing import Any

import numba
import numpy as np

from reelpack.codecs._common import check_state_keys, row_blocks, state_array, sub_seeds
from reelpack.codecs.base import Codec
from reelpack.codecs.pq import (
    PQScanner,
    KMEANS_NITER,
    MAX_M,
    OPQ_MAX_SAMPLE,
    OPQProductQuantizer,
    _train_pq,
    pq_assign,
)
from reelpack.codecs.registry import register_codec
from reelpack.codecs.scanner import Scanner
from reelpack.errors import CodecSpecError, DimensionMismatchError, InvalidInputError, SerializationError
from reelpack.kernels.dense import pq_decode, pq_ip

__all__ = ["AnisotropicPQ", "OPQAnisotropicPQ", "anisotropic_eta", "anisotropic_loss", "DEFAULT_THRESHOLD"]

KSUB = 256
DEFAULT_THRESHOLD = 0.2
APQ_ITERS = 8
APQ_SWEEPS = 3
APQ_MAX_SAMPLE = OPQ_MAX_SAMPLE
_MAX_T2 = 0.99  # cap on (T s / |x|)^2 for rows shorter than the threshold: eta <= 99 (d - 1)


def anisotropic_eta(norms: np.ndarray, d: int, threshold: float, norm_scale: float = 1.0) -> np.ndarray:
    """Parallel-to-perpendicular weight ``eta`` per row (see the module docstring).

    Args:
        norms: float [n], the rows' L2 norms.
        d: dimension.
        threshold: ``T`` in (0, 1).
        norm_scale: ``s``; the threshold in absolute units is ``T * s``.

    Returns:
        float64 [n]; rows of norm 0 get ``eta = 1`` (isotropic).
    """
    norms = np.asarray(norms, np.float64)
    with np.errstate(divide="ignore"):
        t2 = np.where(norms > 0, (threshold * norm_scale) ** 2 / np.where(norms > 0, norms, 1.0) ** 2, 0.0)
    t2 = np.minimum(t2, _MAX_T2)
    eta = (d - 1) * t2 / (1.0 - t2)
    return np.where(norms > 0, eta, 1.0)


def anisotropic_loss(
    X: np.ndarray, Xhat: np.ndarray, threshold: float = DEFAULT_THRESHOLD, norm_scale: float = 1.0
) -> np.ndarray:
    """Per-row anisotropic loss ``eta |r_par|^2 + |r_perp|^2`` (NumPy reference, float64).

    Args:
        X: float [n, d] data; Xhat: float [n, d] reconstructions.
        threshold, norm_scale: as in :func:`anisotropic_eta`.

    Returns:
        float64 [n].
    """
    X = np.asarray(X, np.float64)
    R = X - np.asarray(Xhat, np.float64)
    norms = np.linalg.norm(X, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    par2 = np.where(norms > 0, ((R * X).sum(axis=1) / safe) ** 2, 0.0)
    total = (R * R).sum(axis=1)
    eta = anisotropic_eta(norms, X.shape[1], threshold, norm_scale)
    return eta * par2 + (total - par2)


# ---- kernels ----------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _cd_assign_kernel(xc, cnorm, subsq, inv_norm, w, codes, sweeps):  # pragma: no cover - compiled
    """Coordinate descent on codes uint8 [n, m] (in place).

    xc: float32 [m, n, K] inner products x_j . C_jk; cnorm: float64 [m, K] |C_jk|^2;
    subsq: float64 [n, m] |x_j|^2; inv_norm: float64 [n] 1/|x| (0 for zero rows);
    w: float64 [n] eta - 1. Loss = sum_j |x_j - C_j|^2 + w (sum_j (|x_j|^2 - x_j.C_j) / |x|)^2.
    """
    m, n, K = xc.shape
    vals = np.empty(K)
    for i in range(n):
        wi = w[i]
        inv = inv_norm[i]
        s = 0.0  # r . u with the current codes
        for j in range(m):
            s += (subsq[i, j] - xc[j, i, codes[i, j]]) * inv
        for _ in range(sweeps):
            changed = False
            for j in range(m):
                cur = codes[i, j]
                # r . u with subspace j's centroid k is a - x_j . C_jk / |x|
                a = s + xc[j, i, cur] * inv
                row = xc[j, i]
                cn = cnorm[j]
                for k in range(K):  # branch-free pass (vectorisable), then the argmin
                    g = np.float64(row[k])
                    p = a - g * inv
                    vals[k] = cn[k] - 2.0 * g + wi * p * p
                best = cur
                best_val = vals[cur]
                for k in range(K):
                    if vals[k] < best_val:
                        best_val = vals[k]
                        best = k
                if best != cur:
                    codes[i, j] = best
                    changed = True
                s = a - xc[j, i, best] * inv
            if not changed:
                break


@numba.njit(cache=True, nogil=True)
def _normal_equations_kernel(xs, us, t, w, codes_j, K):  # pragma: no cover - compiled
    """Per-centroid normal equations of one subspace.

    xs, us: float32 [n, dsub] sub-vectors of x and u = x/|x|; t, w: float64 [n];
    codes_j: uint8 [n]. Returns A float64 [K, dsub, dsub], b float64 [K, dsub], counts int64 [K].
    """
    n, dsub = xs.shape
    A = np.zeros((K, dsub, dsub))
    b = np.zeros((K, dsub))
    cnt = np.zeros(K, np.int64)
    for i in range(n):
        k = codes_j[i]
        cnt[k] += 1
        wi = w[i]
        for a in range(dsub):
            ua = us[i, a]
            b[k, a] += xs[i, a] + wi * t[i] * ua
            A[k, a, a] += 1.0
            for c in range(dsub):
                A[k, a, c] += wi * ua * us[i, c]
    return A, b, cnt


# ---- helpers ----------------------------------------------------------------------------------------
def _row_terms(Y: np.ndarray, m: int, d: int, threshold: float, norm_scale: float) -> tuple[np.ndarray, ...]:
    """Per-row quantities for Y float32 [n, d]: norms, 1/norm, w = eta - 1 (float64 [n]), |y_j|^2 float64 [n, m]."""
    Y64 = Y.astype(np.float64)
    sub = (Y64 * Y64).reshape(Y.shape[0], m, d // m).sum(axis=2)
    norms = np.sqrt(sub.sum(axis=1))
    inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
    w = anisotropic_eta(norms, d, threshold, norm_scale) - 1.0
    return norms, inv, w, np.ascontiguousarray(sub)


def _assign(
    Y: np.ndarray, cents: np.ndarray, threshold: float, norm_scale: float, codes: np.ndarray | None, sweeps: int
) -> np.ndarray:
    """Anisotropic codes uint8 [n, m] of Y float32 [n, d] (coordinate descent from ``codes`` or the nearest)."""
    m, K, dsub = cents.shape
    n, d = Y.shape
    out = pq_assign(Y, cents) if codes is None else np.array(codes, np.uint8, order="C")
    if n == 0:
        return out
    cnorm = (cents.astype(np.float64) ** 2).sum(axis=2)
    ct = np.ascontiguousarray(cents.transpose(0, 2, 1))  # [m, dsub, K]
    for sl in row_blocks(n, m * K):
        Yb = Y[sl]
        _, inv, w, subsq = _row_terms(Yb, m, d, threshold, norm_scale)
        xc = np.matmul(np.ascontiguousarray(Yb.reshape(-1, m, dsub).transpose(1, 0, 2)), ct)  # [m, b, K]
        block = np.ascontiguousarray(out[sl])
        _cd_assign_kernel(np.ascontiguousarray(xc, np.float32), cnorm, subsq, inv, w, block, int(sweeps))
        out[sl] = block
    return out


def _update_codebooks(
    Y: np.ndarray, cents: np.ndarray, codes: np.ndarray, threshold: float, norm_scale: float
) -> np.ndarray:
    """Block-exact least-squares codebook update, subspace by subspace; returns new float32 [m, K, dsub]."""
    m, K, dsub = cents.shape
    n, d = Y.shape
    norms, inv, w, _ = _row_terms(Y, m, d, threshold, norm_scale)
    U = (Y.astype(np.float64) * inv[:, None]).astype(np.float32)
    cents = cents.copy()
    # proj[i, j] = u_ij . C_j[code_ij]
    rec = pq_decode(cents, codes).astype(np.float64)
    proj = (U.astype(np.float64) * rec).reshape(n, m, dsub).sum(axis=2)
    total = proj.sum(axis=1)
    eye = np.eye(dsub)
    for j in range(m):
        cols = slice(j * dsub, (j + 1) * dsub)
        us = np.ascontiguousarray(U[:, cols])
        t = norms - (total - proj[:, j])
        A, b, cnt = _normal_equations_kernel(np.ascontiguousarray(Y[:, cols]), us, t, w, codes[:, j].copy(), K)
        used = cnt > 0
        if used.any():
            A_used = A[used] + 1e-9 * cnt[used, None, None] * eye  # ridge against a singular (w = -1) system
            sol = np.linalg.solve(A_used, b[used][:, :, None])[:, :, 0]
            cents[j, used] = sol.astype(np.float32)
        new_proj = (us.astype(np.float64) * cents[j][codes[:, j]].astype(np.float64)).sum(axis=1)
        total += new_proj - proj[:, j]
        proj[:, j] = new_proj
    return cents


def _format_threshold(t: float) -> str:
    return repr(float(t))  # shortest text that parses back to the same float


# ---- codec ------------------------------------------------------------------------------------------
class AnisotropicPQ(Codec):
    """Score-aware PQ: ``m`` sub-quantisers of 256 centroids, ``m`` bytes per vector.

    Args:
        m: number of sub-quantisers; must divide the data dimension (checked at fit).
        threshold: ``T`` in (0, 1) (default 0.2), relative to the training rows' mean norm.
        rotate: learn OPQ's rotation first (``"opqM,apqM"``).
        iters: alternations of assignment and codebook update.

    Fitted attributes:
        centroids: float32 [m, 256, d/m] (in the rotated space when ``rotate``).
        norm_scale: float, mean norm of the training rows.
        rotation: float32 [d, d] or None.
    """

    family = "apq"

    def __init__(self, m: int, threshold: float = DEFAULT_THRESHOLD, rotate: bool = False, iters: int = APQ_ITERS):
        super().__init__()
        m = int(m)
        if not 1 <= m <= MAX_M:
            raise CodecSpecError(f"apq sub-quantiser count must be in 1..{MAX_M}, got {m}")
        threshold = float(threshold)
        if not 0.0 < threshold < 1.0:
            raise CodecSpecError(f"apq threshold T must be in (0, 1) (exclusive), got {threshold!r}")
        self.m = m
        self.threshold = threshold
        self.rotate = bool(rotate)
        self.iters = int(iters)
        self.centroids: np.ndarray | None = None
        self.norm_scale: float = 1.0
        self.rotation: np.ndarray | None = None

    @property
    def spec(self) -> str:
        base = f"apq{self.m}"
        if self.threshold != DEFAULT_THRESHOLD:
            base += f"-t{_format_threshold(self.threshold)}"
        return f"opq{self.m},{base}" if self.rotate else base

    def _bytes_per_vector(self) -> int:
        return self.m

    # ---- fit ------------------------------------------------------------------------------------
    def _check_fit_input(self, X: np.ndarray) -> None:
        n, d = X.shape
        if d % self.m:
            raise DimensionMismatchError(
                f"{self.spec} needs a dimension divisible by {self.m}, got d={d} ({d} % {self.m} = {d % self.m})"
            )
        if n < KSUB:
            raise InvalidInputError(
                f"{self.spec} needs at least {KSUB} training rows (one per centroid), got {n}; "
                f"use 'pq{self.m}' for smaller sets"
            )

    def _fit(self, X: np.ndarray, seed: int) -> None:
        n, d = X.shape
        m = self.m
        rng = np.random.default_rng(sub_seeds(seed, 3)[2])
        sample = X if n <= APQ_MAX_SAMPLE else X[np.sort(rng.choice(n, APQ_MAX_SAMPLE, replace=False))]
        norms = np.linalg.norm(sample.astype(np.float64), axis=1)
        scale = float(norms.mean())
        self.norm_scale = float(np.float32(scale)) if scale > 0 else 1.0
        self.rotation = None
        if self.rotate:
            opq = OPQProductQuantizer(m)
            opq._fit(sample, seed)
            self.rotation = opq.rotation
            sample = np.ascontiguousarray(sample @ self.rotation.T)  # type: ignore[union-attr]
            cents = opq.centroids
        else:
            cents = _train_pq(sample, m, KSUB, sub_seeds(seed, m), KMEANS_NITER)
        codes = pq_assign(sample, cents)
        for _ in range(self.iters):
            codes = _assign(sample, cents, self.threshold, self.norm_scale, codes, APQ_SWEEPS)
            cents = _update_codebooks(sample, cents, codes, self.threshold, self.norm_scale)
        self.centroids = np.ascontiguousarray(cents, np.float32)

    def scanner(self, codes: np.ndarray, *, exact: bool = True, query_bits: int = 8,
                rerank: int | None = None) -> Scanner:  # fmt: skip
        """Scores are PQ ADC on the (rotated) codebooks: the fused 8-bit PQ scan (:class:`PQScanner`)."""
        self._require_fitted("scanner")
        return PQScanner(self, codes)

    # ---- transform hooks ------------------------------------------------------------------------
    def _rotate(self, X: np.ndarray) -> np.ndarray:
        if self.rotation is None:
            return X
        out = np.empty_like(X)
        for sl in row_blocks(X.shape[0], X.shape[1]):
            out[sl] = X[sl] @ self.rotation.T
        return out

    def _unrotate(self, Y: np.ndarray) -> np.ndarray:
        return Y if self.rotation is None else Y @ self.rotation

    # ---- encode / decode / score ----------------------------------------------------------------
    def _encode(self, X: np.ndarray) -> np.ndarray:
        cents = self.centroids
        assert cents is not None
        return _assign(self._rotate(X), cents, self.threshold, self.norm_scale, None, APQ_SWEEPS)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return self._unrotate(pq_decode(self.centroids, codes))  # type: ignore[arg-type]

    def _score(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return pq_ip(self._rotate(queries), self.centroids, codes)  # type: ignore[arg-type]

    # ---- state ----------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays = {"centroids": self.centroids, "norm_scale": np.array([self.norm_scale], np.float32)}
        if self.rotate:
            arrays["rotation"] = self.rotation
        return {}, arrays  # type: ignore[return-value]

    def _load_state(self, dim: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        names = ("centroids", "norm_scale", "rotation") if self.rotate else ("centroids", "norm_scale")
        check_state_keys(self.spec, meta, arrays, names)
        if dim % self.m:
            raise SerializationError(f"{self.spec} state has dim {dim}, not divisible by {self.m}")
        self.centroids = state_array(self.spec, arrays, "centroids", (self.m, KSUB, dim // self.m), "<f4")
        scale = state_array(self.spec, arrays, "norm_scale", (1,), "<f4")
        if not scale[0] > 0:
            raise SerializationError(f"{self.spec} state norm_scale must be positive, got {float(scale[0])}")
        self.norm_scale = float(scale[0])
        if self.rotate:
            R = state_array(self.spec, arrays, "rotation", (dim, dim), "<f4")
            err = np.abs(R.astype(np.float64) @ R.T.astype(np.float64) - np.eye(dim)).max()
            if err > 1e-3:
                raise SerializationError(f"{self.spec} state rotation is not orthogonal (|R R^T - I| = {err:.3g})")
            self.rotation = R


class OPQAnisotropicPQ(AnisotropicPQ):
    """:class:`AnisotropicPQ` after OPQ's learned rotation (``"opqM,apqM"``; ``m`` bytes per vector)."""

    family = "opq-apq"

    def __init__(self, m: int, threshold: float = DEFAULT_THRESHOLD, iters: int = APQ_ITERS):
        super().__init__(m, threshold, rotate=True, iters=iters)


_T = r"(?:-t(?P<t>(?:\d{1,3}(?:\.\d{1,17})?|\.\d{1,17})(?:e-?\d{1,3})?))?"


def _build(match: re.Match[str], rotate: bool) -> Codec:
    m = int(match.group("m"))
    if rotate and int(match.group("o")) != m:
        o = match.group("o")
        raise CodecSpecError(f"in 'opqM,apqM' the rotation's M must equal the APQ's M, got opq{o},apq{m}")
    t = match.group("t")
    threshold = DEFAULT_THRESHOLD if t is None else float(t)
    return OPQAnisotropicPQ(m, threshold) if rotate else AnisotropicPQ(m, threshold)


@register_codec("opq-apq", r"opq(?P<o>\d{1,6}),apq(?P<m>\d{1,6})" + _T, "opq16,apq16")
def _build_opq_apq(match: re.Match[str]) -> Codec:
    return _build(match, rotate=True)


@register_codec("apq", r"apq(?P<m>\d{1,6})" + _T, "apq16")
def _build_apq(match: re.Match[str]) -> Codec:
    return _build(match, rotate=False)
