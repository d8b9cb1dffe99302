"""Request and response bodies of the pack service (pydantic models; the OpenAPI schemas at ``/docs``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from reelpack.catalog.edge import DEFAULT_LAMBDA

__all__ = [
    "MAX_K",
    "MAX_ID",
    "ItemId",
    "RefineRequest",
    "RetrieveRequest",
    "RetrieveResponse",
    "UserVectorResponse",
    "EdgeSummaryRequest",
    "CatalogSummary",
    "CatalogList",
]

MAX_K = 1000
"""Largest ``k`` of ``POST /v1/retrieve``."""
MAX_ID = (1 << 63) - 1
"""Largest item or user id (ids are int64 >= 0)."""

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
