"""Scalar quantisers (sq8, sq4, percentile calibration) and fp16: error bounds, layout, properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from reelpack.codecs import codec_from_bytes, make_codec
from reelpack.codecs.scalar import ScalarQuantizer
from reelpack.errors import CodecSpecError, UnknownCodecError

# ---- error bounds -------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["sq8", "sq4"])
def test_error_at_most_half_a_step_inside_the_range(spec, make_clustered):
    X = make_clustered(2000, 33, seed=3)  # odd d exercises the sq4 pad nibble
    codec = make_codec(spec).fit(X[:1000])
    Y = X[1000:]
    inside = (Y >= codec.lo) & (Y <= codec.lo + codec.step * codec.levels)
    err = np.abs(codec.decode(codec.encode(Y)) - Y)
    bound = codec.step / 2 * (1 + 1e-5) + 1e-6 * np.abs(Y)
    assert inside.mean() > 0.95
    assert (err <= bound)[inside].all()
    # the training set lies inside its own min/max range
    Xt = X[:1000]
    assert (np.abs(codec.decode(codec.encode(Xt)) - Xt) <= codec.step / 2 * (1 + 1e-5) + 1e-6 * np.abs(Xt)).all()


def test_sq8_step_is_range_over_255_and_sq4_over_15(make_clustered):
    X = make_clustered(500, 8, seed=4)
    for bits, levels in ((8, 255), (4, 15)):
        c = ScalarQuantizer(bits).fit(X)
        np.testing.assert_allclose(c.step, (X.max(0) - X.min(0)) / levels, rtol=1e-6)
        np.testing.assert_array_equal(c.lo, X.min(0))


def test_out_of_range_values_are_clipped():
    X = np.array([[0.0, -1.0], [1.0, 1.0]], np.float32)
    c = make_codec("sq8").fit(X)
    codes = c.encode(np.array([[5.0, -7.0], [-3.0, 0.5]], np.float32))
    assert codes.tolist() == [[255, 0], [0, 191]]  # 0.5 sits at 191.25 on dim 1's grid
    np.testing.assert_allclose(c.decode(codes)[0], [1.0, -1.0])


def test_fp16_relative_error(make_clustered):
    X = make_clustered(500, 16, seed=5) * 100
    c = make_codec("fp16").fit(X)
    rel = np.abs(c.decode(c.encode(X)) - X) / np.maximum(np.abs(X), 1e-3)
    assert rel.max() <= 1e-3


# ---- constant dimensions and percentile calibration ---------------------------------------------------


@pytest.mark.parametrize("spec", ["sq8", "sq4", "sq8-p99.9"])
def test_constant_dimensions_do_not_divide_by_zero(spec):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5)).astype(np.float32)
    X[:, 1] = 3.25
    X[:, 4] = 0.0
    with np.errstate(all="raise"):
        c = make_codec(spec).fit(X)
        codes = c.encode(X)
        dec = c.decode(codes)
        scores = c.score(X[:3], codes)
    assert c.step[1] == 0 and c.step[4] == 0
    np.testing.assert_array_equal(dec[:, 1], 3.25)
    np.testing.assert_array_equal(dec[:, 4], 0.0)
    assert np.isfinite(scores).all()
    # a value off the constant decodes to the constant (clipped)
    Y = X[:2].copy()
    Y[:, 1] = 100.0
    np.testing.assert_array_equal(c.decode(c.encode(Y))[:, 1], 3.25)


def test_percentile_calibration_clips_outliers():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20000, 4)).astype(np.float32)
    X[0] = 1000.0  # one huge outlier row
    plain = make_codec("sq8").fit(X)
    robust = make_codec("sq8-p99.9").fit(X)
    np.testing.assert_allclose(robust.lo, np.percentile(X, 0.1, axis=0), rtol=1e-5)
    np.testing.assert_allclose(robust.lo + 255 * robust.step, np.percentile(X, 99.9, axis=0), rtol=1e-5)
    body = X[1:]
    err_plain = np.abs(plain.decode(plain.encode(body)) - body).mean()
    err_robust = np.abs(robust.decode(robust.encode(body)) - body).mean()
    assert err_robust < err_plain / 20


@pytest.mark.parametrize(
    "spec,canonical",
    [
        ("sq8-p99.9", "sq8-p99.9"),
        ("SQ4-P99.90", "sq4-p99.9"),
        ("sq8-p100", "sq8-p100"),
        ("sq8-p100.0", "sq8-p100"),
        ("sq4-p75.125", "sq4-p75.125"),
        ("sq8-p099.5", "sq8-p99.5"),
    ],
)
def test_percentile_specs_round_trip(spec, canonical):
    c = make_codec(spec)
    assert c.spec == canonical
    assert make_codec(c.spec).spec == c.spec


@given(st.floats(min_value=50.0, max_value=100.0, exclude_min=True))
def test_any_percentile_spec_round_trips(p):
    c = ScalarQuantizer(8, p)
    assert make_codec(c.spec).spec == c.spec
    assert make_codec(c.spec).percentile == c.percentile


@pytest.mark.parametrize("spec", ["sq8-p50", "sq8-p100.5", "sq8-p0"])
def test_bad_percentiles_are_refused(spec):
    with pytest.raises(CodecSpecError, match=r"percentile must be in \(50, 100\]"):
        make_codec(spec)


@pytest.mark.parametrize("spec", ["sq2", "sq16", "sq8-p", "sq8-99", "sq8p99"])
def test_malformed_sq_specs(spec):
    with pytest.raises(UnknownCodecError, match="unknown codec spec"):
        make_codec(spec)


# ---- sq4 nibble layout --------------------------------------------------------------------------------


def test_sq4_nibble_order_low_nibble_first():
    # dims 0..4 (odd d): calibrated to [0, 15] so codes equal the values
    X = np.array([[0, 0, 0, 0, 0], [15, 15, 15, 15, 15]], np.float32)
    c = make_codec("sq4").fit(X)
    codes = c.encode(np.array([[1, 2, 3, 4, 5]], np.float32))
    assert codes.shape == (1, 3)
    assert codes[0].tolist() == [0x21, 0x43, 0x05]  # dim 2j low nibble, dim 2j+1 high; pad nibble 0
    # the pad nibble is ignored on decode
    dirty = codes.copy()
    dirty[0, 2] |= 0xF0
    np.testing.assert_array_equal(c.decode(dirty), c.decode(codes))
    np.testing.assert_array_equal(c.score(X, dirty), c.score(X, codes))


# ---- hypothesis round trips ---------------------------------------------------------------------------

_finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 9)), elements=_finite),
    st.sampled_from(["sq8", "sq4", "sq8-p99.9"]),
)
def test_scalar_round_trip_properties(X, spec):
    c = make_codec(spec).fit(X)
    codes = c.encode(X)
    dec = c.decode(codes)
    assert codes.shape == (X.shape[0], c.bytes_per_vector)
    assert np.isfinite(dec).all()
    # stable under re-encoding, and serialisation keeps codes
    assert np.array_equal(c.encode(dec), codes)
    assert np.array_equal(codec_from_bytes(c.to_bytes()).encode(X), codes)
    # decoded values stay inside the calibrated range; error <= step/2 (+ float32 rounding) inside it
    hi = c.lo + c.step * c.levels
    assert ((dec >= c.lo - 1e-3 * (1 + np.abs(c.lo))) & (dec <= hi + 1e-3 * (1 + np.abs(hi)))).all()
    inside = (X >= c.lo) & (X <= hi)
    slack = 1e-6 * (np.abs(X) + np.abs(c.lo) + 1.0)
    assert (np.abs(dec - X) <= c.step / 2 + slack)[inside].all()


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(0, 30), st.integers(1, 9)), elements=_finite))
def test_fp16_round_trip_properties(X):
    c = make_codec("fp16").fit(np.ones((1, X.shape[1]), np.float32))
    codes = c.encode(X)
    dec = c.decode(codes)
    assert np.array_equal(c.encode(dec), codes)
    big = np.abs(X) > 65504
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(dec[~big], X.astype(np.float16).astype(np.float32)[~big])
    assert (np.abs(dec[~big] - X[~big]) <= np.maximum(np.abs(X[~big]) * 2**-11, 2**-24)).all()
    assert (np.abs(dec[big]) == 65504).all()


@pytest.mark.parametrize("spec", ["sq8", "sq4"])
def test_tiny_range_far_from_zero_stays_stable(spec):
    # a range of 1e-3 around 1e6 is finer than float32 can resolve: the step widens instead
    X = (1e6 + np.linspace(0.0, 1e-3, 50, dtype=np.float64)[:, None] * np.ones((1, 3))).astype(np.float32)
    X[:, 2] = np.linspace(-1e6, -1e6 + 40, 50)
    c = make_codec(spec).fit(X)
    codes = c.encode(X)
    dec = c.decode(codes)
    assert np.array_equal(c.encode(dec), codes)
    assert (np.abs(dec - X) <= c.step / 2 + 1e-6 * np.abs(X)).all()


# ---- quality against faiss's scalar quantisers at equal bytes -----------------------------------------


@pytest.mark.parametrize("spec,qtype", [("sq8", "QT_8bit"), ("sq4", "QT_4bit"), ("fp16", "QT_fp16")])
def test_quality_vs_faiss_scalar_quantizer(spec, qtype, make_clustered):
    import faiss

    from reelpack.kernels import topk

    d = 32
    X = make_clustered(5200, d, n_clusters=64, seed=12)
    train, base, queries = X[:2000], X[2000:5000], X[5000:]
    truth = topk(queries @ base.T, 10)[0]
    codec = make_codec(spec).fit(train)
    index = faiss.IndexScalarQuantizer(d, getattr(faiss.ScalarQuantizer, qtype), faiss.METRIC_INNER_PRODUCT)
    index.train(train)
    index.add(base)
    assert index.sa_code_size() == codec.bytes_per_vector

    def recall(ids):
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)])

    codes = codec.encode(base)
    ours = recall(topk(codec.score(queries, codes), 10)[0])
    theirs = recall(index.search(queries, 10)[1])
    assert ours >= theirs - 0.02, (ours, theirs)
    our_mse = ((codec.decode(codes) - base) ** 2).sum(1).mean()
    their_mse = ((index.sa_decode(index.sa_encode(base)) - base) ** 2).sum(1).mean()
    assert our_mse <= 1.05 * their_mse + 1e-9, (our_mse, their_mse)
