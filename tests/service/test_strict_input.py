"""``If-Range`` needs a strong match (RFC 9110 13.1.5), and every query, path and JSON-body value of the read
routes has exactly its type: no strings for numbers, no booleans for numbers, no ``1.0`` or ``1_000`` for integers.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's "install httpx2" deprecation note
    from fastapi.testclient import TestClient

from reelpack.catalog.store import CatalogStore, build_catalog
from reelpack.service.app import create_app

N, D = 300, 8
IDS = np.arange(N, dtype=np.int64) * 2 + 1
USER_IDS = np.arange(10, dtype=np.int64)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(N, D)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    U = rng.normal(size=(USER_IDS.size, D)).astype(np.float32)
    store = CatalogStore(tmp_path_factory.mktemp("strict") / "store")
    build_catalog(store, "books", IDS, X, codecs=("sq8", "sq4"), users=U, user_ids=USER_IDS, edge=True, edge_nlist=4)
    return store, TestClient(create_app(store.root))


def _validation(r) -> None:
    assert r.status_code == 422, (r.request.url, r.status_code, r.text)
    assert r.json()["error"]["code"] == "validation_error"


# ================================================================================================
# If-Range
# ================================================================================================
def test_if_range_needs_a_strong_match(served):
    store, c = served
    url = "/v1/catalogs/books/versions/1/files/layer0"
    full = store.file("books", 1, "layer0").read_bytes()
    etag = c.head(url).headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    ok = c.get(url, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert ok.status_code == 206 and ok.content == full[10:20]
    assert c.get(url, headers={"Range": "bytes=10-19", "If-Range": f" {etag} "}).status_code == 206
    for if_range in (f"W/{etag}", "*", etag.strip('"'), f'"x", {etag}', f"{etag}, {etag}",
                     "Sat, 01 Jan 2000 00:00:00 GMT", '""', "W/*"):  # fmt: skip
        r = c.get(url, headers={"Range": "bytes=10-19", "If-Range": if_range})
        assert r.status_code == 200 and r.content == full, if_range
        assert "content-range" not in r.headers and int(r.headers["content-length"]) == len(full)
        head = c.head(url, headers={"Range": "bytes=10-19", "If-Range": if_range})
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(full)
    # If-None-Match keeps the weak comparison (RFC 9110 13.1.2): W/ and * still give 304
    for inm in (f"W/{etag}", "*", f'"x", {etag}'):
        assert c.get(url, headers={"If-None-Match": inm}).status_code == 304


# ================================================================================================
# Strict types: JSON bodies
# ================================================================================================
@pytest.mark.parametrize(
    "url, body",
    [
        ("/v1/retrieve", {"catalog": "books", "vector": [0.1] * D, "k": "3"}),
        ("/v1/retrieve", {"catalog": "books", "vector": [0.1] * D, "k": True}),
        ("/v1/retrieve", {"catalog": "books", "vector": [0.1] * D, "k": 3.0}),
        ("/v1/retrieve", {"catalog": "books", "vector": [0.1] * D, "version": "1"}),
        ("/v1/retrieve", {"catalog": "books", "vector": [0.1] * D, "version": True}),
        ("/v1/retrieve", {"catalog": "books", "vector": ["0.1"] + [0.1] * (D - 1)}),
        ("/v1/retrieve", {"catalog": "books", "vector": [True] + [0.1] * (D - 1)}),
        ("/v1/retrieve", {"catalog": 7, "vector": [0.1] * D}),
        ("/v1/retrieve", {"catalog": ["books"], "vector": [0.1] * D}),
        ("/v1/retrieve", {"catalog": "books", "vector": "0.1"}),
        ("/v1/catalogs/books/versions/1/refine", {"ids": [1], "layer": "1"}),
        ("/v1/catalogs/books/versions/1/refine", {"ids": [1], "layer": True}),
        ("/v1/catalogs/books/versions/1/refine", {"ids": [1], "layer": 1.0}),
        ("/v1/catalogs/books/versions/1/refine", {"ids": [True]}),
        ("/v1/catalogs/books/versions/1/refine", {"ids": [1.0]}),
        ("/v1/catalogs/books/versions/1/refine", {"ids": "1"}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"vector": [0.1] * D, "lam": "0.5"}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"vector": [0.1] * D, "lam": True}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"vector": [0.1] * D, "lam": None}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"vector": [0.1] * D, "budget_bytes": "4096"}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"vector": [0.1] * D, "budget_bytes": True}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"vector": [0.1] * D, "budget_bytes": 4096.0}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"vector": [False] * D}),
    ],
)
def test_json_fields_have_strict_types(served, url, body):
    _validation(served[1].post(url, json=body))


def test_json_fields_strict_but_numbers_still_numbers(served):
    c = served[1]
    r = c.post("/v1/retrieve", json={"catalog": "books", "vector": [0] + [0.1] * (D - 1), "k": 2})
    assert r.status_code == 200 and len(r.json()["ids"]) == 2  # a JSON integer is a number
    r = c.post("/v1/catalogs/books/versions/1/edge-summary", json={"vector": [0.1] * D, "lam": 1})
    assert r.status_code == 200
    r = c.post("/v1/catalogs/books/versions/1/edge-summary", json={"vector": [0.1] * D, "lam": 0.25})
    assert r.status_code == 200


# ================================================================================================
# Strict types: query and path parameters (their text must be a plain decimal number)
# ================================================================================================
@pytest.mark.parametrize(
    "url, params",
    [
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": 1, "lam": "true"}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": 1, "lam": "nan"}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": 1, "lam": "inf"}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": 1, "lam": "1_0.5"}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": 1, "lam": " 0.5"}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": 1, "lam": ""}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": "1.0"}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": "true"}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": "1_0"}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": "+1"}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": 1, "budget_bytes": "4096.0"}),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": 1, "budget_bytes": " 4096"}),
        ("/v1/catalogs/books/users/1/vector", {"version": "1.0"}),
        ("/v1/catalogs/books/users/1/vector", {"version": "true"}),
        ("/v1/catalogs/books/users/1/vector", {"since": "1_0"}),
        ("/v1/catalogs/books/users/1/vector", {"since": "0x1"}),
        ("/v1/catalogs/books/users/1.0/vector", {}),
        ("/v1/catalogs/books/users/+1/vector", {}),
        ("/v1/catalogs/books/versions/1.0/files/pack", {}),
        ("/v1/catalogs/books/versions/1_0/files/pack", {}),
        ("/v1/catalogs/books/versions/1/codecs/0.0", {}),
        ("/v1/catalogs/books/versions/true/codecs/0", {}),
    ],
)
def test_query_and_path_numbers_are_plain_decimals(served, url, params):
    _validation(served[1].get(url, params=params))


def test_plain_decimals_still_accepted(served):
    c = served[1]
    assert c.get("/v1/catalogs/books/versions/1/edge-summary", params={"user_id": "1", "lam": "0.5"}).status_code == 200
    assert c.get("/v1/catalogs/books/versions/1/edge-summary", params={"user_id": 1, "lam": "1"}).status_code == 200
    assert c.get("/v1/catalogs/books/versions/1/edge-summary", params={"user_id": 1, "lam": "2.5e-1"}).status_code == 200
    assert c.get("/v1/catalogs/books/users/1/vector", params={"version": "1", "since": "1"}).status_code == 200
    assert c.get("/v1/catalogs/books/versions/1/codecs/0").status_code == 200
    r = c.get("/v1/catalogs/books/users/1/vector", params={"version": "-1"})
    _validation(r)
    assert "greater than or equal to 1" in r.json()["error"]["message"]  # the range message, not a parse error
