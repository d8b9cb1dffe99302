"""LEB128 varints and the ITEM_IDS encodings: round trips, canonical form, and strict rejection."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelpack.errors import PackFormatError
from reelpack.format.varint import (
    IDS_DELTAS,
    IDS_RUNS,
    MAX_ID,
    decode_item_ids,
    decode_varints,
    encode_item_ids,
    encode_varints,
    ids_from_runs,
    ids_in_range,
)


def _reference_leb128(values) -> bytes:
    """Plain Python LEB128, the oracle for the vectorised encoder."""
    out = bytearray()
    for v in values:
        v = int(v)
        while True:
            byte, v = v & 0x7F, v >> 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


@given(st.lists(st.integers(0, MAX_ID), max_size=60))
@settings(max_examples=200, deadline=None)
def test_varints_match_reference_and_round_trip(values):
    arr = np.array(values, dtype=np.uint64)
    raw = encode_varints(arr)
    assert raw == _reference_leb128(values)
    np.testing.assert_array_equal(decode_varints(raw), arr)


@pytest.mark.parametrize(
    ("raw", "words"),
    [(b"\x80", "truncated"), (b"\x80\x00", "minimal"), (b"\xff" * 9 + b"\x01", "longer than 9")],
)
def test_bad_varints_rejected(raw, words):
    with pytest.raises(PackFormatError, match=words):
        decode_varints(raw)


@pytest.mark.parametrize(
    ("ids", "encoding"),
    [(np.arange(100_000), IDS_RUNS), (np.arange(0, 10_000, 3), IDS_DELTAS), (np.array([MAX_ID]), IDS_DELTAS)],
)
def test_item_ids_round_trip_and_pick_smaller_encoding(ids, encoding):
    body = encode_item_ids(ids)
    assert body[0] == encoding
    starts, offsets = decode_item_ids(body, ids.size)
    np.testing.assert_array_equal(ids_from_runs(starts, offsets), ids)
    np.testing.assert_array_equal(ids_in_range(starts, offsets, 1, min(7, ids.size)), ids[1 : min(7, ids.size)])


def test_dense_ids_cost_a_few_bytes():
    ids = np.delete(np.arange(100_000), np.arange(5, 100_000, 1000))  # 100 holes
    assert len(encode_item_ids(ids)) < 9 + 100 * 5


@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=80, unique=True), st.integers(0, 80), st.integers(0, 80))
@settings(max_examples=200, deadline=None)
def test_item_ids_property(values, lo, hi):
    ids = np.sort(np.array(values, dtype=np.int64))
    starts, offsets = decode_item_ids(encode_item_ids(ids), ids.size)
    np.testing.assert_array_equal(ids_from_runs(starts, offsets), ids)
    lo, hi = sorted((min(lo, ids.size), min(hi, ids.size)))
    np.testing.assert_array_equal(ids_in_range(starts, offsets, lo, hi), ids[lo:hi])


@pytest.mark.parametrize(
    ("body", "count", "words"),
    [
        (bytes([0]) + (2).to_bytes(8, "little") + bytes([5, 0]), 2, "strictly increasing"),
        (bytes([0]) + (2).to_bytes(8, "little") + bytes([5]), 2, "expected 2"),
        (bytes([1]) + (3).to_bytes(8, "little") + bytes([5, 2]), 3, "cover 2 ids"),
        (bytes([1]) + (2).to_bytes(8, "little") + bytes([5, 1, 0, 1]), 2, "gaps >= 1"),
        (bytes([1]) + (1).to_bytes(8, "little") + bytes([5]), 1, "odd number"),
        (bytes([2]) + (0).to_bytes(8, "little"), 0, "unknown"),
        (bytes([1]) + (5).to_bytes(8, "little"), 4, "header says 4"),
        (bytes([0]) + (2).to_bytes(8, "little") + encode_varints(np.array([MAX_ID, 1], np.uint64)), 2, "2\\*\\*63"),
    ],
)
def test_bad_item_ids_rejected(body, count, words):
    with pytest.raises(PackFormatError, match=words):
        decode_item_ids(body, count)
