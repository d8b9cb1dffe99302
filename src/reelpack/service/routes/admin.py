"""Admin routes (``X-API-Key``, :func:`~reelpack.service.state.require_admin`): publish a version from an
``.npz`` upload (``POST /v1/admin/catalogs/{catalog}/versions``) and delete one
(``DELETE /v1/admin/catalogs/{catalog}/versions/{version}``)."""

from __future__ import annotations

import math
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
from reelpack.errors import DataFormatError, InvalidInputError, ReelpackError
from reelpack.service.models import MAX_ID
from reelpack.service.state import State, require_admin
from reelpack.util.npy import read_npy_header

__all__ = [
    "MAX_CODECS",
    "MAX_PUBLISH_DIM",
    "MAX_PUBLISH_ROWS",
    "check_publish_arrays",
    "load_npz",
    "parse_codec_list",
    "router",
]  # fmt: skip

MAX_CODECS = 16
MAX_PUBLISH_DIM = 4096
"""Largest vector dimension a publish accepts (413 above). Fitting a codec can cost far more than the upload:
the random rotations and projections (``reelpack.codecs._common.orthogonal_rows``, used by simhash, opq and
rabitq) draw and factor d x d float64 matrices, 8 * d**2 bytes each: 128 MiB at this limit, 298 GiB at d=200,000."""
MAX_PUBLISH_ROWS = 1 << 24
"""Most rows (items, users) of one publish (413 above)."""
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


def _too_large(message: str) -> StarletteHTTPException:
    return StarletteHTTPException(413, message)


def _read_npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data bytes the header claims) of the member ``info``, from its npy header alone (at most a
    few KiB of the member are decompressed). 400: no readable npy header or an object dtype; 422: the shape and
    dtype claim another byte count than the member holds after its header."""
    try:
        with zf.open(info) as fh:
            shape, dtype, offset = read_npy_header(fh)
    except DataFormatError as exc:
        raise InvalidInputError(f"array {key!r} of the .npz has no readable npy header: {exc}") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(f"array {key!r} of the .npz cannot be read: {type(exc).__name__}") from None
    claimed = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    held = info.file_size - offset
    if claimed != held:
        raise StarletteHTTPException(
            422, f"array {key!r}: its npy header claims shape {tuple(shape)} of {dtype} ({claimed} bytes), but the "
            f".npz member holds {held} bytes after the header")  # fmt: skip
    return tuple(shape), dtype, claimed


def _check_limits(key: str, shape: tuple[int, ...], max_rows: int, max_dim: int) -> None:
    """413 for more rows than ``max_rows`` or (``vectors``, ``users``) a dimension over ``max_dim``."""
    if shape and shape[0] > max_rows:
        raise _too_large(f"array {key!r} has {shape[0]} rows; this server accepts at most {max_rows} per publish")
    if key in ("vectors", "users") and len(shape) == 2 and shape[1] > max_dim:
        raise _too_large(
            f"{key} have dimension {shape[1]}; this server accepts at most {max_dim} (fitting codecs costs up to "
            f"8 * d**2 bytes per rotation)"
        )


def load_npz(fh: Any, max_unpacked: int, max_rows: int | None = None, max_dim: int | None = None) -> dict[str, np.ndarray]:
    """Arrays of an uploaded ``.npz`` in the seekable binary file ``fh`` (no pickles, known keys only).

    Before any array is read: the members the zip directory declares may unpack to at most ``max_unpacked``
    bytes (413); every member's npy header must claim exactly the bytes the member holds (422: a header of shape
    (10**12, 64) in a 17 KB upload) and at most ``max_rows`` rows (default :data:`MAX_PUBLISH_ROWS`) and, for
    ``vectors`` and ``users``, a dimension of at most ``max_dim`` (default :data:`MAX_PUBLISH_DIM`) (413). So
    nothing larger than the checked headers say is ever allocated (zipfile never reads past a member's declared
    size). Other problems: InvalidInputError (400).
    """
    max_rows = MAX_PUBLISH_ROWS if max_rows is None else max_rows
    max_dim = MAX_PUBLISH_DIM if max_dim is None else max_dim
    try:
        fh.seek(0)
        with zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
            unpacked = sum(info.file_size for info in infos)
            if unpacked > max_unpacked:
                raise _too_large(f"the .npz unpacks to {unpacked} bytes, over the limit of {max_unpacked}")
            members = {(i.filename.removesuffix(".npy")): i for i in infos}
            unknown = set(members) - _NPZ_KEYS
            if unknown or len(members) != len(infos):
                raise InvalidInputError(
                    f"unexpected arrays {sorted(unknown) or 'repeated'} in the .npz; allowed: {sorted(_NPZ_KEYS)}"
                )
            for key, info in members.items():
                shape, _, _ = _read_npy_header(zf, info, key)
                _check_limits(key, shape, max_rows, max_dim)
        fh.seek(0)
        loaded = np.load(fh, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise InvalidInputError("the body must be an .npz archive with arrays 'ids' and 'vectors'")
        with loaded:
            arrays = {k: np.asarray(loaded[k]) for k in loaded.files}
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
