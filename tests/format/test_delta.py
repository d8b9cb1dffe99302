"""Delta packs (reelpack.format.delta): apply(A, delta(A -> B)) == fresh build of B, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelpack.codecs import make_codec
from reelpack.errors import ChecksumError, DeltaError, PackFormatError
from reelpack.format import PackReader, apply_delta, make_delta
from reelpack.format.delta import build_pack, is_delta


def _catalog(n: int, d: int = 16, seed: int = 0, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = start + np.arange(n, dtype=np.int64) * 3
    return ids, rng.normal(size=(n, d)).astype(np.float32)


def _edit(ids, X, n_remove, n_add, n_change, seed=1, noise=0.3):
    rng = np.random.default_rng(seed)
    keep = np.ones(ids.size, bool)
    keep[rng.choice(ids.size, n_remove, replace=False)] = False
    ids_b, X_b = ids[keep], X[keep].copy()
    ch = rng.choice(ids_b.size, n_change, replace=False)
    X_b[ch] += rng.normal(scale=noise, size=(n_change, X.shape[1])).astype(np.float32)
    new_ids = int(ids.max()) + 1 + np.arange(n_add, dtype=np.int64)
    new_X = rng.normal(size=(n_add, X.shape[1])).astype(np.float32)
    return np.concatenate([ids_b, new_ids]), np.concatenate([X_b, new_X]), ids[~keep], new_ids, ids_b[ch]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("delta")
    ids, X = _catalog(3000)
    codecs = [make_codec(s).fit(X, seed=0) for s in ("sq4", "pq4")]
    path = tmp / "a.rpak"
    build_pack(path, ids, X, codecs, metadata={"catalog_version": "A"}, items_per_block=256)
    return tmp, path, ids, X, codecs


def test_build_pack_is_deterministic(base, tmp_path):
    _, path, ids, X, codecs = base
    perm = np.random.default_rng(5).permutation(ids.size)
    p2 = build_pack(tmp_path / "again.rpak", ids[perm], X[perm], codecs, metadata={"catalog_version": "A"},
                    items_per_block=256)  # fmt: skip
    assert p2.read_bytes() == path.read_bytes()
    assert PackReader(path).metadata["reference_mse"][0] > 0


def test_reuse_byte_identical_and_small(base, tmp_path):
    tmp, path, ids, X, codecs = base
    ids_b, X_b, removed, added, changed = _edit(ids, X, 60, 60, 30)
    rep = make_delta(path, ids_b, X_b, tmp_path / "d.rpak", distortion_threshold=0.2,
                     metadata={"catalog_version": "B"}, target_path=tmp_path / "b_from_make.rpak")  # fmt: skip
    assert all(lay.reused for lay in rep.layers) and not rep.refitted
    assert rep.n_removed == 60 and rep.n_added == 60
    assert 0 < rep.n_changed <= 30
    out = apply_delta(path, tmp_path / "d.rpak", tmp_path / "b_applied.rpak")
    fresh = build_pack(tmp_path / "b_fresh.rpak", ids_b, X_b, codecs, metadata={"catalog_version": "B"},
                       reference_mse=PackReader(path).metadata["reference_mse"], items_per_block=256)  # fmt: skip
    assert out.read_bytes() == fresh.read_bytes() == (tmp_path / "b_from_make.rpak").read_bytes()
    # every kind of edit landed
    with PackReader(out) as r:
        got = set(r.item_ids.tolist())
        assert not got & set(removed.tolist()) and set(added.tolist()) <= got
        assert r.metadata["catalog_version"] == "B" and r.verify().ok
    assert is_delta(tmp_path / "d.rpak") and not is_delta(path)
    assert rep.delta_bytes == (tmp_path / "d.rpak").stat().st_size
    # without the (re-sent) codec sections the delta is small: 4 % of the items touched
    assert (rep.delta_bytes - rep.codec_bytes) / rep.target_bytes < 0.12, rep.to_dict()


def test_delta_much_smaller_than_full_pack(tmp_path):
    ids, X = _catalog(20_000, d=32, seed=4)
    codec = make_codec("sq4").fit(X, seed=0)
    a = build_pack(tmp_path / "a.rpak", ids, X, [codec])
    ids_b, X_b, *_ = _edit(ids, X, 400, 400, 200, noise=0.5)  # 2 % removed, 2 % added, 1 % changed
    rep = make_delta(a, ids_b, X_b, tmp_path / "d.rpak", distortion_threshold=0.1)
    assert not rep.refitted
    assert rep.size_ratio < 0.06, rep.to_dict()  # ~3 % of the items are sent
    out = apply_delta(a, tmp_path / "d.rpak", tmp_path / "b.rpak")
    assert out.stat().st_size == rep.target_bytes


def test_refit_byte_identical(base, tmp_path):
    tmp, path, ids, X, codecs = base
    ids_b, X_b, *_ = _edit(ids, X, 30, 30, 10)
    rng = np.random.default_rng(9)
    X_b = (X_b * 3.0 + rng.normal(size=X_b.shape).astype(np.float32)).astype(np.float32)  # drift: wider spread
    rep = make_delta(path, ids_b, X_b, tmp_path / "d.rpak", distortion_threshold=0.2)
    assert all(not lay.reused for lay in rep.layers) and rep.refitted
    assert all(lay.ratio > 1.2 and lay.refit_mse < lay.new_mse for lay in rep.layers)
    assert rep.n_sent == ids_b.size
    out = apply_delta(path, tmp_path / "d.rpak", tmp_path / "b.rpak")
    refit = [make_codec(c.spec).fit(np.asarray(X_b)[np.argsort(ids_b)], seed=0) for c in codecs]
    fresh = build_pack(tmp_path / "fresh.rpak", ids_b, X_b, refit, metadata={"catalog_version": "A"},
                       items_per_block=256)  # fmt: skip
    assert out.read_bytes() == fresh.read_bytes()


def test_mixed_reuse_and_refit(tmp_path):
    ids, X = _catalog(800, d=8)
    codecs = [make_codec("sq8").fit(X, seed=0), make_codec("pq2").fit(X, seed=0)]
    a = build_pack(tmp_path / "a.rpak", ids, X, codecs, items_per_block=100)
    ids_b, X_b, *_ = _edit(ids, X, 10, 10, 5)
    rep = make_delta(a, ids_b, X_b, tmp_path / "d.rpak", distortion_threshold=0.0)
    out = apply_delta(a, tmp_path / "d.rpak", tmp_path / "b.rpak")
    with PackReader(out) as r:
        assert r.n_items == ids_b.size and r.verify().ok
    for lay in rep.layers:
        assert lay.reused == (lay.ratio <= 1.0 or lay.refit_mse >= lay.new_mse)
        assert (lay.refit_mse is None) == (lay.ratio <= 1.0)


def test_wrong_base_rejected(base, tmp_path):
    tmp, path, ids, X, codecs = base
    ids_b, X_b, *_ = _edit(ids, X, 5, 5, 5)
    make_delta(path, ids_b, X_b, tmp_path / "d.rpak")
    other = build_pack(tmp_path / "other.rpak", ids, X, codecs, metadata={"catalog_version": "A2"}, items_per_block=256)
    with pytest.raises(DeltaError, match="made for a base pack"):
        apply_delta(other, tmp_path / "d.rpak", tmp_path / "b.rpak")
    assert not (tmp_path / "b.rpak").exists()
    with pytest.raises(DeltaError, match="not a delta"):
        apply_delta(path, other, tmp_path / "b.rpak")


def test_corrupted_delta_detected(tmp_path):
    ids, X = _catalog(40, d=4)
    codec = make_codec("sq8").fit(X, seed=0)
    a = build_pack(tmp_path / "a.rpak", ids, X, [codec], items_per_block=8)
    ids_b, X_b, *_ = _edit(ids, X, 3, 3, 2)
    make_delta(a, ids_b, X_b, tmp_path / "d.rpak")
    good = (tmp_path / "d.rpak").read_bytes()
    bad_path = tmp_path / "bad.rpak"
    out = tmp_path / "out.rpak"
    rng = np.random.default_rng(0)
    positions = sorted(set(rng.choice(len(good), 150, replace=False).tolist()) | {70, len(good) - 1})
    n_checksum = 0
    for pos in positions:
        buf = bytearray(good)
        buf[pos] ^= 1 << int(rng.integers(8))
        bad_path.write_bytes(bytes(buf))
        with pytest.raises(PackFormatError) as exc_info:
            apply_delta(a, bad_path, out)
        n_checksum += isinstance(exc_info.value, ChecksumError)
        assert not out.exists()
    assert n_checksum > len(positions) // 2
    bad_path.write_bytes(good[:-5])
    with pytest.raises(PackFormatError):
        apply_delta(a, bad_path, out)


def test_pure_removal_and_no_change(tmp_path):
    ids, X = _catalog(300, d=8)
    codec = make_codec("sq4").fit(X, seed=0)
    a = build_pack(tmp_path / "a.rpak", ids, X, [codec], items_per_block=64)
    keep = np.ones(ids.size, bool)
    keep[[0, 5, 299]] = False
    for ids_b, X_b in ((ids[keep], X[keep]), (ids, X)):
        rep = make_delta(a, ids_b, X_b, tmp_path / "d.rpak", target_path=tmp_path / "t.rpak")
        assert rep.n_added == 0 and rep.n_changed == 0 and rep.n_sent == 1
        out = apply_delta(a, tmp_path / "d.rpak", tmp_path / "b.rpak")
        assert out.read_bytes() == (tmp_path / "t.rpak").read_bytes()


def test_delta_of_delta_chain(tmp_path):
    ids, X = _catalog(500, d=8)
    codec = make_codec("sq4").fit(X, seed=0)
    a = build_pack(tmp_path / "a.rpak", ids, X, [codec], items_per_block=64)
    ids_b, X_b, *_ = _edit(ids, X, 10, 10, 10, seed=2)
    make_delta(a, ids_b, X_b, tmp_path / "d1.rpak", distortion_threshold=0.5)
    b = apply_delta(a, tmp_path / "d1.rpak", tmp_path / "b.rpak")
    ids_c, X_c, *_ = _edit(ids_b, X_b, 10, 10, 10, seed=3)
    rep = make_delta(b, ids_c, X_c, tmp_path / "d2.rpak", distortion_threshold=0.5, target_path=tmp_path / "t.rpak")
    assert rep.layers[0].reference_mse == PackReader(a).metadata["reference_mse"][0]  # reference travels
    c = apply_delta(b, tmp_path / "d2.rpak", tmp_path / "c.rpak")
    assert c.read_bytes() == (tmp_path / "t.rpak").read_bytes()
    with pytest.raises(DeltaError):
        apply_delta(a, tmp_path / "d2.rpak", tmp_path / "c2.rpak")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 60),
    seed=st.integers(0, 2**16),
    frac_remove=st.floats(0, 0.9),
    n_add=st.integers(0, 20),
    frac_change=st.floats(0, 1),
    ipb=st.integers(1, 17),
    threshold=st.sampled_from([0.0, 0.1, 10.0]),
    spec=st.sampled_from(["sq8", "sq4", "fp16"]),
)
def test_property_random_edits(tmp_path, n, seed, frac_remove, n_add, frac_change, ipb, threshold, spec):
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(10_000, n, replace=False)).astype(np.int64)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    codec = make_codec(spec).fit(X, seed=0)
    a = build_pack(tmp_path / "a.rpak", ids, X, [codec], metadata={"v": 1}, items_per_block=ipb)
    keep = rng.random(n) >= frac_remove
    ids_b, X_b = ids[keep], X[keep].copy()
    ch = rng.random(ids_b.size) < frac_change
    X_b[ch] += rng.normal(scale=0.5, size=(int(ch.sum()), 4)).astype(np.float32)
    new = np.setdiff1d(rng.choice(20_000, n_add, replace=False), ids)
    ids_b = np.concatenate([ids_b, new]).astype(np.int64)
    X_b = np.concatenate([X_b, rng.normal(size=(new.size, 4)).astype(np.float32)])
    if ids_b.size == 0:
        return
    perm = rng.permutation(ids_b.size)
    ids_b, X_b = ids_b[perm], X_b[perm]
    rep = make_delta(a, ids_b, X_b, tmp_path / "d.rpak", distortion_threshold=threshold, metadata={"v": 2})
    out = apply_delta(a, tmp_path / "d.rpak", tmp_path / "b.rpak")
    lay = rep.layers[0]
    if lay.reused:
        fresh_codec, ref = codec, [lay.reference_mse]
    else:
        fresh_codec, ref = make_codec(spec).fit(X_b[np.argsort(ids_b)], seed=0), None
    fresh = build_pack(tmp_path / "f.rpak", ids_b, X_b, [fresh_codec], metadata={"v": 2}, reference_mse=ref,
                       items_per_block=ipb)  # fmt: skip
    assert out.read_bytes() == fresh.read_bytes()
    assert rep.n_removed == int((~keep).sum()) and rep.n_added == new.size


def test_refit_discarded_when_not_better(tmp_path):
    # sq4 calibrates on min/max: drift that widens the ranges makes a re-fit worse than the clipping base codec
    rng = np.random.default_rng(0)
    ids, X = np.arange(3000, dtype=np.int64), rng.normal(size=(3000, 16)).astype(np.float32)
    codec = make_codec("sq4").fit(X, seed=0)
    a = build_pack(tmp_path / "a.rpak", ids, X, [codec])
    Y = X.copy()
    moved = rng.random(3000) < 0.5
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    Y[moved] = (Y[moved] @ q.astype(np.float32)) * 1.5
    rep = make_delta(a, ids, Y, tmp_path / "d.rpak", distortion_threshold=0.1)
    lay = rep.layers[0]
    assert lay.ratio > 1.1 and lay.refit_mse is not None and lay.refit_mse >= lay.new_mse
    assert lay.reused and not rep.refitted
    out = apply_delta(a, tmp_path / "d.rpak", tmp_path / "b.rpak")
    fresh = build_pack(tmp_path / "f.rpak", ids, Y, [codec], reference_mse=[lay.reference_mse])
    assert out.read_bytes() == fresh.read_bytes()
