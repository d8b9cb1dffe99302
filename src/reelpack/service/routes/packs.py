"""Catalogs, manifests, pack and delta files (``Range``/``ETag``), and layer codecs.

``GET /v1/catalogs``, ``GET /v1/catalogs/{catalog}``, ``GET|HEAD .../versions/{version}/files/{kind}``
(:data:`DOWNLOADABLE_KINDS`) and ``GET .../versions/{version}/codecs/{layer}``; the rules are in
:mod:`reelpack.service.app`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi import Path as PathParam
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from reelpack.errors import NotFoundError, StoreError
from reelpack.service.http import (
    etag_matches,
    if_range_matches,
    log,
    parse_range,
    read_span,
)
from reelpack.service.models import CatalogList, PlainInt
from reelpack.service.state import State, store_file

__all__ = ["DOWNLOADABLE_KINDS", "router"]

DOWNLOADABLE_KINDS = ("pack", "layer0", "delta", "layer0_delta")
"""The only file kinds the service sends; index, vectors, ids and users stay on the server."""

router = APIRouter()


@router.get("/v1/catalogs", response_model=CatalogList)
def list_catalogs(state: State) -> dict[str, Any]:
    """Every catalog with its latest version (``null`` when it has none or its manifest is unreadable)."""
    out = []
    for name in state.store.catalogs():
        try:
            latest: int | None = state.store.latest(name)
        except (NotFoundError, StoreError):
            latest = None
        out.append({"catalog": name, "latest": latest})
    return {"catalogs": out}


@router.get("/v1/catalogs/{catalog}")
def get_manifest(state: State, catalog: str, if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """The catalog's manifest JSON; ``ETag`` is the SHA-256 of the body, ``If-None-Match`` -> 304."""
    manifest = state.store.manifest(state.catalog_name(catalog))
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    etag = f'"{hashlib.sha256(body).hexdigest()}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


FILES_PATH = "/v1/catalogs/{catalog}/versions/{version}/files/{kind}"


@router.head(FILES_PATH, response_class=Response, include_in_schema=False)
@router.get(FILES_PATH, response_class=Response, responses={
    206: {"description": "a byte range"}, 304: {"description": "not modified"},
    416: {"description": "range not satisfiable"}})  # fmt: skip
def get_file(
    request: Request,
    state: State,
    catalog: str,
    version: Annotated[PlainInt, PathParam(ge=1)],
    kind: str,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
    if_none_match: Annotated[str | None, Header()] = None,
    if_range: Annotated[str | None, Header()] = None,
) -> Response:
    """A pack, layer-0 pack or delta of one version, with ``Range``/``ETag`` support (module docstring).

    Written by hand rather than with Starlette's ``FileResponse`` (which since 0.39 does ranges and ``If-Range``),
    because that class lacks what the service and its clients rely on: its ``ETag`` is an MD5 of mtime and size,
    not the manifest's SHA-256 the device checks files against (``If-Range`` and ``If-None-Match`` compare with
    it); a bad or unsatisfiable ``Range`` gets a plain-text 400 or 416, not the JSON error body with
    ``Content-Range: bytes */size``, and junk ranges are skipped instead of refused; several ranges get a
    ``multipart/byteranges`` 206 (the device client takes 200 with the whole file); it opens the file by name
    again when sending, so a version deleted meanwhile fails mid-response, where this route streams from the
    descriptor it opened and checked against the manifest's size."""
    if kind not in DOWNLOADABLE_KINDS:
        raise NotFoundError(f"file kind must be one of {', '.join(DOWNLOADABLE_KINDS)}, got {kind!r}")
    store = state.store
    info = store.version_info(state.catalog_name(catalog), version)
    meta = info.get("files", {}).get(kind)
    if meta is None:
        raise NotFoundError(f"{catalog} version {version} has no {kind} file")
    path = store_file(store, catalog, version, kind)
    etag = f'"{meta["sha256"]}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "public, max-age=31536000, immutable"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the streaming generator / background task
    except FileNotFoundError:
        raise NotFoundError(f"{catalog} version {version}: {kind} was removed") from None
    try:
        size = os.fstat(fh.fileno()).st_size
        if size != int(meta["bytes"]):
            log.error("%s has %d bytes, the manifest says %s", path, size, meta["bytes"])
            raise StoreError(
                f"catalog {catalog!r} version {version}: its {kind} file has {size} bytes, the manifest says "
                f"{meta['bytes']}"
            )
        status, start, end = 200, 0, size - 1
        if range_header is not None and if_range_matches(if_range, etag):
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
        read_span(fh, start, length), status_code=status, headers=headers,
        media_type="application/octet-stream", background=BackgroundTask(fh.close),
    )  # fmt: skip


@router.get("/v1/catalogs/{catalog}/versions/{version}/codecs/{layer}", response_class=Response)
def get_codec(state: State, catalog: str, version: Annotated[PlainInt, PathParam(ge=1)],
              layer: Annotated[PlainInt, PathParam(ge=0)],
              if_none_match: Annotated[str | None, Header()] = None) -> Response:  # fmt: skip
    """``codec.to_bytes()`` of ``layer`` of the version's full pack (``application/octet-stream``)."""
    info, entry = state.version_entry(catalog, version)
    reader = entry.reader
    if layer >= reader.n_layers:
        raise NotFoundError(f"{catalog} version {version} has layers 0..{reader.n_layers - 1}, not {layer}")
    etag = f'"{info["files"]["pack"]["sha256"]}-codec{layer}"'
    headers = {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(entry.codec_bytes(layer), media_type="application/octet-stream", headers=headers)
