"""Request and response bodies of the pack service (pydantic models; the OpenAPI schemas at ``/docs``)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
)

from reelpack.catalog.edge import DEFAULT_LAMBDA

__all__ = [
    "MAX_ID",
    "MAX_K",
    "CatalogList",
    "CatalogSummary",
    "EdgeSummaryRequest",
    "ItemId",
    "PlainFloat",
    "PlainInt",
    "RefineRequest",
    "RetrieveRequest",
    "RetrieveResponse",
    "UserVectorResponse",
]

MAX_K = 1000
"""Largest ``k`` of ``POST /v1/retrieve``."""
MAX_ID = (1 << 63) - 1
"""Largest item or user id (ids are int64 >= 0)."""

ItemId = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]

# Query and path values arrive as text. pydantic's lax parsing would take "1.0", "1_000", " 5" and "+3" as
# integers and "nan", "inf" or "1_0.5" as floats; these checks let only plain decimal numbers through (a sign
# is allowed so that "-1" gets the range message of its parameter).
_PLAIN_INT = re.compile(r"-?[0-9]{1,30}")
_PLAIN_FLOAT = re.compile(r"-?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][-+]?[0-9]{1,3})?")


def _plain_int(value: Any) -> Any:
    if isinstance(value, str) and not _PLAIN_INT.fullmatch(value):
        raise ValueError(f"expected a decimal integer such as 3, found {value[:40]!r}")
    if isinstance(value, (bool, float)):
        raise ValueError(f"expected an integer, found {type(value).__name__}")  # noqa: TRY004 - pydantic wants ValueError
    return value


def _plain_float(value: Any) -> Any:
    if isinstance(value, str) and not _PLAIN_FLOAT.fullmatch(value):
        raise ValueError(f"expected a decimal number such as 0.5, found {value[:40]!r}")
    if isinstance(value, bool):
        raise ValueError("expected a number, found bool")  # noqa: TRY004 - pydantic wants ValueError
    return value


PlainInt = Annotated[int, BeforeValidator(_plain_int)]
"""An integer query or path parameter: its text is a plain decimal integer (``-?[0-9]+``), nothing else."""
PlainFloat = Annotated[float, BeforeValidator(_plain_float), Field(allow_inf_nan=False)]
"""A float query parameter: its text is a plain decimal number (``0.5``, ``1``, ``2.5e-1``): no ``nan``, ``inf``,
``true`` or ``1_0``."""
_STRICT = ConfigDict(extra="forbid", strict=True)  # JSON bodies: no "0.5" or true for a number


class RefineRequest(BaseModel):
    """Body of ``POST .../refine``: item ids (unique, order kept in the frame) and the pack layer."""

    model_config = _STRICT
    ids: list[ItemId]
    layer: Annotated[StrictInt, Field(ge=0, le=255)] = 1


class RetrieveRequest(BaseModel):
    """Body of ``POST /v1/retrieve``: a user vector (float [d]) and K."""

    model_config = _STRICT
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

    model_config = _STRICT
    vector: list[StrictFloat]
    budget_bytes: Annotated[StrictInt, Field(ge=1)] | None = None
    lam: Annotated[StrictFloat, Field(ge=0.0, le=4.0)] = DEFAULT_LAMBDA


class CatalogSummary(BaseModel):
    catalog: str
    latest: int | None


class CatalogList(BaseModel):
    catalogs: list[CatalogSummary]
