"""faiss twins of reelpack codecs, ranked through faiss's own search.

Each reelpack codec with a faiss counterpart at the same bytes per item is
measured against it in the same run, on the same embeddings and users:

============================  ===========================================
reelpack spec                 faiss index (inner product)
============================  ===========================================
``float32``                   ``IndexFlatIP``  (``"Flat"``)
``fp16``                      ``IndexScalarQuantizer`` (``"SQfp16"``)
``sq8`` / ``sq4``             ``IndexScalarQuantizer`` (``"SQ8"``/``"SQ4"``)
``pqM``                       ``IndexPQ`` (``"PQMnp"``, 8 bits per sub-quantiser)
``opqM,pqM``                  ``IndexPreTransform(OPQMatrix, IndexPQ)`` (``"OPQM,PQMnp"``)
``simhashB[-hamming]``        ``IndexLSH(d, B)`` (random rotation, Hamming)
============================  ===========================================

``np`` turns off faiss's polysemous code re-ordering, which changes neither the
codes' quality nor the search, only adds minutes of training.

The ranking is faiss's ``search`` output. To exclude each user's train items
(as the reelpack side does), faiss searches ``K + max train items in the batch``
neighbours and the train items are filtered out afterwards, keeping faiss's
order; users are batched by train count so that heavy users share batches.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import faiss
import numpy as np

from reelpack.util.validate import as_float_matrix, check_k
from reelpack.data.interactions import Split
from reelpack.errors import InvalidInputError
from reelpack.metrics.quality import hit_matrix

LSQ_MAX_TRAIN = 20_000

__all__ = ["FaissTwin", "faiss_twin_spec", "fit_faiss_twin", "faiss_rank_users"]


def faiss_twin_spec(spec: str) -> str | None:
    """faiss ``index_factory`` string of the twin of reelpack ``spec`` (``None`` if it has none)."""
    s = spec.strip().lower()
    if s in ("float32", "flat"):
        return "Flat"
    if s in ("fp16", "float16"):
        return "SQfp16"
    if m := re.fullmatch(r"sq([48])(-p[0-9.]+)?", s):
        return f"SQ{m.group(1)}" if m.group(2) is None else None
    if m := re.fullmatch(r"pq(\d+)", s):
        return f"PQ{m.group(1)}np"
    if m := re.fullmatch(r"pq(\d+)x4", s):
        return f"PQ{m.group(1)}x4np"
    if m := re.fullmatch(r"opq(\d+),pq(\d+)", s):
        return f"OPQ{m.group(1)},PQ{m.group(2)}np"
    if m := re.fullmatch(r"simhash(\d+)(-hamming)?", s):
        return f"LSH{m.group(1)}"
    return None


@dataclass
class FaissTwin:
    """A trained faiss index holding the catalog, named by its factory string."""

    factory: str
    index: faiss.Index
    fit_seconds: float
    encode_seconds: float

    @property
    def name(self) -> str:
        return f"faiss:{self.factory}"

    @property
    def bytes_per_vector(self) -> int:
        return int(self.index.sa_code_size())


def fit_faiss_twin(factory: str, items: np.ndarray, seed: int = 0, max_train: int = 100_000) -> FaissTwin:
    """Train the faiss index ``factory`` on (a seeded sample of) ``items`` and add them all.

    Args:
        factory: faiss factory string (``"PQ16"``, ``"OPQ16,PQ16"``, ``"SQ8"``, ``"LSH128"``...).
        items: float32 [n, d] catalog embeddings.
    """
    items = as_float_matrix(items, "items")
    d = items.shape[1]
    if m := re.fullmatch(r"LSH(\d+)", factory):
        index: faiss.Index = faiss.IndexLSH(d, int(m.group(1)), True, False)
    else:
        try:
            index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise InvalidInputError(f"faiss cannot build {factory!r} at d={d}: {exc}") from None
    if factory.startswith("LSQ"):
        # faiss's LSQ trains and encodes by iterated local search: 150 s for 20k x 64-d rows at 8 codebooks
        # on one core, so its training sample is capped (the encoding of every item stays exact).
        max_train = min(max_train, LSQ_MAX_TRAIN)
    rng = np.random.default_rng(seed)
    sample = items if len(items) <= max_train else items[np.sort(rng.choice(len(items), max_train, replace=False))]
    _seed_faiss(index, seed)
    t0 = time.perf_counter()
    index.train(sample)
    t1 = time.perf_counter()
    index.add(items)
    t2 = time.perf_counter()
    return FaissTwin(factory, index, t1 - t0, t2 - t1)


def _seed_faiss(index: faiss.Index, seed: int) -> None:
    """Set the seeds faiss exposes (k-means of PQ/OPQ, the LSH rotation) for reproducible twins."""
    sub = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    if hasattr(sub, "pq"):
        sub.pq.cp.seed = seed
        sub.pq.cp.min_points_per_centroid = 1  # only silences faiss's small-sample warning
    if isinstance(index, faiss.IndexLSH):
        if index.rotate_data:
            index.rrot.init(seed + 12345)


def faiss_rank_users(
    twin: FaissTwin,
    user_emb: np.ndarray,
    split: Split,
    users: np.ndarray,
    k: int,
    batch_size: int = 1024,
    progress=None,
) -> tuple[np.ndarray, float]:
    """Top-``k`` item indexes int64 [len(users), k] by faiss's search, train items excluded.

    Returns:
        (ranked ids in the order of ``users``, total seconds spent inside ``index.search``).
    """
    k = check_k(k, split.n_items)
    users = np.asarray(users, np.int64)
    n_train = np.diff(split.train_indptr)[users]
    order = np.argsort(n_train, kind="stable")
    out = np.empty((len(users), k), np.int64)
    search_seconds = 0.0
    for start in range(0, len(users), batch_size):
        rows = order[start : start + batch_size]
        batch = users[rows]
        k_search = min(split.n_items, k + int(n_train[rows].max()))
        q = np.ascontiguousarray(user_emb[batch], dtype=np.float32)
        t0 = time.perf_counter()
        _, ids = twin.index.search(q, k_search)
        search_seconds += time.perf_counter() - t0
        is_train = hit_matrix(np.maximum(ids, 0), batch, split.train_indptr, split.train_items) | (ids < 0)
        keep_first = np.argsort(is_train, axis=1, kind="stable")[:, :k]
        out[rows] = np.take_along_axis(ids, keep_first, axis=1)
        if progress is not None:
            progress(len(batch))
    return out, search_seconds
