"""docs/FORMAT.md and the implementation agree: magic, section types, header and entry sizes."""

from __future__ import annotations

import re
from pathlib import Path

from packtools import HEADER_FIELDS

from reelpack.format import MAGIC, SectionType
from reelpack.format.layout import BLOCK_DTYPE, HEADER, LAYER, SECTION

SPEC = (Path(__file__).parents[2] / "docs" / "FORMAT.md").read_text()


def _table_after(heading: str) -> list[list[str]]:
    """Rows of the first markdown table after ``heading``, as lists of stripped cells (header row dropped)."""
    text = SPEC[SPEC.index(heading) :]
    rows = []
    for line in text.splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return [r for r in rows[2:]]


def test_magic_in_spec():
    assert " ".join(f"{b:02X}" for b in MAGIC) in SPEC


def test_section_types_match_spec():
    rows = _table_after("Section types:")
    named = {int(r[0]): r[1] for r in rows if r[0].isdigit()}
    assert named == SectionType.NAMES


def test_header_offsets_match_spec():
    rows = _table_after("## Header (64 bytes")
    doc = {r[3].strip("`"): (int(r[0]), int(r[1])) for r in rows}
    for name, spec_name in [("major", "major"), ("minor", "minor"), ("flags", "flags"), ("file_length", "file_length"),
                            ("n_items", "n_items"), ("table_offset", "section_table_offset"),
                            ("section_count", "section_count"), ("table_crc", "section_table_crc32c"),
                            ("prefix_length", "prefix_length"), ("header_crc", "header_crc32c")]:  # fmt: skip
        assert doc[spec_name][0] == HEADER_FIELDS[name][0]
    assert sum(size for _, size in doc.values()) == HEADER.size == 64


def test_entry_sizes_match_spec():
    for heading, size in [("## Section table", SECTION.size), ("Entry (48 bytes)", LAYER.size),
                          ("## BLOCK_INDEX", BLOCK_DTYPE.itemsize)]:  # fmt: skip
        rows = _table_after(heading)
        offsets = [int(r[0]) for r in rows]
        sizes = [int(r[1]) for r in rows]
        assert offsets == [sum(sizes[:i]) for i in range(len(sizes))] and sum(sizes) == size, heading
    for name, offset in zip(BLOCK_DTYPE.names, [0, 2, 4, 8, 16, 20, 24, 28]):
        assert BLOCK_DTYPE.fields[name][1] == offset
    assert re.search(r"exactly `32 × Σ n_blocks`", SPEC)
