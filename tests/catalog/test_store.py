"""CatalogStore, build_catalog, load_embeddings, ``reelpack build-catalog``: layout, deltas, crash safety, locks."""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from reelpack.cli import app
from reelpack.errors import (
    CodecSpecError,
    DataFormatError,
    DataNotFoundError,
    DimensionMismatchError,
    DTypeError,
    InvalidInputError,
    NonFiniteError,
    NotFoundError,
    StoreError,
)
from reelpack.format import PackReader, apply_delta
from reelpack.catalog.ann import HNSWIndex
from reelpack.catalog.store import CatalogStore, build_catalog, load_embeddings, validate_catalog_name

D = 16
N = 1500


def catalog(seed: int = 0, n: int = N, d: int = D) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [n] shuffled, not 0..n-1; vectors float32 [n, d] clustered unit rows)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((16, d))
    X = centres[rng.integers(0, 16, n)] + 0.7 * rng.standard_normal((n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ids = rng.permutation(5 * n)[:n].astype(np.int64)
    return ids, X.astype(np.float32)


def next_catalog(ids: np.ndarray, X: np.ndarray, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A plausible update: 30 items dropped, 40 added, 60 moved slightly."""
    rng = np.random.default_rng(seed)
    keep = np.ones(ids.size, bool)
    keep[rng.choice(ids.size, 30, replace=False)] = False
    ids2, X2 = ids[keep], X[keep].copy()
    moved = rng.choice(ids2.size, 60, replace=False)
    X2[moved] += 0.05 * rng.standard_normal((60, X.shape[1])).astype(np.float32)
    new_ids = ids.max() + 1 + np.arange(40)
    new_X = X[rng.choice(ids.size, 40)] + 0.1 * rng.standard_normal((40, X.shape[1])).astype(np.float32)
    X2 = np.concatenate([X2, new_X])
    return np.concatenate([ids2, new_ids]), (X2 / np.linalg.norm(X2, axis=1, keepdims=True)).astype(np.float32)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    st = CatalogStore(root / "nested" / "root")
    ids, X = catalog()
    users = np.random.default_rng(9).standard_normal((300, D)).astype(np.float32)
    stages = []
    e1 = build_catalog(st, "books", ids, X, items_per_block=256, seed=3,
                       progress=lambda s, done, total: stages.append((s, done, total)))  # fmt: skip
    ids2, X2 = next_catalog(ids, X)
    e2 = build_catalog(st, "books", ids2, X2, users=users, user_ids=np.arange(300)[::-1] * 2, seed=3)
    return st, (ids, X), (ids2, X2, users), e1, e2, stages


# ------------------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("name", ["books", "a", "0", "b-2_x", "z" * 64])
def test_valid_catalog_names(name):
    assert validate_catalog_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "../x", "..", ".", "a/b", "Books", "z" * 65, "-a", "_a", "a.b", "a\n", "a b", "é", None, 3]
)
def test_invalid_catalog_names(name, tmp_path):
    with pytest.raises(InvalidInputError, match="catalog name"):
        validate_catalog_name(name)
    if isinstance(name, str):
        st = CatalogStore(tmp_path)
        with pytest.raises(InvalidInputError):
            st.manifest(name)
        with pytest.raises(InvalidInputError):
            build_catalog(st, name, np.arange(3), np.ones((3, 4), np.float32), index=False)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ layout and manifest
def test_manifest_and_files(two_versions):
    st, (ids, X), (ids2, X2, users), e1, e2, stages = two_versions
    assert st.catalogs() == ["books"]
    m = st.manifest("books")
    assert m["catalog"] == "books" and m["format"] == 1 and m["latest"] == 2
    assert st.versions("books") == [1, 2] and st.latest("books") == 2
    assert m["versions"] == [e1, e2] and st.version_info("books", 2) == e2
    assert e1["delta_from"] is None and e2["delta_from"] == 1
    assert e1["n_items"] == N and e2["n_items"] == N + 10 and e2["dim"] == D
    assert e1["codecs"] == e2["codecs"] == ["pq4", "sq8"]
    assert e1["items_per_block"] == e2["items_per_block"] == 256  # later versions keep the chain's block size
    assert set(e1["files"]) == {"pack", "layer0", "index", "vectors", "ids"}
    assert set(e2["files"]) == set(e1["files"]) | {"users", "user_ids", "delta", "layer0_delta"}
    assert e2["files"]["delta"]["path"] == "v000002/delta-from-000001.rpk"
    assert e2["files"]["layer0_delta"]["path"] == "v000002/layer0-delta-from-000001.rpk"
    for entry in (e1, e2):
        for kind, f in entry["files"].items():
            p = st.file("books", entry["version"], kind)
            assert p == st.root / "books" / f["path"]
            assert p.stat().st_size == f["bytes"] and sha(p) == f["sha256"]
            assert p.stat().st_mode & 0o777 == 0o644  # readable by a service running as another user
        idx = entry["index"]
        assert idx["kind"] == "usearch-hnsw" and idx["metric"] == "ip"
        assert (idx["connectivity"], idx["expansion_add"], idx["expansion_search"]) == (32, 128, 256)
        assert idx["recall_at_50"] >= 0.95
    assert e1["index"]["recall_queries"] == "items+noise" and e2["index"]["recall_queries"] == "users"
    assert [s for s, _, _ in stages] == ["prepare", "pack", "layer0", "arrays", "index", "recall", "publish", "done"]
    assert stages[-1][1] == stages[-1][2]
    # only published things in the catalog folder
    assert sorted(p.name for p in (st.root / "books").iterdir()) == [".lock", "manifest.json", "v000001", "v000002"]
    # server-side arrays: sorted by id, aligned
    order = np.argsort(ids2)
    np.testing.assert_array_equal(np.load(st.file("books", 2, "ids")), ids2[order])
    np.testing.assert_array_equal(np.load(st.file("books", 2, "vectors")), X2[order])
    np.testing.assert_array_equal(np.load(st.file("books", 2, "user_ids")), np.arange(300)[::-1][::-1] * 2)
    np.testing.assert_array_equal(np.load(st.file("books", 2, "users")), users[::-1])
    # the manifest is plain JSON on disk
    assert json.loads((st.root / "books" / "manifest.json").read_text()) == m


def test_pack_contents(two_versions):
    st, (ids, X), (ids2, X2, _), e1, e2, _ = two_versions
    with PackReader(st.file("books", 2, "pack")) as pack, PackReader(st.file("books", 2, "layer0")) as l0:
        assert pack.n_layers == 2 and l0.n_layers == 1
        assert pack.metadata["catalog"] == "books" and pack.metadata["catalog_version"] == 2
        assert l0.metadata["catalog_version"] == 2
        np.testing.assert_array_equal(pack.item_ids, np.sort(ids2))
        np.testing.assert_array_equal(l0.item_ids, np.sort(ids2))
        assert pack.codec(0).to_bytes() == l0.codec(0).to_bytes()
        np.testing.assert_array_equal(pack.layer_codes(0), l0.layer_codes(0))
        assert pack.verify().ok and l0.verify().ok


def test_deltas_apply_byte_identical(two_versions, tmp_path):
    st, *_ = two_versions
    for full, delta in (("pack", "delta"), ("layer0", "layer0_delta")):
        out = apply_delta(st.file("books", 1, full), st.file("books", 2, delta), tmp_path / f"{full}.rpk")
        assert out.read_bytes() == st.file("books", 2, full).read_bytes()
    # the layer-0 codec (pq4) is reused: the phone's layer-0 delta carries only added and changed items
    # (at this tiny n the codec section, carried in every delta, dominates the bytes)
    assert st.version_info("books", 2)["codecs_reused"][0] is True
    with PackReader(st.file("books", 2, "layer0_delta")) as d:
        assert 40 <= d.n_items < 0.2 * N
    assert st.file("books", 2, "layer0_delta").stat().st_size < st.file("books", 2, "layer0").stat().st_size


def test_index_file_searches(two_versions):
    st, _, (ids2, X2, users), _, e2, _ = two_versions
    index = HNSWIndex.load(st.file("books", 2, "index"))
    assert index.n_items == e2["n_items"]
    assert index.recall_at(X2, users[:50], 10, ids=ids2) >= 0.95


def test_lookup_errors(two_versions):
    st, *_ = two_versions
    with pytest.raises(NotFoundError, match="unknown catalog"):
        st.manifest("films")
    with pytest.raises(NotFoundError):
        st.versions("films")
    with pytest.raises(NotFoundError, match="no version 3"):
        st.version_info("books", 3)
    with pytest.raises(NotFoundError):
        st.file("books", 7, "pack")
    with pytest.raises(NotFoundError, match="no delta"):
        st.file("books", 1, "delta")
    with pytest.raises(NotFoundError, match="no users"):
        st.file("books", 1, "users")
    with pytest.raises(InvalidInputError, match="kind"):
        st.file("books", 1, "manifest")
    for bad in (0, -1, "1", 1.0, True):
        with pytest.raises(InvalidInputError, match="version"):
            st.version_info("books", bad)
    assert issubclass(NotFoundError, LookupError)


# ------------------------------------------------------------------------------------------------ chains
def test_refit_and_fresh_chain(tmp_path):
    st = CatalogStore(tmp_path)
    ids, X = catalog(seed=0)
    build_catalog(st, "c", ids, X, index=False)
    ids_b, X_b = catalog(seed=5)  # another catalog entirely: the layer-0 codec is re-fitted
    e2 = build_catalog(st, "c", ids_b, X_b, index=False)
    assert e2["delta_from"] == 1 and e2["index"] is None and "index" not in e2["files"]
    assert e2["codecs_reused"][0] is False
    for full, delta in (("pack", "delta"), ("layer0", "layer0_delta")):
        out = apply_delta(st.file("c", 1, full), st.file("c", 2, delta), tmp_path / "x.rpk")
        assert out.read_bytes() == st.file("c", 2, full).read_bytes()
    with PackReader(st.file("c", 2, "pack")) as a, PackReader(st.file("c", 2, "layer0")) as b:
        assert a.codec(0).to_bytes() == b.codec(0).to_bytes()
    # other codecs (or block size): a fresh chain, no delta
    e3 = build_catalog(st, "c", ids_b, X_b, codecs="sq8", index=False)
    assert e3["delta_from"] is None and e3["codecs"] == ["sq8"] and "delta" not in e3["files"]
    e4 = build_catalog(st, "c", ids_b, X_b, index=False)  # default codecs: the previous version's
    assert e4["codecs"] == ["sq8"] and e4["delta_from"] == 3
    e5 = build_catalog(st, "c", ids_b, X_b, index=False, items_per_block=100)
    assert e5["delta_from"] is None and e5["items_per_block"] == 100


# ------------------------------------------------------------------------------------------------ delete
def test_delete_version(tmp_path):
    st = CatalogStore(tmp_path)
    ids, X = catalog()
    for _ in range(3):
        build_catalog(st, "d", ids, X, index=False)
    st.delete_version("d", 1)
    assert st.versions("d") == [2, 3] and not (tmp_path / "d" / "v000001").exists()
    with pytest.raises(NotFoundError):
        st.file("d", 1, "pack")
    with pytest.raises(NotFoundError):
        st.delete_version("d", 1)
    with pytest.raises(InvalidInputError, match="latest"):
        st.delete_version("d", 3)
    with pytest.raises(NotFoundError):
        st.delete_version("nope", 1)
    st.delete_version("d", 2)
    assert st.versions("d") == [3]
    e4 = build_catalog(st, "d", ids, X, index=False)  # numbers are never reused
    assert e4["version"] == 4 and e4["delta_from"] == 3


# ------------------------------------------------------------------------------------------------ crash safety
@pytest.mark.parametrize(
    "target", ["reelpack.catalog.pipeline.save_npy", "reelpack.catalog.store._write_manifest", "reelpack.format.make_delta"]
)
def test_crash_mid_build_leaves_previous_version(tmp_path, monkeypatch, target):
    st = CatalogStore(tmp_path)
    ids, X = catalog()
    build_catalog(st, "c", ids, X, index=False)
    before = (tmp_path / "c" / "manifest.json").read_bytes()
    ids2, X2 = next_catalog(ids, X)

    def boom(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(target, boom)
    with pytest.raises(RuntimeError, match="simulated"):
        build_catalog(st, "c", ids2, X2, index=False)
    monkeypatch.undo()
    assert (tmp_path / "c" / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [".lock", "manifest.json", "v000001"]
    for kind in ("pack", "layer0", "vectors", "ids"):
        f = st.version_info("c", 1)["files"][kind]
        assert sha(st.file("c", 1, kind)) == f["sha256"]
    assert build_catalog(st, "c", ids2, X2, index=False)["version"] == 2


def test_stale_staging_and_orphans_are_ignored_then_cleaned(tmp_path):
    st = CatalogStore(tmp_path)
    ids, X = catalog()
    build_catalog(st, "c", ids, X, index=False)
    (tmp_path / "c" / ".staging-deadbeef").mkdir()
    (tmp_path / "c" / ".staging-deadbeef" / "pack.rpk").write_bytes(b"half")
    (tmp_path / "c" / "v000002").mkdir()  # renamed, but the manifest was never replaced (crash)
    (tmp_path / "c" / ".manifest.json.abc.tmp").write_bytes(b"{")
    assert st.versions("c") == [1]
    e2 = build_catalog(st, "c", ids, X, index=False)
    assert e2["version"] == 2 and st.file("c", 2, "pack").is_file()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [".lock", "manifest.json", "v000001", "v000002"]
    assert (tmp_path / "c" / "manifest.json").stat().st_mode & 0o777 == 0o644


def test_failed_first_build_publishes_nothing(tmp_path):
    st = CatalogStore(tmp_path)
    ids, X = catalog()
    with pytest.raises(CodecSpecError):
        build_catalog(st, "c", ids, X, codecs=("pq4", "nonsense9"))
    X_bad = X.copy()
    X_bad[5, 2] = np.nan
    with pytest.raises(NonFiniteError):
        build_catalog(st, "c", ids, X_bad)
    assert st.catalogs() == []


# ------------------------------------------------------------------------------------------------ corrupt manifests
@pytest.mark.parametrize(
    "corrupt",
    [
        lambda m: "{not json",
        lambda m: json.dumps([]),
        lambda m: json.dumps({**m, "catalog": "other"}),
        lambda m: json.dumps({**m, "format": 99}),
        lambda m: json.dumps({**m, "latest": 7}),
        lambda m: json.dumps({**m, "versions": []}),
        lambda m: json.dumps({**m, "versions": [{**m["versions"][0], "files": {
            **m["versions"][0]["files"], "pack": {"path": "../../etc/passwd", "bytes": 1, "sha256": "0" * 64}}}]}),
        lambda m: json.dumps({**m, "versions": [{**m["versions"][0], "n_items": "many"}]}),
    ],
)
def test_corrupt_manifest_is_a_store_error(tmp_path, corrupt):
    st = CatalogStore(tmp_path)
    ids, X = catalog(n=200)
    build_catalog(st, "c", ids, X, codecs="sq8", index=False)
    path = tmp_path / "c" / "manifest.json"
    path.write_text(corrupt(json.loads(path.read_text())))
    damaged = path.read_bytes()
    with pytest.raises(StoreError, match="corrupt"):
        st.manifest("c")
    with pytest.raises(StoreError):
        st.file("c", 1, "pack")
    with pytest.raises(StoreError):  # a build never overwrites a manifest it cannot read
        build_catalog(st, "c", ids, X, codecs="sq8", index=False)
    assert path.read_bytes() == damaged


def test_missing_file_is_a_store_error(tmp_path):
    st = CatalogStore(tmp_path)
    ids, X = catalog(n=200)
    build_catalog(st, "c", ids, X, codecs="sq8", index=False)
    (tmp_path / "c" / "v000001" / "layer0.rpk").unlink()
    with pytest.raises(StoreError, match="missing"):
        st.file("c", 1, "layer0")


# ------------------------------------------------------------------------------------------------ concurrency
def test_concurrent_builds_serialise(tmp_path):
    st = CatalogStore(tmp_path)
    ids, X = catalog(n=800)
    ids2, X2 = next_catalog(ids, X)
    events: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def run(name, a, b):
        try:
            build_catalog(st, "c", a, b, index=False, progress=lambda s, *_: events.append((name, s)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("A", ids, X)), threading.Thread(target=run, args=("B", ids2, X2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert st.versions("c") == [1, 2] and st.version_info("c", 2)["delta_from"] == 1
    # each build ran prepare..publish without the other one's stages in between
    inner = [name for name, s in events if s != "done"]
    first = inner[0]
    n_first = inner.count(first)
    assert inner[:n_first] == [first] * n_first
    out = apply_delta(st.file("c", 1, "pack"), st.file("c", 2, "delta"), tmp_path / "x.rpk")
    assert out.read_bytes() == st.file("c", 2, "pack").read_bytes()


# ------------------------------------------------------------------------------------------------ bad input
def test_build_bad_input(tmp_path):
    st = CatalogStore(tmp_path)
    ids, X = catalog(n=200)
    with pytest.raises(InvalidInputError, match="unique"):
        build_catalog(st, "c", np.zeros(200, np.int64), X)
    with pytest.raises(DimensionMismatchError):
        build_catalog(st, "c", ids[:-1], X)
    with pytest.raises(DimensionMismatchError):
        build_catalog(st, "c", ids, X[:, :, None])
    with pytest.raises(DTypeError):
        build_catalog(st, "c", ids.astype(float), X)
    with pytest.raises(InvalidInputError, match="non-negative"):
        build_catalog(st, "c", ids - 10_000, X)
    with pytest.raises(DimensionMismatchError):
        build_catalog(st, "c", ids, X, users=np.ones((5, D + 1), np.float32))
    with pytest.raises(InvalidInputError, match="user_ids"):
        build_catalog(st, "c", ids, X, user_ids=np.arange(5))
    with pytest.raises(InvalidInputError, match="items_per_block"):
        build_catalog(st, "c", ids, X, items_per_block=0)
    with pytest.raises(InvalidInputError):
        build_catalog(st, "c", ids, X, seed=-1)
    assert st.catalogs() == []


def test_store_root_that_is_a_file(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(StoreError):
        CatalogStore(tmp_path / "f")


# ------------------------------------------------------------------------------------------------ load_embeddings
def test_load_embeddings_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, X = catalog(n=50, d=8)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "ids.npy", ids.astype(np.int32))
    got_ids, got_X = load_embeddings(tmp_path / "x.npy")
    np.testing.assert_array_equal(got_ids, np.arange(50))
    np.testing.assert_array_equal(got_X, X)
    got_ids, got_X = load_embeddings(tmp_path / "x.npy", tmp_path / "ids.npy")
    assert got_ids.dtype == np.int64 and got_X.dtype == np.float32
    np.testing.assert_array_equal(got_ids, ids)
    np.savez(tmp_path / "c.npz", ids=ids, vectors=X.astype(np.float64))
    got_ids, got_X = load_embeddings(tmp_path / "c.npz")
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_X, X)
    pq.write_table(pa.table({"id": ids, "embedding": [list(r) for r in X]}), tmp_path / "l.parquet")
    got_ids, got_X = load_embeddings(tmp_path / "l.parquet")
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_X, X)
    cols = {"id": ids, **{f"e{j}": X[:, j] for j in range(8)}}
    pq.write_table(pa.table(cols), tmp_path / "w.parquet")
    got_ids, got_X = load_embeddings(tmp_path / "w.parquet")
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_X, X)


def test_load_embeddings_bad_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, X = catalog(n=20, d=4)
    with pytest.raises(DataNotFoundError):
        load_embeddings(tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataFormatError):
        load_embeddings(tmp_path / "junk.npy")
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(DataFormatError, match="npy"):
        load_embeddings(tmp_path / "x.txt")
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "dup.npy", np.zeros(20, np.int64))
    with pytest.raises(InvalidInputError, match="unique"):
        load_embeddings(tmp_path / "x.npy", tmp_path / "dup.npy")
    np.save(tmp_path / "short.npy", np.arange(19))
    with pytest.raises(DimensionMismatchError):
        load_embeddings(tmp_path / "x.npy", tmp_path / "short.npy")
    np.save(tmp_path / "v1.npy", X[0])
    with pytest.raises(DimensionMismatchError):
        load_embeddings(tmp_path / "v1.npy")
    bad = X.copy()
    bad[3, 0] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    with pytest.raises(NonFiniteError):
        load_embeddings(tmp_path / "inf.npy")
    np.savez(tmp_path / "nokey.npz", vectors=X)
    with pytest.raises(DataFormatError, match="ids"):
        load_embeddings(tmp_path / "nokey.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK not a zip")
    with pytest.raises(DataFormatError):
        load_embeddings(tmp_path / "junk.npz")
    with pytest.raises(InvalidInputError, match="ids_path"):
        load_embeddings(tmp_path / "nokey.npz", tmp_path / "dup.npy")
    pq.write_table(pa.table({"key": ids, "embedding": [list(r) for r in X]}), tmp_path / "noid.parquet")
    with pytest.raises(DataFormatError, match="'id'"):
        load_embeddings(tmp_path / "noid.parquet")
    ragged = [list(r) for r in X]
    ragged[4] = ragged[4][:2]
    pq.write_table(pa.table({"id": ids, "embedding": ragged}), tmp_path / "ragged.parquet")
    with pytest.raises(DataFormatError, match="length"):
        load_embeddings(tmp_path / "ragged.parquet")
    pq.write_table(pa.table({"id": ids, "e0": X[:, 0], "e2": X[:, 2]}), tmp_path / "gap.parquet")
    with pytest.raises(DataFormatError, match="e0"):
        load_embeddings(tmp_path / "gap.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(DataFormatError):
        load_embeddings(tmp_path / "junk.parquet")


# ------------------------------------------------------------------------------------------------ CLI
runner = CliRunner()


def test_cli_build_catalog(tmp_path):
    ids, X = catalog(n=600)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "u.npy", X[:40] + 0.01)
    root = tmp_path / "store"
    args = ["build-catalog", str(tmp_path / "x.npy"), "--store", str(root), "--catalog", "films",
            "--ids", str(tmp_path / "ids.npy"), "--codecs", "sq4 sq8", "--users", str(tmp_path / "u.npy"),
            "--items-per-block", "128", "--seed", "2"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "published films version 1" in res.output
    st = CatalogStore(root)
    e1 = st.version_info("films", 1)
    assert e1["codecs"] == ["sq4", "sq8"] and e1["items_per_block"] == 128 and e1["n_users"] == 40
    assert json.loads(res.output[res.output.index("{"):]) == e1
    res = runner.invoke(app, args[:-2] + ["--no-index"])
    assert res.exit_code == 0, res.output
    assert st.version_info("films", 2)["index"] is None and st.version_info("films", 2)["delta_from"] == 1


def test_cli_build_catalog_synthetic_and_errors(tmp_path):
    root = tmp_path / "store"
    res = runner.invoke(app, ["build-catalog", "--synthetic", "500", "--dim", "16", "--store", str(root),
                              "--catalog", "demo", "--codecs", "sq8"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "SYNTHETIC" in res.output
    e = CatalogStore(root).version_info("demo", 1)
    assert (e["n_items"], e["dim"], e["n_users"]) == (500, 16, 500)
    res = runner.invoke(app, ["build-catalog", "--synthetic", "50", "--store", str(root), "--catalog", "../evil"])
    assert res.exit_code == 2 and "invalid catalog name" in res.output
    res = runner.invoke(app, ["build-catalog", str(tmp_path / "nope.npy"), "--store", str(root), "--catalog", "x"])
    assert res.exit_code == 2 and "not found" in res.output
    res = runner.invoke(app, ["build-catalog", "--store", str(root), "--catalog", "x"])
    assert res.exit_code == 2 and "--synthetic" in res.output
    assert CatalogStore(root).catalogs() == ["demo"]


# ------------------------------------------------------------------------------------------------ manifest fuzz
def test_manifest_parser_fuzz(tmp_path):
    """Whatever bytes sit in manifest.json, reading it gives a valid manifest or a StoreError, nothing else."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st_

    store = CatalogStore(tmp_path)
    ids, X = catalog(n=100)
    build_catalog(store, "f", ids, X, codecs="sq8", index=False)
    path = tmp_path / "f" / "manifest.json"
    good = path.read_bytes()
    json_values = st_.recursive(
        st_.none() | st_.booleans() | st_.integers(-3, 3) | st_.floats(allow_nan=False) | st_.text(max_size=8),
        lambda inner: st_.lists(inner, max_size=3) | st_.dictionaries(st_.text(max_size=8), inner, max_size=3),
        max_leaves=10,
    )

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        cut=st_.integers(0, len(good)),
        flip=st_.integers(0, len(good) - 1),
        byte=st_.integers(0, 255),
        key=st_.sampled_from(["catalog", "format", "latest", "versions", "files", "path", "bytes", "sha256", "version"]),
        value=json_values,
        mode=st_.sampled_from(["cut", "flip", "replace"]),
    )
    def check(cut, flip, byte, key, value, mode):
        if mode == "cut":
            data = good[:cut]
        elif mode == "flip":
            data = good[:flip] + bytes([byte]) + good[flip + 1 :]
        else:
            m = json.loads(good)
            entry = m["versions"][0]
            target = m if key in m else entry if key in entry else entry["files"]["pack"]
            target[key] = value
            data = json.dumps(m).encode()
        path.write_bytes(data)
        try:
            m = store.manifest("f")
        except StoreError:
            return
        assert m["latest"] == 1 and m["versions"][0]["version"] == 1
        for f in m["versions"][0]["files"].values():
            assert f["path"].startswith("v000001/") and ".." not in f["path"].split("/")

    try:
        check()
    finally:
        path.write_bytes(good)
