"""Smoke tests of the command line on the synthetic catalog (small and fast)."""

import json

from typer.testing import CliRunner

from reelpack.cli import app

runner = CliRunner()


def test_bench_on_synthetic_default(tmp_path, monkeypatch):
    monkeypatch.delenv("REELPACK_DATA", raising=False)
    out = tmp_path / "res"
    args = ["bench", "--dim", "16", "--epochs", "2", "--codecs", "sq8 pq4", "--max-users", "300",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output and "Recall@50" in result.output
    data = json.loads((out / "bench-d16.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["float32 (exact)", "sq8", "faiss:SQ8", "pq4", "faiss:PQ4np"]
    assert data["provenance"]["synthetic"] is True
    # second run loads the embeddings from the cache instead of training
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "loaded from cache" in again.output


def test_codec_seed_changes_only_the_codecs(tmp_path, monkeypatch):
    monkeypatch.delenv("REELPACK_DATA", raising=False)
    base = ["bench", "--dim", "16", "--epochs", "1", "--codecs", "simhash32", "--no-faiss",
            "--cache-dir", str(tmp_path / "cache")]
    results = {}
    for codec_seed in ("0", "5"):
        out = tmp_path / f"seed{codec_seed}"
        r = runner.invoke(app, base + ["--out", str(out), "--codec-seed", codec_seed])
        assert r.exit_code == 0, r.output
        results[codec_seed] = json.loads((out / "bench-d16.json").read_text())
    a, b = results["0"], results["5"]
    assert a["provenance"]["split_seed"] == b["provenance"]["split_seed"] == 0
    assert a["provenance"]["config"]["seed"] == 0 and b["provenance"]["config"]["seed"] == 5
    assert a["rows"][0]["recall@50"] == b["rows"][0]["recall@50"]  # same embeddings
    assert a["rows"][1]["overlap@50"] != b["rows"][1]["overlap@50"]  # another projection


def test_bad_arguments_exit_2_with_message(tmp_path):
    r = runner.invoke(app, ["bench", "--codecs", "bogus9", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown codec spec" in r.output
    r = runner.invoke(app, ["bench", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "not found" in r.output
    bad = tmp_path / "bad.txt"
    bad.write_text("0 1 2\n1 a\n")
    r = runner.invoke(app, ["train", "--data", str(bad)])
    assert r.exit_code == 2 and "bad.txt:2" in r.output


def test_codecs_lists_families():
    r = runner.invoke(app, ["codecs"])
    assert r.exit_code == 0
    for family in ("fp16", "sq8", "pq", "simhash", "countsketch"):
        assert family in r.output
