"""Writer, memory-mapped reader, streaming reader and inspect: round trips, zero copy, atomicity, compatibility."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from packtools import get, put, reseal, sections, tiny_pack

from reelpack.codecs import make_codec
from reelpack.errors import (
    ChecksumError,
    DimensionMismatchError,
    DTypeError,
    EmptyInputError,
    InvalidInputError,
    PackFormatError,
    TruncatedPackError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)
from reelpack.format import PackReader, PackWriter, inspect, iter_blocks_stream, write_pack

N, D = 700, 16


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)).astype(np.float32)
    ids = rng.choice(10 * N, size=N, replace=False)  # unsorted, sparse
    return X, ids


@pytest.mark.parametrize("spec", ["fp16", "sq4", "pq8", "simhash64"])
def test_round_trip(tmp_path, data, spec):
    X, ids = data
    codec = make_codec(spec).fit(X, seed=0)
    codes = codec.encode(X)
    path = write_pack(tmp_path / "p.rpak", ids, [(codec, codes)], vectors=X, items_per_block=128)
    order = np.argsort(ids)
    with PackReader(path) as pack:
        assert pack.verify().ok
        np.testing.assert_array_equal(pack.item_ids, np.sort(ids))
        np.testing.assert_array_equal(pack.layer_codes(0), codes[order])
        loaded = pack.codec(0)
        assert loaded.spec == codec.spec
        q = X[:3]
        np.testing.assert_allclose(loaded.score(q, pack.layer_codes(0)), codec.score(q, codes[order]), rtol=1e-6)
        # per-block bounds hold the true max / mean squared reconstruction error of the block's items
        # (decoded block by block, as the writer does: a decode's float rounding may depend on the batch size)
        for block in pack.blocks(0):
            rows = order[block.item_start : block.item_start + len(block.item_ids)]
            e = ((X[rows] - codec.decode(codes[rows]).astype(np.float64)) ** 2).sum(1)
            assert block.max_sq_error >= e.max() and block.max_sq_error == pytest.approx(e.max(), rel=1e-6)
            assert block.mean_sq_error == pytest.approx(e.mean(), rel=1e-5)
            np.testing.assert_array_equal(block.item_ids, np.sort(ids)[block.item_start : block.item_start + 128])


def test_layer_codes_are_zero_copy_views_of_the_mapping(tmp_path, data):
    X, ids = data
    fine, coarse = make_codec("pq8").fit(X, seed=0), make_codec("simhash64").fit(X, seed=0)
    path = write_pack(tmp_path / "p.rpak", ids, [(coarse, coarse.encode(X)), (fine, fine.encode(X))], items_per_block=100)
    pack = PackReader(path)
    for layer in (0, 1):
        codes = pack.layer_codes(layer)
        assert codes.dtype == np.uint8 and codes.shape == (N, 8) and not codes.flags.owndata
        assert np.shares_memory(codes, pack._buf) and isinstance(pack._buf, np.memmap)
        base = codes
        while base.base is not None and not isinstance(base, np.memmap):
            base = base.base
        assert isinstance(base, np.memmap)
        block = pack.block(layer, 3)
        assert np.shares_memory(block.codes, codes)
        np.testing.assert_array_equal(block.codes, codes[300:400])
    assert pack.read_layer(1).codes.base is not None  # intact layer: read_layer is a view too
    # blocks without originals have unknown (NaN) bounds
    assert np.isnan(pack.block(0, 0).max_sq_error)


def test_streaming_writer_block_by_block(tmp_path, data):
    X, ids = data
    ids = np.sort(ids)
    codec = make_codec("sq8").fit(X, seed=0)
    codes = codec.encode(X)
    with PackWriter(tmp_path / "s.rpak", ids, metadata={"catalog_version": 7}) as writer:
        assert writer.add_layer(codec, items_per_block=256) == 0
        writer.add_layer(codec, items_per_block=500, corrections=np.arange(N, dtype=np.float32))
        for lo in range(0, N, 256):
            writer.write_block(0, codes[lo : lo + 256], sq_errors=np.full(min(256, N - lo), 2.0))
        writer.write_layer(1, codes)
    pack = PackReader(tmp_path / "s.rpak")
    assert pack.metadata == {"catalog_version": 7}
    assert [b.max_sq_error for b in pack.blocks(0)] == [2.0, 2.0, 2.0]
    np.testing.assert_array_equal(pack.layer_corrections(1)[:, 0], np.arange(N, dtype=np.float32))
    assert pack.layer_corrections(0) is None
    assert [layer.n_blocks for layer in pack.layers] == [3, 2]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_writer_rejects_bad_input(tmp_path, data):
    X, ids = data
    codec = make_codec("sq8").fit(X, seed=0)
    with pytest.raises(InvalidInputError, match="sorted unique"):
        PackWriter(tmp_path / "a.rpak", ids)
    with pytest.raises(InvalidInputError, match="unique"):
        write_pack(tmp_path / "a.rpak", np.array([1, 1]), [(codec, codec.encode(X[:2]))])
    with pytest.raises(InvalidInputError, match="non-negative"):
        write_pack(tmp_path / "a.rpak", np.array([-1, 1]), [(codec, codec.encode(X[:2]))])
    with pytest.raises(InvalidInputError, match=r"below 2\*\*63"):
        write_pack(tmp_path / "a.rpak", np.array([1, 2**63], np.uint64), [(codec, codec.encode(X[:2]))])
    with pytest.raises(DTypeError, match="integer"):
        write_pack(tmp_path / "a.rpak", np.array([1.0, 2.0]), [(codec, codec.encode(X[:2]))])
    with pytest.raises(EmptyInputError):
        PackWriter(tmp_path / "a.rpak", np.zeros(0, np.int64))
    with pytest.raises(DimensionMismatchError):
        write_pack(tmp_path / "a.rpak", ids, [(codec, codec.encode(X)[:, :3])])
    out_of_order = PackWriter(tmp_path / "a.rpak", np.sort(ids))
    out_of_order.add_layer(codec)
    out_of_order.add_layer(codec)
    with pytest.raises(InvalidInputError, match="expected a block of layer 0"):
        out_of_order.write_block(1, codec.encode(X[:1024]))
    with pytest.raises(InvalidInputError, match="already been committed or aborted"):
        out_of_order.commit()
    with pytest.raises(InvalidInputError, match="commit"):
        with PackWriter(tmp_path / "a.rpak", np.sort(ids)) as w:
            w.add_layer(codec)
    assert not list(tmp_path.iterdir())


class _Crash(RuntimeError):
    pass


def test_atomic_write_keeps_previous_pack_on_crash(tmp_path, data, monkeypatch):
    X, ids = data
    codec = make_codec("sq8").fit(X, seed=0)
    target = tmp_path / "pack.rpak"
    write_pack(target, ids, [(codec, codec.encode(X))])
    before = target.read_bytes()
    # crash between blocks
    with pytest.raises(_Crash):
        with PackWriter(target, np.sort(ids)) as writer:
            writer.add_layer(codec, items_per_block=100)
            writer.write_block(0, codec.encode(X[:100]))
            raise _Crash("power cut")
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["pack.rpak"]
    # a writer dropped without commit
    abandoned = PackWriter(target, np.sort(ids))
    assert len(os.listdir(tmp_path)) == 2
    del abandoned
    assert os.listdir(tmp_path) == ["pack.rpak"]
    # crash inside commit, after the temp file is complete, at fsync and at the rename
    for name in ("fsync", "replace"):
        with monkeypatch.context() as m:
            m.setattr(os, name, lambda *a, **k: (_ for _ in ()).throw(_Crash(name)))
            with pytest.raises(_Crash):
                write_pack(target, ids[:10], [(codec, codec.encode(X[:10]))])
        assert target.read_bytes() == before and os.listdir(tmp_path) == ["pack.rpak"]
    PackReader(target).verify()


def test_failed_folder_fsync_after_publishing_raises(tmp_path, data, monkeypatch):
    """The folder fsync (reelpack.util.atomic.fsync_dir) is not swallowed: the pack is in place, the error raised."""
    import reelpack.format.writer as writer_module

    X, ids = data
    codec = make_codec("sq8").fit(X, seed=0)
    calls = []

    def failing_fsync_dir(path):
        calls.append(path)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(writer_module, "fsync_dir", failing_fsync_dir)
    with pytest.raises(OSError, match="Input/output"):
        write_pack(tmp_path / "p.rpak", ids, [(codec, codec.encode(X))])
    assert calls == [tmp_path] and os.listdir(tmp_path) == ["p.rpak"]
    assert PackReader(tmp_path / "p.rpak").verify().ok


def test_public_namespace_is_small():
    import reelpack.format as fmt
    from reelpack.format.delta import build_pack as build_pack_in_delta

    assert len(fmt.__all__) <= 16 and all(hasattr(fmt, name) for name in fmt.__all__)
    assert not {"build_pack", "write_pack_with_parity", "PackStream", "Block"} & set(fmt.__all__)
    assert callable(build_pack_in_delta)
    for gone in ("build_pack", "write_pack_with_parity", "no_such_name"):
        with pytest.raises(AttributeError):
            getattr(fmt, gone)


def test_published_pack_gets_normal_permissions(tmp_path, data):
    X, ids = data
    codec = make_codec("fp16").fit(X, seed=0)
    umask = os.umask(0o022)
    try:
        path = write_pack(tmp_path / "new.rpak", ids, [(codec, codec.encode(X))])
        assert path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o640)
        write_pack(path, ids, [(codec, codec.encode(X))])  # replacing keeps the old pack's mode
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)


def test_unknown_major_version_rejected():
    buf = bytearray(tiny_pack())
    put(buf, "major", 2)
    with pytest.raises(UnsupportedVersionError, match=r"2\.0.*1\.0"):
        PackReader.from_buffer(bytes(reseal(buf)))


def test_higher_minor_version_accepted():
    buf = bytearray(tiny_pack())
    put(buf, "minor", 7)
    pack = PackReader.from_buffer(bytes(reseal(buf)))
    assert pack.version == (1, 7) and pack.verify().ok


def _pack_with_section(tmp_path, data, required: bool) -> bytes:
    X, ids = data
    codec = make_codec("fp16").fit(X, seed=0)
    with PackWriter(tmp_path / "u.rpak", np.sort(ids)) as writer:
        writer.add_layer(codec)
        writer.add_section(0x8123, b"future stuff", required=required)
        writer.write_layer(0, codec.encode(X[np.argsort(ids)]))
    return (tmp_path / "u.rpak").read_bytes()


def test_unknown_optional_section_skipped(tmp_path, data):
    raw = _pack_with_section(tmp_path, data, required=False)
    pack = PackReader.from_buffer(raw)
    assert pack.verify().ok
    info = inspect(raw)
    assert [s["skipped"] for s in info["sections"] if s["type"] == 0x8123] == [True]
    assert len(list(iter_blocks_stream([raw]))) == 1


def test_unknown_required_section_rejected(tmp_path, data):
    raw = _pack_with_section(tmp_path, data, required=True)
    with pytest.raises(UnsupportedFeatureError, match="0x8123|33059"):
        PackReader.from_buffer(raw)


def test_entropy_coded_layer_reported_not_decoded():
    buf = bytearray(tiny_pack())
    layers_section = sections(buf)[1]
    assert layers_section[0] == 2
    struct.pack_into("<H", buf, layers_section[3] + 8 + 48 + 2, 1)  # layer 1 flags: entropy coded
    pack = PackReader.from_buffer(bytes(reseal(buf)))
    assert pack.layers[1].entropy_coded
    with pytest.raises(PackFormatError, match="ENTROPY_MODEL"):  # flagged, but no model section
        pack.layer_codes(1)
    report = pack.verify()
    assert {layer for layer, _, _ in report.bad_blocks} == {1}
    assert pack.layer_codes(0).shape == (10, 4)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000, 10**6])
def test_stream_yields_blocks_as_they_complete(chunk):
    raw = tiny_pack(n=50, items_per_block=8)
    pack = PackReader.from_buffer(raw)
    consumed = []

    def chunks():
        for i in range(0, len(raw), chunk):
            consumed.append(min(len(raw), i + chunk))
            yield raw[i : i + chunk]

    stream = iter_blocks_stream(chunks())
    for block in stream:
        assert block.intact
        entry_end = pack._dir.blocks[pack._dir.block_start[block.layer] + block.index]
        assert consumed[-1] < entry_end["offset"] + entry_end["length"] + chunk  # yielded as soon as complete
        np.testing.assert_array_equal(block.codes, pack.block(block.layer, block.index).codes)
        np.testing.assert_array_equal(block.item_ids, pack.block(block.layer, block.index).item_ids)
    assert stream.codec(1).spec == "fp16"
    np.testing.assert_array_equal(stream.item_ids, pack.item_ids)


def test_stream_truncated_and_corrupt_blocks_reported():
    raw = bytearray(tiny_pack(n=50, items_per_block=8))
    pack = PackReader.from_buffer(bytes(raw))
    entry = pack._dir.blocks[2]  # layer 0, block 2
    raw[int(entry["offset"]) + 1] ^= 0x10
    blocks = list(iter_blocks_stream([bytes(raw[:-20])]))
    bad = [(b.layer, b.index, b.problem) for b in blocks if not b.intact]
    assert (0, 2, "block CRC32C mismatch") in bad and bad[-1][2] == "block is truncated"
    assert len(blocks) == sum(layer.n_blocks for layer in pack.layers)
    with pytest.raises(TruncatedPackError):
        list(iter_blocks_stream([bytes(raw[:100])]))
    with pytest.raises(PackFormatError, match="more than"):
        list(iter_blocks_stream([bytes(raw), b"x"]))


def test_truncated_file_returns_intact_blocks_and_missing_ids(tmp_path):
    raw = tiny_pack(n=50, items_per_block=8)
    full = PackReader.from_buffer(raw)
    last = full._dir.blocks[-1]
    cut = int(last["offset"]) - 8 * 4 - 3  # mid-way into layer 1's second-to-last block
    (tmp_path / "t.rpak").write_bytes(raw[:cut])
    pack = PackReader(tmp_path / "t.rpak")
    report = pack.verify()
    assert report.truncated and not report.ok
    assert report.missing_item_ids[0].size == 0
    np.testing.assert_array_equal(report.missing_item_ids[1], full.item_ids[40:])
    part = pack.read_layer(1)
    np.testing.assert_array_equal(part.item_ids, full.item_ids[:40])
    np.testing.assert_array_equal(part.codes, full.layer_codes(1)[:40])
    np.testing.assert_array_equal(part.missing_item_ids, full.item_ids[40:])
    with pytest.raises(ChecksumError, match="read_layer"):
        pack.layer_codes(1)
    np.testing.assert_array_equal(pack.layer_codes(0), full.layer_codes(0))


def test_corrupt_metadata_and_codec_are_reported_not_raised():
    raw = bytearray(tiny_pack(metadata={"a": 1}))
    table = sections(raw)
    meta = next(s for s in table if s[0] == 7)
    codec1 = [s for s in table if s[0] == 3][1]
    raw[meta[3]] ^= 1
    raw[codec1[3] + 5] ^= 1
    pack = PackReader.from_buffer(bytes(raw))
    report = pack.verify()
    assert pack.metadata is None and len(report.section_problems) == 2
    assert {layer for layer, _, _ in report.bad_blocks} == {1}
    with pytest.raises(ChecksumError):
        pack.codec(1)
    assert pack.codec(0).spec == "sq8"


def test_trailing_bytes_and_bad_magic_rejected():
    raw = tiny_pack()
    with pytest.raises(PackFormatError, match="trailing"):
        PackReader.from_buffer(raw + b"\0")
    with pytest.raises(PackFormatError, match="magic"):
        PackReader.from_buffer(b"RPAX" + raw[4:])
    with pytest.raises(TruncatedPackError):
        PackReader.from_buffer(raw[:40])
    with pytest.raises(ChecksumError, match="header"):
        PackReader.from_buffer(raw[:20] + bytes([raw[20] ^ 1]) + raw[21:])


def test_inspect_reports_sizes_and_bounds(tmp_path, data):
    X, ids = data
    codec = make_codec("pq8").fit(X, seed=0)
    path = write_pack(tmp_path / "p.rpak", ids, [(codec, codec.encode(X))], vectors=X, metadata={"v": "1"})
    info = inspect(path)
    assert info["header"]["n_items"] == N and info["header"]["major"] == 1
    assert info["file_bytes"] == path.stat().st_size == info["payload_bytes"] + info["overhead_bytes"]
    (layer,) = info["layers"]
    assert layer["codec"] == "pq8" and layer["bytes_per_item"] == 8.0 and layer["max_sq_error"] > 0
    assert info["metadata"] == {"v": "1"}
    assert get(path.read_bytes(), "prefix_length") == info["header"]["prefix_length"]


def test_docstring_examples():
    import doctest

    from reelpack.format import inspection, layout, reader, stream, writer

    for module in (layout, reader, stream, writer, inspection):
        assert doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0, module.__name__


def test_non_streamable_pack_rejected_by_stream_but_read_from_file():
    """A pack whose codes precede a directory section (legal, not streamable): swap the last two sections."""
    raw = bytearray(tiny_pack(metadata={"m": 1}))
    pack = PackReader.from_buffer(bytes(raw))
    table = sections(raw)
    codes1 = table[-1]  # layer 1's LAYER_CODES, the last section
    meta_i = next(i for i, s in enumerate(table) if s[0] == 7)
    meta = table[meta_i]
    # rebuild: move METADATA to the end of the file, shift everything after it back
    body_meta = bytes(raw[meta[3] : meta[3] + meta[4]])
    rest = bytes(raw[meta[3] + meta[4] :])
    new = bytearray(raw[: meta[3]]) + rest + body_meta
    shift = meta[4]
    t0 = get(raw, "table_offset")
    for i, (t, f, c, off, length) in enumerate(table):
        if off > meta[3]:
            off -= shift
        if i == meta_i:
            off = len(new) - meta[4]
        struct.pack_into("<HHIQQ", new, t0 + 24 * i, t, f, c, off, length)
    layers = table[1]
    for j in range(2):  # first_block_offset in each LAYERS entry
        base = layers[3] - shift * (layers[3] > meta[3]) + 8 + 48 * j
        struct.pack_into("<Q", new, base + 32, struct.unpack_from("<Q", new, base + 32)[0] - shift)
    index = next(s for s in table if s[0] == 5)
    index_off = index[3] - shift * (index[3] > meta[3])
    for j in range(index[4] // 32):
        struct.pack_into("<Q", new, index_off + 32 * j + 8, struct.unpack_from("<Q", new, index_off + 32 * j + 8)[0] - shift)
    put(new, "prefix_length", len(new))
    moved = PackReader.from_buffer(bytes(reseal(new)))
    assert moved.verify().ok and moved.metadata == {"m": 1}
    np.testing.assert_array_equal(moved.layer_codes(1), pack.layer_codes(1))
    assert codes1[0] == 4
    with pytest.raises(PackFormatError, match="not streamable"):
        list(iter_blocks_stream([bytes(new)]))
