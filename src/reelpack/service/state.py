"""What the pack service holds between requests, in one place: the store, the per-version cache, the limits and
the admin key (:class:`ServiceState`, on ``app.state.service``), and the FastAPI dependencies that hand them to
the routes (:data:`State`, :func:`require_admin`).

Cache: per (catalog, version, pack SHA-256) the opened :class:`~reelpack.format.PackReader`, its layer codes,
codec bytes, HNSW index (memory-mapped), user vectors and edge catalog, loaded lazily, in an LRU of
``cache_versions`` entries; a deleted version's entry is dropped at once.
"""

from __future__ import annotations

import hmac
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, Header, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from reelpack.catalog.ann import HNSWIndex
from reelpack.catalog.edge import EdgeCatalog
from reelpack.catalog.store import CatalogStore, validate_catalog_name
from reelpack.errors import (
    DataNotFoundError,
    DimensionMismatchError,
    NonFiniteError,
    NotFoundError,
    SerializationError,
    StoreError,
)
from reelpack.format import PackReader

__all__ = [
    "ServiceState",
    "State",
    "VersionCache",
    "VersionEntry",
    "get_state",
    "query_vector",
    "require_admin",
    "store_file",
]


def store_file(store: CatalogStore, catalog: str, version: int, kind: str) -> Path:
    """``store.file``, except that a file missing because its version was just deleted is a NotFoundError (404)
    rather than a StoreError (500), and that the StoreError of a missing file names no path (the error it comes
    from, which the service logs, does)."""
    try:
        return store.file(catalog, version, kind)
    except StoreError as exc:
        store.version_info(catalog, version)  # NotFoundError when the version is gone
        raise StoreError(f"catalog {catalog!r} version {version}: its {kind} file is missing or unreadable") from exc


def query_vector(vector: np.ndarray, dim: int, catalog: str, version: int) -> np.ndarray:
    """A request's query vector (float [d]) as float32 [d]: DimensionMismatchError unless ``d == dim``,
    NonFiniteError for NaN, Inf or values beyond float32 range."""
    if vector.shape[0] != dim:
        raise DimensionMismatchError(f"vector has {vector.shape[0]} values, {catalog} version {version} has dim {dim}")
    with np.errstate(over="ignore", invalid="ignore"):
        q = vector.astype(np.float32)
    if not np.isfinite(q).all():
        raise NonFiniteError("vector holds NaN, Inf or values beyond float32 range")
    return q


class VersionEntry:
    """What the service keeps open for one catalog version (loaded lazily, shared between requests)."""

    def __init__(self, store: CatalogStore, catalog: str, version: int) -> None:
        self.store, self.catalog, self.version = store, catalog, version
        self.lock = threading.Lock()
        self._reader: PackReader | None = None
        self._codes: dict[int, np.ndarray] = {}
        self._codec_bytes: dict[int, bytes] = {}
        self._index: HNSWIndex | None = None
        self._users: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._edge: EdgeCatalog | None = None

    def edge(self) -> EdgeCatalog:
        """The version's :class:`EdgeCatalog` (``edge.rpec``, loaded once); NotFoundError when it has none."""
        with self.lock:
            if self._edge is None:
                try:
                    path = store_file(self.store, self.catalog, self.version, "edge")
                except NotFoundError:
                    raise NotFoundError(
                        f"{self.catalog} version {self.version} has no edge catalog (build it with --edge)"
                    ) from None
                try:
                    self._edge = EdgeCatalog.load(path)
                except (DataNotFoundError, SerializationError) as exc:
                    raise StoreError(
                        f"catalog {self.catalog!r} version {self.version}: its edge catalog is missing or damaged"
                    ) from exc
            return self._edge

    @property
    def reader(self) -> PackReader:
        with self.lock:
            if self._reader is None:
                path = store_file(self.store, self.catalog, self.version, "pack")
                try:
                    self._reader = PackReader(path)
                except (SerializationError, OSError) as exc:
                    raise StoreError(
                        f"catalog {self.catalog!r} version {self.version}: its pack file is damaged or unreadable "
                        f"({type(exc).__name__})"
                    ) from exc
            return self._reader

    def codes(self, layer: int) -> np.ndarray:
        """uint8 [n_items, bytes_per_vector] codes of ``layer`` (a view of the memory map for plain layers)."""
        reader = self.reader
        with self.lock:
            if layer not in self._codes:
                self._codes[layer] = reader.layer_codes(layer)
            return self._codes[layer]

    def codec_bytes(self, layer: int) -> bytes:
        """``codec(layer).to_bytes()`` of the full pack (parsed once)."""
        reader = self.reader
        with self.lock:
            if layer not in self._codec_bytes:
                self._codec_bytes[layer] = reader.codec(layer).to_bytes()
            return self._codec_bytes[layer]

    @property
    def index(self) -> HNSWIndex:
        with self.lock:
            if self._index is None:
                try:
                    path = store_file(self.store, self.catalog, self.version, "index")
                except NotFoundError:
                    raise NotFoundError(f"{self.catalog} version {self.version} has no HNSW index") from None
                info = self.store.version_info(self.catalog, self.version).get("index") or {}
                kwargs = {"expansion_search": int(info["expansion_search"])} if info.get("expansion_search") else {}
                try:
                    self._index = HNSWIndex.load(path, view=True, **kwargs)
                except (DataNotFoundError, SerializationError) as exc:
                    raise StoreError(
                        f"catalog {self.catalog!r} version {self.version}: its HNSW index is missing or damaged"
                    ) from exc
            return self._index

    def users(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sorted user ids int64 [u], row of each sorted id int64 [u], user vectors float32 [u, d] memory-mapped)."""
        with self.lock:
            if self._users is None:
                try:
                    store_file(self.store, self.catalog, self.version, "users")  # both listed and present
                    store_file(self.store, self.catalog, self.version, "user_ids")
                except NotFoundError:
                    raise NotFoundError(f"{self.catalog} version {self.version} has no user vectors") from None
                # load_array checks each file against the manifest (size, SHA-256): damage is a StoreError
                vectors = self.store.load_array(self.catalog, self.version, "users")
                uids = np.asarray(self.store.load_array(self.catalog, self.version, "user_ids", mmap=False))
                if (vectors.ndim != 2 or uids.ndim != 1 or uids.shape[0] != vectors.shape[0]
                        or uids.dtype.kind not in "iu"):  # fmt: skip
                    raise StoreError(
                        f"{self.catalog} version {self.version}: users {vectors.shape} and user_ids {uids.shape} "
                        "do not match"
                    )
                order = np.argsort(uids, kind="stable").astype(np.int64)
                self._users = (uids.astype(np.int64)[order], order, vectors)
            return self._users

    def user_vector(self, user_id: int) -> np.ndarray | None:
        """float32 [d] vector of ``user_id`` in this version, or ``None`` when the version lacks it."""
        sorted_ids, order, vectors = self.users()
        pos = int(np.searchsorted(sorted_ids, user_id))
        if pos >= sorted_ids.shape[0] or int(sorted_ids[pos]) != user_id:
            return None
        return np.asarray(vectors[int(order[pos])], dtype=np.float32)


class VersionCache:
    """LRU of :class:`VersionEntry` keyed by (catalog, version, pack SHA-256)."""

    def __init__(self, store: CatalogStore, size: int) -> None:
        self.store, self.size = store, size
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, int, str], VersionEntry] = OrderedDict()

    def get(self, catalog: str, version: int, info: dict[str, Any]) -> VersionEntry:
        key = (catalog, version, str(info.get("files", {}).get("pack", {}).get("sha256", "")))
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = VersionEntry(self.store, catalog, version)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
            return entry

    def drop(self, catalog: str, version: int | None = None) -> None:
        """Forget every entry of ``catalog`` (one ``version`` when given); requests in flight keep theirs."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == catalog and (version is None or k[1] == version)]:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class ServiceState:
    """One service's store, cache, admin key and limits (see :func:`reelpack.service.app.create_app`)."""

    store: CatalogStore
    cache: VersionCache
    api_key: bytes | None
    max_body_bytes: int
    max_refine_ids: int
    max_edge_bytes: int

    @staticmethod
    def catalog_name(catalog: str) -> str:
        """``catalog`` checked (InvalidInputError for a bad name)."""
        return validate_catalog_name(catalog)

    def version_entry(self, catalog: str, version: int) -> tuple[dict[str, Any], VersionEntry]:
        """(manifest entry, cache entry) of a published version; NotFoundError otherwise."""
        info = self.store.version_info(self.catalog_name(catalog), version)
        return info, self.cache.get(catalog, version, info)


def get_state(request: Request) -> ServiceState:
    """The :class:`ServiceState` of the app serving ``request``."""
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]
"""A route parameter ``state: State`` receives the app's :class:`ServiceState`."""


def require_admin(state: State, x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None) -> None:
    """Dependency of the admin routes: 403 when no key is configured or the key is wrong, 401 when it is missing."""
    if state.api_key is None:
        raise StarletteHTTPException(403, "admin endpoints are disabled on this server (no API key configured)")
    if x_api_key is None:
        raise StarletteHTTPException(401, "missing X-API-Key header", headers={"WWW-Authenticate": "ApiKey"})
    if not hmac.compare_digest(x_api_key.encode("utf-8"), state.api_key):
        raise StarletteHTTPException(403, "wrong API key")
