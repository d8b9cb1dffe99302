"""verify() and inspect() check every section: the CRC32C of PARITY and application sections (a delta's
DELTA_REMOVED / DELTA_BOUNDS), and the header structure of each CODEC (RPCS) section, without loading the codec."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from packtools import delta_pack, parity_pack, sections

from reelpack.codecs import make_codec
from reelpack.codecs.base import check_state, unpack_state
from reelpack.errors import ChecksumError, PackFormatError, SerializationError
from reelpack.format import PackReader, inspect, read_parity, write_pack
from reelpack.format.parity import recover_layer

PARITY, DELTA_REMOVED, DELTA_BOUNDS, CODEC = 8, 0xDE17, 0xDE18, 3


def _flip_in_section(raw: bytes, section_type: int, at: int = 0) -> bytes:
    s = next(s for s in sections(raw) if s[0] == section_type)
    buf = bytearray(raw)
    buf[s[3] + (at % s[4])] ^= 0x10
    return bytes(buf)


@pytest.mark.parametrize(("make", "section_type", "name"), [
    (parity_pack, PARITY, "PARITY"),
    (delta_pack, DELTA_REMOVED, "type 0xde17"),
    (delta_pack, DELTA_BOUNDS, "type 0xde18"),
])  # fmt: skip
@pytest.mark.parametrize("at", [0, 5, -1])
def test_verify_reports_a_flipped_bit_in_optional_sections(make, section_type, name, at):
    raw = make()
    assert PackReader.from_buffer(raw).verify().ok
    bad = _flip_in_section(raw, section_type, at)
    report = PackReader.from_buffer(bad).verify()
    assert not report.ok
    assert any(name in p and "CRC32C mismatch" in p for p in report.section_problems), report.section_problems
    problems = [s["problem"] for s in inspect(bad)["sections"] if s["type"] == section_type]
    assert problems and "CRC32C mismatch" in problems[0]


def test_corrupt_parity_block_is_reported_but_parity_stays_usable():
    raw = parity_pack()
    s = next(s for s in sections(raw) if s[0] == PARITY)
    bad = bytearray(raw)
    bad[s[3] + s[4] - 1] ^= 1  # inside the last parity block
    pack = PackReader.from_buffer(bytes(bad))
    assert not pack.verify().ok
    par = read_parity(pack)[0]  # the per-block CRCs still let a client use every intact parity block
    assert par.available.sum() == par.available.size - 1
    assert recover_layer(pack, 0).row_ok.all()


def _cli_verify(raw: bytes) -> int:
    from typer.testing import CliRunner

    from reelpack.cli import app

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.rpak"
        path.write_bytes(raw)
        return CliRunner().invoke(app, ["verify", str(path)]).exit_code


@pytest.mark.parametrize(("make", "section_type"), [(parity_pack, PARITY), (delta_pack, DELTA_REMOVED),
                                                    (delta_pack, DELTA_BOUNDS)])  # fmt: skip
def test_cli_verify_exits_1_on_a_flipped_bit_in_optional_sections(make, section_type):
    raw = make()
    assert _cli_verify(raw) == 0
    assert _cli_verify(_flip_in_section(raw, section_type)) == 1


# ---- CODEC (RPCS) section structure -------------------------------------------------------------
def _state_parts(state: bytes) -> tuple[int, dict, bytes]:
    version, header_len = struct.unpack_from("<HI", state, 4)
    return version, json.loads(state[10 : 10 + header_len]), state[10 + header_len :]


def _state(header: dict, payload: bytes, version: int = 1, header_len: int | None = None) -> bytes:
    text = json.dumps(header, sort_keys=True).encode()
    return b"RPCS" + struct.pack("<HI", version, len(text) if header_len is None else header_len) + text + payload


def _lie(name: str, good: bytes) -> bytes:
    """The codec state ``good`` with one lie ``name`` in its header."""
    version, header, payload = _state_parts(good)
    arr = header["arrays"][0]
    if name == "header_len_2^32-1":
        return _state(header, payload, header_len=2**32 - 1)
    if name == "header_len_past_end":
        return _state(header, payload, header_len=len(good))
    if name == "dim_2^40":
        header["dim"] = 2**40
    elif name == "dim_0":
        header["dim"] = 0
    elif name == "shape_2^40":
        arr["shape"] = [2**40]
    elif name == "shape_2^40_nbytes_consistent":
        arr["shape"] = [2**40]
        arr["nbytes"] = 2**40 * np.dtype(arr["dtype"]).itemsize
    elif name == "nbytes_2^62":
        arr["nbytes"] = 2**62
    elif name == "negative_offset":
        arr["offset"] = -4
    elif name == "offset_past_payload":
        arr["offset"] = len(payload)
    elif name == "object_dtype":
        arr["dtype"] = "|O"
    elif name == "big_endian_dtype":
        arr["dtype"] = ">f4"
    elif name == "missing_arrays":
        del header["arrays"]
    elif name == "missing_spec":
        del header["spec"]
    elif name == "array_missing_nbytes":
        del arr["nbytes"]
    elif name == "version_2":
        version = 2
    elif name == "magic":
        return b"RPCX" + good[4:]
    elif name == "overlap":
        header["arrays"].append(dict(arr, name="copy"))
    else:  # pragma: no cover
        raise AssertionError(name)
    return _state(header, payload, version=version)


LIES = ["header_len_2^32-1", "header_len_past_end", "dim_2^40", "dim_0", "shape_2^40", "shape_2^40_nbytes_consistent",
        "nbytes_2^62", "negative_offset", "offset_past_payload", "object_dtype", "big_endian_dtype", "missing_arrays",
        "missing_spec", "array_missing_nbytes", "version_2", "magic", "overlap"]  # fmt: skip


def _pack_with_codec_state(state: bytes) -> bytes:
    """A one-layer sq8 pack whose CODEC section holds ``state`` (with a valid CRC32C)."""
    X = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    codec = make_codec("sq8").fit(X, seed=0)
    codes = codec.encode(X)
    codec.to_bytes = lambda: state  # the writer stores whatever to_bytes() returns
    with tempfile.TemporaryDirectory() as tmp:
        path = write_pack(Path(tmp) / "lie.rpak", np.arange(12), [(codec, codes)], items_per_block=5)
        return path.read_bytes()


GOOD_STATE = make_codec("sq8").fit(np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32), seed=0).to_bytes()


def test_codec_state_helpers_round_trip():
    version, header, payload = _state_parts(GOOD_STATE)
    assert _state(header, payload, version) == GOOD_STATE
    assert check_state(GOOD_STATE)[:2] == ("sq8", 4)
    assert PackReader.from_buffer(_pack_with_codec_state(GOOD_STATE)).verify().ok


@pytest.mark.parametrize("lie", LIES)
def test_check_state_refuses_each_lie_without_loading(lie):
    state = _lie(lie, GOOD_STATE)
    with pytest.raises(SerializationError):
        check_state(state)
    with pytest.raises(SerializationError):
        unpack_state(state)  # same checks, same error type as before


@pytest.mark.parametrize("lie", LIES)
def test_verify_and_inspect_report_a_lying_codec_section(lie):
    raw = _pack_with_codec_state(_lie(lie, GOOD_STATE))
    pack = PackReader.from_buffer(raw)
    report = pack.verify()
    assert not report.ok
    assert any("CODEC section is invalid" in p for p in report.section_problems), report.section_problems
    assert report.bad_blocks and all("CODEC" in why for _, _, why in report.bad_blocks)  # the layer is unusable
    with pytest.raises(PackFormatError) as err:
        pack.codec(0)
    assert not isinstance(err.value, ChecksumError)  # a broken structure, not a checksum mismatch
    info = inspect(raw)
    codec_rows = [s for s in info["sections"] if s["type"] == CODEC]
    assert codec_rows[0]["problem"] and "invalid" in codec_rows[0]["problem"]
    assert info["layers"][0]["codec"] is None
    assert _cli_verify(raw) == 1
