"""Reading a pack as its bytes arrive: :class:`PackStream` and :func:`iter_blocks_stream`.

Each block is yielded, CRC-checked, as soon as its last byte arrives; the directory (ids, codecs, metadata) is
parsed once its ``prefix_length`` bytes are in. Raises only :class:`~reelpack.errors.PackFormatError`
subclasses for an unusable header or directory; a block that never arrives is yielded with ``problem`` set.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from reelpack.codecs import Codec
from reelpack.errors import InvalidInputError, PackFormatError, TruncatedPackError
from reelpack.format.layout import HEADER_SIZE, LayerInfo, Section, SectionType, as_u8, parse_directory, parse_header
from reelpack.format.reader import Block, BlockSource
from reelpack.format.varint import ids_from_runs

__all__ = ["PackStream", "iter_blocks_stream"]


class PackStream(BlockSource):
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
        fields = parse_header(head, len(pending))
        file_length, prefix_length = fields[4], fields[9]
        if prefix_length > file_length:
            raise PackFormatError(f"header prefix_length {prefix_length} exceeds file_length {file_length}")
        while len(pending) < prefix_length and pull():
            if len(pending) > file_length:
                break
        if len(pending) < prefix_length:
            raise TruncatedPackError(f"stream ended after {len(pending)} bytes, inside the {prefix_length}-byte directory")
        self._prefix = bytes(pending[:prefix_length])
        self._dir = parse_directory(as_u8(self._prefix), streaming=True)
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
