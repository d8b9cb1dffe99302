"""The one item-id check: packs, the catalog store, the HNSW index and the edge catalog all take item ids
through :func:`check_item_ids`."""

from __future__ import annotations

import numpy as np

from reelpack.errors import DimensionMismatchError, DTypeError, EmptyInputError, InvalidInputError, ReelpackError

__all__ = ["MAX_ITEM_ID", "check_item_ids"]

#: Largest item id (ids are stored as non-negative int64 / unsigned varints below 2^63).
MAX_ITEM_ID = 2**63 - 1


def check_item_ids(
    ids: object,
    *,
    what: str = "item_ids",
    n: int | None = None,
    unique: bool = True,
    allow_empty: bool = False,
    error: type[ReelpackError] = InvalidInputError,
) -> np.ndarray:
    """Item ids as int64 [n]: a 1-D integer array of non-negative ids below 2^63 (unique unless told).

    Args:
        ids: any 1-D integer array (int or uint of any width).
        what: the name used in messages (``"item_ids"``, ``"ids"``...).
        n: the length the ids must have (the number of vectors), or ``None``.
        unique: refuse duplicate ids.
        allow_empty: accept an empty array.
        error: the error class for bad values (negative, too large, duplicates): :class:`InvalidInputError`
            for arguments, :class:`~reelpack.errors.SerializationError` for ids read from bytes.

    Returns:
        int64 [n], a new array (the input order is kept).

    Raises:
        DTypeError: not a 1-D integer array. EmptyInputError: empty (unless ``allow_empty``).
        DimensionMismatchError: length is not ``n``. ``error``: a negative id, an id >= 2^63, a duplicate.
    """
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise DTypeError(f"{what} must be a 1-D integer array, got dtype {arr.dtype} shape {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise EmptyInputError(f"{what} is empty; at least one item is needed")
    if n is not None and arr.shape[0] != n:
        raise DimensionMismatchError(f"{what} must have shape ({n},) to match the vectors, got {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind == "u" and int(arr.max()) > MAX_ITEM_ID:
        raise error(f"{what} must be below 2**63; found {int(arr.max())}")
    out = arr.astype(np.int64)
    if int(out.min()) < 0:
        raise error(f"{what} must be non-negative, found {int(out.min())}")
    if unique and out.size > 1:
        s = np.sort(out)
        dup = s[1:][s[1:] == s[:-1]]
        if dup.size:
            raise error(f"{what} must be unique; {dup.size} duplicate(s), e.g. {int(dup[0])}")
    return out
