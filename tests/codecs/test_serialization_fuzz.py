"""Fuzz the parsers of untrusted bytes: unpack_state and codec_from_bytes may only raise SerializationError."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelpack.codecs import codec_from_bytes, make_codec
from reelpack.codecs.base import MAX_DIM, STATE_MAGIC, STATE_VERSION, pack_state, unpack_state
from reelpack.errors import SerializationError

FUZZ_SPECS = ["float32", "fp16", "sq8", "sq4-p99", "pq4", "opq4,pq4", "simhash16", "simhash16-hamming", "countsketch4", "rabitq2", "wsq3", "usq4", "wsq5-mm"]


def _fitted_blobs() -> list[bytes]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 8)).astype(np.float32)  # < 256 rows: PQ uses 40 centroids, tiny states
    return [make_codec(s).fit(X, seed=1).to_bytes() for s in FUZZ_SPECS]


BLOBS = _fitted_blobs()


def _split(blob: bytes) -> tuple[dict, bytes]:
    (header_len,) = struct.unpack_from("<I", blob, 6)
    return json.loads(blob[10 : 10 + header_len]), blob[10 + header_len :]


def _join(header: object, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return STATE_MAGIC + struct.pack("<HI", STATE_VERSION, len(raw)) + raw + payload


def _only_serialization_errors(blob: bytes) -> None:
    """Parse ``blob`` both ways; anything other than success or SerializationError fails the test."""
    for parse in (unpack_state, codec_from_bytes):
        try:
            parse(blob)
        except SerializationError:
            pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_fitted_states_load():
    for spec, blob in zip(FUZZ_SPECS, BLOBS):
        assert codec_from_bytes(blob).spec == make_codec(spec).spec


@_FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data):
    _only_serialization_errors(data)
    _only_serialization_errors(STATE_MAGIC + struct.pack("<H", STATE_VERSION) + data)


@_FUZZ
@given(
    st.sampled_from(range(len(BLOBS))),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 10**6),
    st.binary(max_size=16),
)
def test_mutated_states(which, flips, cut, tail):
    blob = bytearray(BLOBS[which])
    for pos, value in flips:
        blob[pos % len(blob)] = value
    _only_serialization_errors(bytes(blob))
    _only_serialization_errors(bytes(blob[: cut % len(blob)]))
    _only_serialization_errors(bytes(blob) + tail)


@_FUZZ
@given(
    st.sampled_from(range(len(BLOBS))),
    st.sampled_from(
        ["spec", "dim", "meta", "arrays", "name", "dtype", "shape", "offset", "nbytes", "entry", "meta_key"]
    ),
    json_values,
    st.integers(0, 7),
)
def test_mutated_header_fields(which, field, value, index):
    header, payload = _split(BLOBS[which])
    entries = header["arrays"]
    if field in ("spec", "dim", "meta", "arrays"):
        header[field] = value
    elif field == "meta_key":
        header["meta"] = {"x": value}
    elif entries:
        entry = entries[index % len(entries)]
        if field == "entry":
            entries[index % len(entries)] = value
        else:
            entry[field] = value
    _only_serialization_errors(_join(header, payload))


@_FUZZ
@given(st.sampled_from(range(len(BLOBS))), st.sampled_from(FUZZ_SPECS + ["pq8", "sq8", "simhash8"]), st.integers(1, 40))
def test_states_relabelled_as_another_codec_or_dimension(which, spec, dim):
    header, payload = _split(BLOBS[which])
    header["spec"] = spec
    header["dim"] = dim
    _only_serialization_errors(_join(header, payload))


# ---- holes found in the original unpack_state: each raised TypeError/ValueError/OverflowError/RecursionError,
# or silently accepted a lying header, instead of raising SerializationError --------------------------------


def _blob_with(**changes) -> bytes:
    header, payload = _split(BLOBS[FUZZ_SPECS.index("sq8")])
    entry = header["arrays"][0]
    for key, value in changes.items():
        if key in entry:
            entry[key] = value
        else:
            header[key] = value
    return _join(header, payload)


@pytest.mark.parametrize(
    "blob,match",
    [
        (_blob_with(dtype=["<f4"]), "unsupported dtype"),  # was TypeError (unhashable)
        (_blob_with(shape=[1] * 70 + [8]), "invalid shape"),  # was ValueError (numpy's 64-dim limit)
        (_blob_with(shape=[2**70]), "invalid shape"),  # was OverflowError (np.prod to int64)
        (_blob_with(shape=[2**70, 0], nbytes=0), "invalid shape"),  # was ValueError (numpy size overflow)
        (_blob_with(shape=[2**40, 2**40, 0, 1], nbytes=0), "invalid shape"),  # was ValueError
        (_blob_with(shape=[2**62, 2**62, 4]), "invalid shape"),  # int64 wrap-around must not matter
        (_blob_with(dim=True), "invalid spec, dim"),  # was accepted as dim 1
        (_blob_with(dim=MAX_DIM + 1), "invalid spec, dim"),  # was accepted
        (_blob_with(name=["lo"]), "name"),  # was accepted under the name "['lo']"
        (_blob_with(arrays=[1, 2]), "must be an object"),
        (STATE_MAGIC + struct.pack("<HI", 1, 5000) + b"9" * 5000, "corrupt"),  # was ValueError (int digit limit)
    ],
)
def test_regressions(blob, match):
    with pytest.raises(SerializationError, match=match):
        unpack_state(blob)


def test_deeply_nested_header_is_refused():  # was RecursionError
    raw = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(SerializationError, match="corrupt"):
        unpack_state(STATE_MAGIC + struct.pack("<HI", STATE_VERSION, len(raw)) + raw)


def test_overlapping_and_repeated_arrays_are_refused():
    # overlapping arrays were accepted: many entries over one payload could allocate far more than the input
    a = np.arange(4, dtype=np.float32)
    blob = pack_state("sq8", 4, {}, {"lo": a, "step": a})
    header, payload = _split(blob)
    header["arrays"][1]["offset"] = 0  # both arrays claim the same bytes
    with pytest.raises(SerializationError, match="overlap"):
        unpack_state(_join(header, payload))
    header["arrays"][1]["offset"] = 16
    header["arrays"][1]["name"] = "lo"
    with pytest.raises(SerializationError, match="repeated"):
        unpack_state(_join(header, payload))
