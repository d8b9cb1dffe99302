"""Rank the catalog for many users in batches, excluding each user's train items."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from reelpack.util.validate import as_float_matrix, check_k
from reelpack.data.interactions import Split
from reelpack.errors import DimensionMismatchError
from reelpack.kernels.topk import mask_rows, topk

__all__ = ["rank_users", "evaluate_scores", "dense_score_fn"]

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""Maps user indexes int64 [b] to scores float32 [b, n_items]."""


def dense_score_fn(user_emb: np.ndarray, item_emb: np.ndarray) -> ScoreFn:
    """Exact inner-product scores ``user_emb[users] @ item_emb.T`` (the float32 reference)."""
    item_emb = as_float_matrix(item_emb, "item_emb")
    user_emb = as_float_matrix(user_emb, "user_emb", dim=item_emb.shape[1])
    item_t = np.ascontiguousarray(item_emb.T)

    def score(users: np.ndarray) -> np.ndarray:
        return user_emb[users] @ item_t

    return score


def rank_users(
    score_fn: ScoreFn,
    split: Split,
    users: np.ndarray,
    k: int,
    batch_size: int = 1024,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Top-``k`` item indexes int64 [len(users), k] per user, train items excluded.

    ``score_fn`` is called on consecutive batches of ``users``; ``progress(n)``,
    when given, is called with the number of users finished in each batch.
    """
    k = check_k(k, split.n_items)
    users = np.asarray(users, np.int64)
    out = np.empty((len(users), k), np.int64)
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        scores = np.array(score_fn(batch), dtype=np.float32, order="C", copy=True)
        if scores.shape != (len(batch), split.n_items):
            raise DimensionMismatchError(
                f"score function returned shape {scores.shape}, expected {(len(batch), split.n_items)}"
            )
        mask_rows(scores, split.train_indptr, split.train_items, batch)
        out[start : start + len(batch)] = topk(scores, k)[0]
        if progress is not None:
            progress(len(batch))
    return out


def evaluate_scores(
    score_fn: ScoreFn,
    split: Split,
    users: np.ndarray | None = None,
    ks: tuple[int, ...] = (10, 20, 50),
    batch_size: int = 1024,
) -> tuple[dict[str, float], np.ndarray]:
    """Rank ``users`` (default: every user with test items) and return (metrics, ranked ids).

    Metrics are those of :func:`reelpack.metrics.quality.ranking_metrics`.
    """
    from reelpack.metrics.quality import ranking_metrics

    users = split.eval_users() if users is None else np.asarray(users, np.int64)
    ranked = rank_users(score_fn, split, users, max(ks), batch_size=batch_size)
    return ranking_metrics(ranked, users, split.test_indptr, split.test_items, ks), ranked
