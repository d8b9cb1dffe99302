"""On-disk cache of trained two-tower embeddings, keyed by data, split and config.

Layout: ``<cache_dir>/twotower/<key>/`` holds

* ``items.npy`` -- float32 [n_items, dim] (``TrainedEmbeddings.item_emb``)
* ``users.npy`` -- float32 [n_users, dim] (``TrainedEmbeddings.user_emb``)
* ``meta.json`` -- format version, key, data hash, source, synthetic flag,
  split seed / test fraction, n_users, n_items, dim, config, metrics,
  train seconds, loss history.

Entries are written into a temporary directory inside ``<cache_dir>/twotower``,
fsynced (:func:`reelpack.util.atomic.fsync_file` / :func:`~reelpack.util.atomic.fsync_dir`, which raise on
failure), then renamed into place, so a reader sees a whole entry or none. An
entry that cannot be read back exactly (missing file, bad JSON, other format
version, shape/dtype/count mismatch, NaN) is reported with a
:class:`CacheWarning` and retrained, never raised.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from reelpack.data.interactions import Split
from reelpack.errors import InvalidInputError
from reelpack.models.twotower import TrainedEmbeddings, TwoTowerConfig, train_two_tower
from reelpack.util.atomic import fsync_dir, fsync_file

__all__ = [
    "CACHE_ENV_VAR",
    "CACHE_FORMAT_VERSION",
    "CacheWarning",
    "cache_entry_dir",
    "cache_key",
    "default_cache_dir",
    "load_cached",
    "load_or_train",
    "save_cached",
]

CACHE_ENV_VAR = "REELPACK_CACHE"
CACHE_FORMAT_VERSION = 1
_SUBDIR = "twotower"
_FILES = ("items.npy", "users.npy", "meta.json")


class CacheWarning(UserWarning):
    """A cache entry was unreadable or inconsistent and is being ignored (the model is retrained)."""


def default_cache_dir() -> Path:
    """``$REELPACK_CACHE`` if set and non-empty, else ``~/.cache/reelpack``."""
    env = os.environ.get(CACHE_ENV_VAR, "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "reelpack"


def cache_key(split: Split, config: TwoTowerConfig) -> str:
    """sha256 hex over the format version, ``split.data_hash``, split seed and test fraction, and the config."""
    if not isinstance(split, Split):
        raise InvalidInputError(f"split must be a reelpack.data.Split, got {type(split).__name__}")
    if not isinstance(config, TwoTowerConfig):
        raise InvalidInputError(f"config must be a TwoTowerConfig, got {type(config).__name__}")
    fields = {
        "format": CACHE_FORMAT_VERSION,
        "model": "two-tower",
        "data_hash": split.data_hash,
        "split_seed": int(split.seed),
        "test_fraction": repr(float(split.test_fraction)),
        "config": config.to_dict(),
    }
    if split.is_validation:  # trained on the fit part only: another entry (keys of plain splits unchanged)
        fields["validation_fraction"] = repr(float(split.validation_fraction))
        fields["validation_seed"] = int(split.validation_seed)
    blob = json.dumps(fields, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def cache_entry_dir(split: Split, config: TwoTowerConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory of the entry of (``split``, ``config``) under ``cache_dir`` (default :func:`default_cache_dir`)."""
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    return root / _SUBDIR / cache_key(split, config)


def save_cached(emb: TrainedEmbeddings, split: Split, cache_dir: str | os.PathLike | None = None) -> Path:
    """Write ``emb`` atomically as the cache entry of (``split``, ``emb.config``); return its directory.

    If an entry already exists it is replaced (another writer's complete entry
    for the same key is equally valid, so losing that race is not an error).
    """
    final = cache_entry_dir(split, emb.config, cache_dir)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": CACHE_FORMAT_VERSION,
        "key": final.name,
        "data_hash": emb.data_hash,
        "source": emb.source,
        "synthetic": bool(emb.synthetic),
        "split_seed": int(split.seed),
        "test_fraction": float(split.test_fraction),
        "n_users": int(emb.user_emb.shape[0]),
        "n_items": int(emb.item_emb.shape[0]),
        "dim": int(emb.item_emb.shape[1]),
        "config": emb.config.to_dict(),
        "metrics": {k: float(v) for k, v in emb.metrics.items()},
        "train_seconds": float(emb.train_seconds),
        "loss_history": [float(x) for x in emb.loss_history],
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name[:16]}-", dir=parent))
    try:
        for name, arr in (("items.npy", emb.item_emb), ("users.npy", emb.user_emb)):
            with open(tmp / name, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
        with open(tmp / "meta.json", "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True, allow_nan=True)
        for name in _FILES:
            fsync_file(tmp / name)
        fsync_dir(tmp)
        if final.exists():
            # rename() cannot replace a non-empty directory: move the old entry aside first.
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name[:16]}-", dir=parent))
            try:
                os.replace(final, old / "entry")
            except FileNotFoundError:  # removed concurrently
                pass
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race with another writer: a real failure
                raise
        fsync_dir(parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _read_entry(entry: Path, split: Split, config: TwoTowerConfig) -> TrainedEmbeddings:
    """Read and check one entry; any problem raises ``ValueError``/``OSError`` with the reason."""
    missing = [name for name in _FILES if not (entry / name).is_file()]
    if missing:
        raise ValueError(f"missing file(s) {missing}")
    with open(entry / "meta.json", encoding="utf-8") as fh:
        meta = json.load(fh)
    if not isinstance(meta, dict):
        raise ValueError("meta.json does not hold a JSON object")
    if meta.get("format") != CACHE_FORMAT_VERSION:
        raise ValueError(f"format version {meta.get('format')!r}, expected {CACHE_FORMAT_VERSION}")
    if meta.get("key") != entry.name:
        raise ValueError(f"meta.json key {meta.get('key')!r} does not match the entry name")
    if meta.get("data_hash") != split.data_hash:
        raise ValueError("data hash differs from the split's")
    if meta.get("n_users") != split.n_users or meta.get("n_items") != split.n_items:
        raise ValueError(
            f"entry holds {meta.get('n_users')} users x {meta.get('n_items')} items, "
            f"split has {split.n_users} x {split.n_items}"
        )
    stored_config = TwoTowerConfig.from_dict(meta.get("config"))
    if stored_config != config:
        raise ValueError("stored config differs from the requested config")
    arrays = {}
    for name, n in (("items.npy", split.n_items), ("users.npy", split.n_users)):
        arr = np.load(entry / name, allow_pickle=False)
        if arr.dtype != np.float32 or arr.shape != (n, config.dim):
            raise ValueError(f"{name} has dtype {arr.dtype} shape {arr.shape}, expected float32 {(n, config.dim)}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} holds NaN or Inf")
        arrays[name] = arr
    metrics = meta.get("metrics", {})
    seconds = meta.get("train_seconds")
    history = meta.get("loss_history", [])
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
        raise ValueError("metrics is not a mapping of numbers")
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise ValueError(f"train_seconds is {seconds!r}")
    if not isinstance(history, list) or not all(isinstance(v, (int, float)) for v in history):
        raise ValueError("loss_history is not a list of numbers")
    return TrainedEmbeddings(
        user_emb=arrays["users.npy"],
        item_emb=arrays["items.npy"],
        config=stored_config,
        data_hash=str(meta["data_hash"]),
        metrics={str(k): float(v) for k, v in metrics.items()},
        train_seconds=float(seconds),
        synthetic=bool(meta.get("synthetic")),
        source=str(meta.get("source", split.source)),
        loss_history=[float(v) for v in history],
    )


def load_cached(
    split: Split, config: TwoTowerConfig, cache_dir: str | os.PathLike | None = None
) -> TrainedEmbeddings | None:
    """The cached embeddings of (``split``, ``config``), or ``None`` if absent or unusable.

    An unusable entry (see the module docstring) is reported with a :class:`CacheWarning`.
    """
    entry = cache_entry_dir(split, config, cache_dir)
    if not entry.exists():
        return None
    try:
        return _read_entry(entry, split, config)
    except (ValueError, OSError, EOFError, KeyError, TypeError) as exc:
        msg = f"ignoring unusable two-tower cache entry {entry}: {exc}; retraining"
        warnings.warn(msg, CacheWarning, stacklevel=3)
        return None


def load_or_train(
    split: Split,
    config: TwoTowerConfig,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    retrain: bool = False,
    evaluate: bool = True,
) -> tuple[TrainedEmbeddings, bool]:
    """Load the cached embeddings of (``split``, ``config``), or train and cache them.

    Args:
        split, config: as for :func:`reelpack.models.train_two_tower`.
        cache_dir: cache root (default :func:`default_cache_dir`); entries live in ``<cache_dir>/twotower/<key>``.
        progress: show the training progress bar.
        retrain: ignore any cached entry, train and overwrite it.
        evaluate: fill ``metrics`` when training (stored with the entry).

    Returns:
        (embeddings, loaded) where ``loaded`` is True when they came from the cache.
    """
    if not retrain:
        cached = load_cached(split, config, cache_dir)
        if cached is not None:
            return cached, True
    emb = train_two_tower(split, config, progress=progress, evaluate=evaluate)
    try:
        save_cached(emb, split, cache_dir)
    except OSError as exc:
        warnings.warn(f"could not write the two-tower cache entry: {exc}", CacheWarning, stacklevel=2)
    return emb, False
