"""The pack's byte layout: magic, format version, section types, flags, limits, struct layouts, CRC32C, and the
parser of the header, the section table and the directory sections (everything but the blocks).

The layout is specified in docs/FORMAT.md (the spec is the document; this module implements it). In brief: a
64-byte header, a section table, small directory sections (ITEM_IDS, LAYERS, CODEC per layer, optional
CORRECTIONS and METADATA, BLOCK_INDEX), then each layer's codes as one contiguous LAYER_CODES section cut into
fixed-size blocks, each block checked by its own CRC32C in the block index. Every byte of a pack is covered by
exactly one CRC32C.

:func:`parse_directory` reads untrusted bytes and raises only :class:`~reelpack.errors.PackFormatError`
subclasses; it checks every length and offset against the bytes present before allocating. The reader
(:mod:`reelpack.format.reader`), the streaming reader (:mod:`reelpack.format.stream`) and the writer
(:mod:`reelpack.format.writer`) share the definitions here.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import crc32c as _crc32c
import numpy as np

from reelpack.codecs.base import check_state
from reelpack.errors import (
    ChecksumError,
    PackFormatError,
    SerializationError,
    TruncatedPackError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)
from reelpack.format.varint import decode_item_ids

__all__ = [
    "MAGIC",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "HEADER_SIZE",
    "HEADER",
    "SECTION",
    "LAYERS_HEAD",
    "LAYER",
    "MODEL_PREFIX",
    "BLOCK_DTYPE",
    "SectionType",
    "SECTION_REQUIRED",
    "LAYER_ENTROPY_CODED",
    "NO_SECTION",
    "APP_SECTION_MIN",
    "MAX_SECTIONS",
    "MAX_LAYERS",
    "MAX_BYTES_PER_VECTOR",
    "MAX_ITEMS_PER_BLOCK",
    "MAX_CORRECTIONS_PER_VECTOR",
    "MAX_METADATA_BYTES",
    "crc32c",
    "Section",
    "LayerInfo",
    "Directory",
    "as_u8",
    "parse_header",
    "parse_directory",
]

MAGIC = b"RPAK\r\n\x1a\n"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0

HEADER_SIZE = 64
HEADER = struct.Struct("<8sHHIQQQIIQII")  # 64 bytes, see docs/FORMAT.md "Header"
SECTION = struct.Struct("<HHIQQ")  # 24 bytes
LAYERS_HEAD = struct.Struct("<II")  # 8 bytes
LAYER = struct.Struct("<HHIIIIIIIQQ")  # 48 bytes
MODEL_PREFIX = struct.Struct("<HH")  # ENTROPY_MODEL: layer index, reserved
BLOCK_DTYPE = np.dtype(
    [
        ("layer", "<u2"),
        ("flags", "<u2"),
        ("block", "<u4"),
        ("offset", "<u8"),
        ("length", "<u4"),
        ("crc32c", "<u4"),
        ("max_sq_error", "<f4"),
        ("mean_sq_error", "<f4"),
    ]
)  # 32 bytes
assert HEADER.size == HEADER_SIZE and SECTION.size == 24 and LAYER.size == 48 and BLOCK_DTYPE.itemsize == 32


class SectionType:
    """Section type codes (u16) of the section table."""

    ITEM_IDS = 1
    LAYERS = 2
    CODEC = 3
    LAYER_CODES = 4
    BLOCK_INDEX = 5
    CORRECTIONS = 6
    METADATA = 7
    PARITY = 8  # forward error correction; parsed by reelpack.format.parity, skipped here
    ENTROPY_MODEL = 9  # the ColumnModel of one ENTROPY_CODED layer (not REQUIRED: see docs/FORMAT.md)

    NAMES = {1: "ITEM_IDS", 2: "LAYERS", 3: "CODEC", 4: "LAYER_CODES", 5: "BLOCK_INDEX", 6: "CORRECTIONS",
             7: "METADATA", 8: "PARITY", 9: "ENTROPY_MODEL"}  # fmt: skip
    KNOWN = frozenset((1, 2, 3, 4, 5, 6, 7, 9))  # the types this reader implements


SECTION_REQUIRED = 0x0001
LAYER_ENTROPY_CODED = 0x0001
NO_SECTION = 0xFFFFFFFF
APP_SECTION_MIN = 0x8000

MAX_SECTIONS = 4096
MAX_LAYERS = 256
MAX_BYTES_PER_VECTOR = 1 << 20
MAX_ITEMS_PER_BLOCK = 1 << 20
MAX_CORRECTIONS_PER_VECTOR = 1024
MAX_METADATA_BYTES = 1 << 20


def crc32c(data: Any) -> int:
    """CRC32C (Castagnoli) of a bytes-like object or contiguous numpy array."""
    return _crc32c.crc32c(data)


# ================================================================================================
# Parsed directory
# ================================================================================================
@dataclass(frozen=True)
class Section:
    """One section table entry."""

    index: int
    type: int
    flags: int
    crc32c: int
    offset: int
    length: int

    @property
    def required(self) -> bool:
        return bool(self.flags & SECTION_REQUIRED)

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class LayerInfo:
    """One LAYERS entry, validated against the section table.

    Attributes:
        index: layer number (0 = coarsest).
        flags: layer flags (bit 0: entropy coded, reserved in 1.0).
        codec_section, codes_section: section table indexes.
        corrections_section: section index, or ``None``.
        bytes_per_vector: code width B of the layer.
        items_per_block: items per block (the last block may hold fewer).
        n_blocks: ``ceil(n_items / items_per_block)``.
        corrections_per_vector: float32 corrections per item (0 when none).
        codes_offset: file offset of the first block.
        codes_length: length of the LAYER_CODES section in bytes.
    """

    index: int
    flags: int
    codec_section: int
    codes_section: int
    corrections_section: int | None
    bytes_per_vector: int
    items_per_block: int
    n_blocks: int
    corrections_per_vector: int
    codes_offset: int
    codes_length: int

    @property
    def entropy_coded(self) -> bool:
        return bool(self.flags & LAYER_ENTROPY_CODED)


@dataclass
class Directory:
    """Everything parsed from the header, section table and directory sections."""

    major: int
    minor: int
    header_flags: int
    file_length: int
    n_items: int
    prefix_length: int
    sections: list[Section]
    layers: list[LayerInfo]
    blocks: np.ndarray  # structured BLOCK_DTYPE [total_blocks], ordered by (layer, block)
    block_start: list[int]  # index into ``blocks`` of each layer's first block, plus the total
    run_starts: np.ndarray
    run_offsets: np.ndarray
    metadata: dict[str, Any] | None
    section_problems: dict[int, str]  # section index -> why it is unusable (CODEC, CORRECTIONS, METADATA, ENTROPY_MODEL)
    skipped_sections: list[int]  # unknown optional sections
    entropy_models: dict[int, int]  # layer index -> its ENTROPY_MODEL section index
    invalid_sections: set[int] = field(default_factory=set)  # problems that are a broken structure, not a CRC


def as_u8(data: Any) -> np.ndarray:
    """A 1-D uint8 view of a bytes-like object (no copy)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def parse_header(head: bytes, available: int) -> tuple[int, ...]:
    """Check and unpack the 64-byte header; ``available`` is how many pack bytes exist (for messages)."""
    if len(head) < HEADER_SIZE:
        if head[:8] != MAGIC[: len(head[:8])]:
            raise PackFormatError(f"not a reelpack pack: starts with {bytes(head[:8])!r}, expected {MAGIC!r}")
        raise TruncatedPackError(f"pack is {available} bytes, shorter than the {HEADER_SIZE}-byte header")
    fields = HEADER.unpack(head[:HEADER_SIZE])
    magic, major, minor = fields[0], fields[1], fields[2]
    if magic != MAGIC:
        raise PackFormatError(f"not a reelpack pack: magic {magic!r}, expected {MAGIC!r}")
    if major != FORMAT_MAJOR:
        raise UnsupportedVersionError(
            f"pack format version {major}.{minor} is not supported: this reader implements version "
            f"{FORMAT_MAJOR}.{FORMAT_MINOR} (major {FORMAT_MAJOR}, any minor)"
        )
    stored = fields[-1]
    actual = crc32c(head[:60])
    if stored != actual:
        raise ChecksumError(f"header CRC32C mismatch: stored {stored:#010x}, computed {actual:#010x}")
    return fields


def parse_directory(buf: np.ndarray, streaming: bool = False) -> Directory:
    """Parse and validate everything but the blocks from ``buf`` (the pack, or a prefix of it when streaming).

    Raises only :class:`PackFormatError` subclasses. A pack shorter than its header
    says is accepted as long as the header, the section table and the ITEM_IDS,
    LAYERS and BLOCK_INDEX sections are intact.
    """
    n = int(buf.size)
    head = buf[:HEADER_SIZE].tobytes()
    (_, major, minor, header_flags, file_length, n_items, table_offset, section_count, table_crc,
     prefix_length, _reserved, _) = parse_header(head, n)  # fmt: skip
    if n > file_length:
        raise PackFormatError(f"pack is {n} bytes but its header says {file_length}: trailing bytes")
    if section_count > MAX_SECTIONS:
        raise PackFormatError(f"section count {section_count} exceeds the limit {MAX_SECTIONS}")
    table_end = table_offset + SECTION.size * section_count
    if table_offset < HEADER_SIZE or table_end > file_length:
        raise PackFormatError(
            f"section table [{table_offset}, {table_end}) lies outside [{HEADER_SIZE}, {file_length})"
        )
    if table_end > n:
        raise TruncatedPackError(f"pack is {n} bytes, the section table ends at {table_end}")
    table = buf[table_offset:table_end]
    if crc32c(table) != table_crc:
        raise ChecksumError(f"section table CRC32C mismatch: stored {table_crc:#010x}, computed {crc32c(table):#010x}")

    raw = table.tobytes()
    sections = [Section(i, *SECTION.unpack_from(raw, i * SECTION.size)) for i in range(section_count)]
    # header, table and sections tile [0, file_length) with no gap or overlap: every byte is CRC-covered
    spans = sorted([(0, HEADER_SIZE), (table_offset, table_end)] + [(s.offset, s.end) for s in sections])
    cursor = 0
    for start, end in spans:
        if start != cursor:
            raise PackFormatError(f"pack regions leave a gap or overlap at byte {min(start, cursor)}")
        cursor = end
    if cursor != file_length:
        raise PackFormatError(f"pack regions end at byte {cursor}, the header says {file_length}")
    non_codes_end = max([table_end] + [s.end for s in sections if s.type != SectionType.LAYER_CODES])
    if prefix_length != non_codes_end:
        raise PackFormatError(f"header prefix_length is {prefix_length}, the directory sections end at {non_codes_end}")

    by_type: dict[int, list[Section]] = {}
    skipped: list[int] = []
    for s in sections:
        if s.type not in SectionType.KNOWN:
            if s.required:
                name = SectionType.NAMES.get(s.type, "unknown")
                raise UnsupportedFeatureError(
                    f"section {s.index} has type {s.type} ({name}) flagged required; this reader "
                    f"(format {FORMAT_MAJOR}.{FORMAT_MINOR}) does not implement it"
                )
            skipped.append(s.index)
            continue
        by_type.setdefault(s.type, []).append(s)
    for t in (SectionType.ITEM_IDS, SectionType.LAYERS, SectionType.BLOCK_INDEX):
        if len(by_type.get(t, [])) != 1:
            raise PackFormatError(f"pack needs exactly one {SectionType.NAMES[t]} section, found {len(by_type.get(t, []))}")
    if len(by_type.get(SectionType.METADATA, [])) > 1:
        raise PackFormatError("pack has more than one METADATA section")

    def body(s: Section) -> np.ndarray:
        """A required directory section's bytes, CRC-checked."""
        if s.end > n:
            raise TruncatedPackError(f"{SectionType.NAMES[s.type]} section [{s.offset}, {s.end}) is beyond the {n} bytes read")
        view = buf[s.offset : s.end]
        if crc32c(view) != s.crc32c:
            raise ChecksumError(f"{SectionType.NAMES[s.type]} section (index {s.index}) CRC32C mismatch")
        return view

    layers = _parse_layers(body(by_type[SectionType.LAYERS][0]), sections, n_items)
    # an entropy-coded layer may take less than a byte per item; BLOCK_INDEX (32 bytes per block of at most
    # 2^20 items) still bounds n_items by the bytes present
    if n_items > file_length and not any(layer.entropy_coded for layer in layers):
        raise PackFormatError(f"header claims {n_items} items in a {file_length}-byte pack")
    if not streaming and n_items > n and not any(layer.entropy_coded for layer in layers):
        raise TruncatedPackError(f"pack holds {n_items} items but only {n} bytes arrived: too short to read")
    blocks, block_start = _parse_block_index(body(by_type[SectionType.BLOCK_INDEX][0]), layers, n_items)
    run_starts, run_offsets = decode_item_ids(body(by_type[SectionType.ITEM_IDS][0]).tobytes(), n_items)

    problems: dict[int, str] = {}
    entropy_models: dict[int, int] = {}
    for s in by_type.get(SectionType.ENTROPY_MODEL, []):
        if s.offset + MODEL_PREFIX.size > n:
            problems[s.index] = "ENTROPY_MODEL section is truncated"
            continue
        if s.length < MODEL_PREFIX.size:
            raise PackFormatError(f"ENTROPY_MODEL section {s.index} is {s.length} bytes, shorter than its prefix")
        layer_index = int(buf[s.offset]) | (int(buf[s.offset + 1]) << 8)
        if layer_index >= len(layers) or not layers[layer_index].entropy_coded or layer_index in entropy_models:
            # the prefix may itself be corrupt: the section is unusable, the layers stay as they are
            problems[s.index] = f"ENTROPY_MODEL section names layer {layer_index}, which is not a distinct entropy-coded layer"
            continue
        entropy_models[layer_index] = s.index
    # every other section but LAYER_CODES carries a CRC32C too: CODEC, CORRECTIONS, METADATA, ENTROPY_MODEL,
    # PARITY and the skipped (unknown or application) sections; damage is reported, not raised
    invalid: set[int] = set()
    checked_above = (SectionType.ITEM_IDS, SectionType.LAYERS, SectionType.BLOCK_INDEX, SectionType.LAYER_CODES)
    for s in sections:
        if s.type in checked_above or s.index in problems:
            continue
        name = SectionType.NAMES.get(s.type, f"type {s.type:#06x}")
        if s.end > n:
            problems[s.index] = f"{name} section is truncated"
        elif crc32c(buf[s.offset : s.end]) != s.crc32c:
            problems[s.index] = f"{name} section CRC32C mismatch"
        elif s.type == SectionType.CODEC:
            # the RPCS structure, header only (no array is read): lying lengths are reported here, not at load
            try:
                check_state(memoryview(buf[s.offset : s.end]))
            except SerializationError as exc:
                problems[s.index] = f"CODEC section is invalid: {exc}"
                invalid.add(s.index)
    metadata = None
    for s in by_type.get(SectionType.METADATA, []):
        if s.index not in problems:
            metadata, why = _parse_metadata(buf[s.offset : s.end].tobytes())
            if why:
                problems[s.index] = why
    return Directory(major, minor, header_flags, file_length, n_items, prefix_length, sections, layers, blocks,
                      block_start, run_starts, run_offsets, metadata, problems, skipped, entropy_models,
                      invalid)  # fmt: skip


def _parse_metadata(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    if len(raw) > MAX_METADATA_BYTES:
        return None, f"METADATA section is {len(raw)} bytes, over the {MAX_METADATA_BYTES} limit"
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, f"METADATA is not valid UTF-8 JSON: {type(exc).__name__}"
    if not isinstance(value, dict):
        return None, f"METADATA must be a JSON object, found {type(value).__name__}"
    return value, None


def _parse_layers(raw_view: np.ndarray, sections: list[Section], n_items: int) -> list[LayerInfo]:
    raw = raw_view.tobytes()
    if len(raw) < LAYERS_HEAD.size:
        raise PackFormatError(f"LAYERS section is {len(raw)} bytes, needs at least {LAYERS_HEAD.size}")
    n_layers, _ = LAYERS_HEAD.unpack_from(raw, 0)
    if not 1 <= n_layers <= MAX_LAYERS:
        raise PackFormatError(f"layer count {n_layers} is outside 1..{MAX_LAYERS}")
    if len(raw) != LAYERS_HEAD.size + n_layers * LAYER.size:
        raise PackFormatError(f"LAYERS section is {len(raw)} bytes, {n_layers} layers need {8 + 48 * n_layers}")
    layers: list[LayerInfo] = []
    used_codes: set[int] = set()
    for i in range(n_layers):
        (index, flags, codec_s, codes_s, corr_s, bpv, ipb, n_blocks, k, first, codes_len) = LAYER.unpack_from(
            raw, LAYERS_HEAD.size + i * LAYER.size
        )
        where = f"layer {i}"
        if index != i:
            raise PackFormatError(f"{where}: entry holds layer index {index}, expected {i}")

        def section_of(idx: int, t: int, what: str) -> Section:
            if idx >= len(sections) or sections[idx].type != t:
                raise PackFormatError(f"{where}: {what} section index {idx} is not a {SectionType.NAMES[t]} section")
            return sections[idx]

        section_of(codec_s, SectionType.CODEC, "codec")
        codes = section_of(codes_s, SectionType.LAYER_CODES, "codes")
        if codes_s in used_codes:
            raise PackFormatError(f"{where}: codes section {codes_s} is shared with another layer")
        used_codes.add(codes_s)
        if not 1 <= bpv <= MAX_BYTES_PER_VECTOR or not 1 <= ipb <= MAX_ITEMS_PER_BLOCK:
            raise PackFormatError(f"{where}: bytes_per_vector {bpv} or items_per_block {ipb} out of range")
        if n_blocks != -(-n_items // ipb):
            raise PackFormatError(
                f"{where}: {n_blocks} blocks, but {n_items} items / {ipb} per block need {-(-n_items // ipb)}"
            )
        if first != codes.offset or codes_len != codes.length:
            raise PackFormatError(f"{where}: first block offset / codes length disagree with section {codes_s}")
        if not flags & LAYER_ENTROPY_CODED and codes_len != n_items * bpv:
            raise PackFormatError(
                f"{where}: codes section is {codes_len} bytes, {n_items} items x {bpv} B need {n_items * bpv}"
            )
        corrections: int | None = None
        if corr_s != NO_SECTION:
            corr = section_of(corr_s, SectionType.CORRECTIONS, "corrections")
            if not 1 <= k <= MAX_CORRECTIONS_PER_VECTOR or corr.length != 4 * k * n_items:
                raise PackFormatError(f"{where}: {k} corrections per vector do not fit a {corr.length}-byte section")
            corrections = corr_s
        elif k != 0:
            raise PackFormatError(f"{where}: {k} corrections per vector but no CORRECTIONS section")
        layers.append(LayerInfo(i, flags, codec_s, codes_s, corrections, bpv, ipb, n_blocks, k, first, codes_len))
    return layers


def _parse_block_index(raw_view: np.ndarray, layers: list[LayerInfo], n_items: int) -> tuple[np.ndarray, list[int]]:
    total = sum(layer.n_blocks for layer in layers)
    if raw_view.size != total * BLOCK_DTYPE.itemsize:
        raise PackFormatError(f"BLOCK_INDEX is {raw_view.size} bytes, {total} blocks need {total * 32}")
    blocks = np.frombuffer(raw_view.tobytes(), dtype=BLOCK_DTYPE)
    starts = [0]
    for layer in layers:
        starts.append(starts[-1] + layer.n_blocks)
    for layer in layers:
        entries = blocks[starts[layer.index] : starts[layer.index + 1]]
        k = np.arange(layer.n_blocks, dtype=np.int64)
        if np.any(entries["layer"] != layer.index) or np.any(entries["block"] != k):
            raise PackFormatError(f"BLOCK_INDEX entries of layer {layer.index} are out of order")
        offsets = entries["offset"].astype(np.int64)  # offsets fit: the codes section lies inside the file
        lengths = entries["length"].astype(np.int64)
        if entries["offset"].size and int(entries["offset"].max()) > layer.codes_offset + layer.codes_length:
            raise PackFormatError(f"BLOCK_INDEX offset of layer {layer.index} lies outside its codes section")
        if layer.entropy_coded:
            ends = np.cumsum(lengths) + layer.codes_offset
            expected = np.concatenate(([layer.codes_offset], ends[:-1]))
            section_end = layer.codes_offset + layer.codes_length
            if not np.array_equal(offsets, expected) or (ends.size and int(ends[-1]) != section_end):
                raise PackFormatError(
                    f"BLOCK_INDEX blocks of entropy-coded layer {layer.index} do not tile its codes section"
                )
        else:
            rows = np.minimum(layer.items_per_block, n_items - k * layer.items_per_block)
            exp_off = layer.codes_offset + k * layer.items_per_block * layer.bytes_per_vector
            if not np.array_equal(offsets, exp_off) or not np.array_equal(lengths, rows * layer.bytes_per_vector):
                raise PackFormatError(f"BLOCK_INDEX offsets or lengths of layer {layer.index} disagree with its layout")
    return blocks, starts

