"""Catalog builds with per-codec fit weights (popularity): fit_codecs, build_catalog, build_catalog_sharded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from reelpack.catalog.build import (
    FIT_RUN,
    NpySource,
    SyntheticSource,
    build_catalog_sharded,
    check_fit_weights,
    fit_codecs,
    fit_sample_rows,
)
from reelpack.catalog.store import CatalogStore, build_catalog
from reelpack.codecs import make_codec
from reelpack.errors import DimensionMismatchError, InvalidInputError
from reelpack.format import PackReader


def _clustered(n: int = 2000, d: int = 16, k: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows float32 [n, d] of k well separated Gaussian clusters, the cluster of each row int [n])."""
    rng = np.random.default_rng(seed)
    centres = 4.0 * rng.standard_normal((k, d)).astype(np.float32)
    labels = rng.integers(0, k, n)
    return (centres[labels] + rng.standard_normal((n, d)).astype(np.float32)).astype(np.float32), labels


def _mse(codec, X: np.ndarray) -> float:
    return float(np.mean((codec.decode(codec.encode(X)) - X) ** 2))


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ fit_codecs
@pytest.mark.parametrize("spec", ["pq4", "rq4"])
def test_weights_on_one_cluster_fit_that_cluster_better(spec):
    X, labels = _clustered()
    w = (labels == 0).astype(np.float64)  # all the mass on cluster 0
    (plain,) = fit_codecs([spec], X, seed=1)
    (weighted,) = fit_codecs([spec], X, seed=1, weights=[w])
    assert weighted.to_bytes() != plain.to_bytes()
    mine = X[labels == 0]
    assert _mse(weighted, mine) < 0.8 * _mse(plain, mine)


def test_weights_of_the_sampled_rows_are_used():
    """Above fit_sample the codec is fitted on the sample with w[rows] (the weights of the sampled rows)."""
    n = 8 * FIT_RUN
    X, _ = _clustered(n=n)
    rows = fit_sample_rows(n, 3, 2 * FIT_RUN)
    assert rows.size == 2 * FIT_RUN < n
    w = np.random.default_rng(1).random(n) + 0.01
    (got,) = fit_codecs(["sq4"], X, seed=3, fit_sample=2 * FIT_RUN, weights=[w])
    want = make_codec("sq4").fit(X[rows], seed=3, weights=w[rows])
    assert got.to_bytes() == want.to_bytes()
    zero_on_sample = np.ones(n)
    zero_on_sample[rows] = 0.0
    with pytest.raises(InvalidInputError, match="all 0 on the 512 sampled rows"):
        fit_codecs(["sq4"], X, seed=3, fit_sample=2 * FIT_RUN, weights=[zero_on_sample])


def test_no_weights_or_only_none_is_the_unweighted_fit():
    X, _ = _clustered(n=600)
    plain = [c.to_bytes() for c in fit_codecs(["pq4", "sq8"], X, seed=2)]
    assert [c.to_bytes() for c in fit_codecs(["pq4", "sq8"], X, seed=2, weights=None)] == plain
    assert [c.to_bytes() for c in fit_codecs(["pq4", "sq8"], X, seed=2, weights=[None, None])] == plain
    # a weighted layer does not change the unweighted one
    mixed = fit_codecs(["pq4", "sq8"], X, seed=2, weights=[np.arange(600.0) + 1, None])
    assert mixed[1].to_bytes() == plain[1] and mixed[0].to_bytes() != plain[0]


def test_bad_weights_are_typed_errors():
    X, _ = _clustered(n=300)
    ok = np.ones(300)
    with pytest.raises(DimensionMismatchError, match="299 values"):
        fit_codecs(["sq8"], X, seed=0, weights=[np.ones(299)])
    with pytest.raises(DimensionMismatchError, match="one per codec"):
        fit_codecs(["sq8", "sq4"], X, seed=0, weights=[ok])
    for bad, words in [(-ok, ">= 0"), (ok * np.nan, "finite"), (0 * ok, "all 0"), (np.ones((300, 1)), "1-D"),
                       (["a"] * 300, "float array")]:  # fmt: skip
        with pytest.raises(InvalidInputError, match=words):
            fit_codecs(["sq8"], X, seed=0, weights=[bad])
    with pytest.raises(InvalidInputError, match="list"):
        fit_codecs(["sq8"], X, seed=0, weights=ok)  # a bare array, not one entry per codec
    assert check_fit_weights([None], 1, 300) is None
    (w,) = check_fit_weights([np.arange(300, dtype=np.int32) + 1], None, 300)
    assert w.dtype == np.float64 and w.flags.c_contiguous


# ------------------------------------------------------------------------------------------ builds
def test_build_catalog_with_weights_decodes_and_sorts_weights_with_the_rows(tmp_path):
    n, d = 1200, 16
    X, labels = _clustered(n=n, d=d, seed=4)
    rng = np.random.default_rng(5)
    ids = rng.permutation(np.arange(7, 7 + 2 * n, 2)).astype(np.int64)  # unsorted ids
    w = np.where(labels == 0, 50.0, 1.0)
    kw = dict(codecs="pq4 sq8", items_per_block=128, index=False, seed=3)

    st = CatalogStore(tmp_path / "w")
    e = build_catalog(st, "c", ids, X, fit_weights=[w, None], **kw)
    assert e["codecs"] == ["pq4", "sq8"] and e["delta_from"] is None
    order = np.argsort(ids)
    with PackReader(st.file("c", 1, "pack")) as r:
        assert r.verify().ok and np.array_equal(r.item_ids, ids[order])
        layer0 = r.codec(0)
        rec = layer0.decode(r.layer_codes(0))
        assert rec.shape == (n, d) and np.all(np.isfinite(rec))
        assert np.mean((rec - X[order]) ** 2) < np.mean(X**2)  # the codes decode near their rows

    # the same catalog given already sorted by id (weights sorted with it): the same bytes
    st2 = CatalogStore(tmp_path / "sorted")
    build_catalog(st2, "c", ids[order], X[order], fit_weights=[w[order], None], **kw)
    assert _sha(st.file("c", 1, "pack")) == _sha(st2.file("c", 1, "pack"))

    # unweighted: the layer-0 codec differs, the unweighted layer does not
    st3 = CatalogStore(tmp_path / "plain")
    build_catalog(st3, "c", ids, X, **kw)
    with PackReader(st.file("c", 1, "pack")) as a, PackReader(st3.file("c", 1, "pack")) as b:
        assert a.codec(0).to_bytes() != b.codec(0).to_bytes()
        assert a.codec(1).to_bytes() == b.codec(1).to_bytes()

    # a second weighted version starts a fresh chain (its codecs are fitted with the weights, no delta)
    e2 = build_catalog(st, "c", ids, X, fit_weights=[w, None], **kw)
    assert e2["version"] == 2 and e2["delta_from"] is None
    e3 = build_catalog(st, "c", ids, X, **kw)  # unweighted, same codecs: continues the chain
    assert e3["delta_from"] == 2

    with pytest.raises(DimensionMismatchError):
        build_catalog(st, "c", ids, X, fit_weights=[w[:-1], None], **kw)
    with pytest.raises(DimensionMismatchError, match="one per codec"):
        build_catalog(st, "c", ids, X, fit_weights=[w], **kw)
    assert [v["version"] for v in st.read_manifest("c")["versions"]] == [1, 2, 3]


def test_fit_info_is_recorded_and_checked(tmp_path):
    n, d = 600, 8
    X, labels = _clustered(n=n, d=d, seed=8)
    ids = np.arange(n, dtype=np.int64)
    w = np.where(labels == 0, 10.0, 1.0)
    kw = dict(codecs="pq4", items_per_block=100, index=False)
    st = CatalogStore(tmp_path / "s")
    info = {"popularity_beta": {"pq4": 1.5}, "note": ["a", 1]}
    e = build_catalog(st, "c", ids, X, fit_weights=[w], fit_info=info, **kw)
    assert e["fit_weights"] == info and st.read_manifest("c")["versions"][0]["fit_weights"] == info
    with PackReader(st.file("c", 1, "pack")) as r:
        assert r.metadata["popularity_beta"] == {"pq4": 1.5} and r.metadata["catalog_version"] == 1
    assert build_catalog(st, "c", ids, X, fit_weights=[w], **kw)["fit_weights"] == {}  # weighted, undescribed
    assert build_catalog(st, "c", ids, X, **kw)["fit_weights"] is None  # uniform

    bad = [
        ({"a": 1}, None, "give fit_weights"),
        ([1], [w], "dict with string keys"),
        ({1: 2}, [w], "dict with string keys"),
        ({"catalog": "x"}, [w], "catalog"),
        ({"reference_mse": 1}, [w], "reference_mse"),
        ({"x": float("nan")}, [w], "JSON"),
        ({"x": object()}, [w], "JSON"),
        ({"x": "y" * 70000}, [w], "at most"),
    ]
    for fit_info, fw, msg in bad:
        with pytest.raises(InvalidInputError, match=msg):
            build_catalog(st, "c", ids, X, fit_weights=fw, fit_info=fit_info, **kw)
    assert len(st.read_manifest("c")["versions"]) == 3  # rejected builds publish nothing

    pytest.importorskip("distributed")
    from reelpack.catalog.sources import ArraySource

    sharded = CatalogStore(tmp_path / "sh")
    e = build_catalog_sharded(sharded, "c", ArraySource(ids, X), scheduler="threads", n_workers=1,
                              fit_weights=[w], fit_info=info, **kw)  # fmt: skip
    assert e["fit_weights"] == info
    with pytest.raises(InvalidInputError, match="give fit_weights"):
        build_catalog_sharded(sharded, "c", ArraySource(ids, X), scheduler="threads", n_workers=1, fit_info=info,
                              **kw)  # fmt: skip


def test_sharded_build_with_weights_equals_the_single_process_build(tmp_path):
    pytest.importorskip("distributed")
    n, d = 1000, 16
    X, labels = _clustered(n=n, d=d, seed=6)
    ids = np.random.default_rng(7).permutation(n).astype(np.int64) + 100  # unsorted
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "ids.npy", ids)
    w = np.where(labels == 1, 20.0, 1.0)
    kw = dict(codecs="pq4 sq8", items_per_block=100, index=False, seed=1)

    single = CatalogStore(tmp_path / "single")
    build_catalog(single, "c", ids, X, fit_weights=[w, None], **kw)
    sharded = CatalogStore(tmp_path / "sharded")
    build_catalog_sharded(sharded, "c", NpySource(tmp_path / "x.npy", tmp_path / "ids.npy"), scheduler="threads",
                          n_workers=1, shard_size=300, fit_weights=[w, None], **kw)  # fmt: skip
    for name in ("pack", "layer0", "vectors", "ids"):
        assert _sha(single.file("c", 1, name)) == _sha(sharded.file("c", 1, name)), name


def test_sharded_codec_cache_is_keyed_by_the_weights(tmp_path):
    pytest.importorskip("distributed")
    src = SyntheticSource(600, 8, seed=2)
    st = CatalogStore(tmp_path / "s")
    kw = dict(codecs="sq4", items_per_block=100, index=False, scheduler="threads", n_workers=1, shard_size=300,
              work_dir=tmp_path / "work", keep_work=True)  # fmt: skip
    w1 = np.linspace(1.0, 10.0, 600)
    w2 = w1[::-1].copy()
    cached = []
    codec0 = []
    for fw in (None, [w1], [w1], [w2], None):
        stats: dict = {}
        e = build_catalog_sharded(st, "c", src, stats=stats, fit_weights=fw, **kw)
        cached.append(stats["codecs_cached"])
        with PackReader(st.file("c", e["version"], "pack")) as r:
            codec0.append(r.codec(0).to_bytes())
    assert cached == [False, False, True, False, False]  # codecs.rps holds the last fit only
    assert codec0[0] == codec0[4] and codec0[1] == codec0[2]
    assert len({codec0[0], codec0[1], codec0[3]}) == 3
