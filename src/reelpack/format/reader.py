"""Reading a pack: the memory-mapped :class:`PackReader`, its :class:`Block` and :class:`VerifyReport`.

Opening parses the directory (:func:`reelpack.format.layout.parse_directory`); blocks are CRC-checked when read.
Parsers of untrusted bytes raise only :class:`~reelpack.errors.PackFormatError` subclasses (or
:class:`~reelpack.errors.SerializationError` from the codec state parser); a corrupt or missing block is
reported, never raised.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.codecs import Codec, codec_from_bytes
from reelpack.errors import ChecksumError, InvalidInputError, PackFormatError, ReelpackError
from reelpack.format.entropy import ColumnModel, decode_block
from reelpack.format.layout import MODEL_PREFIX, Directory, LayerInfo, Section, as_u8, crc32c, parse_directory
from reelpack.format.varint import ids_from_runs, ids_in_range

__all__ = ["Block", "LayerData", "VerifyReport", "BlockSource", "PackReader"]


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
        section_problems: every section but the directory's ITEM_IDS, LAYERS and BLOCK_INDEX (checked on open)
            whose CRC32C does not match, that is truncated, or whose structure is invalid (a CODEC section's
            RPCS header, METADATA JSON, an ENTROPY_MODEL), with reasons: CODEC, CORRECTIONS, METADATA,
            ENTROPY_MODEL, PARITY and application sections (such as a delta's DELTA_REMOVED and DELTA_BOUNDS).
        truncated: the pack is shorter than its header says.
    """

    bad_blocks: list[tuple[int, int, str]] = field(default_factory=list)
    missing_item_ids: dict[int, np.ndarray] = field(default_factory=dict)
    section_problems: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return not self.bad_blocks and not self.section_problems and not self.truncated


class BlockSource:
    """Shared block logic of :class:`PackReader` and :class:`~reelpack.format.stream.PackStream` (a base class
    of this package, not a public API)."""

    _dir: Directory

    def _layer(self, layer: int) -> LayerInfo:
        if getattr(self, "_closed", False):
            raise InvalidInputError("this PackReader is closed")
        if not isinstance(layer, (int, np.integer)) or not 0 <= int(layer) < len(self._dir.layers):
            raise InvalidInputError(f"layer must be an integer in 0..{len(self._dir.layers) - 1}, got {layer!r}")
        return self._dir.layers[int(layer)]

    def _section_bytes(self, s: Section) -> bytes:
        raise NotImplementedError

    def _section_error(self, index: int, layer: int) -> PackFormatError:
        """The error for an unusable section: ChecksumError for damage, PackFormatError for a broken structure."""
        why = f"layer {layer}: {self._dir.section_problems[index]}"
        return PackFormatError(why) if index in self._dir.invalid_sections else ChecksumError(why)

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
            model = ColumnModel.from_bytes(self._section_bytes(self._dir.sections[idx])[MODEL_PREFIX.size :])
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
            raise self._section_error(info.codec_section, info.index)
        codec = codec_from_bytes(raw)
        if codec.bytes_per_vector != info.bytes_per_vector:
            raise PackFormatError(
                f"layer {info.index}: codec {codec.spec!r} has {codec.bytes_per_vector} bytes per vector, "
                f"the layer says {info.bytes_per_vector}"
            )
        return codec


class PackReader(BlockSource):
    """Memory-mapped reader of a pack file (or of bytes, with :meth:`from_buffer`).

    Opening parses and checks the header, section table and directory sections;
    blocks are checked when read. Raises a :class:`PackFormatError` subclass only
    when those structures are unusable; a corrupt or missing block is reported
    (:meth:`verify`, :attr:`Block.problem`), never raised.

    >>> import numpy as np, tempfile, os
    >>> from reelpack.codecs import make_codec
    >>> from reelpack.format import PackReader, write_pack
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
        self._init(as_u8(data))
        return self

    def _section_bytes(self, s: Section) -> bytes:
        return self._buf[s.offset : s.end].tobytes()

    def _init(self, buf: np.ndarray) -> None:
        self._buf = buf
        self._decoded: dict[int, dict[int, np.ndarray]] = {}
        self._dir = parse_directory(buf)
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
        raise self._section_error(info.codec_section, info.index)

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
        """Check every CRC32C of the pack (every section's and every block's) and each CODEC section's structure.

        Reports bad blocks, unreadable item ids and unusable sections (:class:`VerifyReport`); the header, the
        section table, ITEM_IDS, LAYERS and BLOCK_INDEX were checked when the pack was opened.
        """
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

