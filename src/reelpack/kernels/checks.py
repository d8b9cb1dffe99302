"""Input checks and outputs shared by the fused scans (:mod:`reelpack.kernels.scan`,
:mod:`reelpack.kernels.binscan`) and the codecs' scanners."""

from __future__ import annotations

import numpy as np

from reelpack.util.validate import as_codes, as_float_matrix

__all__ = ["check_queries", "check_codes", "empty_results", "fast_queries"]


def check_queries(queries: object, dim: int) -> np.ndarray:
    """Queries as float32 [q, dim]; a 1-D vector is one query."""
    arr = np.asarray(queries)
    if arr.ndim == 1:
        arr = arr[None, :]
    return as_float_matrix(arr, "queries", dim=dim)


def check_codes(codes: object, width: int) -> np.ndarray:
    """Codes as uint8 [n, width], n >= 1 (a read-only memmap is kept as it is)."""
    return as_codes(codes, width, allow_empty=False)


def empty_results(nq: int, k: int, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Output arrays (ids int64 [nq, k], scores [nq, k]) of a top-K scan."""
    return np.empty((nq, k), np.int64), np.empty((nq, k), dtype)


def fast_queries(queries: object, dim: int, *, check_values: bool = True) -> np.ndarray:
    """Queries float32 C-contiguous [q, dim] for a scanner's hot path: an input that already is one is checked
    for shape, finiteness and magnitude only (a few microseconds); anything else goes through :func:`check_queries`.
    ``check_values=False`` leaves finiteness and magnitude of such an input to a kernel that checks them itself
    (and then raises through :func:`check_queries`).

    Raises:
        DimensionMismatchError, DTypeError, NonFiniteError, EmptyInputError, InvalidInputError (values beyond
        1e30): as :func:`check_queries`.
    """
    q = queries if type(queries) is np.ndarray else np.asarray(queries)
    if q.ndim == 1:
        q = q[None, :]
    if q.dtype != np.float32 or q.ndim != 2 or q.shape[1] != dim or q.shape[0] == 0 or not q.flags.c_contiguous:
        return check_queries(q, dim)
    if check_values and not np.abs(q).max() <= 1e30:  # NaN, Inf or a magnitude check_queries refuses
        return check_queries(q, dim)  # raises NonFiniteError naming the rows, or InvalidInputError
    return q
