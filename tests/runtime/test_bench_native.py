"""``reelpack bench-speed --native``: the C runtime timed on the same codes, its memory probe, and the clear error
when the library is missing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from reelpack.bench.speed import SpeedConfig, run_speed_bench, speed_markdown
from reelpack.cli import app


@pytest.fixture
def runtime_env(runtime, monkeypatch):
    monkeypatch.setenv("REELPACK_RUNTIME_LIB", str(runtime.path))
    return runtime


def test_native_rows_and_memory(runtime_env):
    config = SpeedConfig(sizes=(3000,), dim=32, n_queries=4, k=5, train_rows=2000, memory_check=True, native=True,
                         methods=("flat", "pq16", "pq32x4-fastscan", "pq32x4-exact", "sq8", "sq4", "binary128"))  # fmt: skip
    result = run_speed_bench(config)
    rows = {r["method"]: r for r in result["rows"]}
    for method in ("flat", "pq16", "pq32x4-exact", "sq8", "sq4"):
        r = rows[method]
        assert r["native_ms"] > 0 and r["native_kernel"].startswith("native-")
        assert r["native_same_ids"] == 1.0, r  # the same codes rank the same (exact kernels)
        assert r["native_vs_numba"] == pytest.approx(r["native_ms"] / r["reelpack_ms"], rel=1e-6)
    assert rows["pq32x4-fastscan"]["native_same_ids"] >= 0.5  # quantised sums: ties may break differently
    assert "native_ms" not in rows["binary128"]
    native_mem = [r for r in result["memory"] if r["method"].endswith("(C runtime)")]
    assert {r["method"] for r in native_mem} == {"pq16 (C runtime)", "pq32x4-exact (C runtime)", "sq8 (C runtime)"}
    for r in native_mem:
        assert "error" not in r, r
        assert r["verify_clean"] and r["open_and_verify_ms"] > 0
        if "peak_growth_bytes" in r:
            assert r["within_limit"], r
    assert result["provenance"]["native_runtime"]["kernel"] in ("avx2", "neon", "portable")
    text = speed_markdown(result)
    assert "C runtime" in text and "C / numba" in text


def test_cli_native_without_library_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setenv("REELPACK_RUNTIME_LIB", str(tmp_path / "missing.so"))
    result = CliRunner().invoke(app, ["bench-speed", "--sizes", "2000", "--dim", "32", "--native", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "make -C runtime" in result.output
