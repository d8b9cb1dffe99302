"""The HTTP pack service (FastAPI): manifests, resumable pack and delta downloads, refinement codes, online ANN.

:func:`create_app` serves a :class:`~reelpack.catalog.store.CatalogStore` folder. Every endpoint lives under
``/v1`` (OpenAPI docs at ``/docs``):

========================================================================  ==============================================
``GET  /v1/health``                                                       ``{"status": "ok"}``
``GET  /v1/catalogs``                                                     ``{"catalogs": [{"catalog", "latest"}]}``
``GET  /v1/catalogs/{catalog}``                                           the manifest (``ETag``, ``If-None-Match``)
``GET  /v1/catalogs/{catalog}/versions/{version}/files/{kind}``           ``pack | layer0 | delta | layer0_delta`` bytes
``GET  /v1/catalogs/{catalog}/versions/{version}/codecs/{layer}``         ``codec.to_bytes()`` of one layer
``POST /v1/catalogs/{catalog}/versions/{version}/refine``                 a refinement frame (below)
``POST /v1/retrieve``                                                     top-k ids and scores from the HNSW index
``GET  /v1/catalogs/{catalog}/users/{user_id}/vector``                    a quantised user-vector update
``GET  /v1/catalogs/{catalog}/versions/{version}/edge-summary``           a device summary for a stored user (below)
``POST /v1/catalogs/{catalog}/versions/{version}/edge-summary``           a device summary for a posted vector
``POST /v1/admin/catalogs/{catalog}/versions``                            publish an ``.npz`` (``X-API-Key``)
``DELETE /v1/admin/catalogs/{catalog}/versions/{version}``                delete a version (``X-API-Key``)
========================================================================  ==============================================

File downloads (``files/{kind}``) carry ``Accept-Ranges: bytes``, ``ETag: "<sha256>"`` (the manifest's SHA-256 of
the file) and ``Content-Length``; ``If-None-Match`` with that tag gives 304. ``Range`` rules (:func:`parse_range`):

* one range ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` -> 206 with ``Content-Range`` (``b`` past the end is clipped
  to the last byte, ``-n`` larger than the file means the whole file);
* several ranges (``bytes=0-1,5-9``) -> 200 with the whole file (no multipart responses);
* a range that starts at or past the end, ``-0``, or a header that does not parse (``a > b``, another unit,
  garbage) -> 416 with ``Content-Range: bytes */<size>`` and the JSON error body;
* ``If-Range`` with a tag other than the current ``ETag`` -> the ``Range`` is ignored (200, whole file), so a
  client resuming a file that changed never splices two versions.

Bodies are streamed from disk in 64 KiB chunks, never loaded whole.

Refinement frame (little-endian), the answer to ``POST .../refine`` with ``{"ids": [...], "layer": 1}``::

    b"RPRF" | u32 n | u32 bytes_per_vector | u32 layer | n x int64 ids | n x bytes_per_vector codes | u32 CRC32C

The CRC32C covers every byte before it; ids are in the order asked (:func:`encode_refine_frame`,
:func:`decode_refine_frame`).

User-vector update (``GET .../users/{user_id}/vector?version=V&since=S``): ``codes`` is base64 of int8 [d] and
``scale = max|diff| / 127`` where ``diff = new - old_at_S`` when ``since`` is given and version S has the user,
else ``diff = new`` and the answer says ``"since": null``; the client computes ``old + scale * codes`` (each
coordinate within ``scale / 2`` of the server's vector) and checks ``crc32c`` over the int8 bytes first. Errors of
successive updates add up on the client: ask with ``since`` omitted now and then to start again from a full vector.

Edge summary (hierarchical index, :mod:`reelpack.catalog.edge`): ``GET .../edge-summary?user_id=U&budget_bytes=B&lam=L``
(or ``POST`` with ``{"vector": [...], "budget_bytes": B, "lam": L}``) answers ``DeviceSummary.to_bytes()``
(``application/octet-stream``) cut from the version's ``edge.rpec`` (``build_catalog(edge=True)``) around the stored
vector of user ``U`` (or the posted vector), with headers ``X-Edge-Clusters``, ``X-Edge-Items``,
``X-Catalog-Version``. ``budget_bytes`` defaults to 5 % of the catalog's float32 bytes (raised to the smallest
budget that holds the nearest cluster); 404 when the version has no edge catalog or the user is unknown, 413 for a
budget over ``max_edge_bytes``, 422 for a budget below the smallest one (the message gives it), < 1 or not an integer.

Errors are JSON ``{"error": {"status": int, "code": str, "message": str}}`` (422 adds ``"details"``): 400
``bad_request`` (typed input errors), 401 ``unauthorized``, 403 ``forbidden``, 404 ``not_found``, 413
``payload_too_large``, 416 ``range_not_satisfiable``, 422 ``validation_error``; 500 ``store_error`` when the store on
disk is inconsistent and 500 ``internal_error`` for anything unexpected (a bug).

Caches: per (catalog, version, pack SHA-256) the opened :class:`~reelpack.format.PackReader`, its item ids, layer
codes, HNSW index (memory-mapped) and user vectors, in an LRU of ``cache_versions`` entries; a deleted version's
entry is dropped at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import re
import struct
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Header, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reelpack.errors import (
    DataNotFoundError,
    DimensionMismatchError,
    InvalidInputError,
    NonFiniteError,
    NotFoundError,
    ReelpackError,
    SerializationError,
    StoreError,
)
from reelpack.format.container import PackReader, crc32c
from reelpack.catalog.ann import HNSWIndex
from reelpack.catalog.edge import DEFAULT_LAMBDA, EdgeCatalog
from reelpack.catalog.store import CatalogStore, build_catalog, validate_catalog_name

__all__ = [
    "create_app",
    "parse_range",
    "RangeNotSatisfiable",
    "encode_refine_frame",
    "decode_refine_frame",
    "quantise_update",
    "REFINE_MAGIC",
    "DOWNLOADABLE_KINDS",
    "MAX_K",
]

REFINE_MAGIC = b"RPRF"
_FRAME_HEAD = struct.Struct("<4sIII")
DOWNLOADABLE_KINDS = ("pack", "layer0", "delta", "layer0_delta")
"""The only file kinds the service sends; index, vectors, ids and users stay on the server."""
MAX_K = 1000
MAX_ID = (1 << 63) - 1
CHUNK_BYTES = 64 * 1024
MAX_CODECS = 16
_NPZ_KEYS = frozenset({"ids", "vectors", "users", "user_ids"})
_RANGE_RE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
_MAX_RANGE_HEADER = 1024
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "validation_error",
    500: "internal_error",
}


# ================================================================================================
# Pure helpers (tested directly)
# ================================================================================================
class RangeNotSatisfiable(Exception):
    """A ``Range`` header that cannot be served: answered with 416 and ``Content-Range: bytes */size``."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse an HTTP ``Range`` header for a file of ``size`` bytes.

    Returns:
        ``(start, end)`` with ``end`` inclusive for one satisfiable byte range, or ``None`` when the header
        asks for several ranges (the caller then sends the whole file with 200).

    Raises:
        RangeNotSatisfiable: the unit is not ``bytes``, a range does not parse (``a > b``, no digits, junk),
            the header is over 1 KiB, or the single range starts at or past the end (or is ``-0``).
    """
    if len(header) > _MAX_RANGE_HEADER:
        raise RangeNotSatisfiable("Range header is longer than 1024 characters", size)
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        raise RangeNotSatisfiable(f"expected a Range header 'bytes=START-END', got {header!r}", size)
    parts = spec.split(",")
    parsed: list[tuple[str, str]] = []
    for part in parts:
        m = _RANGE_RE.match(part)
        if m is None or (not m.group(1) and not m.group(2)):
            raise RangeNotSatisfiable(f"malformed byte range {part.strip()!r} in {header!r}", size)
        first, last = m.group(1), m.group(2)
        if first and last and int(first) > int(last):
            raise RangeNotSatisfiable(f"byte range {part.strip()!r} ends before it starts", size)
        parsed.append((first, last))
    if len(parsed) > 1:
        return None
    first, last = parsed[0]
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(f"suffix range '-{n}' of a {size}-byte file is empty", size)
        return max(0, size - n), size - 1
    start = int(first)
    if start >= size:
        raise RangeNotSatisfiable(f"range starts at byte {start}, the file has {size} bytes", size)
    end = size - 1 if not last else min(int(last), size - 1)
    return start, end


def _etag_matches(header: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` / ``If-Range`` value names ``etag`` (weak comparison; ``*`` matches)."""
    if not header:
        return False
    bare = etag.strip('"')
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag.strip('"') == bare:
            return True
    return False


def encode_refine_frame(ids: np.ndarray, codes: np.ndarray, layer: int) -> bytes:
    """A refinement frame (see the module docstring).

    Args:
        ids: int64 [n] item ids, in the order the client asked.
        codes: uint8 [n, bytes_per_vector], row i the codes of ``ids[i]``.
        layer: the pack layer the codes belong to.
    """
    ids = np.ascontiguousarray(ids, dtype="<i8")
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[0] != ids.shape[0]:
        raise InvalidInputError(f"codes must be [n={ids.shape[0]}, bytes_per_vector], got shape {codes.shape}")
    body = _FRAME_HEAD.pack(REFINE_MAGIC, ids.shape[0], codes.shape[1], int(layer)) + ids.tobytes() + codes.tobytes()
    return body + struct.pack("<I", crc32c(body))


def decode_refine_frame(frame: bytes) -> tuple[int, np.ndarray, np.ndarray]:
    """Parse and check a refinement frame.

    Returns:
        ``(layer, ids int64 [n], codes uint8 [n, bytes_per_vector])``.

    Raises:
        SerializationError: bad magic, a length that does not match the header, or a CRC32C mismatch.
    """
    frame = bytes(frame)
    if len(frame) < _FRAME_HEAD.size + 4:
        raise SerializationError(f"refinement frame is {len(frame)} bytes, shorter than the 20-byte minimum")
    magic, n, bpv, layer = _FRAME_HEAD.unpack_from(frame, 0)
    if magic != REFINE_MAGIC:
        raise SerializationError(f"refinement frame magic is {magic!r}, expected {REFINE_MAGIC!r}")
    expected = _FRAME_HEAD.size + n * 8 + n * bpv + 4
    if len(frame) != expected:
        raise SerializationError(
            f"refinement frame of n={n}, bytes_per_vector={bpv} needs {expected} bytes, got {len(frame)}"
        )
    (crc,) = struct.unpack_from("<I", frame, len(frame) - 4)
    if crc32c(frame[:-4]) != crc:
        raise SerializationError("refinement frame CRC32C mismatch")
    off = _FRAME_HEAD.size
    ids = np.frombuffer(frame, dtype="<i8", count=n, offset=off).astype(np.int64)
    codes = np.frombuffer(frame, dtype=np.uint8, count=n * bpv, offset=off + 8 * n).reshape(n, bpv).copy()
    return int(layer), ids, codes


def quantise_update(new: np.ndarray, old: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """int8 update of a vector: ``(scale, codes int8 [d])`` with ``old + scale * codes`` within ``scale/2`` of ``new``.

    Args:
        new: float32 [d], the vector to send.
        old: float32 [d], what the client has (``None``: send ``new`` in full).

    ``scale = max|new - old| / 127`` (computed in float64); all-zero codes and ``scale = 0`` when nothing changed.
    """
    diff = np.asarray(new, dtype=np.float64) - (0.0 if old is None else np.asarray(old, dtype=np.float64))
    peak = float(np.abs(diff).max(initial=0.0))
    if peak == 0.0 or not np.isfinite(peak):
        return 0.0, np.zeros(diff.shape, dtype=np.int8)
    scale = peak / 127.0
    codes = np.clip(np.rint(diff / scale), -127, 127).astype(np.int8)
    return scale, codes


# ================================================================================================
# Caches
# ================================================================================================
def _store_file(store: CatalogStore, catalog: str, version: int, kind: str) -> Path:
    """``store.file``, except that a file missing because its version was just deleted is a NotFoundError (404)
    rather than a StoreError (500)."""
    try:
        return store.file(catalog, version, kind)
    except StoreError:
        store.version_info(catalog, version)  # NotFoundError when the version is gone
        raise


class _Entry:
    """What the service keeps open for one catalog version (loaded lazily, shared between requests)."""

    def __init__(self, store: CatalogStore, catalog: str, version: int) -> None:
        self.store, self.catalog, self.version = store, catalog, version
        self.lock = threading.Lock()
        self._reader: PackReader | None = None
        self._codes: dict[int, np.ndarray] = {}
        self._codec_bytes: dict[int, bytes] = {}
        self._index: HNSWIndex | None = None
        self._users: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._edge: EdgeCatalog | None = None

    def edge(self) -> EdgeCatalog:
        """The version's :class:`EdgeCatalog` (``edge.rpec``, loaded once); NotFoundError when it has none."""
        with self.lock:
            if self._edge is None:
                try:
                    path = _store_file(self.store, self.catalog, self.version, "edge")
                except NotFoundError:
                    raise NotFoundError(
                        f"{self.catalog} version {self.version} has no edge catalog (build it with --edge)"
                    ) from None
                try:
                    self._edge = EdgeCatalog.load(path)
                except DataNotFoundError as exc:
                    raise StoreError(str(exc)) from None
            return self._edge

    @property
    def reader(self) -> PackReader:
        with self.lock:
            if self._reader is None:
                self._reader = PackReader(_store_file(self.store, self.catalog, self.version, "pack"))
            return self._reader

    def codes(self, layer: int) -> np.ndarray:
        """uint8 [n_items, bytes_per_vector] codes of ``layer`` (a view of the memory map for plain layers)."""
        reader = self.reader
        with self.lock:
            if layer not in self._codes:
                self._codes[layer] = reader.layer_codes(layer)
            return self._codes[layer]

    def codec_bytes(self, layer: int) -> bytes:
        """``codec(layer).to_bytes()`` of the full pack (parsed once)."""
        reader = self.reader
        with self.lock:
            if layer not in self._codec_bytes:
                self._codec_bytes[layer] = reader.codec(layer).to_bytes()
            return self._codec_bytes[layer]

    @property
    def index(self) -> HNSWIndex:
        with self.lock:
            if self._index is None:
                try:
                    path = _store_file(self.store, self.catalog, self.version, "index")
                except NotFoundError:
                    raise NotFoundError(f"{self.catalog} version {self.version} has no HNSW index") from None
                info = self.store.version_info(self.catalog, self.version).get("index") or {}
                kwargs = {"expansion_search": int(info["expansion_search"])} if info.get("expansion_search") else {}
                try:
                    self._index = HNSWIndex.load(path, view=True, **kwargs)
                except DataNotFoundError as exc:
                    raise StoreError(str(exc)) from None
            return self._index

    def users(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sorted user ids int64 [u], row of each sorted id int64 [u], user vectors float32 [u, d] memory-mapped)."""
        with self.lock:
            if self._users is None:
                try:
                    upath = _store_file(self.store, self.catalog, self.version, "users")
                    ipath = _store_file(self.store, self.catalog, self.version, "user_ids")
                except NotFoundError:
                    raise NotFoundError(f"{self.catalog} version {self.version} has no user vectors") from None
                try:
                    vectors = np.load(upath, mmap_mode="r", allow_pickle=False)
                    uids = np.asarray(np.load(ipath, allow_pickle=False))
                except (OSError, ValueError) as exc:
                    raise StoreError(f"{self.catalog} version {self.version}: unreadable user vectors: {exc}") from None
                if (vectors.ndim != 2 or uids.ndim != 1 or uids.shape[0] != vectors.shape[0]
                        or uids.dtype.kind not in "iu"):  # fmt: skip
                    raise StoreError(
                        f"{self.catalog} version {self.version}: users {vectors.shape} and user_ids {uids.shape} "
                        "do not match"
                    )
                order = np.argsort(uids, kind="stable").astype(np.int64)
                self._users = (uids.astype(np.int64)[order], order, vectors)
            return self._users

    def user_vector(self, user_id: int) -> np.ndarray | None:
        """float32 [d] vector of ``user_id`` in this version, or ``None`` when the version lacks it."""
        sorted_ids, order, vectors = self.users()
        pos = int(np.searchsorted(sorted_ids, user_id))
        if pos >= sorted_ids.shape[0] or int(sorted_ids[pos]) != user_id:
            return None
        return np.asarray(vectors[int(order[pos])], dtype=np.float32)


class _Cache:
    """LRU of :class:`_Entry` keyed by (catalog, version, pack SHA-256)."""

    def __init__(self, store: CatalogStore, size: int) -> None:
        self.store, self.size = store, size
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, int, str], _Entry] = OrderedDict()

    def get(self, catalog: str, version: int, info: dict[str, Any]) -> _Entry:
        key = (catalog, version, str(info.get("files", {}).get("pack", {}).get("sha256", "")))
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(self.store, catalog, version)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
            return entry

    def drop(self, catalog: str, version: int | None = None) -> None:
        """Forget every entry of ``catalog`` (one ``version`` when given); requests in flight keep theirs."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == catalog and (version is None or k[1] == version)]:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


# ================================================================================================
# Body size limit (pure ASGI, so it also covers chunked bodies)
# ================================================================================================
class _BodyLimit:
    """Answer 413 for a declared ``Content-Length`` over the limit before the app reads anything, and stop reading
    a body (chunked or lying) once it passes the limit. Admin paths get ``admin_limit``, the rest ``limit``."""

    def __init__(self, app: ASGIApp, limit: int, admin_limit: int) -> None:
        self.app, self.limit, self.admin_limit = app, limit, admin_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.admin_limit if scope.get("path", "").startswith("/v1/admin/") else self.limit
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
        if declared is not None and (declared < 0 or declared > limit):
            status = 400 if declared < 0 else 413
            msg = "Content-Length is not a non-negative integer" if declared < 0 else (
                f"request body of {declared} bytes is over the limit of {limit} bytes")  # fmt: skip
            await _error_response(status, msg)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise StarletteHTTPException(413, f"request body is over the limit of {limit} bytes")
            return message

        await self.app(scope, limited, send)


# ================================================================================================
# Errors
# ================================================================================================
def _error_body(status: int, message: str, code: str | None = None, **extra: Any) -> dict[str, Any]:
    code = code or _STATUS_CODES.get(status, "error")
    return {"error": {"status": status, "code": code, "message": message, **extra}}


def _error_response(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None,
                    **extra: Any) -> JSONResponse:  # fmt: skip
    return JSONResponse(_error_body(status, message, code, **extra), status_code=status, headers=headers)


def _status_of(exc: ReelpackError) -> tuple[int, str]:
    if isinstance(exc, NotFoundError):
        return 404, "not_found"
    if isinstance(exc, (StoreError, SerializationError)):
        return 500, "store_error"  # the store on disk, never client input, is at fault
    return 400, "bad_request"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ReelpackError)
    async def _reelpack_error(request: Request, exc: ReelpackError) -> JSONResponse:
        status, code = _status_of(exc)
        return _error_response(status, str(exc), code)

    @app.exception_handler(RangeNotSatisfiable)
    async def _range_error(request: Request, exc: RangeNotSatisfiable) -> JSONResponse:
        return _error_response(416, str(exc), headers={"Content-Range": f"bytes */{exc.size}"})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (204, 304) or exc.status_code < 400:
            return Response(status_code=exc.status_code, headers=exc.headers)
        return _error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()[:20]
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        message = f"{'.'.join(first['loc'])}: {first['msg']}" if first["loc"] else first["msg"]
        return _error_response(422, message, details=details)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(500, f"internal error ({type(exc).__name__}); this is a bug in reelpack")


# ================================================================================================
# Request / response models
# ================================================================================================
ItemId = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]


class RefineRequest(BaseModel):
    """Body of ``POST .../refine``: item ids (unique, order kept in the frame) and the pack layer."""

    model_config = ConfigDict(extra="forbid")
    ids: list[ItemId]
    layer: Annotated[StrictInt, Field(ge=0, le=255)] = 1


class RetrieveRequest(BaseModel):
    """Body of ``POST /v1/retrieve``: a user vector (float [d]) and K."""

    model_config = ConfigDict(extra="forbid")
    catalog: str
    version: Annotated[StrictInt, Field(ge=1)] | None = None
    vector: list[StrictFloat]
    k: Annotated[StrictInt, Field(ge=1, le=MAX_K)] = 50


class RetrieveResponse(BaseModel):
    catalog: str
    version: int
    ids: list[int]
    scores: list[float]
    took_ms: float


class UserVectorResponse(BaseModel):
    user_id: int
    version: int
    since: int | None
    dim: int
    scale: float
    codes: str
    crc32c: int


class EdgeSummaryRequest(BaseModel):
    """Body of ``POST .../edge-summary``: the device's user vector (float [d]), its byte budget and lam."""

    model_config = ConfigDict(extra="forbid")
    vector: list[StrictFloat]
    budget_bytes: Annotated[StrictInt, Field(ge=1)] | None = None
    lam: Annotated[float, Field(ge=0.0, le=4.0)] = DEFAULT_LAMBDA


class CatalogSummary(BaseModel):
    catalog: str
    latest: int | None


class CatalogList(BaseModel):
    catalogs: list[CatalogSummary]


# ================================================================================================
# The app
# ================================================================================================
def _parse_codec_list(values: list[str]) -> tuple[str, ...]:
    """``codecs`` query values -> specs. One value is split on ';' or whitespace when it has any, else on ','
    (so ``codecs=pq4,sq8``); repeated values (``codecs=opq8,pq8&codecs=sq8``) are one spec each."""
    from reelpack.codecs import make_codec

    if len(values) == 1:
        text = values[0].strip()
        parts = re.split(r"[;\s]+", text) if re.search(r"[;\s]", text) else text.split(",")
        specs = [s for s in parts if s]
    else:
        specs = [v.strip() for v in values if v.strip()]
    if not specs or len(specs) > MAX_CODECS:
        raise InvalidInputError(f"codecs must name 1..{MAX_CODECS} codec specs, got {values!r}")
    for spec in specs:
        make_codec(spec)  # CodecSpecError (400) now, before the body is read
    return tuple(specs)


def _load_npz(fh: Any, max_unpacked: int) -> dict[str, np.ndarray]:
    """Arrays of an uploaded ``.npz`` in the seekable binary file ``fh`` (no pickles, known keys only, at most
    ``max_unpacked`` bytes once decompressed, as the zip directory declares them; zipfile never reads past a
    member's declared size)."""
    try:
        fh.seek(0)
        with zipfile.ZipFile(fh) as zf:
            unpacked = sum(info.file_size for info in zf.infolist())
        if unpacked > max_unpacked:
            raise InvalidInputError(f"the .npz unpacks to {unpacked} bytes, over the limit of {max_unpacked}")
        fh.seek(0)
        loaded = np.load(fh, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise InvalidInputError("the body must be an .npz archive with arrays 'ids' and 'vectors'")
        with loaded:
            keys = set(loaded.files)
            unknown = keys - _NPZ_KEYS
            if unknown:
                raise InvalidInputError(
                    f"unexpected arrays {sorted(unknown)} in the .npz; allowed: {sorted(_NPZ_KEYS)}"
                )
            arrays = {k: np.asarray(loaded[k]) for k in keys}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, struct.error) as exc:
        if isinstance(exc, ReelpackError):
            raise
        raise InvalidInputError(f"the body is not a readable .npz archive: {exc}") from None
    for key in ("ids", "vectors"):
        if key not in arrays:
            raise InvalidInputError(f"the .npz must hold an array {key!r}; found {sorted(arrays)}")
    if ("users" in arrays) != ("user_ids" in arrays):
        raise InvalidInputError("the .npz must hold both 'users' and 'user_ids', or neither")
    return arrays


def _check_publish_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Shape and dtype checks of an upload (build_catalog checks again; this keeps odd input away from it)."""
    from reelpack.util.validate import as_float_matrix

    def ids_of(name: str, n: int) -> np.ndarray:
        a = arrays[name]
        if a.ndim != 1 or a.dtype.kind not in "iu":
            raise InvalidInputError(f"{name} must be a 1-D integer array, got dtype {a.dtype} shape {a.shape}")
        if a.shape[0] != n:
            raise InvalidInputError(f"{name} has {a.shape[0]} entries, expected {n}")
        if a.dtype.kind == "u" and a.size and int(a.max()) > MAX_ID:
            raise InvalidInputError(f"{name} must be < 2**63")
        return a.astype(np.int64)

    out: dict[str, np.ndarray] = {}
    out["vectors"] = as_float_matrix(arrays["vectors"], "vectors")
    out["ids"] = ids_of("ids", out["vectors"].shape[0])
    if "users" in arrays:
        out["users"] = as_float_matrix(arrays["users"], "users", dim=out["vectors"].shape[1])
        out["user_ids"] = ids_of("user_ids", out["users"].shape[0])
    return out


def _query_vector(vector: np.ndarray, dim: int, catalog: str, version: int) -> np.ndarray:
    """A request's query vector (float [d]) as float32 [d]: DimensionMismatchError unless ``d == dim``,
    NonFiniteError for NaN, Inf or values beyond float32 range."""
    if vector.shape[0] != dim:
        raise DimensionMismatchError(f"vector has {vector.shape[0]} values, {catalog} version {version} has dim {dim}")
    with np.errstate(over="ignore", invalid="ignore"):
        q = vector.astype(np.float32)
    if not np.isfinite(q).all():
        raise NonFiniteError("vector holds NaN, Inf or values beyond float32 range")
    return q


def create_app(
    store_root: str | os.PathLike[str],
    *,
    api_key: str | None = None,
    max_body_bytes: int = 512 * 1024 * 1024,
    max_refine_ids: int = 10_000,
    cache_versions: int = 4,
    max_json_bytes: int | None = None,
    max_edge_bytes: int = 64 << 20,
) -> FastAPI:
    """The pack service over the store at ``store_root`` (see the module docstring for every endpoint).

    Args:
        store_root: a :class:`~reelpack.catalog.store.CatalogStore` folder (created if missing).
        api_key: the admin key (``X-API-Key``); ``None`` or ``""`` disables the admin endpoints (403).
        max_body_bytes: largest accepted upload (``.npz`` publish); larger -> 413 before reading. Its
            decompressed arrays may be at most 4x this.
        max_refine_ids: most ids one refine request may ask for; more -> 413.
        cache_versions: catalog versions kept open (LRU).
        max_json_bytes: largest JSON body of the other endpoints (default ``1 MiB + 32 * max_refine_ids``).
        max_edge_bytes: largest ``budget_bytes`` of an edge summary; more -> 413.
    """
    for name, value in (("max_body_bytes", max_body_bytes), ("max_refine_ids", max_refine_ids),
                        ("cache_versions", cache_versions), ("max_edge_bytes", max_edge_bytes)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    json_limit = max_json_bytes if max_json_bytes is not None else (1 << 20) + 32 * max_refine_ids
    store = CatalogStore(store_root)
    cache = _Cache(store, cache_versions)
    key_bytes = api_key.encode("utf-8") if api_key else None

    app = FastAPI(
        title="reelpack pack service",
        version="1",
        description="Versioned compressed item-embedding packs for phones, refinement codes and online retrieval.",
    )
    app.state.store = store
    app.state.cache = cache
    app.add_middleware(_BodyLimit, limit=json_limit, admin_limit=max_body_bytes)
    _install_error_handlers(app)

    # ---- helpers bound to this store -----------------------------------------------------------
    def catalog_name(catalog: str) -> str:
        return validate_catalog_name(catalog)

    def version_entry(catalog: str, version: int) -> tuple[dict[str, Any], _Entry]:
        """(manifest entry, cache entry) of a published version; NotFoundError otherwise."""
        info = store.version_info(catalog_name(catalog), version)
        return info, cache.get(catalog, version, info)

    def require_admin(x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None) -> None:
        if key_bytes is None:
            raise StarletteHTTPException(403, "admin endpoints are disabled on this server (no API key configured)")
        if x_api_key is None:
            raise StarletteHTTPException(401, "missing X-API-Key header", headers={"WWW-Authenticate": "ApiKey"})
        if not hmac.compare_digest(x_api_key.encode("utf-8"), key_bytes):
            raise StarletteHTTPException(403, "wrong API key")

    # ---- read-only endpoints -------------------------------------------------------------------
    @app.get("/v1/health")
    def health() -> dict[str, str]:
        """Liveness: ``{"status": "ok"}``."""
        return {"status": "ok"}

    @app.get("/v1/catalogs", response_model=CatalogList)
    def list_catalogs() -> dict[str, Any]:
        """Every catalog with its latest version (``null`` when it has none or its manifest is unreadable)."""
        out = []
        for name in store.catalogs():
            try:
                latest: int | None = store.latest(name)
            except (NotFoundError, StoreError):
                latest = None
            out.append({"catalog": name, "latest": latest})
        return {"catalogs": out}

    @app.get("/v1/catalogs/{catalog}")
    def get_manifest(catalog: str, if_none_match: Annotated[str | None, Header()] = None) -> Response:
        """The catalog's manifest JSON; ``ETag`` is the SHA-256 of the body, ``If-None-Match`` -> 304."""
        manifest = store.manifest(catalog_name(catalog))
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        etag = f'"{hashlib.sha256(body).hexdigest()}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if _etag_matches(if_none_match, etag):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/json", headers=headers)

    files_path = "/v1/catalogs/{catalog}/versions/{version}/files/{kind}"

    @app.head(files_path, response_class=Response, include_in_schema=False)
    @app.get(files_path, response_class=Response, responses={
        206: {"description": "a byte range"}, 304: {"description": "not modified"},
        416: {"description": "range not satisfiable"}})  # fmt: skip
    def get_file(
        request: Request,
        catalog: str,
        version: Annotated[int, PathParam(ge=1)],
        kind: str,
        range_header: Annotated[str | None, Header(alias="Range")] = None,
        if_none_match: Annotated[str | None, Header()] = None,
        if_range: Annotated[str | None, Header()] = None,
    ) -> Response:
        """A pack, layer-0 pack or delta of one version, with ``Range``/``ETag`` support (module docstring)."""
        if kind not in DOWNLOADABLE_KINDS:
            raise NotFoundError(f"file kind must be one of {', '.join(DOWNLOADABLE_KINDS)}, got {kind!r}")
        info = store.version_info(catalog_name(catalog), version)
        meta = info.get("files", {}).get(kind)
        if meta is None:
            raise NotFoundError(f"{catalog} version {version} has no {kind} file")
        path = _store_file(store, catalog, version, kind)
        etag = f'"{meta["sha256"]}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "public, max-age=31536000, immutable"}
        if _etag_matches(if_none_match, etag):
            return Response(status_code=304, headers=headers)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the streaming generator / background task
        except FileNotFoundError:
            raise NotFoundError(f"{catalog} version {version}: {kind} was removed") from None
        try:
            size = os.fstat(fh.fileno()).st_size
            if size != int(meta["bytes"]):
                raise StoreError(f"{path} has {size} bytes, the manifest says {meta['bytes']}")
            status, start, end = 200, 0, size - 1
            if range_header is not None and (if_range is None or _etag_matches(if_range, etag)):
                rng = parse_range(range_header, size)
                if rng is not None:
                    status, (start, end) = 206, rng
                    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            length = end - start + 1 if size else 0
            headers["Content-Length"] = str(length)
            if request.method == "HEAD":
                fh.close()
                return Response(status_code=status, headers=headers, media_type="application/octet-stream")
        except BaseException:
            fh.close()
            raise
        return StreamingResponse(
            _read_span(fh, start, length), status_code=status, headers=headers,
            media_type="application/octet-stream", background=BackgroundTask(fh.close),
        )  # fmt: skip

    @app.get("/v1/catalogs/{catalog}/versions/{version}/codecs/{layer}", response_class=Response)
    def get_codec(catalog: str, version: Annotated[int, PathParam(ge=1)], layer: Annotated[int, PathParam(ge=0)],
                  if_none_match: Annotated[str | None, Header()] = None) -> Response:  # fmt: skip
        """``codec.to_bytes()`` of ``layer`` of the version's full pack (``application/octet-stream``)."""
        info, entry = version_entry(catalog, version)
        reader = entry.reader
        if layer >= reader.n_layers:
            raise NotFoundError(f"{catalog} version {version} has layers 0..{reader.n_layers - 1}, not {layer}")
        etag = f'"{info["files"]["pack"]["sha256"]}-codec{layer}"'
        headers = {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable"}
        if _etag_matches(if_none_match, etag):
            return Response(status_code=304, headers=headers)
        return Response(entry.codec_bytes(layer), media_type="application/octet-stream", headers=headers)

    @app.post("/v1/catalogs/{catalog}/versions/{version}/refine", response_class=Response,
              responses={200: {"content": {"application/octet-stream": {}}}})  # fmt: skip
    def refine(catalog: str, version: Annotated[int, PathParam(ge=1)], body: RefineRequest) -> Response:
        """Codes of ``layer`` for the given item ids as a refinement frame (module docstring); 413 over
        ``max_refine_ids`` ids, 400 for duplicates or a layer the pack lacks, 404 for unknown ids."""
        if len(body.ids) > max_refine_ids:
            raise StarletteHTTPException(413, f"{len(body.ids)} ids asked, at most {max_refine_ids} per request")
        _, entry = version_entry(catalog, version)
        reader = entry.reader
        if body.layer >= reader.n_layers:
            raise InvalidInputError(f"layer must be in 0..{reader.n_layers - 1}, got {body.layer}")
        ids = np.asarray(body.ids, dtype=np.int64)
        if np.unique(ids).size != ids.size:
            raise InvalidInputError("ids must be unique")
        all_ids = reader.item_ids  # sorted, unique
        rows = np.searchsorted(all_ids, ids)
        found = rows < all_ids.shape[0]
        found[found] = all_ids[rows[found]] == ids[found]
        if not found.all():
            missing = ids[~found]
            shown = ", ".join(str(int(i)) for i in missing[:10])
            raise NotFoundError(f"{missing.size} unknown item id(s) in {catalog} version {version}: {shown}")
        frame = encode_refine_frame(ids, entry.codes(body.layer)[rows], body.layer)
        return Response(frame, media_type="application/octet-stream")

    @app.post("/v1/retrieve", response_model=RetrieveResponse)
    def retrieve(body: RetrieveRequest) -> dict[str, Any]:
        """Approximate top-``k`` items by inner product from the version's HNSW index (``took_ms`` server side)."""
        t0 = time.perf_counter()
        catalog = catalog_name(body.catalog)
        version = store.latest(catalog) if body.version is None else body.version
        _, entry = version_entry(catalog, version)
        index = entry.index
        q32 = _query_vector(np.asarray(body.vector, dtype=np.float64), index.dim, catalog, version)
        k = min(body.k, index.n_items)
        ids, scores = index.search(q32[None, :], k)
        keep = ids[0] >= 0
        return {
            "catalog": catalog,
            "version": version,
            "ids": ids[0][keep].tolist(),
            "scores": scores[0][keep].astype(np.float64).tolist(),
            "took_ms": (time.perf_counter() - t0) * 1e3,
        }

    @app.get("/v1/catalogs/{catalog}/users/{user_id}/vector", response_model=UserVectorResponse)
    def user_vector(
        catalog: str,
        user_id: Annotated[int, PathParam(ge=0, le=MAX_ID)],
        version: Annotated[int | None, Query(ge=1)] = None,
        since: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        """int8 update of a user's vector (module docstring): relative to version ``since`` when that version has
        the user, else the full vector (``"since": null``)."""
        catalog = catalog_name(catalog)
        version = store.latest(catalog) if version is None else version
        _, entry = version_entry(catalog, version)
        new = entry.user_vector(user_id)
        if new is None:
            raise NotFoundError(f"user {user_id} is not in {catalog} version {version}")
        old = None
        if since is not None:
            try:
                _, old_entry = version_entry(catalog, since)
                old = old_entry.user_vector(user_id)
            except NotFoundError:
                old = None
            if old is not None and old.shape != new.shape:
                old = None
        scale, codes = quantise_update(new, old)
        return {
            "user_id": user_id,
            "version": version,
            "since": since if old is not None else None,
            "dim": int(new.shape[0]),
            "scale": scale,
            "codes": base64.b64encode(codes.tobytes()).decode("ascii"),
            "crc32c": crc32c(codes.tobytes()),
        }

    def edge_summary_response(catalog: str, version: int, vector: np.ndarray, budget_bytes: int | None,
                              lam: float) -> Response:  # fmt: skip
        info, entry = version_entry(catalog, version)
        ecat = entry.edge()
        q = _query_vector(vector, ecat.dim, catalog, version)
        least = ecat.min_budget(q)
        if budget_bytes is None:
            budget_bytes = min(max(int(0.05 * int(info["n_items"]) * ecat.dim * 4), least), max_edge_bytes)
        if budget_bytes > max_edge_bytes:
            raise StarletteHTTPException(
                413, f"budget_bytes {budget_bytes} is over this server's limit of {max_edge_bytes}"
            )
        if budget_bytes < least:
            raise StarletteHTTPException(
                422, f"budget_bytes {budget_bytes} is too small: the centroids, radii, codec and the nearest cluster "
                f"need {least} bytes",
            )  # fmt: skip
        summary = ecat.summary_for(q, int(budget_bytes), lam=float(lam))
        headers = {"X-Edge-Clusters": str(summary.clusters.size), "X-Edge-Items": str(summary.n_items),
                   "X-Catalog-Version": str(version), "Cache-Control": "private, no-store"}  # fmt: skip
        return Response(summary.to_bytes(), media_type="application/octet-stream", headers=headers)

    edge_path = "/v1/catalogs/{catalog}/versions/{version}/edge-summary"
    edge_responses: dict[int | str, dict[str, Any]] = {200: {"content": {"application/octet-stream": {}}}}

    @app.get(edge_path, response_class=Response, responses=edge_responses)
    def edge_summary(
        catalog: str,
        version: Annotated[int, PathParam(ge=1)],
        user_id: Annotated[int, Query(ge=0, le=MAX_ID)],
        budget_bytes: Annotated[int | None, Query(ge=1)] = None,
        lam: Annotated[float, Query(ge=0.0, le=4.0)] = DEFAULT_LAMBDA,
    ) -> Response:
        """``DeviceSummary.to_bytes()`` for the stored vector of ``user_id`` (module docstring)."""
        catalog = catalog_name(catalog)
        _, entry = version_entry(catalog, version)
        entry.edge()  # 404 for a version without an edge catalog before looking at users
        u = entry.user_vector(user_id)
        if u is None:
            raise NotFoundError(f"user {user_id} is not in {catalog} version {version}")
        return edge_summary_response(catalog, version, u, budget_bytes, lam)

    @app.post(edge_path, response_class=Response, responses=edge_responses)
    def edge_summary_for_vector(catalog: str, version: Annotated[int, PathParam(ge=1)],
                                body: EdgeSummaryRequest) -> Response:  # fmt: skip
        """``DeviceSummary.to_bytes()`` for a posted user vector (module docstring)."""
        vec = np.asarray(body.vector, dtype=np.float64)
        return edge_summary_response(catalog_name(catalog), version, vec, body.budget_bytes, body.lam)

    # ---- admin -----------------------------------------------------------------------------------
    @app.post("/v1/admin/catalogs/{catalog}/versions", status_code=201, dependencies=[Depends(require_admin)],
              openapi_extra={"requestBody": {"content": {"application/octet-stream": {}},
                                             "required": True}})  # fmt: skip
    async def publish(
        request: Request,
        catalog: str,
        codecs: Annotated[list[str] | None, Query()] = None,
        items_per_block: Annotated[int | None, Query(ge=1, le=1 << 20)] = None,
        seed: Annotated[int, Query(ge=0, le=2**32 - 1)] = 0,
        edge: Annotated[bool, Query()] = False,
        edge_nlist: Annotated[int | None, Query(ge=1, le=1 << 20)] = None,
    ) -> JSONResponse:
        """Publish a new version from the raw bytes of an ``.npz`` (``ids`` int64 [n], ``vectors`` float32 [n, d],
        optional ``users``/``user_ids``); 201 with the manifest's version entry. The build runs in a worker thread.

        ``codecs`` (``pq4,sq8``; see :func:`_parse_codec_list`) defaults to the previous version's codecs (so the
        delta chain goes on), else ``pq4,sq8``; ``items_per_block`` likewise. ``edge=true`` (``edge_nlist``) also
        builds the version's edge catalog (``build_catalog(edge=True)``) for ``GET .../edge-summary``."""
        name = catalog_name(catalog)
        specs = _parse_codec_list(codecs) if codecs else None
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > max_body_bytes:  # the middleware already refuses these
            raise StarletteHTTPException(413, f"request body of {declared} bytes is over the limit of {max_body_bytes}")
        # spooled to a temporary file (memory up to 8 MiB), so only the decoded arrays are ever held in memory
        with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
            received = 0
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_body_bytes:
                    raise StarletteHTTPException(413, f"request body is over the limit of {max_body_bytes} bytes")
                spool.write(chunk)
            if not received:
                raise InvalidInputError("empty body: send the raw bytes of an .npz with arrays 'ids' and 'vectors'")
            arrays = await run_in_threadpool(lambda: _check_publish_arrays(_load_npz(spool, 4 * max_body_bytes)))

        def build() -> dict[str, Any]:  # the store's catalog lock serialises builds and deletions
            return build_catalog(store, name, arrays["ids"], arrays["vectors"], codecs=specs,
                                 users=arrays.get("users"), user_ids=arrays.get("user_ids"),
                                 items_per_block=items_per_block, seed=seed, edge=edge,
                                 edge_nlist=edge_nlist)  # fmt: skip

        entry = await run_in_threadpool(build)
        return JSONResponse(entry, status_code=201, headers={"Location": f"/v1/catalogs/{name}"})

    @app.delete("/v1/admin/catalogs/{catalog}/versions/{version}", status_code=204,
                dependencies=[Depends(require_admin)], response_class=Response)  # fmt: skip
    def delete_version(catalog: str, version: Annotated[int, PathParam(ge=1)]) -> Response:
        """Delete one version (manifest first, then its files); 404 if it does not exist."""
        name = catalog_name(catalog)
        store.delete_version(name, version)
        cache.drop(name, version)
        return Response(status_code=204)

    return app


def _read_span(fh: io.BufferedReader, start: int, length: int) -> Iterator[bytes]:
    """Bytes ``start .. start+length-1`` of an open file in chunks of at most 64 KiB; closes the file at the end."""
    try:
        fh.seek(start)
        left = length
        while left > 0:
            chunk = fh.read(min(CHUNK_BYTES, left))
            if not chunk:
                raise StoreError(f"{getattr(fh, 'name', 'file')} ended {left} bytes early while being served")
            left -= len(chunk)
            yield chunk
    finally:
        fh.close()


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (``reelpack serve --workers N``): store from ``REELPACK_SERVE_STORE``, the
    admin key from the variable named by ``REELPACK_SERVE_API_KEY_ENV``, the upload limit from
    ``REELPACK_SERVE_MAX_BODY_BYTES``."""
    root = os.environ.get("REELPACK_SERVE_STORE")
    if not root:
        raise InvalidInputError("REELPACK_SERVE_STORE is not set")
    key_env = os.environ.get("REELPACK_SERVE_API_KEY_ENV", "")
    limit = int(os.environ.get("REELPACK_SERVE_MAX_BODY_BYTES", str(512 * 1024 * 1024)))
    return create_app(Path(root), api_key=os.environ.get(key_env) if key_env else None, max_body_bytes=limit)
