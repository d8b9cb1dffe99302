"""``GET /v1/catalogs/{catalog}/users/{user_id}/vector``: a quantised (int8) update of a stored user vector."""

from __future__ import annotations

import base64
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from reelpack.errors import NotFoundError
from reelpack.format import crc32c
from reelpack.service.models import MAX_ID, PlainInt, UserVectorResponse
from reelpack.service.state import State

__all__ = ["quantise_update", "router"]

router = APIRouter()


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


@router.get("/v1/catalogs/{catalog}/users/{user_id}/vector", response_model=UserVectorResponse)
def user_vector(
    state: State,
    catalog: str,
    user_id: Annotated[PlainInt, PathParam(ge=0, le=MAX_ID)],
    version: Annotated[PlainInt | None, Query(ge=1)] = None,
    since: Annotated[PlainInt | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    """int8 update of a user's vector (module docstring): relative to version ``since`` when that version has
    the user, else the full vector (``"since": null``)."""
    catalog = state.catalog_name(catalog)
    version = state.store.latest(catalog) if version is None else version
    _, entry = state.version_entry(catalog, version)
    new = entry.user_vector(user_id)
    if new is None:
        raise NotFoundError(f"user {user_id} is not in {catalog} version {version}")
    old = None
    if since is not None:
        try:
            _, old_entry = state.version_entry(catalog, since)
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
