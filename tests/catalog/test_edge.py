"""Hierarchical edge + cloud retrieval (reelpack.catalog.edge): summaries within budget, their bytes, the decision,
the merge, and the fallback when the cloud fails. The cloud is the real FastAPI service in process (TestClient),
a plain callable, or an address nothing listens on."""

from __future__ import annotations

import struct
import warnings

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from reelpack.errors import (
    DimensionMismatchError,
    InvalidInputError,
    InvalidKError,
    NonFiniteError,
    SerializationError,
    ServiceError,
)
from reelpack.service.app import create_app
from reelpack.catalog.edge import DeviceSummary, EdgeCatalog
from reelpack.device.edge import EdgeRetriever, ServiceCloud, merge_answers
from reelpack.catalog.store import CatalogStore, build_catalog
from reelpack.format import crc32c

N, D, NLIST = 1500, 16, 24
IDS = np.arange(N, dtype=np.int64) * 3 + 7


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def _faiss_one_thread():
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centers = _unit(rng.normal(size=(NLIST, D)))
    X = _unit(centers[rng.integers(0, NLIST, N)] + 0.08 * rng.normal(size=(N, D)))
    return X, centers


@pytest.fixture(scope="module")
def cat(data):
    return EdgeCatalog.build(data[0], IDS, nlist=NLIST, codec="sq8", seed=0)


@pytest.fixture(scope="module")
def flat_cat(data):
    return EdgeCatalog.build(data[0], IDS, nlist=NLIST, codec="float32", seed=0)


def _exact(X: np.ndarray, q: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    s = X @ q
    if exclude is not None:
        s[np.isin(IDS, exclude)] = -np.inf
    return IDS[np.argsort(-s, kind="stable")[:k]]


# ---------------------------------------------------------------- summaries and their bytes
def test_summary_within_budget_and_bigger_budget_holds_more(cat, data):
    q = data[1][0]
    small = cat.summary_for(q, cat.fixed_bytes + 20_000)
    large = cat.summary_for(q, cat.fixed_bytes + 60_000)
    assert small.nbytes <= cat.fixed_bytes + 20_000 and large.nbytes <= cat.fixed_bytes + 60_000
    assert 0 < small.n_items < large.n_items
    # the clusters are taken by decreasing u . c, and the items are exactly the chosen clusters' items
    qc = cat.centroids.astype(np.float32) @ q
    assert np.all(np.diff(qc[large.clusters]) <= 0)
    assert np.array_equal(np.sort(large.ids), np.sort(IDS[np.isin(cat.assign, large.clusters)]))
    # the radii bound every item's distance to its float16 centroid
    c32 = cat.centroids.astype(np.float32)
    assert np.all(np.linalg.norm(data[0] - c32[cat.assign], axis=1) <= cat.radii.astype(np.float32)[cat.assign])


def test_budget_too_small_is_a_typed_error(cat, data):
    with pytest.raises(InvalidInputError, match="too small"):
        cat.summary_for(data[1][0], cat.fixed_bytes + 10)
    with pytest.raises(InvalidInputError, match="budget_bytes"):
        cat.summary_for(data[1][0], 1.5e6)


def test_round_trip_and_corruption(cat, data):
    s = cat.summary_for(data[1][3], cat.fixed_bytes + 30_000)
    raw = s.to_bytes()
    t = DeviceSummary.from_bytes(raw)
    assert t.to_bytes() == raw
    assert np.array_equal(t.ids, s.ids) and np.array_equal(t.codes, s.codes) and t.fingerprint == s.fingerprint
    for pos in (5, 40, len(raw) // 2, len(raw) - 2):
        bad = bytearray(raw)
        bad[pos] ^= 0x10
        with pytest.raises(SerializationError):
            DeviceSummary.from_bytes(bytes(bad))
    with pytest.raises(SerializationError):
        DeviceSummary.from_bytes(raw[:-7])
    with pytest.raises(SerializationError, match="magic"):
        DeviceSummary.from_bytes(b"XXXX" + raw[4:])


@settings(max_examples=25, deadline=None)
@given(extra=st.integers(min_value=0, max_value=90_000), seed=st.integers(0, 2**16))
def test_any_budget_round_trips_and_fits(cat, extra, seed):
    q = np.random.default_rng(seed).normal(size=D).astype(np.float32)
    nearest = int(np.argmax(cat.centroids.astype(np.float32) @ q))
    need = 8 + int((cat.assign == nearest).sum()) * cat.item_bytes()
    if extra < need:
        with pytest.raises(InvalidInputError, match="too small"):
            cat.summary_for(q, cat.fixed_bytes + extra)
        return
    s = cat.summary_for(q, cat.fixed_bytes + extra)
    raw = s.to_bytes()
    assert len(raw) <= cat.fixed_bytes + extra
    assert DeviceSummary.from_bytes(raw).to_bytes() == raw


def test_summary_for_another_catalog_is_refused(cat, data):
    s = cat.summary_for(data[1][0], cat.fixed_bytes + 20_000)
    s.check_catalog(D, 1, cat.fingerprint)
    with pytest.raises(DimensionMismatchError):
        s.check_catalog(D + 1, 1)
    with pytest.raises(InvalidInputError, match="version"):
        s.check_catalog(D, 2)
    with pytest.raises(InvalidInputError, match="fingerprint"):
        s.check_catalog(D, 1, b"\x00" * 8)
    with pytest.raises(DimensionMismatchError):
        EdgeRetriever(s).retrieve(np.ones(D + 2, np.float32))
    with pytest.raises(DimensionMismatchError):
        cat.summary_for(np.ones(D + 2, np.float32), 10**6)


# ---------------------------------------------------------------- the decision
def test_frontier_matches_numpy_reference(cat, data):
    rng = np.random.default_rng(1)
    s = cat.summary_for(data[1][2], cat.fixed_bytes + 25_000)
    absent = ~np.isin(np.arange(NLIST), s.clusters)
    for _ in range(5):
        q = rng.normal(size=D).astype(np.float32)
        for lam in (0.0, 0.4, 1.0):
            ref = (cat.centroids.astype(np.float64)[absent] @ q + lam * np.linalg.norm(q)
                   * cat.radii.astype(np.float64)[absent]).max()  # fmt: skip
            assert s.frontier(q, lam) == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_strict_bound_local_answers_are_exact(flat_cat, data):
    """lam = 1 with float32 codes: whenever the device answers alone, its answer IS the exact top-k."""
    X, centers = data
    rng = np.random.default_rng(2)
    n_local = 0
    for i in range(NLIST):
        q = _unit((centers[i] + 0.02 * rng.normal(size=D))[None])[0] * 3.0
        s = flat_cat.summary_for(q, flat_cat.fixed_bytes + 12_000, lam=1.0)
        res = EdgeRetriever(s, cloud=None).retrieve(q, 10)
        if res.source == "local":
            n_local += 1
            assert not res.fallback and res.reason is None
            np.testing.assert_allclose(res.scores, np.sort(X @ q)[::-1][:10], rtol=1e-5, atol=1e-5)
            assert res.kth_local >= res.frontier
    assert n_local >= NLIST // 2  # tight synthetic clusters: the guaranteed bound often suffices


def test_coverage_policy(cat, data):
    q = data[1][5]
    s = cat.summary_for(q, cat.fixed_bytes + 20_000)
    assert EdgeRetriever(s, None, policy="coverage", nprobe=1).retrieve(q, 5).source == "local"
    far = EdgeRetriever(s, None, policy="coverage", nprobe=NLIST).retrieve(q, 5)
    assert far.source == "local-fallback" and far.fallback and far.reason == "no cloud configured"
    with pytest.raises(InvalidInputError):
        EdgeRetriever(s, None, policy="magic")


def test_bad_queries(cat, data):
    r = EdgeRetriever(cat.summary_for(data[1][0], 10**6))
    with pytest.raises(NonFiniteError):
        r.retrieve(np.full(D, np.nan, np.float32))
    with pytest.raises(InvalidKError):
        r.retrieve(data[1][0], 0)
    with pytest.raises(InvalidInputError):
        EdgeRetriever(r.summary, lam=-1.0)


def test_merge_answers():
    ids, scores = merge_answers((np.array([1, 2, 3]), np.array([0.9, 0.5, 0.4], np.float32)),
                                (np.array([2, 7]), np.array([0.95, 0.3], np.float32)), 3)  # fmt: skip
    assert ids.tolist() == [2, 1, 3] and scores.tolist() == pytest.approx([0.95, 0.9, 0.4])


def _needs_cloud(cat: EdgeCatalog, centers: np.ndarray) -> tuple[DeviceSummary, np.ndarray]:
    """A small summary around cluster 9 and a query aimed at a cluster the summary lacks."""
    s = cat.summary_for(centers[9], cat.fixed_bytes + 3_000)
    absent = np.setdiff1d(np.arange(NLIST), s.clusters)
    c = cat.centroids.astype(np.float32)[absent]
    q = _unit(c[np.argmin(c @ centers[9])][None])[0]
    return s, q


# ---------------------------------------------------------------- with a cloud
@pytest.fixture(scope="module")
def service(tmp_path_factory, data):
    store = CatalogStore(tmp_path_factory.mktemp("edge-store"))
    build_catalog(store, "books", IDS, data[0], codecs=("sq8",), items_per_block=256)
    with TestClient(create_app(store.root)) as client:
        yield client


def test_cloud_request_is_merged_with_local(service, cat, data):
    X, centers = data
    s, q = _needs_cloud(cat, centers)  # summary for another region: the cloud is needed
    cloud = ServiceCloud(service, "books")
    ex = _exact(X, q, 3)
    res = EdgeRetriever(s, cloud, lam=0.5).retrieve(q, 20, exclude=ex)
    assert res.source == "cloud" and not res.fallback and res.reason is None
    assert cloud.last_version == 1
    assert not np.isin(res.ids, ex).any()
    exact = _exact(X, q, 20, exclude=ex)
    assert np.isin(res.ids, exact).mean() >= 0.95
    assert np.all(np.diff(res.scores) <= 0) and np.unique(res.ids).size == 20


def test_local_request_never_calls_the_cloud(cat, data):
    q = data[1][4]
    calls = []

    def cloud(v, k):
        calls.append(k)
        raise AssertionError("cloud must not be called")

    s = cat.summary_for(q, 10**6)  # budget holds every cluster: the frontier is -inf
    res = EdgeRetriever(s, cloud, lam=1.0).retrieve(q, 30, exclude=IDS[:5])
    assert res.source == "local" and not calls
    np.testing.assert_array_equal(res.ids, s.local_top_k(q, 30, IDS[:5])[0])


@pytest.mark.parametrize("failure", ["unreachable", "http-error", "raises", "none"])
def test_cloud_failure_falls_back_to_local(failure, service, cat, data):
    s, q = _needs_cloud(cat, data[1])
    if failure == "unreachable":
        http = httpx.Client(base_url="http://127.0.0.1:9", transport=httpx.HTTPTransport(retries=0), timeout=2.0)
        cloud = ServiceCloud(http, "books")
    elif failure == "http-error":
        cloud = ServiceCloud(service, "no-such-catalog")
    elif failure == "raises":
        def cloud(v, k):
            raise ServiceError("down for maintenance")
    else:
        cloud = None
    res = EdgeRetriever(s, cloud, lam=0.5).retrieve(q, 10)
    assert res.fallback and res.source == "local-fallback" and isinstance(res.reason, str) and res.reason
    np.testing.assert_array_equal(res.ids, s.local_top_k(q, 10)[0])
    if failure == "http-error":
        assert "404" in res.reason
    if failure == "unreachable":
        assert "cloud unavailable" in res.reason


def test_build_bad_input(data):
    with pytest.raises(InvalidInputError, match="nlist"):
        EdgeCatalog.build(data[0][:10], IDS[:10], nlist=11)
    with pytest.raises(InvalidInputError):
        EdgeCatalog.build(data[0][:10], IDS[:10] * 0, nlist=2)


def test_cli_edge_summary(tmp_path, data):
    from typer.testing import CliRunner

    from reelpack.cli import app

    np.save(tmp_path / "x.npy", data[0][:600])
    np.save(tmp_path / "u.npy", data[1][0])
    out = tmp_path / "s.rpes"
    args = ["edge-summary", "--vectors", str(tmp_path / "x.npy"), "--user-vector", str(tmp_path / "u.npy"),
            "-o", str(out), "--nlist", "8", "--budget-bytes", "6000"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    s = DeviceSummary.from_bytes(out.read_bytes())
    assert out.stat().st_size <= 6000 and s.nlist == 8 and s.n_items > 0
    r = CliRunner().invoke(app, args[:-1] + ["100"])
    assert r.exit_code == 2 and "too small" in r.output


# ---------------------------------------------------------------- in the serving system: store, service, phone client
URL = "http://testserver"
UIDS = np.arange(5, dtype=np.int64) + 100


class Switch(httpx.BaseTransport):
    """Passes requests to ``inner`` (counting them by path) until ``down`` is set, then refuses to connect."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner, self.down, self.paths = inner, False, []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("network is down", request=request)
        self.paths.append(request.url.path)
        return self.inner.handle_request(request)


@pytest.fixture(scope="module")
def users(data):
    rng = np.random.default_rng(1)
    return _unit(data[1][[0, 3, 6, 9, 12]] + 0.05 * rng.normal(size=(5, D)))


@pytest.fixture(scope="module")
def edge_service(tmp_path_factory, data, users):
    """Catalog "books" v1 with an edge catalog, users and an HNSW index, v2 without an edge catalog."""
    store = CatalogStore(tmp_path_factory.mktemp("edge-serve"))
    e1 = build_catalog(store, "books", IDS, data[0], codecs=("sq8",), items_per_block=256, users=users,
                       user_ids=UIDS, edge=True, edge_nlist=NLIST)  # fmt: skip
    e2 = build_catalog(store, "books", IDS, data[0], codecs=("sq8",), items_per_block=256, users=users,
                       user_ids=UIDS, index=False)  # fmt: skip
    with TestClient(create_app(store.root, max_edge_bytes=200_000)) as client:
        yield {"store": store, "client": client, "entries": (e1, e2)}


def test_build_catalog_writes_the_edge_catalog(edge_service, data, cat):
    store, (e1, e2) = edge_service["store"], edge_service["entries"]
    assert e2["edge"] is None and "edge" not in e2["files"]
    path = store.file("books", 1, "edge")
    assert path.name == "edge.rpec" and e1["files"]["edge"]["bytes"] == path.stat().st_size
    ecat = EdgeCatalog.load(path)
    assert e1["edge"]["nlist"] == ecat.nlist == NLIST and e1["edge"]["fingerprint"] == ecat.fingerprint.hex()
    # the same clusters and codes as EdgeCatalog.build on the same vectors and seed (version 1 in both)
    assert ecat.fingerprint == cat.fingerprint and ecat.catalog_version == 1
    np.testing.assert_array_equal(ecat.assign, cat.assign)
    assert ecat.summary_for(data[1][2], 20_000).to_bytes() == cat.summary_for(data[1][2], 20_000).to_bytes()


def test_edge_catalog_file_round_trip_and_corruption(cat):
    raw = cat.to_bytes()
    back = EdgeCatalog.from_bytes(raw)
    assert back.to_bytes() == raw and back.fingerprint == cat.fingerprint
    np.testing.assert_array_equal(back.radii, cat.radii)
    for bad in (raw[:-1], raw[:30], b"XPEC" + raw[4:], raw[:200] + bytes([raw[200] ^ 1]) + raw[201:]):
        with pytest.raises(SerializationError):
            EdgeCatalog.from_bytes(bad)


def test_build_catalog_edge_bad_input(tmp_path, data):
    store = CatalogStore(tmp_path)
    with pytest.raises(InvalidInputError, match="edge_nlist needs edge"):
        build_catalog(store, "b", IDS, data[0], codecs=("sq8",), edge_nlist=8, index=False)
    with pytest.raises(InvalidInputError, match="edge_nlist must be"):
        build_catalog(store, "b", IDS[:50], data[0][:50], codecs=("sq8",), edge=True, edge_nlist=51, index=False)
    assert store.catalogs() == []  # nothing published


def test_service_edge_summary_for_a_stored_user(edge_service, users):
    client, store = edge_service["client"], edge_service["store"]
    ecat = EdgeCatalog.load(store.file("books", 1, "edge"))
    r = client.get("/v1/catalogs/books/versions/1/edge-summary", params={"user_id": 102, "budget_bytes": 9000})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream" and len(r.content) <= 9000
    s = DeviceSummary.from_bytes(r.content)
    assert r.content == ecat.summary_for(users[2], 9000).to_bytes()
    assert int(r.headers["X-Edge-Items"]) == s.n_items > 0 and int(r.headers["X-Edge-Clusters"]) == s.clusters.size
    s.check_catalog(D, 1, ecat.fingerprint)
    # POST with the same vector gives the same bytes; the default budget is 5 % of the float32 catalog
    # (raised to the smallest that holds the nearest cluster)
    r2 = client.post("/v1/catalogs/books/versions/1/edge-summary",
                     json={"vector": users[2].astype(float).tolist(), "budget_bytes": 9000})  # fmt: skip
    assert r2.status_code == 200 and r2.content == r.content
    r3 = client.get("/v1/catalogs/books/versions/1/edge-summary", params={"user_id": 102})
    assert r3.status_code == 200
    assert len(r3.content) <= max(int(0.05 * N * D * 4), ecat.min_budget(users[2]))


@pytest.mark.parametrize(
    ("url", "params", "status", "text"),
    [
        ("/v1/catalogs/books/versions/2/edge-summary", {"user_id": 100}, 404, "no edge catalog"),
        ("/v1/catalogs/books/versions/9/edge-summary", {"user_id": 100}, 404, "no version 9"),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": 7}, 404, "user 7"),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": 100, "budget_bytes": 300_000}, 413, "limit"),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": 100, "budget_bytes": 500}, 422, "too small"),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": 100, "budget_bytes": 0}, 422, "budget_bytes"),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": 100, "budget_bytes": "x"}, 422, "budget_bytes"),
        ("/v1/catalogs/books/versions/1/edge-summary", {"user_id": 100, "lam": 9}, 422, "lam"),
        ("/v1/catalogs/books/versions/1/edge-summary", {}, 422, "user_id"),
    ],
)
def test_service_edge_summary_bad_input(edge_service, url, params, status, text):
    r = edge_service["client"].get(url, params=params)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and text in err["message"]


def test_service_edge_summary_bad_posted_vector(edge_service):
    client = edge_service["client"]
    url = "/v1/catalogs/books/versions/1/edge-summary"
    r = client.post(url, json={"vector": [0.1] * (D + 1)})
    assert r.status_code == 400 and "dim" in r.json()["error"]["message"]
    r = client.post(url, json={"vector": [1e39] + [0.0] * (D - 1)})
    assert r.status_code == 400
    r = client.post(url, json={"vector": [0.1] * D, "extra": 1})
    assert r.status_code == 422


def test_phone_client_edge_retriever_local_cloud_and_fallback(edge_service, data, users, tmp_path):
    from reelpack.device.client import PhoneClient

    X, centers = data
    net = Switch(edge_service["client"]._transport)
    with PhoneClient(URL, "books", tmp_path / "phone.sqlite", transport=net, max_retries=0) as phone:
        er = phone.edge_retriever(101, 12_000, version=1)
        s = er.summary
        assert s.catalog_version == 1 and s.nbytes <= 12_000 and isinstance(er.cloud, ServiceCloud)
        assert net.paths == ["/v1/catalogs/books/versions/1/edge-summary"]
        # the user's own vector: answered on the phone, no cloud request
        res = er.retrieve(users[1], 20)
        assert res.source == "local" and not res.fallback
        assert "/v1/retrieve" not in net.paths
        assert np.isin(res.ids, _exact(X, users[1], 20)).mean() >= 0.9
        # a query aimed at a cluster the phone lacks: the cloud answers, merged with the local top-k
        absent = np.setdiff1d(np.arange(NLIST), s.clusters)
        c = s.centroids.astype(np.float32)[absent]
        q = _unit(c[np.argmin(c @ users[1])][None])[0]
        res = er.retrieve(q, 20)
        assert res.source == "cloud" and not res.fallback and net.paths[-1] == "/v1/retrieve"
        assert er.cloud.last_version == 1
        assert np.isin(res.ids, _exact(X, q, 20)).mean() >= 0.95 and np.all(np.diff(res.scores) <= 0)
        # cached: the same summary again costs no request; unreachable service -> the cached summary
        n = len(net.paths)
        assert phone.edge_summary(101, 12_000, version=1).to_bytes() == s.to_bytes() and len(net.paths) == n
        net.down = True
        er2 = phone.edge_retriever(101, 12_000)  # the manifest cannot be read: the cached summary
        assert er2.summary.to_bytes() == s.to_bytes()
        res = er2.retrieve(q, 20)
        assert res.fallback and res.source == "local-fallback" and "cloud unavailable" in res.reason
        np.testing.assert_array_equal(res.ids, s.local_top_k(q, 20)[0])
        assert er2.retrieve(users[1], 20).source == "local"  # local requests do not need the network
        with pytest.raises(ServiceError) as exc:
            phone.edge_retriever(103, 12_000)  # nothing cached for this user and no network
        assert exc.value.status is None
        net.down = False
        with pytest.raises(ServiceError) as exc:
            phone.edge_retriever(101, 12_000, version=2)  # v2 has no edge catalog
        assert exc.value.status == 404
        with pytest.raises(ServiceError) as exc:
            phone.edge_retriever(101, 100, version=1)
        assert exc.value.status == 422
        with pytest.raises(InvalidInputError):
            phone.edge_retriever(-1)


def test_cli_build_catalog_edge(tmp_path):
    from typer.testing import CliRunner

    from reelpack.cli import app

    args = ["build-catalog", "--store", str(tmp_path), "--catalog", "syn", "--synthetic", "600", "--dim", "16",
            "--codecs", "sq8", "--no-index", "--edge", "--edge-nlist", "8"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    store = CatalogStore(tmp_path)
    entry = store.version_info("syn", 1)
    assert entry["edge"]["nlist"] == 8 and EdgeCatalog.load(store.file("syn", 1, "edge")).nlist == 8
    r = CliRunner().invoke(app, args + ["--scheduler", "local"])
    assert r.exit_code == 2 and "--edge needs the single-process build" in r.output
    r = CliRunner().invoke(app, args[:-3] + ["--edge-nlist", "8"])
    assert r.exit_code == 2 and "--edge-nlist needs --edge" in r.output
    assert store.versions("syn") == [1]


def test_admin_publish_with_edge(tmp_path, data, users):
    import io

    buf = io.BytesIO()
    np.savez(buf, ids=IDS[:600], vectors=data[0][:600], users=users, user_ids=UIDS)
    with TestClient(create_app(tmp_path, api_key="k" * 16)) as c:
        r = c.post("/v1/admin/catalogs/news/versions", params={"codecs": "sq8", "edge": "true", "edge_nlist": 6},
                   content=buf.getvalue(), headers={"X-API-Key": "k" * 16})  # fmt: skip
        assert r.status_code == 201, r.text
        assert r.json()["edge"]["nlist"] == 6 and "edge" in r.json()["files"]
        r = c.get("/v1/catalogs/news/versions/1/edge-summary", params={"user_id": 100, "budget_bytes": 5000})
        assert r.status_code == 200 and DeviceSummary.from_bytes(r.content).nlist == 6
        r = c.post("/v1/admin/catalogs/news/versions", params={"edge_nlist": 601, "edge": "true"},
                   content=buf.getvalue(), headers={"X-API-Key": "k" * 16})  # fmt: skip
        assert r.status_code == 400 and "edge_nlist" in r.json()["error"]["message"]


def test_ids_read_from_bytes_are_checked(cat, data):
    """Ids parsed from a summary or an edge catalog go through the one item-id check (SerializationError)."""
    import dataclasses

    s = cat.summary_for(data[1][0], cat.fixed_bytes + 20_000)
    for bad_ids, words in (([-1, 2**40], "non-negative"), ([5, 5], "unique")):
        ids = s.ids.copy()
        ids[:2] = bad_ids
        raw = dataclasses.replace(s, ids=ids).to_bytes()  # a well-formed frame (CRC matches) holding bad ids
        with pytest.raises(SerializationError, match=f"device summary item ids must be {words}"):
            DeviceSummary.from_bytes(raw)
    raw = bytearray(cat.to_bytes())
    ids_at = raw.find(np.ascontiguousarray(cat.ids[:2], "<i8").tobytes())
    assert ids_at > 0
    raw[ids_at + 8 : ids_at + 16] = raw[ids_at : ids_at + 8]  # second id := first id, then re-seal the CRC
    raw[-4:] = struct.pack("<I", crc32c(bytes(raw[:-4])))
    with pytest.raises(SerializationError, match="edge catalog item ids must be unique"):
        EdgeCatalog.from_bytes(bytes(raw))
