"""Ranking metrics over the full catalog, vectorised over users.

Notation for one user u: ``R_u`` the ranked list (top-K item indexes, best first),
``T_u`` the held-out (test) items, ``hit_j = 1[R_u[j] in T_u]`` for 0-based rank j.

* Recall@K   = sum_{j<K} hit_j / |T_u|
* NDCG@K     = DCG@K / IDCG@K with DCG@K = sum_{j<K} hit_j / log2(j + 2) and
               IDCG@K = sum_{j < min(K, |T_u|)} 1 / log2(j + 2)   (binary relevance)
* MRR@K      = 1 / (1 + first j with hit_j = 1), or 0 when no hit in the top K
* Precision@K = sum_{j<K} hit_j / K

Every metric is averaged over users with |T_u| > 0. These match trec_eval's
``recall_K``, ``ndcg_cut_K`` and ``recip_rank`` (on a run truncated to K), which
the tests check through pytrec_eval.
"""

from __future__ import annotations

import numpy as np

from reelpack.errors import DimensionMismatchError, InvalidInputError

__all__ = ["hit_matrix", "ranking_metrics", "relative", "topk_overlap"]


def hit_matrix(ranked: np.ndarray, users: np.ndarray, test_indptr: np.ndarray, test_items: np.ndarray) -> np.ndarray:
    """Boolean [b, K]: whether ``ranked[i, j]`` is a test item of user ``users[i]``.

    Vectorised membership: (user, item) pairs are keyed as one int64 and looked
    up in the sorted keys of the test pairs with ``searchsorted``.
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    if ranked.ndim != 2 or ranked.shape[0] != len(users):
        raise DimensionMismatchError(f"ranked must be [len(users), K], got {ranked.shape} for {len(users)} users")
    n_key = np.int64(max(int(test_items.max(initial=0)), int(ranked.max(initial=0))) + 1)
    counts = np.diff(test_indptr)
    test_users = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    keys = np.sort(test_users * n_key + test_items.astype(np.int64))
    query = np.asarray(users, np.int64)[:, None] * n_key + ranked
    if keys.size == 0:
        return np.zeros(ranked.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return keys[pos] == query


def ranking_metrics(
    ranked: np.ndarray,
    users: np.ndarray,
    test_indptr: np.ndarray,
    test_items: np.ndarray,
    ks: tuple[int, ...] = (10, 20, 50),
) -> dict[str, float]:
    """Recall@K, NDCG@K, Precision@K for each K in ``ks`` and MRR@max(ks) (see module docstring).

    Args:
        ranked: int [b, K_max] ranked item indexes per user, K_max >= max(ks).
        users: int [b] user index of each row (into the test CSR).
        test_indptr, test_items: CSR of held-out items per user.

    Returns:
        ``{"recall@50": ..., "ndcg@10": ..., "precision@20": ..., "mrr": ..., "n_users": ...}``,
        averaged over the rows whose user has at least one test item.
    """
    ranked = np.asarray(ranked)
    users = np.asarray(users, np.int64)
    if not ks or min(ks) <= 0:
        raise InvalidInputError(f"ks must be positive cut-offs, got {ks}")
    k_max = max(ks)
    if ranked.ndim != 2 or ranked.shape[1] < k_max:
        raise DimensionMismatchError(f"ranked has shape {ranked.shape}, need at least {k_max} columns")
    n_test = np.diff(test_indptr)[users]
    keep = n_test > 0
    ranked, users, n_test = ranked[keep, :k_max], users[keep], n_test[keep]
    out: dict[str, float] = {"n_users": float(len(users))}
    if len(users) == 0:
        raise InvalidInputError("no user with test items to evaluate")
    hits = hit_matrix(ranked, users, test_indptr, test_items).astype(np.float64)
    discount = 1.0 / np.log2(np.arange(k_max) + 2.0)
    ideal_cum = np.cumsum(discount)
    for k in ks:
        h = hits[:, :k]
        out[f"recall@{k}"] = float(np.mean(h.sum(1) / n_test))
        out[f"precision@{k}"] = float(np.mean(h.sum(1) / k))
        idcg = ideal_cum[np.minimum(n_test, k) - 1]
        out[f"ndcg@{k}"] = float(np.mean((h * discount[:k]).sum(1) / idcg))
    any_hit = hits.any(axis=1)
    first = np.argmax(hits, axis=1)
    out["mrr"] = float(np.mean(np.where(any_hit, 1.0 / (first + 1.0), 0.0)))
    return out


def relative(metrics: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """Each metric divided by the float32 reference's (``rel_recall@50`` etc.); 0/0 gives nan."""
    out = {}
    for key, value in metrics.items():
        if key == "n_users" or key not in reference:
            continue
        ref = reference[key]
        out[f"rel_{key}"] = float(value / ref) if ref else float("nan")
    return out


def topk_overlap(ranked: np.ndarray, reference: np.ndarray, k: int) -> float:
    """Mean over rows of |top-k(ranked) ∩ top-k(reference)| / k (both int [b, >=k])."""
    a = np.sort(np.asarray(ranked)[:, :k], axis=1)
    b = np.sort(np.asarray(reference)[:, :k], axis=1)
    if a.shape != b.shape:
        raise DimensionMismatchError(f"ranked {a.shape} and reference {b.shape} differ")
    # count common elements per row: merge the two sorted rows and count adjacent equal pairs
    both = np.sort(np.concatenate([a, b], axis=1), axis=1)
    return float(np.mean((both[:, 1:] == both[:, :-1]).sum(1) / k))
