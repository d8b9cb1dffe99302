"""reelpack.models.cache: keys, atomic entries, round trips, and corrupt entries that retrain."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from reelpack.data import synthetic_interactions, train_test_split
from reelpack.errors import InvalidInputError
from reelpack.models import (
    CacheWarning,
    TwoTowerConfig,
    cache_entry_dir,
    cache_key,
    default_cache_dir,
    load_or_train,
)

CFG = TwoTowerConfig(dim=8, epochs=1, batch_size=256, num_threads=1)


@pytest.fixture(scope="module")
def split():
    return train_test_split(synthetic_interactions(n_users=400, n_items=300, n_clusters=5, seed=1), seed=0)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("REELPACK_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("REELPACK_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "reelpack"
    monkeypatch.setenv("REELPACK_CACHE", "")
    assert default_cache_dir() == Path.home() / ".cache" / "reelpack"


def test_cache_key_depends_on_data_split_and_config(split):
    key = cache_key(split, CFG)
    assert len(key) == 64 and int(key, 16) >= 0
    assert cache_key(split, TwoTowerConfig.from_dict(CFG.to_dict())) == key
    assert cache_key(split, dataclasses.replace(CFG, seed=1)) != key
    assert cache_key(split, dataclasses.replace(CFG, temperature=0.2)) != key
    assert cache_key(dataclasses.replace(split, data_hash="0" * 64), CFG) != key
    assert cache_key(dataclasses.replace(split, seed=1), CFG) != key
    assert cache_key(dataclasses.replace(split, test_fraction=0.1), CFG) != key
    with pytest.raises(InvalidInputError, match="TwoTowerConfig"):
        cache_key(split, CFG.to_dict())  # type: ignore[arg-type]


def test_round_trip_second_call_loads(split, tmp_path):
    first, loaded = load_or_train(split, CFG, cache_dir=tmp_path, progress=False)
    assert loaded is False
    entry = cache_entry_dir(split, CFG, tmp_path)
    assert sorted(p.name for p in entry.iterdir()) == ["items.npy", "meta.json", "users.npy"]
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temp dirs left behind
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["n_users"] == split.n_users and meta["n_items"] == split.n_items
    assert meta["data_hash"] == split.data_hash and meta["synthetic"] is True

    second, loaded = load_or_train(split, CFG, cache_dir=tmp_path, progress=False)
    assert loaded is True
    assert np.array_equal(first.user_emb, second.user_emb)
    assert np.array_equal(first.item_emb, second.item_emb)
    assert second.user_emb.dtype == np.float32
    assert second.config == CFG
    assert second.metrics == first.metrics and "recall@50" in second.metrics
    assert second.train_seconds == first.train_seconds
    assert second.loss_history == first.loss_history
    assert (second.data_hash, second.source, second.synthetic) == (first.data_hash, first.source, first.synthetic)


def test_env_var_cache_dir_and_retrain(split, tmp_path, monkeypatch):
    monkeypatch.setenv("REELPACK_CACHE", str(tmp_path))
    _, loaded = load_or_train(split, CFG, progress=False)
    assert loaded is False and cache_entry_dir(split, CFG, tmp_path).is_dir()
    _, loaded = load_or_train(split, CFG, progress=False)
    assert loaded is True
    _, loaded = load_or_train(split, CFG, progress=False, retrain=True)
    assert loaded is False
    _, loaded = load_or_train(split, CFG, progress=False)
    assert loaded is True


def _corrupt_meta_bad_json(entry: Path) -> None:
    (entry / "meta.json").write_text('{"format": 1, "n_users": ')


def _corrupt_missing_users(entry: Path) -> None:
    (entry / "users.npy").unlink()


def _corrupt_item_shape(entry: Path) -> None:
    np.save(entry / "items.npy", np.zeros((3, 8), np.float32))


def _corrupt_item_dtype(entry: Path) -> None:
    items = np.load(entry / "items.npy")
    np.save(entry / "items.npy", items.astype(np.float64))


def _corrupt_pickled_array(entry: Path) -> None:
    np.save(entry / "items.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)


def _corrupt_truncated_npy(entry: Path) -> None:
    raw = (entry / "users.npy").read_bytes()
    (entry / "users.npy").write_bytes(raw[: len(raw) // 2])


def _corrupt_meta_counts(entry: Path) -> None:
    meta = json.loads((entry / "meta.json").read_text())
    meta["n_items"] += 1
    (entry / "meta.json").write_text(json.dumps(meta))


def _corrupt_meta_config(entry: Path) -> None:
    meta = json.loads((entry / "meta.json").read_text())
    meta["config"]["dim"] = "eight"
    (entry / "meta.json").write_text(json.dumps(meta))


def _corrupt_meta_not_object(entry: Path) -> None:
    (entry / "meta.json").write_text("[1, 2, 3]")


def _corrupt_nan(entry: Path) -> None:
    items = np.load(entry / "items.npy")
    items[0, 0] = np.nan
    np.save(entry / "items.npy", items)


@pytest.mark.parametrize(
    "corrupt",
    [
        _corrupt_meta_bad_json,
        _corrupt_missing_users,
        _corrupt_item_shape,
        _corrupt_item_dtype,
        _corrupt_pickled_array,
        _corrupt_truncated_npy,
        _corrupt_meta_counts,
        _corrupt_meta_config,
        _corrupt_meta_not_object,
        _corrupt_nan,
    ],
)
def test_corrupt_entry_warns_and_retrains(split, tmp_path, corrupt):
    first, _ = load_or_train(split, CFG, cache_dir=tmp_path, progress=False)
    entry = cache_entry_dir(split, CFG, tmp_path)
    corrupt(entry)
    with pytest.warns(CacheWarning, match="retraining"):
        again, loaded = load_or_train(split, CFG, cache_dir=tmp_path, progress=False)
    assert loaded is False
    assert np.array_equal(again.item_emb, first.item_emb)  # same seed: same model
    third, loaded = load_or_train(split, CFG, cache_dir=tmp_path, progress=False)  # the entry was rewritten
    assert loaded is True
    assert np.array_equal(third.user_emb, first.user_emb)
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]


def test_unwritable_cache_dir_warns_but_returns(split, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(CacheWarning, match="could not write"):
        emb, loaded = load_or_train(split, CFG, cache_dir=blocker, progress=False)
    assert loaded is False and emb.item_emb.shape == (split.n_items, CFG.dim)


def test_failed_fsync_is_not_swallowed(split, tmp_path, monkeypatch):
    """save_cached fsyncs through reelpack.util.atomic: a failed file fsync raises and leaves no entry nor temp
    folder; load_or_train reports it as a CacheWarning and still returns the trained embeddings."""
    import reelpack.models.cache as cache_module

    emb, _ = load_or_train(split, CFG, cache_dir=tmp_path / "first", progress=False)

    def failing_fsync(path):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(cache_module, "fsync_file", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        cache_module.save_cached(emb, split, tmp_path / "second")
    entry = cache_entry_dir(split, CFG, tmp_path / "second")
    assert not entry.exists() and list(entry.parent.iterdir()) == []
    with pytest.warns(CacheWarning, match="Input/output"):
        again, loaded = load_or_train(split, CFG, cache_dir=tmp_path / "third", progress=False)
    assert loaded is False and again.item_emb.shape == emb.item_emb.shape
