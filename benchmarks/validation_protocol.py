"""The validation protocol the codec studies share (imported by the scripts beside it, run from the project root).

amazon-book's per-user 80/20 train/test split (seed 0), a validation split of 10 % of each user's train items
(seed 0), the two-tower embeddings trained on what is left (cached by :func:`reelpack.models.cache.load_or_train`),
the validation users :func:`reelpack.models.tune.tune_codecs` scores, and float32's Recall@50 / NDCG@10 on them,
the reference of every relative figure. The test split is not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from reelpack.data import load_interactions, train_test_split, validation_split
from reelpack.metrics.ranking import dense_score_fn, evaluate_scores
from reelpack.models import TwoTowerConfig
from reelpack.models.cache import load_or_train
from reelpack.models.tune import validation_users


@dataclass
class ValidationProtocol:
    """fit: the fit split (train minus validation; its test items are the validation positives); U float32
    [n_users, d] and X float32 [n_items, d] the embeddings; users int64 [n] the scored validation users; ref
    float32's metrics on them (``recall@50``, ``ndcg@10``)."""

    fit: Any
    U: np.ndarray
    X: np.ndarray
    users: np.ndarray
    ref: dict[str, float]


def load_validation_protocol(data: str, dim: int, users: int | None) -> ValidationProtocol:
    """The protocol for ``data`` (interactions file) at ``dim`` dimensions, scoring at most ``users`` validation
    users (None: every one)."""
    fit = validation_split(train_test_split(load_interactions(data), 0.2, 0), 0.1, 0)
    emb, _ = load_or_train(fit, TwoTowerConfig(dim=dim, num_threads=1), progress=False, evaluate=False)
    U, X = emb.user_emb, emb.item_emb
    scored = validation_users(fit, users)
    ref, _ = evaluate_scores(dense_score_fn(U, X), fit, scored, ks=(10, 50))
    return ValidationProtocol(fit, U, X, scored, ref)
