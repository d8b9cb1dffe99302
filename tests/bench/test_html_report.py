"""The HTML report: self-contained, every figure rendered by headless Chromium, clear errors, missing parts noted."""

import json
import os
import re
import shutil
import subprocess
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from reelpack.cli import app
from reelpack.errors import InvalidInputError
from reelpack.bench.harness import RESULTS_SCHEMA_VERSION, BenchResult
from reelpack.bench.html_figures import _layout_labels, _new_figure, _rate_quality_figure, _robustness_data
from reelpack.bench.html_report import FIGURE_IDS, render_html_report, write_html_report
from reelpack.util.atomic import atomic_write_text

RATES = [0.0, 0.05, 0.1, 0.2]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def _sweep_result(n_codecs: int = 15, robustness: bool = True, latency: bool = True) -> BenchResult:
    """A results object shaped like a full sweep: float32 + n_codecs reelpack rows + as many faiss rows."""
    rng = np.random.default_rng(0)
    rows = [{"method": "float32 (exact)", "kind": "reference", "twin_of": None, "bytes_per_item": 256, "compression": 1.0,
             "rel_recall@50": 1.0, "rel_ndcg@10": 1.0, "rel_mrr": 1.0, "recall@50": 0.18, "ndcg@10": 0.058, "overlap@50": 1.0}]
    budgets = [8, 12, 16, 24, 32]
    for i in range(n_codecs):
        b = budgets[i % len(budgets)]
        for kind, name in (("reelpack", f"codec{i}-{b}b" + (" +QAT" if i % 7 == 3 else "")), ("faiss", f"faiss:X{i}x{b}")):
            q = 1.0 - 0.9 / b - 0.05 * rng.random()
            rows.append({"method": name, "kind": kind, "twin_of": None, "bytes_per_item": b, "compression": 256 / b,
                         "rel_recall@50": q, "rel_ndcg@10": q - 0.05 * rng.random(), "rel_mrr": q - 0.04,
                         "recall@50": 0.18 * q, "ndcg@10": 0.058 * q, "overlap@50": q - 0.1})
    curves, how = {}, {}
    for r in rows:
        if latency:
            r["query_ms"] = 0.5 + 2 * rng.random()
            r["est_phone_query_ms"] = 2.0 * r["query_ms"]
            r["est_query_mJ"] = 2.0 * r["query_ms"]
            r["est_download_J_4g"] = 12.0 + r["bytes_per_item"] / 10
        c = [r["rel_recall@50"] * (1 - x) ** (0.9 + 0.2 * rng.random()) for x in RATES]
        curves[r["method"]] = c
        how[r["method"]] = "item-blocks" if r["kind"] == "faiss" else "pack+crc"
        if robustness:
            r["robust_rel_recall@50"] = c[2]
        r["engineering_checks"] = {"pack_roundtrip": True, "crc": True, "deterministic": bool(rng.random() > 0.3), "typed_error": True}
    prov = {
        "command": "reelpack bench --sweep --max-users 20000", "date": "2026-11-27T04:00:00+00:00",
        "data": "amazon-book/interactions.txt", "data_hash": "ab" * 32, "synthetic": False, "n_users": 52643,
        "n_items": 79227, "n_eval_users": 20000, "split_seed": 0, "test_fraction": 0.2, "dim": 64, "threads": 1,
        "versions": {"reelpack": "0.1.0", "numpy": "2.4", "faiss": "1.15"},
        "machine": {"cpu": "Test CPU", "cores": 2, "platform": "Linux", "python": "3.11"},
        "config": {"ks": [10, 20, 50]},
    }
    extra = {}
    if robustness:
        extra["robustness"] = {"metric": "rel_recall@50", "model": "iid", "loss_rates": RATES, "reference_rate": 0.1,
                               "items_per_block": 64, "n_users": 2000, "seeds": [0], "curves": curves, "how": how}
    return BenchResult(rows=rows, provenance=prov, schema_version=RESULTS_SCHEMA_VERSION, extra=extra)


def _figure_block(html: str, fig_id: str) -> str:
    m = re.search(rf'<figure id="{fig_id}"[^>]*>(.*?)</figure>', html, flags=re.S)
    assert m, f"figure {fig_id} missing"
    return m.group(1)


_PROBE = """<script>
window.addEventListener('load', () => {
  const out = {figs: {}, resources: performance.getEntriesByType('resource').map(e => e.name)};
  for (const f of document.querySelectorAll('figure')) {
    const g = f.querySelector('svg, img');
    const r = g ? g.getBoundingClientRect() : null;
    out.figs[f.id] = {graphic: g ? g.tagName.toLowerCase() : null, w: r ? r.width : 0, h: r ? r.height : 0,
                      caption: (f.querySelector('figcaption') || {}).textContent || ''};
  }
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _render_in_chromium(html_path, tmp_path) -> dict:
    """Load a copy of the report plus a probe script in headless Chromium; return what the probe measured."""
    exe = _chromium()
    if exe is None:
        if os.environ.get("REELPACK_REQUIRE_CHROMIUM") == "1":  # set by .ci/run, which installs chromium
            pytest.fail("REELPACK_REQUIRE_CHROMIUM=1 but no Chromium binary was found")
        pytest.skip("no Chromium binary (CI installs chromium via apt)")
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(html_path.read_text().replace("</body>", _PROBE + "</body>"))
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,4000",
    ]
    shot = os.environ.get("REELPACK_REPORT_SCREENSHOT")
    if shot:  # keep a picture for a person to look at
        subprocess.run([exe, *flags, f"--screenshot={shot}", html_path.as_uri()], capture_output=True, timeout=120, check=False)
    proc = subprocess.run([exe, *flags, "--dump-dom", probe_page.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, flags=re.S)
    assert m, f"Chromium did not render the page: rc {proc.returncode}, stderr tail {proc.stderr[-2000:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


def test_full_sweep_report_renders_every_figure_offline(tmp_path):
    result = _sweep_result()
    assert len(result.rows) == 31
    path = write_html_report(result, tmp_path / "sub" / "report.html")
    html = path.read_text()
    assert path.stat().st_size < 2_000_000
    # self-contained: no URL of any kind, no external resource reference
    assert "http://" not in html and "https://" not in html and "//" not in re.sub(r"<style>.*?</style>", "", html, flags=re.S).replace("<!DOCTYPE", "")
    assert not re.search(r"\bsrc\s*=", html) and "@import" not in html and "<script" not in html
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', html))
    # several inline SVGs in one document: ids must stay unique
    ids = Counter(re.findall(r'\bid="([^"]+)"', html))
    assert [i for i, n in ids.items() if n > 1] == []
    for fig_id in FIGURE_IDS:
        block = _figure_block(html, fig_id)
        assert "<svg" in block and "<figcaption>" in block and "not measured" not in block
    # every method is named in the page: figures label points, tables list rows
    for r in result.rows:
        assert r["method"].replace("+", "") in html.replace("+", "")
    # contest table sorted by total, one row per method
    totals = [float(t) for t in re.findall(r"<td class=\"\"><b>([\d.]+)</b></td>", html)]
    assert len(totals) == len(result.rows) and totals == sorted(totals, reverse=True)
    # provenance
    prov = re.search(r'<section id="provenance">(.*?)</section>', html, flags=re.S).group(1)
    for text in ("reelpack bench --sweep --max-users 20000", "ab" * 32, "Test CPU", "faiss 1.15", f"<dd>{RESULTS_SCHEMA_VERSION}</dd>"):
        assert text in prov

    probe = _render_in_chromium(path, tmp_path)
    assert probe["resources"] == []  # no network request of any kind
    for fig_id in FIGURE_IDS:
        fig = probe["figs"][fig_id]
        assert fig["graphic"] == "svg" and fig["w"] > 300 and fig["h"] > 150, (fig_id, fig)
        assert fig["caption"].startswith("Figure")


def test_missing_parts_are_noted_not_fatal(tmp_path):
    result = _sweep_result(n_codecs=2, robustness=False, latency=False)
    html = render_html_report(result)
    for fig_id in ("fig-robustness", "fig-latency"):
        block = _figure_block(html, fig_id)
        assert "<svg" not in block and "not measured in this run" in block
    assert "<svg" in _figure_block(html, "fig-rate-quality") and "<svg" in _figure_block(html, "fig-contest")
    assert "Terms not measured for some methods" in html and "robustness" in html
    # malformed optional blocks and odd values degrade to notes, not exceptions
    result.extra["robustness"] = {"loss_rates": [0, 0.1], "curves": {"codec0-8b": [1.0], "float32 (exact)": [1.0, float("nan")]}}
    rob, notes = _robustness_data(result)
    assert list(rob["curves"]) == ["float32 (exact)"] and rob["curves"]["float32 (exact)"] == [1.0, None]
    assert any("codec0-8b: malformed" in n for n in notes)
    result.extra["robustness"] = {"loss_rates": "x", "curves": {}}
    assert _robustness_data(result)[0] is None
    # a run without NDCG still plots recall and says NDCG was not measured
    for r in result.rows:
        r.pop("rel_ndcg@10", None)
    svg, notes = _rate_quality_figure(result, 50)
    assert svg.startswith("<svg") and notes == ["relative NDCG@10: not measured in this run."]
    with pytest.raises(InvalidInputError, match="no rows"):
        render_html_report(BenchResult(rows=[], provenance={}))
    with pytest.raises(InvalidInputError):
        render_html_report(42)


def test_labels_do_not_overlap():
    """A crowded column of points: after layout no two labels overlap and every label stays in the axes."""
    import matplotlib as mpl
    from matplotlib.text import Text

    with mpl.rc_context({"svg.fonttype": "none"}):
        fig = _new_figure(6.0, 4.0)
        ax = fig.subplots()
        ys = np.linspace(0.90, 0.93, 12)
        ax.plot([16] * 12, ys, "o")
        ax.set_xscale("log", base=2)
        ax.set_xlim(6, 48)
        ax.set_ylim(0.7, 1.0)
        fig.canvas.draw()
        _layout_labels(ax, [(16, y, f"method-{i}-long", "k", "right" if i % 2 else "left") for i, y in enumerate(ys)],
                       [(16, y) for y in ys])
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]  # the text alone, not its leader line
        axbox = ax.get_window_extent(renderer)
    assert len(boxes) == 12
    for i, a in enumerate(boxes):
        assert a.y0 >= axbox.y0 - 1 and a.y1 <= axbox.y1 + 1
        for b in boxes[i + 1 :]:
            overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0)
            overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert overlap_x <= 0.5 or overlap_y <= 0.5, (a, b)


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory, clustered_bench_data):
    """A real (tiny) bench run written as results JSON."""
    from reelpack.bench.harness import BenchConfig, run_bench
    from reelpack.bench.report import write_results

    split, _, users, items = clustered_bench_data(200, 300, 6)
    kwargs = {"codecs": ("sq8", "pq4"), "max_users": 100, "batch_size": 128}
    try:
        config = BenchConfig(**kwargs, robust_users=60)
    except TypeError:  # a bench without the robustness options
        config = BenchConfig(**kwargs)
    result = run_bench(users, items, split, config)
    json_path, _ = write_results(result, tmp_path_factory.mktemp("res"), "bench")
    return json_path


def test_cli_report_from_a_real_bench_run(bench_json, tmp_path):
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["report", str(bench_json), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output
    html = out.read_text()
    for fig_id in ("fig-rate-quality", "fig-latency", "fig-contest"):
        assert "<svg" in _figure_block(html, fig_id)
    data = json.loads(bench_json.read_text())
    rob = _figure_block(html, "fig-robustness")
    if (data.get("extra") or {}).get("robustness"):
        assert "<svg" in rob
    else:
        assert "not measured in this run" in rob
    for r in data["rows"]:
        assert r["method"] in html


def test_cli_refuses_old_and_missing_results(tmp_path):
    old = tmp_path / "old.json"
    atomic_write_text(old, json.dumps({"schema_version": 1, "rows": [{"method": "x"}], "provenance": {}}))
    res = CliRunner().invoke(app, ["report", str(old), "-o", str(tmp_path / "o.html")])
    assert res.exit_code == 2
    assert "version 1" in res.output and not (tmp_path / "o.html").exists()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope.json"), "-o", str(tmp_path / "o.html")])
    assert res.exit_code == 2 and "not found" in res.output
