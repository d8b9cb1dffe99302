"""The committed golden pack always loads, with the expected contents, and the writer still reproduces it."""

from __future__ import annotations

import struct

import numpy as np
from make_golden import GOLDEN, GOLDEN_IDS, GOLDEN_METADATA, GOLDEN_VECTORS, build

from reelpack.codecs import make_codec
from reelpack.format import MAGIC, PackReader, inspect


def test_golden_pack_loads_with_expected_contents():
    with PackReader(GOLDEN) as pack:
        assert pack.version == (1, 0)
        assert pack.n_items == 6 and pack.n_layers == 2
        np.testing.assert_array_equal(pack.item_ids, np.sort(GOLDEN_IDS))
        assert pack.metadata == GOLDEN_METADATA
        assert pack.verify().ok
        order = np.argsort(GOLDEN_IDS)
        for layer, spec in enumerate(("fp16", "sq8")):
            codec = pack.codec(layer)
            assert codec.spec == spec
            expected = make_codec(spec).fit(GOLDEN_VECTORS, seed=0).encode(GOLDEN_VECTORS)[order]
            np.testing.assert_array_equal(pack.layer_codes(layer), expected)
        # fp16 reconstructs these values exactly: its error bounds are 0
        assert [pack.block(0, k).max_sq_error for k in range(2)] == [0.0, 0.0]
        np.testing.assert_array_equal(pack.codec(0).decode(pack.layer_codes(0)), GOLDEN_VECTORS[order])


def test_golden_bytes_match_spec_offsets():
    raw = GOLDEN.read_bytes()
    assert raw[:8] == MAGIC == b"RPAK\r\n\x1a\n"
    major, minor, flags, file_length, n_items, table_offset, section_count = struct.unpack_from("<HHIQQQI", raw, 8)
    assert (major, minor, flags, file_length, n_items, table_offset) == (1, 0, 0, len(raw), 6, 64)
    # section 0 is ITEM_IDS, runs encoding: ids 3..7 (gap 3, run 5) and 100 (gap 92, run 1)
    s_type, s_flags, _crc, s_off, s_len = struct.unpack_from("<HHIQQ", raw, 64)
    assert (s_type, s_flags) == (1, 1)
    assert raw[s_off : s_off + s_len] == bytes([1]) + (6).to_bytes(8, "little") + bytes([3, 5, 92, 1])
    info = inspect(GOLDEN)
    assert [s["type_name"] for s in info["sections"]] == [
        "ITEM_IDS", "LAYERS", "CODEC", "CODEC", "METADATA", "BLOCK_INDEX", "LAYER_CODES", "LAYER_CODES"
    ]  # fmt: skip
    assert section_count == 8


def test_writer_reproduces_golden_bytes(tmp_path):
    out = tmp_path / "again.rpak"
    build(out)
    assert out.read_bytes() == GOLDEN.read_bytes()
