"""Damaged server-side files and failed writes: ``CatalogStore.load_array`` refuses damaged arrays with a
StoreError that names no path, ``CatalogStore.verify`` / ``reelpack verify-store`` check every file against the
manifest, and a request the store refuses (or a build that fails) leaves no folder or lock file behind."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from reelpack.catalog.store import CatalogStore, build_catalog
from reelpack.cli import app
from reelpack.errors import (
    DimensionMismatchError,
    InvalidInputError,
    NotFoundError,
    StoreError,
)

D = 16


def _data(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, D)).astype(np.float32)
    U = rng.standard_normal((12, D)).astype(np.float32)
    return np.arange(n, dtype=np.int64) * 3, X, U, np.arange(12, dtype=np.int64) + 100


@pytest.fixture()
def store(tmp_path) -> CatalogStore:
    """Catalogs 'c' (two versions, users) and 'd' (one version), no HNSW index."""
    ids, X, U, uids = _data()
    st = CatalogStore(tmp_path / "store")
    build_catalog(st, "c", ids, X, codecs="sq8", users=U, user_ids=uids, index=False)
    build_catalog(st, "c", ids, X * 1.01, users=U, user_ids=uids, index=False)
    build_catalog(st, "d", ids[:50], X[:50], codecs="sq4", index=False)
    return st


def _overwrite(path, lo: int, hi: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[lo:hi] = bytes(b ^ 0xA5 for b in raw[lo:hi])
    path.write_bytes(bytes(raw))


def _tree(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, ds, fs in os.walk(root) for n in ds + fs)


# ================================================================================================
# load_array
# ================================================================================================
def test_load_array_of_an_intact_store(store):
    U = store.load_array("c", 2, "users")
    assert isinstance(U, np.memmap) and U.shape == (12, D) and U.dtype == np.float32
    assert np.array_equal(store.load_array("c", 2, "user_ids", mmap=False), np.arange(12) + 100)
    with pytest.raises(InvalidInputError, match="array kind"):
        store.load_array("c", 2, "pack")
    with pytest.raises(NotFoundError, match="no users"):
        store.load_array("d", 1, "users")


@pytest.mark.parametrize("check_sha256", [True, False])
def test_damaged_npy_header_is_a_store_error(store, check_sha256):
    path = store.file("c", 2, "users")
    _overwrite(path, 10, 20)  # inside the npy header: numpy itself raises tokenize.TokenError here
    with pytest.raises(StoreError, match=r"catalog 'c' version 2: the users array \(users.npy\) is damaged") as info:
        store.load_array("c", 2, "users", check_sha256=check_sha256)
    assert str(store.root) not in str(info.value) and "/" not in str(info.value).replace("v000002/", "")


def test_damaged_array_bytes_and_size(store):
    path = store.file("c", 2, "vectors")
    _overwrite(path, path.stat().st_size - 8, path.stat().st_size - 4)  # data only: the header still parses
    with pytest.raises(StoreError, match="SHA-256"):
        store.load_array("c", 2, "vectors")
    assert store.load_array("c", 2, "vectors", check_sha256=False).shape == (200, D)  # only the digest sees it
    ids = store.file("c", 1, "ids")
    ids.write_bytes(ids.read_bytes()[:-8])
    with pytest.raises(StoreError, match="bytes, the manifest says"):
        store.load_array("c", 1, "ids", check_sha256=False)
    ids.unlink()
    with pytest.raises(StoreError, match="missing"):
        store.load_array("c", 1, "ids")


def test_npy_header_that_lies_about_its_shape(store):
    path = store.file("d", 1, "ids")
    raw = path.read_bytes()
    lied = raw.replace(b"(50,)", b"(51,)")
    assert lied != raw and len(lied) == len(raw)
    path.write_bytes(lied)
    with pytest.raises(StoreError, match="header claims"):
        store.load_array("d", 1, "ids", check_sha256=False)


# ================================================================================================
# verify / verify-store
# ================================================================================================
def test_verify_intact_store(store):
    report = store.verify()
    assert report.ok and not report.problems
    kinds = {(c.catalog, c.version, c.kind) for c in report.checks}
    assert ("c", 2, "users") in kinds and ("c", 2, "delta") in kinds and ("d", 1, "pack") in kinds
    assert all(c.found_bytes == c.expected_bytes for c in report.checks)
    assert {c.catalog for c in store.verify("d").checks} == {"d"}
    r = CliRunner().invoke(app, ["verify-store", str(store.root)])
    assert r.exit_code == 0, r.output
    assert "c/v000002/users.npy" in r.output and "verify" in r.output


def test_verify_store_names_damaged_and_missing_files(store):
    _overwrite(store.file("c", 2, "users"), 10, 20)
    store.file("d", 1, "layer0").unlink()
    report = store.verify()
    assert not report.ok
    assert {(c.path, c.status) for c in report.problems} == {("c/v000002/users.npy", "sha256"),
                                                             ("d/v000001/layer0.rpk", "missing")}  # fmt: skip
    r = CliRunner().invoke(app, ["verify-store", str(store.root)], env={"COLUMNS": "200"})
    assert r.exit_code == 1, r.output
    assert "c/v000002/users.npy" in r.output and "d/v000001/layer0.rpk" in r.output and "missing" in r.output
    r = CliRunner().invoke(app, ["verify-store", str(store.root), "--catalog", "d"], env={"COLUMNS": "200"})
    assert r.exit_code == 1 and "users.npy" not in r.output
    pack = store.file("c", 1, "pack")
    pack.write_bytes(pack.read_bytes() + b"x")
    assert ("c/v000001/pack.rpk", "size") in {(c.path, c.status) for c in store.verify("c").problems}


def test_verify_store_with_a_corrupt_manifest(store):
    (store.root / "d" / "manifest.json").write_text("{not json")
    report = store.verify()
    assert [(c.path, c.status) for c in report.problems] == [("d/manifest.json", "manifest")]
    r = CliRunner().invoke(app, ["verify-store", str(store.root)], env={"COLUMNS": "200"})
    assert r.exit_code == 1 and "d/manifest.json" in r.output


def test_verify_store_that_cannot_be_read(tmp_path, store):
    runner = CliRunner()
    r = runner.invoke(app, ["verify-store", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "not a folder" in r.output
    assert not (tmp_path / "nowhere").exists()  # verifying never creates a store
    r = runner.invoke(app, ["verify-store", str(store.root), "--catalog", "zzz"])
    assert r.exit_code == 2 and "unknown catalog" in r.output
    r = runner.invoke(app, ["verify-store", str(store.root), "--catalog", "BAD NAME"])
    assert r.exit_code == 2 and "catalog name" in r.output


# ================================================================================================
# Nothing is left behind by a refused request or a failed build
# ================================================================================================
def test_failed_first_build_leaves_no_folder(tmp_path):
    st = CatalogStore(tmp_path)
    ids, X, _, _ = _data()
    with pytest.raises(DimensionMismatchError):  # pq5 parses, but fitting it needs d % 5 == 0
        build_catalog(st, "c", ids, X, codecs="pq5", index=False)
    assert _tree(tmp_path) == []
    with pytest.raises(NotFoundError):
        st.delete_version("nope", 1)
    assert _tree(tmp_path) == []


def test_failed_build_keeps_an_existing_catalog_as_it_was(store):
    ids, X, _, _ = _data()
    (store.root / "d" / ".lock").unlink()  # e.g. a store copied without hidden files
    before = {p: (store.root / p).read_bytes() for p in _tree(store.root) if (store.root / p).is_file()}
    with pytest.raises(DimensionMismatchError):
        build_catalog(store, "d", ids, X, codecs="pq5", index=False)
    with pytest.raises(NotFoundError):
        store.delete_version("d", 9)
    after = {p: (store.root / p).read_bytes() for p in _tree(store.root) if (store.root / p).is_file()}
    assert after == before and not (store.root / "d" / ".lock").exists()


def test_waiter_locks_again_after_a_failed_first_build_removed_the_folder(tmp_path):
    st = CatalogStore(tmp_path)
    ids, X, _, _ = _data()
    holding, results = threading.Event(), []

    def failing() -> None:
        try:
            with st.lock("c"):
                holding.set()
                time.sleep(0.5)  # the other thread is waiting on this lock file now
                raise RuntimeError("simulated failure")
        except RuntimeError:
            results.append("failed")

    t = threading.Thread(target=failing)
    t.start()
    holding.wait(5)
    entry = build_catalog(st, "c", ids, X, codecs="sq8", index=False)  # waits, then locks the new lock file
    t.join()
    assert results == ["failed"] and entry["version"] == 1
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [".lock", "manifest.json", "v000001"]
    assert st.verify().ok
