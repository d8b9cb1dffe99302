"""Scanners: a catalog of codes prepared once for fused top-K search, queried many times.

Every codec says how it is searched: :meth:`reelpack.codecs.Codec.scanner` returns a :class:`Scanner`.
The base class gives :class:`GenericScanner` (``codec.score`` over row blocks + top-K); the families with
a fused kernel in :mod:`reelpack.kernels.scan` override it (PQ 8-bit and 4-bit, OPQ, anisotropic PQ,
SQ8/SQ4, SimHash, RaBitQ). :func:`reelpack.search.make_scanner` is the front door.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from reelpack.kernels.checks import check_codes, check_queries
from reelpack.kernels.topk import topk
from reelpack.util.validate import check_k

if TYPE_CHECKING:  # pragma: no cover
    from reelpack.codecs.base import Codec

__all__ = ["Scanner", "GenericScanner"]


class Scanner(ABC):
    """A catalog of codes prepared for one codec's fused top-K scan.

    Attributes:
        codec: the fitted codec.
        kernel: name of the kernel used (for reports).
        n_items: catalog size.
        prepared_bytes: bytes this scanner allocated beyond the codes it was given (block
            layouts, per-item factors); 0 when it reads the codes in place.

    Scanners are thread-safe: per-thread scratch arrays are made on first use.
    """

    codec: Codec
    kernel: str = ""
    n_items: int = 0
    prepared_bytes: int = 0

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (ids int64 [q, k], scores float32 [q, k]) for float32 queries [q, d] (or [d]).

        Raises:
            DimensionMismatchError, NonFiniteError: bad queries. InvalidKError: ``k`` not in 1..n_items.
        """

    def work(self, k: int, make: Callable[[int], tuple]) -> tuple:
        """Scratch for top-``k`` scans made by ``make(k)``, once per thread and K."""
        local = self.__dict__.get("_local")
        if local is None:
            local = self.__dict__.setdefault("_local", threading.local())
        cache = getattr(local, "work", None)
        if cache is None or cache[0] != k:
            cache = local.work = (k, make(k))
        return cache[1]


class GenericScanner(Scanner):
    """``codec.score`` over row blocks + :func:`reelpack.kernels.topk.topk` (families without a fused kernel)."""

    ROWS = 1 << 18

    def __init__(self, codec: Codec, codes: np.ndarray) -> None:
        self.codec = codec
        self.codes = check_codes(codes, codec.bytes_per_vector)
        self.n_items = self.codes.shape[0]
        self.kernel = f"{codec.family}-score+topk"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = check_queries(queries, int(self.codec.dim))
        k = check_k(k, self.n_items)
        best_ids = np.zeros((q.shape[0], 0), np.int64)
        best_vals = np.zeros((q.shape[0], 0), np.float32)
        for s in range(0, self.n_items, self.ROWS):
            block = self._block_scores(q, s, min(s + self.ROWS, self.n_items))
            kk = min(k, block.shape[1])
            ids, vals = topk(block, kk)
            merged_ids = np.concatenate([best_ids, ids + s], axis=1)
            merged_vals = np.concatenate([best_vals, vals], axis=1)
            order, best_vals = topk(merged_vals, min(k, merged_vals.shape[1]))
            best_ids = np.take_along_axis(merged_ids, order, axis=1)
        return best_ids, best_vals

    def _block_scores(self, queries: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Scores float32 [q, stop - start] of checked queries [q, d] against items ``start:stop``."""
        return self.codec.score(queries, self.codes[start:stop])
