"""CountSketch: hashing structure, unbiasedness over seeds, byte quantisation of the buckets."""

from __future__ import annotations

import numpy as np
import pytest

from reelpack.codecs import codec_from_bytes, make_codec
from reelpack.codecs.base import pack_state, unpack_state
from reelpack.errors import CodecSpecError, NotFittedError, SerializationError


def test_sketch_and_decode_follow_the_hash(contract_data):
    c = make_codec("countsketch16").fit(contract_data["train"], seed=2)
    assert c.bucket.shape == (32,) and c.bucket.dtype == np.int32
    assert set(np.unique(c.sign)) <= {-1, 1}
    X = contract_data["items"][:10].astype(np.float64)
    expected = np.zeros((10, 16))
    for j in range(32):
        expected[:, c.bucket[j]] += c.sign[j] * X[:, j]
    np.testing.assert_allclose(c.sketch(X), expected, rtol=1e-5, atol=1e-5)
    codes = c.encode(X)
    v_hat = c.lo + codes * c.step
    np.testing.assert_allclose(c.decode(codes), v_hat[:, c.bucket] * c.sign, rtol=1e-6)


def test_bucket_values_within_half_a_step(contract_data):
    c = make_codec("countsketch16").fit(contract_data["train"], seed=0)
    V = c.sketch(contract_data["train"])
    v_hat = c.lo + c.encode(contract_data["train"]) * c.step
    assert (np.abs(v_hat - V) <= c.step / 2 * (1 + 1e-5) + 1e-5).all()


def test_unbiased_over_seeds():
    # E over the hash of s_j * CS(x)_{h(j)} is x_j, and of CS(q).CS(x) is q.x
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 24)).astype(np.float32)
    q = rng.normal(size=(1, 24)).astype(np.float32)
    n_seeds = 600
    recon = np.zeros(24)
    dots = np.zeros(n_seeds)
    for seed in range(n_seeds):
        c = make_codec("countsketch8").fit(x, seed=seed)
        v = c.sketch(x)[0]
        recon += v[c.bucket] * c.sign
        dots[seed] = c.sketch(q)[0] @ v
    recon /= n_seeds
    # per coordinate, the noise is the sum of ~24/8 colliding terms: sd <= |x| / sqrt(8 * n_seeds)
    tol = 4 * np.linalg.norm(x) / np.sqrt(8 * n_seeds)
    assert np.abs(recon - x[0]).max() < tol
    assert abs(dots.mean() - float(q[0] @ x[0])) < 4 * dots.std() / np.sqrt(n_seeds)


def test_more_buckets_than_dimensions_leaves_empty_buckets_constant():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 6)).astype(np.float32)
    with np.errstate(all="raise"):
        c = make_codec("countsketch32").fit(X, seed=0)
        codes = c.encode(X)
        scores = c.score(X[:4], codes)
    empty = np.setdiff1d(np.arange(32), c.bucket)
    assert len(empty) >= 26
    assert (c.step[empty] == 0).all() and (codes[:, empty] == 0).all()
    np.testing.assert_allclose(scores, X[:4] @ c.decode(codes).T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec", ["countsketch0", "countsketch70000"])
def test_bucket_count_limits(spec):
    with pytest.raises(CodecSpecError, match="1..65536"):
        make_codec(spec)


def test_sketch_needs_fit():
    with pytest.raises(NotFittedError):
        make_codec("countsketch8").sketch(np.ones((1, 4)))


@pytest.mark.parametrize(
    "name,value,match",
    [
        ("bucket", lambda a: a + 100, "outside"),
        ("sign", lambda a: a * 2, "signs"),
        ("step", lambda a: -a - 1, "negative"),
        ("lo", lambda a: a[:-1], "shape"),
        ("bucket", lambda a: a.astype(np.int64), "dtype"),
    ],
)
def test_inconsistent_state_is_refused(contract_data, name, value, match):
    c = make_codec("countsketch16").fit(contract_data["train"], seed=0)
    spec, dim, meta, arrays = unpack_state(c.to_bytes())
    arrays[name] = value(arrays[name])
    with pytest.raises(SerializationError, match=match):
        codec_from_bytes(pack_state(spec, dim, meta, arrays))
