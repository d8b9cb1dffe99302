"""The reelpack pack container: writer, memory-mapped reader, streaming reader, inspect.

The byte layout is specified in docs/FORMAT.md (the spec is the document; this
module implements it). In brief: a 64-byte header, a section table, small
directory sections (ITEM_IDS, LAYERS, CODEC per layer, optional CORRECTIONS and
METADATA, BLOCK_INDEX), then each layer's codes as one contiguous LAYER_CODES
section cut into fixed-size blocks, each block checked by its own CRC32C in the
block index. Every byte of a pack is covered by exactly one CRC32C.

Parsers of untrusted bytes raise only :class:`~reelpack.errors.PackFormatError`
subclasses (or :class:`~reelpack.errors.SerializationError` from the codec state
parser); a corrupt or missing block is reported, never raised.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crc32c as _crc32c
import numpy as np

from reelpack.codecs import Codec, codec_from_bytes
from reelpack.codecs.base import unpack_state
from reelpack.errors import (
    ChecksumError,
    DimensionMismatchError,
    DTypeError,
    EmptyInputError,
    InvalidInputError,
    PackFormatError,
    ReelpackError,
    TruncatedPackError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)
from reelpack.format.entropy import LAYOUTS, ColumnModel, decode_block, encode_block, fit_column_model
from reelpack.format.varint import MAX_ID, decode_item_ids, encode_item_ids, ids_from_runs, ids_in_range

__all__ = [
    "MAGIC",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "SectionType",
    "Block",
    "LayerData",
    "LayerInfo",
    "VerifyReport",
    "PackWriter",
    "PackReader",
    "PackStream",
    "write_pack",
    "iter_blocks_stream",
    "inspect",
]

MAGIC = b"RPAK\r\n\x1a\n"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0

HEADER_SIZE = 64
_HEADER = struct.Struct("<8sHHIQQQIIQII")  # 64 bytes, see docs/FORMAT.md "Header"
_SECTION = struct.Struct("<HHIQQ")  # 24 bytes
_LAYERS_HEAD = struct.Struct("<II")  # 8 bytes
_LAYER = struct.Struct("<HHIIIIIIIQQ")  # 48 bytes
_MODEL_PREFIX = struct.Struct("<HH")  # ENTROPY_MODEL: layer index, reserved
_BLOCK_DTYPE = np.dtype(
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
assert _HEADER.size == HEADER_SIZE and _SECTION.size == 24 and _LAYER.size == 48 and _BLOCK_DTYPE.itemsize == 32


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
class _Directory:
    """Everything parsed from the header, section table and directory sections."""

    major: int
    minor: int
    header_flags: int
    file_length: int
    n_items: int
    prefix_length: int
    sections: list[Section]
    layers: list[LayerInfo]
    blocks: np.ndarray  # structured _BLOCK_DTYPE [total_blocks], ordered by (layer, block)
    block_start: list[int]  # index into ``blocks`` of each layer's first block, plus the total
    run_starts: np.ndarray
    run_offsets: np.ndarray
    metadata: dict[str, Any] | None
    section_problems: dict[int, str]  # section index -> why it is unusable (CODEC, CORRECTIONS, METADATA, ENTROPY_MODEL)
    skipped_sections: list[int]  # unknown optional sections
    entropy_models: dict[int, int]  # layer index -> its ENTROPY_MODEL section index


def _u8(data: Any) -> np.ndarray:
    """A 1-D uint8 view of a bytes-like object (no copy)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def _parse_header(head: bytes, available: int) -> tuple[int, ...]:
    """Check and unpack the 64-byte header; ``available`` is how many pack bytes exist (for messages)."""
    if len(head) < HEADER_SIZE:
        if head[:8] != MAGIC[: len(head[:8])]:
            raise PackFormatError(f"not a reelpack pack: starts with {bytes(head[:8])!r}, expected {MAGIC!r}")
        raise TruncatedPackError(f"pack is {available} bytes, shorter than the {HEADER_SIZE}-byte header")
    fields = _HEADER.unpack(head[:HEADER_SIZE])
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


def _parse_directory(buf: np.ndarray, streaming: bool = False) -> _Directory:
    """Parse and validate everything but the blocks from ``buf`` (the pack, or a prefix of it when streaming).

    Raises only :class:`PackFormatError` subclasses. A pack shorter than its header
    says is accepted as long as the header, the section table and the ITEM_IDS,
    LAYERS and BLOCK_INDEX sections are intact.
    """
    n = int(buf.size)
    head = buf[:HEADER_SIZE].tobytes()
    (_, major, minor, header_flags, file_length, n_items, table_offset, section_count, table_crc,
     prefix_length, _reserved, _) = _parse_header(head, n)  # fmt: skip
    if n > file_length:
        raise PackFormatError(f"pack is {n} bytes but its header says {file_length}: trailing bytes")
    if section_count > MAX_SECTIONS:
        raise PackFormatError(f"section count {section_count} exceeds the limit {MAX_SECTIONS}")
    table_end = table_offset + _SECTION.size * section_count
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
    sections = [Section(i, *_SECTION.unpack_from(raw, i * _SECTION.size)) for i in range(section_count)]
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
        if s.offset + _MODEL_PREFIX.size > n:
            problems[s.index] = "ENTROPY_MODEL section is truncated"
            continue
        if s.length < _MODEL_PREFIX.size:
            raise PackFormatError(f"ENTROPY_MODEL section {s.index} is {s.length} bytes, shorter than its prefix")
        layer_index = int(buf[s.offset]) | (int(buf[s.offset + 1]) << 8)
        if layer_index >= len(layers) or not layers[layer_index].entropy_coded or layer_index in entropy_models:
            # the prefix may itself be corrupt: the section is unusable, the layers stay as they are
            problems[s.index] = f"ENTROPY_MODEL section names layer {layer_index}, which is not a distinct entropy-coded layer"
            continue
        entropy_models[layer_index] = s.index
    for s in sections:
        if s.type in (SectionType.CODEC, SectionType.CORRECTIONS, SectionType.METADATA, SectionType.ENTROPY_MODEL):
            if s.index in problems:
                continue
            if s.end > n:
                problems[s.index] = f"{SectionType.NAMES[s.type]} section is truncated"
            elif crc32c(buf[s.offset : s.end]) != s.crc32c:
                problems[s.index] = f"{SectionType.NAMES[s.type]} section CRC32C mismatch"
    metadata = None
    for s in by_type.get(SectionType.METADATA, []):
        if s.index not in problems:
            metadata, why = _parse_metadata(buf[s.offset : s.end].tobytes())
            if why:
                problems[s.index] = why
    return _Directory(major, minor, header_flags, file_length, n_items, prefix_length, sections, layers, blocks,
                      block_start, run_starts, run_offsets, metadata, problems, skipped, entropy_models)  # fmt: skip


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
    if len(raw) < _LAYERS_HEAD.size:
        raise PackFormatError(f"LAYERS section is {len(raw)} bytes, needs at least {_LAYERS_HEAD.size}")
    n_layers, _ = _LAYERS_HEAD.unpack_from(raw, 0)
    if not 1 <= n_layers <= MAX_LAYERS:
        raise PackFormatError(f"layer count {n_layers} is outside 1..{MAX_LAYERS}")
    if len(raw) != _LAYERS_HEAD.size + n_layers * _LAYER.size:
        raise PackFormatError(f"LAYERS section is {len(raw)} bytes, {n_layers} layers need {8 + 48 * n_layers}")
    layers: list[LayerInfo] = []
    used_codes: set[int] = set()
    for i in range(n_layers):
        (index, flags, codec_s, codes_s, corr_s, bpv, ipb, n_blocks, k, first, codes_len) = _LAYER.unpack_from(
            raw, _LAYERS_HEAD.size + i * _LAYER.size
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
    if raw_view.size != total * _BLOCK_DTYPE.itemsize:
        raise PackFormatError(f"BLOCK_INDEX is {raw_view.size} bytes, {total} blocks need {total * 32}")
    blocks = np.frombuffer(raw_view.tobytes(), dtype=_BLOCK_DTYPE)
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


# ================================================================================================
# Reading
# ================================================================================================
@dataclass
class Block:
    """One block of one layer.

    Attributes:
        layer, index: layer number and block number within the layer.
        item_start: sorted position of the block's first item.
        item_ids: int64 [m] ids of the block's items.
        codes: uint8 [m, bytes_per_vector] (a zero-copy view when read from a file), or ``None``
            when the block is not intact.
        max_sq_error, mean_sq_error: float32 bounds from the block index: the largest and the
            mean squared reconstruction error ||x - decode(code)||^2 of the block's items (NaN = unknown).
        problem: why the block cannot be used, or ``None`` when it is intact.
    """

    layer: int
    index: int
    item_start: int
    item_ids: np.ndarray
    codes: np.ndarray | None
    max_sq_error: float
    mean_sq_error: float
    problem: str | None = None

    @property
    def intact(self) -> bool:
        return self.problem is None


@dataclass
class LayerData:
    """A layer's readable codes: ``codes`` uint8 [n_ok, B] for ``item_ids`` int64 [n_ok], and what is lost."""

    item_ids: np.ndarray
    codes: np.ndarray
    missing_item_ids: np.ndarray
    bad_blocks: list[int]


@dataclass
class VerifyReport:
    """Result of :meth:`PackReader.verify`.

    Attributes:
        bad_blocks: (layer, block, reason) of every block that cannot be used.
        missing_item_ids: layer -> int64 ids whose codes in that layer cannot be read.
        section_problems: unusable optional or per-layer sections (CODEC, CORRECTIONS, METADATA) with reasons.
        truncated: the pack is shorter than its header says.
    """

    bad_blocks: list[tuple[int, int, str]] = field(default_factory=list)
    missing_item_ids: dict[int, np.ndarray] = field(default_factory=dict)
    section_problems: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return not self.bad_blocks and not self.section_problems and not self.truncated


class _BlockSource:
    """Shared block logic of :class:`PackReader` and :class:`PackStream`."""

    _dir: _Directory

    def _layer(self, layer: int) -> LayerInfo:
        if getattr(self, "_closed", False):
            raise InvalidInputError("this PackReader is closed")
        if not isinstance(layer, (int, np.integer)) or not 0 <= int(layer) < len(self._dir.layers):
            raise InvalidInputError(f"layer must be an integer in 0..{len(self._dir.layers) - 1}, got {layer!r}")
        return self._dir.layers[int(layer)]

    def _section_bytes(self, s: Section) -> bytes:
        raise NotImplementedError

    def entropy_model(self, layer: int) -> ColumnModel | None:
        """The :class:`ColumnModel` of an entropy-coded ``layer`` (``None`` for a plain layer).

        Raises:
            PackFormatError (subclass): the layer's ENTROPY_MODEL section is missing, corrupt or invalid.
        """
        info = self._layer(layer)
        if not info.entropy_coded:
            return None
        cache = self.__dict__.setdefault("_models", {})
        if info.index not in cache:
            cache[info.index] = self._load_model(info)
        result = cache[info.index]
        if isinstance(result, str):
            raise ChecksumError(f"layer {info.index}: {result}")
        return result

    def _load_model(self, info: LayerInfo) -> ColumnModel | str:
        idx = self._dir.entropy_models.get(info.index)
        if idx is None:
            return "entropy-coded layer has no usable ENTROPY_MODEL section"
        if idx in self._dir.section_problems:
            return self._dir.section_problems[idx]
        try:
            model = ColumnModel.from_bytes(self._section_bytes(self._dir.sections[idx])[_MODEL_PREFIX.size :])
        except ReelpackError as exc:
            return f"ENTROPY_MODEL section is invalid: {exc}"
        if model.bytes_per_vector != info.bytes_per_vector:
            return f"ENTROPY_MODEL has {model.bytes_per_vector} bytes per vector, the layer {info.bytes_per_vector}"
        return model

    def _layer_problem(self, info: LayerInfo) -> str | None:
        if info.entropy_coded:
            cache = self.__dict__.setdefault("_models", {})
            if info.index not in cache:
                cache[info.index] = self._load_model(info)
            if isinstance(cache[info.index], str):
                return cache[info.index]
        return self._dir.section_problems.get(info.codec_section)

    def _decode(self, info: LayerInfo, data: np.ndarray, rows: int) -> tuple[np.ndarray | None, str | None]:
        """Codes [rows, B] of a CRC-checked block's stored bytes, or (None, why) when they do not decode."""
        if not info.entropy_coded:
            return data.reshape(rows, info.bytes_per_vector), None
        model = self.entropy_model(info.index)
        try:
            return decode_block(data.tobytes(), model, rows), None  # type: ignore[arg-type]
        except ReelpackError as exc:
            return None, f"entropy-coded block does not decode: {exc}"

    def _make_block(self, info: LayerInfo, k: int, data: np.ndarray | None) -> Block:
        """Block ``k`` of layer ``info`` from its bytes ``data`` (``None`` = bytes missing)."""
        entry = self._dir.blocks[self._dir.block_start[info.index] + k]
        lo = k * info.items_per_block
        hi = min(self._dir.n_items, lo + info.items_per_block)
        ids = ids_in_range(self._dir.run_starts, self._dir.run_offsets, lo, hi)
        problem = self._layer_problem(info)
        codes = None
        if problem is None:
            if data is None or data.size != int(entry["length"]):
                problem = "block is truncated"
            elif crc32c(data) != int(entry["crc32c"]):
                problem = "block CRC32C mismatch"
            else:
                codes, problem = self._decode(info, data, hi - lo)
        return Block(info.index, k, lo, ids, codes, float(entry["max_sq_error"]), float(entry["mean_sq_error"]), problem)

    def _codec_from_section(self, info: LayerInfo, raw: bytes) -> Codec:
        if info.codec_section in self._dir.section_problems:
            raise ChecksumError(f"layer {info.index}: {self._dir.section_problems[info.codec_section]}")
        codec = codec_from_bytes(raw)
        if codec.bytes_per_vector != info.bytes_per_vector:
            raise PackFormatError(
                f"layer {info.index}: codec {codec.spec!r} has {codec.bytes_per_vector} bytes per vector, "
                f"the layer says {info.bytes_per_vector}"
            )
        return codec


class PackReader(_BlockSource):
    """Memory-mapped reader of a pack file (or of bytes, with :meth:`from_buffer`).

    Opening parses and checks the header, section table and directory sections;
    blocks are checked when read. Raises a :class:`PackFormatError` subclass only
    when those structures are unusable; a corrupt or missing block is reported
    (:meth:`verify`, :attr:`Block.problem`), never raised.

    >>> import numpy as np, tempfile, os
    >>> from reelpack.codecs import make_codec
    >>> X = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    >>> codec = make_codec("sq8").fit(X)
    >>> path = os.path.join(tempfile.mkdtemp(), "items.rpak")
    >>> _ = write_pack(path, np.arange(300) * 3, [(codec, codec.encode(X))], vectors=X, items_per_block=128)
    >>> with PackReader(path) as pack:
    ...     pack.layer_codes(0).shape, pack.codec(0).spec, pack.verify().ok
    ((300, 8), 'sq8', True)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        size = self.path.stat().st_size
        buf = np.memmap(self.path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        self._init(buf)

    @classmethod
    def from_buffer(cls, data: bytes | bytearray | memoryview | np.ndarray) -> PackReader:
        """A reader over bytes already in memory (views share ``data``'s memory)."""
        self = cls.__new__(cls)
        self.path = None  # type: ignore[assignment]
        self._init(_u8(data))
        return self

    def _section_bytes(self, s: Section) -> bytes:
        return self._buf[s.offset : s.end].tobytes()

    def _init(self, buf: np.ndarray) -> None:
        self._buf = buf
        self._decoded: dict[int, dict[int, np.ndarray]] = {}
        self._dir = _parse_directory(buf)
        self._status: dict[int, list[str | None]] = {}
        self._ids: np.ndarray | None = None
        self._closed = False

    # ---- context --------------------------------------------------------------------------------
    def close(self) -> None:
        """Drop this reader's reference to the mapping (views already handed out keep it alive)."""
        self._buf = np.zeros(0, np.uint8)
        self._closed = True

    def __enter__(self) -> PackReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- directory ------------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return self._dir.n_items

    @property
    def n_layers(self) -> int:
        return len(self._dir.layers)

    @property
    def version(self) -> tuple[int, int]:
        """(major, minor) format version of the pack."""
        return self._dir.major, self._dir.minor

    @property
    def layers(self) -> list[LayerInfo]:
        return list(self._dir.layers)

    @property
    def metadata(self) -> dict[str, Any] | None:
        """The METADATA JSON object, or ``None`` when absent or unusable."""
        return self._dir.metadata

    @property
    def truncated(self) -> bool:
        return self._buf.size < self._dir.file_length

    @property
    def item_ids(self) -> np.ndarray:
        """Sorted unique item ids int64 [n_items]; row i of every layer's codes belongs to ``item_ids[i]``."""
        if self._ids is None:
            ids = ids_from_runs(self._dir.run_starts, self._dir.run_offsets)
            ids.flags.writeable = False
            self._ids = ids
        return self._ids

    def codec(self, layer: int) -> Codec:
        """The fitted codec of ``layer``; raises ChecksumError/TruncatedPackError when its section is unusable."""
        info = self._layer(layer)
        s = self._dir.sections[info.codec_section]
        if info.codec_section not in self._dir.section_problems:
            return self._codec_from_section(info, self._buf[s.offset : s.end].tobytes())
        raise ChecksumError(f"layer {info.index}: {self._dir.section_problems[info.codec_section]}")

    def layer_corrections(self, layer: int) -> np.ndarray | None:
        """Per-vector corrections float32 [n_items, k] of ``layer`` (a view), or ``None`` when it has none."""
        info = self._layer(layer)
        if info.corrections_section is None:
            return None
        if info.corrections_section in self._dir.section_problems:
            raise ChecksumError(f"layer {info.index}: {self._dir.section_problems[info.corrections_section]}")
        s = self._dir.sections[info.corrections_section]
        return self._buf[s.offset : s.end].view("<f4").reshape(self._dir.n_items, info.corrections_per_vector)

    # ---- blocks ---------------------------------------------------------------------------------
    def _block_bytes(self, info: LayerInfo, k: int) -> np.ndarray | None:
        entry = self._dir.blocks[self._dir.block_start[info.index] + k]
        off, length = int(entry["offset"]), int(entry["length"])
        return self._buf[off : off + length] if off + length <= self._buf.size else None

    def block(self, layer: int, index: int) -> Block:
        """Block ``index`` of ``layer``, CRC-checked; ``codes`` is a zero-copy view (``None`` if not intact)."""
        info = self._layer(layer)
        if not isinstance(index, (int, np.integer)) or not 0 <= int(index) < info.n_blocks:
            raise InvalidInputError(f"block index must be in 0..{info.n_blocks - 1}, got {index!r}")
        return self._make_block(info, int(index), self._block_bytes(info, int(index)))

    def blocks(self, layer: int) -> Iterator[Block]:
        """Every block of ``layer`` in order, intact or not."""
        info = self._layer(layer)
        for k in range(info.n_blocks):
            yield self._make_block(info, k, self._block_bytes(info, k))

    def _block_problems(self, info: LayerInfo) -> list[str | None]:
        if info.index not in self._status:
            layer_problem = self._layer_problem(info)
            if layer_problem is not None:
                self._status[info.index] = [layer_problem] * info.n_blocks
                return self._status[info.index]
            entries = self._dir.blocks[self._dir.block_start[info.index] : self._dir.block_start[info.index + 1]]
            status: list[str | None] = []
            buf, size = self._buf, self._buf.size
            decoded: dict[int, np.ndarray] = {}
            for k, (off, length, crc) in enumerate(
                zip(entries["offset"].tolist(), entries["length"].tolist(), entries["crc32c"].tolist())
            ):
                if off + length > size:
                    status.append("block is truncated")
                elif crc32c(buf[off : off + length]) != crc:
                    status.append("block CRC32C mismatch")
                elif info.entropy_coded:
                    lo = k * info.items_per_block
                    codes, why = self._decode(info, buf[off : off + length], min(info.items_per_block, self._dir.n_items - lo))
                    status.append(why)
                    if codes is not None:
                        decoded[k] = codes
                else:
                    status.append(None)
            if info.entropy_coded:
                self._decoded[info.index] = decoded
            self._status[info.index] = status
        return self._status[info.index]

    def layer_codes(self, layer: int) -> np.ndarray:
        """All codes of ``layer`` as one uint8 array [n_items, bytes_per_vector].

        A zero-copy view of the file for a plain layer; for an entropy-coded layer
        the blocks are decoded into a new array (not a view, and ``n_items x B``
        bytes of memory).

        Raises:
            ChecksumError: a block (or the layer's codec or entropy model section) is corrupt,
                missing or (entropy coded) does not decode; use :meth:`read_layer` to get the intact part.
        """
        info = self._layer(layer)
        bad = [k for k, p in enumerate(self._block_problems(info)) if p is not None]
        if bad:
            raise ChecksumError(
                f"layer {info.index}: {len(bad)} of {info.n_blocks} blocks are unusable (first: block {bad[0]}, "
                f"{self._block_problems(info)[bad[0]]}); use read_layer() for the intact blocks"
            )
        if info.entropy_coded:
            decoded = self._decoded[info.index]
            return np.concatenate([decoded[k] for k in range(info.n_blocks)], axis=0)
        return self._buf[info.codes_offset : info.codes_offset + info.codes_length].reshape(
            self._dir.n_items, info.bytes_per_vector
        )

    def read_layer(self, layer: int) -> LayerData:
        """The intact part of ``layer``: never raises for bad blocks (codes are a view when all are intact)."""
        info = self._layer(layer)
        problems = self._block_problems(info)
        bad = [k for k, p in enumerate(problems) if p is not None]
        if not bad:
            return LayerData(self.item_ids, self.layer_codes(layer), np.zeros(0, np.int64), [])
        good_rows = np.ones(self._dir.n_items, dtype=bool)
        for k in bad:
            good_rows[k * info.items_per_block : (k + 1) * info.items_per_block] = False
        codes = np.empty((int(good_rows.sum()), info.bytes_per_vector), dtype=np.uint8)
        row = 0
        for k, p in enumerate(problems):
            if p is None and info.entropy_coded:
                m = self._decoded[info.index][k].shape[0]
                codes[row : row + m] = self._decoded[info.index][k]
                row += m
            elif p is None:
                data = self._block_bytes(info, k)
                m = data.size // info.bytes_per_vector  # type: ignore[union-attr]
                codes[row : row + m] = data.reshape(m, info.bytes_per_vector)  # type: ignore[union-attr]
                row += m
        return LayerData(self.item_ids[good_rows], codes, self.item_ids[~good_rows], bad)

    def verify(self) -> VerifyReport:
        """Check every block's CRC32C; report bad blocks, unreadable item ids and unusable sections."""
        report = VerifyReport(truncated=self.truncated)
        report.section_problems = [f"section {i}: {why}" for i, why in sorted(self._dir.section_problems.items())]
        for info in self._dir.layers:
            problems = self._block_problems(info)
            missing = []
            for k, p in enumerate(problems):
                if p is not None:
                    report.bad_blocks.append((info.index, k, p))
                    lo = k * info.items_per_block
                    missing.append(ids_in_range(self._dir.run_starts, self._dir.run_offsets, lo,
                                                min(self._dir.n_items, lo + info.items_per_block)))  # fmt: skip
            report.missing_item_ids[info.index] = np.concatenate(missing) if missing else np.zeros(0, np.int64)
        return report


# ================================================================================================
# Streaming
# ================================================================================================
class PackStream(_BlockSource):
    """Parse a pack from byte chunks as they arrive; iterating yields every block once, in file order.

    Each block is yielded as soon as its last byte arrives, CRC-checked. The
    directory (``item_ids``, ``codec(layer)``, ``metadata``) is available once the
    first ``prefix_length`` bytes have arrived (before the first block). When the
    stream ends early, the blocks not received are yielded with ``problem`` set.

    Raises (while iterating) a :class:`PackFormatError` subclass when the header or
    directory is unusable, the stream ends inside the directory, or more bytes
    arrive than the header announces.
    """

    def __init__(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        self._chunks = chunks
        self._dir = None  # type: ignore[assignment]
        self._prefix = b""

    @property
    def ready(self) -> bool:
        """True once the directory has been parsed."""
        return self._dir is not None

    def _need_ready(self) -> None:
        if self._dir is None:
            raise InvalidInputError("the pack directory has not arrived yet: iterate the stream first")

    @property
    def n_items(self) -> int:
        self._need_ready()
        return self._dir.n_items

    @property
    def layers(self) -> list[LayerInfo]:
        self._need_ready()
        return list(self._dir.layers)

    @property
    def metadata(self) -> dict[str, Any] | None:
        self._need_ready()
        return self._dir.metadata

    @property
    def item_ids(self) -> np.ndarray:
        self._need_ready()
        return ids_from_runs(self._dir.run_starts, self._dir.run_offsets)

    def _section_bytes(self, s: Section) -> bytes:
        return self._prefix[s.offset : s.end]

    def codec(self, layer: int) -> Codec:
        self._need_ready()
        info = self._layer(layer)
        s = self._dir.sections[info.codec_section]
        return self._codec_from_section(info, self._prefix[s.offset : s.end])

    def __iter__(self) -> Iterator[Block]:
        pending = bytearray()
        base = 0  # file offset of pending[0]
        it = iter(self._chunks)
        exhausted = False

        def pull() -> bool:
            nonlocal exhausted
            for chunk in it:
                if len(chunk):
                    pending.extend(chunk)
                    return True
            exhausted = True
            return False

        while len(pending) < HEADER_SIZE and pull():
            pass
        head = bytes(pending[:HEADER_SIZE])
        fields = _parse_header(head, len(pending))
        file_length, prefix_length = fields[4], fields[9]
        if prefix_length > file_length:
            raise PackFormatError(f"header prefix_length {prefix_length} exceeds file_length {file_length}")
        while len(pending) < prefix_length and pull():
            if len(pending) > file_length:
                break
        if len(pending) < prefix_length:
            raise TruncatedPackError(f"stream ended after {len(pending)} bytes, inside the {prefix_length}-byte directory")
        self._prefix = bytes(pending[:prefix_length])
        self._dir = _parse_directory(_u8(self._prefix), streaming=True)
        if any(s.type == SectionType.LAYER_CODES and s.length and s.offset < prefix_length for s in self._dir.sections):
            raise PackFormatError("pack is not streamable: a directory section follows layer codes")
        order = sorted(
            ((int(self._dir.blocks[self._dir.block_start[i.index] + k]["offset"]), i, k)
             for i in self._dir.layers for k in range(i.n_blocks)),
            key=lambda t: t[0],
        )  # fmt: skip
        del pending[:prefix_length]
        base = prefix_length
        for offset, info, k in order:
            length = int(self._dir.blocks[self._dir.block_start[info.index] + k]["length"])
            while base + len(pending) < offset + length and not exhausted:
                pull()
            start = offset - base
            if base + len(pending) >= offset + length:
                data = np.frombuffer(bytes(pending[start : start + length]), dtype=np.uint8)
                yield self._make_block(info, k, data)
            else:
                yield self._make_block(info, k, None)
            if base + len(pending) >= offset + length:
                del pending[: start + length]
                base = offset + length
        while not exhausted:
            pull()
        if base + len(pending) > file_length:
            raise PackFormatError(f"stream holds more than the {file_length} bytes its header announces")


def iter_blocks_stream(chunks: Iterable[bytes | bytearray | memoryview]) -> PackStream:
    """Parse a pack arriving as byte chunks (any boundaries); iterate the result for CRC-checked blocks.

    Returns a :class:`PackStream`; its ``codec(layer)`` and ``item_ids`` work once the
    first block has been yielded.
    """
    return PackStream(chunks)


# ================================================================================================
# Writing
# ================================================================================================
@dataclass
class _PendingLayer:
    codec: Codec
    codec_bytes: bytes
    items_per_block: int
    corrections: np.ndarray | None
    entropy: str | None = None
    model: ColumnModel | None = None
    span: list[int] = field(default_factory=list)  # [start, end) file offsets of the written codes


def _model_section_length(layout: str, bytes_per_vector: int) -> int:
    per_byte, alphabet = {"bytes": (1, 256), "nibbles": (2, 16), "bits": (8, 2)}[layout]
    return _MODEL_PREFIX.size + 12 + 2 * bytes_per_vector * per_byte * alphabet


def _check_ids(item_ids: object) -> np.ndarray:
    ids = np.asarray(item_ids)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer)):
        raise DTypeError(f"item_ids must be a 1-D integer array, got dtype {ids.dtype} shape {ids.shape}")
    if ids.size == 0:
        raise EmptyInputError("item_ids is empty; a pack needs at least one item")
    if np.issubdtype(ids.dtype, np.unsignedinteger) and int(ids.max()) > MAX_ID:
        raise InvalidInputError("item ids must be < 2**63")
    ids = ids.astype(np.int64)
    if int(ids.min()) < 0:
        raise InvalidInputError(f"item ids must be non-negative, found {int(ids.min())}")
    return ids


def _sort_unique_ids(item_ids: object) -> tuple[np.ndarray, np.ndarray]:
    """Checked ids -> (order int64 [n] that sorts them, the sorted ids int64 [n]); duplicates are refused."""
    ids = _check_ids(item_ids)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if sorted_ids.size > 1 and np.any(np.diff(sorted_ids) == 0):
        raise InvalidInputError("item_ids must be unique")
    return order, sorted_ids


def _round_up_f32(x: float) -> np.float32:
    """float32 that is >= x (so a stored maximum stays an upper bound)."""
    f = np.float32(x)
    if float(f) < x:
        f = np.nextafter(f, np.float32(np.inf))
    return f


class PackWriter:
    """Stream a pack to ``path``: add layers, then write each layer's blocks in order, then commit.

    Only the directory (ids, codecs, one 32-byte index entry per block) is held in
    memory; codes go to a temporary file in the destination directory as blocks
    arrive. :meth:`commit` fsyncs it and atomically replaces ``path``; on any error
    (or :meth:`abort`) the temporary file is removed and an existing ``path`` is
    untouched. As a context manager it commits on success and aborts on an exception.

    Args:
        path: destination file.
        item_ids: sorted, unique, non-negative integer ids [n_items]; block rows follow this order.
        metadata: optional JSON-serialisable dict stored in the METADATA section.
    """

    def __init__(self, path: str | os.PathLike[str], item_ids: np.ndarray, metadata: dict[str, Any] | None = None) -> None:
        ids = _check_ids(item_ids)
        if ids.size > 1 and np.any(np.diff(ids) <= 0):
            raise InvalidInputError("PackWriter needs sorted unique item_ids (write_pack sorts for you)")
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise InvalidInputError(f"metadata must be a dict, got {type(metadata).__name__}")
            try:
                self._metadata_bytes: bytes | None = json.dumps(metadata, sort_keys=True, allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"metadata is not JSON-serialisable: {exc}") from None
            if len(self._metadata_bytes) > MAX_METADATA_BYTES:
                raise InvalidInputError(f"metadata is {len(self._metadata_bytes)} bytes, over {MAX_METADATA_BYTES}")
        else:
            self._metadata_bytes = None
        self.path = Path(path)
        self._ids_bytes = encode_item_ids(ids)
        self._n_items = int(ids.size)
        self._layers: list[_PendingLayer] = []
        self._extra_sections: list[tuple[int, int, bytes]] = []
        self._layout: dict[str, Any] | None = None
        self._index: list[bytes] = []
        self._cursor = (0, 0)  # (layer, block) expected next
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self._tmp_path = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._done = False

    # ---- building -------------------------------------------------------------------------------
    def add_layer(self, codec: Codec, items_per_block: int = 1024, corrections: np.ndarray | None = None,
                  entropy: str | None = None, entropy_model: ColumnModel | None = None) -> int:  # fmt: skip
        """Declare the next layer (coarsest first); returns its index.

        Args:
            codec: a fitted codec; its ``to_bytes()`` is stored in the layer's CODEC section.
            items_per_block: items per block, 1..2**20 (the last block holds the rest).
            corrections: optional float32 [n_items, k] per-vector correction factors.
            entropy: ``None`` (plain fixed-width blocks) or a symbol layout of
                :mod:`reelpack.format.entropy` (``"nibbles"`` for sq4, ``"bytes"`` for sq8,
                ``"bits"``): store the layer ENTROPY_CODED, each block ANS-coded with a
                per-column model stored once in an ENTROPY_MODEL section.
            entropy_model: the layer's :class:`ColumnModel` (its layout is used; ``entropy``
                may then be omitted). Without it the model is fitted on the codes that
                :meth:`write_layer` receives, so such a layer must be written with
                ``write_layer``; block-by-block writing (:meth:`write_block`) needs the model up front.
        """
        if entropy_model is not None:
            if not isinstance(entropy_model, ColumnModel):
                raise InvalidInputError(f"entropy_model must be a ColumnModel, got {type(entropy_model).__name__}")
            if entropy is not None and entropy != entropy_model.layout:
                raise InvalidInputError(f"entropy={entropy!r} disagrees with the model's layout {entropy_model.layout!r}")
            if entropy_model.bytes_per_vector != getattr(codec, "bytes_per_vector", None):
                raise DimensionMismatchError("entropy_model bytes_per_vector differs from the codec's")
            entropy = entropy_model.layout
        if entropy is not None and entropy not in LAYOUTS:
            raise InvalidInputError(f"entropy must be None or one of {LAYOUTS}, got {entropy!r}")
        self._check_open()
        if self._layout is not None:
            raise InvalidInputError("add_layer() must come before the first write_block()")
        if not isinstance(codec, Codec) or not codec.is_fitted:
            raise InvalidInputError("add_layer() needs a fitted Codec")
        if len(self._layers) >= MAX_LAYERS:
            raise InvalidInputError(f"a pack holds at most {MAX_LAYERS} layers")
        if not isinstance(items_per_block, (int, np.integer)) or not 1 <= items_per_block <= MAX_ITEMS_PER_BLOCK:
            raise InvalidInputError(f"items_per_block must be in 1..{MAX_ITEMS_PER_BLOCK}, got {items_per_block!r}")
        corr = None
        if corrections is not None:
            corr = np.ascontiguousarray(corrections, dtype="<f4")
            if corr.ndim == 1:
                corr = corr[:, None]
            if corr.ndim != 2 or corr.shape[0] != self._n_items or not 1 <= corr.shape[1] <= MAX_CORRECTIONS_PER_VECTOR:
                raise DimensionMismatchError(
                    f"corrections must be [n_items={self._n_items}, k<={MAX_CORRECTIONS_PER_VECTOR}], got {corr.shape}"
                )
        self._layers.append(_PendingLayer(codec, codec.to_bytes(), int(items_per_block), corr, entropy, entropy_model))
        return len(self._layers) - 1

    def add_section(self, section_type: int, body: bytes, required: bool = False) -> None:
        """Add an application-defined section (type 0x8000..0xFFFF) or a PARITY section to the directory.

        Readers that do not know the type skip it when ``required`` is False and
        refuse the pack when it is True (docs/FORMAT.md, "Compatibility").
        """
        self._check_open()
        if self._layout is not None:
            raise InvalidInputError("add_section() must come before the first write_block()")
        ok_type = isinstance(section_type, (int, np.integer)) and (
            APP_SECTION_MIN <= section_type <= 0xFFFF or section_type == SectionType.PARITY
        )  # PARITY: built by reelpack.format.parity
        if not ok_type:
            raise InvalidInputError(f"section_type must be in {APP_SECTION_MIN:#x}..0xffff or PARITY (8), got {section_type!r}")
        if not isinstance(body, (bytes, bytearray)):
            raise InvalidInputError(f"section body must be bytes, got {type(body).__name__}")
        self._extra_sections.append((int(section_type), SECTION_REQUIRED if required else 0, bytes(body)))

    def _freeze(self) -> None:
        """Fix the layout and write every directory section but BLOCK_INDEX."""
        if not self._layers:
            raise InvalidInputError("a pack needs at least one layer: call add_layer() first")
        L = len(self._layers)
        n = self._n_items
        entries: list[dict[str, Any]] = []

        def add(t: int, body: bytes | None, length: int, required: bool = True) -> int:
            entries.append({"type": t, "flags": SECTION_REQUIRED if required else 0, "body": body, "length": length})
            return len(entries) - 1

        add(SectionType.ITEM_IDS, self._ids_bytes, len(self._ids_bytes))
        layers_idx = add(SectionType.LAYERS, None, _LAYERS_HEAD.size + L * _LAYER.size)
        codec_idx = [add(SectionType.CODEC, lay.codec_bytes, len(lay.codec_bytes)) for lay in self._layers]
        corr_idx = [
            add(SectionType.CORRECTIONS, lay.corrections.tobytes(), lay.corrections.nbytes)
            if lay.corrections is not None else NO_SECTION for lay in self._layers
        ]  # fmt: skip
        if self._metadata_bytes is not None:
            add(SectionType.METADATA, self._metadata_bytes, len(self._metadata_bytes), required=False)
        for t, flags, body in self._extra_sections:
            add(t, body, len(body), required=bool(flags & SECTION_REQUIRED))
        # written not REQUIRED: a 1.0 reader skips it and reports the ENTROPY_CODED layer as unusable
        model_idx = {
            i: add(SectionType.ENTROPY_MODEL, None, _model_section_length(lay.entropy, lay.codec.bytes_per_vector),
                   required=False)
            for i, lay in enumerate(self._layers) if lay.entropy is not None
        }  # fmt: skip
        n_blocks = [-(-n // lay.items_per_block) for lay in self._layers]
        index_idx = add(SectionType.BLOCK_INDEX, None, 32 * sum(n_blocks))
        # entropy-coded lengths are provisional (0) until commit(), which fixes the codes sections' offsets
        codes_idx = [add(SectionType.LAYER_CODES, None, 0 if lay.entropy else n * lay.codec.bytes_per_vector)
                     for lay in self._layers]  # fmt: skip
        offset = HEADER_SIZE + _SECTION.size * len(entries)
        for e in entries:
            e["offset"] = offset
            offset += e["length"]
        for e in entries:
            if e["body"] is not None:
                self._file.seek(e["offset"])
                self._file.write(e["body"])
                e["crc"] = crc32c(e["body"])
                e["body"] = None
            else:
                e["crc"] = 0
        self._layout = {"entries": entries, "index_idx": index_idx, "codes_idx": codes_idx, "n_blocks": n_blocks,
                        "layers_idx": layers_idx, "codec_idx": codec_idx, "corr_idx": corr_idx, "model_idx": model_idx,
                        "prefix_length": entries[codes_idx[0]]["offset"]}  # fmt: skip
        self._file.seek(entries[codes_idx[0]]["offset"])
        self._corr_k = [0 if lay.corrections is None else lay.corrections.shape[1] for lay in self._layers]
        for lay in self._layers:
            lay.corrections = None  # written; free it

    def write_block(self, layer: int, codes: np.ndarray, vectors: np.ndarray | None = None,
                    sq_errors: np.ndarray | None = None) -> None:  # fmt: skip
        """Append the next block: codes uint8 [m, B] of layer ``layer`` (blocks in (layer, block) order).

        m is ``items_per_block`` except for the last block of the layer. The block's
        error bounds come from ``vectors`` float32 [m, d] (the originals: squared
        error of ``codec.decode(codes)``), or from ``sq_errors`` float [m]; with
        neither they are stored as NaN (unknown). Any error aborts the writer
        (the temporary file is removed).
        """
        self._check_open()
        try:
            if self._layout is None:
                self._freeze()
            self._write_block(layer, codes, vectors, sq_errors)
        except BaseException:
            self.abort()
            raise

    def _write_block(self, layer: int, codes: np.ndarray, vectors: np.ndarray | None, sq_errors: np.ndarray | None) -> None:
        cur_layer, cur_block = self._cursor
        if cur_layer >= len(self._layers):
            raise InvalidInputError("every block of every layer has been written already")
        if layer != cur_layer:
            raise InvalidInputError(f"expected a block of layer {cur_layer} (blocks go layer by layer), got layer {layer}")
        lay = self._layers[cur_layer]
        bpv = lay.codec.bytes_per_vector
        lo = cur_block * lay.items_per_block
        m = min(lay.items_per_block, self._n_items - lo)
        arr = np.asarray(codes)
        if arr.dtype != np.uint8:
            raise DTypeError(f"codes must be uint8, got {arr.dtype}")
        if arr.shape != (m, bpv):
            raise DimensionMismatchError(f"block {cur_block} of layer {cur_layer} must be codes [{m}, {bpv}], got {arr.shape}")
        arr = np.ascontiguousarray(arr)
        if lay.entropy is not None and lay.model is None:
            raise InvalidInputError(
                f"layer {cur_layer} is entropy coded without a model: pass entropy_model= to add_layer() "
                "or write it with write_layer()"
            )
        if vectors is not None:
            err = ((np.asarray(vectors, dtype=np.float64) - lay.codec.decode(arr).astype(np.float64)) ** 2).sum(axis=1)
        elif sq_errors is not None:
            err = np.asarray(sq_errors, dtype=np.float64).reshape(-1)
            if err.shape != (m,):
                raise DimensionMismatchError(f"sq_errors must be [{m}], got {err.shape}")
        else:
            err = None
        max_err = _round_up_f32(float(err.max())) if err is not None else np.float32(np.nan)
        mean_err = np.float32(err.mean()) if err is not None else np.float32(np.nan)
        offset = self._file.tell()
        payload = arr if lay.model is None else encode_block(arr, lay.model)
        self._file.write(payload.data if lay.model is None else payload)
        if cur_block == 0:
            lay.span = [offset, offset]
        lay.span[1] = offset + len(payload) if lay.model is not None else offset + arr.nbytes
        entry = (cur_layer, 0, cur_block, offset, lay.span[1] - offset, crc32c(payload), max_err, mean_err)
        self._index.append(np.array([entry], dtype=_BLOCK_DTYPE).tobytes())
        cur_block += 1
        if cur_block == self._layout["n_blocks"][cur_layer]:  # type: ignore[index]
            cur_layer, cur_block = cur_layer + 1, 0
        self._cursor = (cur_layer, cur_block)

    def write_layer(self, layer: int, codes: np.ndarray, vectors: np.ndarray | None = None) -> None:
        """Write all blocks of ``layer`` from codes uint8 [n_items, B] (and optional originals [n_items, d])."""
        self._check_open()
        ipb = self._layers[layer].items_per_block if 0 <= layer < len(self._layers) else 1
        if np.shape(codes)[0] != self._n_items:
            self.abort()
            raise DimensionMismatchError(f"codes must have {self._n_items} rows, got {np.shape(codes)[0]}")
        if 0 <= layer < len(self._layers) and self._layers[layer].entropy and self._layers[layer].model is None:
            try:
                self._layers[layer].model = fit_column_model(np.asarray(codes), self._layers[layer].entropy)
            except BaseException:
                self.abort()
                raise
        for lo in range(0, self._n_items, ipb):
            v = None if vectors is None else vectors[lo : lo + ipb]
            self.write_block(layer, codes[lo : lo + ipb], vectors=v)

    def commit(self) -> Path:
        """Write the block index, section table and header; fsync; atomically publish to ``path``."""
        self._check_open()
        try:
            if self._layout is None:
                self._freeze()
            layout = self._layout
            if self._cursor[0] < len(self._layers):
                raise InvalidInputError(
                    f"cannot commit: layer {self._cursor[0]} still needs block {self._cursor[1]} and later"
                )
            entries = layout["entries"]
            for i, lay in enumerate(self._layers):  # the codes sections as written
                e = entries[layout["codes_idx"][i]]
                e["offset"], e["length"] = lay.span[0], lay.span[1] - lay.span[0]
            file_length = self._layers[-1].span[1]
            layer_records = b"".join(
                _LAYER.pack(i, LAYER_ENTROPY_CODED if lay.entropy else 0, layout["codec_idx"][i], layout["codes_idx"][i],
                            layout["corr_idx"][i], lay.codec.bytes_per_vector, lay.items_per_block, layout["n_blocks"][i],
                            0 if layout["corr_idx"][i] == NO_SECTION else self._corr_k[i],
                            lay.span[0], lay.span[1] - lay.span[0])
                for i, lay in enumerate(self._layers)
            )  # fmt: skip
            late = [(layout["layers_idx"], _LAYERS_HEAD.pack(len(self._layers), 0) + layer_records)]
            for i, idx in layout["model_idx"].items():
                late.append((idx, _MODEL_PREFIX.pack(i, 0) + self._layers[i].model.to_bytes()))
            for idx, body in late:
                assert len(body) == entries[idx]["length"]
                self._file.seek(entries[idx]["offset"])
                self._file.write(body)
                entries[idx]["crc"] = crc32c(body)
            index_bytes = b"".join(self._index)
            index_entry = entries[layout["index_idx"]]
            assert len(index_bytes) == index_entry["length"]
            self._file.seek(index_entry["offset"])
            self._file.write(index_bytes)
            index_entry["crc"] = crc32c(index_bytes)
            table = b"".join(_SECTION.pack(e["type"], e["flags"], e["crc"], e["offset"], e["length"]) for e in entries)
            head = _HEADER.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, 0, file_length, self._n_items, HEADER_SIZE,
                                len(entries), crc32c(table), layout["prefix_length"], 0, 0)[:60]  # fmt: skip
            self._file.seek(0)
            self._file.write(head + struct.pack("<I", crc32c(head)) + table)
            self._file.flush()
            os.fchmod(self._file.fileno(), _publish_mode(self.path))
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp_path, self.path)
            self._done = True
        except BaseException:
            self.abort()
            raise
        _fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Discard the temporary file; ``path`` is left as it was."""
        if self._done:
            return
        self._done = True
        try:
            self._file.close()
        finally:
            try:
                self._tmp_path.unlink()
            except FileNotFoundError:
                pass

    def __del__(self) -> None:
        # a writer dropped without commit() leaves no temporary file behind
        if not getattr(self, "_done", True):
            try:
                self.abort()
            except Exception:  # noqa: BLE001  interpreter shutdown: nothing more to do
                pass

    def _check_open(self) -> None:
        if self._done:
            raise InvalidInputError("this PackWriter has already been committed or aborted")

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _publish_mode(path: Path) -> int:
    """Permission bits for the published pack: those of the pack it replaces, else 0o666 less the umask.

    (mkstemp creates the temporary file 0o600; a pack is normally served or shared.)
    """
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename in it is durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_pack(
    path: str | os.PathLike[str],
    item_ids: np.ndarray,
    layers: Sequence[tuple[Codec, np.ndarray] | tuple[Codec, np.ndarray, np.ndarray]],
    vectors: np.ndarray | None = None,
    metadata: dict[str, Any] | None = None,
    items_per_block: int = 1024,
    entropy: Sequence[str | None] | None = None,
) -> Path:
    """Write a whole pack atomically.

    Args:
        path: destination file (replaced atomically).
        item_ids: unique non-negative integer ids [n] in any order.
        layers: ``(codec, codes)`` or ``(codec, codes, corrections)`` per layer, coarsest first;
            codes uint8 [n, B] and corrections float32 [n, k] in the order of ``item_ids``.
        vectors: optional originals float32 [n, d] (same order) for the per-block error bounds.
        metadata: optional JSON-serialisable dict (catalog version, created_at, ...).
        items_per_block: items per block for every layer.
        entropy: optional per-layer entropy layout (``None``, ``"nibbles"``, ``"bytes"``, ``"bits"``),
            one entry per layer; see :meth:`PackWriter.add_layer`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    order, sorted_ids = _sort_unique_ids(item_ids)
    if not layers:
        raise InvalidInputError("write_pack needs at least one layer")
    vec = None
    if vectors is not None:
        vec = np.asarray(vectors)
        if vec.ndim != 2 or vec.shape[0] != sorted_ids.size:
            raise DimensionMismatchError(f"vectors must be [{sorted_ids.size}, d], got {vec.shape}")
        vec = vec[order]
    if entropy is None:
        entropy = [None] * len(layers)
    if len(entropy) != len(layers):
        raise InvalidInputError(f"entropy needs one entry per layer ({len(layers)}), got {len(entropy)}")
    prepared = []
    for entry in layers:
        if not isinstance(entry, tuple) or len(entry) not in (2, 3):
            raise InvalidInputError("each layer must be (codec, codes) or (codec, codes, corrections)")
        codes = np.asarray(entry[1])
        if codes.ndim != 2 or codes.shape[0] != sorted_ids.size:
            raise DimensionMismatchError(f"codes must be [{sorted_ids.size}, B], got {codes.shape}")
        corr = None if len(entry) == 2 else np.asarray(entry[2])[order]
        prepared.append((entry[0], codes[order], corr))
    writer = PackWriter(path, sorted_ids, metadata=metadata)
    with writer:
        for (codec, _, corr), ent in zip(prepared, entropy):
            writer.add_layer(codec, items_per_block=items_per_block, corrections=corr, entropy=ent)
        for i, (_, codes, _) in enumerate(prepared):
            writer.write_layer(i, codes, vectors=vec)
    return writer.path


# ================================================================================================
# Inspect
# ================================================================================================
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
    :meth:`PackReader.verify`). Raises a :class:`PackFormatError` subclass when the
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
            try:
                spec = unpack_state(reader._buf[s.offset : s.end].tobytes())[0]
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
