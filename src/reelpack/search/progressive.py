"""Progressive top-K: rank with a coarse layer held for every item, refine only the candidates.

A pack's layer 0 holds a coarse code for every item (for example ``simhash128``,
16 bytes); later layers hold refinement codes (``sq8``, ``pq16``, ...) addressable by
item row. A client downloads layer 0, ranks the whole catalog with it, then fetches
refinement codes only for its top ``candidates`` items and re-ranks those.

:func:`progressive_topk` does the ranking; how refinement codes are fetched is a
callback, so it can be backed by a dict, HTTP range requests or the blocks of a
:class:`~reelpack.format.PackReader` (:class:`PackLayerFetcher`).

>>> import numpy as np
>>> from reelpack.codecs import make_codec
>>> X = np.random.default_rng(0).normal(size=(500, 16)).astype(np.float32)
>>> coarse, fine = make_codec("simhash64").fit(X), make_codec("sq8").fit(X)
>>> fine_codes = fine.encode(X)
>>> res = progressive_topk(X[:2], coarse, coarse.encode(X), lambda rows: fine_codes[rows], fine, k=5, candidates=50)
>>> res.ids.shape, res.scores.shape, res.bytes_fetched <= 2 * 50 * 16
((2, 5), (2, 5), True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from reelpack.codecs.base import Codec
from reelpack.errors import (
    ChecksumError,
    DimensionMismatchError,
    DTypeError,
    InvalidInputError,
    InvalidKError,
    NotFittedError,
)
from reelpack.kernels.topk import topk
from reelpack.util.validate import as_codes, as_float_matrix, check_k

__all__ = [
    "ProgressiveResult",
    "FetchFn",
    "progressive_topk",
    "refine_candidates",
    "fetch_codes",
    "unpack_fetch",
    "PackLayerFetcher",
]

FetchFn = Callable[[np.ndarray], Union[np.ndarray, tuple[np.ndarray, int]]]
"""Maps sorted unique item rows int64 [m] to refinement codes uint8 [m, B] (row i for ``rows[i]``),
or to ``(codes, bytes_transferred)`` when the transport moves more than ``m * B`` bytes (whole blocks)."""


@dataclass
class ProgressiveResult:
    """Result of :func:`progressive_topk`; unpacks as ``ids, scores, bytes_fetched``.

    Attributes:
        ids: int64 [q, k] item rows, best first (by the refinement codec's score).
        scores: float32 [q, k] refinement scores of ``ids``.
        bytes_fetched: refinement bytes the fetch callback transferred in this call (layer 0 not counted).
        items_fetched: number of distinct items whose refinement codes were fetched (the union over queries).
        candidates: int64 [q, c] the candidate rows of each query, chosen by the coarse layer (ascending from
            :func:`progressive_topk`; as given to :func:`refine_candidates`).
    """

    ids: np.ndarray
    scores: np.ndarray
    bytes_fetched: int
    items_fetched: int
    candidates: np.ndarray

    def __iter__(self) -> Iterator[Any]:
        return iter((self.ids, self.scores, self.bytes_fetched))


def _check_codec(codec: object, name: str) -> Codec:
    if not isinstance(codec, Codec):
        raise InvalidInputError(f"{name} must be a reelpack Codec, got {type(codec).__name__}")
    if not codec.is_fitted:
        raise NotFittedError(f"{name} ({codec.spec!r}) is not fitted")
    return codec


def progressive_topk(
    queries: np.ndarray,
    coarse_codec: Codec,
    coarse_codes: np.ndarray,
    fetch_refinement: FetchFn,
    refine_codec: Codec,
    k: int,
    candidates: int,
    exclude: Sequence[np.ndarray] | None = None,
) -> ProgressiveResult:
    """Top-``k`` items per query: coarse ranking of every item, refinement of the top ``candidates``.

    1. Score every item with ``coarse_codec`` on ``coarse_codes`` (layer 0).
    2. Keep each query's ``candidates`` best items.
    3. Fetch the refinement codes of the union of those candidates once, with
       ``fetch_refinement(rows)`` (``rows`` sorted, unique).
    4. Re-score each query's candidates with ``refine_codec``; return its top ``k``.

    Scores of an item depend only on that item's code, so with ``candidates == n_items``
    the result equals ranking the whole catalog with ``refine_codec`` (ties go to the
    lower row, as in :func:`~reelpack.kernels.topk`).

    Args:
        queries: float [q, d] query vectors.
        coarse_codec: fitted codec of layer 0.
        coarse_codes: uint8 [n, B0] layer-0 codes of every item.
        fetch_refinement: see :data:`FetchFn`.
        refine_codec: fitted codec of the refinement layer (same dimension ``d``).
        k: items to return, ``1 <= k <= candidates``.
        candidates: items per query to refine, ``k <= candidates <= n``.
        exclude: optional, one int array per query of item rows never to return (items the
            user has already seen); they are dropped before candidates are chosen.

    Returns:
        :class:`ProgressiveResult` (``ids, scores, bytes_fetched = progressive_topk(...)``).
        A query with fewer than ``k`` non-excluded items gets ``-inf`` scores at the end.

    Raises:
        InvalidInputError (or a subclass: DimensionMismatchError, DTypeError, InvalidKError,
        NotFittedError) for bad arguments or a callback that returns codes of the wrong
        shape or dtype; whatever the callback raises (for example ChecksumError) propagates.
    """
    coarse_codec = _check_codec(coarse_codec, "coarse_codec")
    refine_codec = _check_codec(refine_codec, "refine_codec")
    if coarse_codec.dim != refine_codec.dim:
        raise DimensionMismatchError(
            f"coarse codec has dimension {coarse_codec.dim}, refinement codec {refine_codec.dim}"
        )
    if not callable(fetch_refinement):
        raise InvalidInputError("fetch_refinement must be callable: rows int64 [m] -> codes uint8 [m, B]")
    q = as_float_matrix(queries, "queries", dim=coarse_codec.dim)
    coarse_codes = as_codes(coarse_codes, coarse_codec.bytes_per_vector, "coarse_codes", allow_empty=False)
    n = coarse_codes.shape[0]
    candidates = check_k(candidates, n)
    k = check_k(k, n)
    if k > candidates:
        raise InvalidKError(f"k={k} is larger than candidates={candidates}")

    coarse = np.array(coarse_codec.score(q, coarse_codes), dtype=np.float32, order="C", copy=True)
    if exclude is not None:
        if len(exclude) != q.shape[0]:
            raise DimensionMismatchError(f"exclude must hold one array per query ({q.shape[0]}), got {len(exclude)}")
        for r, items in enumerate(exclude):
            items = np.asarray(items)
            if items.size == 0:
                continue
            if items.dtype.kind not in "iu" or items.ndim != 1:
                raise DTypeError(f"exclude[{r}] must be a 1-D integer array, got {items.dtype} {items.shape}")
            if items.min() < 0 or items.max() >= n:
                raise InvalidInputError(f"exclude[{r}] holds item rows outside 0..{n - 1}")
            coarse[r, items] = -np.inf

    cand = np.sort(topk(coarse, candidates)[0], axis=1)  # ascending rows: refined ties go to the lower row
    excluded = np.take_along_axis(coarse, cand, axis=1) == -np.inf
    return refine_candidates(q, cand, fetch_refinement, refine_codec, k, excluded=excluded)


def unpack_fetch(out: object, what: str) -> tuple[np.ndarray, int | None]:
    """What a fetch callback returned -> ``(array, bytes_transferred or None)``.

    A callback returns an array, or ``(array, bytes_transferred)`` when the transport moved more than the
    array's bytes (whole blocks). Raises InvalidInputError for another tuple or a byte count that is not a
    non-negative int; ``what`` names the callback in the message.
    """
    if isinstance(out, tuple):
        if len(out) != 2:
            raise InvalidInputError(f"{what} must return an array or (array, bytes_transferred)")
        arr, n_bytes = out
        if isinstance(n_bytes, bool) or not isinstance(n_bytes, (int, np.integer)) or int(n_bytes) < 0:
            raise InvalidInputError(f"{what} returned bytes_transferred {n_bytes!r}, expected a non-negative int")
        return np.asarray(arr), int(n_bytes)
    return np.asarray(out), None


def fetch_codes(
    fetch: Callable[[np.ndarray], object],
    rows: np.ndarray,
    bytes_per_vector: int,
    what: str = "fetch_refinement(rows)",
    name: str = "fetched refinement codes",
) -> tuple[np.ndarray, int]:
    """The refinement fetch shared by :func:`progressive_topk`, :func:`~reelpack.search.certified_topk` and the
    phone client: one call of ``fetch(rows)`` for the sorted unique item rows int64 [m], its answer checked.

    Returns:
        ``(codes uint8 [m, bytes_per_vector], bytes_transferred)``; the byte count is the callback's when it
        returned one, else ``codes.nbytes``.

    Raises:
        InvalidInputError: a bad ``(codes, bytes)`` answer; DTypeError / DimensionMismatchError: codes not uint8
        ``[m, bytes_per_vector]`` (``name`` in the message). Whatever ``fetch`` raises propagates.
    """
    arr, n_bytes = unpack_fetch(fetch(rows), what)
    codes = as_codes(arr, bytes_per_vector, name)
    if codes.shape[0] != rows.size:
        raise DimensionMismatchError(f"{what} returned {codes.shape[0]} codes for {rows.size} requested rows")
    return codes, int(codes.nbytes if n_bytes is None else n_bytes)


def refine_candidates(
    queries: np.ndarray,
    cand: np.ndarray,
    fetch_refinement: FetchFn,
    refine_codec: Codec,
    k: int,
    excluded: np.ndarray | None = None,
) -> ProgressiveResult:
    """The refinement step of :func:`progressive_topk`: rescore each query's candidates with the refinement codec.

    The refinement codes of the union of the candidates are fetched once (:func:`fetch_codes`, rows sorted and
    unique), each query's candidates are scored with ``refine_codec`` and its top ``k`` kept. Ties go to the
    earlier column of ``cand``: pass candidates in ascending row order for "ties to the lower row", or best
    coarse score first for "ties keep the coarse order" (the phone client). With one query its candidates'
    codes are scored in the order of ``cand``; with several, the union is scored once and gathered.

    Args:
        queries: float32 [q, d] checked query vectors.
        cand: int [q, c] candidate item rows per query (no repeats within a row), ``k <= c``.
        fetch_refinement: see :data:`FetchFn`.
        refine_codec: fitted codec of the refinement layer.
        k: items to return per query.
        excluded: optional bool [q, c], candidates never to return (scored ``-inf``, placed last).

    Returns:
        :class:`ProgressiveResult` with ``ids`` int64 [q, k] taken from ``cand``, ``scores`` float32 [q, k].
    """
    cand = np.asarray(cand)
    if cand.ndim != 2 or cand.shape[0] != queries.shape[0] or (cand.size and cand.dtype.kind not in "iu"):
        raise DimensionMismatchError(
            f"cand must be integer rows [q={queries.shape[0]}, c], got dtype {cand.dtype} shape {cand.shape}"
        )
    cand = cand.astype(np.int64, copy=False)
    k = check_k(k, cand.shape[1])
    rows = np.unique(cand)
    fine_codes, bytes_fetched = fetch_codes(fetch_refinement, rows, refine_codec.bytes_per_vector)
    pos = np.searchsorted(rows, cand)  # [q, c]: where each candidate's codes are in fine_codes
    if queries.shape[0] == 1:
        # one query: score its candidates' codes in candidate order (a kernel's rounding may depend on a row's
        # place in the batch, so this is bit for bit what scoring the candidates as given returns)
        refined = np.array(refine_codec.score(queries, fine_codes[pos[0]]), dtype=np.float32, order="C")
    else:
        refined = np.take_along_axis(refine_codec.score(queries, fine_codes), pos, axis=1)  # [q, m] -> [q, c]
    if excluded is not None:
        refined[excluded] = -np.inf
    local, scores = topk(refined, k)
    ids = np.take_along_axis(cand, local, axis=1)
    return ProgressiveResult(ids, scores, bytes_fetched, int(rows.size), cand)


class PackLayerFetcher:
    """A :data:`FetchFn` that reads refinement codes from the blocks of a pack layer.

    Only the blocks holding requested rows are read (and CRC-checked); each call returns
    ``(codes, bytes)`` where ``bytes`` is the total length of the blocks touched, which
    is what a client fetching whole blocks by HTTP range requests would download.
    ``bytes_fetched`` and ``blocks_fetched`` accumulate over calls.

    Args:
        reader: an open :class:`~reelpack.format.PackReader` (anything with ``layers``,
            ``n_items`` and ``block(layer, i)``).
        layer: the refinement layer.

    Raises (on call):
        InvalidInputError: rows outside ``0..n_items-1``.
        ChecksumError: a needed block is corrupt or missing.
    """

    def __init__(self, reader: Any, layer: int) -> None:
        layers = reader.layers
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= int(layer) < len(layers):
            raise InvalidInputError(f"layer must be an integer in 0..{len(layers) - 1}, got {layer!r}")
        info = layers[int(layer)]
        self.reader = reader
        self.layer = int(layer)
        self.items_per_block = int(info.items_per_block)
        self.bytes_per_vector = int(info.bytes_per_vector)
        self.n_items = int(reader.n_items)
        self.bytes_fetched = 0
        self.blocks_fetched = 0

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, int]:
        rows = np.asarray(rows)
        if rows.dtype.kind not in "iu" or rows.ndim != 1:
            raise DTypeError(f"rows must be a 1-D integer array, got {rows.dtype} {rows.shape}")
        rows = rows.astype(np.int64)
        out = np.empty((rows.size, self.bytes_per_vector), np.uint8)
        if rows.size == 0:
            return out, 0
        if rows.min() < 0 or rows.max() >= self.n_items:
            raise InvalidInputError(f"rows must be in 0..{self.n_items - 1}")
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        blk = srt // self.items_per_block
        starts = np.flatnonzero(np.r_[True, blk[1:] != blk[:-1]])
        ends = np.r_[starts[1:], srt.size]
        n_bytes = 0
        for s, e in zip(starts.tolist(), ends.tolist()):
            b = int(blk[s])
            block = self.reader.block(self.layer, b)
            if not block.intact:
                raise ChecksumError(f"layer {self.layer} block {b}: {block.problem}")
            out[order[s:e]] = block.codes[srt[s:e] - b * self.items_per_block]
            n_bytes += int(block.codes.nbytes)
        self.bytes_fetched += n_bytes
        self.blocks_fetched += len(starts)
        return out, n_bytes
