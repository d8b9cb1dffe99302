"""Reverse water-filling, the Gaussian distortion bound, codec MSE and the rate-distortion table."""

from __future__ import annotations

import numpy as np
import pytest

from reelpack.codecs import make_codec
from reelpack.errors import InvalidInputError
from reelpack.metrics.ratedistortion import (
    codec_mse,
    gaussian_distortion_bound,
    pca_variances,
    rd_table,
    reverse_water_filling,
    water_level,
)


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    """Anisotropic Gaussian clusters float32 [n, d] (variance decaying across mixed directions)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * np.linspace(2.0, 0.1, d)[None, :]
    centers = rng.normal(size=(16, d)) @ mix.T
    noise = rng.normal(size=(n, d)) @ mix.T * 0.3
    return (centers[rng.integers(0, 16, n)] + noise).astype(np.float32)


def water_level_bisection(var: np.ndarray, total: float) -> float:
    """Plain bisection on theta for sum max(0, 0.5 log2(var / theta)) = total."""
    lo, hi = 1e-300, float(var.max())
    for _ in range(120):  # the log-width halves each step: ~700 / 2^120
        mid = np.sqrt(lo * hi)
        rate = np.maximum(0.0, 0.5 * np.log2(var[var > 0] / mid)).sum()
        lo, hi = (mid, hi) if rate > total else (lo, mid)
    return hi


def test_rates_sum_to_the_budget_and_match_bisection():
    rng = np.random.default_rng(0)
    for _ in range(40):
        d = int(rng.integers(1, 30))
        var = rng.gamma(0.7, size=d) * 10.0 ** rng.uniform(-4, 4)
        var[rng.random(d) < 0.15] = 0.0
        if not var.any():
            var[0] = 1.0
        total = float(rng.uniform(0, 10 * d))
        rates = reverse_water_filling(var, total)
        assert rates.min() >= 0 and abs(rates.sum() - total) < 1e-9 * max(1.0, total)
        theta = water_level(var, total)
        np.testing.assert_allclose(theta, water_level_bisection(var, total), rtol=1e-9)
        assert (rates[var <= theta] == 0).all()
        active = var > theta
        np.testing.assert_allclose(rates[active], 0.5 * np.log2(var[active] / theta), rtol=1e-12)


def test_known_cases():
    # equal variances: equal rates, D = d * var * 4^(-R/d)
    np.testing.assert_allclose(reverse_water_filling(np.full(4, 2.0), 12), [3, 3, 3, 3])
    assert gaussian_distortion_bound(np.full(4, 2.0), 12) == pytest.approx(4 * 2.0 * 4.0**-3)
    # var (16, 1) at 1 bit: theta = 4 > 1, so only the first gets rate 1 and D = 4 + 1
    np.testing.assert_allclose(reverse_water_filling(np.array([16.0, 1.0]), 1), [1, 0])
    assert water_level(np.array([16.0, 1.0]), 1) == pytest.approx(4.0)
    assert gaussian_distortion_bound(np.array([16.0, 1.0]), 1) == pytest.approx(5.0)
    # at 5 bits both are active: theta = sqrt(16) * 2^-5 = 1/8, rates (2.5+... ) summing to 5
    np.testing.assert_allclose(reverse_water_filling(np.array([16.0, 1.0]), 5), [3.5, 1.5])
    # zero budget: D is the total variance
    assert gaussian_distortion_bound(np.array([3.0, 1.0, 0.0]), 0) == pytest.approx(4.0)
    np.testing.assert_array_equal(reverse_water_filling(np.array([3.0, 1.0, 0.0]), 0), [0, 0, 0])


def test_bound_equals_per_dimension_form_and_decreases():
    var = np.random.default_rng(1).gamma(1.0, size=12)
    prev = np.inf
    for total in np.linspace(0, 60, 13):
        rates = reverse_water_filling(var, total)
        bound = gaussian_distortion_bound(var, total)
        assert bound == pytest.approx(float((var * 2.0 ** (-2 * rates)).sum()), rel=1e-9)
        assert bound < prev or total == 0
        prev = bound


def test_bad_inputs():
    with pytest.raises(InvalidInputError, match="non-negative"):
        reverse_water_filling(np.array([1.0, -1.0]), 2)
    with pytest.raises(InvalidInputError, match=">= 0"):
        gaussian_distortion_bound(np.ones(3), -1)
    with pytest.raises(InvalidInputError, match="all variances are 0"):
        water_level(np.zeros(3), 4)
    with pytest.raises(InvalidInputError, match="number"):
        water_level(np.ones(3), "4")


def test_codec_mse_and_pca_variances():
    X = _clustered(700, 16, seed=2)
    codec = make_codec("sq8").fit(X)
    ref = float(((codec.decode(codec.encode(X)).astype(np.float64) - X) ** 2).sum(1).mean())
    assert codec_mse(codec, X) == pytest.approx(ref, rel=1e-6)
    var = pca_variances(X)
    assert (np.diff(var) <= 0).all()
    assert var.sum() == pytest.approx(float(X.astype(np.float64).var(0).sum()), rel=1e-6)


def test_rd_table_rows():
    X = _clustered(1200, 16, seed=3)
    rows = rd_table(X[:900], ["sq4", "wsq8", "usq8", "pq8", "fp16"], seed=0, X_eval=X[900:])
    assert [r["spec"] for r in rows] == ["sq4", "wsq8", "usq8", "pq8", "fp16"]
    by = {r["spec"]: r for r in rows}
    assert by["wsq8"]["bytes_per_vector"] == 8 and by["wsq8"]["bits_per_dim"] == 4.0
    assert by["fp16"]["bits_per_dim"] == 16.0
    for r in rows:
        assert set(r) == {"spec", "bytes_per_vector", "bits_per_dim", "mse", "gaussian_bound", "mse_over_bound"}
        assert r["mse_over_bound"] == pytest.approx(r["mse"] / r["gaussian_bound"])
    assert by["wsq8"]["gaussian_bound"] == by["usq8"]["gaussian_bound"] == by["sq4"]["gaussian_bound"]
    assert by["wsq8"]["mse"] < by["usq8"]["mse"]
