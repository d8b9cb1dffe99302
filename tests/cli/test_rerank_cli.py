"""The train-reranker and rerank-bench commands on the synthetic catalog (small and fast)."""

import json

import numpy as np
from typer.testing import CliRunner

from reelpack.cli import app
from reelpack.codecs import codec_from_bytes
from reelpack.models.rerank import OnnxReranker, load_reranker

runner = CliRunner()
SMALL = ["--dim", "16", "--embed-epochs", "1", "--r", "60", "--epochs", "1", "--train-users", "300"]


def test_train_reranker_then_bench(tmp_path, monkeypatch):
    monkeypatch.delenv("REELPACK_DATA", raising=False)
    out = tmp_path / "m.rerank"
    r = runner.invoke(app, ["train-reranker", "--codec", "pq4", "--out", str(out), "--onnx-out",
                            str(tmp_path / "m.onnx"), *SMALL])  # fmt: skip
    assert r.exit_code == 0, r.output
    rr = load_reranker(out)
    codec = codec_from_bytes((tmp_path / "m.codec").read_bytes())
    rr.check_codec(codec)  # the codec written next to it is the one it was trained for
    x = np.random.default_rng(0).normal(size=(2, 60, len(rr.feature_names))).astype(np.float32)
    onnx_scores = OnnxReranker(tmp_path / "m.onnx").score_features(x)
    np.testing.assert_allclose(onnx_scores, rr.score_features(x), rtol=1e-5, atol=1e-4)
    res = tmp_path / "bench.json"
    r = runner.invoke(app, ["rerank-bench", "--codecs", "pq4", "--users", "200", "--latency-users", "5",
                            "--out", str(res), *SMALL])  # fmt: skip
    assert r.exit_code == 0, r.output
    data = json.loads(res.read_text())
    row = data["rows"][0]
    assert row["codec"] == "pq4" and set(row["gain"]) == {"rel_recall@50", "rel_ndcg@10", "rel_mrr"}
    assert row["latency"]["numpy_onnx_max_abs_diff"] < 1e-4


def test_bad_codec_exits_2(tmp_path, monkeypatch):
    monkeypatch.delenv("REELPACK_DATA", raising=False)
    r = runner.invoke(app, ["train-reranker", "--codec", "bogus9", "--out", str(tmp_path / "x"), *SMALL])
    assert r.exit_code == 2 and "bogus9" in r.output
    r = runner.invoke(app, ["rerank-bench", "--codecs", "pq4", *SMALL, "--r", "20"])
    assert r.exit_code == 2 and "at least 50" in r.output


def test_no_popularity_options(tmp_path, monkeypatch):
    monkeypatch.delenv("REELPACK_DATA", raising=False)
    out = tmp_path / "np.rerank"
    r = runner.invoke(app, ["train-reranker", "--codec", "pq4", "--no-popularity", "--out", str(out), *SMALL])
    assert r.exit_code == 0, r.output
    assert "log_pop" not in load_reranker(out).feature_names and "codes only" in r.output
    res = tmp_path / "bench.json"
    r = runner.invoke(app, ["rerank-bench", "--codecs", "pq4", "--users", "100", "--latency-users", "3",
                            "--popularity", "off", "--out", str(res), *SMALL])  # fmt: skip
    assert r.exit_code == 0, r.output
    (row,) = json.loads(res.read_text())["rows"]
    assert row["popularity"] is False and row["bytes_per_item"] == 4 and row["bytes_per_item_popularity"] == 0
    r = runner.invoke(app, ["rerank-bench", "--codecs", "pq4", "--popularity", "maybe", *SMALL])
    assert r.exit_code == 2 and "both, on, off" in r.output
