"""``POST /v1/catalogs/{catalog}/versions/{version}/refine``: codes of one layer for the ids asked, as a
refinement frame (:mod:`reelpack.format.refine`)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from reelpack.errors import InvalidInputError, NotFoundError
from reelpack.format.refine import encode_refine_frame
from reelpack.service.models import PlainInt, RefineRequest
from reelpack.service.state import State

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/catalogs/{catalog}/versions/{version}/refine", response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}}}})  # fmt: skip
def refine(state: State, catalog: str, version: Annotated[PlainInt, PathParam(ge=1)],
           body: RefineRequest) -> Response:  # fmt: skip
    """Codes of ``layer`` for the given item ids as a refinement frame (module docstring); 413 over
    ``max_refine_ids`` ids, 400 for duplicates or a layer the pack lacks, 404 for unknown ids."""
    if len(body.ids) > state.max_refine_ids:
        raise StarletteHTTPException(413, f"{len(body.ids)} ids asked, at most {state.max_refine_ids} per request")
    _, entry = state.version_entry(catalog, version)
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
