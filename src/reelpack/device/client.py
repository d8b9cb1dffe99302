"""The phone side of the pack service: sync a catalog's layer 0 into SQLite, score locally, refine over the network.

:class:`PhoneClient` speaks the HTTP API of :mod:`reelpack.service.app` (``/v1``):

* :meth:`PhoneClient.sync` reads the manifest and brings the cached ``layer0.rpk``
  up to the latest version: by ``layer0_delta`` files (:func:`reelpack.format.apply_delta`)
  when an older version is cached and the chain of deltas is smaller than the file,
  else by downloading ``layer0.rpk`` with ``Range`` requests (``bytes=<offset>-``, or
  ``request_bytes`` at a time). Every ``chunk_bytes`` received are committed to
  SQLite as they arrive, so a cut connection or a killed
  process resumes at the byte where it stopped (the file's ETag must not change
  between chunks, else the download restarts). A finished file is checked
  (size, SHA-256 from the manifest, :meth:`PackReader.verify` CRC32C) before it is
  marked complete; a file that fails is discarded and fetched once more, then
  :class:`~reelpack.errors.ServiceError`.
* :meth:`PhoneClient.recommend` ranks the whole catalog on the phone with layer 0
  (:func:`reelpack.search.make_scanner`), asks ``/refine`` for the layer-1 codes of the
  best ``refine`` items (a CRC32C-checked frame), rescores them with the layer-1 codec
  and returns the top ``k``. When the network is down it returns the layer-0 ranking
  with ``refined=False``.
* :meth:`PhoneClient.user_vector` applies the service's quantised user-vector updates.
* :meth:`PhoneClient.edge_retriever` downloads (and caches) the hierarchical index's device summary for a user
  (``GET .../edge-summary``) and returns an :class:`~reelpack.catalog.edge.EdgeRetriever` whose cloud is the
  service's ``/v1/retrieve`` over this client's HTTP connection: answered on the phone when the score bound
  allows, else merged with the cloud's answer, else (service unreachable) local results with ``fallback=True``.

Network failures are retried ``max_retries`` times in a row with exponential
back-off (simulated when the transport is a virtual-clock
:class:`~reelpack.device.shaper.ShapedTransport`), then ServiceError (``status`` is
``None`` when no response came back). The cache is one SQLite file (WAL,
``synchronous=NORMAL``); every update is one transaction.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import sqlite3
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from reelpack.util.validate import as_float_matrix, check_k
from reelpack.codecs import Codec
from reelpack.codecs.registry import codec_from_bytes
from reelpack.errors import (
    ChecksumError,
    DeltaError,
    InvalidInputError,
    PackFormatError,
    SerializationError,
    ServiceError,
    StoreError,
)
from reelpack.format import PackReader, apply_delta
from reelpack.format.container import crc32c

if TYPE_CHECKING:
    from reelpack.catalog.edge import DeviceSummary
    from reelpack.device.edge import EdgeRetriever

__all__ = ["PhoneClient", "SyncReport", "Recommendation", "parse_refine_frame", "REFINE_MAGIC"]

REFINE_MAGIC = b"RPRF"
_FRAME_HEAD = struct.Struct("<4sIII")  # magic, n, bytes_per_vector, layer
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_SCHEMA_VERSION = "1"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    catalog TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL,
    etag TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL,
    complete INTEGER NOT NULL, fetched_at REAL NOT NULL,
    PRIMARY KEY (catalog, version, kind));
CREATE TABLE IF NOT EXISTS partial_downloads (
    catalog TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL,
    etag TEXT, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (catalog, version, kind));
CREATE TABLE IF NOT EXISTS partial_chunks (
    catalog TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL, offset INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (catalog, version, kind, offset));
CREATE TABLE IF NOT EXISTS versions (
    catalog TEXT NOT NULL, version INTEGER NOT NULL, entry TEXT NOT NULL, PRIMARY KEY (catalog, version));
CREATE TABLE IF NOT EXISTS codecs (
    catalog TEXT NOT NULL, version INTEGER NOT NULL, layer INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (catalog, version, layer));
CREATE TABLE IF NOT EXISTS user_vectors (
    catalog TEXT NOT NULL, user_id TEXT NOT NULL, version INTEGER NOT NULL, dim INTEGER NOT NULL,
    vector BLOB NOT NULL, n_updates INTEGER NOT NULL, PRIMARY KEY (catalog, user_id));
CREATE TABLE IF NOT EXISTS edge_summaries (
    catalog TEXT NOT NULL, user_id TEXT NOT NULL, version INTEGER NOT NULL, budget INTEGER NOT NULL,
    lam REAL NOT NULL, data BLOB NOT NULL, fetched_at REAL NOT NULL, PRIMARY KEY (catalog, user_id));
"""


# ================================================================================================
# Results
# ================================================================================================
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


@dataclass
class Recommendation:
    """Top-``k`` items for one user.

    Attributes:
        ids: item ids int64 [k], best first.
        scores: float32 [k]: layer-1 scores when ``refined``, else layer-0 scores.
        version: catalog version ranked.
        refined: the top items were rescored with layer-1 codes from ``/refine``.
        bytes_downloaded: body bytes received during this call (refinement frame, codec, and a sync
            when nothing was cached).
        seconds: ``wall_seconds + simulated_seconds``.
        wall_seconds: real elapsed time.
        simulated_seconds: virtual network time charged during this call.
        note: why the result is not refined (``None`` when refined).
    """

    ids: np.ndarray
    scores: np.ndarray
    version: int
    refined: bool
    bytes_downloaded: int
    seconds: float
    wall_seconds: float = 0.0
    simulated_seconds: float = 0.0
    note: str | None = None


@dataclass
class _Loaded:
    """A cached layer-0 pack opened for scoring."""

    version: int
    reader: PackReader
    item_ids: np.ndarray
    codec: Codec
    scanner: Any = None
    entry: dict[str, Any] = field(default_factory=dict)


class _BadFile(Exception):
    """A downloaded file or frame failed its checks (internal: triggers one re-fetch)."""


class _Unreachable(Exception):
    """Internal: a request failed at the transport level."""


# ================================================================================================
# Frame parsing
# ================================================================================================
def parse_refine_frame(
    frame: bytes, ids: np.ndarray, bytes_per_vector: int, layer: int = 1
) -> np.ndarray:
    """Codes uint8 [n, bytes_per_vector] from a ``/refine`` frame asked for ``ids`` (int64 [n]).

    Frame (little-endian): ``b"RPRF" | u32 n | u32 bytes_per_vector | u32 layer | n x int64 ids |
    n x bytes_per_vector codes | u32 CRC32C of all previous bytes``.

    Raises:
        ChecksumError: the CRC32C does not match.
        PackFormatError: bad magic, or sizes, layer or ids differ from what was asked.
    """
    ids = np.asarray(ids, dtype=np.int64)
    n = ids.size
    if len(frame) < _FRAME_HEAD.size + 4:
        raise PackFormatError(
            f"refinement frame has {len(frame)} bytes, fewer than the {_FRAME_HEAD.size + 4} of an empty one"
        )
    magic, n_got, bpv, layer_got = _FRAME_HEAD.unpack_from(frame, 0)
    if magic != REFINE_MAGIC:
        raise PackFormatError(f"refinement frame magic must be {REFINE_MAGIC!r}, got {magic!r}")
    expected = _FRAME_HEAD.size + n_got * (8 + bpv) + 4
    if len(frame) != expected:
        raise PackFormatError(f"refinement frame of {n_got} x {bpv} bytes must have {expected} bytes, got {len(frame)}")
    (crc,) = struct.unpack_from("<I", frame, len(frame) - 4)
    if crc32c(frame[:-4]) != crc:
        raise ChecksumError("refinement frame CRC32C mismatch")
    if n_got != n or bpv != bytes_per_vector or layer_got != layer:
        raise PackFormatError(
            f"refinement frame must hold {n} codes of {bytes_per_vector} bytes for layer {layer}, "
            f"got {n_got} of {bpv} bytes for layer {layer_got}"
        )
    got_ids = np.frombuffer(frame, dtype="<i8", count=n, offset=_FRAME_HEAD.size)
    if not np.array_equal(got_ids, ids):
        raise PackFormatError("refinement frame ids differ from the ids asked for")
    return np.frombuffer(frame, dtype=np.uint8, count=n * bpv, offset=_FRAME_HEAD.size + 8 * n).reshape(n, bpv)


def _strip_etag(value: str | None) -> str | None:
    if value is None:
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"')


# ================================================================================================
# Client
# ================================================================================================
class PhoneClient:
    """A phone's view of one catalog: SQLite cache, chunked resumable sync, local scoring with refinement.

    Args:
        base_url: the service, e.g. ``"http://127.0.0.1:8000"``.
        catalog: catalog name.
        cache_path: SQLite file (created if missing).
        transport: httpx transport (default ``httpx.HTTPTransport()``); a
            :class:`~reelpack.device.shaper.ShapedTransport` simulates a phone network, and its
            ``sleep`` is used for the retry back-off.
        chunk_bytes: commit unit: the download is committed to SQLite every ``chunk_bytes`` received (and
            whatever arrived before a cut connection is kept too).
        request_bytes: bytes asked per ``Range`` request; ``None`` (default) asks ``bytes=<offset>-`` (the rest
            of the file, one round trip per connection) and commits it chunk by chunk as it streams.
        max_retries: failed attempts in a row (without progress) tolerated per request before ServiceError.
        backoff_s: first back-off; it doubles after every failure, capped at ``max_backoff_s``.
        timeout_s: httpx timeout of one request (connect timeout ``min(timeout_s, 5)``).
        user_full_every: after this many relative user-vector updates, ask for a full vector (``since`` omitted)
            so that rounding errors do not pile up.

    Not thread-safe: use one client per thread (each may open the same ``cache_path``).
    """

    def __init__(
        self,
        base_url: str,
        catalog: str,
        cache_path: str | os.PathLike[str],
        *,
        transport: httpx.BaseTransport | None = None,
        chunk_bytes: int = 64 * 1024,
        request_bytes: int | None = None,
        max_retries: int = 8,
        backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
        timeout_s: float = 30.0,
        user_full_every: int = 8,
    ) -> None:
        if not isinstance(catalog, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", catalog):
            raise InvalidInputError(f"catalog name must match ^[a-z0-9][a-z0-9_-]{{0,63}}$, got {catalog!r}")
        if not isinstance(chunk_bytes, int) or chunk_bytes < 1:
            raise InvalidInputError(f"chunk_bytes must be an int >= 1, got {chunk_bytes!r}")
        if request_bytes is not None and (not isinstance(request_bytes, int) or request_bytes < 1):
            raise InvalidInputError(f"request_bytes must be None or an int >= 1, got {request_bytes!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidInputError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if not (backoff_s >= 0 and max_backoff_s >= 0 and timeout_s > 0):
            raise InvalidInputError("backoff_s and max_backoff_s must be >= 0 and timeout_s > 0")
        self.base_url = base_url.rstrip("/")
        self.catalog = catalog
        self.cache_path = Path(cache_path)
        self.chunk_bytes = chunk_bytes
        self.request_bytes = request_bytes
        self.max_retries = max_retries
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.user_full_every = int(user_full_every)
        self.transport = transport if transport is not None else httpx.HTTPTransport()
        self._sleep: Callable[[float], None] = getattr(self.transport, "sleep", time.sleep)
        self._db = self._open_db(self.cache_path)
        try:
            self._http = httpx.Client(
                base_url=self.base_url,
                transport=self.transport,
                timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            )
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            self._db.close()
            raise InvalidInputError(f"base_url must be an http(s) URL, got {base_url!r}: {exc}") from None
        self._loaded: dict[int, _Loaded] = {}
        self._codecs: dict[tuple[int, int], Codec] = {}
        # counters (body bytes received by this client)
        self.bytes_received = 0
        self.file_bytes_received = 0
        self.requests = 0
        self.retries = 0

    # ---- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the HTTP client and the SQLite connection."""
        self._http.close()
        self._db.close()
        self._loaded.clear()

    def __enter__(self) -> PhoneClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- SQLite --------------------------------------------------------------------------------
    @staticmethod
    def _open_db(path: Path) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (_SCHEMA_VERSION,))
            elif row[0] != _SCHEMA_VERSION:
                raise StoreError(f"client cache {path} has schema {row[0]!r}, this reelpack reads {_SCHEMA_VERSION!r}")
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"client cache {path} cannot be opened as a reelpack SQLite cache: {exc}") from None
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One atomic transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def cached_versions(self) -> list[int]:
        """Versions whose ``layer0`` is complete in the cache, ascending."""
        rows = self._db.execute(
            "SELECT version FROM files WHERE catalog = ? AND kind = 'layer0' AND complete = 1 ORDER BY version",
            (self.catalog,),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def partial_bytes(self, version: int, kind: str = "layer0") -> int:
        """Bytes of an unfinished download of ``kind`` for ``version`` held in the cache (0 if none)."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM partial_chunks WHERE catalog = ? AND version = ? AND kind = ?",
            (self.catalog, version, kind),
        ).fetchone()
        return int(row[0])

    def cached_file(self, version: int, kind: str = "layer0") -> bytes:
        """The complete cached file (``NotFoundError`` semantics: KeyError-free; raises StoreError if absent)."""
        row = self._db.execute(
            "SELECT data FROM files WHERE catalog = ? AND version = ? AND kind = ? AND complete = 1",
            (self.catalog, version, kind),
        ).fetchone()
        if row is None:
            raise StoreError(f"the cache holds no complete {kind} of {self.catalog} version {version}")
        return bytes(row[0])

    def _drop_partial(self, version: int, kind: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM partial_chunks WHERE catalog = ? AND version = ? AND kind = ?",
                       (self.catalog, version, kind))  # fmt: skip
            db.execute("DELETE FROM partial_downloads WHERE catalog = ? AND version = ? AND kind = ?",
                       (self.catalog, version, kind))  # fmt: skip

    # ---- HTTP ----------------------------------------------------------------------------------
    def _simulated(self) -> float:
        return float(getattr(self.transport, "simulated_seconds", 0.0))

    def _backoff(self, failures: int) -> None:
        self._sleep(min(self.backoff_s * (2.0 ** max(failures - 1, 0)), self.max_backoff_s))

    @staticmethod
    def _error_message(response: httpx.Response) -> str:
        try:
            body = response.json()
            err = body.get("error", {}) if isinstance(body, dict) else {}
            return f"{err.get('code', 'error')}: {err.get('message', '')}".strip()
        except (ValueError, AttributeError, UnicodeDecodeError):
            return response.text[:200]

    def _http_error(self, response: httpx.Response, what: str) -> ServiceError:
        return ServiceError(
            f"{what}: the service answered {response.status_code} ({self._error_message(response)})",
            status=response.status_code,
        )

    def _request(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        """A non-streamed request with bounded retries; returns a 2xx/3xx response with its body read."""
        failures, last = 0, "no attempt"
        while True:
            self.requests += 1
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.UnsupportedProtocol as exc:
                raise ServiceError(f"{what}: {exc}") from None
            except httpx.TransportError as exc:
                last, status = f"{type(exc).__name__}: {exc}", None
            else:
                self.bytes_received += len(response.content)
                if response.status_code not in _RETRY_STATUSES:
                    if response.status_code >= 400:
                        raise self._http_error(response, what)
                    return response
                last, status = f"HTTP {response.status_code} ({self._error_message(response)})", response.status_code
            failures += 1
            if failures > self.max_retries:
                raise ServiceError(
                    f"{what}: {self.base_url} failed {failures} times in a row (last: {last})", status=status
                )
            self.retries += 1
            self._backoff(failures)

    def _get_json(self, url: str, what: str, **kwargs: Any) -> Any:
        response = self._request("GET", url, what, **kwargs)
        try:
            return response.json()
        except (ValueError, UnicodeDecodeError):
            raise ServiceError(f"{what}: the answer is not JSON", status=response.status_code) from None

    # ---- resumable download --------------------------------------------------------------------
    def _commit_chunk(self, version: int, kind: str, offset: int, data: bytes, etag: str | None) -> None:
        if not data:
            return
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO partial_chunks (catalog, version, kind, offset, data) "
                       "VALUES (?,?,?,?,?)",
                       (self.catalog, version, kind, offset, data))  # fmt: skip
            db.execute("UPDATE partial_downloads SET etag = ? WHERE catalog = ? AND version = ? AND kind = ?",
                       (etag, self.catalog, version, kind))  # fmt: skip

    def _partial_state(self, version: int, kind: str, sha: str, size: int) -> tuple[int, str | None]:
        """(bytes held, etag) of the partial download, starting a fresh one if absent or for another file."""
        row = self._db.execute(
            "SELECT etag, sha256, size FROM partial_downloads WHERE catalog = ? AND version = ? AND kind = ?",
            (self.catalog, version, kind),
        ).fetchone()
        if row is not None and (row[1] != sha or int(row[2]) != size):
            self._drop_partial(version, kind)
            row = None
        if row is None:
            with self._tx() as db:
                db.execute("INSERT INTO partial_downloads (catalog, version, kind, etag, sha256, size) "
                           "VALUES (?,?,?,?,?,?)",
                           (self.catalog, version, kind, None, sha, size))  # fmt: skip
            return 0, None
        chunks = self._db.execute(
            "SELECT offset, LENGTH(data) FROM partial_chunks WHERE catalog = ? AND version = ? AND kind = ? "
            "ORDER BY offset",
            (self.catalog, version, kind),
        ).fetchall()
        held = 0
        for off, length in chunks:
            if int(off) != held:  # not contiguous (cannot happen through this class): start again
                self._drop_partial(version, kind)
                return self._partial_state(version, kind, sha, size)
            held += int(length)
        return held, row[0]

    def _assemble(self, version: int, kind: str) -> bytes:
        rows = self._db.execute(
            "SELECT data FROM partial_chunks WHERE catalog = ? AND version = ? AND kind = ? ORDER BY offset",
            (self.catalog, version, kind),
        ).fetchall()
        return b"".join(bytes(r[0]) for r in rows)

    def _fetch_resumable(self, version: int, kind: str, sha: str, size: int) -> bytes:
        """The bytes of file ``kind`` of ``version``, fetched in Range chunks, resuming from the cache."""
        url = f"/v1/catalogs/{self.catalog}/versions/{version}/files/{kind}"
        what = f"download of {kind} v{version}"
        offset, etag = self._partial_state(version, kind, sha, size)
        failures, last, status = 0, "", None
        while offset < size:
            end = size - 1 if self.request_bytes is None else min(offset + self.request_bytes, size) - 1
            headers = {"Range": f"bytes={offset}-{end}"}
            if etag is not None:
                headers["If-Range"] = f'"{etag}"'
            progressed = False
            self.requests += 1
            try:
                with self._http.stream("GET", url, headers=headers) as response:
                    code = response.status_code
                    if code in _RETRY_STATUSES or code == 416 or code >= 400:
                        response.read()
                        self.bytes_received += len(response.content)
                        if code == 416:  # our offset is beyond the file: start again
                            self._drop_partial(version, kind)
                            offset, etag = self._partial_state(version, kind, sha, size)
                            raise _Unreachable(f"HTTP 416 ({self._error_message(response)})")
                        if code not in _RETRY_STATUSES:
                            raise self._http_error(response, what)
                        status = code
                        raise _Unreachable(f"HTTP {code} ({self._error_message(response)})")
                    got_etag = _strip_etag(response.headers.get("etag"))
                    if etag is not None and got_etag != etag:
                        # The file changed between chunks: what we hold belongs to another file.
                        self._drop_partial(version, kind)
                        offset, _ = self._partial_state(version, kind, sha, size)
                        response.read()
                        self.bytes_received += len(response.content)
                        self.file_bytes_received += len(response.content)
                        changed, etag = f"ETag changed from {etag!r} to {got_etag!r}; restarting", None
                        raise _Unreachable(changed)
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
                            self._drop_partial(version, kind)
                            offset, _ = self._partial_state(version, kind, sha, size)
                        start = 0
                    else:
                        raise ServiceError(f"{what}: unexpected HTTP {code}", status=code)
                    buf = bytearray()
                    try:
                        for piece in response.iter_bytes():
                            self.bytes_received += len(piece)
                            self.file_bytes_received += len(piece)
                            if start + len(buf) + len(piece) > size:
                                raise ServiceError(f"{what}: the server sent more than the {size} bytes "
                                                   "the manifest says")
                            buf += piece
                            if len(buf) >= self.chunk_bytes:  # commit every chunk_bytes as the body streams
                                self._commit_chunk(version, kind, start, bytes(buf), etag)
                                start += len(buf)
                                offset = start
                                buf.clear()
                                progressed = True
                    finally:
                        # Keep what arrived, even when the connection was cut part-way.
                        if buf:
                            self._commit_chunk(version, kind, start, bytes(buf), etag)
                            offset = start + len(buf)
                            progressed = True
            except httpx.UnsupportedProtocol as exc:
                raise ServiceError(f"{what}: {exc}") from None
            except (httpx.TransportError, _Unreachable) as exc:
                last = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, httpx.TransportError):
                    status = None
                failures = 1 if progressed else failures + 1
                if failures > self.max_retries:
                    raise ServiceError(
                        f"{what}: failed {failures} times in a row at byte {offset} of {size} (last: {last})",
                        status=status,
                    ) from None
                self.retries += 1
                self._backoff(failures)
                continue
            failures = 0
        return self._assemble(version, kind)

    @staticmethod
    def _check_file(data: bytes, kind: str, sha: str, size: int) -> None:
        """Raise _BadFile when ``data`` is not the file the manifest describes (or, for packs, fails its CRCs)."""
        if len(data) != size:
            raise _BadFile(f"{len(data)} bytes, the manifest says {size}")
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            raise _BadFile(f"SHA-256 {got} differs from the manifest's {sha}")
        if kind in ("layer0", "pack"):
            try:
                report = PackReader.from_buffer(data).verify()
            except PackFormatError as exc:
                raise _BadFile(f"pack does not open: {exc}") from None
            if not report.ok:
                raise _BadFile(f"pack fails verify(): {report.bad_blocks[:3]} {report.section_problems[:3]}")

    def _download(self, version: int, kind: str, entry: dict[str, Any]) -> bytes:
        """A checked file; a file that fails its checks is discarded and fetched once more, then ServiceError."""
        sha, size = self._file_meta(entry, kind, version)
        problem = ""
        for _ in range(2):
            data = self._fetch_resumable(version, kind, sha, size)
            try:
                self._check_file(data, kind, sha, size)
            except _BadFile as exc:
                problem = str(exc)
                self._drop_partial(version, kind)
                continue
            return data
        raise ServiceError(f"{kind} of {self.catalog} v{version} failed its checks twice: {problem}", status=200)

    @staticmethod
    def _file_meta(entry: dict[str, Any], kind: str, version: int) -> tuple[str, int]:
        try:
            meta = entry["files"][kind]
            sha, size = meta["sha256"], meta["bytes"]
        except (KeyError, TypeError):
            raise ServiceError(f"manifest entry of version {version} lacks files.{kind}.sha256/bytes") from None
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha) or not isinstance(size, int) or size < 0:
            raise ServiceError(f"manifest entry of version {version} has a bad files.{kind}: {meta!r}")
        return sha, size

    # ---- manifest and sync ---------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The catalog's manifest from the service (checked: ``latest`` and ``versions`` entries)."""
        m = self._get_json(f"/v1/catalogs/{self.catalog}", "manifest")
        try:
            latest = m["latest"]
            versions = {int(e["version"]): e for e in m["versions"]}
        except (KeyError, TypeError, ValueError):
            raise ServiceError("manifest lacks 'latest' or 'versions[].version'") from None
        if not isinstance(latest, int) or latest not in versions:
            raise ServiceError(f"manifest's latest version {latest!r} is not among its versions")
        return m

    def _store_complete(self, version: int, kind: str, data: bytes, sha: str, entry: dict[str, Any],
                        drop_partials: tuple[tuple[int, str], ...] = ()) -> None:  # fmt: skip
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO files (catalog, version, kind, etag, sha256, size, data, complete, "
                       "fetched_at) VALUES (?,?,?,?,?,?,?,1,?)",
                       (self.catalog, version, kind, sha, sha, len(data), data, time.time()))  # fmt: skip
            db.execute("INSERT OR REPLACE INTO versions (catalog, version, entry) VALUES (?,?,?)",
                       (self.catalog, version, json.dumps(entry)))  # fmt: skip
            for v, k in ((version, kind), *drop_partials):
                db.execute("DELETE FROM partial_chunks WHERE catalog = ? AND version = ? AND kind = ?",
                           (self.catalog, v, k))  # fmt: skip
                db.execute("DELETE FROM partial_downloads WHERE catalog = ? AND version = ? AND kind = ?",
                           (self.catalog, v, k))  # fmt: skip
            # A phone keeps one catalog version: other versions' files, codecs and partials go (also a newer
            # version that the server no longer lists as latest).
            for table in ("files", "partial_chunks", "partial_downloads", "codecs", "versions"):
                db.execute(f"DELETE FROM {table} WHERE catalog = ? AND version != ?", (self.catalog, version))
        for v in [v for v in self._loaded if v != version]:
            del self._loaded[v]
        for key in [key for key in self._codecs if key[0] != version]:
            del self._codecs[key]

    @staticmethod
    def _delta_chain(versions: dict[int, dict[str, Any]], have: int, latest: int) -> list[dict[str, Any]] | None:
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

    def _apply_chain(self, base: bytes, chain: list[dict[str, Any]]) -> bytes:
        """Download and apply the chain's ``layer0_delta`` files to ``base``; the result's SHA-256 is checked."""
        with tempfile.TemporaryDirectory(prefix="reelpack-client-") as tmp:
            base_path = Path(tmp) / "base.rpk"
            base_path.write_bytes(base)
            data = base
            for entry in chain:
                version = int(entry["version"])
                delta = self._download(version, "layer0_delta", entry)
                delta_path = Path(tmp) / f"delta-{version}.rpk"
                delta_path.write_bytes(delta)
                out_path = Path(tmp) / f"layer0-{version}.rpk"
                apply_delta(base_path, delta_path, out_path)
                data = out_path.read_bytes()
                sha, size = self._file_meta(entry, "layer0", version)
                self._check_file(data, "layer0", sha, size)
                base_path = out_path
        return data

    def sync(self) -> SyncReport:
        """Bring the cached layer 0 up to the server's latest version (deltas when cheaper, else chunked download).

        Raises:
            ServiceError: the service is unreachable after the retries, answers an error, or a file fails its
                checks twice.
        """
        t0, sim0 = time.perf_counter(), self._simulated()
        b0, fb0, r0, rt0 = self.bytes_received, self.file_bytes_received, self.requests, self.retries
        m = self.manifest()
        versions = {int(e["version"]): e for e in m["versions"]}
        latest = int(m["latest"])
        entry = versions[latest]
        cached = self.cached_versions()
        have = cached[-1] if cached else None
        used_delta = False
        if have != latest:
            data = None
            drop: tuple[tuple[int, str], ...] = ()
            if have is not None and have < latest:
                chain = self._delta_chain(versions, have, latest)
                if chain is not None:
                    delta_bytes = sum(self._file_meta(e, "layer0_delta", int(e["version"]))[1] for e in chain)
                    if delta_bytes < self._file_meta(entry, "layer0", latest)[1]:
                        try:
                            data = self._apply_chain(self.cached_file(have), chain)
                            used_delta = True
                            drop = tuple((int(e["version"]), "layer0_delta") for e in chain)
                        except (_BadFile, DeltaError, PackFormatError, OSError):
                            data = None  # fall back to the full file
                        except ServiceError as exc:
                            if exc.status is None:  # the network is down: so is the full download
                                raise
                            data = None  # a delta the server no longer has (404), or one failing twice
            if data is None:
                data = self._download(latest, "layer0", entry)
            sha, _ = self._file_meta(entry, "layer0", latest)
            self._store_complete(latest, "layer0", data, sha, entry, drop)
        else:
            with self._tx() as db:
                db.execute("INSERT OR REPLACE INTO versions (catalog, version, entry) VALUES (?,?,?)",
                           (self.catalog, latest, json.dumps(entry)))  # fmt: skip
        wall, sim = time.perf_counter() - t0, self._simulated() - sim0
        file_bytes = self.file_bytes_received - fb0
        return SyncReport(
            version=latest,
            bytes_downloaded=file_bytes,
            used_delta=used_delta,
            seconds=wall + sim,
            from_version=have,
            metadata_bytes=self.bytes_received - b0 - file_bytes,
            requests=self.requests - r0,
            retries=self.retries - rt0,
            wall_seconds=wall,
            simulated_seconds=sim,
        )

    # ---- local scoring -------------------------------------------------------------------------
    def _load(self) -> _Loaded:
        """The newest complete cached layer 0, opened (and its scanner built) once per version."""
        cached = self.cached_versions()
        if not cached:
            raise ServiceError(f"no layer 0 of {self.catalog!r} is cached: call sync() first")
        version = cached[-1]
        if version not in self._loaded:
            data = self.cached_file(version)
            try:
                reader = PackReader.from_buffer(data)
                codec = reader.codec(0)
                codes = reader.layer_codes(0)
            except PackFormatError as exc:  # the cache was damaged on disk: forget it
                with self._tx() as db:
                    db.execute("DELETE FROM files WHERE catalog = ? AND version = ?", (self.catalog, version))
                raise ServiceError(
                    f"cached layer 0 of v{version} is corrupt ({exc}); it was dropped, sync() again"
                ) from None
            from reelpack.search import make_scanner

            row = self._db.execute("SELECT entry FROM versions WHERE catalog = ? AND version = ?",
                                   (self.catalog, version)).fetchone()  # fmt: skip
            entry = json.loads(row[0]) if row else {}
            self._loaded[version] = _Loaded(version, reader, np.asarray(reader.item_ids), codec,
                                            make_scanner(codec, codes), entry)  # fmt: skip
        return self._loaded[version]

    @property
    def dim(self) -> int:
        """Dimension of the cached catalog's vectors (ServiceError when nothing is cached)."""
        return int(self._load().codec.dim)

    @property
    def n_items(self) -> int:
        """Items in the cached catalog version (ServiceError when nothing is cached)."""
        return int(self._load().item_ids.size)

    def _codec(self, version: int, layer: int, dim: int) -> Codec:
        """The fitted codec of ``layer`` (``/codecs/{layer}``, cached in SQLite)."""
        key = (version, layer)
        if key in self._codecs:
            return self._codecs[key]
        row = self._db.execute("SELECT data FROM codecs WHERE catalog = ? AND version = ? AND layer = ?",
                               (self.catalog, version, layer)).fetchone()  # fmt: skip
        codec, problem = None, ""
        if row is not None:
            try:
                codec = codec_from_bytes(bytes(row[0]))
            except SerializationError:
                codec = None
        for _ in range(2 if codec is None else 0):
            response = self._request("GET", f"/v1/catalogs/{self.catalog}/versions/{version}/codecs/{layer}",
                                     f"codec of layer {layer}")  # fmt: skip
            try:
                codec = codec_from_bytes(response.content)
            except SerializationError as exc:
                problem = str(exc)
                continue
            with self._tx() as db:
                db.execute("INSERT OR REPLACE INTO codecs (catalog, version, layer, data) VALUES (?,?,?,?)",
                           (self.catalog, version, layer, response.content))  # fmt: skip
            break
        if codec is None:
            raise ServiceError(f"codec of layer {layer} of v{version} failed to load twice: {problem}", status=200)
        if codec.dim != dim:
            raise ServiceError(f"codec of layer {layer} has dimension {codec.dim}, layer 0 has {dim}")
        self._codecs[key] = codec
        return codec

    def _refine_codes(self, version: int, ids: np.ndarray, bytes_per_vector: int, layer: int = 1) -> np.ndarray:
        """Layer-``layer`` codes uint8 [n, B] of ``ids`` from ``/refine``; a bad frame is fetched once more."""
        problem, status = "", None
        for _ in range(2):
            response = self._request("POST", f"/v1/catalogs/{self.catalog}/versions/{version}/refine",
                                     "refinement", json={"ids": ids.tolist(), "layer": layer})  # fmt: skip
            try:
                return parse_refine_frame(response.content, ids, bytes_per_vector, layer)
            except PackFormatError as exc:
                problem, status = str(exc), response.status_code
        raise ServiceError(f"refinement frame failed its checks twice: {problem}", status=status)

    def recommend(self, user_vector: np.ndarray, k: int = 50, refine: int = 500) -> Recommendation:
        """Top-``k`` items for ``user_vector`` (float [d]): layer-0 scan on the phone, layer-1 rescoring of the top
        ``max(refine, k)`` (``refine=0``: layer 0 only). Syncs first when nothing is cached.

        Raises:
            DimensionMismatchError, NonFiniteError: bad ``user_vector``.
            InvalidKError: ``k`` is not in 1..n_items.
            ServiceError: nothing cached and the service is unreachable, or the service answers an error or a
                bad refinement frame twice. (Unreachable during refinement: layer-0 result, ``refined=False``.)
        """
        t0, sim0, b0 = time.perf_counter(), self._simulated(), self.bytes_received
        if not self.cached_versions():
            self.sync()
        state = self._load()
        q = as_float_matrix(np.asarray(user_vector).reshape(1, -1) if np.ndim(user_vector) == 1 else user_vector,
                            "user_vector", dim=state.codec.dim)  # fmt: skip
        if q.shape[0] != 1:
            raise InvalidInputError(f"user_vector must be one vector [d], got shape {q.shape}")
        n = state.item_ids.size
        k = check_k(k, n)
        if not isinstance(refine, (int, np.integer)) or refine < 0:
            raise InvalidInputError(f"refine must be an int >= 0, got {refine!r}")
        r = min(max(int(refine), k), n) if refine else 0
        rows, s0 = state.scanner.search(q, max(k, r))
        ids0, s0 = state.item_ids[rows[0]], np.asarray(s0[0], np.float32)
        refined, note = False, None
        ids, scores = ids0[:k], s0[:k]
        codecs = state.entry.get("codecs")
        if r == 0:
            note = "refine=0: layer 0 only"
        elif isinstance(codecs, list) and len(codecs) < 2:
            note = "the catalog has no refinement layer"
        else:
            try:
                codec1 = self._codec(state.version, 1, state.codec.dim)
                codes = self._refine_codes(state.version, ids0[:r], codec1.bytes_per_vector)
            except ServiceError as exc:
                if exc.status is not None:
                    raise
                note = f"network unavailable, layer-0 ranking returned ({exc})"
            else:
                s1 = codec1.score(q, codes)[0]
                order = np.argsort(-s1, kind="stable")[:k]  # ties keep the layer-0 order
                ids, scores, refined = ids0[:r][order], s1[order], True
        wall, sim = time.perf_counter() - t0, self._simulated() - sim0
        return Recommendation(
            ids=np.ascontiguousarray(ids, np.int64),
            scores=np.ascontiguousarray(scores, np.float32),
            version=state.version,
            refined=refined,
            bytes_downloaded=self.bytes_received - b0,
            seconds=wall + sim,
            wall_seconds=wall,
            simulated_seconds=sim,
            note=note,
        )

    # ---- hierarchical (edge + cloud) retrieval -------------------------------------------------
    def edge_summary(self, user_id: int, budget_bytes: int | None = None, *, version: int | None = None,
                     lam: float | None = None, refresh: bool = False) -> DeviceSummary:  # fmt: skip
        """The device summary (:class:`~reelpack.catalog.edge.DeviceSummary`) of ``user_id``, cached in SQLite.

        ``version`` defaults to the manifest's latest. The cached summary is reused when it is for the same
        version, budget and ``lam`` (``refresh=True`` downloads anew). When the service is unreachable the
        cached summary of this user is returned, whatever its version (ServiceError if there is none).

        Raises:
            InvalidInputError: bad ``user_id``/``budget_bytes``/``lam``. ServiceError: the service answered an
            error (404: no edge catalog in that version, or unknown user; 413/422: budget out of range), or a
            summary failing its checks twice, or unreachable with nothing cached.
        """
        from reelpack.catalog.edge import DEFAULT_LAMBDA, DeviceSummary  # noqa: F811 - runtime import

        if isinstance(user_id, bool) or not isinstance(user_id, (int, np.integer)) or user_id < 0:
            raise InvalidInputError(f"user_id must be a non-negative integer, got {user_id!r}")
        if budget_bytes is not None and (isinstance(budget_bytes, bool)
                                         or not isinstance(budget_bytes, (int, np.integer)) or budget_bytes < 1):
            raise InvalidInputError(f"budget_bytes must be None or an integer >= 1, got {budget_bytes!r}")
        lam = DEFAULT_LAMBDA if lam is None else float(lam)
        if not 0.0 <= lam <= 4.0:
            raise InvalidInputError(f"lam must be in [0, 4], got {lam!r}")
        uid, budget = str(int(user_id)), -1 if budget_bytes is None else int(budget_bytes)
        row = self._db.execute("SELECT version, budget, lam, data FROM edge_summaries WHERE catalog = ? AND "
                               "user_id = ?", (self.catalog, uid)).fetchone()  # fmt: skip
        cached = None
        if row is not None:
            try:
                cached = (int(row[0]), int(row[1]), float(row[2]), DeviceSummary.from_bytes(bytes(row[3])))
            except SerializationError:
                cached = None
        try:
            if version is None:
                version = int(self.manifest()["latest"])
        except ServiceError as exc:
            if exc.status is None and cached is not None:
                return cached[3]
            raise
        if cached is not None and not refresh and cached[:3] == (version, budget, lam):
            return cached[3]
        params: dict[str, Any] = {"user_id": int(user_id), "lam": lam}
        if budget_bytes is not None:
            params["budget_bytes"] = int(budget_bytes)
        problem = ""
        for _ in range(2):
            try:
                response = self._request("GET", f"/v1/catalogs/{self.catalog}/versions/{version}/edge-summary",
                                         "edge summary", params=params)  # fmt: skip
            except ServiceError as exc:
                if exc.status is None and cached is not None:
                    return cached[3]
                raise
            try:
                summary = DeviceSummary.from_bytes(response.content)
            except SerializationError as exc:
                problem = str(exc)
                continue
            if summary.catalog_version != version:
                problem = f"summary is for version {summary.catalog_version}, asked for {version}"
                continue
            with self._tx() as db:
                db.execute("INSERT OR REPLACE INTO edge_summaries (catalog, user_id, version, budget, lam, data, "
                           "fetched_at) VALUES (?,?,?,?,?,?,?)",
                           (self.catalog, uid, version, budget, lam, response.content, time.time()))  # fmt: skip
            return summary
        raise ServiceError(f"edge summary for user {uid} failed its checks twice: {problem}", status=200)

    def edge_retriever(self, user_id: int, budget_bytes: int | None = None, *, version: int | None = None,
                       lam: float | None = None, policy: str = "bound", nprobe: int = 40,
                       refresh: bool = False) -> EdgeRetriever:  # fmt: skip
        """An :class:`~reelpack.catalog.edge.EdgeRetriever` over :meth:`edge_summary` of ``user_id``; its cloud is
        :class:`~reelpack.catalog.edge.ServiceCloud` (``POST /v1/retrieve`` of the summary's catalog version)
        over this client's HTTP connection. Query it with any vector, e.g. :meth:`user_vector` of the user.

        A request the summary cannot answer goes to the cloud; if the cloud fails (unreachable, an HTTP
        error) the retriever returns the local top-k with ``fallback=True`` and the reason, never raises.
        """
        from reelpack.device.edge import EdgeRetriever, ServiceCloud

        summary = self.edge_summary(user_id, budget_bytes, version=version, lam=lam, refresh=refresh)
        cloud = ServiceCloud(self._http, self.catalog, summary.catalog_version)
        return EdgeRetriever(summary, cloud, policy=policy, nprobe=nprobe)

    # ---- user vectors --------------------------------------------------------------------------
    def user_vector(self, user_id: int | str) -> np.ndarray:
        """The user's vector float32 [d] at the cached catalog version, from the service's quantised updates.

        Asks ``/users/{user_id}/vector?version=V&since=S`` with ``S`` the version of the vector cached for this
        user; applies ``new = old + scale * codes`` (``since`` echoed) or ``new = scale * codes`` (``since``
        null). The result is cached per user and version.

        Raises:
            ServiceError: unknown user (status 404), unreachable service, or an update failing its CRC32C twice.
        """
        uid = str(user_id)
        if not re.fullmatch(r"-?[0-9A-Za-z_.~-]{1,128}", uid):
            raise InvalidInputError(f"user_id must be 1-128 URL-safe characters, got {user_id!r}")
        cached = self.cached_versions()
        if not cached:
            self.sync()
            cached = self.cached_versions()
        version = cached[-1]
        row = self._db.execute("SELECT version, dim, vector, n_updates FROM user_vectors WHERE catalog = ? AND "
                               "user_id = ?", (self.catalog, uid)).fetchone()  # fmt: skip
        old: np.ndarray | None = None
        since: int | None = None
        n_updates = 0
        if row is not None:
            old = np.frombuffer(row[2], dtype="<f4").copy()
            if int(row[0]) == version and old.size == int(row[1]):
                return old
            # Rounding errors of successive updates add up: start again from a full vector now and then.
            if old.size == int(row[1]) and int(row[3]) < self.user_full_every:
                since, n_updates = int(row[0]), int(row[3])
        params: dict[str, int] = {"version": version}
        if since is not None:
            params["since"] = since
        problem = ""
        for _ in range(2):
            body = self._get_json(f"/v1/catalogs/{self.catalog}/users/{uid}/vector", "user vector", params=params)
            try:
                new = self._apply_user_update(body, version, since, old)
            except _BadFile as exc:
                problem = str(exc)
                continue
            n_new = 0 if body.get("since") is None else n_updates + 1
            with self._tx() as db:
                db.execute("INSERT OR REPLACE INTO user_vectors (catalog, user_id, version, dim, vector, n_updates) "
                           "VALUES (?,?,?,?,?,?)",
                           (self.catalog, uid, version, new.size, new.astype("<f4").tobytes(), n_new))  # fmt: skip
            return new
        raise ServiceError(f"user-vector update for {uid!r} failed its checks twice: {problem}", status=200)

    @staticmethod
    def _apply_user_update(body: Any, version: int, since: int | None, old: np.ndarray | None) -> np.ndarray:
        try:
            dim, scale, got_since = int(body["dim"]), float(body["scale"]), body.get("since")
            codes = np.frombuffer(base64.b64decode(body["codes"], validate=True), dtype=np.int8)
            crc = int(body["crc32c"])
            got_version = int(body["version"])
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise _BadFile(f"malformed user-vector update: {exc!r}") from None
        if crc32c(codes.tobytes()) != crc:
            raise _BadFile("user-vector update CRC32C mismatch")
        if got_version != version or codes.size != dim or not np.isfinite(scale):
            raise _BadFile(
                f"user-vector update for version {got_version}, dim {dim}, {codes.size} codes, scale {scale}"
            )
        update = np.float32(scale) * codes.astype(np.float32)
        if got_since is None:
            return update
        if since is None or int(got_since) != since or old is None or old.size != dim:
            raise _BadFile(f"user-vector update is relative to version {got_since}, the cache holds {since}")
        return (old + update).astype(np.float32)
