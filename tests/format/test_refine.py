"""The refinement frame (reelpack.format.refine): golden bytes, round trip, and every corruption -> a typed error.

Every truncation and every single-bit flip of a small frame raises PackFormatError (a CRC mismatch its subclass
ChecksumError); hypothesis feeds random bytes and re-sealed frames with lying header fields.
"""

from __future__ import annotations

import struct

import crc32c
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelpack.errors import (
    ChecksumError,
    InvalidInputError,
    PackFormatError,
    SerializationError,
)
from reelpack.format.refine import (
    MIN_REFINE_FRAME_BYTES,
    REFINE_MAGIC,
    decode_refine_frame,
    encode_refine_frame,
    parse_refine_frame,
    refine_frame_size,
)

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
IDS = np.array([5, 9, 2], np.int64)
CODES = np.arange(12, dtype=np.uint8).reshape(3, 4)
FRAME = encode_refine_frame(IDS, CODES, 1)


def _seal(body: bytes) -> bytes:
    return body + struct.pack("<I", crc32c.crc32c(body))


def test_golden_layout():
    body = struct.pack("<4sIII", b"RPRF", 3, 4, 1) + IDS.astype("<i8").tobytes() + CODES.tobytes()
    assert FRAME == _seal(body)
    assert len(FRAME) == refine_frame_size(3, 4) == 16 + 3 * (8 + 4) + 4
    assert REFINE_MAGIC == b"RPRF" and MIN_REFINE_FRAME_BYTES == 20
    assert encode_refine_frame(np.zeros(0, np.int64), np.zeros((0, 7), np.uint8), 0) == _seal(
        struct.pack("<4sIII", b"RPRF", 0, 7, 0)
    )


@pytest.mark.parametrize("n,bpv,layer", [(0, 0, 0), (0, 16, 3), (1, 1, 1), (7, 0, 2), (50, 33, 255), (3, 4, 2**32 - 1)])
def test_round_trip(n, bpv, layer):
    rng = np.random.default_rng(n * 100 + bpv)
    ids = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    codes = rng.integers(0, 256, (n, bpv), dtype=np.uint8)
    frame = encode_refine_frame(ids, codes, layer)
    got_layer, got_ids, got_codes = decode_refine_frame(frame)
    assert got_layer == layer and got_ids.dtype == np.int64 and got_codes.dtype == np.uint8
    np.testing.assert_array_equal(got_ids, ids)
    assert got_codes.shape == (n, bpv)
    np.testing.assert_array_equal(got_codes, codes)
    got_codes[...] = 0  # writable copies
    np.testing.assert_array_equal(parse_refine_frame(frame, ids, bpv, layer), codes)
    np.testing.assert_array_equal(parse_refine_frame(bytearray(frame), ids, bpv, layer), codes)
    np.testing.assert_array_equal(parse_refine_frame(memoryview(frame), ids, bpv, layer), codes)


def test_parse_checks_what_was_asked():
    with pytest.raises(PackFormatError, match="ids differ"):
        parse_refine_frame(FRAME, IDS[::-1], 4)
    with pytest.raises(PackFormatError, match="bytes"):
        parse_refine_frame(FRAME, IDS, 8)
    with pytest.raises(PackFormatError, match="layer 2"):
        parse_refine_frame(FRAME, IDS, 4, layer=2)
    with pytest.raises(PackFormatError, match="2 codes"):
        parse_refine_frame(FRAME, IDS[:2], 4)


def test_error_kinds():
    with pytest.raises(PackFormatError, match="magic"):
        decode_refine_frame(b"XXXX" + FRAME[4:])
    with pytest.raises(PackFormatError, match="fewer than the 20"):
        decode_refine_frame(b"")
    with pytest.raises(PackFormatError, match="must have"):
        decode_refine_frame(FRAME + b"\0")
    with pytest.raises(ChecksumError, match="CRC32C"):
        decode_refine_frame(FRAME[:-5] + bytes([FRAME[-5] ^ 1]) + FRAME[-4:])
    # one error family: ChecksumError is a PackFormatError is a SerializationError is a ValueError
    assert issubclass(ChecksumError, PackFormatError) and issubclass(PackFormatError, SerializationError)
    assert issubclass(PackFormatError, ValueError)


def test_every_truncation_raises():
    for cut in range(len(FRAME)):
        with pytest.raises(PackFormatError):
            decode_refine_frame(FRAME[:cut])


def test_every_bit_flip_raises():
    buf = bytearray(FRAME)
    for bit in range(8 * len(buf)):
        buf[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(PackFormatError):
            parse_refine_frame(bytes(buf), IDS, 4)
        buf[bit // 8] ^= 1 << (bit % 8)
    # flips in the body are caught by the CRC itself
    for pos in range(16, len(FRAME) - 4):
        flipped = bytearray(FRAME)
        flipped[pos] ^= 0x40
        with pytest.raises(ChecksumError):
            decode_refine_frame(bytes(flipped))


def test_encode_rejects_bad_input():
    with pytest.raises(InvalidInputError, match="codes must be"):
        encode_refine_frame(IDS, CODES[:2], 1)
    with pytest.raises(InvalidInputError, match="codes must be"):
        encode_refine_frame(IDS, CODES.reshape(-1), 1)
    with pytest.raises(InvalidInputError, match="ids must be"):
        encode_refine_frame(IDS.reshape(3, 1), CODES, 1)
    with pytest.raises(InvalidInputError, match="ids must be"):
        encode_refine_frame(IDS.astype(np.float64), CODES, 1)
    for layer in (-1, 2**32, 1.5, True):
        with pytest.raises(InvalidInputError, match="layer"):
            encode_refine_frame(IDS, CODES, layer)  # type: ignore[arg-type]


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_pack_format_error(data):
    try:
        decode_refine_frame(data)
    except PackFormatError:
        pass
    try:
        parse_refine_frame(data, IDS, 4)
    except PackFormatError:
        pass


@FUZZ
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=120),
)
def test_lying_header_resealed_raises_only_pack_format_error(n, bpv, layer, payload):
    """Header fields with a valid CRC: the length check, not the checksum, must refuse them, without allocating."""
    frame = _seal(struct.pack("<4sIII", b"RPRF", n, bpv, layer) + payload)
    try:
        got_layer, ids, codes = decode_refine_frame(frame)
    except PackFormatError as exc:
        assert not isinstance(exc, ChecksumError)
        assert len(frame) != refine_frame_size(n, bpv)
    else:
        assert len(frame) == refine_frame_size(n, bpv) and got_layer == layer
        assert ids.shape == (n,) and codes.shape == (n, bpv)
