"""Fused score + top-K scans (reelpack.kernels.scan) against plain NumPy oracles, and their input checks."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelpack.codecs import make_codec
from reelpack.errors import DimensionMismatchError, DTypeError, InvalidInputError, InvalidKError, NonFiniteError
from reelpack.kernels import scan, simd, topk
from reelpack.kernels._reference import (
    hamming_reference,
    pq_adc_reference,
    pq_decode_reference,
    pq_lut_reference,
    topk_reference,
)
from reelpack.kernels.dense import pack_int4, pair_tables, pq_decode, sq_decode
from reelpack.search import make_scanner

RNG = np.random.default_rng(7)


def _pq_problem(n: int, m: int, ksub: int, dsub: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((m, ksub, dsub)).astype(np.float32)
    codes = rng.integers(0, ksub, (n, m), dtype=np.uint8)
    queries = rng.standard_normal((3, m * dsub)).astype(np.float32)
    return centroids, codes, queries


def _exact_pq(queries, centroids, codes, k):
    scores = pq_adc_reference(pq_lut_reference(queries, centroids), codes)
    return topk_reference(scores, k)


# ---- 8-bit PQ ------------------------------------------------------------------------------------
@pytest.mark.parametrize("simd_flag", [False, True])
@pytest.mark.parametrize("n", [1, 64, 1031, 5000])
def test_pq_search_equals_exact_adc(simd_flag, n):
    centroids, codes, queries = _pq_problem(n, 8, 256)
    k = min(10, n)
    ids, vals = scan.pq_search(queries, centroids, codes, k, simd=simd_flag)
    ref_ids, ref_vals = _exact_pq(queries, centroids, codes, k)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(vals, ref_vals, rtol=1e-5, atol=1e-5)


def test_pq_search_blocks_and_small_codebooks():
    centroids, codes, queries = _pq_problem(3000, 4, 40)
    blocks = scan.PQ8Blocks.from_codes(codes)
    np.testing.assert_array_equal(blocks.codes(np.array([0, 63, 64, 2999])), codes[[0, 63, 64, 2999]])
    ids, _ = scan.pq_search(queries, centroids, blocks, 20)
    np.testing.assert_array_equal(ids, _exact_pq(queries, centroids, codes, 20)[0])
    bad = codes.copy()
    bad[5, 1] = 40
    with pytest.raises(InvalidInputError):
        scan.pq_search(queries, centroids, bad, 5)


@pytest.mark.skipif(not simd.HAS_VBMI, reason="needs AVX-512 VBMI")
def test_pq8_block_sums_quantised_tables():
    rng = np.random.default_rng(1)
    m = 5
    codes = rng.integers(0, 256, (64, m), dtype=np.uint8)
    qlut = rng.integers(0, 256, (m, 256), dtype=np.uint8)
    blocks = scan.PQ8Blocks.from_codes(codes).data
    out = np.zeros(64, np.uint16)
    import numba

    @numba.njit
    def run(blocks, qlut, out, floor):
        return simd.pq8_block(blocks, 0, qlut, m, out, 0, floor)

    expect = qlut[np.arange(m)[None, :], codes].astype(np.int64).sum(axis=1)
    floor = int(np.sort(expect)[-7])
    mask = run(blocks, qlut.reshape(-1), out, np.uint16(floor))
    np.testing.assert_array_equal(out, expect)
    assert [int(b) for b in format(int(mask), "064b")[::-1]] == list((expect >= floor).astype(int))


# ---- 4-bit PQ (fast-scan) ------------------------------------------------------------------------
def _fs_problem(n: int, m: int = 8, seed: int = 0, ksub: int = 16):
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((m, ksub, 2)).astype(np.float32)
    sub = rng.integers(0, ksub, (n, m), dtype=np.uint8)
    queries = rng.standard_normal((2, 2 * m)).astype(np.float32)
    return centroids, sub, pack_int4(sub), queries


def _quantised_reference(query, centroids, sub):
    """Oracle of the fast-scan arithmetic: uint8 tables, one scale per query, integer sums."""
    lut = pq_lut_reference(query[None, :], centroids)[0].astype(np.float64)
    lut = np.pad(lut, ((0, 0), (0, 16 - lut.shape[1])))
    mins = lut.min(axis=1, keepdims=True)
    span = (lut - mins).max()
    scale = 255.0 / span
    qlut = np.clip(np.floor((lut - mins) * scale + 0.5), 0, 255).astype(np.int64)
    sums = qlut[np.arange(lut.shape[0])[None, :], sub].sum(axis=1)
    return sums, scale, mins.sum()


@pytest.mark.parametrize("width", [32, 64])
@pytest.mark.parametrize("simd_flag", [False, True])
@pytest.mark.parametrize("n", [7, 100, 2049])
def test_fastscan_exact_equals_exact_adc(width, simd_flag, n):
    centroids, sub, codes, queries = _fs_problem(n, seed=n)
    k = min(12, n)
    blocks = scan.FastScanBlocks.from_codes(codes, 8, width=width)
    ids, vals = scan.fastscan_search(queries, centroids, blocks, k, simd=simd_flag)
    ref = pq_adc_reference(pair_tables(pq_lut_reference(queries, centroids)), codes)
    ref_ids, ref_vals = topk_reference(ref, k)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(vals, ref_vals, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width", [32, 64])
@pytest.mark.parametrize("simd_flag", [False, True])
def test_fastscan_quantised_mode_matches_integer_oracle(width, simd_flag):
    centroids, sub, codes, queries = _fs_problem(3000, seed=3)
    blocks = scan.FastScanBlocks.from_codes(codes, 8, width=width)
    ids, vals = scan.fastscan_search(queries, centroids, blocks, 25, exact=False, simd=simd_flag)
    for i, q in enumerate(queries):
        sums, scale, bias = _quantised_reference(q, centroids, sub)
        order = np.argsort(-sums, kind="stable")[:25]  # ties (frequent in integers) go to the lower index
        np.testing.assert_array_equal(ids[i], order)
        np.testing.assert_allclose(vals[i], bias + sums[order] / scale, rtol=1e-5, atol=1e-4)


def test_fastscan_small_codebook_and_bad_nibbles():
    centroids, sub, codes, queries = _fs_problem(500, ksub=5)
    ids, _ = scan.fastscan_search(queries, centroids, codes, 10)
    full = np.zeros((8, 16, 2), np.float32)
    full[:, :5] = centroids
    ref = pq_adc_reference(pair_tables(pq_lut_reference(queries, full)), codes)
    np.testing.assert_array_equal(ids, topk_reference(ref, 10)[0])
    bad = codes.copy()
    bad[3, 0] = 0xF0
    with pytest.raises(InvalidInputError):
        scan.fastscan_search(queries, centroids, bad, 10)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 300), m=st.sampled_from([2, 4, 6]), seed=st.integers(0, 2**16), k=st.integers(1, 20))
def test_fastscan_exact_property(n, m, seed, k):
    centroids, sub, codes, queries = _fs_problem(n, m=m, seed=seed)
    k = min(k, n)
    ids, vals = scan.fastscan_search(queries[:1], centroids, codes, k)
    ref = pq_adc_reference(pair_tables(pq_lut_reference(queries[:1], centroids)), codes)
    # the k-th best exact score is reproduced; ids may differ only among exactly tied scores
    np.testing.assert_allclose(vals, topk_reference(ref, k)[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ref[0, ids[0]], vals[0], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not simd.HAS_AVX2, reason="needs AVX2")
def test_fs4_block_equals_portable_block():
    rng = np.random.default_rng(2)
    n_pairs = 6
    blocks = rng.integers(0, 256, n_pairs * 32, dtype=np.uint8)
    q = rng.integers(0, 256, (2 * n_pairs, 16), dtype=np.uint8)
    tab = np.concatenate([np.concatenate([q[2 * p], q[2 * p], q[2 * p + 1], q[2 * p + 1]]) for p in range(n_pairs)])
    out = np.zeros(32, np.uint16)
    import numba

    @numba.njit
    def run(blocks, tab, out, floor):
        return simd.fs4_block(blocks, 0, tab, 0, n_pairs, out, 0, floor)

    codes = blocks.reshape(n_pairs, 32).T  # [32 items, n_pairs bytes]
    expect = sum(q[2 * p][codes[:, p] & 15].astype(np.int64) + q[2 * p + 1][codes[:, p] >> 4] for p in range(n_pairs))
    floor = int(np.sort(expect)[-5])
    mask = run(blocks, tab, out, np.uint16(floor))
    np.testing.assert_array_equal(out, expect)
    assert [int(b) for b in format(int(mask), "064b")[::-1][:32]] == list((expect >= floor).astype(int))


def test_ctz64():
    import numba

    @numba.njit
    def run(x):
        return simd.ctz64(x)

    for x in (1, 2, 12, 1 << 40, (1 << 63) | (1 << 5)):
        assert run(np.uint64(x)) == (x & -x).bit_length() - 1


# ---- binary codes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("nbytes", [5, 8, 16, 32])
def test_hamming_search_equals_reference(nbytes):
    rng = np.random.default_rng(nbytes)
    codes = rng.integers(0, 256, (2000, nbytes), dtype=np.uint8)
    queries = rng.integers(0, 256, (3, nbytes), dtype=np.uint8)
    ids, dist = scan.hamming_search(queries, codes, 40)
    full = hamming_reference(queries, codes)
    order = np.argsort(full, axis=1, kind="stable")[:, :40]  # many ties: lower index first
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_array_equal(dist, np.take_along_axis(full, order, axis=1))
    assert dist.dtype == np.int32


@pytest.mark.parametrize("nbits", [64, 128, 72, 200])
def test_binary_ip_search_is_exact_for_the_quantised_query(nbits):
    rng = np.random.default_rng(nbits)
    nbytes = -(-nbits // 8)
    signs = rng.integers(0, 2, (1500, nbits)).astype(np.uint8)
    codes = np.packbits(signs, axis=1)
    proj = rng.standard_normal((2, nbits)).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, 1500)
    ids, vals = scan.binary_ip_search(proj, codes, 30, query_bits=6, item_scale=scale, offset=0.25)
    planes, lo, delta = scan.quantize_query_planes(proj, 6, nbytes * 8)
    for i in range(2):
        u = np.clip(np.rint((proj[i] - lo[i]) / delta[i]), 0, 63)
        qhat = lo[i] + delta[i] * u
        exact_q = 0.25 + scale * ((2.0 * signs - 1.0) @ qhat)
        np.testing.assert_allclose(vals[i], exact_q[ids[i]], rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(np.sort(ids[i]), np.sort(np.argsort(-exact_q, kind="stable")[:30]))
        # and close to the float query: |error| <= scale * delta / 2 * nbits
        float_scores = 0.25 + scale * ((2.0 * signs - 1.0) @ proj[i].astype(np.float64))
        assert np.all(np.abs(float_scores[ids[i]] - vals[i]) <= scale[ids[i]] * delta[i] / 2 * nbits + 1e-4)


# ---- scalar quantisation -------------------------------------------------------------------------
@pytest.mark.parametrize("d", [16, 33])
def test_sq_searches_equal_reference(d):
    rng = np.random.default_rng(d)
    lo = rng.standard_normal(d).astype(np.float32)
    step = rng.uniform(0.01, 0.1, d).astype(np.float32)
    values = rng.integers(0, 16, (3000, d), dtype=np.uint8)
    queries = rng.standard_normal((2, d)).astype(np.float32)
    ref = queries.astype(np.float64) @ (lo + values * step.astype(np.float64)).T
    ids8, vals8 = scan.sq8_search(queries, lo, step, values, 15)
    ids4, vals4 = scan.sq4_search(queries, lo, step, pack_int4(values), 15)
    ref_ids, ref_vals = topk_reference(ref.astype(np.float32), 15)
    for ids, vals in ((ids8, vals8), (ids4, vals4)):
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(vals, ref_vals, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sq_decode(lo, step, values), lo + values * step, rtol=1e-6)
    np.testing.assert_allclose(sq_decode(lo, step, pack_int4(values), 4), lo + values * step, rtol=1e-6)


def test_pq_decode_kernel_equals_reference():
    centroids, codes, _ = _pq_problem(777, 6, 256, dsub=3)
    np.testing.assert_array_equal(pq_decode(centroids, codes), pq_decode_reference(centroids, codes))


# ---- scanners over fitted codecs -----------------------------------------------------------------
def _data(n=4000, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, d))
    X = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, d))
    return X.astype(np.float32), rng.standard_normal((4, d)).astype(np.float32)


EXACT_SCANNERS = ["pq8", "opq8,pq8", "pq16x4", "sq8", "sq4", "simhash64-hamming", "rq4+4", "wsq8"]
APPROX_SCANNERS = ["simhash64", "rabitq", "rabitq3"]


@pytest.mark.parametrize("spec", EXACT_SCANNERS + APPROX_SCANNERS)
def test_scanner_matches_codec_ranking(spec):
    X, Q = _data()
    codec = make_codec(spec).fit(X, seed=0)
    codes = codec.encode(X)
    scanner = make_scanner(codec, codes)
    ids, vals = scanner.search(Q, 30)
    ref_ids, ref_vals = topk(codec.score(Q, codes), 30)
    if spec in EXACT_SCANNERS:
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(vals, ref_vals, rtol=1e-4, atol=1e-4)
    else:
        overlap = np.mean([len(np.intersect1d(a, b)) / 30 for a, b in zip(ids, ref_ids)])
        assert overlap >= 0.9, (spec, overlap)
    # one query at a time gives the same answer as the batch
    one_ids, one_vals = scanner.search(Q[1], 30)
    np.testing.assert_array_equal(one_ids[0], ids[1])
    assert scanner.kernel


def test_scanner_from_memmapped_pack(tmp_path):
    from reelpack.format import PackReader, write_pack

    X, Q = _data(3000)
    for spec in ("pq8", "pq16x4", "sq8"):
        codec = make_codec(spec).fit(X, seed=0)
        codes = codec.encode(X)
        path = write_pack(tmp_path / f"{spec}.rpk", np.arange(3000), [(codec, codes)], items_per_block=512)
        with PackReader(path) as reader:
            view = reader.layer_codes(0)
            assert not view.flags.owndata  # a view of the file, not a copy
            scanner = make_scanner(reader.codec(0), view)
            ids, _ = scanner.search(Q, 10)
        np.testing.assert_array_equal(ids, make_scanner(codec, codes).search(Q, 10)[0])
        if spec == "sq8":
            assert scanner.prepared_bytes == 0  # row-major kernel reads the memmap in place


def test_scanner_is_thread_safe():
    X, Q = _data(5000)
    codec = make_codec("pq16x4").fit(X, seed=0)
    scanner = make_scanner(codec, codec.encode(X))
    expect = {k: scanner.search(Q, k)[0] for k in (5, 40)}
    errors: list[str] = []

    def worker(k: int) -> None:
        for _ in range(30):
            if not np.array_equal(scanner.search(Q, k)[0], expect[k]):
                errors.append(f"k={k}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in (5, 40, 5, 40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ---- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["pq8", "pq16x4", "sq8", "sq4", "simhash64", "simhash64-hamming", "rabitq", "rq4+4"])
def test_scanner_bad_input(spec):
    X, Q = _data(500)
    codec = make_codec(spec).fit(X, seed=0)
    codes = codec.encode(X)
    with pytest.raises(DimensionMismatchError):
        make_scanner(codec, codes[:, :-1])
    with pytest.raises(DTypeError):
        make_scanner(codec, codes.astype(np.float32))
    scanner = make_scanner(codec, codes)
    with pytest.raises(DimensionMismatchError):
        scanner.search(Q[:, :-1], 5)
    bad = Q.copy()
    bad[2, 3] = np.nan
    with pytest.raises(NonFiniteError):
        scanner.search(bad, 5)
    with pytest.raises(InvalidKError):
        scanner.search(Q, 0)
    with pytest.raises(InvalidKError):
        scanner.search(Q, 501)
    assert scanner.search(Q, 500)[0].shape == (4, 500)  # K = n is allowed


def test_kernel_bad_input():
    centroids, codes, queries = _pq_problem(100, 4, 256)
    with pytest.raises(DimensionMismatchError):
        scan.pq_search(queries, centroids, codes[:, :3], 5)
    with pytest.raises(DimensionMismatchError):
        scan.pq_search(queries[:, :5], centroids, codes, 5)
    with pytest.raises(NonFiniteError):
        scan.pq_search(np.full_like(queries, np.inf), centroids, codes, 5)
    with pytest.raises(InvalidKError):
        scan.pq_search(queries, centroids, codes, 101)
    with pytest.raises(DimensionMismatchError):
        scan.fastscan_search(queries, np.zeros((3, 16, 2), np.float32), codes, 5)  # odd m
    with pytest.raises(DimensionMismatchError):
        scan.hamming_search(codes[:1, :3], codes, 5)
    with pytest.raises(DTypeError):
        scan.hamming_search(codes[:1].astype(np.int64), codes, 5)
    with pytest.raises(InvalidInputError):
        scan.binary_ip_search(queries[:, :8], codes, 5, query_bits=0)
    with pytest.raises(DimensionMismatchError):
        scan.binary_ip_search(np.zeros((1, 40), np.float32), codes, 5)  # 40 > 32 bits per code
    with pytest.raises(DimensionMismatchError):
        scan.sq8_search(queries, np.zeros(8), np.ones(8), codes, 5)
    with pytest.raises(InvalidInputError):
        scan.FastScanBlocks.from_codes(codes, 8, width=48)
