"""Two-tower model training, the embedding cache, and the cold-start content tower.

>>> from reelpack.data import synthetic_interactions, train_test_split
>>> from reelpack.models import TwoTowerConfig, train_two_tower
>>> split = train_test_split(synthetic_interactions(n_users=300, n_items=200, n_clusters=5))
>>> emb = train_two_tower(split, TwoTowerConfig.for_synthetic(dim=16, epochs=1), progress=False, evaluate=False)
>>> emb.item_emb.shape == (split.n_items, 16), emb.item_emb.dtype
(True, dtype('float32'))
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule defining it (imported on first use, so that ``reelpack.models.tune`` and the
#: tune files of ``pack --codecs autoN`` work on a core install without torch)
_LAZY = {
    **dict.fromkeys(
        ["CACHE_ENV_VAR", "CacheWarning", "cache_entry_dir", "cache_key", "default_cache_dir", "load_cached",
         "load_or_train", "save_cached"], "reelpack.models.cache"),
    **dict.fromkeys(
        ["TrainedEmbeddings", "TwoTowerConfig", "in_batch_logits", "in_batch_softmax_loss", "item_log_q",
         "train_two_tower"], "reelpack.models.twotower"),
    **dict.fromkeys(
        ["ContentTowerConfig", "ContentTower", "train_content_tower", "cold_start_eval", "ColdStartResult"],
        "reelpack.models.content"),
}  # fmt: skip

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'reelpack.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
