"""The reelpack pack format: a checksummed, block-addressable container of compressed item embeddings.

The byte layout is specified in docs/FORMAT.md. Write with :func:`write_pack` (optionally with Reed-Solomon
parity, ``parity=(k, m)``) or the streaming :class:`PackWriter`; read with :class:`PackReader` (memory-mapped,
zero-copy code views), :func:`iter_blocks_stream` (blocks as bytes arrive) or :func:`inspect`; update with
:func:`make_delta` / :func:`apply_delta`; recover lost blocks with :func:`read_parity` / :func:`recover_layer`.

Modules: :mod:`~reelpack.format.layout` (constants, struct layouts, directory parser), ``reader``, ``stream``,
``writer``, ``inspection``, ``delta``, ``parity``, ``entropy``, ``varint``. Result types (``Block``,
``LayerInfo``, ``PackStream``, ``DeltaReport``, ``LayerRecovery``, ``ParityLayer``) live in those modules.
"""

from __future__ import annotations

from reelpack.format.delta import apply_delta, make_delta
from reelpack.format.inspection import inspect
from reelpack.format.layout import FORMAT_MAJOR, FORMAT_MINOR, MAGIC, SectionType, crc32c
from reelpack.format.parity import read_parity, recover_layer
from reelpack.format.reader import PackReader, VerifyReport
from reelpack.format.stream import iter_blocks_stream
from reelpack.format.writer import PackWriter, write_pack

__all__ = [
    "MAGIC",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "SectionType",
    "crc32c",
    "PackReader",
    "PackWriter",
    "write_pack",
    "iter_blocks_stream",
    "inspect",
    "VerifyReport",
    "make_delta",
    "apply_delta",
    "read_parity",
    "recover_layer",
]
