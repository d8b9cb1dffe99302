"""Local ranking on the phone with network refinement.

:meth:`LocalRanker.recommend` ranks the whole catalog with the cached layer 0 (the codec's own scanner,
:func:`reelpack.search.make_scanner`), then refines the best ``refine`` items with the search layer's refinement
step (:func:`reelpack.search.progressive.refine_candidates`): their layer-1 codes come from ``POST .../refine``
(a CRC32C-checked frame, :mod:`reelpack.format.refine`), are rescored with the layer-1 codec
(``GET .../codecs/1``, cached in SQLite) and the top ``k`` kept, ties in layer-0 order. When the network is down
it returns the layer-0 ranking with ``refined=False``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reelpack.codecs import Codec
from reelpack.codecs.registry import codec_from_bytes
from reelpack.device.cache import ClientCache
from reelpack.device.http import ServiceConnection
from reelpack.errors import (
    InvalidInputError,
    PackFormatError,
    SerializationError,
    ServiceError,
)
from reelpack.format import PackReader
from reelpack.format.refine import parse_refine_frame
from reelpack.search import make_scanner
from reelpack.search.progressive import refine_candidates
from reelpack.util.validate import as_float_matrix, check_k

__all__ = ["Recommendation", "LoadedLayer0", "LocalRanker"]


@dataclass
class Recommendation:
    """Top-``k`` items for one user.

    Attributes:
        ids: item ids int64 [k], best first.
        scores: float32 [k]: layer-1 scores when ``refined``, else layer-0 scores.
        version: catalog version ranked.
        refined: the top items were rescored with layer-1 codes from ``/refine``.
        bytes_downloaded: body bytes received during this call (refinement frame, codec, and a sync
            when nothing was cached).
        seconds: ``wall_seconds + simulated_seconds``.
        wall_seconds: real elapsed time.
        simulated_seconds: virtual network time charged during this call.
        note: why the result is not refined (``None`` when refined).
    """

    ids: np.ndarray
    scores: np.ndarray
    version: int
    refined: bool
    bytes_downloaded: int
    seconds: float
    wall_seconds: float = 0.0
    simulated_seconds: float = 0.0
    note: str | None = None


@dataclass
class LoadedLayer0:
    """A cached layer-0 pack opened for scoring (``item_ids`` int64 [n], sorted)."""

    version: int
    reader: PackReader
    item_ids: np.ndarray
    codec: Codec
    scanner: Any = None
    entry: dict[str, Any] = field(default_factory=dict)


class LocalRanker:
    """Opened layer 0s and fetched codecs of one catalog (per version, in memory), and the ranking itself."""

    def __init__(self, net: ServiceConnection, cache: ClientCache) -> None:
        self.net, self.cache, self.catalog = net, cache, cache.catalog
        self._loaded: dict[int, LoadedLayer0] = {}
        self._codecs: dict[tuple[int, int], Codec] = {}

    def forget_other_versions(self, version: int) -> None:
        """Drop what is held for versions other than ``version`` (the cache now keeps only that one)."""
        for v in [v for v in self._loaded if v != version]:
            del self._loaded[v]
        for key in [key for key in self._codecs if key[0] != version]:
            del self._codecs[key]

    def clear(self) -> None:
        self._loaded.clear()

    def load(self) -> LoadedLayer0:
        """The newest complete cached layer 0, opened (and its scanner built) once per version."""
        cached = self.cache.cached_versions()
        if not cached:
            raise ServiceError(f"no layer 0 of {self.catalog!r} is cached: call sync() first")
        version = cached[-1]
        if version not in self._loaded:
            data = self.cache.cached_file(version)
            try:
                reader = PackReader.from_buffer(data)
                codec = reader.codec(0)
                codes = reader.layer_codes(0)
            except PackFormatError as exc:  # the cache was damaged on disk: forget it
                self.cache.drop_files(version)
                raise ServiceError(
                    f"cached layer 0 of v{version} is corrupt ({exc}); it was dropped, sync() again"
                ) from None
            entry = self.cache.version_entry(version)
            self._loaded[version] = LoadedLayer0(version, reader, np.asarray(reader.item_ids), codec,
                                                 make_scanner(codec, codes), entry)  # fmt: skip
        return self._loaded[version]

    def codec(self, version: int, layer: int, dim: int) -> Codec:
        """The fitted codec of ``layer`` (``/codecs/{layer}``, cached in SQLite)."""
        key = (version, layer)
        if key in self._codecs:
            return self._codecs[key]
        stored = self.cache.codec_bytes(version, layer)
        codec, problem = None, ""
        if stored is not None:
            try:
                codec = codec_from_bytes(stored)
            except SerializationError:
                codec = None
        for _ in range(2 if codec is None else 0):
            response = self.net.request("GET", f"/v1/catalogs/{self.catalog}/versions/{version}/codecs/{layer}",
                                        f"codec of layer {layer}")  # fmt: skip
            try:
                codec = codec_from_bytes(response.content)
            except SerializationError as exc:
                problem = str(exc)
                continue
            self.cache.put_codec(version, layer, response.content)
            break
        if codec is None:
            raise ServiceError(f"codec of layer {layer} of v{version} failed to load twice: {problem}", status=200)
        if codec.dim != dim:
            raise ServiceError(f"codec of layer {layer} has dimension {codec.dim}, layer 0 has {dim}")
        self._codecs[key] = codec
        return codec

    def refine_codes(self, version: int, ids: np.ndarray, bytes_per_vector: int, layer: int = 1) -> np.ndarray:
        """Layer-``layer`` codes uint8 [n, B] of item ids int64 [n] from ``/refine``; a bad frame is fetched once
        more, then ServiceError."""
        problem, status = "", None
        for _ in range(2):
            response = self.net.request("POST", f"/v1/catalogs/{self.catalog}/versions/{version}/refine",
                                        "refinement", json={"ids": ids.tolist(), "layer": layer})  # fmt: skip
            try:
                return parse_refine_frame(response.content, ids, bytes_per_vector, layer)
            except PackFormatError as exc:
                problem, status = str(exc), response.status_code
        raise ServiceError(f"refinement frame failed its checks twice: {problem}", status=status)

    def recommend(self, user_vector: np.ndarray, k: int, refine: int, sync: Callable[[], object]) -> Recommendation:
        """See :meth:`reelpack.device.client.PhoneClient.recommend`; ``sync()`` is called first when nothing is
        cached (its bytes and time count in the result)."""
        net = self.net
        t0, sim0, b0 = time.perf_counter(), net.simulated(), net.bytes_received
        if not self.cache.cached_versions():
            sync()
        state = self.load()
        q = as_float_matrix(np.asarray(user_vector).reshape(1, -1) if np.ndim(user_vector) == 1 else user_vector,
                            "user_vector", dim=state.codec.dim)  # fmt: skip
        if q.shape[0] != 1:
            raise InvalidInputError(f"user_vector must be one vector [d], got shape {q.shape}")
        n = state.item_ids.size
        k = check_k(k, n)
        if not isinstance(refine, (int, np.integer)) or refine < 0:
            raise InvalidInputError(f"refine must be an int >= 0, got {refine!r}")
        r = min(max(int(refine), k), n) if refine else 0
        rows0, s0 = state.scanner.search(q, max(k, r))  # layer 0: rows [1, max(k, r)], best first
        ids, scores = state.item_ids[rows0[0][:k]], np.asarray(s0[0], np.float32)[:k]
        refined, note = False, None
        codecs = state.entry.get("codecs")
        if r == 0:
            note = "refine=0: layer 0 only"
        elif isinstance(codecs, list) and len(codecs) < 2:
            note = "the catalog has no refinement layer"
        else:
            try:
                codec1 = self.codec(state.version, 1, state.codec.dim)
                bpv = codec1.bytes_per_vector
                # candidates in layer-0 order: refined ties keep the layer-0 ranking
                res = refine_candidates(q, rows0[:, :r], lambda rows: self.refine_codes(
                    state.version, state.item_ids[rows], bpv), codec1, k)  # fmt: skip
            except ServiceError as exc:
                if exc.status is not None:
                    raise
                note = f"network unavailable, layer-0 ranking returned ({exc})"
            else:
                ids, scores, refined = state.item_ids[res.ids[0]], res.scores[0], True
        wall, sim = time.perf_counter() - t0, net.simulated() - sim0
        return Recommendation(
            ids=np.ascontiguousarray(ids, np.int64),
            scores=np.ascontiguousarray(scores, np.float32),
            version=state.version,
            refined=refined,
            bytes_downloaded=net.bytes_received - b0,
            seconds=wall + sim,
            wall_seconds=wall,
            simulated_seconds=sim,
            note=note,
        )
