"""Interaction data: the file loader, the synthetic default (with SYNTHETIC item metadata), and the train/test split."""

from reelpack.data.interactions import (
    DATA_ENV_VAR,
    Interactions,
    Split,
    check_validation_split,
    load_interactions,
    resolve_data_path,
    synthetic_interactions,
    train_test_split,
    validation_split,
    MIN_VALIDATION_USERS,
    MAX_POPULARITY_BETA,
    popularity_weights,
)

__all__ = [
    "DATA_ENV_VAR",
    "Interactions",
    "Split",
    "load_interactions",
    "resolve_data_path",
    "synthetic_interactions",
    "train_test_split",
    "validation_split",
    "check_validation_split",
    "MIN_VALIDATION_USERS",
    "MAX_POPULARITY_BETA",
    "popularity_weights",
]

from reelpack.data.exposure import (  # noqa: E402
    DEFAULT_EXPOSURE_K,
    exposure_counts,
    exposure_weights,
    weights_from_exposure,
)

__all__ += ["DEFAULT_EXPOSURE_K", "exposure_counts", "exposure_weights", "weights_from_exposure"]

from reelpack.data.metadata import ItemMetadata, replay_synthetic_latents, synthetic_item_metadata  # noqa: E402

__all__ += ["ItemMetadata", "synthetic_item_metadata", "replay_synthetic_latents"]
