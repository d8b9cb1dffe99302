"""The phone side of the pack service: sync a catalog's layer 0 into SQLite, score locally, refine over the network.

:class:`PhoneClient` speaks the HTTP API of :mod:`reelpack.service.app` (``/v1``):

* :meth:`PhoneClient.sync` brings the cached ``layer0.rpk`` up to the latest version, by ``layer0_delta``
  files when cheaper, else by a resumable chunked ``Range`` download, every file checked (SHA-256, CRC32C)
  before it is kept (:mod:`reelpack.device.sync`).
* :meth:`PhoneClient.recommend` ranks the whole catalog on the phone with layer 0 and refines the best
  ``refine`` items with layer-1 codes from ``/refine`` through the search layer's refinement step
  (:mod:`reelpack.device.refinement`). When the network is down it returns the layer-0 ranking with
  ``refined=False``.
* :meth:`PhoneClient.user_vector` applies the service's quantised user-vector updates.
* :meth:`PhoneClient.edge_retriever` downloads (and caches) the hierarchical index's device summary for a user
  (``GET .../edge-summary``) and returns an :class:`~reelpack.device.edge.EdgeRetriever` whose cloud is the
  service's ``/v1/retrieve`` over this client's HTTP connection: answered on the phone when the score bound
  allows, else merged with the cloud's answer, else (service unreachable) local results with ``fallback=True``.

Network failures are retried ``max_retries`` times in a row with exponential back-off (simulated when the
transport is a virtual-clock :class:`~reelpack.device.shaper.ShapedTransport`), then ServiceError (``status``
is ``None`` when no response came back; :mod:`reelpack.device.http`). The cache is one SQLite file (WAL,
``synchronous=NORMAL``; :mod:`reelpack.device.cache`); every update is one transaction.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from reelpack.device.cache import ClientCache
from reelpack.device.http import ServiceConnection
from reelpack.device.refinement import LocalRanker, Recommendation
from reelpack.device.sync import BadFile, Synchroniser, SyncReport
from reelpack.errors import InvalidInputError, SerializationError, ServiceError
from reelpack.format import crc32c
from reelpack.format.refine import REFINE_MAGIC, parse_refine_frame

if TYPE_CHECKING:
    from reelpack.catalog.edge import DeviceSummary
    from reelpack.device.edge import EdgeRetriever

__all__ = ["PhoneClient", "SyncReport", "Recommendation", "parse_refine_frame", "REFINE_MAGIC"]


class PhoneClient:
    """A phone's view of one catalog: SQLite cache, chunked resumable sync, local scoring with refinement.

    Args:
        base_url: the service, e.g. ``"http://127.0.0.1:8000"``.
        catalog: catalog name.
        cache_path: SQLite file (created if missing).
        transport: httpx transport (default ``httpx.HTTPTransport()``); a
            :class:`~reelpack.device.shaper.ShapedTransport` simulates a phone network, and its
            ``sleep`` is used for the retry back-off.
        chunk_bytes: commit unit: the download is committed to SQLite every ``chunk_bytes`` received (and
            whatever arrived before a cut connection is kept too).
        request_bytes: bytes asked per ``Range`` request; ``None`` (default) asks ``bytes=<offset>-`` (the rest
            of the file, one round trip per connection) and commits it chunk by chunk as it streams.
        max_retries: failed attempts in a row (without progress) tolerated per request before ServiceError.
        backoff_s: first back-off; it doubles after every failure, capped at ``max_backoff_s``.
        timeout_s: httpx timeout of one request (connect timeout ``min(timeout_s, 5)``).
        user_full_every: after this many relative user-vector updates, ask for a full vector (``since`` omitted)
            so that rounding errors do not pile up.

    Not thread-safe: use one client per thread (each may open the same ``cache_path``).
    """

    def __init__(
        self,
        base_url: str,
        catalog: str,
        cache_path: str | os.PathLike[str],
        *,
        transport: httpx.BaseTransport | None = None,
        chunk_bytes: int = 64 * 1024,
        request_bytes: int | None = None,
        max_retries: int = 8,
        backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
        timeout_s: float = 30.0,
        user_full_every: int = 8,
    ) -> None:
        if not isinstance(catalog, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", catalog):
            raise InvalidInputError(f"catalog name must match ^[a-z0-9][a-z0-9_-]{{0,63}}$, got {catalog!r}")
        if not isinstance(chunk_bytes, int) or chunk_bytes < 1:
            raise InvalidInputError(f"chunk_bytes must be an int >= 1, got {chunk_bytes!r}")
        if request_bytes is not None and (not isinstance(request_bytes, int) or request_bytes < 1):
            raise InvalidInputError(f"request_bytes must be None or an int >= 1, got {request_bytes!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidInputError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if not (backoff_s >= 0 and max_backoff_s >= 0 and timeout_s > 0):
            raise InvalidInputError("backoff_s and max_backoff_s must be >= 0 and timeout_s > 0")
        self.base_url = base_url.rstrip("/")
        self.catalog = catalog
        self.cache_path = Path(cache_path)
        self.chunk_bytes = chunk_bytes
        self.request_bytes = request_bytes
        self.max_retries = max_retries
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.user_full_every = int(user_full_every)
        self.transport = transport if transport is not None else httpx.HTTPTransport()
        self._cache = ClientCache(self.cache_path, catalog)
        try:
            self._net = ServiceConnection(self.base_url, self.transport, timeout_s=timeout_s,
                                          max_retries=max_retries, backoff_s=backoff_s,
                                          max_backoff_s=max_backoff_s)  # fmt: skip
        except InvalidInputError:
            self._cache.close()
            raise
        self._ranker = LocalRanker(self._net, self._cache)
        self._sync = Synchroniser(self._net, self._cache, chunk_bytes, request_bytes,
                                  on_stored=self._ranker.forget_other_versions)  # fmt: skip

    # ---- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the HTTP client and the SQLite connection."""
        self._net.close()
        self._cache.close()
        self._ranker.clear()

    def __enter__(self) -> PhoneClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- counters (body bytes received by this client) -------------------------------------------
    @property
    def bytes_received(self) -> int:
        """Body bytes received (every answer, including failed attempts)."""
        return self._net.bytes_received

    @property
    def file_bytes_received(self) -> int:
        """Body bytes of pack and delta file downloads."""
        return self._net.file_bytes_received

    @property
    def requests(self) -> int:
        """HTTP requests sent (including failed attempts)."""
        return self._net.requests

    @property
    def retries(self) -> int:
        """Failed attempts that were retried."""
        return self._net.retries

    # ---- cache ---------------------------------------------------------------------------------
    def cached_versions(self) -> list[int]:
        """Versions whose ``layer0`` is complete in the cache, ascending."""
        return self._cache.cached_versions()

    def partial_bytes(self, version: int, kind: str = "layer0") -> int:
        """Bytes of an unfinished download of ``kind`` for ``version`` held in the cache (0 if none)."""
        return self._cache.partial_bytes(version, kind)

    def cached_file(self, version: int, kind: str = "layer0") -> bytes:
        """The complete cached file (``NotFoundError`` semantics: KeyError-free; raises StoreError if absent)."""
        return self._cache.cached_file(version, kind)

    def _assemble(self, version: int, kind: str) -> bytes:
        """The chunks of an unfinished download joined (``b""`` when none)."""
        return self._cache.assemble(version, kind)

    # ---- manifest and sync ---------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The catalog's manifest from the service (checked: ``latest`` and ``versions`` entries)."""
        return self._sync.manifest()

    def sync(self) -> SyncReport:
        """Bring the cached layer 0 up to the server's latest version (deltas when cheaper, else chunked download).

        Raises:
            ServiceError: the service is unreachable after the retries, answers an error, or a file fails its
                checks twice.
        """
        return self._sync.sync()

    # ---- local scoring -------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Dimension of the cached catalog's vectors (ServiceError when nothing is cached)."""
        return int(self._ranker.load().codec.dim)

    @property
    def n_items(self) -> int:
        """Items in the cached catalog version (ServiceError when nothing is cached)."""
        return int(self._ranker.load().item_ids.size)

    def recommend(self, user_vector: np.ndarray, k: int = 50, refine: int = 500) -> Recommendation:
        """Top-``k`` items for ``user_vector`` (float [d]): layer-0 scan on the phone, layer-1 rescoring of the top
        ``max(refine, k)`` (``refine=0``: layer 0 only). Syncs first when nothing is cached.

        Raises:
            DimensionMismatchError, NonFiniteError: bad ``user_vector``.
            InvalidKError: ``k`` is not in 1..n_items.
            ServiceError: nothing cached and the service is unreachable, or the service answers an error or a
                bad refinement frame twice. (Unreachable during refinement: layer-0 result, ``refined=False``.)
        """
        return self._ranker.recommend(user_vector, k, refine, self.sync)

    # ---- hierarchical (edge + cloud) retrieval -------------------------------------------------
    def edge_summary(self, user_id: int, budget_bytes: int | None = None, *, version: int | None = None,
                     lam: float | None = None, refresh: bool = False) -> DeviceSummary:  # fmt: skip
        """The device summary (:class:`~reelpack.catalog.edge.DeviceSummary`) of ``user_id``, cached in SQLite.

        ``version`` defaults to the manifest's latest. The cached summary is reused when it is for the same
        version, budget and ``lam`` (``refresh=True`` downloads anew). When the service is unreachable the
        cached summary of this user is returned, whatever its version (ServiceError if there is none).

        Raises:
            InvalidInputError: bad ``user_id``/``budget_bytes``/``lam``. ServiceError: the service answered an
            error (404: no edge catalog in that version, or unknown user; 413/422: budget out of range), or a
            summary failing its checks twice, or unreachable with nothing cached.
        """
        from reelpack.catalog.edge import DEFAULT_LAMBDA, DeviceSummary  # noqa: F811 - runtime import

        if isinstance(user_id, bool) or not isinstance(user_id, (int, np.integer)) or user_id < 0:
            raise InvalidInputError(f"user_id must be a non-negative integer, got {user_id!r}")
        if budget_bytes is not None and (isinstance(budget_bytes, bool)
                                         or not isinstance(budget_bytes, (int, np.integer)) or budget_bytes < 1):
            raise InvalidInputError(f"budget_bytes must be None or an integer >= 1, got {budget_bytes!r}")
        lam = DEFAULT_LAMBDA if lam is None else float(lam)
        if not 0.0 <= lam <= 4.0:
            raise InvalidInputError(f"lam must be in [0, 4], got {lam!r}")
        uid, budget = str(int(user_id)), -1 if budget_bytes is None else int(budget_bytes)
        row = self._cache.edge_summary_row(uid)
        cached = None
        if row is not None:
            try:
                cached = (row[0], row[1], row[2], DeviceSummary.from_bytes(row[3]))
            except SerializationError:
                cached = None
        try:
            if version is None:
                version = int(self.manifest()["latest"])
        except ServiceError as exc:
            if exc.status is None and cached is not None:
                return cached[3]
            raise
        if cached is not None and not refresh and cached[:3] == (version, budget, lam):
            return cached[3]
        params: dict[str, Any] = {"user_id": int(user_id), "lam": lam}
        if budget_bytes is not None:
            params["budget_bytes"] = int(budget_bytes)
        problem = ""
        for _ in range(2):
            try:
                response = self._net.request("GET", f"/v1/catalogs/{self.catalog}/versions/{version}/edge-summary",
                                         "edge summary", params=params)  # fmt: skip
            except ServiceError as exc:
                if exc.status is None and cached is not None:
                    return cached[3]
                raise
            try:
                summary = DeviceSummary.from_bytes(response.content)
            except SerializationError as exc:
                problem = str(exc)
                continue
            if summary.catalog_version != version:
                problem = f"summary is for version {summary.catalog_version}, asked for {version}"
                continue
            self._cache.put_edge_summary(uid, version, budget, lam, response.content)
            return summary
        raise ServiceError(f"edge summary for user {uid} failed its checks twice: {problem}", status=200)

    def edge_retriever(self, user_id: int, budget_bytes: int | None = None, *, version: int | None = None,
                       lam: float | None = None, policy: str = "bound", nprobe: int = 40,
                       refresh: bool = False) -> EdgeRetriever:  # fmt: skip
        """An :class:`~reelpack.catalog.edge.EdgeRetriever` over :meth:`edge_summary` of ``user_id``; its cloud is
        :class:`~reelpack.catalog.edge.ServiceCloud` (``POST /v1/retrieve`` of the summary's catalog version)
        over this client's HTTP connection. Query it with any vector, e.g. :meth:`user_vector` of the user.

        A request the summary cannot answer goes to the cloud; if the cloud fails (unreachable, an HTTP
        error) the retriever returns the local top-k with ``fallback=True`` and the reason, never raises.
        """
        from reelpack.device.edge import EdgeRetriever, ServiceCloud

        summary = self.edge_summary(user_id, budget_bytes, version=version, lam=lam, refresh=refresh)
        cloud = ServiceCloud(self._net.http, self.catalog, summary.catalog_version)
        return EdgeRetriever(summary, cloud, policy=policy, nprobe=nprobe)

    # ---- user vectors --------------------------------------------------------------------------
    def user_vector(self, user_id: int | str) -> np.ndarray:
        """The user's vector float32 [d] at the cached catalog version, from the service's quantised updates.

        Asks ``/users/{user_id}/vector?version=V&since=S`` with ``S`` the version of the vector cached for this
        user; applies ``new = old + scale * codes`` (``since`` echoed) or ``new = scale * codes`` (``since``
        null). The result is cached per user and version.

        Raises:
            ServiceError: unknown user (status 404), unreachable service, or an update failing its CRC32C twice.
        """
        uid = str(user_id)
        if not re.fullmatch(r"-?[0-9A-Za-z_.~-]{1,128}", uid):
            raise InvalidInputError(f"user_id must be 1-128 URL-safe characters, got {user_id!r}")
        cached = self.cached_versions()
        if not cached:
            self.sync()
            cached = self.cached_versions()
        version = cached[-1]
        row = self._cache.user_vector_row(uid)
        old: np.ndarray | None = None
        since: int | None = None
        n_updates = 0
        if row is not None:
            old = np.frombuffer(row[2], dtype="<f4").copy()
            if int(row[0]) == version and old.size == int(row[1]):
                return old
            # Rounding errors of successive updates add up: start again from a full vector now and then.
            if old.size == int(row[1]) and int(row[3]) < self.user_full_every:
                since, n_updates = int(row[0]), int(row[3])
        params: dict[str, int] = {"version": version}
        if since is not None:
            params["since"] = since
        problem = ""
        for _ in range(2):
            body = self._net.get_json(f"/v1/catalogs/{self.catalog}/users/{uid}/vector", "user vector", params=params)
            try:
                new = self._apply_user_update(body, version, since, old)
            except BadFile as exc:
                problem = str(exc)
                continue
            n_new = 0 if body.get("since") is None else n_updates + 1
            self._cache.put_user_vector(uid, version, new.size, new.astype("<f4").tobytes(), n_new)
            return new
        raise ServiceError(f"user-vector update for {uid!r} failed its checks twice: {problem}", status=200)

    @staticmethod
    def _apply_user_update(body: Any, version: int, since: int | None, old: np.ndarray | None) -> np.ndarray:
        try:
            dim, scale, got_since = int(body["dim"]), float(body["scale"]), body.get("since")
            codes = np.frombuffer(base64.b64decode(body["codes"], validate=True), dtype=np.int8)
            crc = int(body["crc32c"])
            got_version = int(body["version"])
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise BadFile(f"malformed user-vector update: {exc!r}") from None
        if crc32c(codes.tobytes()) != crc:
            raise BadFile("user-vector update CRC32C mismatch")
        if got_version != version or codes.size != dim or not np.isfinite(scale):
            raise BadFile(
                f"user-vector update for version {got_version}, dim {dim}, {codes.size} codes, scale {scale}"
            )
        update = np.float32(scale) * codes.astype(np.float32)
        if got_since is None:
            return update
        if since is None or int(got_since) != since or old is None or old.size != dim:
            raise BadFile(f"user-vector update is relative to version {got_since}, the cache holds {since}")
        return (old + update).astype(np.float32)
