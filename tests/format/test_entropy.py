"""Tests of reelpack.format.entropy: symbol layouts, model fitting and serialisation, block round trips, fuzzing."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelpack.codecs import make_codec
from reelpack.errors import (
    DimensionMismatchError,
    DTypeError,
    EmptyInputError,
    EntropyCodingError,
    InvalidInputError,
    ReelpackError,
    SerializationError,
)
from reelpack.format.entropy import (
    COUNT_TOTAL_MAX,
    LAYOUTS,
    MAX_BLOCK_SYMBOLS,
    ColumnModel,
    code_symbols,
    codes_from_symbols,
    decode_block,
    encode_block,
    fit_column_model,
    max_block_bytes,
)

_PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_codes(rng: np.random.Generator, n: int, bytes_per_vector: int, kind: str) -> np.ndarray:
    """uint8 [n, bytes_per_vector] codes with a chosen distribution.

    kind: "uniform" (all 256 values), "skewed" (geometric, mostly small values),
    "degenerate" (every column holds a single value), "mixed" (one constant
    column, one two-valued column, the rest skewed).
    """
    if kind == "uniform":
        return rng.integers(0, 256, size=(n, bytes_per_vector), dtype=np.uint8)
    if kind == "skewed":
        return np.minimum(rng.geometric(0.3, size=(n, bytes_per_vector)) - 1, 255).astype(np.uint8)
    if kind == "degenerate":
        column_values = rng.integers(0, 256, size=bytes_per_vector, dtype=np.uint8)
        return np.broadcast_to(column_values, (n, bytes_per_vector)).copy()
    codes = np.minimum(rng.geometric(0.2, size=(n, bytes_per_vector)) - 1, 255).astype(np.uint8)
    codes[:, 0] = 0xA5
    if bytes_per_vector > 1:
        codes[:, 1] = rng.choice(np.array([0x0F, 0xF0], dtype=np.uint8), size=n)
    return codes


_KINDS = st.sampled_from(["uniform", "skewed", "degenerate", "mixed"])


# ---------------------------------------------------------------- symbol layouts


def test_nibble_layout_puts_low_nibble_first() -> None:
    codes = np.array([[0xAB, 0x01]], dtype=np.uint8)
    np.testing.assert_array_equal(code_symbols(codes, "nibbles"), [[0xB, 0xA, 0x1, 0x0]])


def test_bit_layout_follows_packbits_order() -> None:
    signs = np.array([[1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0]], dtype=np.uint8)
    codes = np.packbits(signs, axis=1)
    np.testing.assert_array_equal(code_symbols(codes, "bits"), signs)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_symbols_round_trip(layout: str) -> None:
    codes = np.random.default_rng(0).integers(0, 256, size=(50, 7), dtype=np.uint8)
    np.testing.assert_array_equal(codes_from_symbols(code_symbols(codes, layout), layout), codes)


def test_symbols_out_of_alphabet_are_rejected() -> None:
    with pytest.raises(InvalidInputError, match=r"\[0, 15\]"):
        codes_from_symbols(np.array([[3, 16]]), "nibbles")
    with pytest.raises(DTypeError, match="integers"):
        codes_from_symbols(np.array([[0.5, 1.0]]), "nibbles")


# ---------------------------------------------------------------- model fitting


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fitted_counts_keep_a_floor_and_a_bounded_total(layout: str) -> None:
    codes = random_codes(np.random.default_rng(1), 300, 4, "mixed")
    model = fit_column_model(codes, layout)
    assert model.counts.dtype == np.uint16
    assert model.counts.min() >= 1
    assert model.counts.astype(np.int64).sum(axis=1).max() <= COUNT_TOTAL_MAX
    assert model.n_symbol_columns == 4 * {"bytes": 1, "nibbles": 2, "bits": 8}[layout]
    np.testing.assert_allclose(model.probabilities.sum(axis=1), 1.0)


def test_constant_column_gets_almost_all_mass() -> None:
    codes = np.full((100, 1), 42, dtype=np.uint8)
    model = fit_column_model(codes, "bytes")
    assert model.probabilities[0, 42] > 0.99
    assert np.all(model.counts[0, np.arange(256) != 42] == 1)


def test_counts_are_read_only() -> None:
    model = fit_column_model(np.zeros((3, 2), dtype=np.uint8), "bytes")
    with pytest.raises(ValueError):
        model.counts[0, 0] = 5


@pytest.mark.parametrize("layout", LAYOUTS)
def test_model_serialisation_round_trip(layout: str) -> None:
    model = fit_column_model(random_codes(np.random.default_rng(2), 500, 5, "skewed"), layout)
    data = model.to_bytes()
    assert len(data) == model.nbytes
    loaded = ColumnModel.from_bytes(data)
    assert loaded.layout == layout and loaded.bytes_per_vector == 5
    np.testing.assert_array_equal(loaded.counts, model.counts)
    assert loaded.to_bytes() == data


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(EmptyInputError, match="0 rows"):
        fit_column_model(np.zeros((0, 4), dtype=np.uint8), "bytes")
    with pytest.raises(DTypeError, match="uint8"):
        fit_column_model(np.zeros((3, 4), dtype=np.int16), "bytes")
    with pytest.raises(DimensionMismatchError, match="2-D"):
        fit_column_model(np.zeros(4, dtype=np.uint8), "bytes")
    with pytest.raises(InvalidInputError, match="bytes, nibbles, bits"):
        fit_column_model(np.zeros((3, 4), dtype=np.uint8), "words")


def test_column_model_constructor_validates_counts() -> None:
    with pytest.raises(InvalidInputError, match=">= 1"):
        ColumnModel("bits", 1, np.zeros((8, 2), dtype=np.uint16))
    with pytest.raises(InvalidInputError, match="at most 65535"):
        ColumnModel("bytes", 1, np.full((1, 256), 300, dtype=np.uint16))
    with pytest.raises(DimensionMismatchError, match=r"\(8, 2\)"):
        ColumnModel("bits", 1, np.ones((4, 2), dtype=np.uint16))


# ---------------------------------------------------------------- block round trips


@_PROPERTY
@given(
    layout=st.sampled_from(LAYOUTS),
    kind=_KINDS,
    fit_kind=_KINDS,
    n_rows=st.integers(0, 80),
    bytes_per_vector=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
)
def test_block_round_trip(layout: str, kind: str, fit_kind: str, n_rows: int, bytes_per_vector: int, seed: int) -> None:
    """Any codes round-trip, including symbols the model never saw (fitted on other data)."""
    rng = np.random.default_rng(seed)
    model = fit_column_model(random_codes(rng, 40, bytes_per_vector, fit_kind), layout)
    codes = random_codes(rng, n_rows, bytes_per_vector, kind)
    data = encode_block(codes, model)
    assert len(data) % 4 == 0 and len(data) <= max_block_bytes(n_rows, model)
    decoded = decode_block(data, ColumnModel.from_bytes(model.to_bytes()), n_rows)
    assert decoded.dtype == np.uint8 and decoded.shape == (n_rows, bytes_per_vector)
    np.testing.assert_array_equal(decoded, codes)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_unseen_symbols_at_the_floor_round_trip(layout: str) -> None:
    """Worst case: the model saw only zeros, the block holds only 0xFF (every symbol at the floor count)."""
    model = fit_column_model(np.zeros((1000, 8), dtype=np.uint8), layout)
    codes = np.full((256, 8), 0xFF, dtype=np.uint8)
    data = encode_block(codes, model)
    assert len(data) <= max_block_bytes(256, model)
    np.testing.assert_array_equal(decode_block(data, model, 256), codes)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_coded_size_is_close_to_the_ideal_code_length(layout: str) -> None:
    codes = random_codes(np.random.default_rng(3), 2048, 16, "skewed")
    model = fit_column_model(codes, layout)
    ideal_bytes = model.code_length_bits(codes) / 8
    coded_bytes = len(encode_block(codes, model))
    assert ideal_bytes <= coded_bytes <= ideal_bytes * 1.01 + 16
    assert coded_bytes < 0.6 * codes.nbytes  # geometric(0.3) symbols hold ~3 bits per byte


def test_constant_block_shrinks_to_a_few_words() -> None:
    codes = np.full((1024, 16), 9, dtype=np.uint8)
    model = fit_column_model(codes, "bytes")
    data = encode_block(codes, model)
    assert len(data) <= 64
    np.testing.assert_array_equal(decode_block(data, model, 1024), codes)


@pytest.mark.parametrize(("spec", "layout"), [("sq4", "nibbles"), ("sq8", "bytes"), ("simhash64", "bits")])
def test_real_codec_codes_round_trip(spec: str, layout: str) -> None:
    X = np.random.default_rng(4).normal(size=(600, 16)).astype(np.float32)
    codes = make_codec(spec).fit(X, seed=0).encode(X)
    model = fit_column_model(codes, layout)
    for start in range(0, len(codes), 256):
        block = codes[start : start + 256]
        np.testing.assert_array_equal(decode_block(encode_block(block, model), model, len(block)), block)


def test_encode_rejects_bad_input() -> None:
    model = fit_column_model(np.zeros((4, 3), dtype=np.uint8), "bytes")
    with pytest.raises(DimensionMismatchError, match="expects 3"):
        encode_block(np.zeros((4, 2), dtype=np.uint8), model)
    with pytest.raises(DTypeError, match="uint8"):
        encode_block(np.zeros((4, 3), dtype=np.float32), model)
    with pytest.raises(InvalidInputError, match="ColumnModel"):
        encode_block(np.zeros((4, 3), dtype=np.uint8), "model")  # type: ignore[arg-type]


def test_decode_rejects_bad_arguments() -> None:
    model = fit_column_model(np.zeros((4, 3), dtype=np.uint8), "bytes")
    with pytest.raises(InvalidInputError, match="n_rows"):
        decode_block(b"", model, -1)
    with pytest.raises(InvalidInputError, match="n_rows"):
        decode_block(b"", model, MAX_BLOCK_SYMBOLS)
    with pytest.raises(InvalidInputError, match="n_rows must be an integer"):
        decode_block(b"", model, True)
    with pytest.raises(EntropyCodingError, match="must be bytes"):
        decode_block("abcd", model, 1)  # type: ignore[arg-type]
    with pytest.raises(EntropyCodingError, match="multiple of 4"):
        decode_block(b"abc", model, 1)
    with pytest.raises(EntropyCodingError, match="at most"):
        decode_block(bytes(4 * 100), model, 1)
    assert issubclass(EntropyCodingError, SerializationError)


# Golden bytes: a block written today must decode the same way forever (constriction is pinned to
# 0.5.0 because its float-to-fixed-point quantisation of the model is part of the format).
_GOLDEN_BLOCKS = {
    "bytes": (
        "7967d438597f4786",
        "69efddfc24ca0e37c37bf7ad9a3f18ec7ab226aa39b86759c2b26b4f8b76032a1d1a0000",
    ),
    "nibbles": (
        "dcee9c47dc583214",
        "4dd9b6b83b63abd364f5e7f0470a8208d7913830f3bb52b1d4902175b5dbc4cbf713786e40b2c16d"
        "3972c13ae56008500417dc701553769fc5c700c21f020000",
    ),
    "bits": (
        "7987726d62da4e49",
        "fcfbc3b5ab75adf2b5ec0ea30b915c0687ffc2add07c1ade5701dbbfe292542ea7be90cba07b3ba0"
        "2b9204c73b636391a55346e5d06648018b0d47f652bf6cd2eff4d7b201000000",
    ),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_golden_bytes(layout: str) -> None:
    codes = ((np.arange(24 * 3).reshape(24, 3) * 37) % 11 * 13).astype(np.uint8)
    model = fit_column_model(codes, layout)
    model_sha, block_hex = _GOLDEN_BLOCKS[layout]
    assert hashlib.sha256(model.to_bytes()).hexdigest()[:16] == model_sha
    assert encode_block(codes, model).hex() == block_hex
    np.testing.assert_array_equal(decode_block(bytes.fromhex(block_hex), model, 24), codes)


# ---------------------------------------------------------------- fuzzing untrusted bytes


@pytest.fixture(scope="module")
def fuzz_blocks() -> list[tuple[ColumnModel, np.ndarray, bytes]]:
    """One (model, codes, encoded block) per layout, 64 rows x 6 bytes of mixed codes."""
    rng = np.random.default_rng(5)
    out = []
    for layout in LAYOUTS:
        codes = random_codes(rng, 64, 6, "mixed")
        model = fit_column_model(codes, layout)
        out.append((model, codes, encode_block(codes, model)))
    return out


def _decode_or_reelpack_error(data: bytes, model: ColumnModel, n_rows: int) -> None:
    try:
        decoded = decode_block(data, model, n_rows)
    except ReelpackError as exc:
        assert isinstance(exc, EntropyCodingError)
        return
    assert decoded.dtype == np.uint8 and decoded.shape == (n_rows, model.bytes_per_vector)


@_FUZZ
@given(which=st.integers(0, 2), data=st.binary(max_size=600), n_rows=st.integers(0, 200))
def test_decode_of_random_bytes_raises_only_reelpack_errors(
    fuzz_blocks: list[tuple[ColumnModel, np.ndarray, bytes]], which: int, data: bytes, n_rows: int
) -> None:
    model, _, _ = fuzz_blocks[which]
    _decode_or_reelpack_error(data, model, n_rows)


@_FUZZ
@given(
    which=st.integers(0, 2),
    cut=st.integers(0, 10_000),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
    extra=st.binary(max_size=12),
    row_delta=st.integers(-3, 3),
)
def test_decode_of_mutated_blocks_raises_only_reelpack_errors(
    fuzz_blocks: list[tuple[ColumnModel, np.ndarray, bytes]],
    which: int,
    cut: int,
    flips: list[tuple[int, int]],
    extra: bytes,
    row_delta: int,
) -> None:
    model, codes, block = fuzz_blocks[which]
    mutated = bytearray(block[: cut % (len(block) + 1)] + extra)
    for position, xor in flips:
        if mutated:
            mutated[position % len(mutated)] ^= xor
    _decode_or_reelpack_error(bytes(mutated), model, max(0, len(codes) + row_delta))


@pytest.mark.parametrize("extra", [bytes(4), b"\x01\x00\x00\x00", b"\x07\x00\x00\x00" * 2, b"\xff" * 12])
def test_trailing_words_are_detected(fuzz_blocks: list[tuple[ColumnModel, np.ndarray, bytes]], extra: bytes) -> None:
    for model, codes, block in fuzz_blocks:
        with pytest.raises(EntropyCodingError, match="not empty after the last symbol|zero word"):
            decode_block(block + extra, model, len(codes))


def test_missing_words_are_detected(fuzz_blocks: list[tuple[ColumnModel, np.ndarray, bytes]]) -> None:
    for model, codes, block in fuzz_blocks:
        for cut in (4, 8):
            with pytest.raises(EntropyCodingError):
                decode_block(block[:-cut], model, len(codes))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_single_byte_flips_are_caught(layout: str) -> None:
    """ANS ends in a known state, so a flipped byte leaves the decoder non-empty (seeded, so not flaky)."""
    rng = np.random.default_rng(6)
    codes = random_codes(rng, 1024, 16, "skewed")
    model = fit_column_model(codes, layout)
    block = encode_block(codes, model)
    for _ in range(30):
        mutated = bytearray(block)
        mutated[int(rng.integers(len(mutated)))] ^= int(rng.integers(1, 256))
        with pytest.raises(EntropyCodingError):
            decode_block(bytes(mutated), model, len(codes))


def _load_or_reelpack_error(data: bytes) -> None:
    try:
        model = ColumnModel.from_bytes(data)
    except ReelpackError as exc:
        assert isinstance(exc, EntropyCodingError)
        return
    assert model.counts.min() >= 1
    assert ColumnModel.from_bytes(model.to_bytes()).to_bytes() == model.to_bytes()


@_FUZZ
@given(data=st.binary(max_size=200))
def test_model_from_random_bytes_raises_only_reelpack_errors(data: bytes) -> None:
    _load_or_reelpack_error(b"RPEM" + data[4:] if data[:1] == b"R" else data)


@_FUZZ
@given(
    which=st.integers(0, 2),
    cut=st.integers(0, 10_000),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=3),
)
def test_model_from_mutated_bytes_raises_only_reelpack_errors(
    fuzz_blocks: list[tuple[ColumnModel, np.ndarray, bytes]], which: int, cut: int, flips: list[tuple[int, int]]
) -> None:
    valid = fuzz_blocks[which][0].to_bytes()
    mutated = bytearray(valid[: cut % (len(valid) + 1)] if cut % 3 == 0 else valid)
    for position, xor in flips:
        if mutated:
            mutated[position % min(len(mutated), 16 if cut % 2 else len(mutated))] ^= xor
    _load_or_reelpack_error(bytes(mutated))


def test_model_from_bytes_messages() -> None:
    valid = fit_column_model(np.zeros((4, 2), dtype=np.uint8), "nibbles").to_bytes()
    with pytest.raises(EntropyCodingError, match="magic"):
        ColumnModel.from_bytes(b"XXXX" + valid[4:])
    with pytest.raises(EntropyCodingError, match="truncated"):
        ColumnModel.from_bytes(valid[:5])
    with pytest.raises(EntropyCodingError, match="must be 140 bytes"):
        ColumnModel.from_bytes(valid[:-2])
    with pytest.raises(EntropyCodingError, match="version 9"):
        ColumnModel.from_bytes(valid[:4] + b"\x09\x00" + valid[6:])
    with pytest.raises(EntropyCodingError, match="layout code 7"):
        ColumnModel.from_bytes(valid[:6] + b"\x07" + valid[7:])
    with pytest.raises(EntropyCodingError, match=">= 1"):
        ColumnModel.from_bytes(valid[:12] + b"\x00\x00" + valid[14:])
    with pytest.raises(EntropyCodingError, match="must be bytes"):
        ColumnModel.from_bytes([1, 2, 3])  # type: ignore[arg-type]
