"""PCA + bit-allocation codecs (wsqN, usqN): allocation, bit packing, quantiser design, quality, state, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelpack.codecs import codec_from_bytes, make_codec
from reelpack.codecs.bitalloc import (
    MAX_LEVELS,
    UniformAllocQuantizer,
    WaterFillingQuantizer,
    allocate_bits,
    lloyd_max,
    pack_bits,
    unpack_bits,
)
from reelpack.codecs.base import pack_state, unpack_state
from reelpack.errors import CodecSpecError, DimensionMismatchError, InvalidInputError, SerializationError
from reelpack.metrics.ratedistortion import reverse_water_filling

# ---- plain references ---------------------------------------------------------------------------------


def pack_reference(values: np.ndarray, bits: list[int]) -> np.ndarray:
    """Bit-by-bit LSB-first packing, written as directly as possible."""
    total = sum(bits)
    out = np.zeros((values.shape[0], -(-total // 8)), np.uint8)
    for r in range(values.shape[0]):
        pos = 0
        for i, b in enumerate(bits):
            for j in range(b):
                if (int(values[r, i]) >> j) & 1:
                    out[r, pos // 8] |= 1 << (pos % 8)
                pos += 1
    return out


def allocate_reference(variances: np.ndarray, total: int, cap: int = 8) -> np.ndarray:
    """Heap-free greedy: give one bit at a time where var * 4^-b is largest (ties: lowest axis)."""
    b = np.zeros(len(variances), np.int64)
    for _ in range(total):
        gain = np.where(b < cap, variances * 4.0 ** (-b), -1.0)
        b[int(np.argmax(gain))] += 1
    return b


# ---- allocation ---------------------------------------------------------------------------------------


def test_allocation_matches_one_bit_at_a_time_greedy():
    rng = np.random.default_rng(0)
    for _ in range(30):
        d = int(rng.integers(1, 20))
        var = rng.gamma(0.5, size=d) * 10.0 ** rng.uniform(-3, 3)
        var[rng.random(d) < 0.2] = 0.0
        total = int(rng.integers(0, 8 * d + 1))
        b = allocate_bits(var, total)
        assert b.sum() == total and b.min() >= 0 and b.max() <= 8
        np.testing.assert_array_equal(b, allocate_reference(var, total))


def test_allocation_is_the_integer_optimum_on_small_cases():
    """Exhaustive search over all allocations for d=3 confirms the greedy minimises sum var * 4^-b."""
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(*[np.arange(9)] * 3, indexing="ij"), -1).reshape(-1, 3)
    for _ in range(10):
        var = rng.gamma(1.0, size=3)
        for total in (1, 5, 11, 20):
            cand = grid[grid.sum(1) == total]
            best = (var * 4.0 ** -cand).sum(1).min()
            got = (var * 4.0 ** -allocate_bits(var, total)).sum()
            assert got <= best * (1 + 1e-12)


def test_allocation_rounds_water_filling():
    rng = np.random.default_rng(2)
    var = np.sort(rng.gamma(2.0, size=24))[::-1]
    for total in (16, 48, 96):
        b = allocate_bits(var, total)
        rates = reverse_water_filling(var, total)
        assert rates.max() < 8  # the cap is not active here
        assert np.abs(b - rates).max() < 1.0
        assert (np.diff(b) <= 0).all()  # more variance, at least as many bits
    # equal variances: equal shares, the remainder to the first axes
    np.testing.assert_array_equal(allocate_bits(np.ones(4), 10), [3, 3, 2, 2])


def test_allocation_rejects_bad_budgets():
    with pytest.raises(InvalidInputError, match=r"0\.\.32"):
        allocate_bits(np.ones(4), 33)
    with pytest.raises(InvalidInputError, match="non-negative"):
        allocate_bits(np.array([1.0, -1.0]), 2)


# ---- bit packing --------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    bits=st.lists(st.integers(0, 8), min_size=1, max_size=24),
    n=st.integers(0, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_pack_unpack_round_trip_matches_reference(bits, n, seed):
    rng = np.random.default_rng(seed)
    b = np.array(bits)
    values = (rng.integers(0, 256, size=(n, len(bits))) & ((1 << b) - 1)).astype(np.uint8)
    packed = pack_bits(values, b)
    assert packed.dtype == np.uint8 and packed.shape == (n, -(-sum(bits) // 8))
    np.testing.assert_array_equal(packed, pack_reference(values, bits))
    np.testing.assert_array_equal(unpack_bits(packed, b), values)


def test_layout_example():
    # bits (3, 5, 0, 8): axis 0 in stream bits 0-2, axis 1 in 3-7, axis 3 fills byte 1
    packed = pack_bits(np.array([[0b101, 0b10011, 0, 0xA7]], np.uint8), np.array([3, 5, 0, 8]))
    assert packed.tolist() == [[0b10011_101, 0xA7]]


def test_codec_codes_use_the_documented_layout(make_clustered):
    X = make_clustered(600, 16, seed=5)
    codec = make_codec("wsq5").fit(X)
    codes = codec.encode(X[:50])
    Y = (X[:50] - codec.mean) @ codec.rotation.T
    idx = np.zeros((50, 16), np.uint8)
    for i in np.flatnonzero(codec.bits):  # nearest level, axis by axis
        lv = codec.levels[i, : 1 << codec.bits[i]]
        idx[:, i] = np.abs(Y[:, i : i + 1] - lv[None, :]).argmin(1)
    np.testing.assert_array_equal(codes, pack_reference(idx, codec.bits.tolist()))
    np.testing.assert_array_equal(unpack_bits(codes, codec.bits), idx)


# ---- quantiser design ---------------------------------------------------------------------------------


def test_lloyd_max_beats_uniform_and_matches_gaussian_tables():
    y = np.random.default_rng(3).standard_normal(200_000)
    # Max (1960) Gaussian Lloyd-Max MSEs for 2, 4, 8 levels
    for levels, table in ((2, 0.3634), (4, 0.1175), (8, 0.03454)):
        lv, info = lloyd_max(y, levels)
        assert info["lloyd"] <= info["uniform"] + 1e-12
        assert (np.diff(lv) > 0).all()
        assert abs(info["lloyd"] - table) < 0.02 * table
        # the reported MSE is the MSE of nearest-level quantisation
        q = lv[np.abs(y[:, None] - lv[None, :]).argmin(1)]
        assert abs(np.mean((y - q) ** 2) - info["lloyd"]) < 1e-9
    np.testing.assert_allclose(lloyd_max(y, 2)[0], [-0.7979, 0.7979], atol=0.01)


def test_degenerate_axes_get_distinct_levels():
    lv, _ = lloyd_max(np.zeros(50), 16)
    assert (np.diff(lv.astype(np.float32)) > 0).all()
    lv, _ = lloyd_max(np.repeat([1.0, 2.0, 3.0], 20), 8)
    assert (np.diff(lv.astype(np.float32)) > 0).all()


def test_rank_deficient_training_set_round_trips(make_clustered):
    X = make_clustered(300, 8, seed=6)
    X = np.concatenate([X, np.zeros((300, 8), np.float32)], axis=1)  # 8 constant dims
    codec = make_codec("usq16").fit(X)  # 8 bits on every axis, also the null ones
    codes = codec.encode(X)
    np.testing.assert_array_equal(codec.encode(codec.decode(codes)), codes)
    assert codec_from_bytes(codec.to_bytes()).to_bytes() == codec.to_bytes()


# ---- codec behaviour ----------------------------------------------------------------------------------


def test_pca_rotation_and_allocation(make_clustered):
    X = make_clustered(2000, 24, seed=7)
    codec = make_codec("wsq12").fit(X)
    R = codec.rotation.astype(np.float64)
    np.testing.assert_allclose(R @ R.T, np.eye(24), atol=1e-5)
    np.testing.assert_allclose(codec.mean, X.mean(0), atol=1e-5)
    Y = (X - codec.mean) @ R.T
    np.testing.assert_allclose(Y.var(0), codec.variances, rtol=1e-3, atol=1e-6)
    assert (np.diff(codec.variances) <= 0).all()
    assert codec.bits.sum() == 96 and codec.bytes_per_vector == 12
    np.testing.assert_array_equal(codec.bits, allocate_bits(codec.variances, 96))
    u = make_codec("usq12").fit(X)
    assert (u.bits == 4).all()


def test_zero_bit_axes_decode_to_the_mean(make_clustered):
    X = make_clustered(1000, 32, seed=8)
    codec = make_codec("wsq2").fit(X)
    assert (codec.bits == 0).any()
    Y = (codec.decode(codec.encode(X[:100])) - codec.mean) @ codec.rotation.T
    assert np.abs(Y[:, codec.bits == 0]).max() < 1e-4 * np.abs(Y).max()


def test_score_equals_reference_dot(make_clustered):
    X = make_clustered(1200, 32, seed=9)
    codec = make_codec("wsq16").fit(X[:1000])
    codes = codec.encode(X[1000:])
    q = np.random.default_rng(0).normal(size=(70, 32)).astype(np.float32)
    idx = unpack_bits(codes, codec.bits)
    yhat = np.take_along_axis(codec.levels.astype(np.float64), idx.T.astype(np.int64), 1).T  # [n, d]
    yhat[:, codec.bits == 0] = 0.0
    ref = q.astype(np.float64) @ (codec.mean.astype(np.float64) + yhat @ codec.rotation.astype(np.float64)).T
    np.testing.assert_allclose(codec.score(q, codes), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("nbytes", [4, 8, 16])
def test_water_filling_beats_uniform_allocation_at_equal_bytes(nbytes, make_clustered):
    X = make_clustered(3000, 32, seed=10)
    train, test = X[:2000], X[2000:]

    def mse(spec: str) -> float:
        c = make_codec(spec).fit(train)
        return float(((c.decode(c.encode(test)) - test) ** 2).sum(1).mean())

    w, u = mse(f"wsq{nbytes}"), mse(f"usq{nbytes}")
    assert w < 0.7 * u, (w, u)


def _gaussian(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    var = 4.0 * 0.7 ** np.arange(d)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    X = (rng.normal(size=(n, d)) * np.sqrt(var)) @ Q.T + 3.0
    return X.astype(np.float32), var


@pytest.mark.parametrize("nbytes,low,high", [(1, 1.0, 2.0), (4, 1.2, 2.9), (8, 1.4, 3.0)])
def test_mse_against_the_gaussian_bound(nbytes, low, high):
    """Fixed-rate Lloyd-Max after PCA on Gaussian data: above the Shannon bound, within Panter-Dite.

    ``mse / D(R)`` must be >= 1 (no code beats the Gaussian rate-distortion function;
    ``low`` leaves room for sampling noise) and at most about ``sqrt(3) pi / 2 = 2.72``,
    the high-rate loss of fixed-rate Lloyd-Max quantisation of a Gaussian (Lloyd-Max
    tables: 1.45 at 1 bit, 2.21 at 3 bits, 2.43 at 4 bits), plus integer rounding of
    the allocation. ``pi e / 6 = 1.42`` would be the limit only with entropy coding.
    """
    from reelpack.metrics.ratedistortion import codec_mse, gaussian_distortion_bound

    X, var = _gaussian(12_000, 16, seed=11)
    codec = make_codec(f"wsq{nbytes}").fit(X[:4000])
    ratio = codec_mse(codec, X[4000:]) / gaussian_distortion_bound(var, 8 * nbytes)
    assert low <= ratio <= high, ratio


def test_serialisation_round_trip_and_state_contents(make_clustered):
    X = make_clustered(800, 16, seed=12)
    for spec in ("wsq6", "usq8"):
        codec = make_codec(spec).fit(X)
        blob = codec.to_bytes()
        twin = codec_from_bytes(blob)
        assert type(twin) is type(codec) and twin.spec == spec and twin.to_bytes() == blob
        codes = codec.encode(X)
        np.testing.assert_array_equal(twin.encode(X), codes)
        np.testing.assert_array_equal(twin.decode(codes), codec.decode(codes))
        _, dim, meta, arrays = unpack_state(blob)
        assert dim == 16 and meta == {} and set(arrays) == {"mean", "rotation", "bits", "levels"}
        assert arrays["levels"].shape == (16, MAX_LEVELS) and arrays["bits"].dtype == np.uint8


def _tampered(codec, **changes) -> bytes:
    spec, dim, meta, arrays = unpack_state(codec.to_bytes())
    arrays.update(changes)
    return pack_state(spec, dim, meta, arrays)


def test_corrupt_state_is_refused(make_clustered):
    X = make_clustered(800, 16, seed=13)
    codec = make_codec("wsq6").fit(X)
    _, _, _, a = unpack_state(codec.to_bytes())
    i = int(np.flatnonzero(a["bits"] >= 2)[0])
    moved = a["bits"].copy()
    moved[i] -= 1
    moved[-1] += 1  # same total, but the last axis' levels table is empty
    more = a["bits"].copy()
    more[i] += 1
    big = a["bits"].copy()
    big[0] = 9
    unsorted = a["levels"].copy()
    unsorted[i, :2] = unsorted[i, 1::-1]
    junk = a["levels"].copy()
    junk[i, 255] = 1.0
    nan = a["levels"].copy()
    nan[i, 0] = np.nan
    cases = {
        "bits": [dict(bits=more), dict(bits=big), dict(bits=moved), dict(bits=a["bits"].astype(np.int32))],
        "levels": [dict(levels=unsorted), dict(levels=junk), dict(levels=nan), dict(levels=a["levels"][:, :16])],
        "rotation": [dict(rotation=a["rotation"] * 1.5)],
        "mean": [dict(mean=a["mean"][:3])],
    }
    for key, variants in cases.items():
        for change in variants:
            with pytest.raises(SerializationError):
                codec_from_bytes(_tampered(codec, **change))
    uneven = make_codec("usq8").fit(X)
    _, _, _, ua = unpack_state(uneven.to_bytes())
    bits = ua["bits"].copy()
    bits[0] += 1
    bits[1] -= 1
    with pytest.raises(SerializationError, match="equal"):
        codec_from_bytes(_tampered(uneven, bits=bits))
    spec, dim, meta, arrays = unpack_state(codec.to_bytes())
    with pytest.raises(SerializationError):
        codec_from_bytes(pack_state("wsq17", dim, meta, arrays))  # 17 bytes > 16 dims


def test_bad_specs_and_budgets(make_clustered):
    X = make_clustered(300, 16, seed=14)
    with pytest.raises(CodecSpecError, match="1.."):
        make_codec("wsq0")
    with pytest.raises(CodecSpecError, match="1.."):
        make_codec("usq0")
    with pytest.raises(DimensionMismatchError, match=r"N must be in 1\.\.16 for d=16"):
        make_codec("wsq17").fit(X)
    with pytest.raises(DimensionMismatchError, match=r"valid N for d=16: \[2, 4, 6, 8, 10, 12, 14, 16\]"):
        make_codec("usq3").fit(X)
    with pytest.raises(DimensionMismatchError, match="N must be in"):
        make_codec("usq32").fit(X)
    assert make_codec("WSQ16").spec == "wsq16" and make_codec("wsq016").spec == "wsq16"
    assert isinstance(make_codec("wsq1"), WaterFillingQuantizer)
    assert isinstance(make_codec("usq1"), UniformAllocQuantizer)
    wide = make_codec("wsq16").fit(X)  # N == d: 8 bits on every axis
    assert (wide.bits == 8).all()


def test_fit_is_deterministic_and_single_stage(make_clustered):
    X = make_clustered(500, 16, seed=15)
    a, b = make_codec("wsq8").fit(X, seed=0), make_codec("wsq8").fit(X, seed=5)
    assert a.to_bytes() == b.to_bytes()  # no randomness in the fit
    assert a.stage_bytes == (8,)


def test_minmax_variant(make_clustered):
    X = make_clustered(1000, 16, seed=16)
    mm = make_codec("wsq8-mm").fit(X)
    ll = make_codec("wsq8").fit(X)
    assert mm.spec == "wsq8-mm" and make_codec("USQ8-MM").spec == "usq8-mm"
    np.testing.assert_array_equal(mm.bits, ll.bits)
    Y = (X - mm.mean) @ mm.rotation.T
    for i in np.flatnonzero(mm.bits):
        lv = mm.levels[i, : 1 << mm.bits[i]]
        np.testing.assert_allclose(lv, np.linspace(Y[:, i].min(), Y[:, i].max(), lv.size), rtol=1e-5, atol=1e-5)
    # the extremes of the training set are reproduced on every axis: no clipping
    codes = mm.encode(X)
    Yhat = (mm.decode(codes) - mm.mean) @ mm.rotation.T
    act = mm.bits > 0
    np.testing.assert_allclose(Yhat[:, act].max(0), Y[:, act].max(0), rtol=1e-4, atol=1e-4)
    # Lloyd-Max has the lower MSE (the reason it is the default)
    err = lambda c: float(((c.decode(c.encode(X)) - X) ** 2).sum(1).mean())  # noqa: E731
    assert err(ll) < err(mm)
    twin = codec_from_bytes(mm.to_bytes())
    assert twin.spec == "wsq8-mm" and np.array_equal(twin.encode(X), codes)
    np.testing.assert_array_equal(mm.encode(mm.decode(codes)), codes)


_FUZZ_X = np.random.default_rng(17).normal(size=(60, 8)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)
_FUZZ_BLOBS = [make_codec(s).fit(_FUZZ_X).to_bytes() for s in ("wsq3", "usq4", "wsq5-mm")]


@settings(max_examples=150, deadline=None)
@given(which=st.integers(0, 2), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4))
def test_flipped_state_bytes_load_or_raise_serialization_error(which, flips):
    blob = bytearray(_FUZZ_BLOBS[which])
    for pos, xor in flips:
        blob[pos % len(blob)] ^= xor
    try:
        codec = codec_from_bytes(bytes(blob))
    except SerializationError:
        return
    codes = codec.encode(_FUZZ_X)  # a state that loads must be usable (flipped floats may be huge, not invalid)
    with np.errstate(over="ignore", invalid="ignore"):
        assert codec.decode(codes).shape == _FUZZ_X.shape
        assert codec.score(_FUZZ_X[:2], codes).shape == (2, len(_FUZZ_X))
