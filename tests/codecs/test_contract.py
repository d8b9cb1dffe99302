"""One contract suite over every codec family: shapes, widths, stability, scoring, serialisation, bad input,
progressive stages, score bounds at their documented confidence, the codec's scanner (kind, top-K, bad input)
and ONNX export."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from reelpack.codecs import (
    GenericScanner,
    Scanner,
    available_codecs,
    codec_from_bytes,
    make_codec,
)
from reelpack.codecs.flat import FlatScanner
from reelpack.codecs.pq import FastScanScanner, PQScanner
from reelpack.codecs.rabitq import RaBitQScanner
from reelpack.codecs.scalar import SQScanner
from reelpack.codecs.simhash import SimHashScanner
from reelpack.errors import (
    DimensionMismatchError,
    DTypeError,
    EmptyInputError,
    InvalidInputError,
    InvalidKError,
    NonFiniteError,
    NotFittedError,
    UnsupportedOperationError,
)
from reelpack.kernels.dense import hamming
from reelpack.search import OnnxScorer, export_onnx, make_scanner, onnx_supported
from reelpack.search.onnx_export import SUPPORTED_FAMILIES

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
    "apq8-t0.3",
    "opq8,apq8",
    "opq8,apq8-t0.3",
    "rq4+4",
    "rq2+2-b",
    "rq4+4-b",
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
    "apq8-t0.3": 8,
    "opq8,apq8": 8,
    "opq8,apq8-t0.3": 8,
    "rq4+4": 8,
    "rq2+2-b": 6,  # one bound byte after each stage
    "rq4+4-b": 10,
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
    "apq8", "apq8-t0.3", "opq8,apq8", "opq8,apq8-t0.3", "rq4+4", "rq2+2-b", "rq4+4-b", "qat-pq8", "qat-rq4+4",
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


# ---- progressive stages -------------------------------------------------------------------------
# codecs whose code is more than one progressive stage (rabitq4: 1-bit + extended bits; rq: one stage per
# "+" group; qat-: the stages of its base)
MULTI_STAGE = {"rabitq4", "rq4+4", "rq2+2-b", "rq4+4-b", "qat-rq4+4"}


@spec_param
def test_stages_partition_the_code(spec, fitted, contract_data):
    codec = fitted(spec)
    items, queries = contract_data["items"], contract_data["queries"]
    widths = codec.stage_bytes
    assert isinstance(widths, tuple) and all(isinstance(w, int) and w >= 1 for w in widths)
    assert sum(widths) == codec.bytes_per_vector
    assert (len(widths) > 1) == (spec in MULTI_STAGE)
    for s in range(1, len(widths) + 1):
        assert codec.prefix_bytes(s) == sum(widths[:s])
    for bad in (0, len(widths) + 1, 1.0, True, None):
        with pytest.raises(InvalidInputError, match="stages must be an integer"):
            codec.prefix_bytes(bad)
    codes = codec.encode(items)
    # all stages: score_prefix is score
    assert np.array_equal(codec.score_prefix(queries, codes, len(widths)), codec.score(queries, codes))
    for s in range(1, len(widths)):
        part = codec.score_prefix(queries, codes[:, : codec.prefix_bytes(s)], s)
        assert part.dtype == np.float32 and part.shape == (len(queries), len(items)) and np.isfinite(part).all()
        with pytest.raises(DimensionMismatchError, match="bytes per vector"):
            codec.score_prefix(queries, codes, s)  # a full code is not a stage-s prefix
    if len(widths) == 1:
        with pytest.raises(InvalidInputError, match="stages"):
            codec.score_prefix(queries, codes, 2)


@pytest.mark.parametrize("spec", sorted(MULTI_STAGE))
def test_prefix_scores_are_the_documented_coarse_codes(spec, fitted, contract_data):
    codec = fitted(spec)
    items, queries = contract_data["items"], contract_data["queries"]
    codes = codec.encode(items)
    q64 = queries.astype(np.float64)
    true = q64 @ items.astype(np.float64).T
    errors = []
    for s in range(1, len(codec.stage_bytes) + 1):
        prefix = codes[:, : codec.prefix_bytes(s)]
        part = codec.score_prefix(queries, prefix, s)
        if spec.startswith("rq"):  # <q, prefix_decode_s(x)>
            expected = q64 @ codec.decode_prefix(prefix, s).astype(np.float64).T
        elif spec.startswith("qat-"):  # cosine of the prefix sum of codebook rows (one byte per codebook)
            xhat = sum(codec.codebooks[m][prefix[:, m]].astype(np.float64) for m in range(prefix.shape[1]))
            expected = q64 @ (xhat / np.linalg.norm(xhat, axis=1, keepdims=True)).T
        else:  # rabitq4: stage 1 is the 1-bit "rabitq" code of the same fit
            one_bit = make_codec("rabitq").fit(contract_data["train"], seed=0)
            if s == 1:
                assert np.array_equal(one_bit.encode(items), prefix)
                expected = one_bit.score(queries, prefix).astype(np.float64)
            else:
                expected = codec.score(queries, codes).astype(np.float64)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(part, expected, rtol=1e-4, atol=1e-5 * scale)
        errors.append(float(np.abs(part - true).mean()))
    if not spec.startswith("qat-"):  # qat scores cosines, not inner products
        assert errors[0] > errors[-1], errors  # later stages refine the estimate


# ---- score bounds -------------------------------------------------------------------------------
BOUNDED = {"rabitq", "rabitq4", "rq2+2-b", "rq4+4-b"}


@spec_param
def test_bounds_are_declared_and_shaped(spec, fitted, contract_data):
    codec = fitted(spec)
    items, queries = contract_data["items"], contract_data["queries"]
    codes = codec.encode(items)
    assert codec.has_bounds == (spec in BOUNDED)
    if not codec.has_bounds:
        with pytest.raises(UnsupportedOperationError, match="bounds"):
            codec.score_bounds(queries, codes)
        return
    for s in range(1, len(codec.stage_bytes) + 1):
        prefix = codes[:, : codec.prefix_bytes(s)]
        est, half = codec.score_bounds(queries, prefix, s, 0.9)
        assert est.dtype == half.dtype == np.float32 and est.shape == half.shape == (len(queries), len(items))
        assert np.isfinite(est).all() and (half >= 0).all()
        np.testing.assert_array_equal(est, codec.score_prefix(queries, prefix, s))
        wider = codec.score_bounds(queries, prefix, s, 0.99)[1]
        assert (wider >= half).all()  # more confidence, no narrower intervals (rq: equal once at Cauchy-Schwarz)
        if codec.family == "rabitq":
            assert (wider > half).all()
    for bad in (0.0, 1.0, -0.5, 2, True, "0.9"):
        with pytest.raises(InvalidInputError, match="confidence"):
            codec.score_bounds(queries, codes, None, bad)


ROTATIONS = 8


@pytest.mark.parametrize("spec", ["rabitq", "rabitq4"])
@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.99])
def test_rabitq_bounds_hold_at_the_documented_confidence(spec, confidence, fitted, contract_data):
    # rabitq.py: for a fixed (query, item), P(|<q, o> - est| <= half) >= confidence over the random
    # rotation, at every stage. Pooled over ROTATIONS fits x 5 queries x 300 items per stage; the slack is
    # three binomial standard deviations of that pooled frequency.
    items, queries = contract_data["items"], contract_data["queries"]
    true = queries.astype(np.float64) @ items.astype(np.float64).T
    hits = trials = 0
    for seed in range(ROTATIONS):
        codec = fitted(spec) if seed == 0 else make_codec(spec).fit(contract_data["train"], seed=seed)
        codes = codec.encode(items)
        for s in range(1, len(codec.stage_bytes) + 1):
            est, half = codec.score_bounds(queries, codes[:, : codec.prefix_bytes(s)], s, confidence)
            hits += int((np.abs(true - est) <= half).sum())
            trials += true.size
    cover = hits / trials
    assert cover >= confidence - 3 * math.sqrt(confidence * (1 - confidence) / trials), (cover, trials)
    if confidence == 0.5:
        assert cover < 0.6, cover  # and not vacuous: the 50 % interval misses about half of the pairs


@pytest.mark.parametrize("spec", ["rq2+2-b", "rq4+4-b"])
@pytest.mark.parametrize("confidence", [0.9, 0.99])
def test_rq_bounds_certain_part_covers_every_pair(spec, confidence, fitted, contract_data):
    # residual.py: half = ||q|| * bound_k * min(1, z(confidence) * calib[k] / sqrt(d)), and ||q|| * bound_k
    # (Cauchy-Schwarz with the stored residual-norm bound) holds for every pair, whatever the query
    codec = fitted(spec)
    items = contract_data["items"]
    codes = codec.encode(items)
    z = -NormalDist().inv_cdf((1 - confidence) / 2)
    for s in range(1, len(codec.stage_bytes) + 1):
        prefix = codes[:, : codec.prefix_bytes(s)]
        residual = items - codec.decode_prefix(prefix, s)
        # random queries, and the items' own residuals: the worst case, where Cauchy-Schwarz is tight
        Q = np.concatenate([contract_data["queries"], residual[:40]]).astype(np.float32)
        true = Q.astype(np.float64) @ items.astype(np.float64).T
        est, half = codec.score_bounds(Q, prefix, s, confidence)
        certain = half.astype(np.float64) / min(1.0, z * float(codec.calib[s - 1]) / math.sqrt(D))
        assert (np.abs(true - est) <= certain).all()


@pytest.mark.parametrize("spec", ["rq2+2-b", "rq4+4-b"])
@pytest.mark.parametrize("confidence", [0.9, 0.99])
def test_rq_calibrated_bounds_cover_queries_like_the_training_data(spec, confidence, fitted, contract_data,
                                                                   make_clustered):
    # residual.py: for pairs drawn like the calibration pairs (queries and items distributed like the training
    # vectors) the interval holds with probability "at least about confidence", exact at the calibrated levels
    # (0.5, 0.9, 0.99, 0.999) up to the sampling error of the quantiles measured at fit time (here on the
    # 1000-row training set). 0.015 allows that sampling error; measured: >= 0.89 at 0.9, >= 0.99 at 0.99.
    codec = fitted(spec)
    items = contract_data["items"]
    n_seen = len(contract_data["train"]) + len(items)
    queries = make_clustered(n_seen + 600, D, seed=0)[n_seen:]  # the same mixture as conftest's, unseen rows
    codes = codec.encode(items)
    true = queries.astype(np.float64) @ items.astype(np.float64).T
    for s in range(1, len(codec.stage_bytes) + 1):
        est, half = codec.score_bounds(queries, codes[:, : codec.prefix_bytes(s)], s, confidence)
        cover = float((np.abs(true - est) <= half).mean())
        assert cover >= confidence - 0.015, (s, cover)


# ---- scanners -----------------------------------------------------------------------------------
# families with a fused kernel must not fall back to GenericScanner (codec.score + top-K)
FUSED = {
    "pq8": PQScanner, "pq8x4": FastScanScanner, "opq8,pq8": PQScanner,
    "apq8": PQScanner, "apq8-t0.3": PQScanner, "opq8,apq8": PQScanner, "opq8,apq8-t0.3": PQScanner,
    "sq8": SQScanner, "sq4": SQScanner, "sq8-p99.9": SQScanner,
    "simhash64": SimHashScanner, "simhash64-hamming": SimHashScanner,
    "rabitq": RaBitQScanner, "rabitq4": RaBitQScanner,
    "float32": FlatScanner, "fp16": FlatScanner,
}  # fmt: skip
# scanners that quantise the float query to query_bits bit planes (kernels.binscan.binary_ip_search): each
# score is exact for the quantised query and within delta / 2 per code bit (times RaBitQ's item factor) of
# codec.score. rabitq4 rescores the 1-bit candidates with codec.score; with fewer items than its default
# rerank depth (1000) that is every item, so its top-k is exact.
QUERY_QUANTISED = {"simhash64", "rabitq"}


def _quantisation_slack(codec, queries: np.ndarray, codes: np.ndarray, query_bits: int) -> np.ndarray:
    """Documented bound float64 [q, n] on |scanner score - codec.score| of a bit-plane scan."""
    q64 = queries.astype(np.float64)
    if codec.family == "simhash":  # proj = scale * R q; score = proj . (2 b - 1)
        proj = float(codec.scale) * q64 @ codec.projection.astype(np.float64).T
        item = np.ones(len(codes))
    else:  # rabitq: est = <q, c> + s_t * (P q) . sign; decode = c + s_t P^T sign, so s_t = |decode_t - c| / sqrt(d)
        proj = q64 @ codec.rotation.astype(np.float64).T
        item = np.linalg.norm(codec.decode(codes).astype(np.float64) - codec.centroid, axis=1) / math.sqrt(codec.dim)
    delta = (proj.max(axis=1) - proj.min(axis=1)) / ((1 << query_bits) - 1)
    return (delta * proj.shape[1] / 2)[:, None] * item[None, :]


def test_every_family_with_a_fused_kernel_is_checked():
    assert {make_codec(s).family for s in FUSED} == {
        "pq", "opq", "apq", "opq-apq", "sq", "simhash", "rabitq", "float32", "fp16"
    }  # fmt: skip
    assert any(make_codec(s).nbits == 4 for s in FUSED if make_codec(s).family == "pq")  # 4-bit fast-scan too


@spec_param
def test_scanner_kind(spec, fitted, contract_data):
    codec = fitted(spec)
    codes = codec.encode(contract_data["items"])
    scanner = make_scanner(codec, codes)
    assert type(scanner) is type(codec.scanner(codes))
    assert isinstance(scanner, Scanner) and scanner.codec is codec
    assert scanner.n_items == len(codes) and scanner.kernel and scanner.prepared_bytes >= 0
    if spec in FUSED:
        assert type(scanner) is FUSED[spec] and not isinstance(scanner, GenericScanner), type(scanner)


@spec_param
@pytest.mark.parametrize("k", [1, 10, 300])
def test_scanner_top_k_equals_codec_scores(spec, k, fitted, contract_data):
    codec = fitted(spec)
    items, queries = contract_data["items"], contract_data["queries"]
    codes = codec.encode(items)
    scores = codec.score(queries, codes).astype(np.float64)
    expected = -np.sort(-scores, axis=1)[:, :k]
    tol = 1e-5 * np.abs(scores).max() + 1e-6
    for query_bits in (8, 16) if spec in QUERY_QUANTISED else (8,):
        ids, vals = make_scanner(codec, codes, query_bits=query_bits).search(queries, k)
        assert ids.dtype == np.int64 and vals.dtype == np.float32 and ids.shape == vals.shape == (len(queries), k)
        assert all(len(set(row)) == k for row in ids.tolist()) and ids.min() >= 0 and ids.max() < len(items)
        assert (np.diff(vals, axis=1) <= 0).all()  # best first
        slack = np.zeros_like(scores)
        if spec in QUERY_QUANTISED:
            slack = _quantisation_slack(codec, queries, codes, query_bits)
        # compare scores, not ids (ties may reorder): the k-th best of scores within e of codec.score is within e
        gap = np.abs(vals - expected)
        assert (gap <= slack.max(axis=1, keepdims=True) + tol).all(), (query_bits, gap.max())
        # and each id names an item whose codec score is the returned one
        picked = np.take_along_axis(scores, ids, axis=1)
        assert (np.abs(picked - vals) <= np.take_along_axis(slack, ids, axis=1) + tol).all(), query_bits
    # one query as a 1-D vector gives the same scores as in the batch (up to gemv / gemm rounding)
    one_ids, one_vals = make_scanner(codec, codes).search(queries[2], k)
    assert one_ids.shape == (1, k)
    np.testing.assert_allclose(one_vals[0], make_scanner(codec, codes).search(queries, k)[1][2], rtol=0, atol=tol)


@spec_param
def test_scanner_bad_input_raises_typed_errors(spec, fitted, contract_data):
    codec = fitted(spec)
    items, queries = contract_data["items"], contract_data["queries"]
    codes = codec.encode(items)
    width = codec.bytes_per_vector
    with pytest.raises(DimensionMismatchError, match=f"have {width + 1} bytes per vector"):
        make_scanner(codec, np.zeros((4, width + 1), np.uint8))
    with pytest.raises(DTypeError, match="must be uint8"):
        make_scanner(codec, codes.astype(np.float32))
    with pytest.raises(DimensionMismatchError, match="2-D"):
        make_scanner(codec, codes[0])
    with pytest.raises(EmptyInputError, match="empty"):
        make_scanner(codec, codes[:0])
    with pytest.raises(InvalidInputError, match="Codec"):
        make_scanner("pq8", codes)  # type: ignore[arg-type]
    with pytest.raises(NotFittedError, match="call fit"):
        make_scanner(make_codec(spec), codes)
    scanner = make_scanner(codec, codes)
    for bad_value, row in ((np.nan, 3), (np.inf, 0), (-np.inf, 4)):
        bad = queries.copy()
        bad[row, 7] = bad_value
        with pytest.raises(NonFiniteError, match="NaN or Inf") as info:
            scanner.search(bad, 5)
        assert info.value.rows == [row]
    with pytest.raises(NonFiniteError, match="NaN or Inf"):
        scanner.search(np.full(D, np.nan, np.float32), 5)
    for wrong in (queries[:, :-1], np.ones((2, D + 3), np.float32), np.ones(D - 1, np.float32)):
        with pytest.raises(DimensionMismatchError, match=f"dimension {wrong.shape[-1]}, expected {D}"):
            scanner.search(wrong, 5)
    with pytest.raises(DimensionMismatchError, match="2-D"):
        scanner.search(queries[None], 5)
    with pytest.raises(EmptyInputError, match="empty"):
        scanner.search(queries[:0], 5)
    with pytest.raises(DTypeError, match="dtype"):
        scanner.search(queries.astype(np.complex64), 5)
    n = len(items)
    for bad_k, words in ((0, "positive"), (-3, "positive"), (n + 1, f"larger than the catalog \\({n} items"),
                         (2.0, "integer"), (True, "integer"), ("5", "integer"), (None, "integer")):  # fmt: skip
        with pytest.raises(InvalidKError, match=words):
            scanner.search(queries, bad_k)
    assert scanner.search(queries, np.int64(n))[0].shape == (len(queries), n)  # K = n, as a numpy integer
    if spec in QUERY_QUANTISED:
        for query_bits in (0, 17):
            with pytest.raises(InvalidInputError, match="query_bits"):
                make_scanner(codec, codes, query_bits=query_bits).search(queries, 5)


def test_scanners_refuse_the_queries_codec_score_refuses(fitted, contract_data):
    huge = contract_data["queries"].copy()
    huge[1, 4] = 1e35
    accepted = []
    for spec in ALL_SPECS:
        codec = fitted(spec)
        codes = codec.encode(contract_data["items"][:50])
        with pytest.raises(InvalidInputError, match="beyond 1e30"):
            codec.score(huge, codes)
        try:
            make_scanner(codec, codes).search(huge, 5)
        except InvalidInputError as exc:
            assert "1e30" in str(exc)
        else:
            accepted.append(spec)
    assert not accepted, f"scanners of {accepted} accept queries beyond 1e30"


BAD_SCANNER_OPTIONS = [
    ("rabitq", {"query_bits": "8"}),  # TypeError from a comparison, not a reelpack error
    ("simhash64", {"query_bits": 2.5}),  # TypeError from a shift
    ("rabitq4", {"rerank": "many"}),  # a bare ValueError from int()
    ("rabitq4", {"rerank": -1}),  # silently taken as K
    ("rabitq4", {"rerank": 2.5}),  # silently truncated
]


def test_bad_scanner_options_raise_typed_errors(fitted, contract_data):
    queries = contract_data["queries"]
    untyped = []
    for spec, options in BAD_SCANNER_OPTIONS:
        codec = fitted(spec)
        codes = codec.encode(contract_data["items"])
        try:
            make_scanner(codec, codes, **options).search(queries, 5)
        except InvalidInputError:
            continue
        except Exception as exc:  # noqa: BLE001 - any other type is the failure reported below
            untyped.append((spec, options, type(exc).__name__))
        else:
            untyped.append((spec, options, "accepted"))
    assert not untyped, untyped


# ---- ONNX export --------------------------------------------------------------------------------
def test_onnx_families_are_registered_and_covered():
    families = {make_codec(s).family for s in ALL_SPECS}
    assert set(SUPPORTED_FAMILIES) <= set(available_codecs())
    assert set(SUPPORTED_FAMILIES) <= families  # every exportable family is exercised below
    for spec in ALL_SPECS:
        codec = make_codec(spec)
        assert onnx_supported(codec) == (codec.family in SUPPORTED_FAMILIES)
    assert not onnx_supported("pq8")  # type: ignore[arg-type]


@spec_param
def test_onnx_export_ranks_like_codec_score(spec, fitted, contract_data):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    codec = fitted(spec)
    items, queries = contract_data["items"], contract_data["queries"]
    codes = codec.encode(items)
    if not onnx_supported(codec):
        with pytest.raises(UnsupportedOperationError, match="no ONNX export"):
            export_onnx(codec, k=10)
        return
    k = 10
    scorer = OnnxScorer(export_onnx(codec, k=k))
    assert (scorer.spec, scorer.dim, scorer.bytes_per_vector, scorer.k) == (spec, D, codec.bytes_per_vector, k)
    ids, vals = scorer.search(queries, codes)
    scores = codec.score(queries, codes).astype(np.float64)
    expected = -np.sort(-scores, axis=1)[:, :k]
    tol = 1e-5 * np.abs(scores).max() + 1e-6
    assert ids.shape == vals.shape == (len(queries), k)
    assert (np.abs(vals - expected) <= tol).all(), np.abs(vals - expected).max()
    assert (np.abs(np.take_along_axis(scores, ids, axis=1) - vals) <= tol).all()


@spec_param
def test_weighted_fit_keeps_the_contract(spec, contract_data):
    """Every family takes row weights (training rows drawn in proportion to them): same seed, same fit; the codes
    keep their width and decode; zero-weight rows are never trained on (weights of a sample equal to the sample)."""
    train = contract_data["train"]
    w = np.ones(len(train))
    w[: len(train) // 2] = 3.0
    a = make_codec(spec).fit(train, seed=0, weights=w)
    b = make_codec(spec).fit(train, seed=0, weights=w)
    assert a.to_bytes() == b.to_bytes()
    codes = a.encode(contract_data["items"])
    assert codes.shape == (len(contract_data["items"]), EXPECTED_BYTES[spec])
    assert np.all(np.isfinite(a.decode(codes)))
    with pytest.raises(DimensionMismatchError, match="weights has 3 values"):
        make_codec(spec).fit(train, weights=np.ones(3))
