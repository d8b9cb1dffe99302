"""Two-tower model training, the embedding cache, and the cold-start content tower.

>>> from reelpack.data import synthetic_interactions, train_test_split
>>> from reelpack.models import TwoTowerConfig, train_two_tower
>>> split = train_test_split(synthetic_interactions(n_users=300, n_items=200, n_clusters=5))
>>> emb = train_two_tower(split, TwoTowerConfig.for_synthetic(dim=16, epochs=1), progress=False, evaluate=False)
>>> emb.item_emb.shape == (split.n_items, 16), emb.item_emb.dtype
(True, dtype('float32'))
"""

from reelpack.models.cache import (
    CACHE_ENV_VAR,
    CacheWarning,
    cache_entry_dir,
    cache_key,
    default_cache_dir,
    load_cached,
    load_or_train,
    save_cached,
)
from reelpack.models.twotower import (
    TrainedEmbeddings,
    TwoTowerConfig,
    in_batch_logits,
    in_batch_softmax_loss,
    item_log_q,
    train_two_tower,
)

__all__ = [
    "CACHE_ENV_VAR",
    "CacheWarning",
    "TrainedEmbeddings",
    "TwoTowerConfig",
    "cache_entry_dir",
    "cache_key",
    "default_cache_dir",
    "in_batch_logits",
    "in_batch_softmax_loss",
    "item_log_q",
    "load_cached",
    "load_or_train",
    "save_cached",
    "train_two_tower",
]

from reelpack.models.content import (  # noqa: E402
    ColdStartResult,
    ContentTower,
    ContentTowerConfig,
    cold_start_eval,
    train_content_tower,
)

__all__ += ["ContentTowerConfig", "ContentTower", "train_content_tower", "cold_start_eval", "ColdStartResult"]
