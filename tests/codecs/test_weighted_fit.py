"""Weighted codec training (``Codec.fit(..., weights=)``, :func:`reelpack.codecs.base.weighted_rows`)."""

from __future__ import annotations

import numpy as np
import pytest

from reelpack.codecs import make_codec
from reelpack.codecs.base import check_weights, weighted_rows
from reelpack.data import MAX_POPULARITY_BETA, popularity_weights
from reelpack.errors import DimensionMismatchError, InvalidInputError


def _rows(n=600, d=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_weighted_rows_are_seeded_and_follow_the_weights():
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    w = np.zeros(20)
    w[[2, 5]] = [1.0, 3.0]
    a = weighted_rows(X, w, seed=7)
    assert a.shape == X.shape and a.dtype == np.float32
    assert np.array_equal(a, weighted_rows(X, w, seed=7))  # seeded
    drawn = set(a[:, 0].astype(int) // 2)
    assert drawn <= {2, 5}  # zero-weight rows are never drawn
    big = weighted_rows(np.arange(4000, dtype=np.float32)[:, None] % 2, np.where(np.arange(4000) % 2, 3.0, 1.0), 0)
    assert 0.70 < big.mean() < 0.80  # P(odd row) = 3 / 4


@pytest.mark.parametrize(
    "weights, error, match",
    [
        (np.ones(5), DimensionMismatchError, "weights has 5 values, X has 20 rows"),
        (np.ones((20, 1)), InvalidInputError, "1-D"),
        (-np.ones(20), InvalidInputError, "finite and >= 0"),
        (np.full(20, np.nan), InvalidInputError, "finite and >= 0"),
        (np.zeros(20), InvalidInputError, "positive, finite sum"),
        (np.full(20, 1e308), InvalidInputError, "positive, finite sum"),
        (["a"] * 20, InvalidInputError, "float array"),
    ],
)
def test_bad_weights_are_typed_errors(weights, error, match):
    with pytest.raises(error, match=match):
        make_codec("pq4").fit(_rows(20, 8), weights=weights)


def test_weights_spend_the_error_where_the_weight_is():
    """A codec trained with all the weight on one half of the rows reconstructs that half better than the uniform
    fit does, and the other half worse."""
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(size=(1000, 8)) + 4.0, rng.normal(size=(1000, 8)) - 4.0]).astype(np.float32)
    w = np.r_[np.full(1000, 50.0), np.ones(1000)]
    for spec in ("pq2", "rq2"):
        uniform = make_codec(spec).fit(X, seed=0)
        weighted = make_codec(spec).fit(X, seed=0, weights=w)

        def err(c, rows):
            return float(((c.decode(c.encode(X[rows])) - X[rows]) ** 2).sum(1).mean())

        heavy, light = slice(0, 1000), slice(1000, 2000)
        assert err(weighted, heavy) < err(uniform, heavy), spec
        assert err(weighted, light) > err(uniform, light), spec


def test_popularity_weights():
    counts = np.array([0, 1, 3, 8])
    assert np.array_equal(popularity_weights(counts, 0.0), np.ones(4))
    assert np.array_equal(popularity_weights(counts, 1.0), [1.0, 2.0, 4.0, 9.0])
    assert np.allclose(popularity_weights(counts, 0.5), [1.0, 2**0.5, 2.0, 3.0])
    for bad_beta in (-0.1, MAX_POPULARITY_BETA + 1, float("nan")):
        with pytest.raises(InvalidInputError, match="popularity beta"):
            popularity_weights(counts, bad_beta)
    for bad in (np.array([-1, 2]), np.zeros((2, 2)), np.array([]), np.array([1.0, np.inf])):
        with pytest.raises(InvalidInputError, match="item_counts"):
            popularity_weights(bad, 1.0)
    with pytest.raises(InvalidInputError):
        popularity_weights(["x"], 1.0)


def test_check_weights_names_the_weights_and_copies():
    src = np.arange(1, 4, dtype=np.int32)
    w = check_weights(src, 3)
    assert w.dtype == np.float64 and w.flags.c_contiguous and np.array_equal(w, [1.0, 2.0, 3.0])
    w[0] = 9.0
    assert src[0] == 1  # a copy
    with pytest.raises(DimensionMismatchError, match="layer weights has 2 values, the catalog has 3 rows"):
        check_weights(np.ones(2), 3, "layer weights", "the catalog")
    with pytest.raises(InvalidInputError, match="layer weights must have a positive, finite sum"):
        check_weights(np.zeros(3), 3, "layer weights")


# ------------------------------------------------------------------------------------------ BLAS threads
def _unit(X: np.ndarray) -> np.ndarray:
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def test_fit_runs_under_one_blas_thread(monkeypatch):
    """LAPACK's eigh / solve sum in a thread-count-dependent order, so every fit runs with one BLAS thread."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from reelpack.codecs.residual import ResidualCodec

    seen: list[list[int]] = []
    real_fit = ResidualCodec._fit

    def spy(self, X, seed):
        seen.append([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"])
        return real_fit(self, X, seed)

    monkeypatch.setattr(ResidualCodec, "_fit", spy)
    X = _unit(np.random.default_rng(0).standard_normal((600, 32)))
    with threadpool_limits(limits=2, user_api="blas"):
        before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        make_codec("rq2-p16-n").fit(X, seed=0)
        after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert seen and seen[0] and all(t == 1 for t in seen[0])
    assert after == before  # the caller's setting is restored afterwards


def test_fit_bytes_do_not_depend_on_blas_threads():
    from threadpoolctl import threadpool_limits

    X = _unit(np.random.default_rng(1).standard_normal((2000, 96)))
    w = np.random.default_rng(2).integers(1, 50, 2000).astype(np.float64)
    out = []
    for t in (1, 2):
        with threadpool_limits(limits=t, user_api="blas"):
            out.append(make_codec("rq4-r-p48-n").fit(X, seed=3, weights=w).to_bytes())
    assert out[0] == out[1]
