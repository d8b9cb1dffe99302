"""Loopback load test of the pack service: many simulated clients against one server process.

:func:`start_server` runs ``reelpack serve`` in a child process bound to 127.0.0.1 and waits (bounded)
until ``/v1/health`` answers; :func:`run_load` drives ``clients`` simulated users from one asyncio loop
for ``seconds``, each over its own keep-alive HTTP/1.1 connection (a minimal client written for the
load test, so that the generator's CPU does not dominate what it measures). Each simulated user repeats: one request, then a think time drawn uniformly from
``think_s`` (a person scrolling a feed, not a benchmark client hammering the server). Requests, by
weight: ``retrieve`` (``POST /v1/retrieve`` with a random unit vector, K = 50), ``range`` (a 64 KiB
``Range`` read of ``layer0.rpk`` at a random offset, as a resuming phone does), ``manifest``
(``GET /v1/catalogs/{catalog}``). Every non-2xx/304 status and every exception counts as an error.

Everything is bounded: the run stops at its deadline, each request has a timeout, and the server
start gives up after ``startup_timeout_s`` (:class:`~reelpack.errors.ServiceError`). Loopback only:
``host`` must be a loopback address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.errors import InvalidInputError, ServiceError

__all__ = ["LoadConfig", "LoadReport", "free_port", "start_server", "stop_server", "run_load", "wait_healthy"]

OPERATIONS = ("retrieve", "range", "manifest")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _check_loopback(host: str) -> None:
    try:
        loop = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loop = host == "localhost"
    if not loop:
        raise InvalidInputError(f"load and fault tests run on loopback only, got host {host!r}")


def wait_healthy(base_url: str, timeout_s: float = 30.0) -> None:
    """Poll ``GET /v1/health`` until it answers 200; :class:`ServiceError` after ``timeout_s``."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{base_url}/v1/health", timeout=1.0)
            if r.status_code == 200:
                return
            last = f"status {r.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise ServiceError(f"service at {base_url} not healthy after {timeout_s:.0f} s ({last})")


def start_server(
    store: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    api_key: str | None = None,
    startup_timeout_s: float = 60.0,
    log_path: str | os.PathLike | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start ``reelpack serve --store STORE`` in a child process; return (process, base URL) once healthy."""
    _check_loopback(host)
    port = free_port(host) if port is None else int(port)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "reelpack.cli", "serve", "--store", str(store), "--host", host, "--port", str(port)]
    if api_key is not None:
        env["REELPACK_API_KEY"] = api_key
        cmd += ["--api-key-env", "REELPACK_API_KEY"]
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    base_url = f"http://{host}:{port}"
    try:
        wait_healthy(base_url, startup_timeout_s)
    except ServiceError:
        stop_server(proc)
        raise
    return proc, base_url


def stop_server(proc: subprocess.Popen, kill: bool = False, timeout_s: float = 10.0) -> None:
    """Terminate (or kill) the server process and wait for it, bounded."""
    if proc.poll() is None:
        proc.kill() if kill else proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)


@dataclass(frozen=True)
class LoadConfig:
    """One load run.

    Attributes:
        clients: simulated users, all active for the whole run.
        seconds: run length (wall clock).
        think_s: (min, max) seconds a user waits between requests.
        weights: relative frequency of ``retrieve``, ``range``, ``manifest``.
        k: K of retrieve requests.
        timeout_s: per-request timeout (a timeout counts as an error).
        seed: random seed of the users' choices and vectors.
    """

    clients: int = 200
    seconds: float = 60.0
    think_s: tuple[float, float] = (0.5, 1.5)
    weights: tuple[float, float, float] = (0.8, 0.1, 0.1)
    k: int = 50
    timeout_s: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.clients <= 5000:
            raise InvalidInputError(f"clients must be in 1..5000, got {self.clients}")
        if not 0 < self.seconds <= 3600:
            raise InvalidInputError(f"seconds must be in (0, 3600], got {self.seconds}")
        lo, hi = self.think_s
        if not 0 <= lo <= hi <= 60:
            raise InvalidInputError(f"think_s must be 0 <= min <= max <= 60, got {self.think_s}")
        if len(self.weights) != 3 or min(self.weights) < 0 or sum(self.weights) <= 0:
            raise InvalidInputError(f"weights must be three non-negative numbers, got {self.weights}")


@dataclass
class LoadReport:
    """What a load run measured (latencies in milliseconds, wall clock on this machine)."""

    config: dict[str, Any]
    requests: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    throughput_rps: float = 0.0
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    server_took_ms_p50: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _summary(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
        "mean": float(a.mean()),
    }


class _Connection:
    """One keep-alive HTTP/1.1 connection with a minimal request/response codec.

    A simulated user needs a few microseconds of CPU per request here, where a full client library
    spends about a millisecond; on a 2-core machine the load generator would otherwise compete with
    the server it measures. Responses must carry ``Content-Length`` (the service always sends it).
    """

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes = b"", headers: str = "") -> tuple[int, bytes]:
        return await asyncio.wait_for(self._request(method, path, body, headers), self.timeout_s)

    async def _request(self, method: str, path: str, body: bytes, headers: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{headers}"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode("latin-1") + b"\r\n" + body)
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")  # type: ignore[union-attr]
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self.reader.readexactly(length) if length else b""  # type: ignore[union-attr]
        if close:
            await self.close()
        return status, payload


async def _run_async(base_url: str, catalog: str, config: LoadConfig) -> LoadReport:
    from urllib.parse import urlparse

    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=config.timeout_s) as probe:
        manifest = (await probe.get(f"/v1/catalogs/{catalog}")).json()
    latest = manifest["latest"]
    entry = next(v for v in manifest["versions"] if v["version"] == latest)
    dim, layer0_bytes = int(entry["dim"]), int(entry["files"]["layer0"]["bytes"])
    url = urlparse(base_url)
    host, port = url.hostname or "127.0.0.1", int(url.port or 80)

    latencies: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    took: list[float] = []
    report = LoadReport(config=asdict(config))
    weights = np.asarray(config.weights, dtype=np.float64) / sum(config.weights)
    start = time.monotonic()
    deadline = start + config.seconds
    retrieve_path = "/v1/retrieve"
    file_path = f"/v1/catalogs/{catalog}/versions/{latest}/files/layer0"
    manifest_path = f"/v1/catalogs/{catalog}"

    async def user(uid: int) -> None:
        rng = np.random.default_rng([config.seed, uid])
        conn = _Connection(host, port, config.timeout_s)
        await asyncio.sleep(float(rng.uniform(0, config.think_s[1])))  # users do not start in lockstep
        try:
            while time.monotonic() < deadline:
                op = OPERATIONS[int(rng.choice(3, p=weights))]
                t0 = time.perf_counter()
                try:
                    if op == "retrieve":
                        v = rng.standard_normal(dim)
                        v /= np.linalg.norm(v)
                        body = json.dumps({"catalog": catalog, "version": latest, "vector": v.tolist(), "k": config.k})
                        status, payload = await conn.request("POST", retrieve_path, body.encode())
                        if status == 200:
                            took.append(float(json.loads(payload).get("took_ms", float("nan"))))
                    elif op == "range":
                        a = int(rng.integers(0, max(1, layer0_bytes - 65536)))
                        status, payload = await conn.request("GET", file_path, headers=f"Range: bytes={a}-{a + 65535}\r\n")
                    else:
                        status, payload = await conn.request("GET", manifest_path)
                    ok = status in (200, 206, 304)
                    if not ok and len(report.error_samples) < 10:
                        report.error_samples.append(f"{op}: HTTP {status} {payload[:200]!r}")
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                    ok = False
                    await conn.close()
                    if len(report.error_samples) < 10:
                        report.error_samples.append(f"{op}: {type(exc).__name__}: {exc}")
                latencies[op].append(1e3 * (time.perf_counter() - t0))
                report.requests += 1
                report.errors += 0 if ok else 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(float(rng.uniform(*config.think_s)), remaining))
        finally:
            await conn.close()

    await asyncio.gather(*(user(i) for i in range(config.clients)))
    report.seconds = time.monotonic() - start
    report.throughput_rps = report.requests / report.seconds if report.seconds > 0 else 0.0
    report.latency_ms = {op: _summary(v) for op, v in latencies.items()}
    report.latency_ms["all"] = _summary([x for v in latencies.values() for x in v])
    finite = [t for t in took if np.isfinite(t)]
    report.server_took_ms_p50 = float(np.median(finite)) if finite else None
    return report


def run_load(base_url: str, catalog: str, config: LoadConfig = LoadConfig()) -> LoadReport:
    """Drive ``config.clients`` simulated users against ``base_url`` (loopback) for ``config.seconds``."""
    from urllib.parse import urlparse

    _check_loopback(urlparse(base_url).hostname or "")
    return asyncio.run(_run_async(base_url, catalog, config))


def _main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - exercised by benchmarks/load_test.py
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--catalog", required=True)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    proc, url = start_server(args.store)
    try:
        report = run_load(url, args.catalog, LoadConfig(clients=args.clients, seconds=args.seconds))
    finally:
        stop_server(proc)
    text = json.dumps(report.to_dict(), indent=1)
    print(text)
    if args.out:
        from reelpack.util.atomic import atomic_write_bytes

        atomic_write_bytes(args.out, text.encode())
    return 0 if report.errors == 0 else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
