"""Packet-loss simulator and degradation policy."""

from __future__ import annotations

import numpy as np
import pytest

from reelpack.codecs import make_codec
from reelpack.errors import DimensionMismatchError, DTypeError, InvalidInputError, ReelpackError
from reelpack.bench.robustness import degrade, degraded_scores, mean_run_length, read_degraded, simulate_loss
from reelpack.format import PackReader
from reelpack.format import write_pack
from reelpack.format.parity import parity_groups


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2])
def test_iid_rate(rate):
    mask = simulate_loss(200_000, rate, seed=1)
    assert mask.dtype == bool and mask.shape == (200_000,)
    assert abs(mask.mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / 200_000)
    assert mean_run_length(mask) < 1.0 / (1 - rate) + 0.05


@pytest.mark.parametrize("rate,burst", [(0.01, 4.0), (0.05, 4.0), (0.2, 8.0), (0.05, 1.0)])
def test_gilbert_elliott_rate_and_bursts(rate, burst):
    mask = simulate_loss(400_000, rate, model="gilbert-elliott", seed=2, burst_length=burst)
    assert abs(mask.mean() - rate) < 0.15 * rate
    # with loss_in_bad=1, loss_in_good=0 a lost run is a Bad run: mean length = burst_length
    assert abs(mean_run_length(mask) - burst) < 0.1 * burst
    assert mean_run_length(mask) > mean_run_length(simulate_loss(400_000, rate, seed=2)) or burst == 1.0


def test_gilbert_elliott_partial_loss_states():
    mask = simulate_loss(400_000, 0.1, model="gilbert-elliott", seed=3, burst_length=10, loss_in_bad=0.5, loss_in_good=0.01)
    assert abs(mask.mean() - 0.1) < 0.015


def test_simulator_edges_and_seed():
    assert simulate_loss(0, 0.5).shape == (0,)
    assert not simulate_loss(100, 0.0, seed=0).any()
    assert simulate_loss(100, 1.0, seed=0).all()
    assert simulate_loss(100, 1.0, model="gilbert-elliott", seed=0).all()
    np.testing.assert_array_equal(simulate_loss(1000, 0.1, "gilbert-elliott", seed=5),
                                  simulate_loss(1000, 0.1, "gilbert-elliott", seed=5))  # fmt: skip


@pytest.mark.parametrize("kwargs", [dict(n_blocks=-1, rate=0.1), dict(n_blocks=10, rate=1.5), dict(n_blocks=10, rate="x"),
                                    dict(n_blocks=10, rate=0.1, model="poisson"),
                                    dict(n_blocks=10, rate=0.1, model="gilbert-elliott", burst_length=0.5),
                                    dict(n_blocks=10, rate=0.5, model="gilbert-elliott", loss_in_bad=0.3),
                                    dict(n_blocks=2.5, rate=0.1)])  # fmt: skip
def test_simulator_bad_input(kwargs):
    with pytest.raises(InvalidInputError):
        simulate_loss(**kwargs)


def test_degrade_policy_falls_back_and_reports():
    coarse = np.ones((5, 2), np.float32)
    fine = np.full((5, 2), 2.0, np.float32)
    a0 = np.array([True, True, False, False, True])
    a1 = np.array([True, False, True, False, False])
    out = degrade([coarse, fine], [a0, a1], item_ids=np.array([10, 11, 12, 13, 14]))
    assert out.level.tolist() == [1, 0, 1, -1, 0]
    assert out.missing_rows.tolist() == [3] and out.missing_item_ids.tolist() == [13]
    assert out.counts() == {-1: 1, 0: 2, 1: 2}
    s = degraded_scores(np.array([[1.0, 0.0]], np.float32), out)
    assert s[0].tolist() == [2.0, 1.0, 2.0, -np.inf, 1.0]


def test_degrade_bad_input():
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(InvalidInputError):
        degrade([x], [])
    with pytest.raises(DTypeError):
        degrade([x], [np.ones(3, np.int8)])
    with pytest.raises(DimensionMismatchError):
        degrade([x, np.zeros((3, 4), np.float32)], [np.ones(3, bool)] * 2)
    with pytest.raises(DimensionMismatchError):
        degrade([x], [np.ones(4, bool)])
    with pytest.raises(ReelpackError):
        degrade([np.full((3, 2), np.nan)], [np.ones(3, bool)])
    with pytest.raises(InvalidInputError):
        read_degraded("nope")


def test_read_degraded_two_layer_pack(tmp_path):
    rng = np.random.default_rng(0)
    n, d = 400, 16
    X = rng.normal(size=(n, d)).astype(np.float32)
    c0 = make_codec("simhash32").fit(X)
    c1 = make_codec("sq8").fit(X)
    path = write_pack(tmp_path / "two.rpak", np.arange(n), [(c0, c0.encode(X)), (c1, c1.encode(X))],
                      parity={1: (4, 1)}, items_per_block=[40, 10])  # fmt: skip
    with PackReader(path) as r:
        nb0, nb1 = r.layers[0].n_blocks, r.layers[1].n_blocks
        lost0 = np.zeros(nb0, bool)
        lost0[2] = True  # items 80..119 lose layer 0 (no parity on layer 0)
        g = parity_groups(nb1, 4)
        lost1 = np.zeros(nb1, bool)
        lost1[g[0][[0, 2]]] = True  # blocks 0 and 20: 2 lost in a group with m=1, unrecoverable
        lost1[g[8][:2]] = True  # blocks 8 and 18: unrecoverable; items 80..89 lose both layers
        lost1[g[3][0]] = True  # block 3, alone in its group -> recovered
        items, recs = read_degraded(r, lost={0: lost0, 1: lost1})
        assert g[0][[0, 2]].tolist() == [0, 20] and g[8][:2].tolist() == [8, 18]
        assert recs[1].recovered_blocks == [3]
        assert recs[1].unrecoverable_blocks == [0, 8, 18, 20] and recs[0].unrecoverable_blocks == [2]
        expected_missing = np.arange(80, 90)
        np.testing.assert_array_equal(items.missing_item_ids, expected_missing)
        fallback_rows = np.concatenate([np.arange(b * 10, b * 10 + 10) for b in (0, 18, 20)])
        assert (items.level[fallback_rows] == 0).all()
        np.testing.assert_allclose(items.vectors[fallback_rows], c0.decode(c0.encode(X[fallback_rows])), rtol=1e-6, atol=1e-6)
        fine_rows = np.setdiff1d(np.arange(n), np.concatenate([fallback_rows, expected_missing]))
        assert (items.level[fine_rows] == 1).all()
        assert items.counts() == {-1: 10, 0: 30, 1: 360}
        np.testing.assert_allclose(items.vectors[fine_rows], c1.decode(c1.encode(X[fine_rows])), rtol=1e-6)
        scores = degraded_scores(X[:3], items)
        assert np.isneginf(scores[:, expected_missing]).all() and np.isfinite(scores[:, fine_rows]).all()
        # without parity the lone lost block is not recovered either
        items2, _ = read_degraded(r, lost={0: lost0, 1: lost1}, use_parity=False)
        assert (items2.level[30:40] == 0).all()
