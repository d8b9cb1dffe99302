"""Shared data of the bench tests: a synthetic split with toy embeddings, clustered (they rank the split) or random."""

from __future__ import annotations

import numpy as np
import pytest

from reelpack.data import Split, synthetic_interactions, train_test_split, validation_split


def _clustered_bench_data(
    n_users: int, n_items: int, n_clusters: int, *, unit: bool = False, val_fraction: float | None = None
) -> tuple[Split, Split | None, np.ndarray, np.ndarray]:
    """(split, val, users, items) of a synthetic catalog (seed 0): items float32 [n_items, 16] = their cluster's
    centroid plus noise (unit-norm with ``unit``), users float32 [n_users, 16] = the sum of their train items. With
    ``val_fraction``, ``val`` is ``validation_split(split, val_fraction, seed=0)`` and the users sum only its fit
    items (the 'model' never sees the validation items); otherwise ``val`` is None."""
    inter = synthetic_interactions(n_users=n_users, n_items=n_items, n_clusters=n_clusters, seed=0)
    split = train_test_split(inter, seed=0)
    val = validation_split(split, val_fraction, seed=0) if val_fraction is not None else None
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(n_clusters, 16)).astype(np.float32)
    clusters = inter.meta["item_cluster"][split.item_ids]
    items = centroids[clusters] + 0.3 * rng.normal(size=(split.n_items, 16)).astype(np.float32)
    if unit:
        items /= np.linalg.norm(items, axis=1, keepdims=True)
    users = np.zeros((split.n_users, 16), np.float32)
    tu, ti = (split if val is None else val).train_pairs()
    np.add.at(users, tu, items[ti])
    return split, val, users, items


def _random_bench_data(
    n_users: int, n_items: int, n_clusters: int, seed: int, dim: int = 16
) -> tuple[Split, np.ndarray, np.ndarray]:
    """(split, users, items) of a synthetic catalog (interactions and split from ``seed``) with random Gaussian
    embeddings: users float32 [n_users, dim], items float32 [n_items, dim] (no signal; for timing and estimates)."""
    inter = synthetic_interactions(n_users=n_users, n_items=n_items, n_clusters=n_clusters, seed=seed)
    split = train_test_split(inter, seed=seed)
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(split.n_items, dim)).astype(np.float32)
    users = rng.normal(size=(split.n_users, dim)).astype(np.float32)
    return split, users, items


@pytest.fixture(scope="session")
def clustered_bench_data():
    """The factory ``clustered_bench_data(n_users, n_items, n_clusters, unit=False, val_fraction=None)`` (see
    :func:`_clustered_bench_data`)."""
    return _clustered_bench_data


@pytest.fixture(scope="session")
def random_bench_data():
    """The factory ``random_bench_data(n_users, n_items, n_clusters, seed, dim=16)`` (see :func:`_random_bench_data`)."""
    return _random_bench_data
