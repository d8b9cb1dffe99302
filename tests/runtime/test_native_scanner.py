"""The C runtime's scanners against the numba scanners and ``codec.score``: same codec bytes, same codes.

Tolerances: identical top-K ids everywhere; scores bit for bit equal for the table (ADC) families (pq, 4-bit pq
with exact rescoring, apq) and hamming, whose C arithmetic follows the numba kernels' order; within 1e-5 of the
largest |score| for the dense float families (float32, fp16, sq, rq), opq, simhash and rabitq, where numba
(fastmath) or BLAS (the query rotation or projection) sum in another order.
"""

from __future__ import annotations

import numpy as np
import pytest

from reelpack.codecs import make_codec
from reelpack.errors import (
    DimensionMismatchError,
    InvalidInputError,
    InvalidKError,
    NonFiniteError,
    PackFormatError,
    ChecksumError,
    UnsupportedFeatureError,
)
from reelpack.format.refine import encode_refine_frame
from reelpack.search import make_scanner
from reelpack.search.native import NativeScanner, native_refine

D, N, Q, K = 32, 3000, 6, 50
EXACT = {"pq8", "pq16", "pq16x4", "pq8x4", "apq8", "simhash128-hamming"}
SPECS = ["float32", "fp16", "sq8", "sq4", "sq8-p99.9", "pq8", "pq16", "pq16x4", "pq8x4", "opq8,pq8", "apq8",
         "opq8,apq8", "rq4+4", "rq4+4-b", "rq4+4-r-b", "simhash64", "simhash128-hamming", "rabitq", "rabitq4"]  # fmt: skip


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, D)).astype(np.float32)
    X = centers[rng.integers(0, 20, N)] + 0.4 * rng.normal(size=(N, D)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    queries = rng.normal(size=(Q, D)).astype(np.float32)
    return X.astype(np.float32), queries


X, QUERIES = _data()


@pytest.fixture(scope="module")
def fitted():
    """spec -> (codec, codes), each codec fitted once for the module."""
    out = {}
    for spec in SPECS:
        codec = make_codec(spec).fit(X, seed=1)
        out[spec] = (codec, codec.encode(X))
    return out


def _close(spec: str, a: np.ndarray, b: np.ndarray) -> None:
    if spec in EXACT:
        np.testing.assert_array_equal(a, b)
    else:
        scale = float(np.abs(b).max()) or 1.0
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("spec", SPECS)
def test_scanner_equals_numba_scanner(rt, fitted, spec):
    codec, codes = fitted[spec]
    native = make_scanner(codec, codes, backend="native")
    assert isinstance(native, NativeScanner) and native.kernel.startswith("native-")
    ids, scores = native.search(QUERIES, K)
    ref_ids, ref_scores = make_scanner(codec, codes).search(QUERIES, K)
    np.testing.assert_array_equal(ids, ref_ids)
    _close(spec, scores, ref_scores)


@pytest.mark.parametrize("spec", SPECS)
def test_every_code_path_gives_the_same_ranking(rt, fitted, spec):
    codec, codes = fitted[spec]
    rt.set_kernel("auto")
    auto = NativeScanner(codec, codes, runtime=rt).search(QUERIES, K)
    rt.set_kernel("portable")
    assert rt.kernel == "portable"
    portable = NativeScanner(codec, codes, runtime=rt).search(QUERIES, K)
    np.testing.assert_array_equal(auto[0], portable[0])
    _close(spec, auto[1], portable[1])


@pytest.mark.parametrize("spec", SPECS)
def test_codec_score_equals_python(rt, fitted, spec):
    from reelpack.search.native import _NativeCodec  # the module's own helper

    codec, codes = fitted[spec]
    native = _NativeCodec(rt, codec.to_bytes())
    assert (native.spec, native.dim, native.bytes_per_vector) == (codec.spec, D, codec.bytes_per_vector)
    for q in QUERIES[:2]:  # codec.score's own arithmetic (einsum / BLAS) sums in another order than the scanners
        _close("tolerance", native.score(q, codes[:500]), codec.score(q[None], codes[:500])[0])


def test_excluded_rows_are_never_returned(rt, fitted):
    codec, codes = fitted["pq16"]
    scanner = NativeScanner(codec, codes, runtime=rt)
    full_ids, _ = scanner.search(QUERIES[:1], 200)
    seen = np.concatenate([full_ids[0, ::3], [N + 5, -1, full_ids[0, 0]]])  # repeats and out-of-range rows too
    ids, scores = scanner.search(QUERIES[:1], K, exclude=[seen])
    scores_all = codec.score(QUERIES[:1], codes)[0]
    scores_all[np.unique(seen[(seen >= 0) & (seen < N)])] = -np.inf
    order = np.lexsort((np.arange(N), -scores_all))[:K]
    np.testing.assert_array_equal(ids[0], order)
    assert not set(ids[0].tolist()) & set(seen.tolist())


def test_exclusion_leaving_fewer_than_k_rows(rt, fitted):
    codec, codes = fitted["sq8"]
    small = codes[:10]
    ids, scores = NativeScanner(codec, small, runtime=rt).search(QUERIES[:1], 8, exclude=[np.arange(5)])
    assert sorted(ids[0, :5].tolist()) == [5, 6, 7, 8, 9]
    assert (ids[0, 5:] == -1).all() and np.isneginf(scores[0, 5:]).all()


def test_rq_stage_prefix_equals_score_prefix(rt, fitted):
    codec, codes = fitted["rq4+4-b"]
    scanner = NativeScanner(codec, codes, stages=1, runtime=rt)
    ids, scores = scanner.search(QUERIES, K)
    prefix = np.ascontiguousarray(codes[:, : codec.prefix_bytes(1)])
    ref = codec.score_prefix(QUERIES, prefix, 1)
    ref_ids = np.argsort(-ref, axis=1, kind="stable")[:, :K]
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, ref_ids, 1), atol=1e-5 * np.abs(ref).max())
    # a download of stage 0 only: the prefix bytes alone
    ids2, _ = NativeScanner(codec, prefix, stages=1, runtime=rt).search(QUERIES, K)
    np.testing.assert_array_equal(ids2, ids)


def test_approximate_fast_scan_keeps_most_of_the_exact_top_k(rt, fitted):
    codec, codes = fitted["pq16x4"]
    exact_ids, _ = NativeScanner(codec, codes, runtime=rt).search(QUERIES, K)
    approx_ids, _ = NativeScanner(codec, codes, exact=False, runtime=rt).search(QUERIES, K)
    overlap = np.mean([len(set(a) & set(b)) / K for a, b in zip(exact_ids.tolist(), approx_ids.tolist())])
    assert overlap > 0.8


# rq -pD / -n are supported since the runtime reads their projection and unit-norm rule: test_native_rq.py
@pytest.mark.parametrize("spec", ["countsketch16", "qat-pq8", "wsq8"])
def test_unsupported_family_is_named(rt, spec):
    codec = make_codec(spec).fit(X[:600], seed=0)
    with pytest.raises(UnsupportedFeatureError, match=spec.split("-")[0].rstrip("0123456789")):
        NativeScanner(codec, codec.encode(X[:600]), runtime=rt)


@pytest.mark.parametrize("spec", ["pq16", "sq8", "simhash64", "float32", "rabitq4"])
def test_bad_queries_and_k_are_typed_errors(rt, fitted, spec):
    codec, codes = fitted[spec]
    scanner = NativeScanner(codec, codes, runtime=rt)
    bad = QUERIES[:1].copy()
    bad[0, 3] = np.nan
    with pytest.raises(NonFiniteError):
        scanner.search(bad, K)
    bad[0, 3] = 1e31
    with pytest.raises(InvalidInputError, match="1e30"):
        scanner.search(bad, K)
    with pytest.raises(DimensionMismatchError):
        scanner.search(QUERIES[:, :-1], K)
    for k in (0, N + 1, -3):
        with pytest.raises(InvalidKError):
            scanner.search(QUERIES, k)


def test_bad_codes_are_refused(rt, fitted):
    codec, codes = fitted["float32"]
    bad = codes[:20].copy()
    bad[3, :4] = np.frombuffer(np.float32(np.inf).tobytes(), np.uint8)
    with pytest.raises(InvalidInputError):
        NativeScanner(codec, bad, runtime=rt)
    with pytest.raises(DimensionMismatchError):
        NativeScanner(codec, codes[:, :-1], runtime=rt)


def test_backend_option_is_checked(fitted):
    codec, codes = fitted["pq8"]
    with pytest.raises(InvalidInputError, match="backend"):
        make_scanner(codec, codes, backend="gpu")


@pytest.mark.parametrize("spec", ["pq16", "sq8", "rq4+4"])
def test_refine_frame_rescored_natively(rt, fitted, spec):
    codec, codes = fitted[spec]
    rng = np.random.default_rng(3)
    rows = np.sort(rng.choice(N, 300, replace=False))
    ids = rows * 7 + 11  # item ids of the candidates
    frame = encode_refine_frame(ids, codes[rows], layer=1)
    got_ids, got_scores = native_refine(codec, QUERIES[0], frame, 20, runtime=rt)
    ref = codec.score(QUERIES[:1], codes[rows])[0]
    order = np.lexsort((np.arange(rows.size), -ref))[:20]
    np.testing.assert_array_equal(got_ids, ids[order])
    # codec.score builds its lookup tables with BLAS, whose summation order depends on the CPU (AVX-512
    # or not), so even the table-exact families may differ from the runtime's tables by an ulp or two here
    if spec in EXACT:
        np.testing.assert_allclose(got_scores, ref[order], rtol=1e-6, atol=0)
    else:
        _close(spec, got_scores, ref[order])
    # k above the frame's count is capped; a damaged frame is refused
    assert native_refine(codec, QUERIES[0], frame, 10_000, runtime=rt)[0].shape == (300,)
    broken = bytearray(frame)
    broken[30] ^= 1
    with pytest.raises(ChecksumError):
        native_refine(codec, QUERIES[0], bytes(broken), 5, runtime=rt)
    with pytest.raises(PackFormatError):
        native_refine(codec, QUERIES[0], frame[:-3], 5, runtime=rt)
    other = make_codec("pq8").fit(X, seed=0)
    if other.bytes_per_vector != codec.bytes_per_vector:
        with pytest.raises(DimensionMismatchError):
            native_refine(other, QUERIES[0], frame, 5, runtime=rt)


def test_crc32c_matches_the_python_library(rt):
    import crc32c

    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 8, 9, 63, 64, 1000, 4099):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert rt.crc32c(data) == crc32c.crc32c(data)
        assert rt.crc32c(data[size // 2 :], rt.crc32c(data[: size // 2])) == crc32c.crc32c(data)
    assert rt.crc32c(b"123456789") == 0xE3069283


def test_one_scanner_shared_by_threads(rt, fitted):
    """NativeScanner keeps one C scanner per thread: concurrent searches give the serial results."""
    from concurrent.futures import ThreadPoolExecutor

    codec, codes = fitted["pq16x4"]
    scanner = NativeScanner(codec, codes, runtime=rt)
    queries = np.random.default_rng(9).normal(size=(64, D)).astype(np.float32)
    serial = [scanner.search(q, K) for q in queries]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda q: scanner.search(q, K), queries))
    for (a_ids, a_scores), (b_ids, b_scores) in zip(serial, threaded):
        np.testing.assert_array_equal(a_ids, b_ids)
        np.testing.assert_array_equal(a_scores, b_scores)
