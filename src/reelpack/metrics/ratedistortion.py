"""Rate-distortion reference points for fixed-rate codecs: reverse water-filling and the Gaussian bound.

For a Gaussian source with independent components of variances ``sigma_i^2``
(any Gaussian vector after its PCA rotation) and a budget of ``R`` bits per
vector, the rate-distortion function (Cover & Thomas, Theorem 10.3.3) is given
by reverse water-filling::

    R_i   = max(0, 0.5 * log2(sigma_i^2 / theta))        with  sum_i R_i = R
    D(R)  = sum_i min(theta, sigma_i^2) = sum_i sigma_i^2 * 2^(-2 R_i)

(``D`` is the expected squared error per vector, summed over dimensions). No
code of ``R`` bits per vector reaches a lower expected squared error on that
Gaussian source.

How to read ``mse_over_bound`` for real codecs:

* On Gaussian data ``mse / D(R) >= 1`` (up to sampling noise). Fixed-rate scalar
  quantisation after PCA pays a known factor at high rate: the Panter-Dite constant
  ``sqrt(3) pi / 2 ~= 2.72`` (4.35 dB) for Lloyd-Max on a Gaussian; the often quoted
  ``pi e / 6 ~= 1.42`` (1.53 dB) is the space-filling loss of a *uniform quantiser
  followed by entropy coding*, which fixed-rate codes do not reach. At the low
  rates Lloyd-Max gives 1.45 (1 bit), 1.88 (2 bits), 2.21 (3 bits), 2.43 (4 bits).
* For non-Gaussian data with the same covariance, ``D(R)`` is an *upper* bound on
  that source's rate-distortion function (the Gaussian is the hardest source of a
  given covariance), not a lower bound on what codecs reach: clustered data such as
  learned embeddings can give ``mse_over_bound < 1`` (vector quantisers like PQ
  exploit the clusters).

Public functions: :func:`water_level`, :func:`reverse_water_filling`,
:func:`gaussian_distortion_bound`, :func:`codec_mse`, :func:`pca_variances`,
:func:`rd_table`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from reelpack.util.validate import as_float_matrix
from reelpack.codecs import Codec, make_codec
from reelpack.errors import InvalidInputError

__all__ = [
    "water_level",
    "reverse_water_filling",
    "gaussian_distortion_bound",
    "codec_mse",
    "pca_variances",
    "rd_table",
]


def _variances(variances: object) -> np.ndarray:
    v = np.asarray(variances, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all() or (v < 0).any():
        raise InvalidInputError("variances must be a non-empty 1-D array of finite non-negative values")
    return v


def _budget(total_bits: object) -> float:
    if isinstance(total_bits, bool) or not isinstance(total_bits, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"total_bits must be a number, got {type(total_bits).__name__}")
    r = float(total_bits)
    if not np.isfinite(r) or r < 0:
        raise InvalidInputError(f"total_bits must be finite and >= 0, got {total_bits!r}")
    return r


def water_level(variances: np.ndarray, total_bits: float) -> float:
    """The water level ``theta`` of reverse water-filling for ``total_bits`` bits per vector.

    Args:
        variances: float [d], the component variances ``sigma_i^2 >= 0``.
        total_bits: ``R >= 0`` (need not be an integer).

    Returns:
        ``theta`` with ``sum_i max(0, 0.5 log2(sigma_i^2 / theta)) == R``; ``max(sigma^2)``
        when ``R == 0``. With ``k`` active components (the ``k`` largest variances)
        ``theta = (prod_{i<=k} sigma_i^2)^(1/k) * 2^(-2R/k)``; ``k`` is the largest count
        for which the ``k``-th largest variance exceeds that ``theta``.

    Raises:
        InvalidInputError: bad variances or budget, or ``R > 0`` with all variances 0
            (no finite level spends the budget).
    """
    v = _variances(variances)
    r = _budget(total_bits)
    s = np.sort(v)[::-1]
    if r == 0.0:
        return float(s[0])
    s = s[s > 0]
    if s.size == 0:
        raise InvalidInputError("all variances are 0: a positive bit budget cannot be spent")
    k = np.arange(1, s.size + 1)
    log_theta = (np.cumsum(np.log2(s)) - 2.0 * r) / k  # log2 theta_k if the k largest are active
    active = np.flatnonzero(np.log2(s) > log_theta)
    kk = int(active[-1]) if active.size else 0
    return float(np.exp2(log_theta[kk]))


def reverse_water_filling(variances: np.ndarray, total_bits: float) -> np.ndarray:
    """Per-component rates float64 [d]: ``R_i = max(0, 0.5 log2(sigma_i^2 / theta))``, summing to ``total_bits``.

    ``theta`` is :func:`water_level`; components with ``sigma_i^2 <= theta`` get rate 0.
    """
    v = _variances(variances)
    theta = water_level(v, total_bits)
    with np.errstate(divide="ignore"):
        rates = np.maximum(0.0, 0.5 * (np.log2(v) - np.log2(theta)))
    return np.where(v > 0, rates, 0.0)


def gaussian_distortion_bound(variances: np.ndarray, total_bits: float) -> float:
    """``D(R) = sum_i min(theta, sigma_i^2)`` (= ``sum_i sigma_i^2 2^(-2 R_i)``), squared error per vector.

    The distortion-rate function of a Gaussian vector with these component
    variances at ``total_bits`` bits per vector (see the module docstring for how
    to read it on non-Gaussian data).
    """
    v = _variances(variances)
    return float(np.minimum(water_level(v, total_bits), v).sum())


def codec_mse(codec: Codec, X: np.ndarray) -> float:
    """Mean squared reconstruction error per vector: ``mean_n sum_d (x - decode(encode(x)))^2``.

    Args:
        codec: a fitted codec.
        X: float [n, d] with ``d == codec.dim`` (float64 accumulation, blocks of 8192 rows).
    """
    X = as_float_matrix(X, "X", dim=codec.dim)
    total = 0.0
    for s in range(0, X.shape[0], 8192):
        xb = X[s : s + 8192]
        err = codec.decode(codec.encode(xb)).astype(np.float64) - xb
        total += float(np.einsum("ij,ij->", err, err))
    return total / X.shape[0]


def pca_variances(X: np.ndarray) -> np.ndarray:
    """Eigenvalues float64 [d] (decreasing, clipped at 0) of the covariance ``(X - mean)^T (X - mean) / n``."""
    X = as_float_matrix(X, "X")
    xc = X.astype(np.float64) - X.mean(axis=0, dtype=np.float64)
    w = np.linalg.eigvalsh(xc.T @ xc / X.shape[0])
    return np.maximum(w[::-1], 0.0)


def rd_table(
    X: np.ndarray, specs: Sequence[str], seed: int, X_eval: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """Fit each codec on ``X`` and compare its MSE with the Gaussian bound at the same bytes.

    Args:
        X: float [n, d] training rows.
        specs: factory strings of registered codecs, e.g. ``["pq16", "opq16,pq16", "sq4", "wsq16", "usq16", "fp16"]``.
        seed: passed to every ``fit``.
        X_eval: rows for the MSE (default ``X`` itself: in-sample); the bound uses the
            covariance of the same rows.

    Returns:
        One dict per spec: ``spec``, ``bytes_per_vector`` ``B``, ``bits_per_dim = 8B/d``,
        ``mse`` (:func:`codec_mse`), ``gaussian_bound`` = :func:`gaussian_distortion_bound`
        of :func:`pca_variances` at ``8B`` bits, ``mse_over_bound``.
    """
    X = as_float_matrix(X, "X")
    Xe = X if X_eval is None else as_float_matrix(X_eval, "X_eval", dim=X.shape[1])
    var = pca_variances(Xe)
    d = X.shape[1]
    rows = []
    for spec in specs:
        codec = make_codec(spec).fit(X, seed=int(seed))
        bpv = int(codec.bytes_per_vector)
        mse = codec_mse(codec, Xe)
        bound = gaussian_distortion_bound(var, 8 * bpv)
        rows.append(
            {
                "spec": codec.spec,
                "bytes_per_vector": bpv,
                "bits_per_dim": 8.0 * bpv / d,
                "mse": mse,
                "gaussian_bound": bound,
                "mse_over_bound": mse / bound if bound > 0 else float("inf") if mse > 0 else 1.0,
            }
        )
    return rows
