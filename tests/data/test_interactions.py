import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelpack.data import (
    DATA_ENV_VAR,
    load_interactions,
    resolve_data_path,
    synthetic_interactions,
    train_test_split,
)
from reelpack.errors import DataFormatError, DataNotFoundError, InvalidInputError, ReelpackError


def write(tmp_path, text, name="inter.txt"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_loads_users_items_in_file_order_and_dedupes(tmp_path):
    p = write(tmp_path, "0 5 3 5 9\n1\n\n7 2\n")
    inter = load_interactions(p)
    assert inter.user_ids.tolist() == [0, 1, 7]
    assert inter.indptr.tolist() == [0, 3, 3, 4]
    assert inter.items.tolist() == [5, 3, 9, 2]
    assert not inter.synthetic and inter.source == str(p)
    assert len(inter.data_hash) == 64


def test_env_var_is_used_when_no_path(tmp_path, monkeypatch):
    p = write(tmp_path, "0 1 2\n")
    monkeypatch.setenv(DATA_ENV_VAR, str(p))
    assert load_interactions().n_interactions == 2
    monkeypatch.delenv(DATA_ENV_VAR)
    assert resolve_data_path(None) is None
    with pytest.raises(DataNotFoundError):
        load_interactions()


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("0 1 2\n1 x 3\n", 2, "'x' is not an integer"),
        ("0 1 2\n1 2\n2 -4\n", 3, "non-negative"),
        ("0 1\n0 2\n", 2, "more than one line"),
        ("0 1\n1 99999999999\n", 2, "exceeds"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, text, line, words):
    p = write(tmp_path, text)
    with pytest.raises(DataFormatError) as info:
        load_interactions(p)
    assert info.value.line == line and info.value.path == str(p)
    assert f"{p}:{line}" in str(info.value) and words in str(info.value)
    assert isinstance(info.value, ReelpackError) and isinstance(info.value, ValueError)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataFormatError, match="no users"):
        load_interactions(write(tmp_path, "\n\n"))
    with pytest.raises(DataFormatError, match="no interactions"):
        load_interactions(write(tmp_path, "0\n1\n", "b.txt"))
    with pytest.raises(DataNotFoundError, match="not found"):
        load_interactions(tmp_path / "nope.txt")
    with pytest.raises(DataFormatError, match="non-ASCII"):
        load_interactions(write(tmp_path, "0 1\n1 \u00e9\n", "c.txt"))


def test_split_is_deterministic_and_partitions_each_user():
    inter = synthetic_interactions(n_users=300, n_items=200, n_clusters=5, seed=3)
    a = train_test_split(inter, seed=7)
    b = train_test_split(inter, seed=7)
    c = train_test_split(inter, seed=8)
    assert np.array_equal(a.train_items, b.train_items) and np.array_equal(a.test_items, b.test_items)
    assert not np.array_equal(a.test_items, c.test_items)
    counts = np.diff(inter.indptr)
    n_train, n_test = np.diff(a.train_indptr), np.diff(a.test_indptr)
    # nothing is dropped here unless a test item never occurs in train
    assert (n_train + n_test + 0 <= counts).all()
    for u in range(inter.n_users):
        raw = set(inter.items[inter.indptr[u] : inter.indptr[u + 1]].tolist())
        tr = set(a.item_ids[a.train_items[a.train_indptr[u] : a.train_indptr[u + 1]]].tolist())
        te = set(a.item_ids[a.test_items[a.test_indptr[u] : a.test_indptr[u + 1]]].tolist())
        assert tr | te <= raw and not (tr & te)
        assert len(tr) >= 1
    frac = n_test.sum() / (n_train.sum() + n_test.sum())
    assert 0.15 < frac < 0.25
    assert a.item_counts.sum() == a.train_items.size


def test_split_drops_test_items_unseen_in_train(tmp_path):
    inter = load_interactions(write(tmp_path, "0 1 2\n1 1 2\n"))
    s = train_test_split(inter, test_fraction=0.5, seed=0)
    assert s.n_test_dropped + s.test_items.size == 2
    assert set(s.item_ids.tolist()) <= {1, 2}


def test_split_bad_fraction():
    inter = synthetic_interactions(n_users=20, n_items=30, n_clusters=3)
    for f in (0.0, 1.0, -0.1):
        with pytest.raises(InvalidInputError):
            train_test_split(inter, test_fraction=f)


def test_synthetic_is_labelled_deterministic_and_clustered():
    a = synthetic_interactions(n_users=400, n_items=300, n_clusters=6, seed=1)
    b = synthetic_interactions(n_users=400, n_items=300, n_clusters=6, seed=1)
    assert a.synthetic and "SYNTHETIC" in a.label
    assert np.array_equal(a.items, b.items) and a.data_hash == b.data_hash
    assert a.data_hash != synthetic_interactions(n_users=400, n_items=300, n_clusters=6, seed=2).data_hash
    clusters = a.meta["item_cluster"]
    # most of a user's items share its dominant cluster (far above 1/6 by chance)
    shares = []
    for u in range(a.n_users):
        c = clusters[a.items[a.indptr[u] : a.indptr[u + 1]]]
        shares.append(np.bincount(c).max() / c.size)
    assert np.mean(shares) > 0.5
    # popularity skew: the top 10 % of items take a clearly larger share than 10 %
    counts = np.sort(np.bincount(a.items, minlength=300))[::-1]
    assert counts[:30].sum() / counts.sum() > 0.2


def test_synthetic_bad_parameters():
    with pytest.raises(InvalidInputError):
        synthetic_interactions(n_users=0)
    with pytest.raises(InvalidInputError):
        synthetic_interactions(n_items=3, n_clusters=5)
    with pytest.raises(InvalidInputError):
        synthetic_interactions(in_cluster_share=1.5)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_loader_fuzz_only_raises_typed_errors(tmp_path_factory, blob):
    p = tmp_path_factory.mktemp("fuzz") / "f.txt"
    p.write_bytes(blob)
    try:
        inter = load_interactions(p)
    except (DataFormatError, DataNotFoundError):
        return
    assert inter.n_users >= 1 and inter.n_interactions >= 1
