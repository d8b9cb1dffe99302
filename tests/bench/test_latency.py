"""Single-query latency of the bench rows: the timed paths, the sample, the reports that name the path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reelpack.bench.contest import contest_scores, contest_table, latency_paths
from reelpack.bench.harness import BenchConfig, run_bench
from reelpack.bench.latency import LATENCY_PATHS, LatencyBench, dense_search, latency_note
from reelpack.bench.report import contest_markdown, results_markdown
from reelpack.errors import InvalidInputError


@pytest.fixture(scope="module")
def setup(random_bench_data):
    return random_bench_data(400, 500, 6, seed=3)


@pytest.fixture(scope="module")
def result(setup):
    split, users, items = setup
    config = BenchConfig(codecs=("sq8", "pq4"), max_users=150, batch_size=64, robust_users=0, latency_users=40)
    return run_bench(users, items, split, config)


def test_rows_are_timed_one_query_at_a_time_through_their_path(result):
    for row in result.rows:
        assert row["latency_path"] == LATENCY_PATHS[row["kind"]]
        assert row["latency_users"] == 40
        assert 0 < row["query_ms"] <= row["query_ms_p90"]
        assert row["batch_ms_per_user"] == pytest.approx(row["rank_s"] * 1000 / row["n_users"])
        # the device path ranks like the batched path that the quality figures come from
        assert row["latency_overlap@50"] > 0.95, row["method"]
    assert "make_scanner(codec, codes).search" in result.row("sq8")["latency_path"]
    assert "index.search(q[None], k)" in result.row("faiss:SQ8")["latency_path"]
    sq8, twin = result.row("sq8"), result.row("faiss:SQ8")
    assert sq8["query_time_vs_faiss"] == pytest.approx(sq8["query_ms"] / twin["query_ms"])
    lat = result.provenance["latency"]
    assert lat["n_users"] == 40 and lat["paths"] == LATENCY_PATHS and lat["warmup"] == 10
    json.loads(result.to_json())


def test_quality_does_not_depend_on_the_latency_sample(setup, result):
    split, users, items = setup
    other = run_bench(users, items, split, BenchConfig(codecs=("sq8", "pq4"), max_users=150, batch_size=64,
                                                        robust_users=0, latency_users=3, latency_warmup=0))  # fmt: skip
    quality = ("recall@50", "ndcg@10", "mrr", "rel_recall@50", "overlap@50", "mse")
    for a, b in zip(result.rows, other.rows):
        assert a["method"] == b["method"]
        assert {q: a.get(q) for q in quality} == {q: b.get(q) for q in quality}
    assert other.row("sq8")["latency_users"] == 3


def test_latency_bench_against_a_numpy_oracle(setup):
    """Depth K + train items, filtering and the agreement figure, checked on the float32 path."""
    split, users, items = setup
    eval_users = split.eval_users()
    k = 10
    lat = LatencyBench.make(split, eval_users, k, n_users=25, warmup=2, seed=0)
    assert len(lat.users) == 25 and np.array_equal(lat.users, eval_users[lat.positions])
    again = LatencyBench.make(split, eval_users, k, n_users=25, warmup=2, seed=0)
    assert np.array_equal(lat.users, again.users)  # seeded
    scores = users[eval_users] @ items.T
    for i, u in enumerate(eval_users):
        scores[i, split.train_items[split.train_indptr[u] : split.train_indptr[u + 1]]] = -np.inf
    oracle = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    depths = []

    def spy(q, depth):
        depths.append(depth)
        return dense_search(items)(q, depth)

    wrong = np.roll(oracle, 1, axis=0)  # another user's top-K: low agreement
    row_a, row_b = {"kind": "reference"}, {"kind": "faiss"}
    lat.add(row_a, spy, users, oracle)
    lat.add(row_b, dense_search(items), users, wrong)
    lat.run()
    n_train = np.diff(split.train_indptr)[lat.users]
    assert depths[2:] == [min(split.n_items, k + int(t)) for t in n_train]  # after 2 warm-up queries
    assert row_a["latency_overlap@10"] == pytest.approx(1.0)
    assert row_b["latency_overlap@10"] < 0.5
    assert row_a["latency_path"] == LATENCY_PATHS["reference"] and row_b["latency_path"] == LATENCY_PATHS["faiss"]
    with pytest.raises(InvalidInputError):
        LatencyBench.make(split, eval_users, k, n_users=0, warmup=0, seed=0)


def test_config_checks_latency_fields():
    for bad in ({"latency_users": 0}, {"latency_users": True}, {"latency_users": 2.5}, {"latency_warmup": -1}):
        with pytest.raises(InvalidInputError, match="latency_"):
            BenchConfig(**bad)


def test_reports_and_contest_say_which_path_was_timed(result):
    md = results_markdown(result)
    assert "ONE query at a time" in md
    for path in LATENCY_PATHS.values():
        assert path in md
    assert "rank s / users" not in md  # no longer the batched figure
    contest = "\n".join(contest_markdown(result))
    assert "latency" in contest and LATENCY_PATHS["reelpack"] in contest
    assert latency_paths(result) == LATENCY_PATHS
    scores = contest_scores(result)
    assert {s.method: s.latency_path for s in scores} == {r["method"]: r["latency_path"] for r in result.rows}
    assert all(e["latency_path"] for e in contest_table(scores))
    stored = result.extra["contest"]
    assert all(c["latency_path"] == LATENCY_PATHS[c["kind"]] for c in stored)
    # rows without a recorded path (hand-made, other tools) are said to be so
    assert "not recorded" in latency_note([{"method": "x", "query_ms": 1.0}])
    assert latency_note([{"method": "x"}]) is None


def test_html_report_names_the_timed_path(result):
    pytest.importorskip("matplotlib")
    from reelpack.bench.html_report import render_html_report

    page = render_html_report(result)
    fig = page.split('id="fig-latency"', 1)[1].split("</section>", 1)[0]
    assert "ONE query" in fig and "make_scanner(codec, codes).search" in fig and "query ms p90" in fig
    assert "latency timing" in page


def test_median_seconds_warms_up_and_takes_the_median():
    from reelpack.bench.latency import median_seconds

    calls = []
    durations = iter([0.05, 0.0, 0.0, 0.02, 0.0])  # the slow first call is the untimed warm-up

    def fn():
        calls.append(1)
        import time

        time.sleep(next(durations))

    got = median_seconds(fn, repeats=3, warmup=2)
    assert len(calls) == 5 and got < 0.015
    with pytest.raises(InvalidInputError):
        median_seconds(fn, repeats=0)
