"""Shared data of the model tests: a small catalog of clustered unit-norm items."""

from __future__ import annotations

import numpy as np
import pytest


def _clustered_unit(n: int, d: int, seed: int) -> np.ndarray:
    """Unit-norm items float32 [n, d] in anisotropic clusters (a two-tower catalog in miniature)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * np.linspace(2.0, 0.1, d)[None, :]
    centers = rng.normal(size=(32, d)) @ mix.T * 0.7
    noise = (rng.normal(size=(n, d)) * np.linspace(1.0, 0.2, d)) @ mix.T * 0.3
    X = (centers[rng.integers(0, 32, n)] + noise).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.fixture(scope="session")
def clustered_unit():
    """The generator ``clustered_unit(n, d, seed)`` (see :func:`_clustered_unit`)."""
    return _clustered_unit
