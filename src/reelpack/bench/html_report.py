"""One self-contained HTML report of a bench run (``reelpack report RESULTS.json -o report.html``).

The page needs no network: every figure is inline SVG drawn by matplotlib (text kept as text, so it
can be searched and copied), the style sheet is inline, there are no scripts, fonts or external URLs.
Sections (each figure is a ``<figure id="fig-...">`` with a ``<figcaption>``):

* ``fig-rate-quality``: bytes per item (log scale) against relative Recall@K and relative NDCG@10,
  reelpack codecs and faiss side by side, float32 as the reference line, the best method of each
  kind per budget joined and labelled; every point is listed in the table under the figure;
* ``fig-latency``: measured ``query_ms`` per method (one query at a time through each method's
  single-query path, median with a whisker to p90; float32 marked), with the estimated phone
  milliseconds as a second axis when the run has them; the caption and table say which path was timed;
* ``fig-robustness``: relative Recall@K against the block-loss rate (``extra["robustness"]``), one
  panel per byte budget;
* ``fig-contest``: the contest score (:mod:`reelpack.bench.contest`) as stacked weighted terms, and
  the score table;
* the run's provenance (command, date, versions, data and its hash, machine, schema version).

A part that the run did not measure (no robustness block, no latency) is replaced by a visible
"not measured in this run" note; the report never fails for a missing optional field.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reelpack.bench.html_figures import (
    _TERM_LABELS,
    _contest,
    _contest_figure,
    _esc,
    _fmt,
    _k_of,
    _kind,
    _latency_figure,
    _latency_rows,
    _rate_quality_figure,
    _robustness_data,
    _robustness_figure,
)
from reelpack.bench.contest import _num  # a finite float, or None
from reelpack.bench.latency import latency_note
from reelpack.bench.results import BenchResult, load_results
from reelpack.errors import InvalidInputError
from reelpack.util.atomic import atomic_write_bytes

__all__ = ["FIGURE_IDS", "render_html_report", "write_html_report"]

FIGURE_IDS: tuple[str, ...] = ("fig-rate-quality", "fig-latency", "fig-robustness", "fig-contest")
"""The ``id`` of every figure of a report, in page order."""


_CSS = """
body{font-family:"DejaVu Sans",Arial,Helvetica,sans-serif;margin:0;color:#1b1b1b;background:#fafafa;line-height:1.45}
main{max-width:1260px;margin:0 auto;padding:16px 28px 48px;background:#fff}
h1{font-size:1.6em;margin:0.4em 0 0.1em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#555;margin:0 0 1em}
nav a{margin-right:1.2em;color:#1f62b4;text-decoration:none}
figure{margin:1em 0 1.5em;padding:0}
figcaption{font-size:0.92em;color:#333;margin-top:0.4em;max-width:1100px}
.missing{background:#fff4e5;border:1px solid #f0c27b;color:#7a4b00;padding:10px 14px;border-radius:4px;font-weight:bold}
.note{color:#7a4b00;font-size:0.92em}
table{border-collapse:collapse;font-size:0.86em;margin:0.6em 0 1em}
th,td{border-bottom:1px solid #e3e3e3;padding:3px 9px;text-align:right;white-space:nowrap}
th{background:#f2f2f2;position:sticky;top:0}
td.m,th.m{text-align:left}
tr.faiss td.m{color:#a14c00}tr.reelpack td.m{color:#174a87}tr.reference td{font-weight:bold}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;font-size:0.92em}
dt{font-weight:bold;color:#444}dd{margin:0;word-break:break-all}
code{font-size:0.95em;background:#f3f3f3;padding:1px 4px;border-radius:3px}
.tablewrap{overflow-x:auto}
"""


def _table(headers: Sequence[tuple[str, str]], rows: Sequence[tuple[str, Sequence[str]]], table_id: str) -> str:
    """An HTML table; ``headers`` = (label, css class); ``rows`` = (row css class, cell texts already escaped)."""
    head = "".join(f'<th class="{c}">{_esc(h)}</th>' for h, c in headers)
    body = "".join(
        f'<tr class="{_esc(cls)}">' + "".join(f'<td class="{hc}">{cell}</td>' for (_, hc), cell in zip(headers, cells)) + "</tr>"
        for cls, cells in rows
    )
    return f'<div class="tablewrap"><table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _figure_html(fig_id: str, title: str, svg: str | None, caption: str, notes: Sequence[str], after: str = "") -> str:
    if svg is None:
        body = '<p class="missing">' + "<br>".join(_esc(n) for n in notes) + "</p>"
        extra_notes = ""
    else:
        body = svg
        extra_notes = "".join(f'<p class="note">{_esc(n)}</p>' for n in notes)
    cls = ' class="missing-figure"' if svg is None else ""
    return (
        f'<section><h2>{_esc(title)}</h2><figure id="{fig_id}"{cls}>'
        f"{body}<figcaption>{caption}</figcaption></figure>{extra_notes}{after}</section>"
    )


def _points_table(result: BenchResult, k: int) -> str:
    rows = sorted(
        (r for r in result.rows if _num(r.get("bytes_per_item")) is not None),
        key=lambda r: (_kind(r) != "reference", float(r["bytes_per_item"]), _kind(r), str(r["method"])),
    )
    headers = [("method", "m"), ("kind", "m"), ("B/item", ""), ("compression", ""), (f"rel R@{k}", ""), ("rel NDCG@10", ""),
               ("rel MRR", ""), (f"top-{k} overlap", ""), (f"R@{k}", ""), ("NDCG@10", "")]
    cells = [
        (_kind(r), [_esc(r["method"]), _esc(_kind(r)), _fmt(r.get("bytes_per_item"), "g"), _fmt(r.get("compression"), ".1f") + "x",
                    _fmt(r.get(f"rel_recall@{k}"), ".3f"), _fmt(r.get("rel_ndcg@10"), ".3f"), _fmt(r.get("rel_mrr"), ".3f"),
                    _fmt(r.get(f"overlap@{k}"), ".3f"), _fmt(r.get(f"recall@{k}"), ".4f"), _fmt(r.get("ndcg@10"), ".4f")])
        for r in rows
    ]
    return _table(headers, cells, "table-rate-quality")


def _latency_table(result: BenchResult) -> str:
    rows = _latency_rows(result)
    if not rows:
        return ""
    k = _k_of(result)
    headers = [("method", "m"), ("B/item", ""), ("query ms", ""), ("query ms p90", ""), (f"top-{k} agreement", ""),
               ("est. phone ms", ""), ("est. query mJ", ""), ("est. download J (4G)", ""), ("fit s", ""), ("encode s", ""),
               ("timed path", "m")]  # fmt: skip
    cells = [
        (_kind(r), [_esc(r["method"]), _fmt(r.get("bytes_per_item"), "g"), _fmt(r.get("query_ms"), ".3f"),
                    _fmt(r.get("query_ms_p90"), ".3f"), _fmt(r.get(f"latency_overlap@{k}"), ".3f"),
                    _fmt(r.get("est_phone_query_ms"), ".3f"), _fmt(r.get("est_query_mJ", r.get("est_cpu_mJ_per_query")), ".3f"),
                    _fmt(r.get("est_download_J_4g"), ".2f"), _fmt(r.get("fit_s"), ".2f"), _fmt(r.get("encode_s"), ".2f"),
                    _esc(r.get("latency_path") or "-")])
        for r in rows
    ]
    return _table(headers, cells, "table-latency")


def _robustness_table(result: BenchResult, rob: Mapping[str, Any], k: int) -> str:
    rates = rob["loss_rates"]
    by_method = {str(r["method"]): r for r in result.rows}
    headers = [("method", "m"), ("how", "m"), ("B/item", "")] + [(f"loss {x:g}", "") for x in rates] + [(f"robust rel R@{k} (row)", "")]
    how = rob.get("how") if isinstance(rob.get("how"), Mapping) else {}
    cells = []
    order = {"reference": 0, "reelpack": 1, "faiss": 2}
    methods = sorted(rob["curves"], key=lambda m: (
        _kind(by_method.get(m, {})) != "reference", _num(by_method.get(m, {}).get("bytes_per_item")) or math.inf,
        order[_kind(by_method.get(m, {}))], m))
    for m in methods:
        ys = rob["curves"][m]
        r = by_method.get(m, {})
        cells.append((_kind(r), [_esc(m), _esc(how.get(m, "-")), _fmt(r.get("bytes_per_item"), "g")]
                      + [_fmt(v, ".3f") for v in ys] + [_fmt(r.get(f"robust_rel_recall@{k}"), ".3f")]))
    return _table(headers, cells, "table-robustness")


def _contest_table_html(scores: Sequence[Any], weights: Mapping[str, float]) -> str:
    headers = [("rank", ""), ("method", "m"), ("kind", "m"), ("total", "")] + [
        (f"{_TERM_LABELS.get(t, t)} ({100 * w:g})", "") for t, w in weights.items()
    ] + [("missing", "m")]
    cells = []
    for rank, s in enumerate(scores, 1):
        terms = [_fmt(s.terms.get(t), ".3f") for t in weights]
        cells.append((s.kind, [str(rank), _esc(s.method), _esc(s.kind), f"<b>{s.total:.1f}</b>", *terms, _esc(", ".join(s.missing) or "-")]))
    return _table(headers, cells, "table-contest")


def _provenance_html(result: BenchResult) -> str:
    p = result.provenance or {}
    m = p.get("machine") if isinstance(p.get("machine"), Mapping) else {}
    versions = p.get("versions") if isinstance(p.get("versions"), Mapping) else {}
    dm = p.get("device_model")
    items: list[tuple[str, str]] = [
        ("command", f"<code>{_esc(p.get('command', '-'))}</code>"),
        ("date", _esc(p.get("date", "-"))),
        ("results schema version", _esc(result.schema_version)),
        ("data", _esc(p.get("data", "-")) + (" (SYNTHETIC)" if p.get("synthetic") else "")),
        ("data hash (sha256)", f"<code>{_esc(p.get('data_hash', '-'))}</code>"),
        ("users x items", f"{_esc(p.get('n_users', '-'))} x {_esc(p.get('n_items', '-'))}; evaluated users: {_esc(p.get('n_eval_users', '-'))}"),
        ("split", f"seed {_esc(p.get('split_seed', '-'))}, test fraction {_esc(p.get('test_fraction', '-'))}"),
        ("embedding dim", _esc(p.get("dim", "-"))),
        ("embeddings", _esc(p.get("embeddings", "-"))),
        ("versions", _esc(", ".join(f"{k} {v}" for k, v in versions.items()) or "-")),
        ("machine", _esc(", ".join(f"{k}: {v}" for k, v in m.items()) or "-")),
        ("threads", _esc(p.get("threads", "-"))),
    ]
    lat = p.get("latency")
    if isinstance(lat, Mapping):
        paths = lat.get("paths") if isinstance(lat.get("paths"), Mapping) else {}
        text = "; ".join(f"{k}: {v}" for k, v in lat.items() if k != "paths")
        items.append(("latency timing", _esc(text) + "".join(f"<br>{_esc(k)}: <code>{_esc(v)}</code>" for k, v in paths.items())))
    if isinstance(dm, Mapping):
        items.append(("device model (estimates)", _esc(", ".join(f"{k}: {v}" for k, v in dm.items() if not isinstance(v, (Mapping, list))))))
    elif dm:
        items.append(("device model (estimates)", _esc(dm)))
    if isinstance(p.get("config"), Mapping):
        cfg = ", ".join(f"{k}={v}" for k, v in p["config"].items())
        items.append(("bench config", f"<code>{_esc(cfg)}</code>"))
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _as_result(result_or_path: BenchResult | Mapping[str, Any] | str | os.PathLike) -> BenchResult:
    if isinstance(result_or_path, BenchResult):
        return result_or_path
    if isinstance(result_or_path, (str, os.PathLike)):
        return load_results(result_or_path)
    if isinstance(result_or_path, Mapping):
        rows = result_or_path.get("rows")
        if not isinstance(rows, list) or not all(isinstance(r, Mapping) and "method" in r for r in rows):
            raise InvalidInputError("a results dict needs 'rows': a list of row dicts with a 'method'")
        return BenchResult(
            rows=list(rows),
            provenance=dict(result_or_path.get("provenance") or {}),
            schema_version=result_or_path.get("schema_version", 0),
            extra=dict(result_or_path.get("extra") or {}),
        )
    raise InvalidInputError(f"expected a BenchResult, a results dict or a path, got {type(result_or_path).__name__}")


def render_html_report(result: BenchResult | Mapping[str, Any] | str | os.PathLike) -> str:
    """The report of ``result`` (a BenchResult, its JSON dict or a results path) as one HTML string.

    Raises:
        InvalidInputError: the input is not a bench result (or :func:`load_results` refuses the file:
            unknown schema version, invalid JSON); DataNotFoundError: no such file.
    """
    result = _as_result(result_or_path=result)
    if not result.rows:
        raise InvalidInputError("the results have no rows: nothing to report")
    k = _k_of(result)
    p = result.provenance or {}
    title = "reelpack bench report"
    sub = (
        f"data: {_esc(p.get('data', 'unknown'))}<br>d = {_esc(p.get('dim', '?'))} &middot; {_esc(p.get('n_eval_users', '?'))} evaluated users x {_esc(p.get('n_items', '?'))} items "
        f"&middot; {len(result.rows)} methods &middot; {_esc(p.get('date', 'date unknown'))} &middot; results schema v{_esc(result.schema_version)}"
    )
    kinds_note = (
        'Marker and text colours: <span style="color:#174a87">blue = reelpack</span>, '
        '<span style="color:#a14c00">orange = faiss</span>, black = float32 (exact).'
    )
    parts = []

    svg, notes = _rate_quality_figure(result, k)
    parts.append(_figure_html(
        "fig-rate-quality", "Rate-quality", svg,
        f"Figure 1. Bytes per item (log scale) against relative Recall@{k} (top) and relative NDCG@10 (bottom), "
        "each relative to float32 in the same run (1 = no loss). Filled circles: reelpack codecs; triangles: reelpack "
        "codecs after compression-aware training; hollow squares: faiss at the same budgets; dotted line: float32. "
        "Lines join, per kind, the methods that beat every cheaper method of that kind. Labels that had to move "
        "apart are joined to their point by a grey line; every point is also in the table below. " + kinds_note,
        notes, _points_table(result, k),
    ))

    svg, notes = _latency_figure(result)
    parts.append(_figure_html(
        "fig-latency", "Latency", svg,
        "Figure 2. Measured time of ONE query on this machine (<code>query_ms</code>: median over a seeded sample of "
        "users, each query timed alone, one thread; whiskers up to the 90th percentile), grouped by bytes per item; "
        "the dotted line marks float32. The top axis, where present, is an ESTIMATE for a phone (docs/ENERGY.md), "
        "not a measurement. " + _esc(latency_note(result.rows) or "") + " " + kinds_note,
        notes, _latency_table(result),
    ))

    rob, notes = _robustness_data(result)
    if rob is None:
        parts.append(_figure_html(
            "fig-robustness", "Robustness under packet loss", None,
            "Figure 3. Relative recall against the block-loss rate: not available for this run.", notes,
        ))
    else:
        how = rob.get("how") if isinstance(rob.get("how"), Mapping) else {}
        hows = sorted({str(v) for v in how.values()})
        parts.append(_figure_html(
            "fig-robustness", "Robustness under packet loss", _robustness_figure(result, rob, k),
            f"Figure 3. {_esc(rob.get('metric', f'rel_recall@{k}'))} (relative to float32 without loss) against the "
            f"share of lost blocks ({_esc(rob.get('model', 'iid'))} loss, {_esc(rob.get('items_per_block', '?'))} items "
            f"per block, a seeded sample of {_esc(rob.get('n_users', '?'))} users, so the no-loss value can differ "
            f"from the row's full-run relative recall; seeds {_esc(rob.get('seeds', '?'))}), one panel per "
            "byte budget; solid lines: reelpack (real pack, lost blocks corrupted and detected by CRC), dashed: faiss "
            f"(the same item blocks dropped), dotted black: float32. Measured how: {_esc(', '.join(hows) or '-')}.",
            notes, _robustness_table(result, rob, k),
        ))

    scores, weights, notes = _contest(result)
    if scores is None or not scores:
        parts.append(_figure_html("fig-contest", "Contest score", None, "Figure 4. Contest score: not available.", notes or ["Contest score: no rows."]))
    else:
        missing_any = sorted({t for s in scores for t in s.missing})
        if missing_any:
            notes = notes + [f"Terms not measured for some methods (they count 0): {', '.join(missing_any)}."]
        wtxt = ", ".join(f"{_TERM_LABELS.get(t, t)} {100 * w:g} %" for t, w in weights.items())
        parts.append(_figure_html(
            "fig-contest", "Contest score", _contest_figure(scores, weights),
            f"Figure 4. Contest score per method, highest first: each segment is 100 x weight x the term normalised to "
            f"[0, 1] (weights: {_esc(wtxt)}; formulas in docs/SCORING.md). The table gives each normalised term "
            "(before weighting). The latency half of latency / energy compares each method's query_ms, timed one "
            "query at a time as in Figure 2, with float32's. " + kinds_note,
            notes, _contest_table_html(scores, weights),
        ))

    parts.append(f'<section id="provenance"><h2>Provenance</h2>{_provenance_html(result)}</section>')
    nav = "".join(
        f'<a href="#{i}">{t}</a>'
        for i, t in (("fig-rate-quality", "Rate-quality"), ("fig-latency", "Latency"), ("fig-robustness", "Robustness"),
                     ("fig-contest", "Contest score"), ("provenance", "Provenance"))
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_esc(title)}</title>"
        f"<style>{_CSS}</style></head><body><main><h1>{_esc(title)}</h1><p class=\"sub\">{sub}</p><nav>{nav}</nav>"
        + "".join(parts)
        + "</main></body></html>\n"
    )


def write_html_report(result_or_path: BenchResult | Mapping[str, Any] | str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Render the report of ``result_or_path`` and write it to ``out_path`` atomically; return the path.

    Args:
        result_or_path: a :class:`BenchResult`, its JSON dict, or the path of a results JSON written by
            ``reelpack bench`` (read with :func:`reelpack.bench.harness.load_results`, which refuses other
            schema versions with a message saying what to do).
        out_path: the HTML file to write (replaced atomically; parent folders are created).
    """
    return atomic_write_bytes(out_path, render_html_report(result_or_path).encode("utf-8"))
