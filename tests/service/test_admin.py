"""Admin publish and delete against hostile or careless uploads: every array header is checked against the body
and the service's limits before anything is allocated, and a rejected request leaves the store byte for byte as it
was (no catalog folder, no lock file, no staging folder)."""

from __future__ import annotations

import io
import os
import warnings
import zipfile

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's "install httpx2" deprecation note
    from fastapi.testclient import TestClient

from reelpack.catalog.store import CatalogStore, build_catalog
from reelpack.service.app import create_app
from reelpack.service.routes import admin

D, KEY = 16, "s3cret-key"
AUTH = {"X-API-Key": KEY}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _npz(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _lying_npz(shape: tuple[int, ...], body_bytes: int, ids: np.ndarray | None = None) -> bytes:
    """An .npz whose 'vectors' member has an npy header claiming float32 ``shape`` over ``body_bytes`` of zeros."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": shape})
    member.write(bytes(body_bytes))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("vectors.npy", member.getvalue())
        if ids is not None:
            zf.writestr("ids.npy", _npy(ids))
    return buf.getvalue()


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def _snapshot(root) -> dict[str, bytes | None]:
    """Every path under root, hidden ones included: file -> its bytes, folder -> None."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, names in os.walk(root):
        for n in dirnames:
            out[os.path.relpath(os.path.join(dirpath, n), root)] = None
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def _error(r, status: int, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    message = r.json()["error"]["message"]
    for w in words:
        assert w in message, (w, message)
    return message


@pytest.fixture()
def news(tmp_path):
    """(store, X): catalog 'news' (300 x 16, pq4 sq8, one version) published by the library."""
    X = _unit(np.random.default_rng(2).normal(size=(300, D)))
    store = CatalogStore(tmp_path / "admin-store")
    build_catalog(store, "news", np.arange(300), X, codecs=("pq4", "sq8"), items_per_block=64, index=False)
    return store, X


# ================================================================================================
# Array headers are checked before anything is allocated
# ================================================================================================
def test_npy_header_claiming_a_huge_shape_is_refused(news):
    store, _ = news
    c = TestClient(create_app(store.root, api_key=KEY), raise_server_exceptions=False)
    body = _lying_npz((10**12, 64), 16_384, ids=np.arange(4))  # a 17 KB upload
    assert len(body) < 20_000
    _error(c.post("/v1/admin/catalogs/news/versions", content=body, headers=AUTH), 422, "vectors", "shape")
    # a header that claims fewer bytes than the member holds is as inconsistent
    body = _lying_npz((4, 16), 4 * 16 * 4 + 40, ids=np.arange(4))
    _error(c.post("/v1/admin/catalogs/news/versions", content=body, headers=AUTH), 422, "vectors")
    assert store.versions("news") == [1]


def test_wide_vectors_are_refused_before_any_codec_runs(news):
    store, _ = news
    c = TestClient(create_app(store.root, api_key=KEY), raise_server_exceptions=False)
    X = np.random.default_rng(0).normal(size=(4, 200_000)).astype(np.float32)
    body = _npz(ids=np.arange(4), vectors=X)
    r = c.post("/v1/admin/catalogs/wide/versions", params={"codecs": "simhash128"}, content=body, headers=AUTH)
    _error(r, 413, "200000", str(admin.MAX_PUBLISH_DIM))
    assert not (store.root / "wide").exists()


def test_row_and_unpacked_size_limits(news, monkeypatch):
    store, X = news
    c = TestClient(create_app(store.root, api_key=KEY, max_body_bytes=200_000), raise_server_exceptions=False)
    url = "/v1/admin/catalogs/news/versions"
    # compressed zeros: a small body that would unpack to 64 MiB
    zeros = _npz(compressed=True, ids=np.zeros(1 << 20, np.int64), vectors=np.zeros((1 << 20, D), np.float32))
    assert len(zeros) < 200_000
    _error(c.post(url, content=zeros, headers=AUTH), 413, "unpack")
    monkeypatch.setattr(admin, "MAX_PUBLISH_ROWS", 100)
    _error(c.post(url, content=_npz(ids=np.arange(300), vectors=X), headers=AUTH), 413, "300", "100")
    assert store.versions("news") == [1]


# ================================================================================================
# Rejected requests change nothing in the store
# ================================================================================================
def test_every_rejected_admin_request_leaves_the_store_unchanged(news, monkeypatch):
    store, X = news
    c = TestClient(create_app(store.root, api_key=KEY, max_body_bytes=200_000), raise_server_exceptions=False)
    good = _npz(ids=np.arange(300), vectors=X)
    before = _snapshot(store.root)
    requests = [
        # deletions: unknown catalog, unknown version, the latest, bad auth
        (lambda: c.delete("/v1/admin/catalogs/nope/versions/1", headers=AUTH), 404),
        (lambda: c.delete("/v1/admin/catalogs/news/versions/7", headers=AUTH), 404),
        (lambda: c.delete("/v1/admin/catalogs/news/versions/1", headers=AUTH), 400),
        (lambda: c.delete("/v1/admin/catalogs/nope/versions/1"), 401),
        (lambda: c.delete("/v1/admin/catalogs/nope/versions/1", headers={"X-API-Key": "wrong"}), 403),
    ]
    for cat in ("news", "fresh"):  # an existing catalog and a new one
        url = f"/v1/admin/catalogs/{cat}/versions"
        requests += [
            (lambda url=url: c.post(url, content=good), 401),
            (lambda url=url: c.post(url, content=good, headers={"X-API-Key": "wrong"}), 403),
            (lambda url=url: c.post(url, params={"codecs": "pq3x9"}, content=good, headers=AUTH), 400),
            (lambda url=url: c.post(url, content=b"not an npz", headers=AUTH), 400),
            (lambda url=url: c.post(url, content=_npz(ids=np.arange(299), vectors=X), headers=AUTH), 400),
            (lambda url=url: c.post(url, content=_lying_npz((10**12, 64), 16_384, np.arange(4)), headers=AUTH), 422),
            (lambda url=url: c.post(url, content=b"x" * 300_000, headers=AUTH), 413),
            # users of another dimension than the vectors
            (lambda url=url: c.post(url, content=_npz(ids=np.arange(300), vectors=X, users=X[:3, :8],
                                                      user_ids=np.arange(3)), headers=AUTH), 400),
            # a spec that parses but does not fit the data (pq5 needs d % 5 == 0): refused inside the build
            (lambda url=url: c.post(url, params={"codecs": "pq5"}, content=good, headers=AUTH), 400),
        ]
    # the existing chain is pq4: vectors of dimension 6 cannot continue it (pq4 needs d % 4 == 0)
    narrow = _npz(ids=np.arange(300), vectors=_unit(X[:, :6]))
    requests.append((lambda: c.post("/v1/admin/catalogs/news/versions", content=narrow, headers=AUTH), 400))
    for send, status in requests:
        _error(send(), status)
        assert _snapshot(store.root) == before, (send, status)

    # a failure inside the build (a bug, 500) of a new catalog removes what the build created
    def boom(*a, **k):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr("reelpack.catalog.pipeline.save_npy", boom)
    for cat in ("news", "fresh"):
        _error(c.post(f"/v1/admin/catalogs/{cat}/versions", content=good, headers=AUTH), 500)
        assert _snapshot(store.root) == before, cat
    assert store.versions("news") == [1]


def test_publish_and_delete_still_work(news):
    store, X = news
    c = TestClient(create_app(store.root, api_key=KEY))
    r = c.post("/v1/admin/catalogs/news/versions", content=_npz(ids=np.arange(300), vectors=X), headers=AUTH)
    assert r.status_code == 201, r.text
    r = c.post("/v1/admin/catalogs/fresh/versions", params={"codecs": "sq8"},
               content=_npz(ids=np.arange(300), vectors=X[:, :6].copy()), headers=AUTH)  # fmt: skip
    assert r.status_code == 201 and r.json()["dim"] == 6, r.text
    assert c.delete("/v1/admin/catalogs/news/versions/1", headers=AUTH).status_code == 204
    assert store.versions("news") == [2] and store.versions("fresh") == [1]
    assert sorted(p.name for p in (store.root / "fresh").iterdir()) == [".lock", "manifest.json", "v000001"]
