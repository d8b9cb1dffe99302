"""The figures of the HTML bench report: inline SVG drawn by matplotlib (no pyplot, no global state).

Each ``_*_figure`` returns an inline ``<svg>`` element (text kept as text, ids prefixed per figure) or, with
its notes, ``None`` when the run did not measure what it shows. The page around them is assembled by
:mod:`reelpack.bench.html_report`.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from reelpack.bench.contest import _num  # a finite float, or None
from reelpack.bench.results import BenchResult
from reelpack.errors import InvalidInputError

__all__ = ["KIND_COLORS", "KIND_MARKERS"]

KIND_COLORS = {"reelpack": "#1f62b4", "faiss": "#d0650a", "reference": "#111111"}
KIND_MARKERS = {"reelpack": "o", "faiss": "s", "reference": "*"}
_TEXT_COLORS = {"reelpack": "#174a87", "faiss": "#a14c00", "reference": "#111111"}
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#ff7f0e", "#7f7f7f", "#393b79", "#637939")
"""Line colours of the loss curves in one panel (dark enough to read on white)."""
_TERM_COLORS = {
    "recall": "#2a7ab9",
    "compression": "#59a14f",
    "latency_energy": "#edc948",
    "robustness": "#b07aa1",
    "engineering": "#9c755f",
}
_TERM_LABELS = {
    "recall": "recall",
    "compression": "compression",
    "latency_energy": "latency / energy",
    "robustness": "robustness",
    "engineering": "engineering",
}
_BUDGET_BINS: tuple[tuple[float, float, str], ...] = (
    (0.0, 8.0, "up to 8 B/item"),
    (8.0, 16.0, "9-16 B/item"),
    (16.0, 32.0, "17-32 B/item"),
    (32.0, 64.0, "33-64 B/item"),
    (64.0, 128.0, "65-128 B/item"),
    (128.0, math.inf, "over 128 B/item"),
)
_RC = {
    "svg.fonttype": "none",  # text stays text: searchable, small
    "svg.hashsalt": "reelpack-report",  # deterministic ids
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica", "sans-serif"],
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,  # grid lines behind bars
}
_WIDTH_IN = 12.5  # 900 pt = 1200 CSS px: the page's content width, so figures show at 1:1 and text stays legible
_DPI = 72  # 1 display pixel = 1 SVG point: the label layout measured on Agg holds in the SVG


# ----------------------------------------------------------------------------------------------
# small helpers


def _fmt(x: object, spec: str) -> str:
    v = _num(x)
    return "-" if v is None else format(v, spec)


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _k_of(result: BenchResult) -> int:
    ks = (result.provenance.get("config") or {}).get("ks") if isinstance(result.provenance.get("config"), Mapping) else None
    if ks:
        return int(max(ks))
    found = [int(k.split("@")[1]) for r in result.rows for k in r if k.startswith("rel_recall@") and k.split("@")[1].isdigit()]
    return max(found) if found else 50


def _kind(row: Mapping[str, Any]) -> str:
    kind = row.get("kind")
    return kind if kind in KIND_COLORS else "reelpack"


def _marker(row: Mapping[str, Any]) -> str:
    if _kind(row) == "reelpack" and str(row.get("method", "")).endswith("+QAT"):
        return "^"
    return KIND_MARKERS[_kind(row)]


def _bytes_label(b: float) -> str:
    return f"{b:g} B"


def _new_figure(width_in: float, height_in: float, **kwargs: Any):
    """A matplotlib Figure on an Agg canvas (no pyplot, no global state), constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


_SVG_ID = re.compile(r'\bid="([^"]+)"')
_SVG_HREF = re.compile(r'href="#([^"]+)"')
_SVG_URL = re.compile(r"url\(#([^)]+)\)")


def _svg(fig, prefix: str, label: str) -> str:
    """The figure as an inline ``<svg>`` element: no XML prologue, DOCTYPE, metadata or namespace URLs;
    ids prefixed with ``prefix`` so that several figures can share one HTML document; sized by CSS."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)  # inline SVG in HTML needs no namespace declarations
    text = _SVG_ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', text)
    text = _SVG_HREF.sub(lambda m: f'href="#{prefix}-{m.group(1)}"', text)
    text = _SVG_URL.sub(lambda m: f"url(#{prefix}-{m.group(1)})", text)
    m = re.match(r'<svg([^>]*?)\swidth="([\d.]+)pt"\s+height="([\d.]+)pt"', text)
    if m:
        w, h = float(m.group(2)), float(m.group(3))
        text = (
            f'<svg{m.group(1)} role="img" aria-label="{_esc(label)}" '
            f'style="width:100%;max-width:{w * 4 / 3:.0f}px;height:auto" data-w="{w:.0f}" data-h="{h:.0f}"'
            + text[m.end() :]
        )
    return text.strip()


def _layout_labels(
    ax, points: Sequence[tuple[float, float, str, str, str]], obstacles: Sequence[tuple[float, float]] = ()
) -> None:
    """Label data points without overlaps.

    Each label starts beside its point on its preferred side (``"right"`` or ``"left"``; the other side
    when the preferred one has no room inside the axes) and is then pushed vertically away from the other
    labels and from the markers in ``obstacles`` until nothing overlaps (or a few hundred sweeps have
    passed); a label that moved is joined to its point by a thin leader line.

    Args:
        ax: the axes (the figure must have been drawn once so that the layout is final).
        points: (x, y, text, colour, preferred side) per label, data coordinates.
        obstacles: (x, y) of markers the labels must not cover, data coordinates.
    """
    if not points:
        return
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    to_px = ax.transData.transform
    pad, gap, marker_r, fontsize = 2.0, 3.0, 5.0, 8.5
    labels = []
    for x, y, text, color, side in points:
        px, py = (float(v) for v in to_px((x, y)))
        probe = ax.text(0, 0, text, fontsize=fontsize)
        ext = probe.get_window_extent(renderer)
        probe.remove()
        w, h = ext.width + 2 * pad, ext.height + 1.0
        fits_right = px + marker_r + gap + w <= box.x1
        fits_left = px - marker_r - gap - w >= box.x0
        right = (side == "right" and fits_right) or (side != "right" and not fits_left)
        x0 = px + marker_r + gap if right else px - marker_r - gap - w
        labels.append({"px": px, "py": py, "x0": x0, "w": w, "h": h, "y": py, "right": right, "text": text, "color": color})
    obs = [tuple(float(v) for v in to_px(o)) for o in obstacles]
    for _ in range(400):
        moved = False
        labels.sort(key=lambda lab: lab["y"])
        for i, a in enumerate(labels):
            for b in labels[i + 1 :]:
                if a["x0"] >= b["x0"] + b["w"] or b["x0"] >= a["x0"] + a["w"]:
                    continue  # no horizontal overlap
                need = (a["h"] + b["h"]) / 2 - (b["y"] - a["y"])
                if need > 0.05:
                    a["y"] -= need / 2 + 0.1
                    b["y"] += need / 2 + 0.1
                    moved = True
            for ox, oy in obs:
                if ox + marker_r <= a["x0"] or ox - marker_r >= a["x0"] + a["w"]:
                    continue
                d = a["y"] - oy
                need = a["h"] / 2 + marker_r - abs(d)
                if need > 0.05:
                    a["y"] += (need + 0.1) * (1 if d >= 0 else -1)
                    moved = True
        for lab in labels:  # stay inside the axes
            lab["y"] = min(max(lab["y"], box.y0 + lab["h"] / 2), box.y1 - lab["h"] / 2)
        if not moved:
            break
    scale = 72.0 / fig.dpi
    for lab in labels:
        dx = (lab["x0"] + pad) - lab["px"] if lab["right"] else (lab["x0"] + lab["w"] - pad) - lab["px"]
        dy = lab["y"] - lab["py"]
        far = abs(dy) > lab["h"] * 0.5
        ann = ax.annotate(
            lab["text"],
            xy=(lab["px"], lab["py"]),
            xycoords="figure pixels",
            xytext=(dx * scale, dy * scale),
            textcoords="offset points",
            ha="left" if lab["right"] else "right",
            va="center",
            fontsize=fontsize,
            color=lab["color"],
            arrowprops={"arrowstyle": "-", "color": "#aaaaaa", "lw": 0.6, "shrinkA": 1, "shrinkB": 4} if far else None,
            bbox={"boxstyle": "square,pad=0.05", "facecolor": "white", "edgecolor": "none", "alpha": 0.7},
            zorder=5,
            annotation_clip=False,
        )
        ann.set_in_layout(False)


def _frontier(points: Sequence[tuple[float, float, Mapping[str, Any]]]) -> list[tuple[float, float, Mapping[str, Any]]]:
    """The upper-left envelope: points better than every cheaper-or-equal point, by bytes then quality."""
    best: dict[float, tuple[float, float, Mapping[str, Any]]] = {}
    for p in points:
        if p[0] not in best or p[1] > best[p[0]][1]:
            best[p[0]] = p
    out, top = [], -math.inf
    for b in sorted(best):
        if best[b][1] > top:
            out.append(best[b])
            top = best[b][1]
    return out


# ----------------------------------------------------------------------------------------------
# figures


def _rate_quality_figure(result: BenchResult, k: int) -> tuple[str | None, list[str]]:
    """(inline SVG or None, notes): bytes/item vs relative Recall@k (top) and relative NDCG@10 (bottom).

    Every compressed method is a labelled point (reelpack labels to the right of their marker, faiss to
    the left, moved apart where they would overlap); the float32 row is the dotted line at its value.
    """
    metrics = [(f"rel_recall@{k}", f"relative Recall@{k}"), ("rel_ndcg@10", "relative NDCG@10")]
    compressed = [
        r for r in result.rows
        if _kind(r) != "reference" and _num(r.get("bytes_per_item")) is not None and float(r["bytes_per_item"]) > 0
    ]
    notes = []
    present = [(key, label) for key, label in metrics if any(_num(r.get(key)) is not None for r in compressed)]
    for key, label in metrics:
        if (key, label) not in present:
            notes.append(f"{label}: not measured in this run.")
    if not present:
        return None, notes
    import matplotlib as mpl
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator

    ref = next((r for r in result.rows if _kind(r) == "reference"), None)
    with mpl.rc_context(_RC):
        fig = _new_figure(_WIDTH_IN, 0.5 + 6.0 * len(present))
        axes = fig.subplots(len(present), 1, squeeze=False)[:, 0]
        per_ax = []
        for ax, (key, label) in zip(axes, present):
            pts = {
                kind: [(float(r["bytes_per_item"]), float(r[key]), r) for r in compressed if _kind(r) == kind and _num(r.get(key)) is not None]
                for kind in ("reelpack", "faiss")
            }
            for kind, kp in pts.items():
                face = KIND_COLORS[kind] if kind == "reelpack" else "none"  # hollow: a reelpack dot below stays visible
                for marker in sorted({_marker(r) for _, _, r in kp}):
                    mp = [(x, y) for x, y, r in kp if _marker(r) == marker]
                    ax.plot([p[0] for p in mp], [p[1] for p in mp], linestyle="none", marker=marker, markersize=7,
                            markerfacecolor=face, markeredgecolor=KIND_COLORS[kind], markeredgewidth=1.4,
                            zorder=3 if kind == "reelpack" else 4)
                front = _frontier(kp)
                if len(front) > 1:
                    ax.plot([p[0] for p in front], [p[1] for p in front], color=KIND_COLORS[kind], lw=1.2,
                            ls="-" if kind == "reelpack" else "--", alpha=0.55, zorder=2)
            ys = [p[1] for kp in pts.values() for p in kp]
            xs = sorted({p[0] for kp in pts.values() for p in kp})
            if ref is not None and _num(ref.get(key)) is not None:
                ax.axhline(float(ref[key]), color="#111111", lw=1.0, ls=":", zorder=1)
                ax.annotate(f"float32 (exact), {_fmt(ref.get('bytes_per_item'), 'g')} B/item", (0.0, float(ref[key])),
                            xycoords=("axes fraction", "data"), xytext=(4, 3), textcoords="offset points",
                            ha="left", va="bottom", fontsize=8.5, color="#111111")
                ys.append(float(ref[key]))
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator(xs))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.set_xlim(xs[0] / 1.5, xs[-1] * 1.5)
            lo, hi = min(ys), max(ys)
            span = max(hi - lo, 0.02)
            ax.set_ylim(lo - 0.06 * span, hi + 0.07 * span)
            ax.set_xlabel("bytes per item (log scale)")
            ax.set_ylabel(f"{label} (float32 = 1)")
            ax.set_title(f"{label} vs bytes per item")
            per_ax.append((ax, pts))
        kinds = {_kind(r) for r in compressed}
        handles = []
        if "reelpack" in kinds:
            handles.append(Line2D([], [], marker="o", ls="-", color=KIND_COLORS["reelpack"], markerfacecolor=KIND_COLORS["reelpack"], label="reelpack codec (line: best per budget)"))
        if any(_marker(r) == "^" for r in compressed):
            handles.append(Line2D([], [], marker="^", ls="none", color=KIND_COLORS["reelpack"], markerfacecolor=KIND_COLORS["reelpack"], label="reelpack + compression-aware training"))
        if "faiss" in kinds:
            handles.append(Line2D([], [], marker="s", ls="--", color=KIND_COLORS["faiss"], markerfacecolor="none", label="faiss (line: best per budget)"))
        if ref is not None:
            handles.append(Line2D([], [], ls=":", color="#111111", label="float32 (exact)"))
        fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), frameon=False)
        fig.canvas.draw()  # final layout before measuring labels
        for ax, pts in per_ax:
            labels, obstacles = [], []
            for kind, kp in pts.items():
                obstacles += [(x, y) for x, y, _ in kp]
                side = "right" if kind == "reelpack" else "left"
                labels += [(x, y, str(r["method"]), _TEXT_COLORS[kind], side) for x, y, r in kp]
            _layout_labels(ax, labels, obstacles)
        return _svg(fig, "rq", "rate-quality curves"), notes


def _tick_colors(ax, rows: Sequence[Mapping[str, Any]]) -> None:
    for tick, r in zip(ax.get_yticklabels(), rows):
        tick.set_color(_TEXT_COLORS[_kind(r)])


def _latency_rows(result: BenchResult) -> list[dict[str, Any]]:
    """Rows with a measured positive ``query_ms``: float32 first, then by bytes per item, reelpack before faiss."""
    order = {"reference": 0, "reelpack": 1, "faiss": 2}
    rows = [r for r in result.rows if (_num(r.get("query_ms")) or 0.0) > 0]
    return sorted(rows, key=lambda r: (_kind(r) != "reference", _num(r.get("bytes_per_item")) or 0.0, order[_kind(r)], str(r["method"])))


def _latency_figure(result: BenchResult) -> tuple[str | None, list[str]]:
    """(inline SVG or None, notes): horizontal bars of measured query_ms per method."""
    rows = _latency_rows(result)
    if not rows:
        return None, ["Query latency (query_ms): not measured in this run."]
    import matplotlib as mpl

    ms = [float(r["query_ms"]) for r in rows]
    ratios = [float(r["est_phone_query_ms"]) / float(r["query_ms"]) for r in rows if _num(r.get("est_phone_query_ms")) is not None]
    notes = []
    with mpl.rc_context(_RC):
        fig = _new_figure(_WIDTH_IN, 1.6 + 0.27 * len(rows))
        ax = fig.subplots()
        y = list(range(len(rows)))
        colors = [KIND_COLORS[_kind(r)] for r in rows]
        ax.barh(y, ms, color=colors, height=0.7, alpha=0.85)
        log = max(ms) / min(ms) > 30
        cap = max(ms) * (1.4 if log else 1.2)  # whiskers (p90) stop here; the axis is scaled to the medians
        p90 = [_num(r.get("query_ms_p90")) for r in rows]
        ends = [min(cap, max(m, p)) if p is not None else m for m, p in zip(ms, p90)]
        if any(p is not None for p in p90):  # whiskers from the median up to the 90th percentile
            ax.errorbar(ms, y, xerr=[[0.0] * len(ms), [e - m for e, m in zip(ends, ms)]],
                        fmt="none", ecolor="#555555", elinewidth=0.8, capsize=2)  # fmt: skip
        clipped = [f"{r['method']} ({float(p):.3g} ms)" for r, p in zip(rows, p90) if p is not None and p > cap]
        if clipped:
            notes.append("90th percentile beyond the axis (whisker cut at its edge): " + ", ".join(clipped) + ".")
        ref = next((r for r in rows if _kind(r) == "reference"), None)
        if ref is not None:
            ax.axvline(float(ref["query_ms"]), color="#111111", ls=":", lw=1.0)
        ax.set_yticks(y, [f"{r['method']}  ({_bytes_label(float(r['bytes_per_item']))})" if _num(r.get("bytes_per_item")) else str(r["method"]) for r in rows])
        _tick_colors(ax, rows)
        ax.invert_yaxis()
        if log:
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        for yi, v, e in zip(y, ms, ends):
            ax.text(e * (1.03 if log else 1.0) + (0 if log else max(ms) * 0.008), yi, f"{v:.3g}", va="center", fontsize=8, color="#333333")
        ax.set_xlim(right=max(ms) * (2.0 if log else 1.3))
        ax.set_xlabel("measured time of one query, ms (this machine, one thread: median, whisker to p90)")
        ax.grid(axis="y", visible=False)
        if ratios and max(ratios) - min(ratios) <= 1e-6 * max(ratios):
            r0 = ratios[0]
            sec = ax.secondary_xaxis("top", functions=(lambda x, r0=r0: x * r0, lambda x, r0=r0: x / r0))
            sec.set_xlabel("ESTIMATED phone query time, ms (measured ms x device core-speed ratio)")
            if log:
                sec.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                sec.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                sec.xaxis.set_minor_formatter(NullFormatter())
        elif ratios:
            notes.append("The estimated phone times do not share one core-speed ratio; see the table of all rows.")
        else:
            notes.append("Estimated phone query time (est_phone_query_ms): not in this run.")
        return _svg(fig, "lat", "query latency per method"), notes


def _bin_of(b: float | None) -> int:
    if b is None:
        return len(_BUDGET_BINS)
    for i, (lo, hi, _) in enumerate(_BUDGET_BINS):
        if lo < b <= hi or (i == 0 and b <= hi):
            return i
    return len(_BUDGET_BINS) - 1


def _robustness_data(result: BenchResult) -> tuple[dict[str, Any] | None, list[str]]:
    """The validated ``extra["robustness"]`` block (rates, curves of matching length) or None, and notes."""
    rob = (result.extra or {}).get("robustness")
    if not isinstance(rob, Mapping):
        return None, ["Loss robustness: not measured in this run (the results have no robustness block)."]
    rates = rob.get("loss_rates")
    curves = rob.get("curves")
    if not isinstance(rates, Sequence) or not rates or any(_num(x) is None for x in rates) or not isinstance(curves, Mapping):
        return None, ["Loss robustness: the results' robustness block has no usable loss_rates/curves; not shown."]
    notes = []
    good: dict[str, list[float | None]] = {}
    for method, ys in curves.items():
        if isinstance(ys, Sequence) and len(ys) == len(rates):
            good[str(method)] = [_num(v) for v in ys]
        else:
            notes.append(f"Loss curve of {method}: malformed (expected {len(rates)} values), not shown.")
    if not good:
        return None, notes + ["Loss robustness: no curve measured in this run."]
    return {**rob, "loss_rates": [float(x) for x in rates], "curves": good}, notes


def _robustness_figure(result: BenchResult, rob: Mapping[str, Any], k: int) -> str:
    """Inline SVG: relative Recall@k vs loss rate, one panel per byte budget, float32 in every panel."""
    import matplotlib as mpl

    rates = rob["loss_rates"]
    curves = rob["curves"]
    by_method = {str(r["method"]): r for r in result.rows}
    ref_methods = [m for m in curves if _kind(by_method.get(m, {})) == "reference"]
    groups: dict[int, list[str]] = {}
    for m in curves:
        if m in ref_methods:
            continue
        groups.setdefault(_bin_of(_num(by_method.get(m, {}).get("bytes_per_item"))), []).append(m)
    if not groups:
        groups = {0: []}
    keys = sorted(groups)
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    metric = str(rob.get("metric", f"rel_recall@{k}"))
    all_y = [v for ys in curves.values() for v in ys if v is not None]
    lo = min(all_y) if all_y else 0.0
    hi = max(all_y) if all_y else 1.0
    span = max(hi - lo, 0.02)
    ref_rate = _num(rob.get("reference_rate"))
    with mpl.rc_context(_RC):
        fig = _new_figure(_WIDTH_IN * ncols / 3, 0.6 + 5.3 * nrows)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            if i >= len(keys):
                ax.set_visible(False)
                continue
            key = keys[i]
            title = _BUDGET_BINS[key][2] if key < len(_BUDGET_BINS) else "bytes per item unknown"
            for j, m in enumerate(sorted(groups[key], key=lambda m: (_kind(by_method.get(m, {})) != "reelpack", m))):
                r = by_method.get(m, {})
                kind = _kind(r)
                color = _PALETTE[j % len(_PALETTE)]
                marker = ("o", "D", "v", "P")[(j // len(_PALETTE)) % 4] if kind == "reelpack" else ("s", "X", "^", "h")[(j // len(_PALETTE)) % 4]
                xs = [x for x, v in zip(rates, curves[m]) if v is not None]
                ys = [v for v in curves[m] if v is not None]
                ax.plot(xs, ys, ls="-" if kind == "reelpack" else "--", marker=marker, color=color,
                        markerfacecolor=color if kind == "reelpack" else "white", markersize=5.5, lw=1.4, label=m)
            for m in ref_methods:
                xs = [x for x, v in zip(rates, curves[m]) if v is not None]
                ys = [v for v in curves[m] if v is not None]
                ax.plot(xs, ys, ls=":", color="#111111", marker="*", markersize=7, lw=1.2, label=f"{m}")
            if ref_rate is not None:
                ax.axvline(ref_rate, color="#888888", lw=0.8, ls="-.")
                ax.annotate(f"reference rate {100 * ref_rate:g} %", (ref_rate, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(3, -3), textcoords="offset points", fontsize=8, color="#666666", va="top")
            ax.set_title(title)
            ax.set_ylim(lo - 0.05 * span, hi + 0.05 * span)
            ax.set_xticks(rates, [f"{100 * x:g} %" for x in rates])
            ax.set_xlim(min(rates) - 0.04 * (max(rates) - min(rates) or 1.0), max(rates) + 0.04 * (max(rates) - min(rates) or 1.0))
            ax.set_xlabel("share of blocks lost")
            ax.set_ylabel(f"{metric} (float32, no loss = 1)")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=1, frameon=False, fontsize=8.5)
        return _svg(fig, "rob", "loss robustness curves")


def _contest(result: BenchResult) -> tuple[list[Any] | None, dict[str, float], list[str]]:
    """(scores sorted by total descending, weights, notes); scores None when the scorer is unavailable."""
    try:
        from reelpack.bench.contest import WEIGHTS, contest_scores
    except ImportError:  # pragma: no cover - the scorer ships with the package
        return None, {}, ["Contest score: the scorer (reelpack.bench.contest) is not available in this installation."]
    try:
        scores = contest_scores(result)
    except InvalidInputError as exc:
        return None, dict(WEIGHTS), [f"Contest score: could not be computed ({exc})."]
    scores = [s for _, s in sorted(enumerate(scores), key=lambda t: (-t[1].total, t[0]))]
    return scores, dict(WEIGHTS), []


def _contest_figure(scores: Sequence[Any], weights: Mapping[str, float]) -> str:
    """Inline SVG: one stacked bar per method, segments = 100 x weight x term, sorted by total."""
    import matplotlib as mpl

    with mpl.rc_context(_RC):
        fig = _new_figure(_WIDTH_IN, 2.0 + 0.27 * len(scores))
        ax = fig.subplots()
        y = list(range(len(scores)))
        left = [0.0] * len(scores)
        for term, w in weights.items():
            vals = [100.0 * w * (s.terms.get(term) or 0.0) for s in scores]
            ax.barh(y, vals, left=left, color=_TERM_COLORS.get(term, "#bbbbbb"), height=0.7,
                    label=f"{_TERM_LABELS.get(term, term)} (weight {100 * w:g})", edgecolor="white", linewidth=0.5)
            left = [a + b for a, b in zip(left, vals)]
        for yi, s in zip(y, scores):
            tag = f"{s.total:.1f}" + ("  (missing: " + ", ".join(s.missing) + ")" if s.missing else "")
            ax.text(s.total + 0.6, yi, tag, va="center", fontsize=8, color="#333333")
        ax.set_yticks(y, [s.method for s in scores])
        for tick, s in zip(ax.get_yticklabels(), scores):
            tick.set_color(_TEXT_COLORS.get(s.kind, "#111111"))
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("contest score (0-100): sum of weight x normalised term")
        ax.grid(axis="y", visible=False)
        fig.legend(loc="outside upper center", ncols=len(weights), frameon=False)
        return _svg(fig, "contest", "contest score per method")
