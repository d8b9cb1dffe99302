"""``GET|POST /v1/catalogs/{catalog}/versions/{version}/edge-summary``: a device summary of the version's edge
catalog (:mod:`reelpack.catalog.edge`) around a stored user's vector (GET) or a posted vector (POST)."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from reelpack.catalog.edge import DEFAULT_LAMBDA
from reelpack.errors import NotFoundError
from reelpack.service.models import MAX_ID, EdgeSummaryRequest, PlainFloat, PlainInt
from reelpack.service.state import ServiceState, State, query_vector

__all__ = ["edge_summary_response", "router"]

router = APIRouter()
EDGE_PATH = "/v1/catalogs/{catalog}/versions/{version}/edge-summary"
_EDGE_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": {"application/octet-stream": {}}}}


def edge_summary_response(state: ServiceState, catalog: str, version: int, vector: np.ndarray,
                          budget_bytes: int | None, lam: float) -> Response:  # fmt: skip
    """``DeviceSummary.to_bytes()`` for ``vector`` (float [d]); 413 over ``max_edge_bytes``, 422 under the least
    budget; the default budget is 5 % of the catalog's float32 bytes (raised to the least budget)."""
    info, entry = state.version_entry(catalog, version)
    ecat = entry.edge()
    q = query_vector(vector, ecat.dim, catalog, version)
    least = ecat.min_budget(q)
    max_edge_bytes = state.max_edge_bytes
    if budget_bytes is None:
        budget_bytes = min(max(int(0.05 * int(info["n_items"]) * ecat.dim * 4), least), max_edge_bytes)
    if budget_bytes > max_edge_bytes:
        raise StarletteHTTPException(413, f"budget_bytes {budget_bytes} is over this server's limit of {max_edge_bytes}")
    if budget_bytes < least:
        raise StarletteHTTPException(
            422, f"budget_bytes {budget_bytes} is too small: the centroids, radii, codec and the nearest cluster "
            f"need {least} bytes",
        )  # fmt: skip
    summary = ecat.summary_for(q, int(budget_bytes), lam=float(lam))
    headers = {"X-Edge-Clusters": str(summary.clusters.size), "X-Edge-Items": str(summary.n_items),
               "X-Catalog-Version": str(version), "Cache-Control": "private, no-store"}  # fmt: skip
    return Response(summary.to_bytes(), media_type="application/octet-stream", headers=headers)


@router.get(EDGE_PATH, response_class=Response, responses=_EDGE_RESPONSES)
def edge_summary(
    state: State,
    catalog: str,
    version: Annotated[PlainInt, PathParam(ge=1)],
    user_id: Annotated[PlainInt, Query(ge=0, le=MAX_ID)],
    budget_bytes: Annotated[PlainInt | None, Query(ge=1)] = None,
    lam: Annotated[PlainFloat, Query(ge=0.0, le=4.0)] = DEFAULT_LAMBDA,
) -> Response:
    """``DeviceSummary.to_bytes()`` for the stored vector of ``user_id`` (module docstring)."""
    catalog = state.catalog_name(catalog)
    _, entry = state.version_entry(catalog, version)
    entry.edge()  # 404 for a version without an edge catalog before looking at users
    u = entry.user_vector(user_id)
    if u is None:
        raise NotFoundError(f"user {user_id} is not in {catalog} version {version}")
    return edge_summary_response(state, catalog, version, u, budget_bytes, lam)


@router.post(EDGE_PATH, response_class=Response, responses=_EDGE_RESPONSES)
def edge_summary_for_vector(state: State, catalog: str, version: Annotated[PlainInt, PathParam(ge=1)],
                            body: EdgeSummaryRequest) -> Response:  # fmt: skip
    """``DeviceSummary.to_bytes()`` for a posted user vector (module docstring)."""
    vec = np.asarray(body.vector, dtype=np.float64)
    return edge_summary_response(state, state.catalog_name(catalog), version, vec, body.budget_bytes, body.lam)
