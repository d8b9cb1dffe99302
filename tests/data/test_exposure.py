"""Exposure counts and weights: checked against a brute-force NumPy ranking, and bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelpack.data import DEFAULT_EXPOSURE_K, exposure_counts, exposure_weights, weights_from_exposure
from reelpack.data import exposure as exposure_module
from reelpack.errors import DimensionMismatchError, DTypeError, EmptyInputError, InvalidInputError, NonFiniteError


def reference_counts(U: np.ndarray, X: np.ndarray, k: int) -> np.ndarray:
    """Per item, the users whose top-k (full sort, distinct scores) holds it."""
    counts = np.zeros(len(X), np.int64)
    for u in U.astype(np.float64):
        counts[np.argsort(-(X.astype(np.float64) @ u), kind="stable")[:k]] += 1
    return counts


@settings(max_examples=40, deadline=None)
@given(n_users=st.integers(1, 30), n_items=st.integers(1, 40), d=st.integers(1, 6), k=st.integers(1, 50),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_counts_match_a_full_sort(n_users, n_items, d, k, seed):
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(n_users, d)).astype(np.float32)
    X = rng.normal(size=(n_items, d)).astype(np.float32)
    got = exposure_counts(U, X, k)
    assert got.dtype == np.int64 and got.shape == (n_items,)
    assert got.sum() == n_users * min(k, n_items)
    assert np.array_equal(got, reference_counts(U, X, k))  # continuous scores: no ties


def test_batches_give_the_same_counts(monkeypatch):
    rng = np.random.default_rng(1)
    U, X = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    whole = exposure_counts(U, X, 5)
    monkeypatch.setattr(exposure_module, "_BLOCK_ENTRIES", 31)  # one user per batch
    assert np.array_equal(exposure_counts(U, X, 5), whole)


def test_weights_are_counts_plus_one_to_the_beta():
    rng = np.random.default_rng(2)
    U, X = rng.normal(size=(20, 4)).astype(np.float32), rng.normal(size=(25, 4)).astype(np.float32)
    c = exposure_counts(U, X, 3).astype(np.float64)
    assert np.allclose(exposure_weights(U, X, 3, 1.0), c + 1)
    assert np.allclose(exposure_weights(U, X, 3, 0.5), np.sqrt(c + 1))
    assert np.all(exposure_weights(U, X, 3, 0.0) == 1.0)
    assert exposure_weights(U, X).shape == (25,) and DEFAULT_EXPOSURE_K >= 1


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3", None])
def test_bad_k(k):
    with pytest.raises(InvalidInputError, match="k"):
        exposure_counts(np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), k)


@pytest.mark.parametrize("beta", [-0.1, 99.0, "x", None])
def test_bad_beta(beta):
    with pytest.raises(InvalidInputError, match="beta"):
        exposure_weights(np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), 2, beta)


def test_bad_embeddings():
    X = np.ones((4, 3), np.float32)
    with pytest.raises(DimensionMismatchError):
        exposure_counts(np.ones((2, 5), np.float32), X, 2)
    with pytest.raises(EmptyInputError):
        exposure_counts(np.ones((0, 3), np.float32), X, 2)
    with pytest.raises(NonFiniteError):
        exposure_counts(np.full((2, 3), np.nan, np.float32), X, 2)
    with pytest.raises(DTypeError):
        exposure_counts(np.ones((2, 3), np.complex64), X, 2)


def test_weights_from_exposure_refuses_bad_counts_and_beta():
    assert np.array_equal(weights_from_exposure(np.array([0, 3]), 1.0), [1.0, 4.0])
    for counts in (np.array([-1, 2]), np.array([np.nan]), np.ones((2, 2)), np.array(["x"])):
        with pytest.raises(InvalidInputError, match="counts"):
            weights_from_exposure(counts, 1.0)
    with pytest.raises(InvalidInputError, match="beta"):
        weights_from_exposure(np.array([1, 2]), 9.0)
