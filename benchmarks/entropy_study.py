"""Does entropy coding of code symbols pay? A study on the amazon-book item embeddings.

For each item-embedding cache (64-d and 128-d) and each codec (fit on the items
with seed 0), the items' codes are entropy-coded with
:mod:`reelpack.format.entropy` (static per-column model fitted on the whole
layer, stored once) in independent blocks of ``--block-rows`` items, as a pack
stores them, and as one whole-layer block. Reported per (codec, layout):

* raw bytes (n * bytes_per_vector), model bytes, coded bytes including the model, % saved;
* the empirical per-column entropy bound (sum over symbol columns of n * H(column), no model);
* the ideal code length of an adaptive alternative (Krichevsky-Trofimov counts per
  column, restarted in every block, and over the whole layer; no model to store);
* encode and decode time, single thread, scaled to 100k items, next to the time
  to score one query against 100k items with the codec's own scorer (also one thread).

Usage::

    PYTHONPATH=src python benchmarks/entropy_study.py 2>/dev/null
    PYTHONPATH=src python benchmarks/entropy_study.py --dims 64 --codecs pq16 --repeats 1

The caches are looked up in ``--cache`` (default ``~/.cache/reelpack/twotower``):
every folder whose meta.json says ``"synthetic": false`` and whose ``"dim"`` is asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np

from reelpack.codecs import Codec, make_codec
from reelpack.format.entropy import (
    ColumnModel,
    code_symbols,
    decode_block,
    encode_block,
    fit_column_model,
)

# Which symbol layouts to try for each codec: the natural one first.
CODEC_LAYOUTS: dict[str, tuple[str, ...]] = {
    "sq4": ("nibbles", "bytes"),
    "sq8": ("bytes", "nibbles"),
    "pq16": ("bytes",),
    "pq8": ("bytes",),
    "simhash128": ("bits", "bytes"),
}
_ALPHABET = {"bytes": 256, "nibbles": 16, "bits": 2}


@dataclass
class Row:
    """One line of the result table (sizes in bytes, times in milliseconds per 100k items)."""

    dim: int
    spec: str
    layout: str
    n_items: int
    raw_bytes: int
    model_bytes: int
    blocked_bytes: int
    whole_bytes: int
    entropy_bound_bytes: float
    adaptive_blocked_bytes: float
    adaptive_whole_bytes: float
    encode_ms_per_100k: float
    decode_ms_per_100k: float
    whole_decode_ms_per_100k: float
    score_ms_per_100k: float

    @property
    def blocked_saved(self) -> float:
        """Fraction of raw bytes saved by blocked coding, model included."""
        return 1.0 - self.blocked_bytes / self.raw_bytes

    @property
    def whole_saved(self) -> float:
        """Fraction of raw bytes saved by whole-layer coding, model included."""
        return 1.0 - self.whole_bytes / self.raw_bytes


def find_item_caches(cache: Path, dims: list[int]) -> dict[int, Path]:
    """Map each asked-for dim to the items.npy of a non-synthetic cache folder with that dim."""
    found: dict[int, Path] = {}
    for meta_path in sorted(cache.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        dim = int(meta.get("dim", -1))
        if dim in dims and not meta.get("synthetic", True) and dim not in found:
            found[dim] = meta_path.parent / "items.npy"
    missing = sorted(set(dims) - set(found))
    if missing:
        raise SystemExit(f"no non-synthetic item cache with dim {missing} under {cache}")
    return found


def column_entropy_bits(symbols: np.ndarray, alphabet: int) -> float:
    """Sum over columns of n * H(column) in bits, for symbols [n, C] below ``alphabet``."""
    n_rows, n_columns = symbols.shape
    keys = np.arange(n_columns, dtype=np.int64)[None, :] * alphabet + symbols
    hist = np.bincount(keys.ravel(), minlength=n_columns * alphabet).astype(np.float64)
    nonzero = hist[hist > 0]
    return float(-(nonzero * np.log2(nonzero / n_rows)).sum())


def adaptive_code_length_bits(symbols: np.ndarray, alphabet: int, block_rows: int) -> float:
    """Ideal code length in bits of an adaptive per-column Krichevsky-Trofimov model.

    Every column of every block starts from counts 1/2 and codes row r's symbol
    with probability ``(count_so_far[symbol] + 1/2) / (r + alphabet / 2)``, then
    counts it. Vectorised: a stable sort by (block, column, symbol) gives each
    symbol's number of earlier occurrences as its rank within its group.

    Args:
        symbols: integer [n, C] below ``alphabet``.
        alphabet: alphabet size.
        block_rows: rows per independent block (n or more for one whole-layer block).
    """
    n_rows, n_columns = symbols.shape
    row = np.arange(n_rows, dtype=np.int64)
    block = row // block_rows
    row_in_block = (row - block * block_rows)[:, None]
    keys = (block[:, None] * n_columns + np.arange(n_columns)[None, :]) * alphabet + symbols
    flat_keys = keys.T.ravel()  # column-major: rows ascend within each (column, symbol) group
    order = np.argsort(flat_keys, kind="stable")
    sorted_keys = flat_keys[order]
    group_start = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    group_sizes = np.diff(np.r_[group_start, sorted_keys.size])
    rank_sorted = np.arange(sorted_keys.size) - np.repeat(group_start, group_sizes)
    earlier = np.empty_like(rank_sorted)
    earlier[order] = rank_sorted
    earlier = earlier.reshape(n_columns, n_rows).T
    probability = (earlier + 0.5) / (row_in_block + alphabet / 2)
    return float(-np.log2(probability).sum())


def encode_blocks(codes: np.ndarray, model: ColumnModel, block_rows: int) -> list[bytes]:
    """Entropy-code ``codes`` uint8 [n, B] in independent blocks of ``block_rows`` rows."""
    return [encode_block(codes[start : start + block_rows], model) for start in range(0, len(codes), block_rows)]


def decode_blocks(blocks: list[bytes], model: ColumnModel, n_rows: int, block_rows: int) -> np.ndarray:
    """Decode blocks written by :func:`encode_blocks` back to uint8 [n_rows, B]."""
    out = np.empty((n_rows, model.bytes_per_vector), dtype=np.uint8)
    for index, data in enumerate(blocks):
        start = index * block_rows
        stop = min(start + block_rows, n_rows)
        out[start:stop] = decode_block(data, model, stop - start)
    return out


def best_time(fn, repeats: int) -> float:
    """Smallest wall-clock seconds of ``repeats`` calls of ``fn()``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def study_codec(
    dim: int, codec: Codec, items: np.ndarray, block_rows: int, repeats: int, query: np.ndarray
) -> list[Row]:
    """Measure every layout of :data:`CODEC_LAYOUTS` on the codes of ``items`` float32 [n, d] under ``codec``.

    ``query`` is float32 [1, d], scored against all n codes to time the scorer.
    """
    spec = codec.spec
    codes = codec.encode(items)
    n_items = len(codes)
    per_100k = 1e3 * 100_000 / n_items  # seconds over the layer -> ms per 100k items
    codec.score(query, codes[:1024])  # warm up compiled kernels
    score_s = best_time(lambda: codec.score(query, codes), max(repeats, 3))
    rows = []
    for layout in CODEC_LAYOUTS[spec]:
        model = fit_column_model(codes, layout)
        model.categoricals()  # build the constriction models outside the timed region, once per layer
        encode_s = best_time(lambda: encode_blocks(codes, model, block_rows), repeats)
        blocks = encode_blocks(codes, model, block_rows)
        decode_s = best_time(lambda: decode_blocks(blocks, model, n_items, block_rows), repeats)
        if not np.array_equal(decode_blocks(blocks, model, n_items, block_rows), codes):
            raise AssertionError(f"{spec} {layout}: blocked round trip failed")
        whole = encode_block(codes, model)
        whole_decode_s = best_time(lambda: decode_block(whole, model, n_items), repeats)
        if not np.array_equal(decode_block(whole, model, n_items), codes):
            raise AssertionError(f"{spec} {layout}: whole-layer round trip failed")
        symbols = code_symbols(codes, layout)
        alphabet = _ALPHABET[layout]
        rows.append(
            Row(
                dim=dim,
                spec=spec,
                layout=layout,
                n_items=n_items,
                raw_bytes=codes.nbytes,
                model_bytes=model.nbytes,
                blocked_bytes=sum(len(b) for b in blocks) + model.nbytes,
                whole_bytes=len(whole) + model.nbytes,
                entropy_bound_bytes=column_entropy_bits(symbols, alphabet) / 8,
                adaptive_blocked_bytes=adaptive_code_length_bits(symbols, alphabet, block_rows) / 8,
                adaptive_whole_bytes=adaptive_code_length_bits(symbols, alphabet, n_items) / 8,
                encode_ms_per_100k=encode_s * per_100k,
                decode_ms_per_100k=decode_s * per_100k,
                whole_decode_ms_per_100k=whole_decode_s * per_100k,
                score_ms_per_100k=score_s * per_100k,
            )
        )
    return rows


def markdown_table(rows: list[Row], block_rows: int) -> str:
    """The result table in GitHub markdown."""
    head = (
        f"| d | codec | layout | raw B | model B | coded B, {block_rows}-row blocks (saved) "
        "| coded B, whole layer (saved) | per-column entropy bound B | adaptive KT B, blocks / whole "
        "| encode ms/100k | decode ms/100k, blocks / whole | score 1 query ms/100k |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r.dim} | {r.spec} | {r.layout} | {r.raw_bytes:,} | {r.model_bytes:,} "
            f"| {r.blocked_bytes:,} ({100 * r.blocked_saved:.1f} %) | {r.whole_bytes:,} ({100 * r.whole_saved:.1f} %) "
            f"| {r.entropy_bound_bytes:,.0f} | {r.adaptive_blocked_bytes:,.0f} / {r.adaptive_whole_bytes:,.0f} "
            f"| {r.encode_ms_per_100k:.1f} | {r.decode_ms_per_100k:.1f} / {r.whole_decode_ms_per_100k:.1f} "
            f"| {r.score_ms_per_100k:.2f} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[Row], min_saving: float, max_decode_queries: float) -> str:
    """One line per (dim, codec): the best-saving layout that decodes fast enough, and whether it is kept.

    Kept when blocked coding (model included) saves at least ``min_saving`` of
    the raw bytes and decoding the layer once costs at most ``max_decode_queries``
    times scoring one query against it (decode is a load-time cost, scoring a per-query one).
    """
    lines = []
    by_codec: dict[tuple[int, str], list[Row]] = {}
    for r in rows:
        by_codec.setdefault((r.dim, r.spec), []).append(r)
    for (dim, spec), candidates in by_codec.items():
        fast_enough = [r for r in candidates if r.decode_ms_per_100k / r.score_ms_per_100k <= max_decode_queries]
        best = max(fast_enough or candidates, key=lambda r: r.blocked_saved)
        decode_in_queries = best.decode_ms_per_100k / best.score_ms_per_100k
        keep = best.blocked_saved >= min_saving and decode_in_queries <= max_decode_queries
        lines.append(
            f"- d={dim} {spec}: best layout {best.layout}, saves {100 * best.blocked_saved:.1f} % in "
            f"{best.n_items} items ({best.raw_bytes:,} -> {best.blocked_bytes:,} B), "
            f"decode {best.decode_ms_per_100k:.1f} ms/100k items = "
            f"{decode_in_queries:.1f}x one query's scoring: "
            f"{'KEEP' if keep else 'DROP'} (rule: saves >= {100 * min_saving:.0f} % and decode <= "
            f"{max_decode_queries:g} queries' scoring)"
        )
    return "\n".join(lines)


def machine_line() -> str:
    """CPU model, cores, Python and library versions."""
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}, constriction {version('constriction')}, "
        f"faiss {version('faiss-cpu')}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/reelpack/twotower")
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--codecs", nargs="+", default=list(CODEC_LAYOUTS), choices=list(CODEC_LAYOUTS))
    parser.add_argument("--block-rows", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats; the best is reported")
    parser.add_argument("--min-saving", type=float, default=0.05, help="keep entropy coding at or above this saving")
    parser.add_argument(
        "--max-decode-queries",
        type=float,
        default=100.0,
        help="keep only if decoding the layer once costs at most this many single-query scorings",
    )
    args = parser.parse_args(argv)

    import faiss
    import numba
    from threadpoolctl import threadpool_limits

    caches = find_item_caches(args.cache, args.dims)
    rows: list[Row] = []
    for dim in args.dims:
        items = np.ascontiguousarray(np.load(caches[dim]), dtype=np.float32)
        query = items[[int(np.random.default_rng(0).integers(len(items)))]]  # float32 [1, d]
        for spec in args.codecs:
            print(f"[entropy_study] d={dim} {spec} ...", file=sys.stderr, flush=True)
            codec = make_codec(spec).fit(items, seed=0)  # fitting may use every core; only timings are pinned
            faiss.omp_set_num_threads(1)
            numba.set_num_threads(1)
            with threadpool_limits(limits=1):
                rows.extend(study_codec(dim, codec, items, args.block_rows, args.repeats, query))
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)

    arguments = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    command = f"PYTHONPATH=src python benchmarks/entropy_study.py {arguments}".rstrip()
    print(f"Command: `{command}`  ")
    print(f"Machine: {machine_line()}  ")
    print(
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; one thread for coding and scoring; "
        f"times are the best of {args.repeats}."
    )
    print()
    print(markdown_table(rows, args.block_rows))
    print()
    print(verdicts(rows, args.min_saving, args.max_decode_queries))


if __name__ == "__main__":
    main()
