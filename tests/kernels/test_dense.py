"""Every fast scoring kernel against its plain NumPy reference (oracle), plus input checks and blocking."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelpack.errors import DimensionMismatchError, DTypeError, InvalidInputError
from reelpack.kernels import _reference as R
from reelpack.kernels import dense as K


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Force the row-block loops to run many small blocks."""
    monkeypatch.setattr(K, "_BLOCK_ELEMS", 64)


# ---- product quantisation ---------------------------------------------------------------------------


@pytest.mark.parametrize("m,ksub,dsub", [(8, 256, 4), (4, 17, 3), (1, 256, 1), (16, 256, 2)])
def test_pq_lut_adc_decode_match_references(m, ksub, dsub):
    rng = _rng(m)
    cents = rng.normal(size=(m, ksub, dsub)).astype(np.float32)
    queries = rng.normal(size=(7, m * dsub)).astype(np.float32)
    codes = rng.integers(0, ksub, size=(301, m), dtype=np.uint8)
    lut = K.pq_lut(queries, cents)
    assert lut.dtype == np.float32 and lut.shape == (7, m, ksub)
    np.testing.assert_allclose(lut, R.pq_lut_reference(queries, cents), rtol=1e-5, atol=1e-5)
    adc = K.pq_adc(lut, codes)
    assert adc.dtype == np.float32 and adc.shape == (7, 301)
    np.testing.assert_allclose(adc, R.pq_adc_reference(lut, codes), rtol=1e-5, atol=1e-4)
    dec = K.pq_decode(cents, codes)
    np.testing.assert_array_equal(dec, R.pq_decode_reference(cents, codes))
    # ADC is the inner product with the decoded vectors
    np.testing.assert_allclose(adc, queries @ dec.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("nq", [1, 64, 65, 150])
def test_pq_ip_paths_agree_with_adc(nq, tiny_blocks):
    rng = _rng(nq)
    cents = rng.normal(size=(8, 256, 4)).astype(np.float32)
    queries = rng.normal(size=(nq, 32)).astype(np.float32)
    codes = rng.integers(0, 256, size=(500, 8), dtype=np.uint8)
    expected = R.pq_adc_reference(R.pq_lut_reference(queries, cents), codes)
    np.testing.assert_allclose(K.pq_ip(queries, cents, codes), expected, rtol=1e-4, atol=1e-4)
    # both routes forced, whatever the query count
    np.testing.assert_allclose(K.pq_ip(queries, cents, codes, gemm_min_queries=0), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(K.pq_ip(queries, cents, codes, gemm_min_queries=10**9), expected, rtol=1e-4, atol=1e-4)


def test_pq_empty_inputs():
    cents = np.zeros((2, 256, 3), np.float32)
    assert K.pq_adc(np.zeros((3, 2, 256), np.float32), np.zeros((0, 2), np.uint8)).shape == (3, 0)
    assert K.pq_adc(np.zeros((0, 2, 256), np.float32), np.zeros((5, 2), np.uint8)).shape == (0, 5)
    assert K.pq_ip(np.zeros((100, 6), np.float32), cents, np.zeros((0, 2), np.uint8)).shape == (100, 0)


def test_pq_kernels_refuse_bad_input():
    cents = np.zeros((2, 16, 3), np.float32)
    lut = np.zeros((1, 2, 16), np.float32)
    with pytest.raises(DTypeError, match="uint8"):
        K.pq_adc(lut, np.zeros((3, 2), np.int64))
    with pytest.raises(DimensionMismatchError, match="sub-codes"):
        K.pq_adc(lut, np.zeros((3, 3), np.uint8))
    with pytest.raises(InvalidInputError, match="only 16 centroids"):
        K.pq_adc(lut, np.full((3, 2), 16, np.uint8))  # would read past the table
    with pytest.raises(InvalidInputError, match="only 16 centroids"):
        K.pq_decode(cents, np.full((1, 2), 200, np.uint8))
    with pytest.raises(DimensionMismatchError, match="centroids cover"):
        K.pq_lut(np.zeros((1, 7), np.float32), cents)


# ---- Hamming ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("nbytes", [1, 3, 5, 8, 16, 24])  # uint64 path when nbytes % 8 == 0, else bytes
def test_hamming_matches_reference(nbytes, tiny_blocks):
    rng = _rng(nbytes)
    q = rng.integers(0, 256, size=(9, nbytes), dtype=np.uint8)
    c = rng.integers(0, 256, size=(333, nbytes), dtype=np.uint8)
    out = K.hamming(q, c)
    assert out.dtype == np.int32 and out.shape == (9, 333)
    np.testing.assert_array_equal(out, R.hamming_reference(q, c))
    np.testing.assert_array_equal(K.hamming(c[:4], c[:4]).diagonal(), 0)
    assert K.hamming(q[:1], ~q[:1]).item() == 8 * nbytes


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 6), st.integers(0, 40), st.integers(1, 20), st.integers(0, 2**32 - 1))
def test_hamming_property(nq, n, nbytes, seed):
    rng = _rng(seed)
    q = rng.integers(0, 256, size=(nq, nbytes), dtype=np.uint8)
    c = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    np.testing.assert_array_equal(K.hamming(q, c), R.hamming_reference(q, c).reshape(nq, n))


def test_hamming_handles_non_contiguous_views():
    rng = _rng(5)
    big = rng.integers(0, 256, size=(50, 32), dtype=np.uint8)
    q, c = big[::3, :16], big[1::2, 16:]
    np.testing.assert_array_equal(K.hamming(q, c), R.hamming_reference(q, c))


def test_hamming_refuses_bad_input():
    with pytest.raises(DimensionMismatchError, match="bytes"):
        K.hamming(np.zeros((1, 8), np.uint8), np.zeros((2, 16), np.uint8))
    with pytest.raises(DTypeError, match="uint8"):
        K.hamming(np.zeros((1, 8), np.int8), np.zeros((2, 8), np.uint8))


# ---- scalar quantisation ----------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 7, 32, 33])
def test_int4_pack_unpack_match_references(d):
    rng = _rng(d)
    values = rng.integers(0, 16, size=(41, d), dtype=np.uint8)
    packed = K.pack_int4(values)
    assert packed.shape == (41, (d + 1) // 2)
    np.testing.assert_array_equal(packed, R.pack_int4_reference(values))
    unpacked = K.unpack_int4(packed, d)
    assert unpacked.flags.c_contiguous
    np.testing.assert_array_equal(unpacked, values)
    np.testing.assert_array_equal(unpacked, R.unpack_int4_reference(packed, d))
    # low nibble first
    assert K.pack_int4(np.array([[1, 2, 3]], np.uint8)).tolist() == [[0x21, 0x03]]


@pytest.mark.parametrize("d", [1, 8, 31, 32])
def test_sq_dot_and_sq4_dot_match_references(d, tiny_blocks):
    rng = _rng(d)
    qs = rng.normal(size=(6, d)).astype(np.float32)
    codes8 = rng.integers(0, 256, size=(257, d), dtype=np.uint8)
    out = K.sq_dot(qs, codes8)
    assert out.dtype == np.float32 and out.shape == (6, 257)
    np.testing.assert_allclose(out, R.sq_dot_reference(qs, codes8), rtol=1e-5, atol=1e-3)
    packed = K.pack_int4(rng.integers(0, 16, size=(257, d), dtype=np.uint8))
    if d % 2:
        packed[:, -1] |= 0xF0  # garbage in the pad nibble must not count
    np.testing.assert_allclose(K.sq4_dot(qs, packed), R.sq4_dot_reference(qs, packed), rtol=1e-5, atol=1e-4)


def test_sq_kernels_refuse_bad_input():
    with pytest.raises(DimensionMismatchError, match="dimensions"):
        K.sq_dot(np.zeros((1, 4), np.float32), np.zeros((2, 5), np.uint8))
    with pytest.raises(DimensionMismatchError, match="need 3 bytes"):
        K.sq4_dot(np.zeros((1, 5), np.float32), np.zeros((2, 2), np.uint8))
    with pytest.raises(DimensionMismatchError, match="need 2 bytes"):
        K.unpack_int4(np.zeros((2, 3), np.uint8), 4)
    with pytest.raises(DTypeError, match="uint8"):
        K.sq_dot(np.zeros((1, 4), np.float32), np.zeros((2, 4), np.float32))


# ---- sign bits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [8, 64, 136])
def test_signs_dot_matches_reference(b, tiny_blocks):
    rng = _rng(b)
    proj = rng.normal(size=(5, b)).astype(np.float32)
    codes = rng.integers(0, 256, size=(99, b // 8), dtype=np.uint8)
    np.testing.assert_allclose(K.signs_dot(proj, codes), R.signs_dot_reference(proj, codes), rtol=1e-5, atol=1e-4)
    # all-ones code: every sign +1
    ones = np.full((1, b // 8), 255, np.uint8)
    np.testing.assert_allclose(K.signs_dot(proj, ones)[:, 0], proj.sum(axis=1), rtol=1e-5, atol=1e-4)
    with pytest.raises(DimensionMismatchError, match="bits"):
        K.signs_dot(proj, codes[:, :-1])
