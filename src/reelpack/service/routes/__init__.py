"""The pack service's routes, one :class:`fastapi.APIRouter` per concern (:data:`ROUTERS`, in the order
:func:`reelpack.service.app.create_app` includes them)."""

from __future__ import annotations

from fastapi import APIRouter

from reelpack.service.routes import admin, edge, health, packs, refine, retrieval, users

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    packs.router,
    refine.router,
    retrieval.router,
    users.router,
    edge.router,
    admin.router,
)
