"""Certified progressive top-K: refine only the items whose score bounds can still reach the top K.

A pack's layer 0 holds stage 0 of every item's code; later layers hold the next stages
and, optionally, the item vectors themselves (float16 or float32: an *exact* layer).
A client scores layer 0 for the whole catalog and then, stage by stage, fetches the
next stage's codes only for the items that can still enter the top ``k``:

* with score bounds (``codec.has_bounds``): item i stays a candidate while its upper
  bound ``est_i + half_i`` is at least the ``k``-th largest lower bound ``est - half``
  over the catalog. An item that fails this test is dropped for good: if the bounds hold,
  its true score is below the ``k``-th largest true score. The top ``k`` is *certified*
  when the ``k``-th lower bound among the ``k`` best items is at least every other item's
  upper bound; refinement stops there, when the stages run out, or when the next fetch
  would exceed ``budget_bytes``. An exact layer gives zero-width bounds, so it
  certifies whatever candidates remain.
* without bounds: a fixed number of candidates per step (``fallback_candidates``, the
  best by the current prefix score) is refined; the result is certified only when the
  exact layer covered every non-excluded item.

"Certified" means certain when the codec's bounds are certain, and holds with the
codec's ``confidence`` per (query, item) pair when they are probabilistic.

Every fetch is one call with all rows at once (sorted, unique), so it maps to one
HTTP request or one pass over a pack layer's blocks.

>>> import numpy as np
>>> from reelpack.codecs import make_codec
>>> X = np.random.default_rng(0).normal(size=(1000, 16)).astype(np.float32)
>>> pq = make_codec("pq4").fit(X, seed=0)           # one stage, no bounds: top-R fallback
>>> res = certified_topk(X[0], pq, pq.encode(X), None, k=5, exact=lambda rows: X[rows].astype(np.float16),
...                      fallback_candidates=1000)
>>> bool(res.certified), res.ids.shape, res.bytes_refined == [1000 * 32]
(True, (5,), True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from reelpack.codecs.base import Codec
from reelpack.errors import (
    DimensionMismatchError,
    DTypeError,
    InvalidInputError,
    InvalidKError,
    NotFittedError,
)
from reelpack.search.progressive import fetch_codes, unpack_fetch
from reelpack.util.validate import as_codes, as_float_matrix, check_k

__all__ = [
    "CertifiedResult",
    "CertifiedBatchResult",
    "StageFetchFn",
    "ExactFetchFn",
    "certified_topk",
    "certified_topk_batch",
]

StageFetchFn = Callable[[int, np.ndarray], Union[np.ndarray, tuple[np.ndarray, int]]]
"""``fetch(stage, rows)``: stage ``s >= 1`` codes uint8 [m, codec.stage_bytes[s]] of the sorted unique
item rows int64 [m] (row i for ``rows[i]``), or ``(codes, bytes_transferred)`` when the transport moves
more than ``m * stage_bytes[s]`` bytes (whole blocks)."""

ExactFetchFn = Callable[[np.ndarray], Union[np.ndarray, tuple[np.ndarray, int]]]
"""``exact(rows)``: item vectors float16/float32 [m, d] of the sorted unique rows int64 [m], or
``(vectors, bytes_transferred)``."""


@dataclass
class CertifiedResult:
    """Result of :func:`certified_topk`; unpacks as ``ids, scores, certified``.

    Attributes:
        ids: int64 [k] item rows, best first.
        scores: float32 [k] their scores: exact inner products when ``exact_scores``, else
            the codec's estimate from the last stage each item reached.
        certified: True when the top-``k`` *set* is certified (see the module docstring).
        exact_scores: True when every returned score comes from the exact layer.
        n_items: catalog size n.
        bytes_layer0: ``n * stage_bytes[0]``, the layer-0 codes of every item.
        bytes_refined: int per refinement step: stages ``1 .. S-1`` of the codec, then the
            exact layer when ``exact`` is given (0 for a step that did not run).
        items_fetched: int per refinement step, the rows fetched in that step.
        steps: names of the steps, e.g. ``["stage1", "exact"]``.
    """

    ids: np.ndarray
    scores: np.ndarray
    certified: bool
    exact_scores: bool
    n_items: int
    bytes_layer0: int
    bytes_refined: list[int] = field(default_factory=list)
    items_fetched: list[int] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    @property
    def bytes_total(self) -> int:
        """Layer-0 bytes plus every refinement byte."""
        return self.bytes_layer0 + sum(self.bytes_refined)

    @property
    def bytes_per_item(self) -> float:
        """``bytes_total / n_items``: the average transfer per catalog item."""
        return self.bytes_total / self.n_items

    def __iter__(self) -> Iterator[Any]:
        return iter((self.ids, self.scores, self.certified))


@dataclass
class CertifiedBatchResult:
    """Result of :func:`certified_topk_batch` over q queries.

    Attributes:
        ids: int64 [q, k]; scores: float32 [q, k]; certified: bool [q]; exact_scores: bool [q].
        bytes_refined: int64 [q, n_steps]; items_fetched: int64 [q, n_steps].
        n_items, bytes_layer0, steps: as in :class:`CertifiedResult` (the same for every query).
    """

    ids: np.ndarray
    scores: np.ndarray
    certified: np.ndarray
    exact_scores: np.ndarray
    n_items: int
    bytes_layer0: int
    bytes_refined: np.ndarray
    items_fetched: np.ndarray
    steps: list[str]

    @property
    def bytes_per_item(self) -> np.ndarray:
        """float64 [q]: each query's ``(bytes_layer0 + refinement bytes) / n_items``."""
        return (self.bytes_layer0 + self.bytes_refined.sum(axis=1)) / self.n_items

    @property
    def mean_bytes_per_item(self) -> float:
        """The average over queries of :attr:`bytes_per_item` (users' refinements differ)."""
        return float(self.bytes_per_item.mean())


# ---- validation ---------------------------------------------------------------------------------
def _check_codec(codec: object) -> Codec:
    if not isinstance(codec, Codec):
        raise InvalidInputError(f"codec must be a reelpack Codec, got {type(codec).__name__}")
    if not codec.is_fitted:
        raise NotFittedError(f"codec ({codec.spec!r}) is not fitted")
    return codec


def _check_confidence(confidence: object) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)):
        raise InvalidInputError(f"confidence must be a number in (0, 1), got {confidence!r}")
    c = float(confidence)
    if not 0.0 < c < 1.0:
        raise InvalidInputError(f"confidence must lie in (0, 1), got {c}")
    return c


def _check_budget(budget: object) -> int | None:
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or int(budget) < 0:
        raise InvalidInputError(f"budget_bytes must be a non-negative integer or None, got {budget!r}")
    return int(budget)


def _check_exclude(exclude: object, n: int, name: str = "exclude") -> np.ndarray:
    """Boolean [n] mask of excluded rows."""
    mask = np.zeros(n, dtype=bool)
    if exclude is None:
        return mask
    rows = np.asarray(exclude)
    if rows.size == 0:
        return mask
    if rows.dtype.kind not in "iu" or rows.ndim != 1:
        raise DTypeError(f"{name} must be a 1-D integer array of item rows, got {rows.dtype} {rows.shape}")
    if rows.min() < 0 or rows.max() >= n:
        raise InvalidInputError(f"{name} holds item rows outside 0..{n - 1}")
    mask[rows] = True
    return mask


def _check_fallback(fallback: object, n_steps: int, k: int, n_avail: int) -> list[int]:
    """Candidates kept before each refinement step, clipped to the available items."""
    if isinstance(fallback, (int, np.integer)) and not isinstance(fallback, bool):
        values = [int(fallback)] * n_steps
    elif isinstance(fallback, Sequence) and not isinstance(fallback, (str, bytes)):
        values = list(fallback)
        if len(values) != n_steps or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values
        ):
            raise InvalidInputError(
                f"fallback_candidates must be an int or {n_steps} ints (one per refinement step), got {fallback!r}"
            )
        values = [int(v) for v in values]
    else:
        raise InvalidInputError(f"fallback_candidates must be an int or a sequence of ints, got {fallback!r}")
    for v in values:
        if v < k:
            raise InvalidKError(f"fallback_candidates ({v}) must be at least k={k}")
    return [min(v, n_avail) for v in values]


# ---- the per-query loop -------------------------------------------------------------------------
class _Plan:
    """Everything :func:`_refine` needs that does not depend on the query."""

    def __init__(
        self,
        codec: Codec,
        layer0: np.ndarray,
        fetch: StageFetchFn | None,
        k: int,
        confidence: float,
        exact: ExactFetchFn | None,
        exact_bytes_per_item: int | None,
        budget: int | None,
        fallback: object,
    ) -> None:
        self.codec = codec
        self.widths = tuple(int(w) for w in codec.stage_bytes)
        self.layer0 = as_codes(layer0, self.widths[0], "layer0 codes", allow_empty=False)
        self.n = int(self.layer0.shape[0])
        self.n_stages = len(self.widths)
        if self.n_stages > 1 and not callable(fetch):
            raise InvalidInputError(
                f"{codec.spec!r} has {self.n_stages} stages: fetch(stage, rows) must be callable"
            )
        if exact is not None and not callable(exact):
            raise InvalidInputError("exact must be callable: rows int64 [m] -> vectors float [m, d], or None")
        if exact_bytes_per_item is not None and (
            isinstance(exact_bytes_per_item, bool)
            or not isinstance(exact_bytes_per_item, (int, np.integer))
            or int(exact_bytes_per_item) <= 0
        ):
            raise InvalidInputError(
                f"exact_bytes_per_item must be a positive int or None, got {exact_bytes_per_item!r}"
            )
        self.fetch = fetch
        self.k = k
        self.confidence = confidence
        self.exact = exact
        self.exact_bytes = None if exact_bytes_per_item is None else int(exact_bytes_per_item)
        self.budget = budget
        self.bounded = bool(codec.has_bounds)
        self.steps = [f"stage{s}" for s in range(1, self.n_stages)] + (["exact"] if exact is not None else [])
        self.fallback_spec = fallback
        if not self.bounded:
            _check_fallback(fallback, len(self.steps), k, self.n)  # type checks now; clipped per query

    def layer0_scores(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(estimate, half_width) float64 [q, n] from layer 0 (half_width 0 without bounds)."""
        if self.bounded:
            est, half = self.codec.score_bounds(queries, self.layer0, 1, self.confidence)
            return est.astype(np.float64), half.astype(np.float64)
        est = self.codec.score_prefix(queries, self.layer0, 1).astype(np.float64)
        return est, np.zeros_like(est)

    def fetch_stage(self, stage: int, rows: np.ndarray) -> tuple[np.ndarray, int]:
        """Stage ``stage`` codes uint8 [m, stage_bytes[stage]] of ``rows`` and the bytes moved (:func:`fetch_codes`)."""
        fetch = self.fetch  # callable: checked in __init__ for a codec with more than one stage
        return fetch_codes(
            lambda r: fetch(stage, r),  # type: ignore[misc]
            rows,
            self.widths[stage],
            f"fetch(stage={stage}, rows)",
            f"fetched stage-{stage} codes",
        )

    def exact_cost(self, m: int) -> int:
        dim = int(self.codec.dim)  # type: ignore[arg-type]
        per_item = self.exact_bytes if self.exact_bytes is not None else 4 * dim
        return m * per_item

    def fetch_exact(self, query: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, int]:
        """Exact scores float64 [m] of ``rows`` and the bytes moved."""
        vecs, n_bytes = unpack_fetch(self.exact(rows), "exact(rows)")  # type: ignore[misc]
        if vecs.dtype.kind != "f":
            raise DTypeError(f"exact(rows) must return float vectors, got dtype {vecs.dtype}")
        if vecs.ndim != 2 or vecs.shape != (rows.size, self.codec.dim):
            raise DimensionMismatchError(
                f"exact(rows) returned shape {vecs.shape}, expected {(rows.size, self.codec.dim)}"
            )
        if n_bytes is None:
            n_bytes = rows.size * self.exact_bytes if self.exact_bytes is not None else int(vecs.nbytes)
        scores = vecs.astype(np.float32) @ query
        if not np.isfinite(scores).all():
            raise InvalidInputError("exact(rows) returned vectors with NaN or Inf values")
        return scores.astype(np.float64), n_bytes


def _kth_largest(values: np.ndarray, k: int) -> float:
    return float(np.partition(values, values.size - k)[values.size - k])


def _top_rows(key: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` entries of ``rows`` with the largest ``key`` (ties to the lower row), best first.

    ``key`` float [m], ``rows`` int64 [m]; a partition first, so only the k best (and ties) are sorted.
    """
    if k < key.size:
        sel = key >= _kth_largest(key, k)
        key, rows = key[sel], rows[sel]
    order = np.lexsort((rows, -key))[:k]
    return rows[order]


def _refine(plan: _Plan, query: np.ndarray, est: np.ndarray, half: np.ndarray, excluded: np.ndarray) -> CertifiedResult:
    """Run the refinement loop for one query; ``est``/``half`` float64 [n] are layer 0's, modified in place."""
    n, k = plan.n, plan.k
    n_avail = n - int(excluded.sum())
    if k > n_avail:
        raise InvalidKError(f"k={k} is larger than the {n_avail} items left after exclusion")
    n_steps = len(plan.steps)
    bytes_refined = [0] * n_steps
    items_fetched = [0] * n_steps
    alive = ~excluded  # candidates: not excluded and not yet ruled out
    stage_held = 1  # code stages held for the alive rows
    exact_done = np.zeros(n, dtype=bool)
    prefix = plan.layer0  # codes of the alive rows (all rows at first); rows follow `rows`
    rows = np.arange(n, dtype=np.int64)
    spent = 0
    certified = False
    fallback = None if plan.bounded else _check_fallback(plan.fallback_spec, n_steps, k, n_avail)
    lo = np.where(excluded, -np.inf, est - half)
    hi = np.where(excluded, -np.inf, est + half)

    for step in range(n_steps + 1):
        # which items may still be in the top k, and is the top k already certain?
        if plan.bounded:
            # the k-th largest lower bound among any k items is <= the true k-th largest score
            thr = _kth_largest(lo[alive], k)
            alive &= hi >= thr  # keeps the k items whose lower bounds reach thr
            top = _top_rows(lo[alive], np.flatnonzero(alive), k)
            others = ~excluded
            others[top] = False  # ruled-out items keep their last (stale) upper bounds here
            certified = bool(lo[top].min() >= hi[others].max(initial=-np.inf))
        else:
            if step < n_steps:
                alive_rows = np.flatnonzero(alive)
                keep = _top_rows(est[alive_rows], alive_rows, fallback[step])  # type: ignore[index]
                alive[:] = False
                alive[keep] = True
            certified = bool(exact_done[~excluded].all())
        if certified or step == n_steps:
            break
        new_rows = np.flatnonzero(alive)
        is_exact = plan.steps[step] == "exact"
        cost = plan.exact_cost(new_rows.size) if is_exact else new_rows.size * plan.widths[stage_held]
        if plan.budget is not None and spent + cost > plan.budget:
            break
        if is_exact:
            scores, n_bytes = plan.fetch_exact(query, new_rows)
            est[new_rows] = scores
            half[new_rows] = 0.0
            exact_done[new_rows] = True
        else:
            codes, n_bytes = plan.fetch_stage(stage_held, new_rows)
            prefix = np.hstack([prefix[np.searchsorted(rows, new_rows)], codes])
            rows = new_rows
            stage_held += 1
            q2 = query[None, :]
            if plan.bounded:
                e, h = plan.codec.score_bounds(q2, prefix, stage_held, plan.confidence)
                est[rows], half[rows] = e[0], h[0]
            else:
                est[rows] = plan.codec.score_prefix(q2, prefix, stage_held)[0]
        lo[new_rows] = est[new_rows] - half[new_rows]
        hi[new_rows] = est[new_rows] + half[new_rows]
        bytes_refined[step] = int(n_bytes)
        items_fetched[step] = int(new_rows.size)
        spent += int(n_bytes)

    # final ranking: by the latest estimate among the remaining candidates
    alive_rows = np.flatnonzero(alive)
    ids = _top_rows(est[alive_rows], alive_rows, k)
    if certified and plan.exact is not None and not exact_done[ids].all():
        # the set is certain but its order is by estimate: fetch exact vectors for the k items only
        need = np.sort(ids[~exact_done[ids]])
        if plan.budget is None or spent + plan.exact_cost(need.size) <= plan.budget:
            scores, n_bytes = plan.fetch_exact(query, need)
            est[need] = scores
            exact_done[need] = True
            e = plan.steps.index("exact")
            bytes_refined[e] += int(n_bytes)
            items_fetched[e] += int(need.size)
            ids = _top_rows(est[ids], ids, k)
    return CertifiedResult(
        ids=ids.astype(np.int64),
        scores=est[ids].astype(np.float32),
        certified=certified,
        exact_scores=bool(exact_done[ids].all()),
        n_items=n,
        bytes_layer0=n * plan.widths[0],
        bytes_refined=bytes_refined,
        items_fetched=items_fetched,
        steps=list(plan.steps),
    )


# ---- public entry points ------------------------------------------------------------------------
def _make_plan(
    codec: Codec, layer0, fetch, k, confidence, exact, exact_bytes_per_item, budget_bytes, fallback_candidates
) -> _Plan:
    """The validated plan shared by :func:`certified_topk` and :func:`certified_topk_batch`."""
    return _Plan(
        codec,
        layer0,
        fetch,
        _check_k_int(k),
        _check_confidence(confidence),
        exact,
        exact_bytes_per_item,
        _check_budget(budget_bytes),
        fallback_candidates,
    )


def certified_topk(
    query: np.ndarray,
    codec: Codec,
    layer0: np.ndarray,
    fetch: StageFetchFn | None,
    k: int,
    confidence: float = 0.99,
    exact: ExactFetchFn | None = None,
    exact_bytes_per_item: int | None = None,
    budget_bytes: int | None = None,
    exclude: np.ndarray | None = None,
    fallback_candidates: int | Sequence[int] = 200,
) -> CertifiedResult:
    """Top-``k`` items of one query by progressive refinement, certified where the codec has bounds.

    Steps: score layer 0 (stage 0 of every item); then for each further stage ``s = 1 ..
    S-1`` of ``codec`` and finally the exact layer (when ``exact`` is given), drop the
    items that cannot reach the top ``k`` (bounds) or keep the best ``fallback_candidates``
    (no bounds), stop if the top ``k`` is certified, else fetch that step's data for the
    remaining candidates with one call and re-score them. When the set is certified before
    the exact layer ran and ``exact`` is given, the exact vectors of the ``k`` returned
    items alone are fetched to order them (within the budget).

    Args:
        query: float [d] (or [1, d]) query vector; finite.
        codec: fitted codec whose stages the pack's layers hold.
        layer0: uint8 [n, codec.stage_bytes[0]] stage-0 codes of every item.
        fetch: see :data:`StageFetchFn`; called at most once per stage; may be None for a
            single-stage codec.
        k: items to return, ``1 <= k <= n - len(unique(exclude))``.
        confidence: per-pair confidence passed to ``codec.score_bounds``, in (0, 1).
        exact: see :data:`ExactFetchFn`; optional final layer of exact item vectors.
        exact_bytes_per_item: bytes one exact vector costs on the wire (e.g. ``2 * d`` for
            float16); default: the returned array's bytes per row. Also used to predict the
            exact step's cost against ``budget_bytes`` (``4 * d`` when None).
        budget_bytes: refinement bytes (layer 0 not counted) this query may spend; a step
            whose predicted cost (rows times width) would exceed what is left is not run
            and the result is then usually not certified. None: no limit.
        exclude: int rows never to return (e.g. the user's seen items).
        fallback_candidates: without bounds, the candidates kept before each refinement
            step: one int for every step or one per step (``len(result.steps)`` ints), each >= k.

    Returns:
        :class:`CertifiedResult` (``ids, scores, certified = certified_topk(...)``).

    Raises:
        InvalidKError: k not in ``1 .. n - excluded`` or a fallback count below k.
        NonFiniteError: NaN/Inf in the query.
        DimensionMismatchError, DTypeError: wrong query dimension, layer-0 or fetched widths/dtypes.
        NotFittedError, InvalidInputError: other bad arguments.
    """
    codec = _check_codec(codec)
    q = as_float_matrix(np.asarray(query).reshape(1, -1) if np.ndim(query) == 1 else query, "query", dim=codec.dim)
    if q.shape[0] != 1:
        raise DimensionMismatchError(f"query must be one vector [d], got shape {np.shape(query)}")
    plan = _make_plan(
        codec, layer0, fetch, k, confidence, exact, exact_bytes_per_item, budget_bytes, fallback_candidates
    )
    excluded = _check_exclude(exclude, plan.n)
    check_k(k, plan.n)
    est, half = plan.layer0_scores(q)
    return _refine(plan, q[0], est[0], half[0], excluded)


def certified_topk_batch(
    queries: np.ndarray,
    codec: Codec,
    layer0: np.ndarray,
    fetch: StageFetchFn | None,
    k: int,
    confidence: float = 0.99,
    exact: ExactFetchFn | None = None,
    exact_bytes_per_item: int | None = None,
    budget_bytes: int | None = None,
    exclude: Sequence[np.ndarray] | None = None,
    fallback_candidates: int | Sequence[int] = 200,
    batch_size: int = 64,
) -> CertifiedBatchResult:
    """:func:`certified_topk` for each row of ``queries`` float [q, d].

    Layer 0 is scored for ``batch_size`` queries at a time (one matrix product); the
    refinement runs query by query, each with its own fetch calls and budget.
    ``exclude`` holds one int array per query (or is None). Other arguments as in
    :func:`certified_topk`.
    """
    codec = _check_codec(codec)
    Q = as_float_matrix(queries, "queries", dim=codec.dim)
    plan = _make_plan(
        codec, layer0, fetch, k, confidence, exact, exact_bytes_per_item, budget_bytes, fallback_candidates
    )
    check_k(k, plan.n)
    if exclude is not None and len(exclude) != Q.shape[0]:
        raise DimensionMismatchError(f"exclude must hold one array per query ({Q.shape[0]}), got {len(exclude)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")
    masks = [
        _check_exclude(None if exclude is None else exclude[i], plan.n, f"exclude[{i}]") for i in range(Q.shape[0])
    ]
    results: list[CertifiedResult] = []
    for start in range(0, Q.shape[0], int(batch_size)):
        est, half = plan.layer0_scores(Q[start : start + batch_size])
        for j in range(est.shape[0]):
            results.append(_refine(plan, Q[start + j], est[j], half[j], masks[start + j]))
    return CertifiedBatchResult(
        ids=np.stack([r.ids for r in results]),
        scores=np.stack([r.scores for r in results]),
        certified=np.array([r.certified for r in results], dtype=bool),
        exact_scores=np.array([r.exact_scores for r in results], dtype=bool),
        n_items=plan.n,
        bytes_layer0=plan.n * plan.widths[0],
        bytes_refined=np.array([r.bytes_refined for r in results], dtype=np.int64).reshape(len(results), -1),
        items_fetched=np.array([r.items_fetched for r in results], dtype=np.int64).reshape(len(results), -1),
        steps=list(plan.steps),
    )


def _check_k_int(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidKError(f"K must be an integer, got {type(k).__name__}")
    if int(k) <= 0:
        raise InvalidKError(f"K must be positive, got {int(k)}")
    return int(k)
