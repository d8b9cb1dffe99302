"""The rate-quality summary of a bench run and the bench's baselines / compression-aware rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reelpack.errors import InvalidInputError
from reelpack.bench.harness import BenchConfig, rate_quality, run_bench


def _row(method: str, kind: str, nbytes: int, rel: float, ndcg: float | None = None) -> dict:
    return {"method": method, "kind": kind, "bytes_per_item": nbytes, "rel_recall@50": rel, "rel_ndcg@10": ndcg}


ROWS = [
    _row("float32 (exact)", "reference", 64, 1.0, 1.0),
    _row("pq8", "reelpack", 8, 0.80),
    _row("qat-rq4+4 +QAT", "reelpack", 8, 0.90),
    _row("faiss:PQ8np", "faiss", 8, 0.70),
    _row("faiss:RQ8x8", "faiss", 8, 0.84),
    _row("pq16", "reelpack", 16, 0.93),
    _row("faiss:RQ16x8", "faiss", 16, 0.92),
    _row("big", "reelpack", 40, 0.999),  # above every budget
    {"method": "simhash", "kind": "reelpack", "bytes_per_item": 4},  # no metric: skipped
]


def test_best_per_budget_and_bar():
    rq = rate_quality(ROWS, k=50, budgets=(4, 8, 16, 32))
    assert rq["metric"] == "rel_recall@50"
    methods = [p["method"] for p in rq["points"]]
    assert "float32 (exact)" not in methods and "simhash" not in methods and len(methods) == 7
    assert [p["bytes_per_item"] for p in rq["points"]] == sorted(p["bytes_per_item"] for p in rq["points"])
    b = rq["budgets"]
    # nothing at or under 4 bytes
    assert b["4"] == {"best_reelpack": None, "best_faiss": None}
    # 8 bytes: best reelpack 0.90, best faiss 0.84 -> bar 0.92: not closed
    assert b["8"]["best_reelpack"]["method"] == "qat-rq4+4 +QAT"
    assert b["8"]["best_faiss"]["method"] == "faiss:RQ8x8"
    assert b["8"]["bar"] == pytest.approx(0.92)
    assert b["8"]["closes_half_gap"] is False
    # 16 bytes: at or below the budget, so 8-byte methods compete too; 0.93 vs bar 0.96
    assert b["16"]["best_reelpack"]["method"] == "pq16" and b["16"]["best_faiss"]["method"] == "faiss:RQ16x8"
    assert b["16"]["bar"] == pytest.approx(0.96) and b["16"]["closes_half_gap"] is False
    # 32 bytes: "big" (40 bytes) is excluded
    assert b["32"]["best_reelpack"]["method"] == "pq16"


def test_closes_half_gap_true_and_bar_formula():
    rows = [_row("a", "reelpack", 8, 0.95), _row("f", "faiss", 8, 0.9)]
    e = rate_quality(rows, k=50, budgets=(8,))["budgets"]["8"]
    assert e["bar"] == pytest.approx(0.95) and e["closes_half_gap"] is True  # exactly at the bar
    rows = [_row("a", "reelpack", 8, 0.949), _row("f", "faiss", 8, 0.9)]
    assert rate_quality(rows, k=50, budgets=(8,))["budgets"]["8"]["closes_half_gap"] is False
    # a faiss method above float32 (rel > 1): the bar is faiss itself, max(f, f + (1 - f) / 2)
    rows = [_row("a", "reelpack", 8, 1.02), _row("f", "faiss", 8, 1.01)]
    e = rate_quality(rows, k=50, budgets=(8,))["budgets"]["8"]
    assert e["bar"] == pytest.approx(1.01) and e["closes_half_gap"] is True
    # only one kind present: no bar
    e = rate_quality([_row("a", "reelpack", 8, 0.9)], k=50, budgets=(8,))["budgets"]["8"]
    assert e["best_faiss"] is None and "bar" not in e and "closes_half_gap" not in e
    # another k reads another column
    rows = [{"method": "a", "kind": "reelpack", "bytes_per_item": 8, "rel_recall@10": 0.5}]
    assert rate_quality(rows, k=10, budgets=(8,))["budgets"]["8"]["best_reelpack"]["method"] == "a"
    assert rate_quality(rows, k=50, budgets=(8,))["points"] == []


@pytest.fixture(scope="module")
def tiny(clustered_bench_data):
    split, _, users, items = clustered_bench_data(300, 400, 8, unit=True)
    return split, users, items


def test_bench_baselines_and_qat_rows(tiny):
    split, users, items = tiny
    config = BenchConfig(
        codecs=("qat-pq2",), faiss_twins=False, baselines=("RQ2x8",), qat=("qat-pq2",), qat_epochs=1,
        max_users=150, batch_size=64,
    )
    result = run_bench(users, items, split, config)
    methods = [r["method"] for r in result.rows]
    assert methods == ["float32 (exact)", "qat-pq2", "faiss:RQ2x8", "qat-pq2 +QAT"]
    for m in methods[1:]:
        r = result.row(m)
        assert r["bytes_per_item"] == 2
        assert r["mse"] >= 0 and r["rd_bound"] > 0 and np.isfinite(r["mse"])
        assert 0 <= r["rel_recall@50"] <= 1.5
    # the bound depends only on the items and the bytes per item
    assert result.row("qat-pq2")["rd_bound"] == result.row("faiss:RQ2x8")["rd_bound"]
    assert result.row("faiss:RQ2x8")["kind"] == "faiss" and result.row("faiss:RQ2x8")["twin_of"] is None
    q = result.row("qat-pq2 +QAT")
    assert q["kind"] == "reelpack" and q["qat_epochs"] == 1 and len(q["qat_loss"]) == 1
    rq = result.extra["rate_quality"]
    assert rq["metric"] == "rel_recall@50" and len(rq["points"]) == 3
    assert rq["budgets"]["8"]["best_faiss"]["method"] == "faiss:RQ2x8"
    assert rq["budgets"]["8"]["best_reelpack"]["method"] in ("qat-pq2", "qat-pq2 +QAT")
    assert "closes_half_gap" in rq["budgets"]["8"]
    # the whole result is JSON-serialisable (numpy scalars included)
    data = json.loads(result.to_json())
    assert data["extra"]["rate_quality"]["budgets"]["16"]["best_faiss"]["method"] == "faiss:RQ2x8"


def test_bench_config_validates_qat():
    with pytest.raises(InvalidInputError, match="qat-"):
        BenchConfig(qat=("pq4",))
    with pytest.raises(InvalidInputError, match="qat_epochs"):
        BenchConfig(qat=("qat-pq4",), qat_epochs=0)
