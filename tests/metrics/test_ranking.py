import numpy as np
import pytest

from reelpack.data import synthetic_interactions, train_test_split
from reelpack.errors import DimensionMismatchError, InvalidKError, NonFiniteError
from reelpack.metrics.ranking import dense_score_fn, evaluate_scores, rank_users


@pytest.fixture(scope="module")
def split():
    return train_test_split(synthetic_interactions(n_users=300, n_items=250, n_clusters=5, seed=0), seed=0)


def test_rank_users_excludes_train_items_and_matches_brute_force(split):
    rng = np.random.default_rng(0)
    U = rng.normal(size=(split.n_users, 8)).astype(np.float32)
    I = rng.normal(size=(split.n_items, 8)).astype(np.float32)
    users = np.arange(split.n_users)
    ranked = rank_users(dense_score_fn(U, I), split, users, 20, batch_size=64)
    for u in range(0, split.n_users, 17):
        train = set(split.train_items[split.train_indptr[u] : split.train_indptr[u + 1]].tolist())
        scores = U[u] @ I.T
        order = [i for i in np.argsort(-scores, kind="stable") if i not in train][:20]
        assert ranked[u].tolist() == order
        assert not (set(ranked[u].tolist()) & train)


def test_oracle_scores_give_perfect_recall(split):
    # score = 1 for test items, 0 otherwise -> recall@50 = 1 when |test| <= 50
    oracle = np.zeros((split.n_users, split.n_items), np.float32)
    for u in range(split.n_users):
        oracle[u, split.test_items[split.test_indptr[u] : split.test_indptr[u + 1]]] = 1.0
    m, _ = evaluate_scores(lambda b: oracle[b], split)
    assert m["recall@50"] == pytest.approx(1.0) and m["mrr"] == pytest.approx(1.0)


def test_bad_inputs(split):
    U = np.ones((split.n_users, 4), np.float32)
    with pytest.raises(DimensionMismatchError):
        dense_score_fn(U, np.ones((split.n_items, 5)))
    bad = np.ones((split.n_items, 4))
    bad[3, 1] = np.nan
    with pytest.raises(NonFiniteError) as info:
        dense_score_fn(U, bad)
    assert info.value.rows == [3]
    with pytest.raises(InvalidKError):
        rank_users(dense_score_fn(U, np.ones((split.n_items, 4))), split, np.arange(3), split.n_items + 1)
    with pytest.raises(DimensionMismatchError):
        rank_users(lambda b: np.zeros((len(b), 3)), split, np.arange(3), 2)
