"""Anisotropic (score-aware) PQ: spec grammar, training behaviour, the loss trade-off against plain PQ, state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelpack.codecs import codec_from_bytes, make_codec
from reelpack.codecs.anisotropic import (
    AnisotropicPQ,
    _assign,
    _update_codebooks,
    anisotropic_eta,
    anisotropic_loss,
)
from reelpack.codecs.base import pack_state, unpack_state
from reelpack.codecs.pq import pq_assign
from reelpack.errors import (
    CodecSpecError,
    DimensionMismatchError,
    InvalidInputError,
    SerializationError,
    UnknownCodecError,
)
from reelpack.kernels.dense import pq_decode

D, M = 32, 8
T_STRONG = 0.4  # eta = 31 * 0.16 / 0.84 = 5.9 at d = 32: a clear trade-off


@pytest.fixture(scope="module")
def unit_data(make_clustered):
    """Unit-norm clustered rows float32 [2000, 32] (like two-tower item embeddings)."""
    X = make_clustered(2000, D, n_clusters=32, seed=5)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def trained(unit_data):
    return {
        "pq": make_codec(f"pq{M}").fit(unit_data, seed=0),
        "apq": make_codec(f"apq{M}-t{T_STRONG}").fit(unit_data, seed=0),
        "apq_default": make_codec(f"apq{M}").fit(unit_data, seed=0),
    }


def _reconstruct(codec, X):
    return codec.decode(codec.encode(X)).astype(np.float64)


# ---- spec grammar -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, canonical, m, threshold, rotate",
    [
        ("apq16", "apq16", 16, 0.2, False),
        ("apq16-t0.2", "apq16", 16, 0.2, False),
        ("APQ8-T0.3", "apq8-t0.3", 8, 0.3, False),
        ("apq4-t.5", "apq4-t0.5", 4, 0.5, False),
        ("apq4-t0.30", "apq4-t0.3", 4, 0.3, False),
        ("apq4-t5e-05", "apq4-t5e-05", 4, 5e-05, False),
        ("opq16,apq16", "opq16,apq16", 16, 0.2, True),
        ("opq8,apq8-t0.25", "opq8,apq8-t0.25", 8, 0.25, True),
    ],
)
def test_spec_parsing_and_round_trip(spec, canonical, m, threshold, rotate):
    c = make_codec(spec)
    assert isinstance(c, AnisotropicPQ)
    assert (c.m, c.threshold, c.rotate) == (m, threshold, rotate)
    assert c.spec == canonical
    assert make_codec(c.spec).spec == c.spec
    assert c.family == ("opq-apq" if rotate else "apq")


@pytest.mark.parametrize("spec", ["apq16-t0", "apq16-t1", "apq16-t1.5", "apq16-t0.0", "apq16-t100"])
def test_threshold_out_of_range(spec):
    with pytest.raises(CodecSpecError, match=r"threshold T must be in \(0, 1\)"):
        make_codec(spec)


@pytest.mark.parametrize("spec", ["apq0", "apq5000"])
def test_m_out_of_range(spec):
    with pytest.raises(CodecSpecError, match="1..4096"):
        make_codec(spec)


def test_opq_m_must_equal_apq_m():
    with pytest.raises(CodecSpecError, match="must equal the APQ's M"):
        make_codec("opq8,apq16")


@pytest.mark.parametrize("spec", ["apq", "apq16-", "apq16-t", "apq16-t-0.2", "apq16t0.2", "apq16,apq16", "apq16-x0.2"])
def test_malformed_specs(spec):
    with pytest.raises(UnknownCodecError):
        make_codec(spec)


def test_dimension_must_be_divisible():
    X = np.random.default_rng(0).normal(size=(300, 30)).astype(np.float32)
    with pytest.raises(DimensionMismatchError, match=r"apq8 needs a dimension divisible by 8, got d=30"):
        make_codec("apq8").fit(X)
    with pytest.raises(DimensionMismatchError, match="divisible by 8"):
        make_codec("opq8,apq8").fit(X)


def test_too_few_training_rows():
    X = np.random.default_rng(0).normal(size=(255, 16)).astype(np.float32)
    with pytest.raises(InvalidInputError, match=r"apq4 needs at least 256 training rows \(one per centroid\), got 255"):
        make_codec("apq4").fit(X)


# ---- the loss and its weight ------------------------------------------------------------------------


def test_eta_matches_the_paper_for_unit_norm():
    d = 64
    for T in (0.1, 0.2, 0.5):
        np.testing.assert_allclose(anisotropic_eta(np.ones(3), d, T), (d - 1) * T**2 / (1 - T**2))
    # T is measured against |x|: doubling the norm and the scale leaves eta unchanged
    np.testing.assert_allclose(anisotropic_eta(np.array([2.0]), d, 0.2, 2.0), anisotropic_eta(np.ones(1), d, 0.2))
    eta = anisotropic_eta(np.array([0.0, 0.01, 0.5, 3.0]), d, 0.2)
    assert eta[0] == 1.0  # zero rows: isotropic
    assert np.isclose(eta[1], (d - 1) * 0.99 / 0.01)  # shorter than T: capped
    assert eta[2] > eta[3]


def test_loss_matches_its_definition():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 8))
    Xh = X + 0.1 * rng.normal(size=X.shape)
    norms = np.linalg.norm(X, axis=1)
    R = X - Xh
    par = ((R * X).sum(1) / norms**2)[:, None] * X
    eta = (8 - 1) * (0.3 / norms) ** 2 / (1 - (0.3 / norms) ** 2)
    expected = eta * (par**2).sum(1) + ((R - par) ** 2).sum(1)
    np.testing.assert_allclose(anisotropic_loss(X, Xh, 0.3), expected, rtol=1e-10)


def test_coordinate_descent_matches_a_brute_force_reference():
    # one subspace at a time, the kernel must pick the centroid of least full loss (numpy reference)
    rng = np.random.default_rng(2)
    m, K, dsub, n, T = 4, 256, 3, 60, 0.5
    cents = rng.normal(size=(m, K, dsub)).astype(np.float32) * 0.5
    Y = rng.normal(size=(n, m * dsub)).astype(np.float32)
    start = pq_assign(Y, cents)
    one_sweep = _assign(Y, cents, T, 1.0, start, sweeps=1)
    ref = start.astype(np.int64).copy()
    for j in range(m):
        cand = np.repeat(pq_decode(cents, ref.astype(np.uint8))[:, None, :], K, axis=1).astype(np.float64)
        cand[:, :, j * dsub : (j + 1) * dsub] = cents[j][None].astype(np.float64)
        loss = anisotropic_loss(np.repeat(Y, K, axis=0), cand.reshape(n * K, -1), T).reshape(n, K)
        ref[:, j] = loss.argmin(axis=1)
    np.testing.assert_array_equal(one_sweep, ref)


def test_training_steps_never_increase_the_loss(unit_data):
    X = unit_data[:1000]
    cents = AnisotropicPQ(M, T_STRONG, iters=0).fit(X, seed=0).centroids
    codes = pq_assign(X, cents)
    losses = [anisotropic_loss(X, pq_decode(cents, codes), T_STRONG).mean()]
    for _ in range(3):
        codes = _assign(X, cents, T_STRONG, 1.0, codes, sweeps=3)
        losses.append(anisotropic_loss(X, pq_decode(cents, codes), T_STRONG).mean())
        cents = _update_codebooks(X, cents, codes, T_STRONG, 1.0)
        losses.append(anisotropic_loss(X, pq_decode(cents, codes), T_STRONG).mean())
    assert np.all(np.diff(losses) <= 1e-9 * losses[0]), losses
    assert losses[-1] < 0.9 * losses[0]


def test_codebook_update_is_the_least_squares_optimum(unit_data):
    # with the codes fixed, no small perturbation of an updated centroid lowers the loss
    X = unit_data[:800]
    c = AnisotropicPQ(M, T_STRONG, iters=1).fit(X, seed=0)
    codes = _assign(X, c.centroids, T_STRONG, c.norm_scale, pq_assign(X, c.centroids), sweeps=3)
    cents = _update_codebooks(X, c.centroids, codes, T_STRONG, c.norm_scale)
    # the update is block-wise (Gauss-Seidel): the last subspace is exactly optimal given the others
    base = anisotropic_loss(X, pq_decode(cents, codes), T_STRONG, c.norm_scale).sum()
    rng = np.random.default_rng(3)
    used = np.unique(codes[:, M - 1])
    for k in used[:5]:
        for _ in range(3):
            moved = cents.copy()
            moved[M - 1, k] += rng.normal(size=moved.shape[2]).astype(np.float32) * 1e-2
            assert anisotropic_loss(X, pq_decode(moved, codes), T_STRONG, c.norm_scale).sum() >= base - 1e-9


# ---- trade-off against plain PQ -----------------------------------------------------------------------


def test_lower_anisotropic_loss_higher_mse_than_pq(trained, unit_data):
    X = unit_data
    rec_pq, rec_apq = _reconstruct(trained["pq"], X), _reconstruct(trained["apq"], X)
    assert trained["apq"].norm_scale == pytest.approx(1.0, abs=1e-5)
    loss_pq = anisotropic_loss(X, rec_pq, T_STRONG).mean()
    loss_apq = anisotropic_loss(X, rec_apq, T_STRONG).mean()
    assert loss_apq < 0.9 * loss_pq, (loss_apq, loss_pq)
    mse_pq = ((X - rec_pq) ** 2).sum(1).mean()
    mse_apq = ((X - rec_apq) ** 2).sum(1).mean()
    assert mse_pq < mse_apq, (mse_pq, mse_apq)
    # the default threshold also lowers its own loss
    loss_def = anisotropic_loss(X, _reconstruct(trained["apq_default"], X), 0.2).mean()
    assert loss_def < anisotropic_loss(X, rec_pq, 0.2).mean()


def test_aligned_queries_score_more_accurately_than_pq(trained, unit_data, make_clustered):
    # queries aligned with the data (q = x, and a small perturbation of x): the scores that decide the top results
    held_out = make_clustered(2600, D, n_clusters=32, seed=5)[2000:]
    held_out /= np.linalg.norm(held_out, axis=1, keepdims=True)
    for X in (unit_data[:500], held_out):
        q = X + 0.05 * np.random.default_rng(4).normal(size=X.shape).astype(np.float32)
        for queries in (X, q):
            exact = (queries.astype(np.float64) * X).sum(1)
            err = {}
            for name in ("pq", "apq", "apq_default"):
                codec = trained[name]
                codes = codec.encode(X)
                est = np.einsum("ij,ij->i", queries.astype(np.float64), codec.decode(codes).astype(np.float64))
                err[name] = np.abs(est - exact).mean()
            assert err["apq"] < 0.6 * err["pq"], err
            assert err["apq_default"] < err["pq"], err


def test_score_equals_decode_and_codes_use_the_whole_codebook(trained, unit_data):
    codec = trained["apq"]
    codes = codec.encode(unit_data[:600])
    assert codes.dtype == np.uint8 and codes.shape == (600, M)
    assert len(np.unique(codes[:, 0])) > 100
    rng = np.random.default_rng(6)
    for nq in (5, 100):  # ADC and decode+GEMM paths
        queries = rng.normal(size=(nq, D)).astype(np.float32)
        expected = queries.astype(np.float64) @ codec.decode(codes).astype(np.float64).T
        np.testing.assert_allclose(codec.score(queries, codes), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_scale_free_threshold(unit_data):
    # scaling the data scales the centroids and leaves the codes unchanged (T is relative to the mean norm)
    X = unit_data[:600]
    a = make_codec("apq4-t0.3").fit(X, seed=0)
    b = make_codec("apq4-t0.3").fit(X * 10.0, seed=0)
    assert b.norm_scale == pytest.approx(10 * a.norm_scale, rel=1e-5)
    agree = (a.encode(X) == b.encode(X * 10.0)).mean()
    assert agree > 0.95
    np.testing.assert_allclose(b.centroids, 10 * a.centroids, atol=1e-2)


def test_rotated_variant(unit_data):
    X = unit_data[:600]
    c = AnisotropicPQ(4, T_STRONG, rotate=True, iters=2)
    c.fit(X, seed=0)
    R = c.rotation
    assert R.shape == (D, D)
    np.testing.assert_allclose(R @ R.T, np.eye(D), atol=1e-4)
    codes = c.encode(X)
    q = X[:3]
    np.testing.assert_allclose(
        c.score(q, codes), q.astype(np.float64) @ c.decode(codes).astype(np.float64).T, rtol=1e-4, atol=1e-4
    )
    twin = codec_from_bytes(c.to_bytes())
    assert twin.spec == "opq4,apq4-t0.4" and np.array_equal(twin.encode(X), codes)


# ---- state ----------------------------------------------------------------------------------------------


def test_serialisation_round_trip(trained, unit_data):
    codec = trained["apq"]
    blob = codec.to_bytes()
    twin = codec_from_bytes(blob)
    assert type(twin) is AnisotropicPQ and twin.spec == codec.spec and twin.threshold == T_STRONG
    codes = codec.encode(unit_data)
    assert np.array_equal(twin.encode(unit_data), codes)
    q = unit_data[:7]
    assert np.array_equal(twin.score(q, codes), codec.score(q, codes))
    assert twin.to_bytes() == blob


def _corrupt(blob: bytes, edit) -> bytes:
    spec, dim, meta, arrays = unpack_state(blob)
    spec, dim, meta, arrays = edit(spec, dim, meta, arrays)
    return pack_state(spec, dim, meta, arrays)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s, d, m, a: (s, d, m, {**a, "norm_scale": np.array([0.0], np.float32)}), "norm_scale must be positive"),
        (lambda s, d, m, a: (s, d, m, {**a, "norm_scale": np.array([1.0, 2.0], np.float32)}), "shape"),
        (lambda s, d, m, a: (s, d, m, {k: v for k, v in a.items() if k != "norm_scale"}), "expected"),
        (lambda s, d, m, a: (s, d, m, {**a, "centroids": a["centroids"][:, :100]}), "shape"),
        (lambda s, d, m, a: (s, d, m, {**a, "centroids": a["centroids"].astype(np.float64)}), "dtype"),
        (lambda s, d, m, a: (s, d, m, {**a, "centroids": np.full_like(a["centroids"], np.nan)}), "NaN"),
        (lambda s, d, m, a: (s, d, {"x": 1}, a), "meta"),
        (lambda s, d, m, a: (s, 36, m, a), "not divisible"),
        (lambda s, d, m, a: (s, 40, m, a), "shape"),
        (lambda s, d, m, a: ("apq8-t1.5", d, m, a), "unusable spec"),
        (lambda s, d, m, a: (s, d, m, {**a, "rotation": np.eye(d, dtype=np.float32)}), "expected"),
    ],
)
def test_corrupt_state_is_refused(trained, edit, message):
    with pytest.raises(SerializationError, match=message):
        codec_from_bytes(_corrupt(trained["apq"].to_bytes(), edit))


def test_corrupt_rotation_is_refused(unit_data):
    c = AnisotropicPQ(4, rotate=True, iters=1).fit(unit_data[:400], seed=0)
    bad = _corrupt(c.to_bytes(), lambda s, d, m, a: (s, d, m, {**a, "rotation": a["rotation"] * np.float32(1.5)}))
    with pytest.raises(SerializationError, match="not orthogonal"):
        codec_from_bytes(bad)


def test_truncated_state_is_refused(trained):
    blob = trained["apq"].to_bytes()
    for cut in (5, len(blob) // 2, len(blob) - 1):
        with pytest.raises(SerializationError):
            codec_from_bytes(blob[:cut])


# ---- property -------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    codes=st.lists(st.lists(st.integers(0, 255), min_size=M, max_size=M), min_size=0, max_size=20),
    scale=st.floats(0.1, 10.0),
)
def test_decode_encode_property(trained, codes, scale):
    codec = trained["apq"]
    c = np.array(codes, np.uint8).reshape(-1, M)
    dec = codec.decode(c)
    assert dec.dtype == np.float32 and dec.shape == (len(c), D)
    np.testing.assert_array_equal(dec, pq_decode(codec.centroids, c))
    again = codec.encode(dec * np.float32(scale))
    assert again.dtype == np.uint8 and again.shape == c.shape
    if len(c):
        q = np.linspace(-1, 1, D, dtype=np.float32)[None] * np.float32(scale)
        np.testing.assert_allclose(
            codec.score(q, c), q.astype(np.float64) @ dec.astype(np.float64).T, rtol=1e-4, atol=1e-4 * scale
        )


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_mutated_state_loads_or_raises_serialization_error(trained, data):
    blob = bytearray(trained["apq"].to_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    try:
        codec = codec_from_bytes(bytes(blob))
    except SerializationError:
        return
    # whatever loads is a consistent codec
    assert codec.centroids.shape == (M, 256, D // M) and np.isfinite(codec.centroids).all() and codec.norm_scale > 0
