"""Shared data and fitted codecs for the codec tests (small, seeded, built once per session)."""

from __future__ import annotations

import numpy as np
import pytest

from reelpack.codecs import make_codec

D = 32
N_TRAIN = 1000

def clustered(n: int, d: int, n_clusters: int = 32, seed: int = 0) -> np.ndarray:
    """Anisotropic Gaussian clusters float32 [n, d]: variance decays across dimensions, directions mixed."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * np.linspace(2.0, 0.1, d)[None, :]
    centers = rng.normal(size=(n_clusters, d)) @ mix.T * 0.7
    labels = rng.integers(0, n_clusters, n)
    noise = (rng.normal(size=(n, d)) * np.linspace(1.0, 0.2, d)) @ mix.T * 0.3
    return (centers[labels] + noise).astype(np.float32)


@pytest.fixture(scope="module")
def faiss_single_thread():
    """Run faiss single-threaded here: OpenMP spin-waiting makes it several times slower on a busy 2-core box."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="session")
def make_clustered():
    """The :func:`clustered` generator, for tests that need their own sizes."""
    return clustered


@pytest.fixture(scope="session")
def contract_data() -> dict[str, np.ndarray]:
    X = clustered(N_TRAIN + 300, D, seed=0)
    rng = np.random.default_rng(1)
    return {"train": X[:N_TRAIN], "items": X[N_TRAIN:], "queries": rng.normal(size=(5, D)).astype(np.float32)}


_FITTED: dict[str, object] = {}


@pytest.fixture(scope="session")
def fitted(contract_data):
    """``fitted(spec)`` -> codec fitted on the contract training set with seed 0 (cached)."""

    def get(spec: str):
        if spec not in _FITTED:
            _FITTED[spec] = make_codec(spec).fit(contract_data["train"], seed=0)
        return _FITTED[spec]

    return get
