"""Helpers shared by the codec families: state validation, row blocks, seeds, affine quantisation."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from reelpack.errors import InvalidInputError, SerializationError

# Temporaries of an encode/score block stay near 2^22 elements (16 MiB of float32).
BLOCK_ELEMS = 1 << 22


def block_rows(row_elems: int) -> int:
    """Rows per block so that a block of ``row_elems`` values per row stays near :data:`BLOCK_ELEMS`."""
    return max(1, BLOCK_ELEMS // max(1, int(row_elems)))


def row_blocks(n: int, row_elems: int) -> Iterator[slice]:
    """Slices covering ``range(n)`` in blocks of :func:`block_rows` rows."""
    step = block_rows(row_elems)
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


def sub_seeds(seed: int, count: int) -> list[int]:
    """``count`` independent non-negative int31 seeds derived from ``seed`` (for faiss, which takes C ints)."""
    state = np.random.SeedSequence(abs(int(seed)), spawn_key=(int(seed < 0),)).generate_state(count, np.uint32)
    return [int(s) >> 1 for s in state]


#: Largest dimension whose d x d random rotation :func:`orthogonal_rows` draws (512 MiB of float64).
MAX_ROTATION_DIM = 8192


def orthogonal_rows(rows: int, d: int, seed: int) -> np.ndarray:
    """Seeded float32 [rows, d] of unit rows made of stacked random orthogonal d x d blocks.

    Block ``i`` is the Q factor (sign-fixed, so Haar-distributed) of the QR of a
    ``standard_normal((d, d))`` draw from ``np.random.default_rng(seed)``; the
    blocks' rows are concatenated and the first ``rows`` kept. Every row is
    marginally a uniform direction on the unit sphere, rows within a block are
    orthogonal, and for ``rows <= d`` the result has orthonormal rows (a random
    rotation when ``rows == d``).
    """
    if d > MAX_ROTATION_DIM:
        raise InvalidInputError(
            f"dimension {d} needs a random {d} x {d} rotation ({8 * d * d / 2**30:.1f} GiB while drawn); codecs with "
            f"rotations or projections (simhash, rabitq, opq) take at most {MAX_ROTATION_DIM} dimensions"
        )
    rng = np.random.default_rng(int(seed))
    blocks = []
    for _ in range(-(-int(rows) // int(d))):
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        blocks.append(q * np.where(np.diag(r) < 0, -1.0, 1.0))  # column signs fixed: Haar measure
    return np.ascontiguousarray(np.concatenate(blocks, axis=1).T[:rows], dtype=np.float32)


# ---- state validation -------------------------------------------------------------------------------
def check_state_keys(
    spec: str, meta: dict[str, Any], arrays: dict[str, np.ndarray], expected_arrays: Iterable[str]
) -> None:
    """Raise :class:`SerializationError` unless ``meta`` is empty and ``arrays`` has exactly the expected names."""
    expected = set(expected_arrays)
    if meta:
        raise SerializationError(f"{spec} state has unexpected meta keys {sorted(meta)!r}")
    if set(arrays) != expected:
        raise SerializationError(f"{spec} state has arrays {sorted(arrays)!r}, expected {sorted(expected)!r}")


def state_array(
    spec: str, arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...], dtype: Any, finite: bool = True
) -> np.ndarray:
    """Return ``arrays[name]`` after checking its exact dtype and shape (and finiteness for floats)."""
    arr = arrays[name]
    if arr.dtype != np.dtype(dtype):
        raise SerializationError(f"{spec} state array {name!r} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if arr.shape != tuple(shape):
        raise SerializationError(f"{spec} state array {name!r} has shape {arr.shape}, expected {tuple(shape)}")
    if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise SerializationError(f"{spec} state array {name!r} holds NaN or Inf")
    return np.ascontiguousarray(arr)


# ---- affine (asymmetric) scalar quantisation --------------------------------------------------------
_MIN_RANGE = 1e-30  # ranges narrower than this are treated as constant (keeps 1/step finite)
_MIN_REL_STEP = 2.0**-20  # >= 8 float32 ulps of the largest magnitude in the range


def affine_params(lo: np.ndarray, hi: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-column ``(lo, step)`` float32 for codes 0..levels spanning [lo, hi].

    ``step = (hi - lo) / levels``, but at least ``2^-20 * max(|lo|, |hi|)`` so
    that grid points ``lo + k*step`` stay distinct in float32 (a range that is
    tiny next to its magnitude then uses fewer than ``levels`` codes).
    Columns with ``hi - lo <= 1e-30`` (constant) get ``step = 0``: they encode
    to 0 and decode to ``lo``, never dividing by zero.
    """
    lo = np.asarray(lo, np.float64)
    hi = np.maximum(np.asarray(hi, np.float64), lo)
    width = hi - lo
    floor = _MIN_REL_STEP * np.maximum(np.abs(lo), np.abs(hi))
    step = np.where(width > _MIN_RANGE, np.maximum(width / levels, floor), 0.0)
    return lo.astype(np.float32), step.astype(np.float32)


def inverse_step(step: np.ndarray) -> np.ndarray:
    """``1/step`` where ``step > 0``, else 0 (float32)."""
    step = np.asarray(step, np.float32)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(step > 0, 1.0 / np.where(step > 0, step, 1.0), 0.0).astype(np.float32)
    inv[~np.isfinite(inv)] = 0.0  # a subnormal step would overflow; treat as constant
    return inv


def affine_encode(X: np.ndarray, lo: np.ndarray, inv_step: np.ndarray, levels: int) -> np.ndarray:
    """``clip(round((X - lo) * inv_step), 0, levels)`` as uint8 [n, d] (round half to even)."""
    out = np.empty(X.shape, np.uint8)
    for sl in row_blocks(X.shape[0], X.shape[1]):
        with np.errstate(over="ignore", invalid="ignore"):
            t = (X[sl] - lo) * inv_step
        np.rint(t, out=t)
        np.clip(t, 0, levels, out=t)
        out[sl] = t
    return out
