"""Residual quantisation in stages ("rqS1+S2[-b]"): grammar, prefixes, ADC, bounds, serialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelpack.codecs import codec_from_bytes, make_codec
from reelpack.codecs.base import pack_state, unpack_state
from reelpack.codecs.residual import (
    BOUND_INF_CODE,
    ResidualCodec,
    ResidualScanner,
    rq_decode,
    rq_decode_reference,
    rq_residual_norms,
    rq_residual_norms_reference,
)
from reelpack.errors import (
    CodecSpecError,
    DimensionMismatchError,
    DTypeError,
    NotFittedError,
    InvalidInputError,
    SerializationError,
    UnknownCodecError,
    UnsupportedOperationError,
)

D = 16
N_TRAIN, N_HELD = 1200, 400


pytestmark = pytest.mark.usefixtures("faiss_single_thread")


@pytest.fixture(scope="module")
def data(make_clustered):
    X = make_clustered(N_TRAIN + 2 * N_HELD, D, n_clusters=24, seed=5)
    return {"train": X[:N_TRAIN], "items": X[N_TRAIN : N_TRAIN + N_HELD], "queries": X[N_TRAIN + N_HELD :]}


@pytest.fixture(scope="module")
def plain(data):
    return make_codec("rq1+1+2").fit(data["train"], seed=0)


@pytest.fixture(scope="module")
def bounded(data):
    return make_codec("rq1+1+2-b").fit(data["train"], seed=0)


# ---- grammar --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, canonical, stages, bounds",
    [
        ("rq8+8", "rq8+8", (8, 8), False),
        ("rq4+4+8", "rq4+4+8", (4, 4, 8), False),
        ("rq16", "rq16", (16,), False),
        ("RQ 8 + 8-B", "rq8+8-b", (8, 8), True),
        ("rq1", "rq1", (1,), False),
        ("rq32+32-b", "rq32+32-b", (32, 32), True),
        ("rq" + "+".join(["1"] * 64), "rq" + "+".join(["1"] * 64), (1,) * 64, False),
    ],
)
def test_spec_grammar(spec, canonical, stages, bounds):
    c = make_codec(spec)
    assert isinstance(c, ResidualCodec) and c.family == "rq"
    assert c.spec == canonical and make_codec(c.spec).spec == canonical
    assert c.stages == stages and c.has_bounds is bounds and c.n_codebooks == sum(stages)
    assert c._bytes_per_vector() == sum(stages) + (len(stages) if bounds else 0)


@pytest.mark.parametrize(
    "spec, words",
    [
        ("rq0", "at least 1 codebook"),
        ("rq8+0", "at least 1 codebook"),
        ("rq65", "1..64 codebooks"),
        ("rq40+40", "1..64 codebooks"),
        ("rq" + "+".join(["1"] * 65), "1..64 codebooks"),
    ],
)
def test_bad_spec_values(spec, words):
    with pytest.raises(CodecSpecError, match=words):
        make_codec(spec)


@pytest.mark.parametrize("spec", ["rq", "rq8+", "rq+8", "rq8++8", "rq8-c", "rq8-b-b", "rq-8"])
def test_malformed_specs(spec):
    with pytest.raises(UnknownCodecError):
        make_codec(spec)


def test_too_few_training_rows():
    X = np.random.default_rng(0).normal(size=(255, D)).astype(np.float32)
    with pytest.raises(InvalidInputError, match=r"rq2 needs at least 256 training rows .* got 255"):
        make_codec("rq2").fit(X)


# ---- layout, prefixes, kernels -------------------------------------------------------------------------


def test_stage_layout(plain, bounded, data):
    assert plain.stage_bytes == (1, 1, 2) and plain.bytes_per_vector == 4
    assert bounded.stage_bytes == (2, 2, 3) and bounded.bytes_per_vector == 7
    assert [bounded.prefix_bytes(k) for k in (1, 2, 3)] == [2, 4, 7]
    # same seed, same training: the bounded variant's codebook bytes are the plain codes
    np.testing.assert_array_equal(plain.codebooks, bounded.codebooks)
    a, b = plain.encode(data["items"]), bounded.encode(data["items"])
    np.testing.assert_array_equal(b[:, [0, 2, 4, 5]], a)


def test_codes_match_faiss_decode(plain, data):
    codes = plain.encode(data["items"])
    ref = plain._rq().decode(np.ascontiguousarray(codes))  # faiss's own (bit-packed) reading of the bytes
    np.testing.assert_allclose(plain.decode(codes), ref, rtol=1e-5, atol=1e-5)


def test_prefix_error_decreases_with_stages(bounded, data):
    X = data["items"]
    codes = bounded.encode(X)
    errs = [
        float(((bounded.decode_prefix(codes[:, : bounded.prefix_bytes(k)], k) - X) ** 2).sum(1).mean())
        for k in (1, 2, 3)
    ]
    total = float((X**2).sum(1).mean())
    assert total > errs[0] > errs[1] > errs[2]
    np.testing.assert_array_equal(bounded.decode_prefix(codes, 3), bounded.decode(codes))


@pytest.mark.parametrize("n_queries", [5, 100])  # LUT + ADC route, decode + GEMM route
def test_score_is_inner_product_with_decode(plain, bounded, data, n_queries):
    rng = np.random.default_rng(3)
    q = rng.normal(size=(n_queries, D)).astype(np.float32)
    for c in (plain, bounded):
        codes = c.encode(data["items"])
        cb = codes[:, c._cb_cols]
        ref = q.astype(np.float64) @ rq_decode_reference(c.codebooks, cb).astype(np.float64).T
        np.testing.assert_allclose(c.score(q, codes), ref, rtol=1e-4, atol=1e-4)
        # the prefix through one stage is the inner product with the first codebook's codewords only
        pref = q.astype(np.float64) @ rq_decode_reference(c.codebooks, cb[:, :1]).astype(np.float64).T
        s1 = c.score_prefix(q, codes[:, : c.prefix_bytes(1)], 1)
        np.testing.assert_allclose(s1, pref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(s1, q @ c.decode_prefix(codes[:, : c.prefix_bytes(1)], 1).T, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(c.score_prefix(q, codes, 3), c.score(q, codes), rtol=0, atol=0)


def test_kernels_match_references():
    rng = np.random.default_rng(7)
    cb = rng.normal(size=(5, 256, 12)).astype(np.float32)
    codes = rng.integers(0, 256, size=(300, 5)).astype(np.uint8)
    X = rng.normal(size=(300, 12)).astype(np.float32)
    np.testing.assert_allclose(rq_decode(cb, codes), rq_decode_reference(cb, codes), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rq_decode(cb, codes[:, :2]), rq_decode_reference(cb, codes[:, :2]), rtol=1e-5, atol=1e-5)
    ends = np.array([1, 3, 5])
    np.testing.assert_allclose(
        rq_residual_norms(cb, codes, X, ends), rq_residual_norms_reference(cb, codes, X, ends), rtol=1e-5
    )
    assert rq_decode(cb, codes[:0]).shape == (0, 12)


# ---- bounds --------------------------------------------------------------------------------------------


def test_plain_codec_has_no_bounds(plain, data):
    assert not plain.has_bounds
    with pytest.raises(UnsupportedOperationError, match="no score bounds"):
        plain.score_bounds(data["queries"][:2], plain.encode(data["items"][:3]))


def test_bound_bytes_are_upper_bounds_of_residual_norms(bounded, data):
    X = data["items"]
    codes = bounded.encode(X)
    true = rq_residual_norms_reference(bounded.codebooks, codes[:, bounded._cb_cols], X, bounded._ends)
    table = bounded._bound_table()
    for k in range(3):
        b = codes[:, bounded._bound_cols[k]]
        assert (b < BOUND_INF_CODE).all()  # held-out rows from the training distribution stay on the grid
        bound = table[k][b]
        assert (bound >= true[:, k]).all()
        assert (bound <= true[:, k] * 2 ** (1 / 24) * 1.002 + table[k][0]).all()  # tight: one grid step
    # far outside the training range: the bound byte says "unbounded"
    far = bounded.encode(X[:2] * 1e4)
    assert (far[:, bounded._bound_cols] == BOUND_INF_CODE).all()
    est, half = bounded.score_bounds(data["queries"][:3], far)
    assert np.isinf(half).all()
    _, half0 = bounded.score_bounds(np.zeros((1, D), np.float32), far)
    assert (half0 == 0).all()


def test_certain_bound_covers_every_pair(bounded, data):
    q, X = data["queries"], data["items"]
    codes = bounded.encode(X)
    true = q.astype(np.float64) @ X.astype(np.float64).T
    qn = np.linalg.norm(q.astype(np.float64), axis=1)
    for k in (1, 2, 3):
        # at d = 16, z(0.999999) = 4.9 >= sqrt(16) / calib: the half width is the Cauchy-Schwarz bound
        assert 4.89 * bounded.calib[k - 1] >= math.sqrt(D)
        est, half = bounded.score_bounds(q, codes[:, : bounded.prefix_bytes(k)], k, confidence=0.999999)
        rbound = bounded._bound_table()[k - 1][codes[:, bounded._bound_cols[k - 1]]]
        np.testing.assert_allclose(half, qn[:, None] * rbound[None, :], rtol=1e-6)
        assert (np.abs(true - est) <= half).all()
        np.testing.assert_allclose(est, bounded.score_prefix(q, codes[:, : bounded.prefix_bytes(k)], k), rtol=0, atol=0)


def test_calibrated_bound_coverage_on_held_out_data(bounded, data):
    q, X = data["queries"], data["items"]
    codes = bounded.encode(X)
    true = q.astype(np.float64) @ X.astype(np.float64).T
    widths = []
    for k in (1, 2, 3):
        est, half = bounded.score_bounds(q, codes[:, : bounded.prefix_bytes(k)], k, confidence=0.95)
        cover = float((np.abs(true - est) <= half).mean())
        assert cover >= 0.93, (k, cover)
        _, certain = bounded.score_bounds(q, codes[:, : bounded.prefix_bytes(k)], k, confidence=0.999999)
        assert (half <= certain).all() and half.mean() < 0.8 * certain.mean()  # narrower than Cauchy-Schwarz
        widths.append(float(half.mean()))
    assert widths[0] > widths[1] > widths[2]  # more stages, tighter bounds


def test_bad_confidence_and_stages(bounded, data):
    codes = bounded.encode(data["items"][:4])
    with pytest.raises(InvalidInputError, match=r"confidence must lie in \(0, 1\)"):
        bounded.score_bounds(data["queries"][:1], codes, confidence=1.0)
    with pytest.raises(InvalidInputError, match=r"stages must be an integer in \[1, 3\]"):
        bounded.score_prefix(data["queries"][:1], codes, 4)


# ---- serialisation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["plain", "bounded"])
def test_round_trip_scores_without_faiss(which, plain, bounded, data):
    c = {"plain": plain, "bounded": bounded}[which]
    codes = c.encode(data["items"])
    q = data["queries"][:7]
    loaded = codec_from_bytes(c.to_bytes())
    assert loaded._faiss_rq is None and loaded.spec == c.spec
    np.testing.assert_array_equal(loaded.score(q, codes), c.score(q, codes))
    np.testing.assert_array_equal(loaded.decode(codes), c.decode(codes))
    np.testing.assert_array_equal(loaded.score_prefix(q, codes[:, : c.prefix_bytes(1)], 1),
                                  c.score_prefix(q, codes[:, : c.prefix_bytes(1)], 1))
    assert loaded._faiss_rq is None  # decode and scoring never built a faiss object
    if c.has_bounds:
        for k in (1, 3):
            a = loaded.score_bounds(q, codes[:, : c.prefix_bytes(k)], k, 0.9)
            b = c.score_bounds(q, codes[:, : c.prefix_bytes(k)], k, 0.9)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(loaded.encode(data["items"]), codes)  # faiss rebuilt from the stored codebooks


def _corrupt(codec, **changes) -> bytes:
    spec, dim, meta, arrays = unpack_state(codec.to_bytes())
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    return pack_state(spec, dim, meta, arrays)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"codebooks": np.zeros((4, 255, D), np.float32)}, "shape"),
        ({"codebooks": np.zeros((4, 256, D), np.float64)}, "dtype"),
        ({"codebooks": np.full((4, 256, D), np.nan, np.float32)}, "NaN"),
        ({"max_beam_size": np.array([0], np.int32)}, "max_beam_size"),
        ({"calib": np.array([1.0, -1.0, 1.0], np.float32)}, "positive"),
        ({"norm_scale": np.zeros(3, np.float32)}, "positive"),
        ({"norm_scale": np.ones(2, np.float32)}, "shape"),
        ({"calib": None}, "arrays"),
        ({"extra": np.zeros(1, np.float32)}, "arrays"),
    ],
)
def test_corrupt_state(bounded, changes, words):
    with pytest.raises(SerializationError, match=words):
        codec_from_bytes(_corrupt(bounded, **changes))


def test_state_of_other_spec_or_dim(plain, bounded):
    spec, dim, meta, arrays = unpack_state(plain.to_bytes())
    with pytest.raises(SerializationError):
        codec_from_bytes(pack_state("rq1+1+2-b", dim, meta, arrays))  # bounds arrays missing
    with pytest.raises(SerializationError, match="shape"):
        codec_from_bytes(pack_state(spec, dim + 1, meta, arrays))
    with pytest.raises(SerializationError, match="shape"):
        codec_from_bytes(pack_state("rq2+3", dim, meta, arrays))
    with pytest.raises(SerializationError, match="unexpected meta"):
        codec_from_bytes(pack_state(spec, dim, {"x": 1}, arrays))


# ---- property test ----------------------------------------------------------------------------------


def _compositions(total: int) -> st.SearchStrategy[tuple[int, ...]]:
    """Ordered splits of ``total`` codebooks into stages."""
    return st.lists(st.booleans(), min_size=total - 1, max_size=total - 1).map(
        lambda cuts: tuple(
            np.diff([0, *[i + 1 for i, c in enumerate(cuts) if c], total]).astype(int).tolist()
        )
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stages=_compositions(4),
    bounds=st.booleans(),
    rows=st.integers(0, 40),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**31 - 1),
)
def test_encode_shape_and_stage_widths_property(bounded, stages, bounds, rows, scale, seed):
    # every split of the same 4 codebooks, built from state: same faiss codes, other byte layouts
    spec = "rq" + "+".join(map(str, stages)) + ("-b" if bounds else "")
    arrays = {"codebooks": bounded.codebooks, "max_beam_size": np.array([bounded.max_beam_size], np.int32)}
    if bounds:
        arrays["norm_scale"] = np.ones(len(stages), np.float32)
        arrays["calib"] = np.ones(len(stages), np.float32)
    c = codec_from_bytes(pack_state(spec, D, {}, arrays))
    X = (np.random.default_rng(seed).normal(size=(rows, D)) * scale).astype(np.float32)
    codes = c.encode(X)
    assert codes.dtype == np.uint8 and codes.shape == (rows, c.bytes_per_vector)
    assert sum(c.stage_bytes) == c.bytes_per_vector == 4 + (len(stages) if bounds else 0)
    assert c.stage_bytes == tuple(s + int(bounds) for s in stages)
    np.testing.assert_array_equal(codes[:, c._cb_cols], bounded.encode(X)[:, bounded._cb_cols])
    assert c.decode(codes).shape == (rows, D)
    if bounds and rows:
        true = rq_residual_norms_reference(c.codebooks, codes[:, c._cb_cols], X, c._ends)
        bound = np.stack([c._bound_table()[k][codes[:, c._bound_cols[k]]] for k in range(len(stages))], axis=1)
        assert (bound >= true).all()


# ---- "-r": least-squares codebook refinement; "-pD": PCA projection ------------------------------------
@pytest.mark.parametrize(
    "spec, canonical, refine, project",
    [("rq8-r", "rq8-r", True, None), ("rq4+4-r-b", "rq4+4-r-b", True, None), ("rq8-p12", "rq8-p12", False, 12),
     ("RQ 4+4 -R -P8", "rq4+4-r-p8", True, 8)],
)  # fmt: skip
def test_refine_and_projection_grammar(spec, canonical, refine, project):
    c = make_codec(spec)
    assert c.spec == canonical and c.refine is refine and c.project == project


@pytest.mark.parametrize("spec", ["rq8-p0", "rq8-p", "rq8-b-r", "rq8-p8-r", "rq8-r-r", "rq8-n-r", "rq8-n-p8", "rq8-n-n"])
def test_refine_and_projection_malformed(spec):
    with pytest.raises(UnknownCodecError):
        make_codec(spec)


def test_projection_with_bounds_is_refused():
    with pytest.raises(CodecSpecError, match="cannot carry -b"):
        make_codec("rq8-p8-b")


def test_projection_wider_than_the_data_is_refused(data):
    with pytest.raises(InvalidInputError, match="projects to 32"):
        make_codec("rq4-p32").fit(data["train"])


def test_refinement_lowers_the_training_error(data):
    greedy = make_codec("rq4+4").fit(data["train"], seed=1)
    refined = make_codec("rq4+4-r").fit(data["train"], seed=1)
    for h in refined.refine_history:
        assert h["mse_refined"] <= h["mse_greedy"]
    assert refined.refine_history[0]["mse_refined"] < refined.refine_history[0]["mse_greedy"]

    def mse(c, X):
        return float(((c.decode(c.encode(X)) - X) ** 2).sum(1).mean())

    assert mse(refined, data["train"]) < mse(greedy, data["train"])
    # prefixes stay coarse reconstructions: the first stage alone is worse than both stages
    codes = refined.encode(data["items"])
    first = ((refined.decode_prefix(codes[:, :4], 1) - data["items"]) ** 2).sum(1).mean()
    assert first > mse(refined, data["items"])


@pytest.mark.parametrize("spec", ["rq2", "rq2-r"])
def test_fit_uses_every_row_up_to_the_sample_cap(spec, data, monkeypatch):
    """Rows up to MAX_TRAIN_SAMPLE are all trained on (the codec encodes the items it is fitted on); larger
    inputs give a seeded sample of exactly the cap, the same rows for the same seed."""
    import reelpack.codecs.residual as residual

    seen: list[np.ndarray] = []
    real = residual._train_greedy

    def spy(X, n_codebooks, seed):
        seen.append(np.array(X, copy=True))
        return real(X, n_codebooks, seed)

    monkeypatch.setattr(residual, "_train_greedy", spy)
    X = data["train"]
    monkeypatch.setattr(residual, "MAX_TRAIN_SAMPLE", X.shape[0])
    make_codec(spec).fit(X, seed=0)
    assert seen[0].shape[0] == X.shape[0]
    np.testing.assert_array_equal(np.sort(seen[0], axis=0), np.sort(X, axis=0))
    seen.clear()
    monkeypatch.setattr(residual, "MAX_TRAIN_SAMPLE", 500)
    make_codec(spec).fit(X, seed=3)
    make_codec(spec).fit(X, seed=3)
    assert seen[0].shape[0] == 500
    assert len(seen) == 2  # one stage: one greedy training per fit
    np.testing.assert_array_equal(seen[0], seen[1])


@pytest.mark.parametrize("spec", ["rq4+4-r", "rq6-p8", "rq3+3-r-p10"])
def test_refined_and_projected_scores_equal_decode_dot(spec, data):
    c = make_codec(spec).fit(data["train"], seed=2)
    codes = c.encode(data["items"])
    q = data["queries"][:7]
    ref = q.astype(np.float64) @ c.decode(codes).astype(np.float64).T
    np.testing.assert_allclose(c.score(q, codes), ref, rtol=1e-4, atol=1e-4)
    again = codec_from_bytes(c.to_bytes())
    assert again.spec == c.spec
    np.testing.assert_array_equal(again.encode(data["items"]), codes)
    np.testing.assert_allclose(again.score(q, codes), c.score(q, codes), rtol=1e-6, atol=1e-6)


def test_projection_keeps_the_top_variance_subspace(data):
    c = make_codec("rq8-p4").fit(data["train"], seed=0)
    P = c.projection
    np.testing.assert_allclose(P.T @ P, np.eye(4), atol=1e-5)
    X = data["train"] - data["train"].mean(0)
    captured = np.linalg.norm(X @ P) ** 2 / np.linalg.norm(X) ** 2
    top = np.sort(np.linalg.eigvalsh(np.cov(X.T)))[::-1]
    assert captured == pytest.approx(top[:4].sum() / top.sum(), rel=1e-3)


def test_projection_state_is_checked(data):
    c = make_codec("rq4-p8").fit(data["train"], seed=0)
    state = c._state()[1]
    bad = dict(state, projection=np.full_like(state["projection"], 5.0))
    fresh = make_codec("rq4-p8")
    with pytest.raises(SerializationError, match="orthonormal"):
        fresh._load_state(D, {}, bad)
    missing = {k: v for k, v in state.items() if k != "mean"}
    with pytest.raises(SerializationError):
        make_codec("rq4-p8")._load_state(D, {}, missing)


# ---- "-n": unit-norm items, normalised reconstructions -----------------------------------------------------
@pytest.fixture(scope="module")
def unit(data):
    return {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in data.items()}


@pytest.mark.parametrize("spec", ["rq4+4-n", "rq6-r-p8-n"])
def test_unit_codec_scores_are_cosines_with_the_reconstruction(spec, unit):
    c = make_codec(spec).fit(unit["train"], seed=3)
    codes = c.encode(unit["items"])
    R = c.decode(codes)
    np.testing.assert_allclose(np.linalg.norm(R, axis=1), 1.0, atol=1e-5)
    plain = make_codec(spec.replace("-n", "")).fit(unit["train"], seed=3)
    raw = plain.decode(plain.encode(unit["items"]))
    np.testing.assert_allclose(R, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    q = unit["queries"][:5]
    np.testing.assert_allclose(c.score(q, codes), q @ R.T, rtol=1e-4, atol=1e-5)
    # prefix scores are cosines with the prefix reconstruction
    if len(c.stages) > 1:
        P = c.decode_prefix(codes[:, : c.prefix_bytes(1)], 1)
        np.testing.assert_allclose(c.score_prefix(q, codes[:, : c.prefix_bytes(1)], 1), q @ P.T, rtol=1e-4, atol=1e-5)
    again = codec_from_bytes(c.to_bytes())
    np.testing.assert_allclose(again.score(q, codes), c.score(q, codes), rtol=1e-6, atol=1e-6)


def test_unit_codec_refuses_vectors_that_are_not_unit(data, unit):
    with pytest.raises(InvalidInputError, match="unit vectors only"):
        make_codec("rq4-n").fit(data["train"] * 2.0)
    c = make_codec("rq4-n").fit(unit["train"])
    with pytest.raises(InvalidInputError, match="unit vectors only"):
        c.encode(unit["items"] * 1.5)


def test_unit_codec_with_bounds_is_refused():
    with pytest.raises(CodecSpecError, match="cannot carry -b"):
        make_codec("rq4-n-b")


def test_unit_codec_ranks_better_than_raw_reconstructions(unit):
    """On unit-norm items the normalised reconstruction's top-10 matches float32's more often."""
    raw = make_codec("rq2").fit(unit["train"], seed=0)
    normed = make_codec("rq2-n").fit(unit["train"], seed=0)
    q = unit["queries"]
    truth = np.argsort(-(q @ unit["items"].T), axis=1)[:, :10]

    def overlap(c):
        top = np.argsort(-c.score(q, c.encode(unit["items"])), axis=1)[:, :10]
        return np.mean([len(set(a) & set(b)) for a, b in zip(top.tolist(), truth.tolist())])

    assert overlap(normed) >= overlap(raw)


@pytest.mark.parametrize("spec", ["rq4+4-n", "rq6-r-p8-n"])
def test_unit_codec_scanner_rescales_adc_instead_of_decoding(spec, unit, monkeypatch):
    """The -n scanner: inverse norms once, then ADC x factor per block; its top-K equals codec.score's."""
    c = make_codec(spec).fit(unit["train"], seed=1)
    codes = c.encode(unit["items"])
    inv = c.inverse_norms(codes)
    raw = make_codec(spec.replace("-n", "")).fit(unit["train"], seed=1).decode(codes)  # same codes, same stages
    assert inv.dtype == np.float32 and inv.shape == (len(codes),)
    np.testing.assert_allclose(inv, 1.0 / np.linalg.norm(raw, axis=1), rtol=1e-5)
    scanner = c.scanner(codes)
    assert isinstance(scanner, ResidualScanner) and scanner.prepared_bytes == 4 * len(codes)
    q = unit["queries"]
    scores = c.score(q, codes)
    monkeypatch.setattr(ResidualScanner, "ROWS", 37)  # several row blocks, merged
    ids, vals = c.scanner(codes).search(q, 20)
    np.testing.assert_allclose(vals, -np.sort(-scores, axis=1)[:, :20], rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(scores, ids, axis=1), vals, rtol=0, atol=1e-5)
    # the rescaling is what the scanner relies on: a zero factor would put every item at 0
    assert np.abs(vals).max() > 0.1


def test_inverse_norms_is_for_unit_codecs_only(data):
    c = make_codec("rq4").fit(data["train"], seed=0)
    assert not isinstance(c.scanner(c.encode(data["items"])), ResidualScanner)
    with pytest.raises(InvalidInputError, match="-n"):
        c.inverse_norms(c.encode(data["items"]))


def test_inverse_norms_refuses_bad_codes(unit):
    c = make_codec("rq4-n").fit(unit["train"], seed=0)
    codes = c.encode(unit["items"])
    with pytest.raises(DimensionMismatchError):
        c.inverse_norms(codes[:, :3])
    with pytest.raises(DimensionMismatchError):
        c.inverse_norms(codes[0])
    with pytest.raises(DTypeError):
        c.inverse_norms(codes.astype(np.float32))
    with pytest.raises(NotFittedError):
        make_codec("rq4-n").inverse_norms(codes)
