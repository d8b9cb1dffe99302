"""No error answer of the pack service names a server path: every route, every error status the tests can
provoke (404, 400, 401, 403, 405, 413, 416, 422 and 500 from a damaged store). The details go to the server log.
"""

from __future__ import annotations

import io
import json
import logging
import re
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's "install httpx2" deprecation note
    from fastapi.testclient import TestClient

from reelpack.catalog.store import CatalogStore, build_catalog
from reelpack.service.app import create_app

N, D, KEY = 400, 8, "k3y"
IDS = np.arange(N, dtype=np.int64) * 2 + 1
USER_IDS = np.arange(10, dtype=np.int64)
# a '/'-rooted path: a slash after a space, quote, bracket, '=' or ':' (or at the start), then a path character
_ABS_PATH = re.compile(r"(?:^|[\s'\"`(\[{=:,])/[\w.~-]")
_WIN_PATH = re.compile(r"\b[A-Za-z]:\\")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture()
def store(tmp_path) -> CatalogStore:
    """Catalogs: 'books' v1, v2 (users, index, edge on v2); 'plain' (no index); 'broken*' to damage one way each."""
    rng = np.random.default_rng(1)
    X = _unit(rng.normal(size=(N, D)))
    U = rng.normal(size=(USER_IDS.size, D)).astype(np.float32)
    s = CatalogStore(tmp_path / "store")
    build_catalog(s, "books", IDS, X, codecs=("sq8", "sq4"), users=U, user_ids=USER_IDS, items_per_block=128)
    build_catalog(s, "books", IDS, X[::-1].copy(), users=U, user_ids=USER_IDS, edge=True, edge_nlist=8)
    build_catalog(s, "plain", IDS[:100], X[:100], codecs=("sq8",), index=False)
    for name in ("layer", "pack", "noindex", "badindex", "manifest", "users", "noedge"):
        build_catalog(s, f"broken-{name}", IDS, X, codecs=("sq8",), users=U, user_ids=USER_IDS,
                      edge=name == "noedge", edge_nlist=8 if name == "noedge" else None)  # fmt: skip
    return s


def _assert_no_path(r, root, status: int | tuple[int, ...] | None = None) -> None:
    if status is not None:
        expected = status if isinstance(status, tuple) else (status,)
        assert r.status_code in expected, (r.request.method, r.request.url, r.status_code, r.text)
    assert r.status_code >= 400, (r.request.url, r.status_code)
    text = r.text
    for root_text in {str(root), str(root.resolve()), str(root.parent), str(root.resolve().parent)}:
        assert root_text not in text, (r.request.url, text)
    assert not _ABS_PATH.search(text) and not _WIN_PATH.search(text), (r.request.url, text)
    if r.request.method == "HEAD":
        assert r.content == b""
        return
    body = r.json()["error"]
    assert body["status"] == r.status_code and body["message"]


def _client_errors(c: TestClient) -> list:
    """One request per route and client-caused error status."""
    v = [0.1] * D
    auth = {"X-API-Key": KEY}
    j = {"Content-Type": "application/json"}
    out = [
        # 404: unknown catalog, version, file kind, layer, ids, user, route; no index / no edge catalog
        (c.get("/v1/catalogs/nonexistent"), 404),
        (c.get("/v1/catalogs/nonexistent", headers={"If-None-Match": '"x"'}), 404),
        (c.get("/v1/catalogs/nonexistent/versions/1/files/pack"), 404),
        (c.head("/v1/catalogs/nonexistent/versions/1/files/pack"), 404),
        (c.get("/v1/catalogs/books/versions/9/files/pack"), 404),
        (c.get("/v1/catalogs/books/versions/1/files/delta"), 404),
        (c.get("/v1/catalogs/books/versions/1/files/index"), 404),
        (c.get("/v1/catalogs/nonexistent/versions/1/codecs/0"), 404),
        (c.get("/v1/catalogs/books/versions/9/codecs/0"), 404),
        (c.get("/v1/catalogs/books/versions/2/codecs/7"), 404),
        (c.post("/v1/catalogs/nonexistent/versions/1/refine", json={"ids": [1]}), 404),
        (c.post("/v1/catalogs/books/versions/9/refine", json={"ids": [1]}), 404),
        (c.post("/v1/catalogs/books/versions/2/refine", json={"ids": [2, 4]}), 404),
        (c.post("/v1/retrieve", json={"catalog": "nonexistent", "vector": v}), 404),
        (c.post("/v1/retrieve", json={"catalog": "books", "version": 9, "vector": v}), 404),
        (c.post("/v1/retrieve", json={"catalog": "plain", "vector": v}), 404),
        (c.get("/v1/catalogs/nonexistent/users/1/vector"), 404),
        (c.get("/v1/catalogs/books/users/1/vector", params={"version": 9}), 404),
        (c.get("/v1/catalogs/books/users/12345/vector"), 404),
        (c.get("/v1/catalogs/plain/users/1/vector"), 404),
        (c.get("/v1/catalogs/nonexistent/versions/1/edge-summary", params={"user_id": 1}), 404),
        (c.get("/v1/catalogs/books/versions/1/edge-summary", params={"user_id": 1}), 404),
        (c.get("/v1/catalogs/books/versions/2/edge-summary", params={"user_id": 999}), 404),
        (c.post("/v1/catalogs/nonexistent/versions/1/edge-summary", json={"vector": v}), 404),
        (c.post("/v1/catalogs/books/versions/9/edge-summary", json={"vector": v}), 404),
        (c.delete("/v1/admin/catalogs/nonexistent/versions/1", headers=auth), 404),
        (c.delete("/v1/admin/catalogs/books/versions/9", headers=auth), 404),
        (c.get("/v1/no/such/route"), 404),
        # 400: bad names, bad input the typed errors catch
        (c.get("/v1/catalogs/Bad..Name"), 400),
        (c.post("/v1/catalogs/books/versions/2/refine", json={"ids": [1, 1]}), 400),
        (c.post("/v1/catalogs/books/versions/2/refine", json={"ids": [1], "layer": 9}), 400),
        (c.post("/v1/retrieve", json={"catalog": "books", "vector": v + [0.1]}), 400),
        (c.post("/v1/retrieve", json={"catalog": "../etc", "vector": v}), 400),
        (c.post("/v1/catalogs/books/versions/2/edge-summary", json={"vector": v[:-1]}), 400),
        (c.post("/v1/admin/catalogs/books/versions", content=b"not an npz", headers=auth), 400),
        (c.post("/v1/admin/catalogs/books/versions", params={"codecs": "pq3x9"},
                content=_npz(ids=IDS, vectors=np.ones((N, D), np.float32)), headers=auth), 400),
        # 401, 403
        (c.delete("/v1/admin/catalogs/books/versions/1"), 401),
        (c.delete("/v1/admin/catalogs/books/versions/1", headers={"X-API-Key": "nope"}), 403),
        # 405
        (c.put("/v1/health"), 405),
        # 413: too many ids, a body over the limit, a budget over the limit
        (c.post("/v1/catalogs/books/versions/2/refine", json={"ids": list(range(1, 40, 2))}), 413),
        (c.post("/v1/retrieve", content=b"[" * 3_000_000, headers=j), 413),
        (c.get("/v1/catalogs/books/versions/2/edge-summary", params={"user_id": 1, "budget_bytes": 10**9}), 413),
        (c.post("/v1/admin/catalogs/books/versions", content=b"x" * 3_000_000, headers=auth), 413),
        # 416
        (c.get("/v1/catalogs/books/versions/2/files/pack", headers={"Range": "bytes=99999999-"}), 416),
        (c.get("/v1/catalogs/books/versions/2/files/layer0", headers={"Range": "pages=/etc/passwd"}), 416),
        # 422: bad types and values
        (c.get("/v1/catalogs/books/versions/x/files/pack"), 422),
        (c.get("/v1/catalogs/books/versions/0/codecs/0"), 422),
        (c.post("/v1/catalogs/books/versions/2/refine", json={"ids": ["7"]}), 422),
        (c.post("/v1/catalogs/books/versions/2/refine", content=b"{", headers=j), 422),
        (c.post("/v1/retrieve", json={"catalog": "books", "vector": v, "k": 0}), 422),
        (c.get("/v1/catalogs/books/users/-1/vector"), 422),
        (c.get("/v1/catalogs/books/versions/2/edge-summary", params={"user_id": 1, "budget_bytes": 1}), 422),
        (c.get("/v1/catalogs/books/versions/2/edge-summary", params={"user_id": 1, "lam": "/etc"}), 422),
        (c.post("/v1/catalogs/books/versions/2/edge-summary", json={"vector": v, "lam": 9}), 422),
        (c.delete("/v1/admin/catalogs/books/versions/x", headers=auth), 422),
    ]
    return out


def test_client_errors_name_no_server_path(store):
    c = TestClient(create_app(store.root, api_key=KEY, max_refine_ids=5, max_body_bytes=2_000_000,
                              max_edge_bytes=1 << 20), raise_server_exceptions=False)  # fmt: skip
    for r, status in _client_errors(c):
        _assert_no_path(r, store.root, status)
    # the first answer that used to carry the store's path
    body = c.get("/v1/catalogs/nonexistent").json()["error"]
    assert body["code"] == "not_found" and "nonexistent" in body["message"]


def _damage(store: CatalogStore) -> None:
    root = store.root
    layer = store.file("broken-layer", 1, "layer0")
    layer.write_bytes(layer.read_bytes()[:1000])  # shorter than the manifest says
    pack = store.file("broken-pack", 1, "pack")
    pack.write_bytes(pack.read_bytes()[:200])
    store.file("broken-noindex", 1, "index").unlink()
    index = store.file("broken-badindex", 1, "index")
    index.write_bytes(b"\0" * 64)
    (root / "broken-manifest" / "manifest.json").write_text("{not json")
    users = store.file("broken-users", 1, "users")
    raw = bytearray(users.read_bytes())
    raw[10:20] = b"\xff" * 10
    users.write_bytes(bytes(raw))
    store.file("broken-noedge", 1, "edge").unlink()


def test_damaged_store_answers_name_no_server_path(store, caplog):
    _damage(store)
    c = TestClient(create_app(store.root, api_key=KEY), raise_server_exceptions=False)
    v = [0.1] * D
    fault = (500, 503)
    with caplog.at_level(logging.INFO, logger="reelpack.service"):
        cases = [
            (c.get("/v1/catalogs/broken-layer/versions/1/files/layer0"), fault),
            (c.head("/v1/catalogs/broken-layer/versions/1/files/layer0"), fault),
            (c.get("/v1/catalogs/broken-layer/versions/1/files/layer0", headers={"Range": "bytes=0-9"}), fault),
            (c.get("/v1/catalogs/broken-pack/versions/1/codecs/0"), fault),
            (c.post("/v1/catalogs/broken-pack/versions/1/refine", json={"ids": [1]}), fault),
            (c.post("/v1/retrieve", json={"catalog": "broken-noindex", "vector": v}), fault),
            (c.post("/v1/retrieve", json={"catalog": "broken-badindex", "vector": v}), fault),
            (c.get("/v1/catalogs/broken-manifest"), fault),
            (c.get("/v1/catalogs/broken-manifest/versions/1/files/pack"), fault),
            (c.post("/v1/catalogs/broken-manifest/versions/1/refine", json={"ids": [1]}), fault),
            (c.post("/v1/retrieve", json={"catalog": "broken-manifest", "vector": v}), fault),
            (c.get("/v1/catalogs/broken-manifest/users/1/vector"), fault),
            (c.delete("/v1/admin/catalogs/broken-manifest/versions/1", headers={"X-API-Key": KEY}), fault),
            (c.get("/v1/catalogs/broken-users/users/1/vector"), fault),
            (c.get("/v1/catalogs/broken-noedge/versions/1/edge-summary", params={"user_id": 1}), fault),
            (c.post("/v1/catalogs/broken-noedge/versions/1/edge-summary", json={"vector": v}), fault),
        ]
    for r, status in cases:
        _assert_no_path(r, store.root, status)
    assert c.get("/v1/health").json() == {"status": "ok"}
    # the layer file's answer names the catalog and version; the server log has the full detail
    msg = cases[0][0].json()["error"]["message"]
    assert "broken-layer" in msg and "1" in msg
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert str(store.root) in logged and "layer0" in logged


@pytest.mark.parametrize(
    "message, expected",
    [
        ("unknown catalog 'x' in store {root}", "unknown catalog 'x'"),
        ("{root}/books/v000001/layer0.rpk has 1000 bytes, the manifest says 146685",
         "layer0.rpk has 1000 bytes, the manifest says 146685"),
        ("cannot open HNSW index /srv/data/other/index.usearch: bad header", "cannot open HNSW index index.usearch: bad header"),
        ("cannot lock catalog 'a' in {root}: Permission denied", "cannot lock catalog 'a': Permission denied"),
        ("file ('{root}/a/b.npy') is bad", "file ('b.npy') is bad"),
        ("C:\\data\\store\\x.rpk is short", "x.rpk is short"),
        ("scale = max|diff| / 127 with bytes */100 and float32/fp16", "scale = max|diff| / 127 with bytes */100 and float32/fp16"),
        ("layer must be in 0..1, got 7", "layer must be in 0..1, got 7"),
    ],
)  # fmt: skip
def test_public_message_removes_paths(tmp_path, message, expected):
    from reelpack.service.http import public_message

    root = str(tmp_path / "store")
    assert public_message(message.format(root=root), [root]) == expected


def test_json_bodies_of_errors_are_objects(store):
    """The error body keeps its shape after the paths are taken out."""
    c = TestClient(create_app(store.root))
    r = c.get("/v1/catalogs/nonexistent")
    assert r.status_code == 404 and set(json.loads(r.text)["error"]) == {"status", "code", "message"}
