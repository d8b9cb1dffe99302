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


def test_reserved_section_types_start_after_the_last_defined_one():
    rows = _table_after("Section types:")
    reserved = [r[0] for r in rows if "reserved" in r[-1]]
    assert reserved and reserved[0].startswith(f"{max(SectionType.NAMES) + 1}..")
    assert "9..0x7FFF" not in SPEC


def test_file_layout_lists_every_directory_section_in_writer_order():
    block = SPEC[SPEC.index("## File layout") :]
    block = block[: block.index("```", block.index("```") + 3)]
    order = ["ITEM_IDS", "LAYERS", "CODEC", "CORRECTIONS", "METADATA", "PARITY", "ENTROPY_MODEL", "BLOCK_INDEX",
             "LAYER_CODES"]  # fmt: skip
    positions = [block.index(name) for name in order]
    assert positions == sorted(positions)


def test_codec_state_table_matches_the_implementation():
    from reelpack.codecs.base import STATE_MAGIC, STATE_VERSION

    rows = _table_after("## CODEC (type 3)")
    assert [(int(r[0]) if r[0].isdigit() else r[0], r[3].strip("`")) for r in rows[:4]] == [
        (0, "magic"), (4, "version"), (6, "header_length"), (10, "header")]  # fmt: skip
    assert STATE_MAGIC.decode() in rows[0][4] and f"`{STATE_VERSION}`" in rows[1][4]
    keys = [r[0].strip("`") for r in _table_after("JSON header keys")]
    assert keys == ["spec", "dim", "meta", "arrays"]
    assert "offset` counts from the end of\nthe JSON header" in SPEC or "counts from the end of the JSON header" in SPEC


def test_entropy_and_parity_constants_are_in_the_spec():
    for text in ("`PREC = 24`", "unsigned 64-bit integer", "32-bit words", "`+ i`", "left to right", "`0x11D`",
                 "`x_0 = 0`, `x_r = α^(r−1)`", "start of the PARITY section"):  # fmt: skip
        assert text in SPEC, text


def test_edge_catalog_header_matches_the_implementation():
    from reelpack.catalog.edge import _CAT_HEAD, CATALOG_MAGIC

    rows = _table_after("### Edge catalog")
    assert CATALOG_MAGIC.decode() in rows[0][3]
    fixed = [r for r in rows if r[0].isdigit() and r[1].isdigit()]
    offsets = [int(r[0]) for r in fixed]
    sizes = [int(r[1]) for r in fixed]
    assert offsets == [sum(sizes[:i]) for i in range(len(sizes))] and sum(sizes) == _CAT_HEAD.size == 48
