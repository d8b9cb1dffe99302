"""validation_split: carved from the train part only, same catalog, deterministic, refuses what it cannot do."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from reelpack.data import (
    MIN_VALIDATION_USERS,
    check_validation_split,
    synthetic_interactions,
    train_test_split,
    validation_split,
)
from reelpack.errors import DimensionMismatchError, InvalidInputError, ValidationTooSmallError


@pytest.fixture(scope="module")
def split():
    return train_test_split(synthetic_interactions(n_users=600, n_items=300, n_clusters=6, seed=3), 0.2, seed=1)


def _pairs(indptr, items):
    users = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return set(zip(users.tolist(), np.asarray(items).tolist()))


def test_fit_and_validation_partition_the_train_part(split):
    val = validation_split(split, 0.1, seed=0)
    assert val.is_validation and not split.is_validation
    fit_pairs = _pairs(val.train_indptr, val.train_items)
    val_pairs = _pairs(val.test_indptr, val.test_items)
    train_pairs = _pairs(split.train_indptr, split.train_items)
    assert fit_pairs | val_pairs == train_pairs and not fit_pairs & val_pairs
    assert not val_pairs & _pairs(split.test_indptr, split.test_items)  # the test part is never touched
    np.testing.assert_array_equal(val.item_ids, split.item_ids)  # same catalog, same indexes
    np.testing.assert_array_equal(val.user_ids, split.user_ids)
    np.testing.assert_array_equal(val.item_counts, np.bincount(val.train_items, minlength=val.n_items))


def test_each_user_gives_about_the_fraction(split):
    val = validation_split(split, 0.2, seed=0)
    n_train = np.diff(split.train_indptr)
    n_val = np.diff(val.test_indptr)
    assert (n_val[n_train < 3] == 0).all()
    big = n_train >= 3
    np.testing.assert_array_equal(n_val[big], np.maximum(1, np.rint(0.2 * n_train[big])))


def test_deterministic_and_seeded(split):
    a, b, c = validation_split(split, 0.1, 0), validation_split(split, 0.1, 0), validation_split(split, 0.1, 1)
    np.testing.assert_array_equal(a.test_items, b.test_items)
    assert not np.array_equal(a.test_items, c.test_items) or not np.array_equal(a.test_indptr, c.test_indptr)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 0.6, 1.0])
def test_bad_fraction(split, fraction):
    with pytest.raises(InvalidInputError, match="validation fraction"):
        validation_split(split, fraction)


def test_refuses_a_validation_split_and_other_types(split):
    with pytest.raises(InvalidInputError, match="already a validation split"):
        validation_split(validation_split(split), 0.1)
    with pytest.raises(InvalidInputError, match="Split"):
        validation_split("not a split")  # type: ignore[arg-type]


def test_check_validation_split(split):
    val = validation_split(split, 0.1, seed=0)
    assert check_validation_split(val) is val and check_validation_split(val, split) is val
    with pytest.raises(InvalidInputError, match="must be a reelpack.data.Split, got str"):
        check_validation_split("val")
    with pytest.raises(InvalidInputError, match="not a validation split"):
        check_validation_split(split)
    with pytest.raises(InvalidInputError, match="^tune needs one$"):
        check_validation_split(split, refusal="tune needs one")
    other = train_test_split(synthetic_interactions(n_users=300, n_items=300, n_clusters=6, seed=3), 0.2, seed=1)
    with pytest.raises(DimensionMismatchError, match="val_split has 600 users"):
        check_validation_split(val, other)
    with pytest.raises(InvalidInputError, match="carved from other data"):
        check_validation_split(val, dataclasses.replace(split, data_hash="other"))
    leaky = dataclasses.replace(val, test_indptr=split.test_indptr, test_items=split.test_items)
    with pytest.raises(InvalidInputError, match="not the split's train items"):
        check_validation_split(leaky, split)


def test_too_few_users_says_how_many_are_needed():
    small = train_test_split(synthetic_interactions(n_users=60, n_items=80, n_clusters=3, seed=0), 0.2, seed=0)
    with pytest.raises(ValidationTooSmallError, match=f"at least {MIN_VALIDATION_USERS}") as info:
        validation_split(small)
    assert info.value.needed == MIN_VALIDATION_USERS and info.value.users <= 60


def test_cache_keys_differ_for_the_fit_split(split):
    torch = pytest.importorskip("torch")  # noqa: F841 (the cache module imports the two-tower model)
    from reelpack.models import TwoTowerConfig, cache_key

    cfg = TwoTowerConfig(dim=8)
    assert cache_key(split, cfg) != cache_key(validation_split(split, 0.1, 0), cfg)
    assert cache_key(validation_split(split, 0.1, 0), cfg) != cache_key(validation_split(split, 0.1, 1), cfg)
