"""Sharded, resumable catalog builds on Dask (reelpack.catalog.build): byte identity, resume, bad input."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from reelpack.cli import app
from reelpack.errors import DataFormatError, InvalidInputError, NonFiniteError, ServiceError
from reelpack.format import PackReader
from reelpack.catalog.build import (
    FIT_RUN,
    ArraySource,
    NpySource,
    SyntheticSource,
    build_catalog_sharded,
    fit_sample_rows,
    verify_shard_file,
)
from reelpack.catalog.store import CatalogStore, build_catalog

runner = CliRunner()
FILES = ("pack", "layer0", "vectors", "ids", "users", "user_ids", "index")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _version_files(store: CatalogStore, catalog: str, version: int) -> dict[str, str]:
    e = store.version_info(catalog, version)
    return {k: _sha(store.file(catalog, version, k)) for k in FILES if k in e["files"]}


def _entry_core(e: dict) -> dict:
    return {k: v for k, v in e.items() if k not in ("created_at", "files")}


# ------------------------------------------------------------------------------------------ rules
def test_fit_sample_rows_rule():
    assert np.array_equal(fit_sample_rows(500, 3, 1024), np.arange(500))
    rows = fit_sample_rows(10_000, 3, 1024)
    assert rows.size == 1024 and np.all(np.diff(rows) > 0) and rows.max() < 10_000
    starts = rows[::FIT_RUN]
    assert np.all(starts % FIT_RUN == 0)  # whole runs of consecutive rows
    assert np.array_equal(rows, (starts[:, None] + np.arange(FIT_RUN)).reshape(-1))
    assert np.array_equal(rows, fit_sample_rows(10_000, 3, 1024))  # seeded
    assert not np.array_equal(rows, fit_sample_rows(10_000, 4, 1024))
    with pytest.raises(InvalidInputError, match="fit_sample"):
        fit_sample_rows(10, 0, 3)


def test_synthetic_rows_do_not_depend_on_range_or_n():
    src = SyntheticSource(5000, 8, seed=7)
    full = src.rows(0, 5000)
    assert full.dtype == np.float32 and full.shape == (5000, 8)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, rtol=1e-5)
    for lo, hi in [(0, 1), (1000, 1030), (1023, 2049), (4999, 5000), (17, 4321)]:
        assert np.array_equal(src.rows(lo, hi), full[lo:hi])
    assert np.array_equal(SyntheticSource(6000, 8, seed=7).rows(0, 5000), full)  # users drawn after the items
    assert not np.array_equal(SyntheticSource(5000, 8, seed=8).rows(0, 100), full[:100])
    with pytest.raises(InvalidInputError):
        src.rows(10, 5001)


# ------------------------------------------------------------------------------------------ identity
def test_sharded_build_on_process_cluster_is_byte_identical(tmp_path):
    """The one test that starts a LocalCluster of 2 processes: PQ + SQ layers, unsorted ids, fit on a sample."""
    rng = np.random.default_rng(0)
    n, d = 3000, 16
    X = SyntheticSource(n, d, seed=1).rows(0, n) + 0.01 * rng.standard_normal((n, d)).astype(np.float32)
    ids = rng.permutation(np.arange(10, 10 + 3 * n, 3)).astype(np.int64)  # unsorted, with gaps
    U = rng.standard_normal((40, d)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "ids.npy", ids)
    kw = dict(codecs="pq4 sq8", items_per_block=64, seed=5, users=U, index=True, fit_sample=1024)

    single = CatalogStore(tmp_path / "single")
    e1 = build_catalog(single, "cat", ids, X, **kw)
    sharded = CatalogStore(tmp_path / "sharded")
    stats: dict = {}
    stages: set[str] = set()
    e2 = build_catalog_sharded(sharded, "cat", NpySource(tmp_path / "x.npy", tmp_path / "ids.npy"), scheduler="local",
                               n_workers=2, shard_size=500, stats=stats, progress=lambda s, a, b: stages.add(s),
                               **kw)  # fmt: skip
    assert stats["shards"] == 6 and stats["encoded"] == 6  # 500 -> 512 rows (8 blocks of 64) per shard
    assert len(stats["workers"]) == 2 and all(kb > 0 for kb in stats["workers"].values())
    assert {"fit", "encode", "assemble", "arrays", "index", "publish"} <= stages
    assert _entry_core(e1) == _entry_core(e2)
    f1, f2 = _version_files(single, "cat", 1), _version_files(sharded, "cat", 1)
    assert set(f1) == set(FILES) and f1 == f2
    with PackReader(sharded.file("cat", 1, "pack")) as r:
        assert r.verify().ok and np.array_equal(r.item_ids, np.sort(ids))
    assert not (sharded.catalog_dir("cat") / ".work").exists()  # work files removed after publishing


def test_in_process_equals_threads_cluster_for_each_shard_size(tmp_path):
    src = SyntheticSource(1000, 8, seed=2)
    base = CatalogStore(tmp_path / "base")
    build_catalog(base, "c", src.ids(), src.rows(0, 1000), codecs="sq8 sq4", items_per_block=32, index=False)
    want = _version_files(base, "c", 1)
    for shard_size, workers in [(1, 1), (100, 2), (5000, 2)]:  # 1 -> one block per shard; 5000 -> one shard
        st = CatalogStore(tmp_path / f"s{shard_size}")
        stats: dict = {}
        build_catalog_sharded(st, "c", src, codecs="sq8 sq4", items_per_block=32, index=False, scheduler="threads",
                              n_workers=workers, shard_size=shard_size, stats=stats)  # fmt: skip
        assert stats["shards"] == -(-1000 // (-(-shard_size // 32) * 32))
        assert _version_files(st, "c", 1) == want


# ------------------------------------------------------------------------------------------ resume
def test_resume_skips_verified_shards_and_rebuilds_bad_ones(tmp_path):
    src = ArraySource(np.arange(1200), SyntheticSource(1200, 8, seed=3).rows(0, 1200))
    st = CatalogStore(tmp_path / "store")
    work = tmp_path / "work"
    kw = dict(codecs="sq8", items_per_block=50, index=False, scheduler="threads", n_workers=2, shard_size=200,
              work_dir=work, keep_work=True)  # fmt: skip
    s1: dict = {}
    build_catalog_sharded(st, "c", src, stats=s1, **kw)
    assert (s1["shards"], s1["encoded"], s1["verified"], s1["codecs_cached"]) == (6, 6, 0, False)
    shards = sorted(work.glob("shard-*.rps"))
    assert len(shards) == 6

    s2: dict = {}
    build_catalog_sharded(st, "c", src, stats=s2, **kw)
    assert (s2["encoded"], s2["rebuilt"], s2["verified"], s2["codecs_cached"]) == (0, 0, 6, True)

    raw = bytearray(shards[1].read_bytes())
    raw[len(raw) // 2] ^= 0x40  # a flipped bit inside the codes/vectors: only the CRC sees it
    shards[1].write_bytes(bytes(raw))
    shards[3].write_bytes(shards[3].read_bytes()[:-100])  # truncated
    shards[4].unlink()  # missing
    s3: dict = {}
    build_catalog_sharded(st, "c", src, stats=s3, **kw)
    assert (s3["encoded"], s3["rebuilt"], s3["verified"]) == (1, 2, 3)
    assert all(verify_shard_file(p, _fingerprint_of(p)) for p in shards)
    v = [_version_files(st, "c", k) for k in (1, 2, 3)]
    assert v[0]["vectors"] == v[1]["vectors"] == v[2]["vectors"]
    want = _blocks(st.file("c", 1, "pack"))
    for k in (2, 3):  # same codes and bounds; only the catalog_version in the metadata differs
        got = _blocks(st.file("c", k, "pack"))
        assert len(got) == len(want) == 24
        assert all(np.array_equal(a[0], b[0]) and a[1:] == b[1:] for a, b in zip(want, got))

    # other input -> other fingerprints: everything is rebuilt, nothing reused
    src2 = ArraySource(np.arange(1200), SyntheticSource(1200, 8, seed=4).rows(0, 1200))
    s4: dict = {}
    build_catalog_sharded(st, "c", src2, stats=s4, **kw)
    assert (s4["rebuilt"], s4["verified"], s4["codecs_cached"]) == (6, 0, False)


def _blocks(path: Path) -> list[tuple]:
    with PackReader(path) as r:
        return [(b.codes.copy(), b.max_sq_error, b.mean_sq_error) for lay in range(r.n_layers) for b in r.blocks(lay)]


def test_block_encoding_matches_the_whole_catalog_build_pack(tmp_path):
    """The block-by-block path keeps build_pack's codes and per-block bounds (and its reference_mse)."""
    from reelpack.codecs import make_codec
    from reelpack.format.delta import build_pack

    X = SyntheticSource(900, 16, seed=9).rows(0, 900)
    st = CatalogStore(tmp_path / "s")
    build_catalog(st, "c", np.arange(900), X, codecs="pq4 sq4", items_per_block=128, index=False, seed=2)
    fitted = [make_codec(s).fit(X, seed=2) for s in ("pq4", "sq4")]
    build_pack(tmp_path / "ref.rpk", np.arange(900), X, fitted, items_per_block=128)
    got, want = _blocks(st.file("c", 1, "pack")), _blocks(tmp_path / "ref.rpk")
    assert len(got) == len(want) == 16
    for a, b in zip(got, want):
        assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
    with PackReader(st.file("c", 1, "pack")) as r, PackReader(tmp_path / "ref.rpk") as q:
        np.testing.assert_allclose(r.metadata["reference_mse"], q.metadata["reference_mse"], rtol=1e-12)
        assert r.codec(0).to_bytes() == q.codec(0).to_bytes()


def _fingerprint_of(path: Path) -> str:
    import json
    import struct

    raw = path.read_bytes()
    (h,) = struct.unpack("<I", raw[8:12])
    return json.loads(raw[12 : 12 + h])["fingerprint"]


def test_verify_shard_file_rejects_corruption(tmp_path):
    src = SyntheticSource(300, 4, seed=0)
    st = CatalogStore(tmp_path / "s")
    build_catalog_sharded(st, "c", src, codecs="sq8", items_per_block=100, index=False, scheduler="threads",
                          n_workers=1, shard_size=100, work_dir=tmp_path / "w", keep_work=True)  # fmt: skip
    p = tmp_path / "w" / "shard-000000.rps"
    fp = _fingerprint_of(p)
    assert verify_shard_file(p, fp)
    assert not verify_shard_file(p, "0" * 64)
    assert not verify_shard_file(tmp_path / "w" / "nope.rps", fp)
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 1
    p.write_bytes(bytes(raw))
    assert not verify_shard_file(p, fp)
    p.write_bytes(b"")
    assert not verify_shard_file(p, fp)


# ------------------------------------------------------------------------------------------ bad input
def test_unreachable_scheduler_is_a_typed_error_and_publishes_nothing(tmp_path):
    st = CatalogStore(tmp_path / "s")
    src = SyntheticSource(200, 4, seed=0)
    build_catalog(st, "c", src.ids(), src.rows(0, 200), codecs="sq8", index=False)
    manifest = (st.catalog_dir("c") / "manifest.json").read_bytes()
    t0 = time.monotonic()
    with pytest.raises(ServiceError, match=r"tcp://127\.0\.0\.1:9\b"):
        build_catalog_sharded(st, "c", src, codecs="sq8", index=False, scheduler="tcp://127.0.0.1:9",
                              connect_timeout=1)  # fmt: skip
    assert time.monotonic() - t0 < 30
    assert (st.catalog_dir("c") / "manifest.json").read_bytes() == manifest
    assert sorted(p.name for p in st.catalog_dir("c").iterdir() if not p.name.startswith(".")) == ["manifest.json", "v000001"]
    with pytest.raises(ServiceError):
        build_catalog_sharded(st, "new", src, codecs="sq8", index=False, scheduler="tcp://127.0.0.1:9",
                              connect_timeout=1)  # fmt: skip
    assert not st.catalog_dir("new").exists()


def test_bad_arguments(tmp_path):
    st = CatalogStore(tmp_path / "s")
    src = SyntheticSource(100, 4)
    for kw, words in [({"scheduler": "bogus"}, "scheduler"), ({"shard_size": 0}, "shard_size"),
                      ({"n_workers": 0}, "n_workers"), ({"index": True, "arrays": False}, "arrays"),
                      ({"fit_sample": 10}, "fit_sample")]:  # fmt: skip
        with pytest.raises(InvalidInputError, match=words):
            build_catalog_sharded(st, "c", src, **{"index": False, "scheduler": "threads", **kw})
    with pytest.raises(InvalidInputError, match="source"):
        build_catalog_sharded(st, "c", np.zeros((3, 3)), scheduler="threads")
    bad = np.ones((300, 4), np.float32)
    bad[250, 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(NonFiniteError):
        build_catalog_sharded(st, "c", NpySource(tmp_path / "bad.npy"), codecs="sq8", index=False,
                              scheduler="threads", n_workers=1, shard_size=100)  # fmt: skip
    assert st.catalogs() == []
    np.savez(tmp_path / "x.npz", vectors=bad, ids=np.arange(300))
    with pytest.raises(DataFormatError, match=r"\.npy"):
        NpySource(tmp_path / "x.npz")


# ------------------------------------------------------------------------------------------ CLI
def test_cli_scheduler_options(tmp_path):
    common = ["--synthetic", "700", "--dim", "8", "--codecs", "sq8", "--items-per-block", "64", "--no-index",
              "--catalog", "demo"]  # fmt: skip
    res = runner.invoke(app, ["build-catalog", *common, "--store", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["build-catalog", *common, "--store", str(tmp_path / "b"), "--scheduler", "threads",
                              "--workers", "2", "--shard-size", "200", "--work-dir", str(tmp_path / "w")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "shards: 3 (3 encoded, 0 rebuilt, 0 kept)" in res.output
    a, b = CatalogStore(tmp_path / "a"), CatalogStore(tmp_path / "b")
    assert _version_files(a, "demo", 1) == _version_files(b, "demo", 1)
    assert a.version_info("demo", 1)["n_users"] == 700
    res = runner.invoke(app, ["build-catalog", *common, "--store", str(tmp_path / "c"), "--scheduler",
                              "tcp://127.0.0.1:9", "--connect-timeout", "1"])  # fmt: skip
    assert res.exit_code == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in res.output
    res = runner.invoke(app, ["build-catalog", *common, "--store", str(tmp_path / "d"), "--work-dir", "x"])
    assert res.exit_code == 2 and "--scheduler" in res.output
