"""The device side of hierarchical (edge + cloud) retrieval: the per-request local-vs-cloud decision, the merge
of both answers, and the local fallback when the cloud is down.

The summary the device holds (:class:`reelpack.catalog.edge.DeviceSummary`) and the cloud-side catalog it is
cut from (:class:`reelpack.catalog.edge.EdgeCatalog`) are described, with the decision rule, in
:mod:`reelpack.catalog.edge`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from reelpack.catalog.edge import DeviceSummary, check_lam
from reelpack.errors import InvalidInputError, ServiceError
from reelpack.util.validate import as_float_matrix, check_k

__all__ = ["EdgeRetriever", "EdgeResult", "ServiceCloud", "CloudFn", "merge_answers"]

CloudFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
"""``cloud(q float32 [d], k) -> (ids int64 [<=k], scores float32 [<=k])``, best first; raises on failure."""


# ================================================================================================
# Cloud client and the per-request decision
# ================================================================================================
class ServiceCloud:
    """``POST /v1/retrieve`` of the pack service as a :data:`CloudFn`.

    Args:
        http: an ``httpx.Client`` with ``base_url`` set (or fastapi's ``TestClient`` for an in-process app).
        catalog: catalog name; version: catalog version (``None``: the latest).

    Raises (on call):
        ServiceError: transport failure (``status=None``), an HTTP error (its status), or a malformed answer.
    """

    def __init__(self, http: httpx.Client, catalog: str, version: int | None = None) -> None:
        self.http, self.catalog, self.version = http, catalog, version
        self.last_version: int | None = None

    def __call__(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        body: dict[str, Any] = {"catalog": self.catalog, "vector": [float(v) for v in q], "k": int(k)}
        if self.version is not None:
            body["version"] = self.version
        try:
            r = self.http.post("/v1/retrieve", json=body)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cloud retrieve: {type(exc).__name__}: {exc}") from None
        if r.status_code >= 400:
            raise ServiceError(f"cloud retrieve: the service answered {r.status_code}: {r.text[:200]}",
                               status=r.status_code)  # fmt: skip
        try:
            js = r.json()
            ids = np.asarray(js["ids"], dtype=np.int64)
            scores = np.asarray(js["scores"], dtype=np.float32)
            self.last_version = int(js["version"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ServiceError(f"cloud retrieve: malformed answer ({exc!r})", status=r.status_code) from None
        if ids.ndim != 1 or ids.shape != scores.shape:
            raise ServiceError("cloud retrieve: ids and scores differ in shape", status=r.status_code)
        return ids, scores


@dataclass
class EdgeResult:
    """The answer to one request.

    Attributes:
        ids: int64 [<=k] item ids, best first; scores: float32 [<=k] (codec scores for local items, the
            cloud's full-precision scores for cloud items).
        source: ``"local"`` (answered on the device) or ``"cloud"`` (cloud asked; answers merged) or
            ``"local-fallback"`` (cloud needed but failed).
        fallback: True when the cloud was needed but failed; reason: why (``None`` otherwise).
        kth_local: the local ``k``-th score; frontier: the decision's frontier bound (``nan`` for coverage).
        cloud_ms: wall time of the cloud call (0 when not asked).
    """

    ids: np.ndarray
    scores: np.ndarray
    source: str
    fallback: bool
    reason: str | None
    kth_local: float
    frontier: float
    cloud_ms: float = 0.0

    @property
    def local(self) -> bool:
        return self.source != "cloud"


def merge_answers(local: tuple[np.ndarray, np.ndarray], cloud: tuple[np.ndarray, np.ndarray],
                  k: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Union of two answers (ids int64, scores float32), each id once (the cloud's score wins), top ``k``."""
    ids = np.concatenate([cloud[0], local[0]]).astype(np.int64)
    scores = np.concatenate([cloud[1], local[1]]).astype(np.float32)
    _, first = np.unique(ids, return_index=True)  # first occurrence: the cloud's entry when present
    ids, scores = ids[first], scores[first]
    order = np.argsort(-scores, kind="stable")[:k]
    return ids[order], scores[order]


class EdgeRetriever:
    """The device's retrieval path: local search, the local-vs-cloud decision, the merge, the fallback.

    Args:
        summary: the device summary.
        cloud: a :data:`CloudFn` (e.g. :class:`ServiceCloud`, or ``HNSWIndex.search`` wrapped), or ``None``
            (every cloud request then falls back with reason ``"no cloud configured"``).
        policy: ``"bound"`` or ``"coverage"`` (module docstring); lam: override of ``summary.lam``;
        nprobe: clusters the coverage rule needs on the device.
    """

    def __init__(self, summary: DeviceSummary, cloud: CloudFn | None = None, *, policy: str = "bound",
                 lam: float | None = None, nprobe: int = 40) -> None:  # fmt: skip
        if policy not in ("bound", "coverage"):
            raise InvalidInputError(f"policy must be 'bound' or 'coverage', got {policy!r}")
        if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
            raise InvalidInputError(f"nprobe must be an integer >= 1, got {nprobe!r}")
        self.summary, self.cloud, self.policy = summary, cloud, policy
        self.lam = summary.lam if lam is None else check_lam(lam)
        self.nprobe = int(nprobe)

    def decide(
        self, q: np.ndarray, k: int, exclude: np.ndarray | None = None
    ) -> tuple[bool, np.ndarray, np.ndarray, float]:
        """(answer locally?, local ids, local scores, frontier) for one query float32 [d]."""
        ids, scores = self.summary.local_top_k(q, k, exclude)
        if ids.size < k:
            return False, ids, scores, float("nan")
        if self.policy == "coverage":
            return self.summary.covered(q, self.nprobe), ids, scores, float("nan")
        f = self.summary.frontier(q, self.lam)
        return bool(scores[-1] >= f), ids, scores, f

    def retrieve(self, user_vector: np.ndarray, k: int = 50, *, exclude: np.ndarray | None = None) -> EdgeResult:
        """Top-``k`` for one request (``user_vector`` float [d]), never returning the ids in ``exclude``.

        The cloud is asked for ``min(k + len(exclude), 1000)`` items, excluded ids are dropped before the merge.

        Raises:
            DimensionMismatchError, NonFiniteError: bad vector. InvalidKError: ``k`` not in 1..1000.
            (A failing cloud never raises: see ``fallback``.)
        """
        q = as_float_matrix(np.asarray(user_vector).reshape(1, -1), "user_vector", dim=self.summary.dim)[0]
        k = check_k(k, 1000)
        if exclude is not None:
            exclude = np.asarray(exclude, dtype=np.int64).reshape(-1)
        n_ex = 0 if exclude is None else int(exclude.size)
        local, ids, scores, f = self.decide(q, k, exclude)
        kth = float(scores[-1]) if scores.size else float("-inf")
        if local:
            return EdgeResult(ids, scores, "local", False, None, kth, f)
        if self.cloud is None:
            return EdgeResult(ids, scores, "local-fallback", True, "no cloud configured", kth, f)
        t0 = time.perf_counter()
        try:
            c_ids, c_scores = self.cloud(q, min(k + n_ex, 1000))
            c_ids = np.asarray(c_ids, dtype=np.int64).reshape(-1)
            c_scores = np.asarray(c_scores, dtype=np.float32).reshape(-1)
            if c_ids.shape != c_scores.shape:
                raise ServiceError("cloud answer: ids and scores differ in shape")
        except (ServiceError, httpx.HTTPError, OSError, TimeoutError) as exc:
            ms = (time.perf_counter() - t0) * 1e3
            return EdgeResult(ids, scores, "local-fallback", True, f"cloud unavailable: {exc}", kth, f, ms)
        ms = (time.perf_counter() - t0) * 1e3
        keep = c_ids >= 0
        if n_ex:
            keep &= ~np.isin(c_ids, exclude)
        m_ids, m_scores = merge_answers((ids, scores), (c_ids[keep], c_scores[keep]), k)
        return EdgeResult(m_ids, m_scores, "cloud", False, None, kth, f, ms)
