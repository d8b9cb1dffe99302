"""``POST /v1/retrieve``: approximate top-k by inner product from a version's HNSW index."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter

from reelpack.service.models import RetrieveRequest, RetrieveResponse
from reelpack.service.state import State, query_vector

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/retrieve", response_model=RetrieveResponse)
def retrieve(state: State, body: RetrieveRequest) -> dict[str, Any]:
    """Approximate top-``k`` items by inner product from the version's HNSW index (``took_ms`` server side)."""
    t0 = time.perf_counter()
    catalog = state.catalog_name(body.catalog)
    version = state.store.latest(catalog) if body.version is None else body.version
    _, entry = state.version_entry(catalog, version)
    index = entry.index
    q32 = query_vector(np.asarray(body.vector, dtype=np.float64), index.dim, catalog, version)
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
