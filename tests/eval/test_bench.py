import json

import numpy as np
import pytest

from reelpack.data import synthetic_interactions, train_test_split
from reelpack.errors import DimensionMismatchError, InvalidInputError, UnknownCodecError
from reelpack.eval.baselines import faiss_twin_spec
from reelpack.eval.bench import BenchConfig, load_results, run_bench
from reelpack.eval.report import results_markdown, results_table, write_results


@pytest.fixture(scope="module")
def setup():
    inter = synthetic_interactions(n_users=600, n_items=700, n_clusters=8, seed=0)
    split = train_test_split(inter, seed=0)
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(8, 16)).astype(np.float32)
    clusters = inter.meta["item_cluster"][split.item_ids]
    items = centroids[clusters] + 0.3 * rng.normal(size=(split.n_items, 16)).astype(np.float32)
    users = np.zeros((split.n_users, 16), np.float32)
    tu, ti = split.train_pairs()
    np.add.at(users, tu, items[ti])
    return split, users, items


def test_bench_rows_metrics_and_twins(setup, tmp_path):
    split, users, items = setup
    config = BenchConfig(codecs=("sq8", "pq4", "countsketch8"), max_users=400, batch_size=128)
    result = run_bench(users, items, split, config)
    methods = [r["method"] for r in result.rows]
    assert methods == ["float32 (exact)", "sq8", "faiss:SQ8", "pq4", "faiss:PQ4np", "countsketch8"]
    ref = result.row("float32 (exact)")
    assert ref["rel_recall@50"] == 1.0 and ref["overlap@50"] == 1.0 and ref["bytes_per_item"] == 64
    assert ref["recall@50"] > 0.2  # the clustered toy embeddings carry real signal
    sq8 = result.row("sq8")
    assert sq8["bytes_per_item"] == 16 and sq8["compression"] == 4.0
    assert sq8["rel_recall@50"] > 0.97 and sq8["overlap@50"] > 0.8
    assert result.row("faiss:SQ8")["twin_of"] == "sq8"
    assert sq8["delta_rel_recall@50_vs_faiss"] == pytest.approx(
        sq8["rel_recall@50"] - result.row("faiss:SQ8")["rel_recall@50"]
    )
    pq = result.row("pq4")
    assert pq["bytes_per_item"] == 4 and result.row("faiss:PQ4np")["bytes_per_item"] == 4
    assert pq["rel_recall@50"] < sq8["rel_recall@50"] + 0.05  # 4 bytes cannot beat 16 by much
    for r in result.rows:
        assert r["n_users"] == ref["n_users"] <= 400
        assert r["rank_s"] >= 0 and 0 <= r["overlap@50"] <= 1
    # report and JSON round trip
    json_path, md_path = write_results(result, tmp_path, "b")
    again = load_results(json_path)
    assert again.rows == json.loads(result.to_json())["rows"]
    md = md_path.read_text()
    assert "| sq8 | 16 |" in md and "faiss:SQ8" in md and "command:" in md
    assert results_table(result).row_count == len(result.rows)
    assert "SYNTHETIC" in results_markdown(result)


def test_bench_bad_input(setup, tmp_path):
    split, users, items = setup
    with pytest.raises(DimensionMismatchError):
        run_bench(users[:10], items, split, BenchConfig(codecs=("sq8",)))
    with pytest.raises(DimensionMismatchError):
        run_bench(users, items[:, :8], split, BenchConfig(codecs=("sq8",)))
    with pytest.raises(UnknownCodecError):
        BenchConfig(codecs=("nope7",))
    with pytest.raises(InvalidInputError):
        BenchConfig(max_users=0)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"schema_version": 0, "rows": [], "provenance": {}}))
    with pytest.raises(InvalidInputError, match="schema version 0"):
        load_results(old)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        load_results(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "spec, twin",
    [("float32", "Flat"), ("fp16", "SQfp16"), ("sq4", "SQ4"), ("sq8-p99.9", None), ("pq16", "PQ16np"), ("pq32x4", "PQ32x4np"),
     ("opq8,pq8", "OPQ8,PQ8np"), ("simhash128", "LSH128"), ("simhash64-hamming", "LSH64"), ("countsketch32", None)],
)
def test_faiss_twin_spec(spec, twin):
    assert faiss_twin_spec(spec) == twin
