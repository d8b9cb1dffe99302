"""PARITY section: Reed-Solomon parity over interleaved block groups, recovery and CRC checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from reelpack.codecs import make_codec
from reelpack.errors import ChecksumError, DimensionMismatchError, DTypeError, InvalidInputError, PackFormatError, ReelpackError
from reelpack.format import PackReader, SectionType, inspect, write_pack
from reelpack.format.parity import (
    encode_parity,
    parity_groups,
    parse_parity,
    read_parity,
    recover_layer,
)


def _sizes(path):
    """``{"path", "parity_bytes", "codes_bytes", "overhead"}`` of a written pack, from :func:`inspect`."""
    desc = inspect(path)
    parity_bytes = sum(s["length"] for s in desc["sections"] if s["type"] == SectionType.PARITY)
    codes_bytes = sum(layer["raw_codes_bytes"] for layer in desc["layers"])
    return {"path": path, "parity_bytes": parity_bytes, "codes_bytes": codes_bytes, "overhead": parity_bytes / codes_bytes}


def _pack(tmp_path, n=230, ipb=10, k=5, m=2, name="p.rpak"):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    codec = make_codec("sq8").fit(X)
    ids = np.arange(n) * 7 + 3
    path = write_pack(tmp_path / name, ids, [(codec, codec.encode(X))], parity=(k, m), items_per_block=ipb)
    return _sizes(path), codec.encode(X), X


def test_groups_are_interleaved_and_cover_every_block():
    groups = parity_groups(23, 5)
    assert len(groups) == 5
    assert sorted(np.concatenate(groups).tolist()) == list(range(23))
    assert all(g.size <= 5 for g in groups)
    assert groups[0].tolist() == [0, 5, 10, 15, 20]


def test_pack_with_parity_reads_like_a_plain_pack(tmp_path):
    info, codes, _ = _pack(tmp_path)
    assert 0 < info["overhead"] < 0.6
    with PackReader(info["path"]) as r:
        assert r.verify().ok
        np.testing.assert_array_equal(r.layer_codes(0), codes)
        par = read_parity(r)
        assert set(par) == {0} and par[0].k == 5 and par[0].m == 2 and par[0].available.all()


def test_overhead_about_ten_percent(tmp_path):
    info, _, _ = _pack(tmp_path, n=2000, ipb=10, k=10, m=1)
    assert 0.09 < info["overhead"] < 0.12


@pytest.mark.parametrize("k,m", [(4, 1), (4, 2), (3, 3)])
def test_every_pattern_of_at_most_m_lost_blocks_is_recovered(tmp_path, k, m):
    n, ipb = 95, 8  # 12 blocks, last one short; groups of k with virtual padding
    info, codes, _ = _pack(tmp_path, n=n, ipb=ipb, k=k, m=m)
    with PackReader(info["path"]) as r:
        nb = r.layers[0].n_blocks
        groups = parity_groups(nb, k)
        n_par = len(groups) * m
        for g, members in enumerate(groups):
            slots = [("d", int(b)) for b in members] + [("p", g * m + j) for j in range(m)]
            for lost_count in range(1, m + 1):
                for combo in itertools.combinations(slots, lost_count):
                    lost = np.zeros(nb, bool)
                    lost_p = np.zeros(n_par, bool)
                    for kind, i in combo:
                        (lost if kind == "d" else lost_p)[i] = True
                    rec = recover_layer(r, 0, lost=lost, lost_parity=lost_p)
                    assert rec.row_ok.all() and rec.unrecoverable_blocks == [] and rec.missing_item_ids.size == 0
                    assert sorted(rec.recovered_blocks) == sorted(np.flatnonzero(lost).tolist())
                    np.testing.assert_array_equal(rec.codes, codes)


def test_more_than_m_lost_in_a_group_is_reported(tmp_path):
    info, codes, _ = _pack(tmp_path, n=230, ipb=10, k=5, m=2)
    with PackReader(info["path"]) as r:
        nb = r.layers[0].n_blocks
        g0 = parity_groups(nb, 5)[0]
        lost = np.zeros(nb, bool)
        lost[g0[:3]] = True
        lost[parity_groups(nb, 5)[1][0]] = True  # another group, recoverable
        rec = recover_layer(r, 0, lost=lost)
        assert rec.failed_groups == [0]
        assert rec.unrecoverable_blocks == sorted(g0[:3].tolist())
        assert rec.recovered_blocks == [int(parity_groups(nb, 5)[1][0])]
        ipb = 10
        expected_missing = np.concatenate([r.item_ids[b * ipb : (b + 1) * ipb] for b in sorted(g0[:3])])
        np.testing.assert_array_equal(rec.missing_item_ids, expected_missing)
        ok = rec.row_ok
        np.testing.assert_array_equal(rec.codes[ok], codes[ok])
        # without parity nothing is recovered
        rec0 = recover_layer(r, 0, lost=lost, use_parity=False)
        assert rec0.recovered_blocks == [] and len(rec0.unrecoverable_blocks) == 4


def test_real_corruption_and_truncation_are_recovered(tmp_path):
    info, codes, _ = _pack(tmp_path, n=230, ipb=10, k=5, m=2)
    data = bytearray(info["path"].read_bytes())
    with PackReader(info["path"]) as r:
        entry = r._dir.blocks[3]
        off = int(entry["offset"])
    data[off + 4] ^= 0x40
    r = PackReader.from_buffer(bytes(data))
    assert r.verify().bad_blocks[0][:2] == (0, 3)
    rec = recover_layer(r, 0)
    assert rec.recovered_blocks == [3] and rec.row_ok.all()
    np.testing.assert_array_equal(rec.codes, codes)
    # truncation: the last block (and part of the one before) are gone
    r2 = PackReader.from_buffer(bytes(data[: len(data) - 25]))
    rec2 = recover_layer(r2, 0)
    assert rec2.row_ok.all() and set(rec2.recovered_blocks) >= {22}
    np.testing.assert_array_equal(rec2.codes, codes)


def test_parity_block_crc_catches_corrupt_parity(tmp_path):
    info, codes, _ = _pack(tmp_path, n=230, ipb=10, k=5, m=1)
    data = bytearray(info["path"].read_bytes())
    with PackReader(info["path"]) as r:
        s = [s for s in r._dir.sections if s.type == SectionType.PARITY][0]
        par = read_parity(r)[0]
        nb = r.layers[0].n_blocks
    # flip a byte inside parity block of group 0 (the last bytes of the section hold the last group's block)
    data_start = s.offset + s.length - par.nbytes
    data[data_start + 2] ^= 0x01
    r = PackReader.from_buffer(bytes(data))
    # verify() checks the PARITY section's CRC32C like every other section's and reports the damage ...
    assert [p for p in r.verify().section_problems if "PARITY" in p and "CRC32C mismatch" in p]
    # ... and the per-parity-block CRCs still tell which parity block is damaged
    p = read_parity(r)[0]
    assert not p.available[0, 0] and p.available.sum() == p.available.size - 1
    lost = np.zeros(nb, bool)
    lost[0] = True  # group 0 lost a data block, and its only parity block is corrupt
    lost[1] = True  # group 1 is fine
    rec = recover_layer(r, 0, lost=lost)
    assert rec.failed_groups == [0] and rec.unrecoverable_blocks == [0] and rec.recovered_blocks == [1]
    assert any("parity" in msg for msg in rec.parity_problems)


def test_corrupt_parity_records_are_reported_not_raised(tmp_path):
    info, _, _ = _pack(tmp_path)
    data = bytearray(info["path"].read_bytes())
    with PackReader(info["path"]) as r:
        s = [s for s in r._dir.sections if s.type == SectionType.PARITY][0]
        nb = r.layers[0].n_blocks
    data[s.offset + 10] ^= 0x01  # inside the layer record
    r = PackReader.from_buffer(bytes(data))
    with pytest.raises(ChecksumError):
        read_parity(r)
    lost = np.zeros(nb, bool)
    lost[0] = True
    rec = recover_layer(r, 0, lost=lost)
    assert rec.unrecoverable_blocks == [0] and any("PARITY" in m for m in rec.parity_problems)


def test_pack_without_parity(tmp_path):
    X = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    codec = make_codec("sq8").fit(X)
    path = write_pack(tmp_path / "a.rpak", np.arange(50), [(codec, codec.encode(X))], items_per_block=10)
    with PackReader(path) as r:
        assert read_parity(r) == {}
        lost = np.zeros(5, bool)
        lost[2] = True
        rec = recover_layer(r, 0, lost=lost)
        assert rec.unrecoverable_blocks == [2] and rec.missing_item_ids.tolist() == list(range(20, 30))


def test_parse_parity_rejects_garbage():
    for body in [b"", b"\x00" * 7, b"\x00" * 8, b"\x05\x00\x00\x00" + b"\x00" * 40]:
        with pytest.raises(PackFormatError):
            parse_parity(body)


def test_bad_inputs_raise_reelpack_errors(tmp_path):
    codes = np.zeros((20, 4), np.uint8)
    with pytest.raises(InvalidInputError):
        encode_parity([])
    with pytest.raises(InvalidInputError):
        encode_parity([(0, codes, 5, 0, 1)])
    with pytest.raises(InvalidInputError):
        encode_parity([(0, codes, 5, 250, 10)])
    with pytest.raises(DTypeError):
        encode_parity([(0, codes.astype(np.int16), 5, 2, 1)])
    with pytest.raises(DimensionMismatchError):
        encode_parity([(0, codes[0], 5, 2, 1)])
    info, _, _ = _pack(tmp_path)
    with PackReader(info["path"]) as r:
        with pytest.raises(DimensionMismatchError):
            recover_layer(r, 0, lost=np.zeros(3, bool))
        with pytest.raises(DTypeError):
            recover_layer(r, 0, lost=np.zeros(r.layers[0].n_blocks, np.int8))
        with pytest.raises(InvalidInputError):
            recover_layer(r, 5)
    with pytest.raises(InvalidInputError):
        recover_layer("not a reader", 0)
    X = np.zeros((20, 4), np.float32) + np.arange(4)
    codec = make_codec("sq8").fit(X)
    layers = [(codec, codec.encode(X))]
    with pytest.raises(InvalidInputError, match="k >= 1"):
        write_pack(tmp_path / "x.rpak", np.arange(20), layers, parity=(0, 1))
    with pytest.raises(InvalidInputError, match="names layer 3"):
        write_pack(tmp_path / "x.rpak", np.arange(20), layers, parity={3: (2, 1)})
    with pytest.raises(InvalidInputError, match="unique"):
        write_pack(tmp_path / "x.rpak", np.zeros(20, np.int64), layers, parity=(2, 1))
    with pytest.raises(InvalidInputError, match=r"\(k, m\)"):
        write_pack(tmp_path / "x.rpak", np.arange(20), layers, parity=3)
    with pytest.raises(InvalidInputError, match="entropy coded"):
        write_pack(tmp_path / "x.rpak", np.arange(20), layers, parity=(2, 1), entropy=["bytes"])
    with pytest.raises(InvalidInputError, match="2 values for 1 layers"):
        write_pack(tmp_path / "x.rpak", np.arange(20), layers, parity=(2, 1), items_per_block=[5, 5])
    with pytest.raises(ReelpackError):
        write_pack(tmp_path / "x.rpak", np.arange(20), layers, parity=(0, 1))
    assert not list(tmp_path.glob("x.rpak*")) and not list(tmp_path.glob(".x.rpak*"))


def test_parity_on_some_layers(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    c0, c1 = make_codec("simhash32").fit(X), make_codec("sq8").fit(X)
    layers = [(c0, c0.encode(X)), (c1, c1.encode(X))]
    ids = rng.permutation(300) * 3
    new = write_pack(tmp_path / "new.rpak", ids, layers, vectors=X, parity={1: (4, 1)}, items_per_block=[40, 10])
    assert _sizes(new)["parity_bytes"] > 0
    with PackReader(new) as r:
        assert set(read_parity(r)) == {1} and [info.items_per_block for info in r.layers] == [40, 10]
    plain = write_pack(tmp_path / "plain.rpak", ids, layers, parity={})
    assert _sizes(plain)["parity_bytes"] == 0


def test_other_readers_skip_the_parity_section(tmp_path):
    from reelpack.format import iter_blocks_stream

    info, codes, _ = _pack(tmp_path)
    data = info["path"].read_bytes()
    desc = inspect(info["path"])
    assert desc is not None
    stream = iter_blocks_stream(data[i : i + 100] for i in range(0, len(data), 100))
    blocks = list(stream)
    assert all(b.intact for b in blocks)
    np.testing.assert_array_equal(np.concatenate([b.codes for b in blocks]), codes)
