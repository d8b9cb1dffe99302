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
* ``If-Range`` must name the current ``ETag`` exactly (the strong comparison of RFC 9110): another tag, a weak
  tag ``W/"..."``, ``*`` or a date -> the ``Range`` is ignored (200, whole file), so a client resuming a file
  that changed never splices two versions. (``If-None-Match`` compares weakly: ``W/"<sha256>"`` and ``*`` give 304.)

Bodies are streamed from disk in 64 KiB chunks, never loaded whole.

Refinement frame (little-endian), the answer to ``POST .../refine`` with ``{"ids": [...], "layer": 1}``::

    b"RPRF" | u32 n | u32 bytes_per_vector | u32 layer | n x int64 ids | n x bytes_per_vector codes | u32 CRC32C

The CRC32C covers every byte before it; ids are in the order asked. The frame's codec is
:mod:`reelpack.format.refine` (:func:`encode_refine_frame`, :func:`decode_refine_frame`; a bad frame raises
``PackFormatError``, a CRC mismatch its subclass ``ChecksumError``).

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
disk is inconsistent and 500 ``internal_error`` for anything unexpected (a bug). Messages name catalogs, versions
and file kinds, never a server path (:func:`~reelpack.service.http.public_message` takes out any that an error
carries); the full detail of every 500 goes to the ``reelpack.service`` log. Numbers are strict: a JSON field
takes only JSON numbers (not ``"0.5"`` or ``true``), a query or path value only a plain decimal (``3``,
``0.5``, ``2.5e-1``; not ``1.0`` for an integer, ``1_000``, ``nan``, ``inf`` or ``true``), else 422.

Caches: per (catalog, version, pack SHA-256) the opened :class:`~reelpack.format.PackReader`, its item ids, layer
codes, HNSW index (memory-mapped) and user vectors, in an LRU of ``cache_versions`` entries; a deleted version's
entry is dropped at once.

Code layout: this module builds the app (:func:`create_app`); the routes are one ``APIRouter`` per concern in
:mod:`reelpack.service.routes` (``health``, ``packs``, ``refine``, ``retrieval``, ``users``, ``edge``, ``admin``),
the request/response bodies in :mod:`reelpack.service.models`, the store, cache, limits and admin-key dependency in
:mod:`reelpack.service.state`, and ranges, ETags, error bodies and the body-size middleware in
:mod:`reelpack.service.http`.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from reelpack.catalog.store import CatalogStore
from reelpack.errors import InvalidInputError
from reelpack.format.refine import (
    REFINE_MAGIC,
    decode_refine_frame,
    encode_refine_frame,
)
from reelpack.service.http import (
    CHUNK_BYTES,
    BodyLimit,
    RangeNotSatisfiable,
    install_error_handlers,
    parse_range,
)
from reelpack.service.models import MAX_K
from reelpack.service.routes import ROUTERS
from reelpack.service.routes.packs import DOWNLOADABLE_KINDS
from reelpack.service.routes.users import quantise_update
from reelpack.service.state import ServiceState, VersionCache

__all__ = [
    "CHUNK_BYTES",
    "DOWNLOADABLE_KINDS",
    "MAX_K",
    "REFINE_MAGIC",
    "RangeNotSatisfiable",
    "app_from_env",
    "create_app",
    "decode_refine_frame",
    "encode_refine_frame",
    "parse_range",
    "quantise_update",
]


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

    The app's :class:`~reelpack.service.state.ServiceState` is ``app.state.service`` (its store and cache are
    also ``app.state.store`` and ``app.state.cache``).
    """
    for name, value in (("max_body_bytes", max_body_bytes), ("max_refine_ids", max_refine_ids),
                        ("cache_versions", cache_versions), ("max_edge_bytes", max_edge_bytes)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    json_limit = max_json_bytes if max_json_bytes is not None else (1 << 20) + 32 * max_refine_ids
    store = CatalogStore(store_root)
    state = ServiceState(
        store=store,
        cache=VersionCache(store, cache_versions),
        api_key=api_key.encode("utf-8") if api_key else None,
        max_body_bytes=max_body_bytes,
        max_refine_ids=max_refine_ids,
        max_edge_bytes=max_edge_bytes,
    )
    app = FastAPI(
        title="reelpack pack service",
        version="1",
        description="Versioned compressed item-embedding packs for phones, refinement codes and online retrieval.",
    )
    app.state.service = state
    app.state.store = state.store
    app.state.cache = state.cache
    app.add_middleware(BodyLimit, limit=json_limit, admin_limit=max_body_bytes)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


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
