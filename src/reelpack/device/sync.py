"""Bringing the phone's cached layer 0 up to the service's latest version.

:meth:`Synchroniser.sync` reads the manifest and, when an older version is cached and the chain of
``layer0_delta`` files is smaller than ``layer0.rpk``, applies the deltas (:func:`reelpack.format.apply_delta`);
else it downloads ``layer0.rpk`` with ``Range`` requests (``bytes=<offset>-``, or ``request_bytes`` at a time).
Every ``chunk_bytes`` received are committed to the SQLite cache as they arrive, so a cut connection or a killed
process resumes at the byte where it stopped (the file's ETag must not change between chunks, else the download
restarts). A finished file is checked (size, SHA-256 from the manifest, :meth:`PackReader.verify` CRC32C) before
it is kept; a file that fails is discarded and fetched once more, then :class:`~reelpack.errors.ServiceError`.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from reelpack.device.cache import ClientCache
from reelpack.device.http import (
    RETRY_STATUSES,
    ServiceConnection,
    Unreachable,
    strip_etag,
)
from reelpack.errors import DeltaError, PackFormatError, ServiceError
from reelpack.format import PackReader, apply_delta

__all__ = ["SyncReport", "Synchroniser", "BadFile", "file_meta", "check_file", "delta_chain"]

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass
class SyncReport:
    """What :meth:`PhoneClient.sync` did.

    Attributes:
        version: the catalog version now cached (the server's latest).
        bytes_downloaded: body bytes of pack and delta files received (including bytes of cut responses
            and of discarded corrupt downloads; 0 when the cache was already up to date).
        used_delta: the version was reached by applying ``layer0_delta`` files.
        seconds: ``wall_seconds + simulated_seconds``: time to sync under the transport's network profile.
        from_version: the version cached before, or ``None``.
        metadata_bytes: body bytes of the manifest and other JSON answers.
        requests: HTTP requests sent (including failed attempts).
        retries: failed attempts that were retried.
        wall_seconds: real elapsed time (local compute; with an in-process server, its work too).
        simulated_seconds: time charged by a virtual-clock ShapedTransport (network and back-off), else 0.
    """

    version: int
    bytes_downloaded: int
    used_delta: bool
    seconds: float
    from_version: int | None = None
    metadata_bytes: int = 0
    requests: int = 0
    retries: int = 0
    wall_seconds: float = 0.0
    simulated_seconds: float = 0.0


class BadFile(Exception):
    """A downloaded file or answer failed its checks (internal: triggers one re-fetch)."""


def file_meta(entry: dict[str, Any], kind: str, version: int) -> tuple[str, int]:
    """(SHA-256 hex, bytes) of file ``kind`` in a manifest entry; ServiceError when missing or malformed."""
    try:
        meta = entry["files"][kind]
        sha, size = meta["sha256"], meta["bytes"]
    except (KeyError, TypeError):
        raise ServiceError(f"manifest entry of version {version} lacks files.{kind}.sha256/bytes") from None
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha) or not isinstance(size, int) or size < 0:
        raise ServiceError(f"manifest entry of version {version} has a bad files.{kind}: {meta!r}")
    return sha, size


def check_file(data: bytes, kind: str, sha: str, size: int) -> None:
    """Raise BadFile when ``data`` is not the file the manifest describes (or, for packs, fails its CRCs)."""
    if len(data) != size:
        raise BadFile(f"{len(data)} bytes, the manifest says {size}")
    got = hashlib.sha256(data).hexdigest()
    if got != sha:
        raise BadFile(f"SHA-256 {got} differs from the manifest's {sha}")
    if kind in ("layer0", "pack"):
        try:
            report = PackReader.from_buffer(data).verify()
        except PackFormatError as exc:
            raise BadFile(f"pack does not open: {exc}") from None
        if not report.ok:
            raise BadFile(f"pack fails verify(): {report.bad_blocks[:3]} {report.section_problems[:3]}")


def delta_chain(versions: dict[int, dict[str, Any]], have: int, latest: int) -> list[dict[str, Any]] | None:
    """Version entries whose ``layer0_delta`` files lead from ``have`` to ``latest``, or None."""
    chain, cur = [], have
    while cur != latest:
        nxt = [e for v, e in sorted(versions.items())
               if v > cur and e.get("delta_from") == cur and "layer0_delta" in (e.get("files") or {})]  # fmt: skip
        if not nxt:
            return None
        chain.append(nxt[0])
        cur = int(nxt[0]["version"])
    return chain


class Synchroniser:
    """Manifest reads, resumable checked downloads and the delta path for one catalog.

    Args:
        net: the connection (retries, counters).
        cache: the SQLite cache.
        chunk_bytes: commit unit of a download.
        request_bytes: bytes asked per ``Range`` request (``None``: the rest of the file).
        on_stored: called with the version after a new layer 0 was kept (the client forgets other versions).
    """

    def __init__(self, net: ServiceConnection, cache: ClientCache, chunk_bytes: int, request_bytes: int | None,
                 on_stored: Callable[[int], None] = lambda version: None) -> None:  # fmt: skip
        self.net, self.cache, self.catalog = net, cache, cache.catalog
        self.chunk_bytes, self.request_bytes = chunk_bytes, request_bytes
        self.on_stored = on_stored

    # ---- resumable download --------------------------------------------------------------------
    def fetch_resumable(self, version: int, kind: str, sha: str, size: int) -> bytes:
        """The bytes of file ``kind`` of ``version``, fetched in Range chunks, resuming from the cache."""
        net, cache = self.net, self.cache
        url = f"/v1/catalogs/{self.catalog}/versions/{version}/files/{kind}"
        what = f"download of {kind} v{version}"
        offset, etag = cache.partial_state(version, kind, sha, size)
        failures, last, status = 0, "", None
        while offset < size:
            end = size - 1 if self.request_bytes is None else min(offset + self.request_bytes, size) - 1
            headers = {"Range": f"bytes={offset}-{end}"}
            if etag is not None:
                headers["If-Range"] = f'"{etag}"'
            progressed = False
            net.requests += 1
            try:
                with net.http.stream("GET", url, headers=headers) as response:
                    code = response.status_code
                    if code in RETRY_STATUSES or code == 416 or code >= 400:
                        response.read()
                        net.bytes_received += len(response.content)
                        if code == 416:  # our offset is beyond the file: start again
                            cache.drop_partial(version, kind)
                            offset, etag = cache.partial_state(version, kind, sha, size)
                            raise Unreachable(f"HTTP 416 ({net.error_message(response)})")
                        if code not in RETRY_STATUSES:
                            raise net.http_error(response, what)
                        status = code
                        raise Unreachable(f"HTTP {code} ({net.error_message(response)})")
                    got_etag = strip_etag(response.headers.get("etag"))
                    if etag is not None and got_etag != etag:
                        # The file changed between chunks: what we hold belongs to another file.
                        cache.drop_partial(version, kind)
                        offset, _ = cache.partial_state(version, kind, sha, size)
                        response.read()
                        net.bytes_received += len(response.content)
                        net.file_bytes_received += len(response.content)
                        changed, etag = f"ETag changed from {etag!r} to {got_etag!r}; restarting", None
                        raise Unreachable(changed)
                    etag = got_etag
                    if code == 206:
                        m = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
                        if m is None or int(m.group(1)) != offset or (m.group(3) != "*" and int(m.group(3)) != size):
                            raise ServiceError(
                                f"{what}: asked for bytes {offset}-{end} of {size}, got Content-Range "
                                f"{response.headers.get('content-range')!r}",
                                status=code,
                            )
                        start = offset
                    elif code == 200:  # the server ignored Range (or If-Range failed): the whole file from 0
                        if offset:
                            cache.drop_partial(version, kind)
                            offset, _ = cache.partial_state(version, kind, sha, size)
                        start = 0
                    else:
                        raise ServiceError(f"{what}: unexpected HTTP {code}", status=code)
                    buf = bytearray()
                    try:
                        for piece in response.iter_bytes():
                            net.bytes_received += len(piece)
                            net.file_bytes_received += len(piece)
                            if start + len(buf) + len(piece) > size:
                                raise ServiceError(f"{what}: the server sent more than the {size} bytes "
                                                   "the manifest says")
                            buf += piece
                            if len(buf) >= self.chunk_bytes:  # commit every chunk_bytes as the body streams
                                cache.commit_chunk(version, kind, start, bytes(buf), etag)
                                start += len(buf)
                                offset = start
                                buf.clear()
                                progressed = True
                    finally:
                        # Keep what arrived, even when the connection was cut part-way.
                        if buf:
                            cache.commit_chunk(version, kind, start, bytes(buf), etag)
                            offset = start + len(buf)
                            progressed = True
            except httpx.UnsupportedProtocol as exc:
                raise ServiceError(f"{what}: {exc}") from None
            except (httpx.TransportError, Unreachable) as exc:
                last = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, httpx.TransportError):
                    status = None
                failures = 1 if progressed else failures + 1
                if failures > net.max_retries:
                    raise ServiceError(
                        f"{what}: failed {failures} times in a row at byte {offset} of {size} (last: {last})",
                        status=status,
                    ) from None
                net.retries += 1
                net.backoff(failures)
                continue
            failures = 0
        return cache.assemble(version, kind)

    def download(self, version: int, kind: str, entry: dict[str, Any]) -> bytes:
        """A checked file; a file that fails its checks is discarded and fetched once more, then ServiceError."""
        sha, size = file_meta(entry, kind, version)
        problem = ""
        for _ in range(2):
            data = self.fetch_resumable(version, kind, sha, size)
            try:
                check_file(data, kind, sha, size)
            except BadFile as exc:
                problem = str(exc)
                self.cache.drop_partial(version, kind)
                continue
            return data
        raise ServiceError(f"{kind} of {self.catalog} v{version} failed its checks twice: {problem}", status=200)

    def apply_chain(self, base: bytes, chain: list[dict[str, Any]]) -> bytes:
        """Download and apply the chain's ``layer0_delta`` files to ``base``; the result's SHA-256 is checked."""
        with tempfile.TemporaryDirectory(prefix="reelpack-client-") as tmp:
            base_path = Path(tmp) / "base.rpk"
            base_path.write_bytes(base)
            data = base
            for entry in chain:
                version = int(entry["version"])
                delta = self.download(version, "layer0_delta", entry)
                delta_path = Path(tmp) / f"delta-{version}.rpk"
                delta_path.write_bytes(delta)
                out_path = Path(tmp) / f"layer0-{version}.rpk"
                apply_delta(base_path, delta_path, out_path)
                data = out_path.read_bytes()
                sha, size = file_meta(entry, "layer0", version)
                check_file(data, "layer0", sha, size)
                base_path = out_path
        return data

    # ---- manifest and sync ---------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The catalog's manifest from the service (checked: ``latest`` and ``versions`` entries)."""
        m = self.net.get_json(f"/v1/catalogs/{self.catalog}", "manifest")
        try:
            latest = m["latest"]
            versions = {int(e["version"]): e for e in m["versions"]}
        except (KeyError, TypeError, ValueError):
            raise ServiceError("manifest lacks 'latest' or 'versions[].version'") from None
        if not isinstance(latest, int) or latest not in versions:
            raise ServiceError(f"manifest's latest version {latest!r} is not among its versions")
        return m

    def sync(self) -> SyncReport:
        """Bring the cached layer 0 up to the server's latest version (deltas when cheaper, else chunked download).

        Raises:
            ServiceError: the service is unreachable after the retries, answers an error, or a file fails its
                checks twice.
        """
        net, cache = self.net, self.cache
        t0, sim0 = time.perf_counter(), net.simulated()
        b0, fb0, r0, rt0 = net.bytes_received, net.file_bytes_received, net.requests, net.retries
        m = self.manifest()
        versions = {int(e["version"]): e for e in m["versions"]}
        latest = int(m["latest"])
        entry = versions[latest]
        cached = cache.cached_versions()
        have = cached[-1] if cached else None
        used_delta = False
        if have != latest:
            data = None
            drop: tuple[tuple[int, str], ...] = ()
            if have is not None and have < latest:
                chain = delta_chain(versions, have, latest)
                if chain is not None:
                    delta_bytes = sum(file_meta(e, "layer0_delta", int(e["version"]))[1] for e in chain)
                    if delta_bytes < file_meta(entry, "layer0", latest)[1]:
                        try:
                            data = self.apply_chain(cache.cached_file(have), chain)
                            used_delta = True
                            drop = tuple((int(e["version"]), "layer0_delta") for e in chain)
                        except (BadFile, DeltaError, PackFormatError, OSError):
                            data = None  # fall back to the full file
                        except ServiceError as exc:
                            if exc.status is None:  # the network is down: so is the full download
                                raise
                            data = None  # a delta the server no longer has (404), or one failing twice
            if data is None:
                data = self.download(latest, "layer0", entry)
            sha, _ = file_meta(entry, "layer0", latest)
            cache.store_complete(latest, "layer0", data, sha, entry, drop)
            self.on_stored(latest)
        else:
            cache.record_version(latest, entry)
        wall, sim = time.perf_counter() - t0, net.simulated() - sim0
        file_bytes = net.file_bytes_received - fb0
        return SyncReport(
            version=latest,
            bytes_downloaded=file_bytes,
            used_delta=used_delta,
            seconds=wall + sim,
            from_version=have,
            metadata_bytes=net.bytes_received - b0 - file_bytes,
            requests=net.requests - r0,
            retries=net.retries - rt0,
            wall_seconds=wall,
            simulated_seconds=sim,
        )
