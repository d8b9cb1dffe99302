"""Shared input checks: every public entry point funnels arrays through these."""

from __future__ import annotations

import numpy as np

from reelpack.errors import (
    DimensionMismatchError,
    DTypeError,
    EmptyInputError,
    InvalidInputError,
    InvalidKError,
    NonFiniteError,
)

_MAX_ROWS_NAMED = 20


def as_float_matrix(x: object, name: str = "X", dim: int | None = None, allow_empty: bool = False) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 matrix [n, d], or raise a typed error.

    Accepts any real floating or integer array-like of rank 2. Rejects complex,
    object, boolean or string dtypes (:class:`DTypeError`), other ranks or a
    dimension other than ``dim`` (:class:`DimensionMismatchError`), zero rows
    unless ``allow_empty`` (:class:`EmptyInputError`), and NaN/Inf
    (:class:`NonFiniteError`, naming the rows).
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise DTypeError(f"{name} must be a real float or integer array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DimensionMismatchError(f"{name} must be a 2-D array [n, d], got shape {arr.shape}")
    if arr.shape[0] == 0 and not allow_empty:
        raise EmptyInputError(f"{name} is empty (0 rows); at least one row is needed")
    if arr.shape[1] == 0:
        raise DimensionMismatchError(f"{name} has dimension 0")
    if dim is not None and arr.shape[1] != dim:
        raise DimensionMismatchError(f"{name} has dimension {arr.shape[1]}, expected {dim}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        bad = np.flatnonzero(~finite.all(axis=1))
        shown = ", ".join(str(int(r)) for r in bad[:_MAX_ROWS_NAMED])
        more = f" and {len(bad) - _MAX_ROWS_NAMED} more" if len(bad) > _MAX_ROWS_NAMED else ""
        raise NonFiniteError(
            f"{name} holds NaN or Inf in {len(bad)} row(s): {shown}{more}", rows=bad[:_MAX_ROWS_NAMED].tolist()
        )
    if np.abs(out).max(initial=0.0) > 1e30:
        raise InvalidInputError(f"{name} holds values beyond 1e30 in magnitude; scale the input first")
    return out


def as_codes(codes: object, bytes_per_vector: int, name: str = "codes", allow_empty: bool = True) -> np.ndarray:
    """Return ``codes`` as a C-contiguous uint8 matrix [n, bytes_per_vector], or raise."""
    arr = np.asarray(codes)
    if arr.dtype != np.uint8:
        raise DTypeError(f"{name} must be uint8, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DimensionMismatchError(f"{name} must be a 2-D array [n, bytes_per_vector], got shape {arr.shape}")
    if arr.shape[1] != bytes_per_vector:
        raise DimensionMismatchError(
            f"{name} have {arr.shape[1]} bytes per vector, this codec uses {bytes_per_vector}"
        )
    if arr.shape[0] == 0 and not allow_empty:
        raise EmptyInputError(f"{name} is empty (0 rows)")
    return np.ascontiguousarray(arr)


def check_k(k: object, n_items: int) -> int:
    """Return ``k`` as int if 1 <= k <= n_items, else raise :class:`InvalidKError`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidKError(f"K must be an integer, got {type(k).__name__}")
    k = int(k)
    if k <= 0:
        raise InvalidKError(f"K must be positive, got {k}")
    if k > n_items:
        raise InvalidKError(f"K={k} is larger than the catalog ({n_items} items)")
    return k
