"""Interaction data: the file loader, the synthetic default, and the train/test split."""

from reelpack.data.interactions import (
    DATA_ENV_VAR,
    Interactions,
    Split,
    load_interactions,
    resolve_data_path,
    synthetic_interactions,
    train_test_split,
)

__all__ = [
    "DATA_ENV_VAR",
    "Interactions",
    "Split",
    "load_interactions",
    "resolve_data_path",
    "synthetic_interactions",
    "train_test_split",
]
