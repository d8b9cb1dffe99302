"""A SYNTHETIC catalog with users, for ``reelpack build-catalog --synthetic N`` (demos and scale tests).

Items are the rows ``0..N-1`` of :class:`~reelpack.catalog.build.SyntheticSource` (clustered unit vectors, ids
``0..N-1``); the users are the next ``min(N, SYNTHETIC_MAX_USERS)`` rows of the same generator (so they come from
the same clusters), with user ids ``0..m-1``. Everything is drawn from ``seed``.
"""

from __future__ import annotations

import numpy as np

from reelpack.catalog.build import SyntheticSource
from reelpack.errors import InvalidInputError

__all__ = ["SYNTHETIC_MAX_ITEMS", "SYNTHETIC_MAX_DIM", "SYNTHETIC_MAX_USERS", "check_synthetic_size",
           "synthetic_items", "synthetic_users"]  # fmt: skip

SYNTHETIC_MAX_ITEMS = 50_000_000
"""Largest ``--synthetic`` catalog."""
SYNTHETIC_MAX_DIM = 4096
"""Largest dimension of a synthetic catalog."""
SYNTHETIC_MAX_USERS = 1000
"""A synthetic catalog of N items has ``min(N, SYNTHETIC_MAX_USERS)`` users."""


def check_synthetic_size(n_items: int, dim: int) -> None:
    """Raise :class:`~reelpack.errors.InvalidInputError` unless ``1 <= n_items <= 5e7`` and ``1 <= dim <= 4096``."""
    ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (n_items, dim))
    if not (ok and 1 <= n_items <= SYNTHETIC_MAX_ITEMS and 1 <= dim <= SYNTHETIC_MAX_DIM):
        raise InvalidInputError(f"--synthetic must be in 1..5e7 and --dim in 1..4096, got {n_items}, {dim}")


def synthetic_items(n_items: int, dim: int, seed: int = 0) -> SyntheticSource:
    """The item source of a synthetic catalog: ``n_items`` unit vectors float32 [n_items, dim], ids ``0..n-1``."""
    check_synthetic_size(n_items, dim)
    return SyntheticSource(n_items, dim, seed=seed)


def synthetic_users(n_items: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The users of the synthetic catalog of ``n_items`` items.

    Returns:
        ``(vectors, user_ids)``: unit vectors float32 [m, dim] (rows ``n_items..n_items+m-1`` of the items'
        generator) and ids int64 [m] ``0..m-1``, with ``m = min(n_items, SYNTHETIC_MAX_USERS)``.

    Raises:
        InvalidInputError: ``n_items`` or ``dim`` is out of range (:func:`check_synthetic_size`).
    """
    check_synthetic_size(n_items, dim)
    m = min(int(n_items), SYNTHETIC_MAX_USERS)
    vectors = SyntheticSource(int(n_items) + m, dim, seed=seed).rows(int(n_items), int(n_items) + m)
    return vectors, np.arange(m, dtype=np.int64)
