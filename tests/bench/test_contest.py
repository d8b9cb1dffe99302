"""The contest scorer: the documented worked example, each term's normalisation, missing terms, the CLI."""

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from reelpack.cli import app
from reelpack.errors import InvalidInputError
from reelpack.bench.harness import BenchResult
from reelpack.bench.contest import (
    TERMS,
    WEIGHTS,
    compression_term,
    contest_scores,
    contest_table,
    ratio_score,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "SCORING.md"


def _doc_example() -> tuple[list[dict], dict[str, float]]:
    """The worked example's rows and expected totals, parsed from docs/SCORING.md."""
    text = DOC.read_text()
    section = text.split("## Worked example", 1)[1].split("## What the score", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| `")]
    header = next(ln for ln in section.splitlines() if ln.startswith("| field |"))
    methods = [c.strip() for c in header.strip("|").split("|")[1:]]
    rows = [{"method": m, "kind": "reference" if m.startswith("float32") else "reelpack"} for m in methods]
    for ln in lines:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        key = cells[0].strip("`")
        for row, cell in zip(rows, cells[1:]):
            if key == "engineering_checks":
                m = re.fullmatch(r"(\d+) of (\d+) passed", cell)
                row[key] = None if cell == "null" else {f"c{i}": i < int(m.group(1)) for i in range(int(m.group(2)))}
            else:
                row[key] = float(cell)
    totals = dict(re.findall(r"For (\S+?):.*?total = .*?\*\*([0-9.]+)\*\*", section, flags=re.S))
    # "For pq16:" ... "= **82.75**" and "For float32: ... total = ... = **66.5**"
    return rows, {m: float(v) for m, v in totals.items()}


def test_worked_example_from_the_doc():
    rows, totals = _doc_example()
    assert set(totals) == {"pq16", "float32"}, totals
    scores = {s.method: s for s in contest_scores({"rows": rows, "provenance": {"config": {"ks": [10, 50]}}})}
    pq = scores["pq16"]
    assert pq.total == pytest.approx(totals["pq16"], abs=1e-3)
    assert pq.terms["recall"] == pytest.approx(2.65 / 3)
    assert pq.terms["compression"] == pytest.approx(2 / 3)
    assert pq.terms["latency_energy"] == pytest.approx((2 / 3 + 1) / 2)
    assert pq.terms["robustness"] == pytest.approx(0.9)
    assert pq.terms["engineering"] == pytest.approx(0.75)
    assert pq.missing == ()
    ref = scores["float32 (exact)"]
    assert ref.total == pytest.approx(totals["float32"], abs=1e-3)
    assert ref.missing == ("engineering",) and ref.terms["latency_energy"] == pytest.approx(0.5)


def test_term_normalisations():
    assert compression_term(4.0) == 0.0 and compression_term(2.0) == 0.0 and compression_term(1.0) == 0.0
    assert compression_term(8.0) == pytest.approx(1 / 3) and compression_term(32.0) == 1.0 and compression_term(64.0) == 1.0
    assert compression_term(None) is None and compression_term(float("nan")) is None and compression_term(0) is None
    assert ratio_score(2.0, 2.0) == 0.5 and ratio_score(1.0, 8.0) == 1.0 and ratio_score(8.0, 1.0) == 0.0
    assert ratio_score(1.0, 2.0) == pytest.approx(0.5 + 1 / 6)
    assert ratio_score(0.0, 1.0) is None and ratio_score(1.0, None) is None
    assert math.isclose(sum(WEIGHTS.values()), 1.0) and TERMS == tuple(WEIGHTS)


def test_missing_terms_count_zero_and_are_listed():
    rows = [
        {"method": "float32 (exact)", "kind": "reference", "rel_recall@50": 1.0},
        {"method": "x", "kind": "faiss", "rel_recall@50": 0.9, "compression": float("nan"), "query_ms": None},
    ]
    s = contest_scores(BenchResult(rows=rows, provenance={}))
    x = s[1]
    assert x.terms["recall"] == pytest.approx(0.9)  # mean over the inputs present
    assert x.missing == ("compression", "latency_energy", "robustness", "engineering")
    assert x.total == pytest.approx(100 * 0.5 * 0.9)
    # no float32 row: latency/energy cannot be normalised
    s2 = contest_scores({"rows": [{"method": "y", "kind": "reelpack", "query_ms": 1.0, "rel_recall@50": 1.2}]})
    assert "latency_energy" in s2[0].missing and s2[0].terms["recall"] == 1.0  # clipped


def test_weights_table_and_bad_input():
    rows = [
        {"method": "a", "kind": "reelpack", "rel_recall@50": 0.4, "compression": 32.0},
        {"method": "b", "kind": "faiss", "rel_recall@50": 0.9, "compression": 4.0},
        {"method": "c", "kind": "faiss", "rel_recall@50": 0.9, "compression": 4.0},
    ]
    table = contest_table(contest_scores({"rows": rows}))
    assert [t["method"] for t in table] == ["b", "c", "a"] and [t["rank"] for t in table] == [1, 2, 3]
    json.dumps(table)  # JSON-able
    only_compression = {t: (1.0 if t == "compression" else 0.0) for t in TERMS}
    table = contest_table(contest_scores({"rows": rows}, weights=only_compression))
    assert table[0]["method"] == "a" and table[0]["total"] == 100.0
    with pytest.raises(InvalidInputError, match="sum to 1"):
        contest_scores({"rows": rows}, weights={t: 0.5 for t in TERMS})
    with pytest.raises(InvalidInputError, match="exactly the terms"):
        contest_scores({"rows": rows}, weights={"recall": 1.0})
    with pytest.raises(InvalidInputError):
        contest_scores("not results")
    with pytest.raises(InvalidInputError):
        contest_scores({"rows": [1, 2]})


@settings(max_examples=60, deadline=None)
@given(
    st.floats(0, 1.5), st.floats(0, 1.5), st.floats(0.5, 100), st.floats(0.01, 100), st.floats(0, 1), st.integers(0, 4)
)
def test_total_in_range_and_monotone_in_recall(rel, bump, comp, ms, robust, passed):
    ref = {"method": "f", "kind": "reference", "rel_recall@50": 1.0, "query_ms": 1.0, "est_query_mJ": 1.0, "est_download_J_4g": 1.0}

    def row(r):
        return {"method": "m", "kind": "reelpack", "rel_recall@50": r, "rel_ndcg@10": r, "rel_mrr": r, "compression": comp,
                "query_ms": ms, "est_query_mJ": ms, "est_download_J_4g": 1.0 / comp, "robust_rel_recall@50": robust * r,
                "engineering_checks": {f"c{i}": i < passed for i in range(4)}}  # fmt: skip

    lo = contest_scores({"rows": [ref, row(rel)]})[1]
    hi = contest_scores({"rows": [ref, row(rel + bump)]})[1]
    for s in (lo, hi):
        assert 0.0 <= s.total <= 100.0 and all(v is None or 0.0 <= v <= 1.0 for v in s.terms.values())
    assert hi.terms["recall"] >= lo.terms["recall"]


def _v2_file(tmp_path: Path) -> Path:
    rows, _ = _doc_example()
    p = tmp_path / "r.json"
    p.write_text(BenchResult(rows=rows, provenance={"data": "doc example", "config": {"ks": [10, 50]}}).to_json())
    return p


def test_cli_contest(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["contest", str(_v2_file(tmp_path)), "--json"])
    assert res.exit_code == 0, res.output
    table = json.loads(res.output)
    assert table[0]["method"] == "pq16" and table[0]["total"] == pytest.approx(82.75, abs=1e-3)
    res = runner.invoke(app, ["contest", str(_v2_file(tmp_path))], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "pq16" in res.output and "82.8" in res.output
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"schema_version": 1, "rows": [], "provenance": {}}))
    res = runner.invoke(app, ["contest", str(old)], env={"COLUMNS": "300"})
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert "schema version 1" in out and "re-run `reelpack bench`" in out
