"""The ``"qat-BASE"`` codec: additive codebooks with cosine scoring (reelpack.codecs.additive)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelpack.codecs import codec_from_bytes, make_codec
from reelpack.codecs.additive import AdditiveCodebookCodec, to_additive_codebooks
from reelpack.codecs.base import pack_state, unpack_state
from reelpack.errors import CodecSpecError, InvalidInputError, NotFittedError, SerializationError

D = 16


@pytest.fixture(scope="module")
def data(make_clustered) -> dict[str, np.ndarray]:
    X = make_clustered(900, D, seed=3)
    rng = np.random.default_rng(4)
    return {"train": X[:700], "items": X[700:], "queries": rng.normal(size=(7, D)).astype(np.float32)}


_CACHE: dict[str, object] = {}


def fit(spec: str, X: np.ndarray):
    if spec not in _CACHE:
        _CACHE[spec] = make_codec(spec).fit(X, seed=0)
    return _CACHE[spec]


def ref_decode(cb: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Plain numpy reference: sum over m of cb[m, codes[:, m]]."""
    out = np.zeros((codes.shape[0], cb.shape[2]), np.float64)
    for m in range(codes.shape[1]):
        out += cb[m][codes[:, m].astype(np.int64)]
    return out


@pytest.mark.parametrize("base_spec", ["pq4", "opq4,pq4", "rq2+2"])
def test_codebooks_reproduce_base_decode(data, base_spec):
    base = fit(base_spec, data["train"])
    codes = base.encode(data["items"])
    cb = to_additive_codebooks(base)
    assert cb.dtype == np.float32 and cb.shape == (4, cb.shape[1], D) and cb.shape[1] <= 256
    np.testing.assert_allclose(ref_decode(cb, codes), base.decode(codes), atol=1e-5, rtol=1e-5)
    # the qat- codec fitted with the same seed holds those codebooks and encodes as the base
    q = fit("qat-" + base_spec, data["train"])
    assert isinstance(q, AdditiveCodebookCodec) and q.spec == "qat-" + base_spec
    np.testing.assert_array_equal(q.codebooks, cb)
    np.testing.assert_array_equal(q.encode(data["items"]), codes)
    np.testing.assert_allclose(q.decode(codes), base.decode(codes), atol=1e-5, rtol=1e-5)
    assert q.bytes_per_vector == base.bytes_per_vector == 4


def test_pq_codebooks_are_zero_outside_their_subspace(data):
    cb = to_additive_codebooks(fit("pq4", data["train"]))
    dsub = D // 4
    for m in range(4):
        mask = np.ones(D, bool)
        mask[m * dsub : (m + 1) * dsub] = False
        assert not cb[m][:, mask].any()


def test_no_codebook_form_raises(data):
    with pytest.raises(CodecSpecError, match="no codebooks"):
        to_additive_codebooks(fit("sq8", data["train"]))


def test_score_is_cosine_of_decode(data):
    q = fit("qat-pq4", data["train"])
    base = fit("pq4", data["train"])
    codes = q.encode(data["items"])
    recon = ref_decode(q.codebooks, codes)
    norms = np.linalg.norm(recon, axis=1)
    np.testing.assert_allclose(q.item_norms(codes), norms, rtol=1e-5)
    expected = data["queries"].astype(np.float64) @ recon.T / norms[None, :]
    s = q.score(data["queries"], codes)
    assert s.dtype == np.float32 and s.shape == (7, codes.shape[0])
    np.testing.assert_allclose(s, expected, rtol=1e-4, atol=1e-5)
    # only the per-item norm division separates it from plain PQ's inner product
    np.testing.assert_allclose(s * norms[None, :], base.score(data["queries"], codes), rtol=1e-4, atol=1e-4)
    assert not np.allclose(s, base.score(data["queries"], codes), atol=1e-3)
    # the many-query path (queries > 64 use dense blocks) agrees with the LUT path
    many = np.repeat(data["queries"], 10, axis=0)
    np.testing.assert_allclose(q.score(many, codes), np.repeat(s, 10, axis=0), rtol=1e-4, atol=1e-5)


def test_residual_stages_and_prefix_score(data):
    q = fit("qat-rq2+2", data["train"])
    assert q.stage_bytes == (2, 2) and q.prefix_bytes(1) == 2
    codes = q.encode(data["items"])
    prefix = ref_decode(q.codebooks[:2], codes[:, :2])
    expected = data["queries"].astype(np.float64) @ prefix.T / np.linalg.norm(prefix, axis=1)[None, :]
    np.testing.assert_allclose(q.score_prefix(data["queries"], codes[:, :2], 1), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        q.score_prefix(data["queries"], codes, 2), q.score(data["queries"], codes), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(q.item_norms(codes[:, :2]), np.linalg.norm(prefix, axis=1), rtol=1e-5)


def greedy_reference(cb: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Codebook m picks the row nearest to the residual left by codebooks 0..m-1 (float64 numpy)."""
    r = X.astype(np.float64).copy()
    out = np.empty((X.shape[0], cb.shape[0]), np.uint8)
    for m in range(cb.shape[0]):
        dist = ((r[:, None, :] - cb[m][None, :, :].astype(np.float64)) ** 2).sum(-1)
        out[:, m] = np.argmin(dist, axis=1)
        r -= cb[m][out[:, m]]
    return out


def test_encode_after_set_codebooks_is_greedy(data):
    base = fit("pq4", data["train"])
    q = make_codec("qat-pq4").fit(data["train"], seed=0)
    q.set_codebooks(q.codebooks.copy())  # same codebooks, but now the greedy encoder
    # for PQ (disjoint sub-spaces) greedy == nearest centroid per sub-space == the base codes
    np.testing.assert_array_equal(q.encode(data["items"]), base.encode(data["items"]))
    # after a change, codes follow the greedy rule on the new codebooks
    rng = np.random.default_rng(0)
    r = make_codec("qat-rq2+2").fit(data["train"], seed=0)
    new = r.codebooks + 0.05 * rng.normal(size=r.codebooks.shape).astype(np.float32)
    r.set_codebooks(new)
    codes = r.encode(data["items"])
    ref = greedy_reference(new, data["items"])
    assert (codes == ref).mean() > 0.99  # float32 vs float64 near-ties only
    with pytest.raises(InvalidInputError):
        r.set_codebooks(new[:, :3])
    bad = new.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(InvalidInputError):
        r.set_codebooks(bad)
    with pytest.raises(NotFittedError):
        make_codec("qat-pq4").set_codebooks(new)


@pytest.mark.parametrize("spec", ["qat-pq4", "qat-rq2+2", "qat-opq4,pq4"])
def test_serialisation_round_trip(data, spec):
    q = make_codec(spec).fit(data["train"], seed=0)
    codes = q.encode(data["items"])
    again = codec_from_bytes(q.to_bytes())
    assert isinstance(again, AdditiveCodebookCodec) and again.spec == spec and again.stage_bytes == q.stage_bytes
    np.testing.assert_array_equal(again.encode(data["items"]), codes)  # base encoder survives (rq beam search)
    np.testing.assert_array_equal(again.score(data["queries"], codes), q.score(data["queries"], codes))
    # tuned codebooks: no base state, greedy encoder
    q.set_codebooks(q.codebooks * 1.01)
    again = codec_from_bytes(q.to_bytes())
    assert "base_state" not in unpack_state(q.to_bytes())[3]
    np.testing.assert_array_equal(again.codebooks, q.codebooks)
    np.testing.assert_array_equal(again.score(data["queries"], codes), q.score(data["queries"], codes))
    np.testing.assert_array_equal(again.encode(data["items"]), q.encode(data["items"]))


def _corrupt(codec, meta=None, arrays=None, drop_meta=False) -> bytes:
    spec, dim, m, a = unpack_state(codec.to_bytes())
    if drop_meta:
        m = {}
    m.update(meta or {})
    a.update(arrays or {})
    return pack_state(spec, dim, m, a)


def test_corrupt_state_raises(data):
    q = fit("qat-rq2+2", data["train"])
    cb = q.codebooks
    nan = cb.copy()
    nan[1, 2, 3] = np.nan
    bad_states = [
        _corrupt(q, meta={"stages": [2, 1]}),  # does not sum to M
        _corrupt(q, meta={"stages": [4, 0]}),
        _corrupt(q, meta={"stages": "2+2"}),
        _corrupt(q, meta={"stages": [True, 3]}),
        _corrupt(q, drop_meta=True),  # missing meta
        _corrupt(q, meta={"extra": 1}),
        _corrupt(q, arrays={"codebooks": cb[:, :, :8]}),  # wrong d
        _corrupt(q, arrays={"codebooks": cb[0]}),  # wrong ndim
        _corrupt(q, arrays={"codebooks": cb.astype(np.float64)}),
        _corrupt(q, arrays={"codebooks": nan}),
        _corrupt(q, arrays={"base_state": np.zeros(10, np.uint8)}),  # not a codec state
        _corrupt(q, arrays={"base_state": np.frombuffer(make_codec("rq2+2").fit(data["train"][:400], seed=1).to_bytes(), np.uint8)}),
        _corrupt(q, arrays={"base_state": np.frombuffer(fit("pq4", data["train"]).to_bytes(), np.uint8)}),
        _corrupt(q, arrays={"other": np.zeros(3, np.float32)}),
    ]
    for i, raw in enumerate(bad_states):
        with pytest.raises(SerializationError):
            codec_from_bytes(raw)
            pytest.fail(f"corrupt state {i} loaded")


@pytest.mark.parametrize(
    "spec, words",
    [("qat-sq8", "codebook codec"), ("qat-qat-pq4", "another qat"), ("qat-rq2+2-b", "-b"), ("qat-simhash32", "codebook")],
)
def test_bad_specs(spec, words):
    with pytest.raises(CodecSpecError, match=words):
        make_codec(spec)


@pytest.mark.parametrize("spec", ["qat-pq4", "qat-opq4,pq4", "qat-rq2+2", "qat-apq4-t0.3", "qat-rq8+8", "qat-pq16"])
def test_spec_round_trip(spec):
    c = make_codec(spec)
    assert c.family == "qat" and c.spec == spec and make_codec(c.spec).spec == spec


def test_unfitted_and_bad_codes(data):
    c = make_codec("qat-pq4")
    with pytest.raises(NotFittedError):
        c.encode(data["items"])
    with pytest.raises(NotFittedError):
        c.item_norms(np.zeros((2, 4), np.uint8))
    q = fit("qat-pq4", data["train"])
    for bad in (np.zeros((3, 5), np.uint8), np.zeros((3, 0), np.uint8), np.zeros(4, np.uint8)):
        with pytest.raises(InvalidInputError, match="codes must be"):
            q.item_norms(bad)
    # with fewer than 256 rows per codebook, out-of-range codes are refused
    small = make_codec("qat-pq4").fit(data["train"][:100], seed=0)
    ksub = small.codebooks.shape[1]
    if ksub < 256:
        with pytest.raises(InvalidInputError, match="rows"):
            small.score(data["queries"], np.full((3, 4), 255, np.uint8))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 20))
def test_encode_decode_round_trip_property(data, seed, n):
    """decode(encode(x)) is the sum of the chosen rows; re-encoding a reconstruction is stable for PQ."""
    q = fit("qat-pq4", data["train"])
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D)).astype(np.float32)
    codes = q.encode(X)
    assert codes.shape == (n, 4) and codes.dtype == np.uint8
    recon = q.decode(codes)
    np.testing.assert_allclose(recon, ref_decode(q.codebooks, codes), atol=1e-5)
    np.testing.assert_array_equal(q.encode(recon), codes)
    assert (q.item_norms(codes) >= 0).all()
