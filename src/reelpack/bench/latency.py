"""Query latency of every bench method, timed the way a phone ranks: one user, one query at a time.

The quality columns of a bench row come from batched ranking (many users scored at once, see
:func:`reelpack.metrics.ranking.rank_users`); its ``query_ms`` does not. A device ranks for one user,
so each method is timed through its single-query path (:data:`LATENCY_PATHS`):

* reelpack codecs: the fused scanner a device uses, ``reelpack.search.make_scanner(codec, codes)``
  (default options), ``scanner.search(q, k')`` for one query ``q`` float32 [d];
* faiss indexes: ``index.search(q[None], k')``, one query, faiss pinned to one thread;
* float32 (the reference): ``item_emb @ q`` (one BLAS GEMV, float32 [n]) and
  :func:`reelpack.kernels.topk.topk` of that row.

``k' = min(n_items, K + n_train(user))``: each method over-fetches by the user's train items, which
are then filtered out (as the faiss side of the quality measurement does); only the search call is
timed, the filtering (identical for every method) is not.

Sampling and timing: a seeded sample of ``latency_users`` of the evaluated users (the same users for
every method); every method first answers ``latency_warmup`` untimed queries; then the sampled users
are taken in turn and, for each, every method answers that user's query once (``perf_counter``
around the one call), the methods' order rotated user by user, so that all methods see the same
machine noise. Each row gets the median (``query_ms``) and 90th percentile (``query_ms_p90``) in
milliseconds, ``latency_path`` (what was timed), ``latency_users`` and ``latency_overlap@K``: the
mean share of the single-query top-K (after filtering) found in the row's batched top-K for the
same user (1.0 when both paths rank alike; a scanner that quantises the query, such as simhash's,
can differ slightly).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reelpack.data.interactions import Split
from reelpack.errors import InvalidInputError

__all__ = [
    "LATENCY_PATHS", "LatencyBench", "dense_search", "faiss_search", "latency_note", "median_seconds", "scanner_search"
]  # fmt: skip

LATENCY_PATHS: dict[str, str] = {
    "reference": "single query: numpy GEMV (item_emb @ q, BLAS, 1 thread) + reelpack.kernels.topk",
    "reelpack": "single-query device path: reelpack.search.make_scanner(codec, codes).search(q, k)",
    "faiss": "faiss index.search(q[None], k), 1 query, 1 thread",
}
"""What ``query_ms`` times, per row ``kind`` (stored in each row as ``latency_path``)."""

SearchFn = Callable[[np.ndarray, int], np.ndarray]
"""Maps one query float32 [d] and a depth k' to the top-k' item indexes int64 [k'] (-1: no result)."""


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls (numba
    compiles on first use, and a first call also pays page faults)."""
    if repeats < 1 or warmup < 0:
        raise InvalidInputError(f"median_seconds needs repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def dense_search(item_emb: np.ndarray) -> SearchFn:
    """The float32 single-query path: ``item_emb @ q`` then :func:`reelpack.kernels.topk.topk`.

    Args:
        item_emb: float32 [n, d] catalog embeddings (C-contiguous; copied once if not).
    """
    from reelpack.kernels.topk import topk

    items = np.ascontiguousarray(item_emb, dtype=np.float32)

    def search(q: np.ndarray, k: int) -> np.ndarray:
        return topk((items @ q)[None, :], k)[0][0]

    return search


def scanner_search(codec: Any, codes: np.ndarray) -> SearchFn:
    """The device path of a fitted reelpack ``codec`` over its ``codes`` uint8 [n, bytes_per_vector]."""
    from reelpack.search import make_scanner

    scanner = make_scanner(codec, codes)

    def search(q: np.ndarray, k: int) -> np.ndarray:
        return scanner.search(q, k)[0][0]

    return search


def faiss_search(index: Any) -> SearchFn:
    """faiss's single-query search of ``index`` (anything with faiss's ``search(x [1, d], k)``)."""

    def search(q: np.ndarray, k: int) -> np.ndarray:
        return index.search(q[None, :], k)[1][0]

    return search


@dataclass
class _Entry:
    row: dict[str, Any]
    search: SearchFn
    queries: np.ndarray  # float32 [m, d], the sampled users' queries for this method
    batch_topk: np.ndarray  # int64 [m, K], the row's batched top-K of the sampled users


@dataclass
class LatencyBench:
    """The single-query timing of one bench run: the user sample, then one entry per method.

    Use :meth:`make`, :meth:`add` each method after its quality is measured, then :meth:`run` once.

    Attributes:
        split: the run's split (train items to exclude).
        users: int64 [m] the sampled user indexes.
        positions: int64 [m] their rows among the run's evaluated users.
        k: the ranking depth K.
        warmup: untimed queries per method before timing.
    """

    split: Split
    users: np.ndarray
    positions: np.ndarray
    k: int
    warmup: int
    entries: list[_Entry] = field(default_factory=list)

    @classmethod
    def make(cls, split: Split, eval_users: np.ndarray, k: int, n_users: int, warmup: int, seed: int) -> LatencyBench:
        """A seeded sample of ``min(n_users, len(eval_users))`` of the evaluated users (sorted)."""
        if n_users < 1 or warmup < 0:
            raise InvalidInputError(f"latency needs n_users >= 1 and warmup >= 0, got {n_users} and {warmup}")
        m = min(n_users, len(eval_users))
        pos = np.sort(np.random.default_rng([seed, 5]).choice(len(eval_users), m, replace=False)).astype(np.int64)
        return cls(split, np.asarray(eval_users, np.int64)[pos], pos, int(k), int(warmup))

    def add(self, row: dict[str, Any], search: SearchFn, user_emb: np.ndarray, ranked: np.ndarray) -> None:
        """Register a method: its ``row`` (filled by :meth:`run`), its single-query ``search``, the query
        embeddings ``user_emb`` float32 [n_users, d] it ranks with, and its batched top-K ``ranked``
        int64 [n_eval_users, K] (rows in the order of the run's evaluated users)."""
        queries = np.ascontiguousarray(user_emb[self.users], dtype=np.float32)
        self.entries.append(_Entry(row, search, queries, np.asarray(ranked)[self.positions]))

    def _depth(self, i: int) -> int:
        u = self.users[i]
        n_train = int(self.split.train_indptr[u + 1] - self.split.train_indptr[u])
        return min(self.split.n_items, self.k + n_train)

    def run(self) -> None:
        """Time every registered method on every sampled user; write the latency fields into the rows."""
        n, m = len(self.entries), len(self.users)
        if n == 0 or m == 0:
            return
        for w in range(self.warmup):  # untimed: JIT compilation, scratch buffers, caches
            for e in self.entries:
                e.search(e.queries[w % m], self._depth(w % m))
        seconds = np.empty((n, m))
        overlap = np.empty((n, m))
        indptr, train = self.split.train_indptr, self.split.train_items
        clock = time.perf_counter
        for i in range(m):
            depth = self._depth(i)
            u = self.users[i]
            seen = train[indptr[u] : indptr[u + 1]]
            for j in np.roll(np.arange(n), -(i % n)):  # rotate the order: no method always runs first
                e = self.entries[j]
                q = e.queries[i]
                t0 = clock()
                ids = e.search(q, depth)
                seconds[j, i] = clock() - t0
                ids = np.asarray(ids, np.int64)
                top = ids[(ids >= 0) & ~np.isin(ids, seen)][: self.k]
                overlap[j, i] = np.isin(top, e.batch_topk[i]).sum() / self.k
        for j, e in enumerate(self.entries):
            e.row["query_ms"] = 1e3 * float(np.median(seconds[j]))
            e.row["query_ms_p90"] = 1e3 * float(np.percentile(seconds[j], 90))
            e.row["latency_path"] = LATENCY_PATHS.get(str(e.row.get("kind")), LATENCY_PATHS["reelpack"])
            e.row["latency_users"] = int(m)
            e.row[f"latency_overlap@{self.k}"] = float(overlap[j].mean())

    def summary(self) -> dict[str, Any]:
        """Provenance of the timing (for ``provenance["latency"]``)."""
        return {
            "n_users": int(len(self.users)),
            "warmup": self.warmup,
            "k": self.k,
            "statistic": "median (query_ms) and 90th percentile (query_ms_p90) of single-query wall-clock times",
            "paths": dict(LATENCY_PATHS),
            "exclusion": "search depth K + the user's train items; train items filtered out after the timed call",
            "order": "users in turn; for each user every method once, the order rotated user by user",
        }


def latency_note(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """One sentence saying what the ``query_ms`` of ``rows`` (bench rows) timed, for reports.

    Names each distinct ``latency_path`` with the kinds of row timed through it; rows without one
    (hand-made rows, results of other tools) are said to carry an unspecified or batched figure.
    ``None`` when no row has a ``query_ms``.
    """
    timed = [r for r in rows if r.get("query_ms") is not None]
    if not timed:
        return None
    kinds: dict[str, list[str]] = {}
    for r in timed:
        path = r.get("latency_path")
        if path:
            kind = {"reference": "float32", "reelpack": "reelpack", "faiss": "faiss"}.get(str(r.get("kind")), str(r.get("kind")))
            if kind not in kinds.setdefault(str(path), []):
                kinds[str(path)].append(kind)
    if not kinds:
        return (
            "query ms: path not recorded in these results (before results schema 3 it was the batched ranking "
            "time per user, rank s / users, not the latency of one query)."
        )
    users = sorted({int(r["latency_users"]) for r in timed if isinstance(r.get("latency_users"), (int, float))})
    n = f"{users[0]}" if len(users) == 1 else "sampled"
    parts = "; ".join(f"{', '.join(v)}: {p}" for p, v in kinds.items())
    untimed = len(timed) - sum(1 for r in timed if r.get("latency_path"))
    tail = f" ({untimed} row(s) without a recorded path)" if untimed else ""
    return (
        f"query ms is MEASURED on this machine: the median over {n} users of ONE query at a time (90th percentile: query_ms_p90), "
        f"one thread, K + the user's train items fetched, timed through -- {parts}{tail}."
    )
