"""Cold start: SYNTHETIC item metadata, the content tower, and the cold-start evaluation (small data)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelpack.data import synthetic_interactions, train_test_split
from reelpack.data.metadata import ItemMetadata, replay_synthetic_latents, synthetic_item_metadata
from reelpack.errors import (
    DimensionMismatchError,
    DTypeError,
    EmptyInputError,
    InvalidInputError,
    NonFiniteError,
    ReelpackError,
    SerializationError,
)
from reelpack.models import TwoTowerConfig, train_two_tower
from reelpack.models.content import (
    ContentTower,
    ContentTowerConfig,
    _id_rows,
    cold_start_eval,
    train_content_tower,
)

GEN = dict(n_items=2000, n_clusters=10, popularity_exponent=1.0, seed=3)
TT = TwoTowerConfig(dim=16, epochs=4, batch_size=256, num_threads=1)
CT = ContentTowerConfig(creator_dim=8, category_dim=8, hidden=(32,), epochs=10, num_threads=1)


@pytest.fixture(scope="module")
def inter():
    return synthetic_interactions(n_users=2000, mean_items_per_user=10.0, **GEN)


@pytest.fixture(scope="module")
def meta(inter):
    return synthetic_item_metadata(interactions=inter, **GEN)


@pytest.fixture(scope="module")
def split(inter):
    return train_test_split(inter, seed=0)


@pytest.fixture(scope="module")
def trained(split, meta):
    emb = train_two_tower(split, TT, progress=False, evaluate=False)
    m = meta.take(split.item_ids)
    warm = np.arange(split.n_items) % 10 != 0
    return emb, m, warm, train_content_tower(m, emb.item_emb, warm, CT)


# ----------------------------------------------------------------------------- metadata


def test_replay_matches_synthetic_interactions(inter):
    cluster_of, pop = replay_synthetic_latents(**GEN)
    np.testing.assert_array_equal(cluster_of, inter.meta["item_cluster"])
    assert pop.shape == (GEN["n_items"],) and sorted(pop)[-1] == 1.0


def test_metadata_deterministic_and_labelled(meta):
    again = synthetic_item_metadata(**GEN)
    np.testing.assert_array_equal(again.creator, meta.creator)
    np.testing.assert_array_equal(again.category, meta.category)
    np.testing.assert_array_equal(again.features, meta.features)
    other = synthetic_item_metadata(**GEN, metadata_seed=1)
    assert not np.array_equal(other.category, meta.category)
    assert meta.synthetic and "SYNTHETIC" in meta.label
    assert meta.creator.dtype == np.int64 and meta.category.dtype == np.int64 and meta.features.dtype == np.float32
    assert meta.features.shape == (GEN["n_items"], 4)


def test_metadata_wrong_parameters_rejected(inter):
    with pytest.raises(InvalidInputError, match="item_cluster"):
        synthetic_item_metadata(**{**GEN, "seed": 4}, interactions=inter)


def _purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Share of items whose label's majority cluster is their own cluster."""
    n_l, n_c = labels.max() + 1, clusters.max() + 1
    table = np.zeros((n_l, n_c), np.int64)
    np.add.at(table, (labels, clusters), 1)
    return float(table.max(axis=1).sum() / labels.size)


def test_metadata_informative_but_noisy(meta):
    cl = meta.meta["item_cluster"]
    cat_purity = _purity(meta.category, cl)
    cr_purity = _purity(meta.creator, cl)
    # category_noise=0.25 over 10 categories: ~0.775 agree; creator_noise=0.1: ~0.9
    assert 0.7 < cat_purity < 0.85, cat_purity
    assert 0.85 < cr_purity < 0.95, cr_purity
    # creators are finer than categories
    assert np.unique(meta.creator).size > 4 * np.unique(meta.category).size
    # feature 0 tracks log popularity, the others separate the clusters (between-cluster variance share)
    r = np.corrcoef(meta.features[:, 0], np.log(meta.meta["pop"]))[0, 1]
    assert 0.5 < r < 0.9, r
    f = meta.features[:, 1:].astype(np.float64)
    means = np.stack([f[cl == c].mean(0) for c in range(cl.max() + 1)])
    between = ((means[cl] - f.mean(0)) ** 2).sum() / ((f - f.mean(0)) ** 2).sum()
    assert 0.2 < between < 0.9, between
    # no noise: categories are a function of the cluster
    clean = synthetic_item_metadata(**GEN, category_noise=0.0, creator_noise=0.0)
    assert _purity(clean.category, cl) == 1.0 and _purity(clean.creator, cl) == 1.0


def test_metadata_bad_input():
    n = 5
    ok = dict(creator=np.arange(n), category=np.zeros(n, np.int64), features=np.zeros((n, 2)))
    ItemMetadata(**ok)
    with pytest.raises(DimensionMismatchError, match="lengths must match"):
        ItemMetadata(**{**ok, "category": np.zeros(n + 1, np.int64)})
    with pytest.raises(DimensionMismatchError, match="lengths must match"):
        ItemMetadata(**{**ok, "features": np.zeros((n - 1, 2))})
    with pytest.raises(InvalidInputError, match="non-negative"):
        ItemMetadata(**{**ok, "creator": np.array([0, 1, -2, 3, 4])})
    with pytest.raises(DTypeError, match="integer"):
        ItemMetadata(**{**ok, "category": np.zeros(n)})
    bad = np.zeros((n, 2))
    bad[3, 1] = np.nan
    with pytest.raises(NonFiniteError, match="NaN") as info:
        ItemMetadata(**{**ok, "features": bad})
    assert info.value.rows == [3]
    with pytest.raises(InvalidInputError, match="category_noise"):
        synthetic_item_metadata(**GEN, category_noise=1.5)
    with pytest.raises(InvalidInputError, match="n_clusters"):
        synthetic_item_metadata(n_items=5, n_clusters=10)


# ----------------------------------------------------------------------------- content tower


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=30),
    st.lists(st.booleans(), min_size=0, max_size=30),
)
def test_id_rows_matches_reference(ids, seen):
    ids_a, seen_a = np.array(ids, np.int64), np.array(seen, bool)
    expected = [i + 1 if i < len(seen) and seen[i] else 0 for i in ids]
    assert _id_rows(ids_a, seen_a).tolist() == expected


def test_embed_matches_plain_reference(trained):
    _, m, _, tower = trained
    rows = np.arange(0, len(m), 97)
    got = tower.embed(m.take(rows))
    assert got.dtype == np.float32 and got.shape == (rows.size, 16)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    for j, r in enumerate(rows):  # row-by-row reference of the documented model
        h = np.concatenate(
            [
                tower.creator_table[m.creator[r] + 1],
                tower.category_table[m.category[r] + 1],
                (m.features[r] - tower.feat_mean) / tower.feat_std,
            ]
        ).astype(np.float64)
        for i, (w, b) in enumerate(zip(tower.weights, tower.biases)):
            h = w.astype(np.float64) @ h + b
            if i < len(tower.weights) - 1:
                h = np.maximum(h, 0)
        np.testing.assert_allclose(got[j], h / np.linalg.norm(h), atol=1e-5)


def test_training_is_deterministic(trained):
    emb, m, warm, tower = trained
    again = train_content_tower(m, emb.item_emb, warm, CT)
    for a, b in zip(tower.state().values(), again.state().values()):
        np.testing.assert_array_equal(a, b)
    other = train_content_tower(m, emb.item_emb, warm, dataclasses.replace(CT, seed=1))
    assert not np.array_equal(other.weights[0], tower.weights[0])


def test_unknown_creator_shares_a_row(trained):
    _, m, _, tower = trained
    sub = m.take(np.arange(6))
    big = tower.creator_seen.size
    a = tower.embed(dataclasses.replace(sub, creator=np.full(6, big, np.int64)))
    b = tower.embed(dataclasses.replace(sub, creator=np.full(6, big + 12345, np.int64)))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, tower.embed(sub))


def test_content_tower_fits_held_out_items(trained):
    """Cold rows' content embeddings are closer to their (never-trained-on) ID embeddings than chance."""
    emb, m, warm, tower = trained
    cold = np.flatnonzero(~warm)
    c = tower.embed(m.take(cold))
    v = emb.item_emb[cold] / np.linalg.norm(emb.item_emb[cold], axis=1, keepdims=True)
    own = (c * v).sum(1).mean()
    shuffled = (c * v[np.random.default_rng(0).permutation(cold.size)]).sum(1).mean()
    assert own > shuffled + 0.1, (own, shuffled)  # an input-blind tower gives own ~= shuffled


def test_save_load_round_trip(trained, tmp_path):
    _, m, _, tower = trained
    p = tmp_path / "tower.npz"
    tower.save(p)
    back = ContentTower.load(p)
    assert back.config == tower.config
    np.testing.assert_array_equal(back.embed(m), tower.embed(m))
    with np.load(p, allow_pickle=False) as z:  # plain arrays, no pickle
        assert all(z[k].dtype != object for k in z.files)


def test_corrupt_state_rejected(trained, tmp_path):
    _, _, _, tower = trained
    st0 = tower.state()
    cases = [
        {k: v for k, v in st0.items() if k != "w0"},
        {**st0, "w1": st0["w1"][:, :-1]},
        {**st0, "feat_std": np.zeros_like(st0["feat_std"])},
        {**st0, "format_version": np.array([99], np.int64)},
        {**st0, "config": np.frombuffer(b"{not json", np.uint8)},
        {**st0, "creator_table": st0["creator_table"].astype(np.float64)},
        {**st0, "category_table": np.full_like(st0["category_table"], np.nan)},
        {**st0, "extra": np.zeros(1)},
    ]
    for bad in cases:
        with pytest.raises(SerializationError):
            ContentTower.from_state(bad)
    p = tmp_path / "junk.npz"
    p.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(SerializationError):
        ContentTower.load(p)


def test_train_bad_input(trained):
    emb, m, warm, _ = trained
    with pytest.raises(DimensionMismatchError, match="rows"):
        train_content_tower(m, emb.item_emb[:-1], warm, CT)
    with pytest.raises(EmptyInputError):
        train_content_tower(m, emb.item_emb, np.array([3]), CT)
    with pytest.raises(InvalidInputError, match="warm_items"):
        train_content_tower(m, emb.item_emb, np.array([-1, 2]), CT)
    bad = emb.item_emb.copy()
    bad[np.flatnonzero(warm)[0]] = np.nan
    with pytest.raises(NonFiniteError):
        train_content_tower(m, bad, warm, CT)
    huge = dataclasses.replace(m, creator=m.creator + (1 << 40))
    with pytest.raises(InvalidInputError, match="re-index"):
        train_content_tower(huge, emb.item_emb, warm, CT)
    with pytest.raises(InvalidInputError, match="loss"):
        ContentTowerConfig(loss="mse")
    with pytest.raises(InvalidInputError, match="unknown_dropout"):
        ContentTowerConfig(unknown_dropout=1.0)
    tower = train_content_tower(m, emb.item_emb, warm, CT)
    with pytest.raises(DimensionMismatchError, match="numeric features"):
        tower.embed(ItemMetadata(m.creator, m.category, m.features[:, :2]))
    assert issubclass(DimensionMismatchError, ReelpackError)


# ----------------------------------------------------------------------------- evaluation


def test_cold_start_eval_beats_baselines(split, meta):
    res = cold_start_eval(split, meta.take(split.item_ids), cold_fraction=0.15, seed=0, two_tower=TT, content=CT)
    assert res.cold_items.size == round(0.15 * split.n_items)
    content, rand = res.get("content", "cold-only"), res.get("random", "cold-only")
    assert content > rand + 0.2, res.table()
    assert res.get("content", "full/cold") > res.get("random", "full/cold") + 0.1, res.table()
    assert res.get("popularity", "full/cold") == 0.0  # cold items score 0 and never surface
    assert res.get("oracle", "cold-only") > rand + 0.2
    assert "content" in res.table() and res.info["synthetic"]


def test_cold_start_eval_fails_without_informative_metadata(split, meta):
    """Shuffling the metadata rows breaks the item <-> content link: the tower falls back to chance."""
    m = meta.take(split.item_ids)
    perm = np.random.default_rng(0).permutation(len(m))
    res = cold_start_eval(split, m.take(perm), cold_fraction=0.15, seed=0, two_tower=TT, content=CT, oracle=False)
    assert res.get("content", "cold-only") < res.get("random", "cold-only") + 0.1, res.table()


def test_cold_start_eval_bad_input(split, meta):
    with pytest.raises(DimensionMismatchError, match="take"):
        cold_start_eval(split, meta, two_tower=TT, content=CT)
    with pytest.raises(InvalidInputError, match="cold_fraction"):
        cold_start_eval(split, meta.take(split.item_ids), cold_fraction=1.5, two_tower=TT, content=CT)
