"""One contract suite over every codec family: shapes, widths, stability, scoring, serialisation, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from reelpack.codecs import available_codecs, codec_from_bytes, make_codec
from reelpack.errors import (
    DimensionMismatchError,
    DTypeError,
    EmptyInputError,
    NonFiniteError,
    NotFittedError,
)
from reelpack.kernels.dense import hamming

D = 32

ALL_SPECS = [
    "float32",
    "fp16",
    "sq8",
    "sq4",
    "sq8-p99.9",
    "pq8",
    "pq8x4",
    "opq8,pq8",
    "simhash64",
    "simhash64-hamming",
    "countsketch16",
    "rabitq",
    "rabitq4",
    "apq8",
    "opq8,apq8",
    "rq4+4",
    "rq2+2-b",
    "wsq8",
    "usq8",
    "wsq12-mm",
    "qat-pq8",
    "qat-rq4+4",
]

# bytes_per_vector as each module documents it, at d = 32
EXPECTED_BYTES = {
    "float32": 4 * D,
    "fp16": 2 * D,
    "sq8": D,
    "sq4": (D + 1) // 2,
    "sq8-p99.9": D,
    "pq8": 8,
    "pq8x4": 4,  # eight 4-bit sub-codes, two per byte
    "opq8,pq8": 8,
    "simhash64": 64 // 8,
    "simhash64-hamming": 64 // 8,
    "countsketch16": 16,
    "rabitq": 32 // 8 + 4,  # signs + two float16 factors
    "rabitq4": 32 // 8 + 4 + 32 * 3 // 8 + 4,  # + three extended bits per dimension + two factors
    "apq8": 8,
    "opq8,apq8": 8,
    "rq4+4": 8,
    "rq2+2-b": 6,  # one bound byte after each stage
    "wsq8": 8,
    "usq8": 8,
    "wsq12-mm": 12,
    "qat-pq8": 8,
    "qat-rq4+4": 8,
}

# encode(decode(encode(X))) == encode(X) holds for these: decode returns a grid point / centroid
# (float32, fp16 and sq exactly; pq/opq whenever no two centroids of a subspace coincide).
# It does not hold for simhash (sign(R R^T s) != s) nor countsketch (colliding dimensions add up again).
STABLE = {"float32", "fp16", "sq8", "sq4", "sq8-p99.9", "pq8", "pq8x4", "opq8,pq8", "wsq8", "usq8", "wsq12-mm", "qat-pq8"}

# score == queries @ decode(codes).T for all but the symmetric Hamming variant.
# qat- scores by cosine (the reconstruction's direction), so it is excluded too.
SCORE_IS_DECODE = set(ALL_SPECS) - {"simhash64-hamming", "qat-pq8", "qat-rq4+4"}

# codecs whose fit draws random numbers (so another seed gives other parameters)
RANDOMISED = {
    "pq8", "pq8x4", "opq8,pq8", "simhash64", "simhash64-hamming", "countsketch16", "rabitq", "rabitq4",
    "apq8", "opq8,apq8", "rq4+4", "rq2+2-b", "qat-pq8", "qat-rq4+4",
}  # fmt: skip

spec_param = pytest.mark.parametrize("spec", ALL_SPECS)


def test_every_registered_family_is_covered():
    families = {make_codec(s).family for s in ALL_SPECS}
    assert set(available_codecs()) <= families | {"opq"}
    assert "opq" in families


@spec_param
def test_spec_round_trips(spec):
    codec = make_codec(spec)
    assert codec.spec == spec
    assert make_codec(codec.spec).spec == codec.spec
    assert make_codec(spec.upper()).spec == spec
    assert not codec.is_fitted


@spec_param
def test_shapes_dtypes_and_width(spec, fitted, contract_data):
    codec = fitted(spec)
    items, queries = contract_data["items"], contract_data["queries"]
    assert codec.dim == D
    assert codec.bytes_per_vector == EXPECTED_BYTES[spec]
    codes = codec.encode(items)
    assert codes.dtype == np.uint8 and codes.shape == (len(items), EXPECTED_BYTES[spec])
    assert codes.flags.c_contiguous
    dec = codec.decode(codes)
    assert dec.dtype == np.float32 and dec.shape == items.shape
    scores = codec.score(queries, codes)
    assert scores.dtype == np.float32 and scores.shape == (len(queries), len(items))
    assert np.isfinite(scores).all()
    # empty batches
    empty = codec.encode(np.zeros((0, D), np.float32))
    assert empty.shape == (0, EXPECTED_BYTES[spec]) and empty.dtype == np.uint8
    assert codec.decode(empty).shape == (0, D)
    assert codec.score(queries, empty).shape == (len(queries), 0)
    # float64 and integer inputs are accepted and cast
    assert np.array_equal(codec.encode(items.astype(np.float64)), codes)
    assert codec.encode(np.ones((2, D), np.int64)).shape == (2, EXPECTED_BYTES[spec])


@pytest.mark.parametrize("spec", sorted(STABLE))
def test_encode_decode_encode_is_stable(spec, fitted, contract_data):
    codec = fitted(spec)
    codes = codec.encode(np.concatenate([contract_data["train"][:200], contract_data["items"]]))
    assert np.array_equal(codec.encode(codec.decode(codes)), codes)


@pytest.mark.parametrize("spec", sorted(SCORE_IS_DECODE))
def test_score_equals_queries_dot_decode(spec, fitted, contract_data):
    codec = fitted(spec)
    codes = codec.encode(contract_data["items"])
    queries = contract_data["queries"]
    expected = queries.astype(np.float64) @ codec.decode(codes).astype(np.float64).T
    scale = np.abs(expected).max()
    np.testing.assert_allclose(codec.score(queries, codes), expected, rtol=1e-4, atol=1e-5 * scale)


def test_hamming_variant_scores_negative_hamming(fitted, contract_data):
    codec = fitted("simhash64-hamming")
    codes = codec.encode(contract_data["items"])
    queries = contract_data["queries"]
    expected = -hamming(codec.encode(queries), codes)
    assert np.array_equal(codec.score(queries, codes), expected.astype(np.float32))
    # the same codes as the asymmetric variant (same projection for the same seed)
    assert np.array_equal(fitted("simhash64").encode(contract_data["items"]), codes)


@spec_param
def test_serialisation_round_trip(spec, fitted, contract_data):
    codec = fitted(spec)
    blob = codec.to_bytes()
    twin = codec_from_bytes(blob)
    assert type(twin) is type(codec) and twin.spec == spec and twin.dim == D
    items, queries = contract_data["items"], contract_data["queries"]
    codes = codec.encode(items)
    assert np.array_equal(twin.encode(items), codes)
    assert np.array_equal(twin.decode(codes), codec.decode(codes))
    assert np.array_equal(twin.score(queries, codes), codec.score(queries, codes))
    assert twin.to_bytes() == blob
    assert codec_from_bytes(bytearray(blob)).spec == spec


@spec_param
def test_fit_is_deterministic_under_seed(spec, fitted, contract_data):
    codec = fitted(spec)
    again = make_codec(spec).fit(contract_data["train"], seed=0)
    assert again.to_bytes() == codec.to_bytes()
    assert np.array_equal(again.encode(contract_data["items"]), codec.encode(contract_data["items"]))
    if spec in RANDOMISED:
        other = make_codec(spec).fit(contract_data["train"], seed=1)
        assert other.to_bytes() != codec.to_bytes()


@spec_param
def test_nonfinite_rows_are_named(spec, fitted, contract_data):
    codec = fitted(spec)
    X = contract_data["items"][:10].copy()
    X[3, 5] = np.nan
    X[7, 0] = np.inf
    with pytest.raises(NonFiniteError, match=r"NaN or Inf in 2 row\(s\): 3, 7") as info:
        codec.encode(X)
    assert info.value.rows == [3, 7]
    with pytest.raises(NonFiniteError, match="queries") as info:
        codec.score(X, codec.encode(contract_data["items"][:4]))
    assert info.value.rows == [3, 7]
    with pytest.raises(NonFiniteError, match="3, 7"):
        make_codec(spec).fit(np.concatenate([X, contract_data["train"]]))


@spec_param
def test_wrong_dimension(spec, fitted, contract_data):
    codec = fitted(spec)
    wide = np.ones((4, D + 2), np.float32)
    with pytest.raises(DimensionMismatchError, match=f"dimension {D + 2}, expected {D}"):
        codec.encode(wide)
    with pytest.raises(DimensionMismatchError, match=f"dimension {D + 2}, expected {D}"):
        codec.score(wide, codec.encode(contract_data["items"][:3]))
    with pytest.raises(DimensionMismatchError, match="2-D"):
        codec.encode(np.ones(D, np.float32))


@spec_param
@pytest.mark.parametrize("dtype", [np.int64, np.float32, np.int8])
def test_codes_of_the_wrong_dtype(spec, dtype, fitted, contract_data):
    codec = fitted(spec)
    codes = codec.encode(contract_data["items"][:3]).astype(dtype)
    with pytest.raises(DTypeError, match=f"must be uint8, got dtype {np.dtype(dtype)}"):
        codec.decode(codes)
    with pytest.raises(DTypeError, match="must be uint8"):
        codec.score(contract_data["queries"], codes)


@spec_param
def test_codes_of_the_wrong_width(spec, fitted, contract_data):
    codec = fitted(spec)
    codes = codec.encode(contract_data["items"][:3])
    bpv = EXPECTED_BYTES[spec]
    for bad in (codes[:, :-1], np.concatenate([codes, codes[:, :1]], axis=1)):
        msg = f"have {bad.shape[1]} bytes per vector, this codec uses {bpv}"
        with pytest.raises(DimensionMismatchError, match=msg):
            codec.decode(bad)
        with pytest.raises(DimensionMismatchError, match="bytes per vector"):
            codec.score(contract_data["queries"], bad)
    with pytest.raises(DimensionMismatchError, match="2-D"):
        codec.decode(codes[0])


@spec_param
def test_use_before_fit(spec, contract_data):
    codec = make_codec(spec)
    codes = np.zeros((2, 4), np.uint8)
    for call in (
        lambda: codec.encode(contract_data["items"]),
        lambda: codec.decode(codes),
        lambda: codec.score(contract_data["queries"], codes),
        lambda: codec.to_bytes(),
        lambda: codec.bytes_per_vector,
    ):
        with pytest.raises(NotFittedError, match="call fit"):
            call()
    assert "unfitted" in repr(codec)


@spec_param
def test_fit_on_bad_training_sets(spec):
    with pytest.raises(EmptyInputError, match="empty"):
        make_codec(spec).fit(np.zeros((0, D), np.float32))
    with pytest.raises(DimensionMismatchError, match="2-D"):
        make_codec(spec).fit(np.zeros(D, np.float32))
    with pytest.raises(DTypeError, match="dtype"):
        make_codec(spec).fit(np.array([["a"] * D]))


@spec_param
def test_row_blocking_does_not_change_results(spec, fitted, contract_data, monkeypatch):
    import reelpack.codecs._common as common
    import reelpack.kernels.dense as kernels

    codec = fitted(spec)
    items, queries = contract_data["items"], np.concatenate([contract_data["queries"]] * 20)  # 100 queries
    codes = codec.encode(items)
    dec, scores = codec.decode(codes), codec.score(queries, codes)
    monkeypatch.setattr(common, "BLOCK_ELEMS", 100)
    monkeypatch.setattr(kernels, "_BLOCK_ELEMS", 100)
    assert np.array_equal(codec.encode(items), codes)
    np.testing.assert_allclose(codec.decode(codes), dec, rtol=1e-5, atol=1e-5 * np.abs(dec).max())
    np.testing.assert_allclose(codec.score(queries, codes), scores, rtol=1e-5, atol=1e-5 * np.abs(scores).max())
