"""Entropy-coded layers in packs: round trips, mixing with plain layers, sizes, damage and fuzz."""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packtools import exercise, reseal, sections, stream

from reelpack.codecs import make_codec
from reelpack.errors import InvalidInputError, PackFormatError
from reelpack.format import PackReader, PackWriter, inspect, iter_blocks_stream, write_pack
from reelpack.format.layout import LAYER_ENTROPY_CODED, SectionType, crc32c
from reelpack.format.entropy import fit_column_model

EXAMPLES = int(os.environ.get("REELPACK_FUZZ_EXAMPLES_ENTROPY", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def _data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_t(df=3, size=(n, d)).astype(np.float32)  # heavy tails: sq levels crowd the middle
    ids = rng.choice(10 * n, size=n, replace=False).astype(np.int64)
    return X, ids


def _pack(tmp_path, spec: str, layout: str, n: int = 300, d: int = 16, ipb: int = 64, name: str = "e.rpak"):
    X, ids = _data(n, d)
    codec = make_codec(spec).fit(X, seed=0)
    codes = codec.encode(X)
    path = write_pack(tmp_path / name, ids, [(codec, codes)], vectors=X, items_per_block=ipb, entropy=[layout])
    order = np.argsort(ids)
    return path, codes[order], ids[order], X[order], codec


@pytest.mark.parametrize("spec,layout", [("sq4", "nibbles"), ("sq8", "bytes")])
def test_round_trip(tmp_path, spec, layout):
    path, codes, ids, X, codec = _pack(tmp_path, spec, layout)
    with PackReader(path) as pack:
        assert pack.layers[0].entropy_coded and pack.verify().ok
        assert pack.entropy_model(0).layout == layout
        np.testing.assert_array_equal(pack.item_ids, ids)
        np.testing.assert_array_equal(pack.layer_codes(0), codes)
        data = pack.read_layer(0)
        np.testing.assert_array_equal(data.codes, codes)
        assert data.bad_blocks == [] and data.missing_item_ids.size == 0
        # block-level fetch, including the short last block; bounds still hold
        for k in (0, 2, pack.layers[0].n_blocks - 1):
            block = pack.block(0, k)
            assert block.intact
            np.testing.assert_array_equal(block.codes, codes[block.item_start : block.item_start + len(block.item_ids)])
            err = ((X[block.item_start : block.item_start + len(block.item_ids)].astype(np.float64)
                    - codec.decode(block.codes).astype(np.float64)) ** 2).sum(1)  # fmt: skip
            assert block.max_sq_error >= err.max()
    raw = path.read_bytes()
    for chunk in (1, 13, 4096, len(raw)):
        got = list(iter_blocks_stream(raw[i : i + chunk] for i in range(0, len(raw), chunk)))
        assert all(b.intact for b in got)
        np.testing.assert_array_equal(np.concatenate([b.codes for b in got]), codes)


def test_mixed_plain_and_entropy_layers(tmp_path):
    X, ids = _data(500, 16, seed=1)
    coarse = make_codec("sq4").fit(X, seed=0)
    fine = make_codec("sq8").fit(X, seed=0)
    c0, c1 = coarse.encode(X), fine.encode(X)
    path = write_pack(tmp_path / "m.rpak", ids, [(coarse, c0), (fine, c1)], vectors=X, items_per_block=100,
                      entropy=[None, "bytes"])  # fmt: skip
    order = np.argsort(ids)
    with PackReader(path) as pack:
        assert [layer.entropy_coded for layer in pack.layers] == [False, True]
        assert pack.entropy_model(0) is None
        view = pack.layer_codes(0)
        assert view.base is not None and not view.flags.owndata  # plain layer stays zero-copy
        np.testing.assert_array_equal(view, c0[order])
        np.testing.assert_array_equal(pack.layer_codes(1), c1[order])
        assert pack.verify().ok
    blocks = list(iter_blocks_stream([path.read_bytes()]))
    assert [b.layer for b in blocks] == [0] * 5 + [1] * 5
    np.testing.assert_array_equal(np.concatenate([b.codes for b in blocks if b.layer == 1]), c1[order])
    info = inspect(path)
    assert [la["entropy_layout"] for la in info["layers"]] == [None, "bytes"]
    assert info["layers"][1]["raw_codes_bytes"] == 500 * 16
    assert info["layers"][1]["codes_bytes"] < info["layers"][1]["raw_codes_bytes"]


def test_entropy_coded_sizes_smaller_than_raw(tmp_path):
    path_raw = write_pack(tmp_path / "raw.rpak", *_layers_skewed(), items_per_block=256)
    path_ent = write_pack(tmp_path / "ent.rpak", *_layers_skewed(), items_per_block=256, entropy=["nibbles"])
    raw_info, ent_info = inspect(path_raw), inspect(path_ent)
    assert ent_info["layers"][0]["codes_bytes"] < 0.85 * raw_info["layers"][0]["codes_bytes"]
    assert os.path.getsize(path_ent) < os.path.getsize(path_raw)
    assert ent_info["layers"][0]["entropy_layout"] == "nibbles"


def _layers_skewed():
    X, ids = _data(2000, 32, seed=2)
    codec = make_codec("sq4").fit(X, seed=0)
    return ids, [(codec, codec.encode(X))]


def test_writer_block_by_block_needs_model(tmp_path):
    X, ids = _data(100, 8)
    ids = np.sort(ids)
    codec = make_codec("sq4").fit(X, seed=0)
    codes = codec.encode(X)
    writer = PackWriter(tmp_path / "a.rpak", ids)
    writer.add_layer(codec, items_per_block=32, entropy="nibbles")
    with pytest.raises(InvalidInputError, match="entropy_model"):
        writer.write_block(0, codes[:32])
    assert not (tmp_path / "a.rpak").exists()
    model = fit_column_model(codes, "nibbles")
    with PackWriter(tmp_path / "b.rpak", ids) as writer:
        writer.add_layer(codec, items_per_block=32, entropy_model=model)
        for lo in range(0, 100, 32):
            writer.write_block(0, codes[lo : lo + 32])
    with PackReader(tmp_path / "b.rpak") as pack:
        np.testing.assert_array_equal(pack.layer_codes(0), codes)
        assert pack.entropy_model(0) == model or np.array_equal(pack.entropy_model(0).counts, model.counts)
    with pytest.raises(InvalidInputError):
        PackWriter(tmp_path / "c.rpak", ids).add_layer(codec, entropy="zstd")


def test_pack_smaller_than_one_byte_per_item(tmp_path):
    """Constant codes code to almost nothing: the pack may be shorter than n_items bytes and stays readable."""
    X = np.zeros((20000, 2), np.float32)
    X[0] = 1.0
    codec = make_codec("sq4").fit(X, seed=0)
    codes = codec.encode(X)
    path = write_pack(tmp_path / "c.rpak", np.arange(20000), [(codec, codes)], items_per_block=4096, entropy=["nibbles"])
    assert os.path.getsize(path) < 20000
    with PackReader(path) as pack:
        np.testing.assert_array_equal(pack.layer_codes(0), codes)
    assert all(b.intact for b in iter_blocks_stream([path.read_bytes()]))


# ---- damage ----------------------------------------------------------------------------------------
def _small_pack(tmp_path) -> bytes:
    X, ids = _data(40, 6, seed=3)
    codec = make_codec("sq4").fit(X, seed=0)
    path = write_pack(tmp_path / "s.rpak", ids, [(codec, codec.encode(X))], items_per_block=16, entropy=["nibbles"])
    return path.read_bytes()


def _exercise(raw: bytes) -> bool:
    """:func:`packtools.exercise`; a damaged entropy model may make ``inspect`` raise a reelpack error."""
    return exercise(raw, inspect_may_raise=True)


def test_every_bit_flip_in_small_entropy_pack_is_noticed(tmp_path):
    raw = _small_pack(tmp_path)
    assert not _exercise(raw)
    buf = bytearray(raw)
    missed = []
    for bit in range(8 * len(buf)):
        buf[bit // 8] ^= 1 << (bit % 8)
        flipped = bytes(buf)
        if not _exercise(flipped):
            missed.append(bit)
        stream(flipped, [bit // 8])
        buf[bit // 8] ^= 1 << (bit % 8)
    assert missed == []


def _resealed_block(raw: bytes, mutate, block: int = 0) -> bytes:
    """Mutate a layer-0 block's bytes and fix its CRC in the BLOCK_INDEX (and the index section's CRC)."""
    buf = bytearray(raw)
    entry = PackReader.from_buffer(raw)._dir.blocks[block]
    off, length = int(entry["offset"]), int(entry["length"])
    buf[off : off + length] = mutate(bytes(buf[off : off + length]))
    index = next(s for s in sections(buf) if s[0] == SectionType.BLOCK_INDEX)
    struct.pack_into("<I", buf, index[3] + 32 * block + 20, crc32c(bytes(buf[off : off + length])))
    return bytes(reseal(buf))


def test_block_with_good_crc_that_does_not_decode_is_bad(tmp_path):
    raw = _small_pack(tmp_path)
    damaged = _resealed_block(raw, lambda b: bytes([b[0] ^ 0x40]) + b[1:])
    pack = PackReader.from_buffer(damaged)
    block = pack.block(0, 0)
    assert not block.intact and "decode" in block.problem and block.codes is None
    report = pack.verify()
    assert [(layer, k) for layer, k, _ in report.bad_blocks] == [(0, 0)]
    data = pack.read_layer(0)
    assert data.bad_blocks == [0] and data.codes.shape == (24, 3)
    with pytest.raises(PackFormatError, match="decode"):
        pack.layer_codes(0)
    streamed = list(iter_blocks_stream([damaged]))
    assert [b.intact for b in streamed] == [False, True, True]


def test_missing_model_section_makes_layer_unusable(tmp_path):
    raw = bytearray(_small_pack(tmp_path))
    model = next(s for s in sections(raw) if s[0] == SectionType.ENTROPY_MODEL)
    raw[model[3] + 20] ^= 0xFF  # corrupt a count: the section CRC fails
    pack = PackReader.from_buffer(bytes(raw))
    assert all(not b.intact for b in pack.blocks(0))
    with pytest.raises(PackFormatError):
        pack.entropy_model(0)
    assert inspect(bytes(raw))["layers"][0]["entropy_layout"] == "unknown"


def test_old_reader_view_flag_and_optional_section(tmp_path):
    raw = _small_pack(tmp_path)
    table = sections(raw)
    model = [s for s in table if s[0] == SectionType.ENTROPY_MODEL]
    assert len(model) == 1 and model[0][1] == 0  # not REQUIRED: a 1.0 reader skips it
    layers = next(s for s in table if s[0] == SectionType.LAYERS)
    assert struct.unpack_from("<H", raw, layers[3] + 8 + 2)[0] == LAYER_ENTROPY_CODED
    assert PackReader.from_buffer(raw).version == (1, 0)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
       st.lists(st.integers(0, 10**6), max_size=3))  # fmt: skip
def test_fuzz_mutated_entropy_pack(edits, cuts):
    raw = bytearray(_FUZZ_PACK)
    for pos, value in edits:
        raw[pos % len(raw)] = value
    _exercise(bytes(raw))
    stream(bytes(raw), cuts)


@FUZZ
@given(st.integers(0, 2), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzz_mutated_blocks_with_valid_crcs(block, edits):
    """Blocks changed and re-sealed: the decoder (not the CRC) must catch it, or the block decodes to some codes."""

    def mutate(b: bytes) -> bytes:
        out = bytearray(b)
        for pos, value in edits:
            if out:
                out[pos % len(out)] = value
        return bytes(out)

    damaged = _resealed_block(_FUZZ_PACK, mutate, block)
    _exercise(damaged)
    stream(damaged, [])
    for b in PackReader.from_buffer(damaged).blocks(0):
        if b.intact:
            assert b.codes.shape == (len(b.item_ids), 3)


def _fuzz_pack() -> bytes:
    X, ids = _data(40, 6, seed=3)
    codec = make_codec("sq4").fit(X, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_pack(Path(tmp) / "f.rpak", ids, [(codec, codec.encode(X))], items_per_block=16, entropy=["nibbles"])
        return path.read_bytes()


_FUZZ_PACK = _fuzz_pack()
