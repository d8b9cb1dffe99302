"""Describing a pack without decoding its codes: :func:`inspect` (header, sections, sizes, bounds).

(The module is not named ``inspect`` so that ``reelpack.format.inspect`` stays the function.)
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from reelpack.codecs.base import check_state
from reelpack.errors import ReelpackError
from reelpack.format.layout import MAGIC, LayerInfo, SectionType
from reelpack.format.reader import PackReader

__all__ = ["inspect"]


def _inspect_layout(reader: PackReader, info: LayerInfo) -> str | None:
    if not info.entropy_coded:
        return None
    try:
        return reader.entropy_model(info.index).layout  # type: ignore[union-attr]
    except ReelpackError:
        return "unknown"


def inspect(path: str | os.PathLike[str] | bytes) -> dict[str, Any]:
    """Describe a pack without decoding codes: header, sections, sizes, per-layer bytes/item and bounds.

    ``path`` may also be the pack's bytes. Block CRCs are not checked (use
    :meth:`PackReader.verify`); every section's CRC32C and each CODEC section's header structure are, and a
    section's ``problem`` says what is wrong with it. Raises a :class:`PackFormatError` subclass when the
    directory is unusable.
    """
    reader = PackReader.from_buffer(path) if isinstance(path, (bytes, bytearray, memoryview)) else PackReader(path)
    d = reader._dir
    sections = [
        {"index": s.index, "type": s.type, "type_name": SectionType.NAMES.get(s.type, "UNKNOWN"),
         "required": s.required, "offset": s.offset, "length": s.length, "crc32c": s.crc32c,
         "problem": d.section_problems.get(s.index), "skipped": s.index in d.skipped_sections}
        for s in d.sections
    ]  # fmt: skip
    payload = sum(layer.codes_length for layer in d.layers)
    layers = []
    for info in d.layers:
        entries = d.blocks[d.block_start[info.index] : d.block_start[info.index + 1]]
        spec = None
        if info.codec_section not in d.section_problems:
            s = d.sections[info.codec_section]
            try:  # the header only: the arrays are not read (parse_directory validated the structure)
                spec = check_state(memoryview(reader._buf[s.offset : s.end]))[0]
            except ReelpackError:
                spec = None
        max_err = entries["max_sq_error"].astype(np.float64)
        mean_err = entries["mean_sq_error"].astype(np.float64)
        rows = np.minimum(info.items_per_block, d.n_items - np.arange(info.n_blocks) * info.items_per_block)
        layers.append({
            "layer": info.index, "codec": spec, "bytes_per_vector": info.bytes_per_vector,
            "items_per_block": info.items_per_block, "n_blocks": info.n_blocks, "codes_bytes": info.codes_length,
            "bytes_per_item": info.codes_length / d.n_items if d.n_items else 0.0,
            "entropy_coded": info.entropy_coded, "corrections_per_vector": info.corrections_per_vector,
            "entropy_layout": _inspect_layout(reader, info), "raw_codes_bytes": d.n_items * info.bytes_per_vector,
            "max_sq_error": float(max_err.max()) if max_err.size else math.nan,
            "mean_sq_error": float((mean_err * rows).sum() / rows.sum()) if rows.size else math.nan,
        })  # fmt: skip
    return {
        "file_bytes": int(reader._buf.size),
        "truncated": reader.truncated,
        "header": {"magic": MAGIC.decode("latin-1"), "major": d.major, "minor": d.minor, "flags": d.header_flags,
                   "file_length": d.file_length, "n_items": d.n_items, "section_count": len(d.sections),
                   "prefix_length": d.prefix_length},  # fmt: skip
        "sections": sections,
        "layers": layers,
        "metadata": d.metadata,
        "payload_bytes": payload,
        "overhead_bytes": d.file_length - payload,
        "overhead_fraction": (d.file_length - payload) / payload if payload else math.nan,
    }
