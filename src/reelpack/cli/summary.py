"""The compact results table of ``reelpack demo`` (and ``bench --compact``): what fits in 100 columns.

The full table (every metric, estimate and check) is still written to the run's Markdown and JSON files; this
one keeps the columns a first reader compares: bytes per item, compression, quality relative to float32
(Recall@K, NDCG@10, MRR) and the measured single-query latency.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

__all__ = ["COMPACT_MAX_WIDTH", "compact_columns", "compact_table"]

COMPACT_MAX_WIDTH = 100
"""Terminal columns the compact table is made to fit."""

_METHOD_WIDTH = 18
"""Longest method name shown in full (``faiss:OPQ8,PQ8np`` is 16); longer ones end with an ellipsis."""


def compact_columns(result: Any) -> list[tuple[str, str, str]]:
    """(header, row key, format) of the compact table; K of ``rel R@K`` is the run's largest cut-off."""
    provenance = getattr(result, "provenance", None) or {}
    ks = (provenance.get("config") or {}).get("ks") or [10, 20, 50]
    k = max(ks)
    return [
        ("method", "method", "s"),
        ("B/item", "bytes_per_item", "d"),
        ("compr.", "compression", ".1f"),
        (f"rel R@{k}", f"rel_recall@{k}", ".3f"),
        ("rel NDCG@10", "rel_ndcg@10", ".3f"),
        ("rel MRR", "rel_mrr", ".3f"),
        ("query ms", "query_ms", ".3f"),
    ]


def compact_table(result: Any, full_table: str | None = None) -> Table:
    """A rich table of every row of a bench result, at most :data:`COMPACT_MAX_WIDTH` columns wide.

    Args:
        result: a :class:`reelpack.bench.harness.BenchResult` (``rows``: list of dicts; ``provenance``: dict).
        full_table: where the full table was written (a file name), named in the caption.

    faiss rows are dimmed under their reelpack twin and the float32 reference is bold, as in the full table.
    """
    cols = compact_columns(result)
    p = getattr(result, "provenance", None) or {}
    title = f"d={p.get('dim')}, {p.get('n_eval_users')} users x {p.get('n_items')} items; float32 = 1.000"
    caption = "rel: relative to float32; query ms: one query, one thread"
    if full_table:
        caption += f"; all columns: {full_table}"
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for header, _, fmt in cols:
        if fmt == "s":
            table.add_column(header, justify="left", no_wrap=True, max_width=_METHOD_WIDTH, overflow="ellipsis")
        else:
            table.add_column(header, justify="right", no_wrap=True)
    from reelpack.bench.report import format_cell

    for row in getattr(result, "rows", []):
        kind = row.get("kind")
        style = "dim" if kind == "faiss" else ("bold" if kind == "reference" else None)
        table.add_row(*(format_cell(row.get(key), fmt) for _, key, fmt in cols), style=style)
    return table
