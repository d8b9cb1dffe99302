"""The one bounded heap of the project (numba): the K best of a stream of (value, index) pairs.

Two layouts of the same ordering, a min-heap whose root is the *worst* kept candidate:

* **pairs**: values ``hv`` (float) and indexes ``hi`` (int64) in two arrays of length K, ordered by
  ``(value, -index)``: a smaller value is worse and, for equal values, a larger index is worse, so ties
  go to the lower index. :func:`sift_down`, :func:`heap_reset`, :func:`heap_offer` (items arriving in
  increasing index), :func:`heap_offer_any` (any order), :func:`heap_drain` (best first).
  :func:`reelpack.kernels.topk.topk`, every fused scan in :mod:`reelpack.kernels.scan` and RaBitQ's
  extended-code search (a min-heap on float keys) use it.
* **packed keys**: one int64 per candidate, ``value << 40 | (2^40 - 1 - index)`` (value a non-negative
  integer sum below 2^23), so that one integer compare orders ``(value, -index)`` exactly as the pair
  layout does; the quantised SIMD passes keep their candidates this way (one compare per level in the
  hottest loop) and hand them over with :func:`packed_to_pairs`.

Every function is compiled with ``cache=True, nogil=True`` and takes preallocated arrays.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "SENTINEL",
    "PACKED_ID_BITS",
    "PACKED_ID_MASK",
    "sift_down",
    "heap_reset",
    "heap_offer",
    "heap_offer_any",
    "heap_drain",
    "sift_down_packed",
    "packed_to_pairs",
]

SENTINEL = np.int64(1) << np.int64(62)
"""Index given to the empty slots of a reset heap (larger than any real index, so real items win ties)."""
PACKED_ID_BITS = 40
PACKED_ID_MASK = (np.int64(1) << np.int64(PACKED_ID_BITS)) - np.int64(1)


@numba.njit(cache=True, nogil=True)
def sift_down(hv, hi, pos, size):  # pragma: no cover - compiled
    """Restore the heap below ``pos`` among the first ``size`` slots (min on ``(value, -index)``)."""
    while True:
        left = 2 * pos + 1
        if left >= size:
            return
        child = left
        right = left + 1
        if right < size and (hv[right] < hv[left] or (hv[right] == hv[left] and hi[right] > hi[left])):
            child = right
        if hv[child] < hv[pos] or (hv[child] == hv[pos] and hi[child] > hi[pos]):
            hv[pos], hv[child] = hv[child], hv[pos]
            hi[pos], hi[child] = hi[child], hi[pos]
            pos = child
        else:
            return


@numba.njit(cache=True, nogil=True)
def heap_reset(hv, hi):  # pragma: no cover - compiled
    """Empty the heap: every slot -inf with a sentinel index."""
    for j in range(hv.shape[0]):
        hv[j] = -np.inf
        hi[j] = SENTINEL + j


@numba.njit(cache=True, nogil=True)
def heap_offer(hv, hi, value, index):  # pragma: no cover - compiled
    """Offer one item; items arrive in increasing index, so an equal value never displaces an earlier one."""
    if value > hv[0]:
        hv[0] = value
        hi[0] = index
        sift_down(hv, hi, 0, hv.shape[0])


@numba.njit(cache=True, nogil=True)
def heap_offer_any(hv, hi, value, index):  # pragma: no cover - compiled
    """Offer one item arriving in any order: an equal value with a lower index wins."""
    if value > hv[0] or (value == hv[0] and index < hi[0]):
        hv[0] = value
        hi[0] = index
        sift_down(hv, hi, 0, hv.shape[0])


@numba.njit(cache=True, nogil=True)
def heap_drain(hv, hi, out_ids, out_vals):  # pragma: no cover - compiled
    """Pop the heap worst-first into ``out_ids`` / ``out_vals`` from the back: the outputs are best first."""
    size = hv.shape[0]
    for t in range(hv.shape[0] - 1, -1, -1):
        out_vals[t] = hv[0]
        out_ids[t] = hi[0]
        size -= 1
        hv[0] = hv[size]
        hi[0] = hi[size]
        sift_down(hv, hi, 0, size)


@numba.njit(cache=True, nogil=True)
def sift_down_packed(keys, pos, size):  # pragma: no cover - compiled
    """:func:`sift_down` for packed int64 keys (one compare per level; keys are unique)."""
    while True:
        child = 2 * pos + 1
        if child >= size:
            return
        if child + 1 < size and keys[child + 1] < keys[child]:
            child += 1
        if keys[child] < keys[pos]:
            keys[pos], keys[child] = keys[child], keys[pos]
            pos = child
        else:
            return


@numba.njit(cache=True, nogil=True)
def packed_to_pairs(keys, hv, hi):  # pragma: no cover - compiled
    """The packed-key heap (empty slots negative) as a pair heap: same candidates, same order, same ties."""
    heap_reset(hv, hi)
    for j in range(keys.shape[0]):
        if keys[j] >= 0:
            heap_offer_any(hv, hi, np.float32(keys[j] >> PACKED_ID_BITS), PACKED_ID_MASK - (keys[j] & PACKED_ID_MASK))
