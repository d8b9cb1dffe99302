"""Render bench results: a rich table for the terminal, Markdown for BENCHMARKS.md, JSON on disk.

A run with a validation split (``reelpack bench --val-fraction F``) shows its validation and test figures side by
side ("val rel R@50 | test rel R@50"), the compression-aware training choice of each QAT row, and the rate-quality
methods chosen on validation.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.table import Table

from reelpack.bench.latency import latency_note
from reelpack.bench.results import BenchResult
from reelpack.util.atomic import atomic_write_text

__all__ = ["results_table", "results_markdown", "write_results", "contest_rich_table", "contest_markdown", "format_cell",
           "has_validation", "validation_note"]  # fmt: skip


def _k(result: BenchResult) -> int:
    """The run's ranking depth (max of its cut-offs)."""
    return max(result.provenance.get("config", {}).get("ks", [10, 20, 50]))


def has_validation(result: BenchResult) -> bool:
    """Whether the run has validation figures (rows with ``val_rel_recall@K``, a run with ``val_split``)."""
    key = f"val_rel_recall@{_k(result)}"
    return any(row.get(key) is not None for row in result.rows)


def _quality_columns(result: BenchResult, terminal: bool = False) -> list[tuple[str, str, str]]:
    """The quality columns: test only, or validation and test side by side when the run has validation figures
    (``terminal``: side by side for the relative metrics only, to keep the rich table narrow)."""
    k = _k(result)
    cols = [
        (f"Recall@{k}", f"recall@{k}", ".4f"),
        ("NDCG@10", "ndcg@10", ".4f"),
        ("MRR", "mrr", ".4f"),
        (f"rel R@{k}", f"rel_recall@{k}", ".3f"),
        ("rel NDCG@10", "rel_ndcg@10", ".3f"),
    ]
    if not has_validation(result):
        return cols
    out = []
    for head, key, fmt in cols:
        if not terminal or key.startswith("rel_"):
            out.append((f"val {head}", f"val_{key}", fmt))
        out.append((f"test {head}", key, fmt))
    return out


def _columns(result: BenchResult, terminal: bool = False) -> list[tuple[str, str, str]]:
    """(header, row key, format) of the table columns (``terminal``: the rich table's narrower choice)."""
    k = _k(result)
    qat: list[tuple[str, str, str]] = []
    if any(r.get("qat_choice") for r in result.rows):  # the full sentence in Markdown, its first word in the terminal
        qat = [("QAT (validation)", "_qat", "s")] if terminal else [("QAT choice (validation)", "qat_choice", "s")]
    return [
        ("method", "method", "s"),
        ("bytes/item", "bytes_per_item", "d"),
        ("compr. x", "compression", ".1f"),
        *_quality_columns(result, terminal),
        (f"top-{k} overlap", f"overlap@{k}", ".3f"),
        ("vs faiss twin", f"delta_rel_recall@{k}_vs_faiss", "+.3f"),
        ("MSE", "mse", ".4f"),
        ("Gaussian D(R)", "rd_bound", ".4f"),
        ("fit s", "fit_s", ".2f"),
        ("encode s", "encode_s", ".2f"),
        ("rank s", "rank_s", ".2f"),
        ("query ms", "query_ms", ".3f"),
        ("est. phone ms", "est_phone_query_ms", ".3f"),
        ("est. download J (4G)", "est_download_J_4g", ".2f"),
        (f"loss-10% rel R@{k}", f"robust_rel_recall@{k}", ".3f"),
        ("checks", "_checks", "s"),
        ("contest", "_contest", ".1f"),
        *qat,
    ]


def _display_rows(result: BenchResult) -> list[dict]:
    """The rows plus the derived cells: ``_checks`` ("passed/applicable" engineering checks),
    ``_contest`` (the contest total; from ``extra["contest"]``, else computed from the rows) and ``_qat``
    (the first word of ``qat_choice``: kept / dropped / diverged)."""
    from reelpack.bench.contest import contest_scores

    totals: dict[str, float] = {}
    stored = (result.extra or {}).get("contest")
    if isinstance(stored, list) and all(isinstance(c, dict) and "method" in c for c in stored):
        totals = {c["method"]: c.get("total") for c in stored}
    else:
        totals = {c.method: c.total for c in contest_scores(result)}
    out = []
    for row in result.rows:
        checks = row.get("engineering_checks")
        cell = None
        if isinstance(checks, dict):
            vals = [bool(v) for v in checks.values() if v is not None]
            cell = f"{sum(vals)}/{len(vals)}" if vals else None
        choice = row.get("qat_choice")
        qat = choice.split(" ", 1)[0].rstrip(":") if isinstance(choice, str) and choice else None
        out.append({**row, "_checks": cell, "_contest": totals.get(row.get("method")), "_qat": qat})
    return out


def _estimate_note(result: BenchResult) -> str | None:
    """The footnote under the Markdown table saying which columns are estimates and where the constants live."""
    dm = result.provenance.get("device_model")
    if not dm and not any("est_phone_query_ms" in r for r in result.rows):
        return None
    name = dm.get("name") if isinstance(dm, dict) else dm
    return (
        f"Columns headed \"est.\" are ESTIMATES for a phone, not measurements: \"est. phone ms\" is the measured "
        f"\"query ms\" (one query on this machine, see the latency note) "
        f"times the core-speed ratio of device model `{name}`; \"est. download J (4G)\" is the codes' bytes "
        "(bytes/item x items) through an LTE power model, promotion and tail included. Constants and their sources: "
        "docs/ENERGY.md."
    )


def format_cell(value: object, fmt: str) -> str:
    """One table cell: ``-`` for None, strings as they are, numbers with ``fmt`` (falling back to ``str``)."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    try:
        return format(value, fmt)
    except (TypeError, ValueError):
        return str(value)


def _title(result: BenchResult) -> str:
    p = result.provenance
    title = (
        f"{p.get('data')} | d={p.get('dim')} | {p.get('n_eval_users')} users x {p.get('n_items')} items | "
        f"{p.get('threads')} thread(s)"
    )
    val = p.get("validation")
    if isinstance(val, dict):
        title += f" | validation: {val.get('n_users')} users"
    return title


def validation_note(result: BenchResult) -> str | None:
    """What the validation columns are and which choices were taken on them; ``None`` without validation."""
    val = result.provenance.get("validation")
    if not isinstance(val, dict):
        return None
    k = _k(result)
    qat = [c for c in val.get("choices_on_validation", []) if isinstance(c, dict) and c.get("what", "").endswith("+QAT")]
    text = (
        f"Validation: {val.get('fraction')} of each user's train items (seed {val.get('seed')}) held out; the model "
        f"trained on the rest; {val.get('n_users')} validation users ranked with the fit items excluded. \"val\" "
        f"columns are those users, \"test\" columns the test users (test split read {result.provenance.get('test_read', '?')}). "
        f"Choices are taken on validation rel R@{k}: compression-aware training is kept only when it beats the "
        "untouched codec"
    )
    if qat:
        text += " (" + "; ".join(f"{c['what']}: {c['choice']}" for c in qat) + ")"
    return text + ", and the rate-quality table's methods are the best on validation."


def results_table(result: BenchResult) -> Table:
    """A rich table of every row; faiss rows dimmed under their reelpack twin."""
    cols = _columns(result, terminal=True)
    caption = "\n".join(n for n in (latency_note(result.rows), validation_note(result)) if n)
    table = Table(title=_title(result), title_justify="left", caption=caption or None, caption_justify="left")
    for header, key, fmt in cols:
        table.add_column(header, justify="left" if fmt == "s" else "right", no_wrap=True)
    for row in _display_rows(result):
        style = "dim" if row.get("kind") == "faiss" else ("bold" if row.get("kind") == "reference" else None)
        table.add_row(*(format_cell(row.get(key), fmt) for _, key, fmt in cols), style=style)
    return table


def results_markdown(result: BenchResult) -> str:
    """A Markdown table plus the run's provenance (command, date, machine, versions, data)."""
    cols = _columns(result)
    p = result.provenance
    lines = [f"**{_title(result)}**", ""]
    lines.append("| " + " | ".join(h for h, _, _ in cols) + " |")
    lines.append("|" + "|".join("---" if f == "s" else "---:" for _, _, f in cols) + "|")
    for row in _display_rows(result):
        cells = [format_cell(row.get(key), fmt).replace("|", "\\|") for _, key, fmt in cols]
        if row.get("kind") == "faiss":
            cells[0] = f"&nbsp;&nbsp;{cells[0]}"
        lines.append("| " + " | ".join(cells) + " |")
    for note in (latency_note(result.rows), _estimate_note(result), validation_note(result)):
        if note:
            lines += ["", note]
    lines += rate_quality_markdown(result)
    lines += robustness_markdown(result)
    lines += contest_markdown(result)
    m = p.get("machine", {})
    versions = ", ".join(f"{k} {v}" for k, v in p.get("versions", {}).items())
    lines += [
        "",
        f"- command: `{p.get('command')}`",
        f"- date: {p.get('date')}",
        f"- machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('platform')}, Python {m.get('python')}",
        f"- versions: {versions}",
        f"- data: {p.get('data')} (sha256 {str(p.get('data_hash'))[:12]}...), split seed {p.get('split_seed')}",
    ]
    if p.get("embeddings"):
        lines.append(f"- embeddings: {p['embeddings']}")
    val = p.get("validation")
    if isinstance(val, dict):
        lines.append(
            f"- validation: fraction {val.get('fraction')}, seed {val.get('seed')}, {val.get('n_users')} users "
            f"(of {val.get('n_users_with_items')} with validation items); test read {p.get('test_read')}"
        )
    dm = p.get("device_model")
    if isinstance(dm, dict):
        lines.append(
            f"- device model (estimates only, docs/ENERGY.md): {dm.get('name')}, core-speed ratio "
            f"{dm.get('core_speed_ratio')}, {dm.get('cpu_watts_active')} W per busy core"
        )
    return "\n".join(lines) + "\n"


def rate_quality_markdown(result: BenchResult) -> list[str]:
    """Lines of a Markdown table: per byte budget, the best reelpack and faiss methods and the bar.

    Empty when the run has no ``extra["rate_quality"]`` (see :func:`reelpack.bench.harness.rate_quality`). A run
    with validation figures shows the methods chosen on validation instead (``extra["rate_quality_validation"]``,
    :func:`reelpack.bench.harness.rate_quality_on_validation`), validation and test side by side.
    """
    chosen = (result.extra or {}).get("rate_quality_validation")
    if isinstance(chosen, dict) and chosen.get("budgets"):
        return _rate_quality_validation_markdown(chosen)
    rq = (result.extra or {}).get("rate_quality")
    if not rq:
        return []
    key = rq["metric"]
    lines = [
        "",
        f"Rate-quality: best method at or under each budget (bar = best faiss + half its gap to float32, {key}).",
        "",
        f"| budget B/item | best reelpack | {key} | rel NDCG@10 | best faiss | {key} | bar | met |",
        "|---:|---|---:|---:|---|---:|---:|---|",
    ]
    return lines + rate_quality_rows(rq["budgets"], (key, "rel_ndcg@10"), (key,))


def _rate_quality_validation_markdown(rq: dict) -> list[str]:
    """Lines of the rate-quality table whose methods were chosen on validation (validation and test figures)."""
    key, vkey = rq["metric"], rq["chosen_on"]
    short = key.replace("rel_recall@", "rel R@")
    lines = [
        "",
        f"Rate-quality: best method at or under each budget, CHOSEN on validation {short} (bar = the chosen faiss "
        f"method's test {short} + half its gap to float32; met: the chosen reelpack method's test {short} reaches it).",
        "",
        f"| budget B/item | reelpack (chosen on val) | val {short} | test {short} | test rel NDCG@10 "
        f"| faiss (chosen on val) | val {short} | test {short} | bar | met |",
        "|---:|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    return lines + rate_quality_rows(rq["budgets"], (vkey, key, "rel_ndcg@10"), (vkey, key))


def rate_quality_rows(budgets: dict, reelpack_keys: tuple[str, ...], faiss_keys: tuple[str, ...]) -> list[str]:
    """One Markdown table row per budget of ``budgets`` (``{budget: entry}``, as in ``extra["rate_quality"]``): the
    budget, the best reelpack method and its ``reelpack_keys`` figures, the best faiss method and its ``faiss_keys``
    figures, the bar and whether the reelpack method meets it (``-`` where a method or figure is missing)."""
    lines = []
    for budget, entry in budgets.items():
        r, f = entry.get("best_reelpack"), entry.get("best_faiss")
        cells = [
            budget,
            r["method"] if r else "-",
            *(format_cell(r.get(k) if r else None, ".3f") for k in reelpack_keys),
            f["method"] if f else "-",
            *(format_cell(f.get(k) if f else None, ".3f") for k in faiss_keys),
            format_cell(entry.get("bar"), ".3f"),
            {True: "yes", False: "no"}.get(entry.get("closes_half_gap"), "-"),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def robustness_markdown(result: BenchResult) -> list[str]:
    """Lines of a Markdown table of the loss curves (``extra["robustness"]``); empty when not measured."""
    rob = (result.extra or {}).get("robustness")
    if not isinstance(rob, dict) or not rob.get("curves"):
        return []
    rates = rob.get("loss_rates", [])
    lines = [
        "",
        f"Robustness under loss: {rob.get('metric')} vs float32 without loss, {rob.get('model')} loss of "
        f"{rob.get('items_per_block')}-item blocks, {rob.get('n_users')} users (reelpack: real pack, lost blocks "
        "corrupted and found by CRC32C; faiss and float32: the same item blocks dropped).",
        "",
        "| method | how | " + " | ".join(f"loss {100 * r:g} %" for r in rates) + " |",
        "|---|---|" + "---:|" * len(rates),
    ]
    for method, curve in rob["curves"].items():
        cells = [method, rob.get("how", {}).get(method, "-"), *(format_cell(v, ".3f") for v in curve)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _contest_rows(result: BenchResult) -> list[dict]:
    from reelpack.bench.contest import contest_scores, contest_table

    return contest_table(contest_scores(result))


def _latency_paths(result: BenchResult) -> str:
    """What the contest's latency input timed, from the contest scores' ``latency_path`` (else the rows')."""
    from reelpack.bench.contest import latency_paths

    paths = latency_paths(result)
    if not paths:
        return "the timed path is not recorded in these results."
    return "timed through " + "; ".join(f"{kind}: {path}" for kind, path in paths.items()) + "."


def contest_markdown(result: BenchResult) -> list[str]:
    """Lines of the contest table (docs/SCORING.md), best first."""
    from reelpack.bench.contest import TERMS, WEIGHTS

    table = _contest_rows(result)
    if not table:
        return []
    lines = [
        "",
        "Contest score (docs/SCORING.md): 100 x weighted sum of terms in [0, 1]; a missing term counts 0. "
        "The latency half of latency_energy compares each row's query ms with float32's: " + _latency_paths(result),
        "",
        "| rank | method | total | " + " | ".join(f"{t} ({WEIGHTS[t]:.0%})" for t in TERMS) + " | missing |",
        "|---:|---|---:|" + "---:|" * len(TERMS) + "---|",
    ]
    for e in table:
        cells = [str(e["rank"]), e["method"], format_cell(e["total"], ".1f"), *(format_cell(e[t], ".3f") for t in TERMS),
                 ", ".join(e["missing"]) or "-"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def contest_rich_table(result: BenchResult) -> Table:
    """The contest table for the terminal (``reelpack contest``), best first; faiss rows dimmed."""
    from reelpack.bench.contest import TERMS, WEIGHTS

    table = Table(title=f"Contest score | {_title(result)}", title_justify="left",
                  caption=f"latency term: query ms vs float32's, {_latency_paths(result)}", caption_justify="left")  # fmt: skip
    table.add_column("rank", justify="right")
    table.add_column("method", no_wrap=True)
    table.add_column("kind")
    table.add_column("total", justify="right")
    for t in TERMS:
        table.add_column(f"{t} ({WEIGHTS[t]:.0%})", justify="right")
    table.add_column("missing")
    for e in _contest_rows(result):
        style = "dim" if e["kind"] == "faiss" else ("bold" if e["kind"] == "reference" else None)
        table.add_row(str(e["rank"]), e["method"], e["kind"], format_cell(e["total"], ".1f"),
                      *(format_cell(e[t], ".3f") for t in TERMS), ", ".join(e["missing"]) or "-", style=style)  # fmt: skip
    return table


def write_results(result: BenchResult, out_dir: str | os.PathLike, stem: str = "bench") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir`` atomically; return both paths."""
    out = Path(out_dir)
    return (
        atomic_write_text(out / f"{stem}.json", result.to_json()),
        atomic_write_text(out / f"{stem}.md", results_markdown(result)),
    )
