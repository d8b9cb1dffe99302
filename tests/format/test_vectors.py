"""The committed golden test vectors (tests/format/vectors/, written by make_vectors.py) decode to their expected
ids, codes and parity records with PackReader; nothing is regenerated here."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from make_vectors import NAMES, VECTORS, load

from reelpack.format import PackReader, apply_delta, read_parity
from reelpack.format.parity import recover_layer

MAX_VECTOR_BYTES = 4096


def test_every_vector_is_committed_and_tiny():
    for name in NAMES:
        assert (VECTORS / f"{name}.hex").is_file() and (VECTORS / f"{name}.json").is_file(), name
        raw, expected = load(name)
        assert len(raw) == expected["length"] <= MAX_VECTOR_BYTES
        assert hashlib.sha256(raw).hexdigest() == expected["sha256"]


@pytest.mark.parametrize("name", NAMES)
def test_vector_decodes_to_expected_values(name):
    raw, expected = load(name)
    pack = PackReader.from_buffer(raw)
    assert pack.version == (1, 0)
    assert pack.verify().ok
    assert pack.n_items == expected["n_items"] == len(expected["item_ids"])
    assert pack.item_ids.tolist() == expected["item_ids"]
    assert pack.metadata == expected["metadata"]
    assert pack.n_layers == len(expected["layers"])
    for i, (info, lay) in enumerate(zip(pack.layers, expected["layers"])):
        codec = pack.codec(i)
        assert (codec.spec, codec.dim) == (lay["codec"], lay["dim"])
        assert (info.bytes_per_vector, info.items_per_block, info.n_blocks) == (
            lay["bytes_per_vector"], lay["items_per_block"], lay["n_blocks"])  # fmt: skip
        assert info.entropy_coded == lay["entropy_coded"]
        model = pack.entropy_model(i)
        assert (model.layout if model is not None else None) == lay["entropy_layout"]
        codes = np.asarray(pack.layer_codes(i))
        assert [bytes(row).hex() for row in codes] == lay["codes"]
        # block by block too (what a streaming or range-request client does)
        rows = np.concatenate([b.codes for b in pack.blocks(i)])
        np.testing.assert_array_equal(rows, codes)


def test_vectors_cover_the_features():
    kinds = {name: load(name)[1] for name in NAMES}
    assert kinds["sq4_entropy"]["layers"][0]["entropy_coded"]
    assert kinds["sq4_entropy"]["layers"][0]["entropy_layout"] == "nibbles"
    assert len(kinds["pq_two_layers_parity"]["layers"]) == 2 and len(kinds["pq_two_layers_parity"]["parity"]) == 2
    assert "delta" in kinds["delta_sq8"]


def test_parity_vector_records_and_recovery():
    raw, expected = load("pq_two_layers_parity")
    pack = PackReader.from_buffer(raw)
    records = read_parity(pack)
    got = [{"layer": p.layer, "k": p.k, "m": p.m, "n_groups": p.n_groups, "block_length": p.block_length}
           for p in records.values()]  # fmt: skip
    assert got == expected["parity"]
    for layer, lay in enumerate(expected["layers"]):
        lost = np.zeros(lay["n_blocks"], bool)
        lost[0] = True
        rec = recover_layer(pack, layer, lost=lost)
        assert rec.recovered_blocks == [0] and rec.row_ok.all()
        assert [bytes(row).hex() for row in rec.codes] == lay["codes"]


def test_delta_vector_applies_to_its_base(tmp_path):
    raw, expected = load("delta_sq8")
    delta = expected["delta"]
    base_raw, base_expected = load(delta["base"])
    assert expected["metadata"]["reelpack_delta"]["base_sha256"] == base_expected["sha256"]
    (tmp_path / "base.rpak").write_bytes(base_raw)
    (tmp_path / "delta.rpak").write_bytes(raw)
    out = apply_delta(tmp_path / "base.rpak", tmp_path / "delta.rpak", tmp_path / "target.rpak")
    target = out.read_bytes()
    assert len(target) == delta["target_length"]
    assert hashlib.sha256(target).hexdigest() == delta["target_sha256"]
    assert PackReader(out).item_ids.tolist() == delta["target_item_ids"]
