"""HNSWIndex (usearch, inner product): recall against a NumPy brute-force oracle, save/load, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from reelpack.errors import (
    DataNotFoundError,
    DimensionMismatchError,
    InvalidInputError,
    InvalidKError,
    NonFiniteError,
    SerializationError,
)
from reelpack.catalog.ann import HNSWIndex, exact_top_k


def clustered(n: int, d: int, seed: int, n_clusters: int = 32) -> np.ndarray:
    """float32 [n, d] unit rows: cluster centre + noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d))
    X = centres[rng.integers(0, n_clusters, n)] + 0.8 * rng.standard_normal((n, d))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    A = clustered(3000 + 100, 32, seed=0)
    X, Q = A[:3000], A[3000:]
    ids = np.random.default_rng(1).permutation(100_000)[:3000].astype(np.int64) + 7  # not row numbers
    index = HNSWIndex.build(X, ids, connectivity=16, expansion_add=64, expansion_search=64, seed=0)
    return X, Q, ids, index


def test_exact_top_k_matches_argsort():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((500, 8)).astype(np.float32)
    Q = rng.standard_normal((7, 8)).astype(np.float32)
    ref = np.argsort(-(Q @ X.T), axis=1, kind="stable")[:, :20]
    assert np.array_equal(exact_top_k(X, Q, 20, chunk=3), ref)


def test_recall_at_10_on_clustered_data(data):
    X, Q, ids, index = data
    assert index.n_items == 3000 and index.dim == 32
    assert index.recall_at(X, Q, k=10) >= 0.95
    # recall_at is a real measurement: a far too small search list on random queries loses neighbours
    index.expansion_search = 1
    try:
        rnd = np.random.default_rng(5).standard_normal((100, 32)).astype(np.float32)
        assert index.recall_at(X, rnd, k=50) < 0.95
    finally:
        index.expansion_search = 64


def test_search_returns_item_ids_and_exact_inner_products(data):
    X, Q, ids, index = data
    got_ids, scores = index.search(Q, 10)
    assert got_ids.shape == scores.shape == (100, 10)
    assert got_ids.dtype == np.int64 and scores.dtype == np.float32
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    row_of = {int(i): r for r, i in enumerate(ids)}
    rows = np.vectorize(row_of.__getitem__)(got_ids)
    ref = np.einsum("qd,qkd->qk", Q, X[rows])
    np.testing.assert_allclose(scores, ref, atol=1e-5)
    # compare scores, not ids, against brute force (ties may reorder ids)
    exact = np.sort(Q @ X.T, axis=1)[:, ::-1][:, :10]
    assert np.mean(np.abs(scores - exact) < 1e-5) > 0.95


def test_single_query_vector(data):
    X, Q, ids, index = data
    one_ids, one_scores = index.search(Q[0], 5)
    batch_ids, batch_scores = index.search(Q[:1], 5)
    assert one_ids.shape == (1, 5)
    np.testing.assert_array_equal(one_ids, batch_ids)
    np.testing.assert_allclose(one_scores, batch_scores)


def test_save_load_round_trip(data, tmp_path):
    X, Q, ids, index = data
    path = index.save(tmp_path / "sub" / "index.usearch")
    assert path.is_file() and not list(path.parent.glob(".*tmp"))
    for view in (True, False):
        loaded = HNSWIndex.load(path, view=view, expansion_search=64)
        assert (loaded.n_items, loaded.dim, loaded.expansion_search) == (3000, 32, 64)
        assert loaded.ids is None
        a_ids, a_scores = index.search(Q, 10)
        b_ids, b_scores = loaded.search(Q, 10)
        np.testing.assert_allclose(a_scores, b_scores, atol=1e-6)
        assert np.mean(a_ids == b_ids) > 0.99
        assert loaded.recall_at(X, Q, 10, ids=ids) >= 0.95
        with pytest.raises(InvalidInputError, match="ids"):
            loaded.recall_at(X, Q, 10)
        loaded.expansion_search = 128
        assert loaded.expansion_search == 128


def test_build_is_deterministic(tmp_path):
    X = clustered(400, 16, seed=2)
    ids = np.arange(400) * 3
    a = HNSWIndex.build(X, ids, seed=4).save(tmp_path / "a.usearch").read_bytes()
    b = HNSWIndex.build(X, ids, seed=4).save(tmp_path / "b.usearch").read_bytes()
    assert a == b


def test_bad_input(data, tmp_path):
    X, Q, ids, index = data
    bad = X[:50].copy()
    bad[3, 1] = np.nan
    with pytest.raises(NonFiniteError):
        HNSWIndex.build(bad, np.arange(50))
    with pytest.raises(InvalidInputError, match="unique"):
        HNSWIndex.build(X[:50], np.zeros(50, dtype=np.int64))
    with pytest.raises(DimensionMismatchError):
        HNSWIndex.build(X[:50], np.arange(49))
    with pytest.raises(InvalidInputError, match="non-negative"):
        HNSWIndex.build(X[:50], np.arange(50) - 1)
    with pytest.raises(InvalidInputError, match="connectivity"):
        HNSWIndex.build(X[:50], np.arange(50), connectivity=0)
    with pytest.raises(DimensionMismatchError):
        index.search(np.ones((2, 31), np.float32), 5)
    with pytest.raises(InvalidKError):
        index.search(Q, 0)
    with pytest.raises(InvalidKError):
        index.search(Q, 3001)
    with pytest.raises(InvalidInputError, match="expansion_search"):
        index.expansion_search = 0
    with pytest.raises(DataNotFoundError):
        HNSWIndex.load(tmp_path / "missing.usearch")
    junk = tmp_path / "junk.usearch"
    junk.write_bytes(b"not an index" * 100)
    with pytest.raises(SerializationError):
        HNSWIndex.load(junk)
    good = index.save(tmp_path / "good.usearch").read_bytes()
    cut = tmp_path / "cut.usearch"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(SerializationError):
        HNSWIndex.load(cut)
