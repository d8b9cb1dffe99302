"""Render bench results: a rich table for the terminal, Markdown for BENCHMARKS.md, JSON on disk."""

from __future__ import annotations

import os
from pathlib import Path

from rich.table import Table

from reelpack._atomic import atomic_write_bytes
from reelpack.eval.bench import BenchResult

__all__ = ["results_table", "results_markdown", "write_results", "atomic_write_text"]


def _columns(result: BenchResult) -> list[tuple[str, str, str]]:
    """(header, row key, format) of the table columns."""
    ks = result.provenance.get("config", {}).get("ks", [10, 20, 50])
    k = max(ks)
    return [
        ("method", "method", "s"),
        ("bytes/item", "bytes_per_item", "d"),
        ("compr. x", "compression", ".1f"),
        (f"Recall@{k}", f"recall@{k}", ".4f"),
        ("NDCG@10", "ndcg@10", ".4f"),
        ("MRR", "mrr", ".4f"),
        (f"rel R@{k}", f"rel_recall@{k}", ".3f"),
        ("rel NDCG@10", "rel_ndcg@10", ".3f"),
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
    ]


def _estimate_note(result: BenchResult) -> str | None:
    """The footnote under the Markdown table saying which columns are estimates and where the constants live."""
    dm = result.provenance.get("device_model")
    if not dm and not any("est_phone_query_ms" in r for r in result.rows):
        return None
    name = dm.get("name") if isinstance(dm, dict) else dm
    return (
        f"Columns headed \"est.\" are ESTIMATES for a phone, not measurements: \"est. phone ms\" is the measured "
        f"\"query ms\" (rank s / users: batched scoring of every item plus top-K, amortised per user, on this machine) "
        f"times the core-speed ratio of device model `{name}`; \"est. download J (4G)\" is the codes' bytes "
        "(bytes/item x items) through an LTE power model, promotion and tail included. Constants and their sources: "
        "docs/ENERGY.md."
    )


def _fmt(value: object, fmt: str) -> str:
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
    return (
        f"{p.get('data')} | d={p.get('dim')} | {p.get('n_eval_users')} users x {p.get('n_items')} items | "
        f"{p.get('threads')} thread(s)"
    )


def results_table(result: BenchResult) -> Table:
    """A rich table of every row; faiss rows dimmed under their reelpack twin."""
    cols = _columns(result)
    table = Table(title=_title(result), title_justify="left")
    for header, _, fmt in cols:
        table.add_column(header, justify="left" if fmt == "s" else "right", no_wrap=True)
    for row in result.rows:
        style = "dim" if row.get("kind") == "faiss" else ("bold" if row.get("kind") == "reference" else None)
        table.add_row(*(_fmt(row.get(key), fmt) for _, key, fmt in cols), style=style)
    return table


def results_markdown(result: BenchResult) -> str:
    """A Markdown table plus the run's provenance (command, date, machine, versions, data)."""
    cols = _columns(result)
    p = result.provenance
    lines = [f"**{_title(result)}**", ""]
    lines.append("| " + " | ".join(h for h, _, _ in cols) + " |")
    lines.append("|" + "|".join("---" if f == "s" else "---:" for _, _, f in cols) + "|")
    for row in result.rows:
        cells = [_fmt(row.get(key), fmt) for _, key, fmt in cols]
        if row.get("kind") == "faiss":
            cells[0] = f"&nbsp;&nbsp;{cells[0]}"
        lines.append("| " + " | ".join(cells) + " |")
    note = _estimate_note(result)
    if note:
        lines += ["", note]
    lines += rate_quality_markdown(result)
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
    dm = p.get("device_model")
    if isinstance(dm, dict):
        lines.append(
            f"- device model (estimates only, docs/ENERGY.md): {dm.get('name')}, core-speed ratio "
            f"{dm.get('core_speed_ratio')}, {dm.get('cpu_watts_active')} W per busy core"
        )
    return "\n".join(lines) + "\n"


def rate_quality_markdown(result: BenchResult) -> list[str]:
    """Lines of a Markdown table: per byte budget, the best reelpack and faiss methods and the bar.

    Empty when the run has no ``extra["rate_quality"]`` (see :func:`reelpack.eval.bench.rate_quality`).
    """
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
    for budget, entry in rq["budgets"].items():
        r, f = entry.get("best_reelpack"), entry.get("best_faiss")
        cells = [
            budget,
            r["method"] if r else "-",
            _fmt(r[key] if r else None, ".3f"),
            _fmt(r.get("rel_ndcg@10") if r else None, ".3f"),
            f["method"] if f else "-",
            _fmt(f[key] if f else None, ".3f"),
            _fmt(entry.get("bar"), ".3f"),
            {True: "yes", False: "no"}.get(entry.get("closes_half_gap"), "-"),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temp file in the same folder, fsync, then rename."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_results(result: BenchResult, out_dir: str | os.PathLike, stem: str = "bench") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir`` atomically; return both paths."""
    out = Path(out_dir)
    return (
        atomic_write_text(out / f"{stem}.json", result.to_json()),
        atomic_write_text(out / f"{stem}.md", results_markdown(result)),
    )
