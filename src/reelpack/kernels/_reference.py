"""Plain NumPy oracles of the fast kernels (test references, not public API).

Each ``X_reference`` computes what :mod:`reelpack.kernels.dense` / :mod:`reelpack.kernels.topk`'s ``X``
computes, slowly and obviously; the tests hold every fast path to them.
"""

from __future__ import annotations

import numpy as np

from reelpack.util.validate import check_k

def pq_lut_reference(queries: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Oracle for :func:`pq_lut` (float64 einsum)."""
    queries = np.asarray(queries, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    m, ksub, dsub = centroids.shape
    qs = queries.reshape(queries.shape[0], m, dsub)
    return np.einsum("qjs,jks->qjk", qs, centroids).astype(np.float32)


def pq_adc_reference(luts: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Oracle for :func:`pq_adc` (fancy indexing, float64 sum)."""
    luts = np.asarray(luts, dtype=np.float64)
    codes = np.asarray(codes).astype(np.int64)
    m = luts.shape[1]
    gathered = luts[:, np.arange(m)[None, :], codes]  # [q, n, m]
    return gathered.sum(axis=2).astype(np.float32)


def pq_decode_reference(centroids: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Oracle for :func:`pq_decode` (explicit loop over sub-quantisers)."""
    centroids = np.asarray(centroids, dtype=np.float32)
    codes = np.asarray(codes)
    return np.concatenate([centroids[j][codes[:, j]] for j in range(centroids.shape[0])], axis=1).reshape(
        codes.shape[0], -1
    )


def hamming_reference(query_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Oracle for :func:`hamming`: unpack to bits and count differences."""
    qb = np.unpackbits(np.asarray(query_codes, dtype=np.uint8), axis=1).astype(np.int32)
    cb = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1).astype(np.int32)
    return (qb[:, None, :] != cb[None, :, :]).sum(axis=2).astype(np.int32)


def sq_dot_reference(queries_scaled: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Oracle for :func:`sq_dot` (float64)."""
    return (np.asarray(queries_scaled, np.float64) @ np.asarray(codes, np.float64).T).astype(np.float32)


def unpack_int4_reference(codes: np.ndarray, d: int) -> np.ndarray:
    """Oracle for :func:`unpack_int4` (element by element)."""
    codes = np.asarray(codes, dtype=np.uint8)
    out = np.zeros((codes.shape[0], d), np.uint8)
    for j in range(d):
        byte = codes[:, j // 2]
        out[:, j] = (byte & 0x0F) if j % 2 == 0 else (byte >> 4)
    return out


def pack_int4_reference(values: np.ndarray) -> np.ndarray:
    """Oracle for :func:`pack_int4` (element by element)."""
    values = np.asarray(values, dtype=np.uint8)
    n, d = values.shape
    out = np.zeros((n, (d + 1) // 2), np.uint8)
    for j in range(d):
        out[:, j // 2] |= values[:, j] << (4 * (j % 2))
    return out


def sq4_dot_reference(queries_scaled: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Oracle for :func:`sq4_dot`: unpack with the reference, then float64 product."""
    d = np.asarray(queries_scaled).shape[1]
    return sq_dot_reference(queries_scaled, unpack_int4_reference(codes, d))


def signs_dot_reference(proj: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Oracle for :func:`signs_dot` (explicit ±1 matrix, float64)."""
    signs = np.unpackbits(np.asarray(codes, np.uint8), axis=1).astype(np.float64) * 2.0 - 1.0
    return (np.asarray(proj, np.float64) @ signs.T).astype(np.float32)


def topk_reference(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain NumPy oracle for :func:`topk` (full stable sort; same tie rule)."""
    scores = np.asarray(scores, dtype=np.float32)
    k = check_k(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(scores, order, axis=1)
