"""HTTP plumbing of the pack service: ``Range``/``ETag`` rules, file streaming, the JSON error body, the
exception handlers and the body-size middleware (no routes here; see :mod:`reelpack.service.app`)."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reelpack.errors import NotFoundError, ReelpackError, SerializationError, StoreError

__all__ = [
    "CHUNK_BYTES",
    "BodyLimit",
    "RangeNotSatisfiable",
    "error_body",
    "error_response",
    "etag_matches",
    "if_range_matches",
    "install_error_handlers",
    "parse_range",
    "public_message",
    "read_span",
]

log = logging.getLogger("reelpack.service")
"""The service's log: every 5xx with its full detail (paths included), and the original of any 4xx message
from which :func:`public_message` took a path out."""

CHUNK_BYTES = 64 * 1024
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
# Ranges, ETags, streaming
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


def etag_matches(header: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` value names ``etag``: the weak comparison of RFC 9110 13.1.2 (``W/"x"``
    matches ``"x"``; ``*`` matches any)."""
    if not header:
        return False
    bare = etag.strip('"')
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        tag = tag.removeprefix("W/")
        if tag.strip('"') == bare:
            return True
    return False


def if_range_matches(header: str | None, etag: str) -> bool:
    """Whether a ``Range`` may be honoured under ``If-Range: header`` (RFC 9110 13.1.5): no header, or exactly the
    strong tag ``etag`` (quoted). A weak tag (``W/"..."``), ``*``, a list, an unquoted tag or a date (the service
    sends no ``Last-Modified``) do not match, and the whole file is sent with 200."""
    if header is None:
        return True
    return header.strip() == etag and etag.startswith('"') and not etag.startswith("W/")


def read_span(fh: io.BufferedReader, start: int, length: int) -> Iterator[bytes]:
    """Bytes ``start .. start+length-1`` of an open file in chunks of at most 64 KiB; closes the file at the end."""
    try:
        fh.seek(start)
        left = length
        while left > 0:
            chunk = fh.read(min(CHUNK_BYTES, left))
            if not chunk:  # the response has started: this ends the connection; the log names the file
                log.error("%s ended %d bytes early while being served", getattr(fh, "name", "a file"), left)
                raise StoreError(f"a file ended {left} bytes early while being served")
            left -= len(chunk)
            yield chunk
    finally:
        fh.close()



# ================================================================================================
# Errors
# ================================================================================================
# What may follow a path's first character: anything but whitespace, quotes and brackets.
_PATH_TAIL = r"""[^\s'"`()\[\]{}<>,;]*"""
# An absolute path (POSIX '/x', Windows 'C:\x' or 'C:/x', UNC '\\host') at the start of the text or after a space,
# quote, bracket, '=', ':' or ','; so 'a / b', 'float32/fp16' and 'bytes */100' are left alone.
_ABS_PATH = re.compile(r"""(?<![^\s'"`(\[{=:,])(?:/(?=[^\s/])|[A-Za-z]:[\\/]|\\\\)""" + _PATH_TAIL)


def _last_part(path: str) -> str:
    """A path's file name (trailing '.' and ':' that end a sentence are not part of it)."""
    parts = [p for p in re.split(r"[\\/]+", path.rstrip(".:")) if p]
    return parts[-1] if parts else ""


def public_message(message: str, roots: Iterable[str] = ()) -> str:
    """``message`` with every server path taken out, for a client: a path under one of ``roots`` (the store's
    folder) or any other absolute path becomes its file name (``layer0.rpk``), and "in [store] ROOT" after a
    catalog's name goes. Catalog names, versions, numbers and the rest of the text stay."""
    for root in sorted({r for r in roots if r and os.path.isabs(r)}, key=len, reverse=True):
        esc = re.escape(root.rstrip("/\\") or root)
        message = re.sub(r"\s+in (?:the )?(?:store )?(?:root )?" + esc + r"(?![^\s'\"`)\]},;:.])", "", message)
        message = re.sub(esc + r"(?:[\\/]+(" + _PATH_TAIL + "))?",
                         lambda m: _last_part(m.group(1) or "") or "the store", message)  # fmt: skip
    return _ABS_PATH.sub(lambda m: _last_part(m.group(0)) + m.group(0)[len(m.group(0).rstrip(".:")) :]
                         or "a server path", message)  # fmt: skip


def _store_roots(request: Request) -> list[str]:
    """The serving app's store folder as given and resolved (for :func:`public_message`)."""
    service = getattr(request.app.state, "service", None)
    root = getattr(getattr(service, "store", None), "root", None)
    if root is None:
        return []
    return [str(root), os.path.abspath(root), os.path.realpath(root)]


def error_body(status: int, message: str, code: str | None = None, **extra: Any) -> dict[str, Any]:
    """``{"error": {"status", "code", "message", **extra}}``; ``code`` defaults to the status's name."""
    code = code or _STATUS_CODES.get(status, "error")
    return {"error": {"status": status, "code": code, "message": message, **extra}}


def error_response(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:  # fmt: skip
    """The JSON error body as a response (``message`` as given: callers with server detail use
    :func:`public_message` first, as the app's exception handlers do)."""
    return JSONResponse(error_body(status, message, code, **extra), status_code=status, headers=headers)


def _status_of(exc: ReelpackError) -> tuple[int, str]:
    if isinstance(exc, NotFoundError):
        return 404, "not_found"
    if isinstance(exc, (StoreError, SerializationError)):
        return 500, "store_error"  # the store on disk, never client input, is at fault
    return 400, "bad_request"


def _public(request: Request, status: int, message: str, exc: BaseException | None = None) -> str:
    """The client's version of ``message``. The original, with the errors ``exc`` was raised from (their paths
    included), goes to the log for a 5xx, or for a 4xx when a path was taken out or a cause holds one."""
    public = public_message(message, _store_roots(request))
    detail, cause = message, exc.__cause__ if exc is not None else None
    while cause is not None:
        detail += f" <- {type(cause).__name__}: {cause}"
        cause = cause.__cause__
    if status >= 500:
        log.error("%s %s -> %d: %s", request.method, request.url.path, status, detail)
    elif public != detail:
        log.info("%s %s -> %d: %s", request.method, request.url.path, status, detail)
    return public


def install_error_handlers(app: FastAPI) -> None:
    """Map typed reelpack errors, 416s, HTTP exceptions, validation errors and bugs to the JSON error body.

    Every message passes through :func:`public_message` (no server path reaches a client); the full detail of
    each 5xx, and of each message a path was taken out of, goes to the ``reelpack.service`` log."""

    @app.exception_handler(ReelpackError)
    async def _reelpack_error(request: Request, exc: ReelpackError) -> JSONResponse:
        status, code = _status_of(exc)
        return error_response(status, _public(request, status, str(exc), exc), code)

    @app.exception_handler(RangeNotSatisfiable)
    async def _range_error(request: Request, exc: RangeNotSatisfiable) -> JSONResponse:
        return error_response(416, _public(request, 416, str(exc)), headers={"Content-Range": f"bytes */{exc.size}"})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (204, 304) or exc.status_code < 400:
            return Response(status_code=exc.status_code, headers=exc.headers)
        return error_response(exc.status_code, _public(request, exc.status_code, str(exc.detail)), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        roots = _store_roots(request)
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": public_message(str(e.get("msg", "")), roots),
             "type": str(e.get("type", ""))}
            for e in exc.errors()[:20]
        ]  # fmt: skip
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        message = f"{'.'.join(first['loc'])}: {first['msg']}" if first["loc"] else first["msg"]
        return error_response(422, message, details=details)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s -> 500: unexpected %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__}); this is a bug in reelpack")


# ================================================================================================
# Body size limit (pure ASGI, so it also covers chunked bodies)
# ================================================================================================
class BodyLimit:
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
            await error_response(status, msg)(scope, receive, send)
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
