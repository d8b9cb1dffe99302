"""A damaged server-side array (users.npy with bytes 10-20 overwritten) answers 500 ``store_error`` naming the
catalog and version, never a server path, instead of an internal error."""

from __future__ import annotations

import warnings

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's "install httpx2" deprecation note
    from fastapi.testclient import TestClient

from reelpack.catalog.store import CatalogStore, build_catalog
from reelpack.service.app import create_app


def test_damaged_users_array_is_a_store_error(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 8)).astype(np.float32)
    U = rng.standard_normal((5, 8)).astype(np.float32)
    store = CatalogStore(tmp_path / "store")
    build_catalog(store, "c", np.arange(120), X, codecs="sq8", users=U, user_ids=np.arange(5), index=False)
    path = store.file("c", 1, "users")
    raw = bytearray(path.read_bytes())
    raw[10:20] = b"\xff" * 10
    path.write_bytes(bytes(raw))
    c = TestClient(create_app(store.root), raise_server_exceptions=False)
    r = c.get("/v1/catalogs/c/users/1/vector")
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert error["code"] == "store_error" and "'c' version 1" in error["message"]
    assert str(tmp_path) not in r.text and "bug" not in error["message"]
    assert c.get("/v1/health").json() == {"status": "ok"}
