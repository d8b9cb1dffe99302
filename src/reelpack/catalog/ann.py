"""Server-side approximate nearest neighbours: an HNSW graph (usearch) over float32 item vectors, inner product.

The service answers online users (``POST /v1/retrieve``) with :class:`HNSWIndex`; phones score packs instead.
Keys of the graph are the item ids themselves (non-negative int64, stored as usearch's uint64 keys), so a search
returns item ids with no lookup table.

Defaults (``connectivity=32``, ``expansion_add=128``, ``expansion_search=256``) were chosen on a SYNTHETIC clustered
catalog of 100k x 64 unit vectors (``reelpack.bench.speed.synthetic_catalog``): recall@50 against exact float32
inner product >= 0.95 (re-measure with ``recall_at``).

usearch's ``ip`` metric is the distance ``1 - <q, x>``; :meth:`HNSWIndex.search` returns the score ``1 - distance``
(float32, so it can differ from the exact inner product by a few ulps of 1.0).

usearch is the ``[serve]`` extra: it is imported when an index is built or loaded, so this module imports
without it (a missing usearch raises :class:`~reelpack.errors.MissingExtraError`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.errors import (
    DataNotFoundError,
    DimensionMismatchError,
    EmptyInputError,
    InvalidInputError,
    SerializationError,
)
from reelpack.util.atomic import atomic_path
from reelpack.util.extras import require
from reelpack.util.ids import check_item_ids
from reelpack.util.validate import as_float_matrix, check_k

__all__ = ["HNSWIndex", "require_usearch", "DEFAULT_CONNECTIVITY", "DEFAULT_EXPANSION_ADD", "DEFAULT_EXPANSION_SEARCH", "exact_top_k"]

DEFAULT_CONNECTIVITY = 32
DEFAULT_EXPANSION_ADD = 128
DEFAULT_EXPANSION_SEARCH = 256
_MAX_PARAM = 4096


def _check_param(name: str, value: object, lo: int = 1, hi: int = _MAX_PARAM) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= int(value) <= hi:
        raise InvalidInputError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    return int(value)


def require_usearch() -> Any:
    """``usearch.index`` (the ``[serve]`` extra), or :class:`~reelpack.errors.MissingExtraError`."""
    return require("usearch.index", "serve", "the HNSW index (build-catalog without --no-index, reelpack serve)")


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """Row indexes int64 [q, k] of the exact top-``k`` inner products (float32 GEMM), best first.

    Args:
        vectors: float32 [n, d]; queries: float32 [q, d]; k: 1..n.
    """
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for lo in range(0, queries.shape[0], chunk):
        s = queries[lo : lo + chunk] @ vectors.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
        out[lo : lo + chunk] = np.take_along_axis(part, order, axis=1)
    return out


class HNSWIndex:
    """HNSW graph over float32 item vectors (usearch, metric inner product), keyed by item id.

    Attributes:
        dim: vector dimension d.
        n_items: number of indexed items.
        expansion_search: size of the candidate list at query time (settable; larger = better recall, slower).
        connectivity, expansion_add: build parameters (as given to :meth:`build`, or as read from the file).
        ids: the item ids int64 [n] the index was built with, in the order given to :meth:`build`
            (``None`` for an index from :meth:`load`: pass ``ids`` to :meth:`recall_at`).
    """

    def __init__(self, index: object, *, ids: np.ndarray | None = None, path: Path | None = None) -> None:
        """Wrap a usearch ``Index`` (use :meth:`build` or :meth:`load`)."""
        self._index = index
        self.ids = ids
        self.path = path

    # ------------------------------------------------------------------ build / io
    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        *,
        connectivity: int = DEFAULT_CONNECTIVITY,
        expansion_add: int = DEFAULT_EXPANSION_ADD,
        expansion_search: int = DEFAULT_EXPANSION_SEARCH,
        seed: int = 0,
        threads: int = 1,
    ) -> HNSWIndex:
        """Build the graph.

        Args:
            vectors: float32 [n, d] item vectors (finite).
            ids: unique non-negative int64 [n] item ids (the keys searches return).
            connectivity: HNSW M (edges per node), 2..4096.
            expansion_add: candidate list size while inserting.
            expansion_search: candidate list size at query time (settable later).
            seed: items are inserted in the order of a permutation drawn with this seed; with ``threads=1``
                the same arguments give the same graph, byte for byte.
            threads: insertion threads (0 = all cores; more than 1 makes the graph depend on scheduling).
        """
        X = as_float_matrix(vectors, "vectors")
        key_ids = check_item_ids(ids, what="ids", n=X.shape[0])
        connectivity = _check_param("connectivity", connectivity, 2)
        expansion_add = _check_param("expansion_add", expansion_add)
        expansion_search = _check_param("expansion_search", expansion_search)
        threads = _check_param("threads", threads, 0, 1024)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise InvalidInputError(f"seed must be an integer, got {seed!r}")
        index = require_usearch().Index(
            ndim=X.shape[1], metric="ip", dtype="f32", connectivity=connectivity,
            expansion_add=expansion_add, expansion_search=expansion_search,
        )  # fmt: skip
        order = np.random.default_rng(int(seed)).permutation(X.shape[0])
        index.add(key_ids[order].astype(np.uint64), np.ascontiguousarray(X[order]), threads=threads)
        return cls(index, ids=key_ids)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index to ``path`` atomically (temp file in the same folder, fsync, rename)."""
        path = Path(path)
        with atomic_path(path, mode=0o644) as tmp:  # 0644: a service may read it as another user
            self._index.save(str(tmp))
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, view: bool = True, expansion_search: int = DEFAULT_EXPANSION_SEARCH
    ) -> HNSWIndex:
        """Open an index written by :meth:`save`.

        Args:
            path: the ``.usearch`` file.
            view: memory-map the file instead of reading it (the file must not be modified while in use;
                :meth:`save` replaces files by rename, which is safe).
            expansion_search: query-time candidate list size (not stored in the file).

        Raises:
            DataNotFoundError: no such file.
            SerializationError: not a usearch dense index, truncated, or not float32 inner product.
        """
        usearch_index = require_usearch()
        Index, MetricKind, ScalarKind = usearch_index.Index, usearch_index.MetricKind, usearch_index.ScalarKind
        path = Path(path)
        if not path.is_file():
            raise DataNotFoundError(f"HNSW index file not found: {path}")
        expansion_search = _check_param("expansion_search", expansion_search)
        try:
            meta = Index.metadata(str(path))
        except (ValueError, RuntimeError) as exc:
            raise SerializationError(f"{path} is not a usearch index: {exc}") from None
        if meta is None:
            raise SerializationError(f"{path} is not a usearch index")
        if meta.get("kind_metric") != MetricKind.IP or meta.get("kind_scalar") != ScalarKind.F32:
            raise SerializationError(
                f"{path}: expected an inner-product float32 index, found metric {meta.get('kind_metric')} "
                f"and scalar {meta.get('kind_scalar')}"
            )
        try:
            index = Index.restore(str(path), view=view)
        except (ValueError, RuntimeError) as exc:
            raise SerializationError(f"cannot open HNSW index {path}: {exc}") from None
        if index is None or int(index.ndim) != int(meta["dimensions"]) or int(index.size) < 1:
            raise SerializationError(f"cannot open HNSW index {path}: empty or inconsistent")
        index.expansion_search = expansion_search
        return cls(index, path=path)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return int(self._index.ndim)

    @property
    def n_items(self) -> int:
        return int(self._index.size)

    @property
    def connectivity(self) -> int:
        return int(self._index.connectivity)

    @property
    def expansion_add(self) -> int:
        return int(self._index.expansion_add)

    @property
    def expansion_search(self) -> int:
        return int(self._index.expansion_search)

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        self._index.expansion_search = _check_param("expansion_search", value)

    def __repr__(self) -> str:
        return (
            f"HNSWIndex(n_items={self.n_items}, dim={self.dim}, connectivity={self.connectivity}, "
            f"expansion_search={self.expansion_search})"
        )

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int, *, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k`` by inner product.

        Args:
            queries: float32 [q, d] (or one vector [d]).
            k: 1..n_items.
            threads: search threads (0 = all cores).

        Returns:
            (ids int64 [q, k], scores float32 [q, k]) best first. Should the graph yield fewer than ``k``
            results for a query (rare; only with tiny ``expansion_search``), the missing slots hold id -1
            and score -inf.
        """
        Q = np.asarray(queries)
        if Q.ndim == 1:
            Q = Q[None, :]
        Q = as_float_matrix(Q, "queries", dim=self.dim)
        k = check_k(k, self.n_items)
        threads = _check_param("threads", threads, 0, 1024)
        m = self._index.search(Q, k, threads=threads)
        ids = np.full((Q.shape[0], k), -1, dtype=np.int64)
        dist = np.full((Q.shape[0], k), np.inf, dtype=np.float32)
        if hasattr(m, "counts"):  # BatchMatches
            counts = np.asarray(m.counts, dtype=np.int64).reshape(Q.shape[0])
            ids[:] = np.asarray(m.keys).reshape(Q.shape[0], k).astype(np.int64)
            dist[:] = np.asarray(m.distances, dtype=np.float32).reshape(Q.shape[0], k)
        else:  # one query: Matches holds only the results found
            counts = np.array([len(m.keys)], dtype=np.int64)
            ids[0, : counts[0]] = np.asarray(m.keys).astype(np.int64)
            dist[0, : counts[0]] = np.asarray(m.distances, dtype=np.float32)
        scores = (np.float32(1.0) - dist).astype(np.float32)
        missing = np.arange(k)[None, :] >= counts[:, None]
        if missing.any():
            ids[missing] = -1
            scores[missing] = -np.inf
        return ids, scores

    def recall_at(
        self, vectors: np.ndarray, queries: np.ndarray, k: int = 50, *, ids: np.ndarray | None = None
    ) -> float:
        """Mean recall@k of :meth:`search` against exact float32 inner-product search over ``vectors``.

        Args:
            vectors: float32 [n, d], the indexed items' vectors in the order of ``ids``.
            queries: float32 [q, d].
            k: 1..n.
            ids: int64 [n] ids of the rows of ``vectors`` (default: the ids given to :meth:`build`).

        Returns:
            mean over queries of |approx top-k ∩ exact top-k| / k, in [0, 1].
        """
        X = as_float_matrix(vectors, "vectors", dim=self.dim)
        if ids is None:
            if self.ids is None:
                raise InvalidInputError("recall_at on a loaded index needs the ids of the vectors' rows (ids=...)")
            ids = self.ids
        row_ids = check_item_ids(ids, what="ids", n=X.shape[0])
        Q = as_float_matrix(queries, "queries", dim=self.dim)
        if X.shape[0] != self.n_items:
            raise DimensionMismatchError(f"vectors has {X.shape[0]} rows, the index {self.n_items} items")
        if Q.shape[0] == 0:
            raise EmptyInputError("queries is empty")
        k = check_k(k, X.shape[0])
        exact = row_ids[exact_top_k(X, Q, k)]
        approx, _ = self.search(Q, k)
        hits = (approx[:, :, None] == exact[:, None, :]).any(axis=2).sum(axis=1)
        return float(hits.mean() / k)
