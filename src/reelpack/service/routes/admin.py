"""Admin routes (``X-API-Key``, :func:`~reelpack.service.state.require_admin`): publish a version from an
``.npz`` upload (``POST /v1/admin/catalogs/{catalog}/versions``) and delete one
(``DELETE /v1/admin/catalogs/{catalog}/versions/{version}``)."""

from __future__ import annotations

import re
import struct
import tempfile
import zipfile
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from reelpack.catalog.build import build_catalog
from reelpack.errors import InvalidInputError, ReelpackError
from reelpack.service.models import MAX_ID
from reelpack.service.state import State, require_admin

__all__ = ["router", "MAX_CODECS", "parse_codec_list", "load_npz", "check_publish_arrays"]

MAX_CODECS = 16
_NPZ_KEYS = frozenset({"ids", "vectors", "users", "user_ids"})

router = APIRouter()


def parse_codec_list(values: list[str]) -> tuple[str, ...]:
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


def load_npz(fh: Any, max_unpacked: int) -> dict[str, np.ndarray]:
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


def check_publish_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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


@router.post("/v1/admin/catalogs/{catalog}/versions", status_code=201, dependencies=[Depends(require_admin)],
             openapi_extra={"requestBody": {"content": {"application/octet-stream": {}},
                                            "required": True}})  # fmt: skip
async def publish(
    request: Request,
    state: State,
    catalog: str,
    codecs: Annotated[list[str] | None, Query()] = None,
    items_per_block: Annotated[int | None, Query(ge=1, le=1 << 20)] = None,
    seed: Annotated[int, Query(ge=0, le=2**32 - 1)] = 0,
    edge: Annotated[bool, Query()] = False,
    edge_nlist: Annotated[int | None, Query(ge=1, le=1 << 20)] = None,
) -> JSONResponse:
    """Publish a new version from the raw bytes of an ``.npz`` (``ids`` int64 [n], ``vectors`` float32 [n, d],
    optional ``users``/``user_ids``); 201 with the manifest's version entry. The build runs in a worker thread.

    ``codecs`` (``pq4,sq8``; see :func:`parse_codec_list`) defaults to the previous version's codecs (so the
    delta chain goes on), else ``pq4,sq8``; ``items_per_block`` likewise. ``edge=true`` (``edge_nlist``) also
    builds the version's edge catalog (``build_catalog(edge=True)``) for ``GET .../edge-summary``."""
    name = state.catalog_name(catalog)
    specs = parse_codec_list(codecs) if codecs else None
    max_body_bytes = state.max_body_bytes
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
        arrays = await run_in_threadpool(lambda: check_publish_arrays(load_npz(spool, 4 * max_body_bytes)))

    def build() -> dict[str, Any]:  # the store's catalog lock serialises builds and deletions
        return build_catalog(state.store, name, arrays["ids"], arrays["vectors"], codecs=specs,
                             users=arrays.get("users"), user_ids=arrays.get("user_ids"),
                             items_per_block=items_per_block, seed=seed, edge=edge,
                             edge_nlist=edge_nlist)  # fmt: skip

    entry = await run_in_threadpool(build)
    return JSONResponse(entry, status_code=201, headers={"Location": f"/v1/catalogs/{name}"})


@router.delete("/v1/admin/catalogs/{catalog}/versions/{version}", status_code=204,
               dependencies=[Depends(require_admin)], response_class=Response)  # fmt: skip
def delete_version(state: State, catalog: str, version: Annotated[int, PathParam(ge=1)]) -> Response:
    """Delete one version (manifest first, then its files); 404 if it does not exist."""
    name = state.catalog_name(catalog)
    state.store.delete_version(name, version)
    state.cache.drop(name, version)
    return Response(status_code=204)
