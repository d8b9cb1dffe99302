"""Helpers for the format tests: tiny packs and a spec-driven CRC re-sealer (offsets from docs/FORMAT.md)."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import crc32c
import numpy as np

from reelpack.codecs import make_codec
from reelpack.errors import ReelpackError
from reelpack.format import PackReader, inspect, iter_blocks_stream, write_pack

HEADER_FIELDS = {  # name: (offset, struct format), docs/FORMAT.md "Header"
    "major": (8, "<H"),
    "minor": (10, "<H"),
    "flags": (12, "<I"),
    "file_length": (16, "<Q"),
    "n_items": (24, "<Q"),
    "table_offset": (32, "<Q"),
    "section_count": (40, "<I"),
    "table_crc": (44, "<I"),
    "prefix_length": (48, "<Q"),
    "header_crc": (60, "<I"),
}
LAYER_CODES = 4


def tiny_pack(n: int = 10, d: int = 4, items_per_block: int = 4, metadata: dict | None = None, seed: int = 0) -> bytes:
    """A small two-layer pack (sq8 then fp16) as bytes; ids are sparse so ITEM_IDS uses deltas."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    ids = np.arange(n) * 7 + 3
    layers = []
    for spec in ("sq8", "fp16"):
        codec = make_codec(spec).fit(X, seed=0)
        layers.append((codec, codec.encode(X)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.rpak"
        write_pack(path, ids, layers, vectors=X, metadata=metadata, items_per_block=items_per_block)
        return path.read_bytes()


def parity_pack(n: int = 10, d: int = 4, items_per_block: int = 3, seed: int = 0) -> bytes:
    """A small one-layer sq8 pack with a PARITY section (k=2, m=1) as bytes."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    codec = make_codec("sq8").fit(X, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "parity.rpak"
        write_pack(path, np.arange(n) * 7 + 3, [(codec, codec.encode(X))], vectors=X, parity=(2, 1),
                   items_per_block=items_per_block)  # fmt: skip
        return path.read_bytes()


def delta_pack(n: int = 10, d: int = 4, seed: int = 0) -> bytes:
    """A small delta (one sq8 layer; one id removed, one added) with DELTA_REMOVED and DELTA_BOUNDS sections."""
    from reelpack.format import make_delta
    from reelpack.format.delta import build_pack

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    ids = np.arange(n) * 7 + 3
    codec = make_codec("sq8").fit(X, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "a.rpak"
        build_pack(base, ids, X, [codec], metadata={"v": "A"}, items_per_block=4)
        ids_b = np.concatenate([ids[1:], [1000]])
        X_b = np.concatenate([X[1:], X[:1] + 0.5])
        make_delta(base, ids_b, X_b, Path(tmp) / "d.rpak", metadata={"v": "B"})
        return (Path(tmp) / "d.rpak").read_bytes()


def get(buf: bytes | bytearray, name: str) -> int:
    off, fmt = HEADER_FIELDS[name]
    return struct.unpack_from(fmt, buf, off)[0]


def put(buf: bytearray, name: str, value: int) -> None:
    off, fmt = HEADER_FIELDS[name]
    struct.pack_into(fmt, buf, off, value)


def sections(buf: bytes | bytearray) -> list[list[int]]:
    """Section table entries as [type, flags, crc, offset, length]."""
    off, count = get(buf, "table_offset"), get(buf, "section_count")
    return [list(struct.unpack_from("<HHIQQ", buf, off + 24 * i)) for i in range(count)]


def reseal(buf: bytearray, directory: bool = True) -> bytearray:
    """Recompute the directory sections' CRCs (if ``directory``), the table CRC and the header CRC in place.

    Tolerates nonsense offsets: a section whose range lies outside the buffer keeps its CRC.
    """
    off, count = get(buf, "table_offset"), get(buf, "section_count")
    if count <= 4096 and off + 24 * count <= len(buf):
        if directory:
            for i, (t, _f, _c, s_off, s_len) in enumerate(sections(buf)):
                if t != LAYER_CODES and s_off + s_len <= len(buf):
                    struct.pack_into("<I", buf, off + 24 * i + 4, crc32c.crc32c(bytes(buf[s_off : s_off + s_len])))
        put(buf, "table_crc", crc32c.crc32c(bytes(buf[off : off + 24 * count])))
    put(buf, "header_crc", crc32c.crc32c(bytes(buf[:60])))
    return buf


def stream(raw: bytes, cuts: list[int]) -> None:
    """Run the streaming reader over ``raw`` cut at ``cuts``; only reelpack errors may escape."""
    bounds = [0, *sorted(c % (len(raw) + 1) for c in cuts), len(raw)]
    try:
        for block in iter_blocks_stream(raw[a:b] for a, b in zip(bounds, bounds[1:])):
            assert block.intact == (block.codes is not None)
    except ReelpackError:
        pass


def exercise(raw: bytes, inspect_may_raise: bool = False) -> bool:
    """Use every reader entry point on ``raw``; return True if the damage was noticed.

    Noticed = a reelpack error was raised while opening, or verify() reports a problem.
    Any other exception propagates and fails the test; so does a reelpack error from
    ``inspect`` of a pack that opened, unless ``inspect_may_raise``.
    """
    try:
        pack = PackReader.from_buffer(raw)
    except ReelpackError:
        return True
    report = pack.verify()
    _ = pack.item_ids, pack.metadata, pack.layers
    for layer in range(pack.n_layers):
        pack.read_layer(layer)
        for use in (pack.codec, pack.layer_codes, pack.layer_corrections, pack.entropy_model):
            try:
                use(layer)
            except ReelpackError:
                pass
        for block in pack.blocks(layer):
            assert block.intact == (block.codes is not None)
    try:
        inspect(raw)
    except ReelpackError:
        if not inspect_may_raise:
            raise
    return not report.ok
