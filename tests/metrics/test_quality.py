import numpy as np
import pytest
import pytrec_eval

from reelpack.errors import DimensionMismatchError, InvalidInputError
from reelpack.metrics.quality import hit_matrix, ranking_metrics, relative, topk_overlap


def csr(lists):
    indptr = np.zeros(len(lists) + 1, np.int64)
    indptr[1:] = np.cumsum([len(x) for x in lists])
    items = np.array([i for x in lists for i in x], dtype=np.int32)
    return indptr, items


def test_hand_computed_case():
    ranked = np.array([[3, 1, 4, 0], [2, 0, 1, 3]])
    indptr, items = csr([[1, 0], [5]])
    m = ranking_metrics(ranked, np.array([0, 1]), indptr, items, ks=(2, 4))
    # user 0: hits at ranks 1 and 3 (0-based); user 1: no hit
    assert m["recall@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["recall@4"] == pytest.approx((2 / 2 + 0) / 2)
    dcg = 1 / np.log2(3) + 1 / np.log2(5)
    idcg = 1 + 1 / np.log2(3)
    assert m["ndcg@4"] == pytest.approx((dcg / idcg + 0) / 2)
    assert m["mrr"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["precision@4"] == pytest.approx((2 / 4) / 2)
    assert m["n_users"] == 2


def test_users_without_test_items_are_skipped():
    ranked = np.array([[0, 1], [0, 1]])
    indptr, items = csr([[0], []])
    m = ranking_metrics(ranked, np.array([0, 1]), indptr, items, ks=(1,))
    assert m["n_users"] == 1 and m["recall@1"] == 1.0
    with pytest.raises(InvalidInputError):
        ranking_metrics(ranked[1:], np.array([1]), indptr, items, ks=(1,))


@pytest.mark.parametrize("seed", range(5))
def test_matches_trec_eval_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items, k = 40, 60, 20
    ranked = np.stack([rng.permutation(n_items)[:k] for _ in range(n_users)])
    tests = [rng.choice(n_items, size=rng.integers(1, 12), replace=False).tolist() for _ in range(n_users)]
    indptr, items = csr(tests)
    ours = ranking_metrics(ranked, np.arange(n_users), indptr, items, ks=(5, 10, 20))
    qrel = {f"u{u}": {f"i{i}": 1 for i in t} for u, t in enumerate(tests)}
    run = {f"u{u}": {f"i{i}": float(k - j) for j, i in enumerate(ranked[u])} for u in range(n_users)}
    ev = pytrec_eval.RelevanceEvaluator(qrel, {"recall.5,10,20", "ndcg_cut.5,10,20", "recip_rank", "P.5,10,20"})
    res = ev.evaluate(run)
    for kk in (5, 10, 20):
        assert ours[f"recall@{kk}"] == pytest.approx(np.mean([r[f"recall_{kk}"] for r in res.values()]), abs=1e-9)
        assert ours[f"ndcg@{kk}"] == pytest.approx(np.mean([r[f"ndcg_cut_{kk}"] for r in res.values()]), abs=1e-9)
        assert ours[f"precision@{kk}"] == pytest.approx(np.mean([r[f"P_{kk}"] for r in res.values()]), abs=1e-9)
    assert ours["mrr"] == pytest.approx(np.mean([r["recip_rank"] for r in res.values()]), abs=1e-9)


def test_hit_matrix_and_shape_errors():
    indptr, items = csr([[2, 7], [1]])
    hits = hit_matrix(np.array([[7, 1, 2], [1, 2, 7]]), np.array([0, 1]), indptr, items)
    assert hits.tolist() == [[True, False, True], [True, False, False]]
    with pytest.raises(DimensionMismatchError):
        hit_matrix(np.array([[1, 2]]), np.array([0, 1]), indptr, items)
    with pytest.raises(DimensionMismatchError):
        ranking_metrics(np.array([[1, 2]]), np.array([0]), indptr, items, ks=(5,))
    with pytest.raises(InvalidInputError):
        ranking_metrics(np.array([[1, 2]]), np.array([0]), indptr, items, ks=(0,))


def test_relative_and_overlap():
    rel = relative({"recall@50": 0.1, "mrr": 0.0, "n_users": 3}, {"recall@50": 0.2, "mrr": 0.0})
    assert rel["rel_recall@50"] == pytest.approx(0.5) and np.isnan(rel["rel_mrr"]) and "rel_n_users" not in rel
    a = np.array([[1, 2, 3], [4, 5, 6]])
    b = np.array([[3, 9, 1], [7, 8, 0]])
    assert topk_overlap(a, b, 3) == pytest.approx((2 / 3 + 0) / 2)
    assert topk_overlap(a, a, 2) == 1.0
