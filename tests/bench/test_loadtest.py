"""Short loopback load and fault tests (the full load test is benchmarks/load_test.py).

A real ``reelpack serve`` child process on 127.0.0.1: simulated users for a few seconds with no errors;
the server killed in the middle of a phone's download, restarted, and the download resumed to a
byte-identical file; a corrupted response caught by its checksum and fetched again.
"""

from __future__ import annotations

import hashlib

import httpx
import numpy as np
import pytest

from reelpack.errors import InvalidInputError, ServiceError
from reelpack.device.client import PhoneClient
from reelpack.bench.loadtest import LoadConfig, free_port, run_load, start_server, stop_server
from reelpack.catalog.store import CatalogStore, build_catalog


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6000, 32)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    # small blocks so that layer0.rpk is large enough to be cut in the middle of a download
    build_catalog(CatalogStore(root), "books", np.arange(6000, dtype=np.int64) * 3 + 7, X, items_per_block=256)
    return root


def test_short_load_has_no_errors(store_dir):
    proc, url = start_server(store_dir)
    try:
        report = run_load(url, "books", LoadConfig(clients=25, seconds=3.0, think_s=(0.05, 0.2)))
    finally:
        stop_server(proc)
    assert report.errors == 0, report.error_samples
    assert report.requests >= 100
    assert report.latency_ms["retrieve"]["n"] > 0 and report.latency_ms["retrieve"]["p99"] > 0


def test_load_refuses_non_loopback_and_bad_config():
    with pytest.raises(InvalidInputError):
        run_load("http://10.1.2.3:8000", "books", LoadConfig(clients=1, seconds=1))
    with pytest.raises(InvalidInputError):
        LoadConfig(clients=0)
    with pytest.raises(InvalidInputError):
        LoadConfig(think_s=(2.0, 1.0))


class _KillAfter(httpx.BaseTransport):
    """Pass requests through; after ``limit`` body bytes have been delivered, kill the server once."""

    def __init__(self, inner: httpx.BaseTransport, proc, limit: int) -> None:
        self.inner, self.proc, self.limit, self.seen, self.killed = inner, proc, limit, 0, False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if "/files/" in request.url.path and not self.killed:
            body = response.read()
            self.seen += len(body)
            if self.seen >= self.limit:
                self.killed = True
                stop_server(self.proc, kill=True)
            return httpx.Response(response.status_code, headers=response.headers, content=body, request=request)
        return response


def test_server_killed_mid_download_then_resumed_byte_identical(store_dir, tmp_path):
    port = free_port()
    proc, url = start_server(store_dir, port=port)
    store = CatalogStore(store_dir)
    layer0 = store.file("books", store.latest("books"), "layer0").read_bytes()
    assert len(layer0) > 40_000
    transport = _KillAfter(httpx.HTTPTransport(), proc, limit=len(layer0) // 3)
    client = PhoneClient(
        url, "books", tmp_path / "cache.sqlite", transport=transport, chunk_bytes=8192, request_bytes=8192, max_retries=2
    )
    try:
        with pytest.raises(ServiceError):
            client.sync()  # the server died part-way: bounded retries, then a clear error
        assert transport.killed
        proc, _ = start_server(store_dir, port=port)  # same address, as after a restart
        resumed = PhoneClient(url, "books", tmp_path / "cache.sqlite", chunk_bytes=8192)
        report = resumed.sync()
        assert report.bytes_downloaded < len(layer0)  # it resumed, it did not start over
        assert hashlib.sha256(resumed.cached_file(store.latest("books"))).hexdigest() == hashlib.sha256(layer0).hexdigest()
    finally:
        stop_server(proc)


class _CorruptOnce(httpx.BaseTransport):
    """Flip one byte in the first file response that carries a body."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner, self.done = inner, False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if "/files/" in request.url.path and not self.done:
            body = bytearray(response.read())
            if len(body) > 100:
                body[len(body) // 2] ^= 0x40
                self.done = True
            return httpx.Response(response.status_code, headers=response.headers, content=bytes(body), request=request)
        return response


def test_corrupted_response_is_caught_and_refetched(store_dir, tmp_path):
    proc, url = start_server(store_dir)
    try:
        transport = _CorruptOnce(httpx.HTTPTransport())
        client = PhoneClient(url, "books", tmp_path / "cache.sqlite", transport=transport, chunk_bytes=1 << 20)
        client.sync()
        assert transport.done
        store = CatalogStore(store_dir)
        expect = store.file("books", store.latest("books"), "layer0").read_bytes()
        assert client.cached_file(store.latest("books")) == expect
    finally:
        stop_server(proc)
