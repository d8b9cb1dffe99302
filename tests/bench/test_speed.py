"""The speed bench (reelpack bench-speed): same codes through reelpack and faiss, memory probe, config checks."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from reelpack.cli import app
from reelpack.errors import InvalidInputError
from reelpack.bench.speed import SpeedConfig, run_speed_bench, speed_markdown


@pytest.fixture(scope="module")
def small_result():
    config = SpeedConfig(
        sizes=(2000, 3000), dim=32, n_queries=4, k=5, train_rows=2000, memory_check=True,
        methods=("flat", "pq16", "pq32x4-fastscan", "pq32x4-exact", "sq8", "sq4", "binary128"),
    )  # fmt: skip
    return run_speed_bench(config)


def test_rows_compare_the_same_codes(small_result):
    rows = small_result["rows"]
    assert {(r["method"], r["n_items"]) for r in rows} >= {("pq16", 2000), ("pq16", 3000), ("binary128", 3000)}
    for r in rows:
        assert r["reelpack_ms"] > 0 and r["faiss_ms"] > 0
        assert r["ratio"] == pytest.approx(r["reelpack_ms"] / r["faiss_ms"], rel=1e-6)
        # the same codes and queries: reelpack and faiss return the same top-K (exact kernels), or nearly
        assert r["overlap_vs_faiss"] >= (0.9 if r["method"] == "pq32x4-fastscan" else 0.99), r
        assert r["est_phone_ms"] > r["reelpack_ms"]  # the preset's phone core is slower than this one
    flat = [r for r in rows if r["method"] == "flat"]
    assert all(r["reelpack_recall_vs_float"] == 1.0 for r in flat)


def test_decode_and_memory_rows(small_result):
    decode = {r["method"]: r for r in small_result["decode"]}
    assert set(decode) == {"decode pq16", "decode sq8"}
    assert all(r["max_abs_diff_vs_faiss"] < 1e-5 for r in decode.values())
    memory = small_result["memory"]
    assert {r["method"] for r in memory} == {"pq16", "pq32x4-exact", "sq8"}
    for r in memory:
        assert r["codes_are_memmap_view"] and r["n_items"] == 3000
        if "peak_growth_bytes" in r:
            assert r["within_limit"]
    text = speed_markdown(small_result)
    assert "est. phone ms" in text and "memmapped pack" in text and "SYNTHETIC" in text


@pytest.mark.parametrize(
    "kwargs",
    [{"methods": ("pq99",)}, {"dim": 40}, {"sizes": (500,)}, {"k": 0}, {"n_queries": 0}, {"device_model": "nokia-3310"}],
)
def test_config_errors(kwargs):
    with pytest.raises(InvalidInputError):
        SpeedConfig(**kwargs)


def test_cli_bench_speed(tmp_path):
    result = CliRunner().invoke(
        app,
        ["bench-speed", "--sizes", "2000", "--dim", "32", "--queries", "2", "-k", "5", "--methods", "pq16 sq8",
         "--no-memory", "--train-rows", "2000", "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    files = list(tmp_path.glob("speed-d32-*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert [r["method"] for r in data["rows"]] == ["pq16", "sq8"]
    bad = CliRunner().invoke(app, ["bench-speed", "--sizes", "2000", "--methods", "nope", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown speed methods" in bad.output
