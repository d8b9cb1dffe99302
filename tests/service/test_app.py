"""The HTTP pack service (reelpack.service.app), in process through fastapi's TestClient (no network).

One small store (catalog "books": 1500 items x 16, two versions, user vectors) is built once with the real
build_catalog; admin tests publish into their own store.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import struct
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's "install httpx2" deprecation note
    from fastapi.testclient import TestClient

from reelpack.catalog.store import CatalogStore, build_catalog
from reelpack.codecs import codec_from_bytes
from reelpack.errors import SerializationError
from reelpack.format import PackReader, apply_delta, crc32c
from reelpack.service.app import (
    CHUNK_BYTES,
    RangeNotSatisfiable,
    create_app,
    decode_refine_frame,
    encode_refine_frame,
    parse_range,
    quantise_update,
)
from reelpack.service.http import read_span as _read_span

N, D, KEY = 1500, 16, "s3cret-key"
IDS = np.arange(N, dtype=np.int64) * 3 + 7
USER_IDS = np.arange(40, dtype=np.int64) * 2


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def books(tmp_path_factory):
    """(store, X1, X2, U1, U2): catalog 'books' v1 and v2 (v2 moves 100 items, adds user 999)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, D))
    X1 = _unit(centers[rng.integers(0, 20, N)] + 0.3 * rng.normal(size=(N, D)))
    X2 = X1.copy()
    X2[:100] = _unit(X2[:100] + 0.2 * rng.normal(size=(100, D)).astype(np.float32))
    U1 = rng.normal(size=(USER_IDS.size, D)).astype(np.float32)
    U2 = np.vstack([U1 + 0.05 * rng.normal(size=U1.shape), rng.normal(size=(1, D))]).astype(np.float32)
    store = CatalogStore(tmp_path_factory.mktemp("store"))
    build_catalog(store, "books", IDS, X1, codecs=("pq4", "sq8"), users=U1, user_ids=USER_IDS, items_per_block=256)
    build_catalog(store, "books", IDS, X2, users=U2, user_ids=np.append(USER_IDS, 999))
    build_catalog(store, "plain", IDS[:300], X1[:300], codecs=("sq8",), index=False)
    return store, X1, X2, U1, U2


@pytest.fixture(scope="module")
def client(books):
    return TestClient(create_app(books[0].root, api_key=KEY))


def _error(r, status: int, code: str | None = None) -> dict:
    """Assert a JSON error body of ``status`` (and ``code``)."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()["error"]
    assert body["status"] == status and isinstance(body["message"], str) and body["message"]
    if code is not None:
        assert body["code"] == code
    return body


def _alive(client) -> None:
    assert client.get("/v1/health").json() == {"status": "ok"}


# ================================================================================================
# Range parser
# ================================================================================================
@pytest.mark.parametrize(
    "header, expected",
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=10-10", (10, 10)),
        ("bytes=5-", (5, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-1000", (0, 99)),
        ("bytes=0-1000", (0, 99)),
        ("Bytes = 3 - 4", (3, 4)),
        ("bytes=0-1,5-9", None),  # several ranges: the caller sends the whole file with 200
    ],
)
def test_parse_range_valid(header, expected):
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize(
    "header",
    ["bytes=100-", "bytes=200-300", "bytes=-0", "bytes=5-2", "items=0-5", "bytes=", "bytes=-", "bytes=a-b",
     "bytes=1-2-3", "0-5", "bytes=0-1,x", "bytes=" + "9" * 2000],
)  # fmt: skip
def test_parse_range_unsatisfiable_or_malformed(header):
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, 100)
    assert info.value.size == 100


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 5000), a=st.integers(0, 6000), b=st.integers(0, 6000), suffix=st.booleans())
def test_parse_range_matches_slicing(size, a, b, suffix):
    data = np.arange(size)
    header = f"bytes=-{a}" if suffix else f"bytes={min(a, b)}-{max(a, b)}"
    want = (data[max(0, size - a) :] if a else data[:0]) if suffix else data[min(a, b) : max(a, b) + 1]
    if want.size == 0:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)
    else:
        start, end = parse_range(header, size)
        assert np.array_equal(data[start : end + 1], want)


def test_read_span_streams_bounded_chunks(tmp_path):
    blob = np.random.default_rng(1).integers(0, 256, 3 * CHUNK_BYTES + 123, dtype=np.uint8).tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(blob)
    fh = open(path, "rb")  # noqa: SIM115 - _read_span closes it
    chunks = list(_read_span(fh, 1000, 2 * CHUNK_BYTES + 7))
    assert fh.closed and max(len(c) for c in chunks) <= CHUNK_BYTES
    assert b"".join(chunks) == blob[1000 : 1000 + 2 * CHUNK_BYTES + 7]


# ================================================================================================
# Catalogs, manifest, files
# ================================================================================================
def test_health_catalogs_manifest_docs(client, books):
    store = books[0]
    assert client.get("/v1/health").json() == {"status": "ok"}
    listed = client.get("/v1/catalogs").json()
    assert listed == {"catalogs": [{"catalog": "books", "latest": 2}, {"catalog": "plain", "latest": 1}]}
    r = client.get("/v1/catalogs/books")
    assert r.status_code == 200 and r.json() == store.manifest("books")
    again = client.get("/v1/catalogs/books", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert client.get("/docs").status_code == 200
    assert "/v1/retrieve" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("kind", ["pack", "layer0", "delta", "layer0_delta"])
def test_file_full_download(client, books, kind):
    store = books[0]
    meta = store.version_info("books", 2)["files"][kind]
    r = client.get(f"/v1/catalogs/books/versions/2/files/{kind}")
    assert r.status_code == 200
    assert r.content == store.file("books", 2, kind).read_bytes()
    assert r.headers["etag"] == f'"{meta["sha256"]}"' == f'"{hashlib.sha256(r.content).hexdigest()}"'
    assert r.headers["accept-ranges"] == "bytes" and int(r.headers["content-length"]) == meta["bytes"]
    assert r.headers["content-type"] == "application/octet-stream"


def test_file_ranges_resume_and_delta(client, books):
    store = books[0]
    url = "/v1/catalogs/books/versions/2/files/layer0"
    full = store.file("books", 2, "layer0").read_bytes()
    size = len(full)
    first = client.get(url, headers={"Range": "bytes=0-99"})
    assert first.status_code == 206 and first.content == full[:100]
    assert first.headers["content-range"] == f"bytes 0-99/{size}" and first.headers["content-length"] == "100"
    etag = first.headers["etag"]
    # resume from 100 as a phone does, guarded by If-Range
    rest = client.get(url, headers={"Range": "bytes=100-", "If-Range": etag})
    assert rest.status_code == 206 and rest.headers["content-range"] == f"bytes 100-{size - 1}/{size}"
    assert PackReader.from_buffer(first.content + rest.content).verify().ok
    suffix = client.get(url, headers={"Range": "bytes=-17"})
    assert suffix.status_code == 206 and suffix.content == full[-17:]
    clipped = client.get(url, headers={"Range": f"bytes={size - 5}-{size + 100}"})
    assert clipped.status_code == 206 and clipped.content == full[-5:]
    # If-Range naming another tag: the range is ignored and the whole (changed) file comes back
    stale = client.get(url, headers={"Range": "bytes=100-", "If-Range": '"0000"'})
    assert stale.status_code == 200 and stale.content == full
    multi = client.get(url, headers={"Range": "bytes=0-1,5-9"})
    assert multi.status_code == 200 and multi.content == full
    for bad in (f"bytes={size}-", "bytes=-0", "bytes=9-3", "pages=0-1", "bytes=zz"):
        r = client.get(url, headers={"Range": bad})
        _error(r, 416, "range_not_satisfiable")
        assert r.headers["content-range"] == f"bytes */{size}"
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert client.get(url, headers={"If-None-Match": f'"abc", W/{etag}'}).status_code == 304
    head = client.head(url)
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) == size
    # the downloaded delta turns v1's layer0 into v2's, byte for byte
    delta = client.get("/v1/catalogs/books/versions/2/files/layer0_delta").content
    base = client.get("/v1/catalogs/books/versions/1/files/layer0").content
    d = store.root / "scratch"
    d.mkdir(exist_ok=True)
    (d / "base.rpk").write_bytes(base)
    (d / "delta.rpk").write_bytes(delta)
    apply_delta(d / "base.rpk", d / "delta.rpk", d / "out.rpk")
    assert (d / "out.rpk").read_bytes() == full
    _alive(client)


def test_file_not_found_and_server_side_kinds(client):
    for url in (
        "/v1/catalogs/books/versions/2/files/index",
        "/v1/catalogs/books/versions/2/files/vectors",
        "/v1/catalogs/books/versions/2/files/users",
        "/v1/catalogs/books/versions/2/files/nope",
        "/v1/catalogs/books/versions/1/files/delta",  # the first version has no delta
        "/v1/catalogs/books/versions/9/files/pack",
        "/v1/catalogs/movies/versions/1/files/pack",
        "/v1/catalogs/movies",
        "/v1/no/such/route",
    ):
        _error(client.get(url), 404, "not_found")
    _error(client.get("/v1/catalogs/Bad..Name"), 400, "bad_request")
    _error(client.get("/v1/catalogs/books/versions/x/files/pack"), 422, "validation_error")
    _error(client.put("/v1/health"), 405)
    _alive(client)


# ================================================================================================
# Codecs and refinement frames
# ================================================================================================
def test_codecs_endpoint(client, books):
    store = books[0]
    with PackReader(store.file("books", 2, "pack")) as pack:
        for layer in (0, 1):
            r = client.get(f"/v1/catalogs/books/versions/2/codecs/{layer}")
            assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
            assert r.content == pack.codec(layer).to_bytes()
            codec = codec_from_bytes(r.content)
            assert codec.spec == pack.codec(layer).spec
            assert client.get(f"/v1/catalogs/books/versions/2/codecs/{layer}",
                              headers={"If-None-Match": r.headers["etag"]}).status_code == 304  # fmt: skip
    _error(client.get("/v1/catalogs/books/versions/2/codecs/2"), 404, "not_found")


def _parse_frame(frame: bytes) -> tuple[int, np.ndarray, np.ndarray]:
    """Independent reader of the refinement frame layout."""
    magic, n, bpv, layer = struct.unpack_from("<4sIII", frame, 0)
    assert magic == b"RPRF" and len(frame) == 16 + n * (8 + bpv) + 4
    assert struct.unpack_from("<I", frame, len(frame) - 4)[0] == crc32c(frame[:-4])
    ids = np.frombuffer(frame, "<i8", n, 16)
    codes = np.frombuffer(frame, np.uint8, n * bpv, 16 + 8 * n).reshape(n, bpv)
    return layer, ids, codes


def test_refine_frame(client, books):
    store = books[0]
    asked = [int(IDS[1400]), int(IDS[3]), int(IDS[700]), int(IDS[0])]  # not sorted: order is kept
    with PackReader(store.file("books", 2, "pack")) as pack:
        for layer in (1, 0):
            r = client.post("/v1/catalogs/books/versions/2/refine", json={"ids": asked, "layer": layer})
            assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
            got_layer, ids, codes = _parse_frame(r.content)
            rows = np.searchsorted(pack.item_ids, asked)
            assert got_layer == layer and ids.tolist() == asked
            assert np.array_equal(codes, pack.layer_codes(layer)[rows])
            assert codes.shape[1] == pack.layers[layer].bytes_per_vector
            lay, ids2, codes2 = decode_refine_frame(r.content)
            assert lay == layer and np.array_equal(ids2, ids) and np.array_equal(codes2, codes)
    default = client.post("/v1/catalogs/books/versions/2/refine", json={"ids": asked[:1]})
    assert _parse_frame(default.content)[0] == 1
    empty = client.post("/v1/catalogs/books/versions/2/refine", json={"ids": []})
    assert empty.status_code == 200 and _parse_frame(empty.content)[1].size == 0


def test_refine_frame_corruption_detected():
    frame = encode_refine_frame(np.array([5, 1]), np.arange(6, dtype=np.uint8).reshape(2, 3), 1)
    assert decode_refine_frame(frame)[0] == 1
    for bad in (frame[:-1], b"XXXX" + frame[4:], frame[:20] + bytes([frame[20] ^ 1]) + frame[21:], b""):
        with pytest.raises(SerializationError):
            decode_refine_frame(bad)


def test_refine_errors(books):
    c = TestClient(create_app(books[0].root, max_refine_ids=10))
    url = "/v1/catalogs/books/versions/2/refine"
    ok = [int(i) for i in IDS[:3]]
    assert c.post(url, json={"ids": ok}).status_code == 200
    _error(c.post(url, json={"ids": [int(i) for i in IDS[:11]]}), 413, "payload_too_large")
    _error(c.post(url, json={"ids": ok + ok[:1]}), 400, "bad_request")  # duplicate
    body = _error(c.post(url, json={"ids": ok + [8, 10**12]}), 404, "not_found")  # unknown ids are named
    assert "8" in body["message"]
    _error(c.post(url, json={"ids": ok, "layer": 7}), 400, "bad_request")
    _error(c.post(url, json={"ids": [-1]}), 422, "validation_error")
    _error(c.post(url, json={"ids": [2**70]}), 422, "validation_error")
    _error(c.post(url, json={"ids": ["7"]}), 422, "validation_error")
    _error(c.post(url, json={"ids": ok, "extra": 1}), 422, "validation_error")
    _error(c.post(url, content=b'{"ids": [1, 2', headers={"Content-Type": "application/json"}), 422, "validation_error")
    huge = c.post(url, content=b"[" * 5_000_000, headers={"Content-Type": "application/json"})
    _error(huge, 413, "payload_too_large")
    _error(c.post("/v1/catalogs/books/versions/5/refine", json={"ids": ok}), 404, "not_found")
    _alive(c)


# ================================================================================================
# Online retrieval
# ================================================================================================
def test_retrieve_recall_vs_exact(client, books):
    _, _, X2, _, _ = books
    queries = _unit(np.random.default_rng(5).normal(size=(20, D)))
    k, hits = 20, 0
    for q in queries:
        r = client.post("/v1/retrieve", json={"catalog": "books", "vector": q.tolist(), "k": k})
        assert r.status_code == 200
        out = r.json()
        assert out["catalog"] == "books" and out["version"] == 2 and out["took_ms"] > 0
        ids, scores = np.array(out["ids"]), np.array(out["scores"])
        assert ids.size == k and np.all(np.diff(scores) <= 1e-6)
        rows = np.searchsorted(IDS, ids)
        assert np.array_equal(IDS[rows], ids)
        np.testing.assert_allclose(scores, X2[rows] @ q, atol=1e-4)  # scores are inner products with v2 vectors
        exact = IDS[np.argsort(-(X2 @ q))[:k]]
        hits += np.intersect1d(ids, exact).size
    assert hits / (k * len(queries)) >= 0.95
    old = client.post("/v1/retrieve", json={"catalog": "books", "version": 1, "vector": queries[0].tolist(), "k": 3})
    assert old.json()["version"] == 1 and len(old.json()["ids"]) == 3


def test_retrieve_errors(client):
    v = [0.1] * D
    _error(client.post("/v1/retrieve", json={"catalog": "books", "vector": [0.1] * (D + 1)}), 400, "bad_request")
    nan = '{"catalog": "books", "vector": [NaN' + ", 0.1" * (D - 1) + "]}"
    _error(client.post("/v1/retrieve", content=nan, headers={"Content-Type": "application/json"}), 400)
    _error(client.post("/v1/retrieve", json={"catalog": "books", "vector": [1e39] + v[1:]}), 400)  # overflows float32
    for k in (0, 1001, 2.5, "3"):
        _error(client.post("/v1/retrieve", json={"catalog": "books", "vector": v, "k": k}), 422, "validation_error")
    _error(client.post("/v1/retrieve", json={"catalog": "books", "vector": v, "version": 9}), 404, "not_found")
    _error(client.post("/v1/retrieve", json={"catalog": "nope", "vector": v}), 404, "not_found")
    _error(client.post("/v1/retrieve", json={"catalog": "../etc", "vector": v}), 400, "bad_request")
    _error(client.post("/v1/retrieve", json={"catalog": "plain", "vector": v}), 404, "not_found")  # built without index
    _error(client.post("/v1/retrieve", json={"vector": v}), 422, "validation_error")
    _error(client.post("/v1/retrieve", content=b"not json", headers={"Content-Type": "application/json"}), 422)
    big_k = client.post("/v1/retrieve", json={"catalog": "books", "vector": v, "k": 1000})
    assert big_k.status_code == 200 and len(big_k.json()["ids"]) == 1000
    _alive(client)


# ================================================================================================
# User-vector updates
# ================================================================================================
def _decode_user(body: dict) -> np.ndarray:
    raw = base64.b64decode(body["codes"])
    assert crc32c(raw) == body["crc32c"] and len(raw) == body["dim"]
    return body["scale"] * np.frombuffer(raw, np.int8).astype(np.float64)


def test_user_vector_delta_and_full(client, books):
    _, _, _, U1, U2 = books
    for j in (0, 7, 39):
        uid = int(USER_IDS[j])
        d = client.get(f"/v1/catalogs/books/users/{uid}/vector", params={"version": 2, "since": 1}).json()
        assert d["version"] == 2 and d["since"] == 1 and d["user_id"] == uid and d["dim"] == D
        new = U1[j].astype(np.float64) + _decode_user(d)
        assert np.all(np.abs(new - U2[j]) <= d["scale"] / 2 * (1 + 1e-6) + 1e-7)
        assert np.isclose(d["scale"], np.abs(U2[j].astype(np.float64) - U1[j]).max() / 127)
        full = client.get(f"/v1/catalogs/books/users/{uid}/vector").json()  # latest, full vector
        assert full["since"] is None and full["version"] == 2
        assert np.all(np.abs(_decode_user(full) - U2[j]) <= full["scale"] / 2 * (1 + 1e-6) + 1e-7)
        assert full["scale"] > d["scale"]  # the delta is finer than a full vector
    # user 999 is new in v2: asking since v1 gives the full vector
    new_user = client.get("/v1/catalogs/books/users/999/vector", params={"since": 1}).json()
    assert new_user["since"] is None and np.all(np.abs(_decode_user(new_user) - U2[-1]) <= new_user["scale"] / 2 + 1e-6)
    gone = client.get("/v1/catalogs/books/users/0/vector", params={"since": 77}).json()  # since: unknown version
    assert gone["since"] is None
    _error(client.get("/v1/catalogs/books/users/1/vector"), 404, "not_found")  # odd ids are not users
    _error(client.get("/v1/catalogs/books/users/999/vector", params={"version": 1}), 404, "not_found")
    _error(client.get("/v1/catalogs/plain/users/0/vector"), 404, "not_found")  # no users in that catalog
    _error(client.get("/v1/catalogs/books/users/-3/vector"), 422, "validation_error")
    _alive(client)


def test_quantise_update_bounds():
    rng = np.random.default_rng(3)
    old = rng.normal(size=32).astype(np.float32)
    new = old + rng.normal(scale=0.01, size=32).astype(np.float32)
    scale, codes = quantise_update(new, old)
    assert codes.dtype == np.int8 and np.abs(codes).max() == 127
    assert np.all(np.abs(old + scale * codes.astype(np.float64) - new) <= scale / 2 * (1 + 1e-9))
    assert quantise_update(old, old) == (0.0, pytest.approx(np.zeros(32, np.int8)))


# ================================================================================================
# Admin
# ================================================================================================
def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _snapshot(root) -> dict[str, str]:
    """Every file under root (bar the lock file) -> SHA-256 of its bytes."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if n != ".lock":
                out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture()
def admin_store(tmp_path):
    rng = np.random.default_rng(2)
    X = _unit(rng.normal(size=(300, D)))
    store = CatalogStore(tmp_path / "admin-store")
    build_catalog(store, "news", np.arange(300), X, codecs=("sq8",), items_per_block=64)
    return store, X


def test_admin_auth(admin_store):
    store, X = admin_store
    body = _npz(ids=np.arange(300), vectors=X)
    url = "/v1/admin/catalogs/news/versions"
    before = _snapshot(store.root)
    c = TestClient(create_app(store.root, api_key=KEY))
    _error(c.post(url, content=body), 401, "unauthorized")
    _error(c.post(url, content=body, headers={"X-API-Key": "wrong"}), 403, "forbidden")
    _error(c.post(url, content=body, headers={"X-API-Key": "ünïcode".encode("latin-1")}), 403, "forbidden")
    _error(c.delete(f"{url}/1"), 401, "unauthorized")
    no_key = TestClient(create_app(store.root))  # admin disabled: 403 whatever is sent
    _error(no_key.post(url, content=body, headers={"X-API-Key": KEY}), 403, "forbidden")
    _error(no_key.post(url, content=body), 403, "forbidden")
    assert _snapshot(store.root) == before
    _alive(c)


def test_admin_publish_and_delete(admin_store):
    store, X = admin_store
    c = TestClient(create_app(store.root, api_key=KEY))
    auth = {"X-API-Key": KEY}
    X2 = X.copy()
    X2[:10] = _unit(X2[:10] + 0.3)
    U = np.ones((3, D), np.float32)
    upload = _npz(ids=np.arange(300), vectors=X2, users=U, user_ids=np.array([5, 6, 7]))
    r = c.post("/v1/admin/catalogs/news/versions", content=upload, headers=auth)
    assert r.status_code == 201, r.text
    entry = r.json()
    assert entry["version"] == 2 and entry["n_items"] == 300 and entry["codecs"] == ["sq8"]
    assert store.latest("news") == 2 and c.get("/v1/catalogs/news").json()["latest"] == 2
    assert c.get("/v1/catalogs/news/users/6/vector").status_code == 200
    # a new catalog with the codecs given in the query
    r = c.post("/v1/admin/catalogs/fresh/versions", params={"codecs": "sq8,sq4"},
               content=_npz(ids=np.arange(300) * 2, vectors=X), headers=auth)  # fmt: skip
    assert r.status_code == 201 and r.json()["codecs"] == ["sq8", "sq4"]
    q = c.post("/v1/retrieve", json={"catalog": "fresh", "vector": X[4].tolist(), "k": 1}).json()
    assert q["ids"] == [8]
    # delete: warm the cache for v1 first, then it must be gone
    assert c.post("/v1/catalogs/news/versions/1/refine", json={"ids": [1, 2], "layer": 0}).status_code == 200
    assert c.delete("/v1/admin/catalogs/news/versions/1", headers=auth).status_code == 204
    assert store.versions("news") == [2]
    _error(c.post("/v1/catalogs/news/versions/1/refine", json={"ids": [1, 2], "layer": 0}), 404, "not_found")
    _error(c.get("/v1/catalogs/news/versions/1/files/pack"), 404, "not_found")
    _error(c.delete("/v1/admin/catalogs/news/versions/1", headers=auth), 404, "not_found")
    _error(c.delete("/v1/admin/catalogs/news/versions/2", headers=auth), 400)  # the latest stays
    _error(c.delete("/v1/admin/catalogs/nope/versions/1", headers=auth), 404, "not_found")
    _alive(c)


def test_admin_rejected_publish_leaves_store_unchanged(admin_store):
    store, X = admin_store
    c = TestClient(create_app(store.root, api_key=KEY, max_body_bytes=200_000))
    auth = {"X-API-Key": KEY}
    url = "/v1/admin/catalogs/news/versions"
    before = _snapshot(store.root)
    obj = io.BytesIO()
    np.savez(obj, ids=np.arange(3), vectors=np.array([{"a": 1}, None, 3], dtype=object))
    Xnan = X.copy()
    Xnan[5, 3] = np.nan
    cases = [
        (b"", 400),
        (b"definitely not an npz", 400),
        (_npz(ids=np.arange(300)), 400),  # no vectors
        (_npz(ids=np.arange(299), vectors=X), 400),  # length mismatch
        (_npz(ids=np.arange(300), vectors=Xnan), 400),  # NaN
        (_npz(ids=np.zeros(300, np.int64), vectors=X), 400),  # duplicate ids
        (_npz(ids=np.arange(300), vectors=X, extra=X), 400),  # unknown array
        (_npz(ids=np.arange(300), vectors=X, users=X[:3]), 400),  # users without user_ids
        (_npz(ids=np.arange(300), vectors=np.ones((300, 4), np.complex64)), 400),
        (obj.getvalue(), 400),  # object arrays need pickle: refused
        (_npy(X), 400),  # an .npy, not an .npz
    ]
    for body, status in cases:
        _error(c.post(url, content=body, headers=auth), status)
    _error(c.post(url, params={"codecs": "pq3x9"}, content=_npz(ids=np.arange(300), vectors=X), headers=auth), 400)
    _error(c.post("/v1/admin/catalogs/BAD/versions", content=_npz(ids=np.arange(300), vectors=X), headers=auth), 400)
    big = _npz(ids=np.arange(20_000), vectors=np.zeros((20_000, D), np.float32))
    _error(c.post(url, content=big, headers=auth), 413, "payload_too_large")  # Content-Length over the limit

    def chunks():  # no Content-Length: the limit is enforced while reading
        for lo in range(0, len(big), 65536):
            yield big[lo : lo + 65536]

    _error(c.post(url, content=chunks(), headers=auth), 413, "payload_too_large")
    assert _snapshot(store.root) == before
    assert store.versions("news") == [1]
    _alive(c)


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


# ================================================================================================
# CLI
# ================================================================================================
def test_cli_serve(monkeypatch, books):
    import uvicorn
    from typer.testing import CliRunner

    from reelpack.cli import app as cli_app

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: calls.append((target, kw)))
    monkeypatch.setenv("MY_KEY", KEY)
    runner = CliRunner()
    r = runner.invoke(cli_app, ["serve", "--store", str(books[0].root), "--port", "8123", "--api-key-env", "MY_KEY"])
    assert r.exit_code == 0, r.output
    target, kw = calls[-1]
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8123
    c = TestClient(target)
    assert c.get("/v1/catalogs").status_code == 200
    _error(c.delete("/v1/admin/catalogs/books/versions/1", headers={"X-API-Key": "nope"}), 403)
    assert runner.invoke(cli_app, ["serve", "--store", str(books[0].root), "--workers", "0"]).exit_code == 2


# ================================================================================================
# Server-side faults: 500 with the same JSON shape
# ================================================================================================
def test_store_faults_are_500_json(admin_store, monkeypatch):
    store, _ = admin_store
    c = TestClient(create_app(store.root), raise_server_exceptions=False)
    pack = store.file("news", 1, "pack")
    pack.write_bytes(pack.read_bytes()[:-10])  # shorter than the manifest says
    _error(c.get("/v1/catalogs/news/versions/1/files/pack"), 500, "store_error")
    (store.root / "news" / "manifest.json").write_text("{not json")
    _error(c.get("/v1/catalogs/news"), 500, "store_error")
    assert c.get("/v1/catalogs").json() == {"catalogs": [{"catalog": "news", "latest": None}]}
    monkeypatch.setattr(CatalogStore, "catalogs", lambda self: 1 / 0)  # a bug: still the JSON shape
    _error(c.get("/v1/catalogs"), 500, "internal_error")
    _alive(c)
