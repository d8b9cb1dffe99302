"""PhoneClient and ShapedTransport against the real service (in-process, starlette TestClient transport).

Small SYNTHETIC catalogs (n <= 2000, d = 32): resumable chunked sync through cut connections, corruption caught
by SHA-256 / CRC32C and re-fetched, the SQLite cache reused across clients, the delta path, user-vector updates,
an unreachable server, and the virtual clock's accounting.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import time
import warnings

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelpack.errors import ChecksumError, InvalidInputError, PackFormatError, ServiceError, StoreError
from reelpack.format import crc32c
from reelpack.service.app import create_app
from reelpack.device.client import PhoneClient, parse_refine_frame
from reelpack.device.shaper import PROFILES, NetworkProfile, ShapedTransport, get_profile
from reelpack.catalog.store import CatalogStore, build_catalog

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

N, D, IPB = 2000, 32, 256
URL = "http://testserver"


def _vectors(seed: int, n: int = N) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((16, D)).astype(np.float32)
    X = centres[rng.integers(0, 16, n)] + 0.7 * rng.standard_normal((n, D)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A store with catalog "books" (one version, with users) and its app's in-process transport."""
    root = tmp_path_factory.mktemp("store")
    store = CatalogStore(root)
    X = _vectors(0)
    users = _vectors(1, 20)
    build_catalog(store, "books", np.arange(N, dtype=np.int64) * 3 + 7, X, codecs=("pq4", "sq8"), users=users,
                  user_ids=np.arange(20) + 100, items_per_block=IPB, index=False, seed=0)  # fmt: skip
    client = TestClient(create_app(root))
    yield {"store": store, "X": X, "ids": np.arange(N, dtype=np.int64) * 3 + 7, "users": users,
           "transport": client._transport}  # fmt: skip
    client.close()


def _layer0(server, version: int = 1) -> bytes:
    return server["store"].file("books", version, "layer0").read_bytes()


class FailAfter(httpx.BaseTransport):
    """Cuts the connection once ``limit`` body bytes have gone through (``times`` times; then passes through)."""

    def __init__(self, inner: httpx.BaseTransport, limit: int, times: int = 1) -> None:
        self.inner, self.limit, self.times, self.sent = inner, limit, times, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        raw = b"".join(response.iter_raw())
        if self.times and self.sent + len(raw) > self.limit:
            self.times -= 1
            keep = self.limit - self.sent
            self.sent = 0

            def body():
                yield raw[:keep]
                raise httpx.ReadError("cut", request=request)

            class _S(httpx.SyncByteStream):
                def __iter__(self):
                    return body()

            return httpx.Response(response.status_code, headers=response.headers, stream=_S(), request=request)
        self.sent += len(raw)
        return httpx.Response(response.status_code, headers=response.headers, content=raw, request=request)


class FlipByte(httpx.BaseTransport):
    """Flips one byte in the body of the ``which``-th response whose path contains ``path_part``."""

    def __init__(self, inner: httpx.BaseTransport, path_part: str, which: tuple[int, ...] = (0,)) -> None:
        self.inner, self.path_part, self.which, self.seen = inner, path_part, set(which), 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        raw = bytearray(b"".join(response.iter_raw()))
        if self.path_part in request.url.path and response.status_code < 300:
            if self.seen in self.which and raw:
                raw[len(raw) // 2] ^= 0x40
            self.seen += 1
        return httpx.Response(response.status_code, headers=response.headers, content=bytes(raw), request=request)


def _client(tmp_path, transport, name="phone.db", **kw) -> PhoneClient:
    kw.setdefault("chunk_bytes", 8192)
    return PhoneClient(URL, "books", tmp_path / name, transport=transport, **kw)


# ---- shaper ---------------------------------------------------------------------------------------
def test_profiles_and_bad_input():
    assert get_profile("1mbit") == NetworkProfile("1mbit", 1e6, 1e6, 0.1, 0.0)
    assert PROFILES["3g"].down_bps == 1.6e6 and PROFILES["3g"].rtt_s == 0.3 and PROFILES["3g"].loss == 0.01
    assert PROFILES["4g"].down_bps == 12e6 and PROFILES["4g"].rtt_s == 0.06 and PROFILES["4g"].loss == 0.002
    with pytest.raises(InvalidInputError, match="1mbit, 3g, 4g"):
        get_profile("5g")
    with pytest.raises(InvalidInputError, match="loss"):
        NetworkProfile("x", 1e6, 1e6, 0.1, 1.0)
    with pytest.raises(InvalidInputError, match="clock"):
        ShapedTransport(httpx.MockTransport(lambda r: httpx.Response(200)), "4g", clock="wall")


def test_virtual_clock_one_megabyte_at_one_mbit():
    body = bytes(1_000_000)
    shaped = ShapedTransport(httpx.MockTransport(lambda r: httpx.Response(200, content=body)), "1mbit")
    t0 = time.perf_counter()
    with httpx.Client(transport=shaped) as http:
        assert len(http.get("http://x/").content) == 1_000_000
        http.post("http://x/", content=bytes(125_000))  # 1 s of uplink + 1 s downlink + RTT
    assert time.perf_counter() - t0 < 1.0  # nothing slept
    assert shaped.simulated_seconds == pytest.approx((8.0 + 0.1) + (1.0 + 8.0 + 0.1))
    assert (shaped.bytes_down, shaped.bytes_up, shaped.requests) == (2_000_000, 125_000, 2)


def test_loss_is_deterministic_per_seed():
    body = bytes(200_000)

    def run(seed):
        shaped = ShapedTransport(httpx.MockTransport(lambda r: httpx.Response(200, content=body)),
                                 NetworkProfile("lossy", 1e6, 1e6, 0.01, 0.2), seed=seed,
                                 loss_chunk_bytes=10_000)  # fmt: skip
        got = []
        with httpx.Client(transport=shaped) as http:
            for _ in range(10):
                try:
                    got.append(len(http.get("http://x/").content))
                except httpx.ReadError:
                    got.append(-1)
        return got, shaped.bytes_down

    a, b = run(3), run(3)
    assert a == b and -1 in a[0] and run(4) != a


@pytest.mark.parametrize("request_bytes", [None, 16384])
def test_client_sync_accounts_virtual_time(server, tmp_path, request_bytes):
    shaped = ShapedTransport(server["transport"], "1mbit")
    with _client(tmp_path, shaped, request_bytes=request_bytes) as phone:
        report = phone.sync()
    size = len(_layer0(server))
    assert report.bytes_downloaded == size and not report.used_delta and report.version == 1
    n_requests = 1 if request_bytes is None else -(-size // request_bytes)
    assert report.requests == n_requests + 1  # the manifest, then the Range request(s)
    expected = 8.0 * (size + report.metadata_bytes) / 1e6 + 0.1 * report.requests
    assert report.simulated_seconds == pytest.approx(expected, rel=1e-9)
    assert report.seconds == pytest.approx(report.simulated_seconds + report.wall_seconds)


# ---- resume ---------------------------------------------------------------------------------------
def test_resume_through_lossy_network_is_byte_identical(server, tmp_path):
    shaped = ShapedTransport(server["transport"], NetworkProfile("bad", 2e6, 1e6, 0.05, 0.25), seed=7,
                             loss_chunk_bytes=2048)  # fmt: skip
    with _client(tmp_path, shaped) as phone:
        report = phone.sync()
        assert shaped.cuts >= 3 and report.retries >= 3
        assert phone.cached_file(1) == _layer0(server)
        # Resumed, not restarted: little more than the file was transferred.
        assert len(_layer0(server)) <= report.bytes_downloaded < 1.3 * len(_layer0(server))


def test_killed_download_resumes_in_a_new_client(server, tmp_path):
    size = len(_layer0(server))
    # First "process": the connection dies for good after 20 000 bytes; no retries.
    dead = FailAfter(server["transport"], 20_000 + 2000, times=10**6)  # ~2 KB of manifest first
    with _client(tmp_path, dead, max_retries=0) as phone:
        with pytest.raises(ServiceError, match="failed 1 times") as info:
            phone.sync()
        assert info.value.status is None
        held = phone.partial_bytes(1)
    assert 10_000 < held < size
    # Second "process" on the same cache resumes at byte `held`.
    cut_once = FailAfter(server["transport"], 30_000, times=1)
    with _client(tmp_path, cut_once) as phone:
        report = phone.sync()
        assert report.bytes_downloaded == size - held
        assert phone.cached_file(1) == _layer0(server)
        assert phone.partial_bytes(1) == 0


# ---- corruption -----------------------------------------------------------------------------------
def test_corrupt_byte_in_download_is_caught_and_refetched(server, tmp_path):
    flip = FlipByte(server["transport"], "/files/layer0", which=(1,))
    with _client(tmp_path, flip, request_bytes=8192) as phone:
        report = phone.sync()
        assert phone.cached_file(1) == _layer0(server)
    size = len(_layer0(server))
    assert report.bytes_downloaded == 2 * size  # discarded once, fetched again


def test_corrupt_every_time_raises(server, tmp_path):
    flip = FlipByte(server["transport"], "/files/layer0", which=tuple(range(1000)))
    with _client(tmp_path, flip) as phone:
        with pytest.raises(ServiceError, match="SHA-256"):
            phone.sync()
        assert phone.cached_versions() == []


def test_corrupt_refine_frame_is_refetched(server, tmp_path):
    X = server["X"]
    flip = FlipByte(server["transport"], "/refine", which=(0,))
    with _client(tmp_path, flip) as phone:
        phone.sync()
        rec = phone.recommend(X[11], k=10, refine=100)
        assert rec.refined and flip.seen == 2
    always = FlipByte(server["transport"], "/refine", which=tuple(range(10)))
    with _client(tmp_path, always) as phone:
        with pytest.raises(ServiceError, match="CRC32C"):
            phone.recommend(X[11], k=10, refine=100)


def test_parse_refine_frame_checks():
    ids = np.array([5, 9, 2], np.int64)
    codes = np.arange(12, dtype=np.uint8).reshape(3, 4)
    body = struct.pack("<4sIII", b"RPRF", 3, 4, 1) + ids.astype("<i8").tobytes() + codes.tobytes()
    frame = body + struct.pack("<I", crc32c(body))
    np.testing.assert_array_equal(parse_refine_frame(frame, ids, 4), codes)
    with pytest.raises(ChecksumError):
        parse_refine_frame(frame[:-5] + bytes([frame[-5] ^ 1]) + frame[-4:], ids, 4)
    with pytest.raises(PackFormatError, match="magic"):
        parse_refine_frame(b"XXXX" + frame[4:], ids, 4)
    with pytest.raises(PackFormatError, match="ids differ"):
        parse_refine_frame(frame, ids[::-1], 4)
    with pytest.raises(PackFormatError, match="bytes"):
        parse_refine_frame(frame, ids, 8)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_parse_refine_frame_fuzz(data):
    try:
        parse_refine_frame(data, np.array([1, 2], np.int64), 4)
    except PackFormatError:
        pass


# ---- cache, recommendation, fallback --------------------------------------------------------------
def test_recommend_matches_exact_and_cache_survives_reopen(server, tmp_path):
    X, ids = server["X"], server["ids"]
    with _client(tmp_path, server["transport"]) as phone:
        phone.sync()
        rec = phone.recommend(X[42], k=20, refine=200)
    assert rec.refined and rec.ids.shape == (20,) and rec.scores.dtype == np.float32
    exact = ids[np.argsort(-(X @ X[42]), kind="stable")[:20]]
    assert len(np.intersect1d(rec.ids, exact)) >= 18
    assert np.all(np.diff(rec.scores) <= 0)
    # A new client on the same SQLite file downloads no pack bytes and reuses the cached codec.
    with _client(tmp_path, server["transport"]) as phone:
        report = phone.sync()
        assert report.bytes_downloaded == 0 and report.version == 1
        again = phone.recommend(X[42], k=20, refine=200)
    np.testing.assert_array_equal(again.ids, rec.ids)
    # Offline (closed port): the cached layer 0 still ranks; refinement falls back.
    offline = ShapedTransport(httpx.HTTPTransport(), "4g")
    with PhoneClient(f"http://127.0.0.1:{_closed_port()}", "books", tmp_path / "phone.db", transport=offline,
                     max_retries=2) as phone:  # fmt: skip
        fb = phone.recommend(X[42], k=20, refine=200)
    assert not fb.refined and "network" in fb.note and fb.ids.shape == (20,)
    assert len(np.intersect1d(fb.ids, exact)) >= 10


def test_bad_cache_file_and_bad_arguments(server, tmp_path):
    bad = tmp_path / "junk.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="SQLite"):
        PhoneClient(URL, "books", bad, transport=server["transport"])
    with pytest.raises(InvalidInputError, match="catalog name"):
        PhoneClient(URL, "../etc", tmp_path / "a.db")
    with _client(tmp_path, server["transport"]) as phone:
        with pytest.raises(ServiceError, match="404"):
            PhoneClient(URL, "nosuch", tmp_path / "b.db", transport=server["transport"]).sync()
        phone.sync()
        with pytest.raises(InvalidInputError):
            phone.recommend(np.ones(D + 1, np.float32))
        with pytest.raises(InvalidInputError):
            phone.recommend(server["X"][0], k=0)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on exit: connections are refused


def test_unreachable_server_is_bounded(tmp_path):
    shaped = ShapedTransport(httpx.HTTPTransport(), "3g")
    t0 = time.perf_counter()
    with PhoneClient(f"http://127.0.0.1:{_closed_port()}", "books", tmp_path / "x.db", transport=shaped,
                     max_retries=4, backoff_s=0.5) as phone:  # fmt: skip
        with pytest.raises(ServiceError, match="5 times in a row") as info:
            phone.sync()
    assert info.value.status is None
    assert time.perf_counter() - t0 < 5.0
    assert shaped.requests == 5
    # back-off 0.5 + 1 + 2 + 2 (capped) simulated, plus one RTT per attempt
    assert shaped.simulated_seconds == pytest.approx(0.5 + 1 + 2 + 2 + 5 * 0.3)


# ---- deltas and user vectors ----------------------------------------------------------------------
def test_delta_sync_and_user_vector_update(tmp_path):
    root = tmp_path / "store"
    store = CatalogStore(root)
    pool = _vectors(5, 1600)  # v2's new and changed items come from the same distribution (codecs reused)
    X1, ids1 = pool[:1500], np.arange(1500, dtype=np.int64)
    users1 = _vectors(6, 10)
    build_catalog(store, "books", ids1, X1, codecs=("pq4", "sq8"), users=users1, items_per_block=IPB,
                  index=False, seed=0)  # fmt: skip
    app_client = TestClient(create_app(root))
    shaped = ShapedTransport(app_client._transport, "4g", seed=2)
    phone = _client(tmp_path, shaped)
    first = phone.sync()
    assert first.version == 1 and not first.used_delta
    u1 = phone.user_vector(3)
    assert np.abs(u1 - users1[3]).max() <= np.abs(users1[3]).max() / 127 * 0.5 + 1e-6
    # v2: 50 items changed, 30 removed, 40 added; user 3 moves a little.
    rng = np.random.default_rng(9)
    X2, ids2 = X1.copy(), ids1.copy()
    X2[:50] = pool[1500:1550]
    keep = np.ones(1500, bool)
    keep[100:130] = False
    X2 = np.concatenate([X2[keep], pool[1550:1590]])
    ids2 = np.concatenate([ids2[keep], np.arange(5000, 5040)])
    users2 = users1 + 0.05 * rng.standard_normal(users1.shape).astype(np.float32)
    entry = build_catalog(store, "books", ids2, X2, users=users2, index=False, seed=0)
    assert entry["delta_from"] == 1 and "layer0_delta" in entry["files"] and entry["codecs_reused"][0]
    second = phone.sync()
    server_v2 = store.file("books", 2, "layer0").read_bytes()
    assert second.version == 2 and second.used_delta and second.from_version == 1
    assert 0 < second.bytes_downloaded < len(server_v2)
    assert second.bytes_downloaded == entry["files"]["layer0_delta"]["bytes"]
    assert phone.cached_file(2) == server_v2
    assert hashlib.sha256(phone.cached_file(2)).hexdigest() == entry["files"]["layer0"]["sha256"]
    assert phone.cached_versions() == [2]
    u2 = phone.user_vector(3)
    # relative update: the server quantises users2 - users1 (its own v1 vector), the client adds it to u1
    step = np.abs(users2[3] - users1[3]).max() / 127
    assert np.abs(u2 - users2[3]).max() <= np.abs(u1 - users1[3]).max() + step * 0.5 + 1e-5
    assert np.abs(u2 - users2[3]).max() < np.abs(u1 - users2[3]).max()
    rec = phone.recommend(u2, k=10)
    assert rec.version == 2 and rec.refined and np.isin(rec.ids, ids2).all()
    with pytest.raises(ServiceError, match="404"):
        phone.user_vector(999)
    phone.close()
    app_client.close()


def test_etag_change_between_chunks_restarts_download(tmp_path):
    """A fake server whose file changes (new ETag) after two chunks: the client must not splice two files."""
    rng = np.random.default_rng(3)
    old, new = rng.bytes(40_000), rng.bytes(40_000)
    sha_new = hashlib.sha256(new).hexdigest()
    files = {"layer0": {"bytes": 40_000, "sha256": sha_new}}
    manifest = {"catalog": "books", "latest": 1, "versions": [{"version": 1, "codecs": ["pq4"], "files": files}]}
    ranges: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/catalogs/books":
            return httpx.Response(200, json=manifest)
        ranges.append(request.headers["range"])
        body, tag = (old, "old") if len(ranges) <= 2 else (new, sha_new)
        a, b = (int(x) for x in request.headers["range"].removeprefix("bytes=").split("-"))
        return httpx.Response(206, content=body[a : b + 1],
                              headers={"ETag": f'"{tag}"', "Content-Range": f"bytes {a}-{b}/40000"})  # fmt: skip

    with PhoneClient(URL, "books", tmp_path / "e.db", transport=httpx.MockTransport(handler), chunk_bytes=10_000,
                     request_bytes=10_000, backoff_s=0) as phone:  # fmt: skip
        with pytest.raises(ServiceError):  # random bytes are not a pack: it fails verify() after the SHA-256 passes
            phone.sync()
        assert ranges[:4] == ["bytes=0-9999", "bytes=10000-19999", "bytes=20000-29999", "bytes=0-9999"]
        assert phone._assemble(1, "layer0") == b""  # dropped after failing the pack check


def test_cli_client(server, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from reelpack.cli import app

    monkeypatch.setattr(httpx, "HTTPTransport", lambda *a, **kw: server["transport"])
    args = ["client", "--server", URL, "--catalog", "books", "--cache", str(tmp_path / "cli.db")]
    result = CliRunner().invoke(app, [*args, "--profile", "1mbit", "--random-user", "-k", "5"])
    assert result.exit_code == 0, result.output
    assert "time to first recommendation" in result.output and "(1mbit)" in result.output and "refined" in result.output
    assert f"{len(_layer0(server))} file bytes" in result.output
    again = CliRunner().invoke(app, [*args, "--user-id", "103", "-k", "5"])
    assert again.exit_code == 0 and "0 file bytes" in again.output, again.output
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code == 2
