"""The bounded heap (reelpack.kernels.heap) against a NumPy oracle: both layouts keep the same top-K, ties to the
lower index.

The oracle orders (value descending, index ascending) with ``np.lexsort`` and keeps the first K. The pair heap
is fed in index order (:func:`heap_offer`) and in any order (:func:`heap_offer_any`); the packed-key heap is fed
the way the quantised SIMD passes feed it (``key = value << 40 | (2^40 - 1 - index)``, replace the root when
larger, :func:`sift_down_packed`) and handed over with :func:`packed_to_pairs`. All of them are drained with
:func:`heap_drain`, best first.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelpack.kernels.heap import (
    PACKED_ID_BITS,
    PACKED_ID_MASK,
    SENTINEL,
    heap_drain,
    heap_offer,
    heap_offer_any,
    heap_reset,
    packed_to_pairs,
    sift_down,
    sift_down_packed,
)

MAX_PACKED_VALUE = (1 << 23) - 1  # packed values are non-negative integer sums below 2^23 (module docstring)


def reference_topk(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [min(k, n)], values) of the k best, value descending, ties to the lower index."""
    order = np.lexsort((np.arange(len(values)), -values.astype(np.float64)))[:k]
    return order.astype(np.int64), values[order]


def _drain(hv: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, vals = np.empty(len(hv), np.int64), np.empty(len(hv), np.float32)
    heap_drain(hv, hi, ids, vals)
    return ids, vals


def pair_heap(values: np.ndarray, k: int, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by the pair heap: heap_offer in index order, or heap_offer_any in the given order."""
    hv, hi = np.empty(k, np.float32), np.empty(k, np.int64)
    heap_reset(hv, hi)
    if order is None:
        for t, v in enumerate(values):
            heap_offer(hv, hi, np.float32(v), t)
    else:
        for t in order:
            heap_offer_any(hv, hi, np.float32(values[t]), int(t))
    return _drain(hv, hi)


def packed_heap(values: np.ndarray, k: int, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by the packed-key heap (empty slots -1), handed over as a pair heap and drained."""
    keys = np.full(k, -1, np.int64)
    for t in order:
        key = (int(values[t]) << PACKED_ID_BITS) | (int(PACKED_ID_MASK) - int(t))
        if key > keys[0]:
            keys[0] = key
            sift_down_packed(keys, 0, k)
    hv, hi = np.empty(k, np.float32), np.empty(k, np.int64)
    packed_to_pairs(keys, hv, hi)
    return _drain(hv, hi)


def _check(got: tuple[np.ndarray, np.ndarray], values: np.ndarray, k: int) -> None:
    ids, vals = got
    ref_ids, ref_vals = reference_topk(values, k)
    m = len(ref_ids)
    np.testing.assert_array_equal(ids[:m], ref_ids)
    np.testing.assert_array_equal(vals[:m], ref_vals.astype(np.float32))
    # fewer items than K: the empty slots come last, -inf with sentinel indexes
    assert np.all(np.isneginf(vals[m:])) and np.all(ids[m:] >= SENTINEL)


# few distinct values, so that ties are common
_values = st.lists(st.integers(0, 6) | st.integers(0, MAX_PACKED_VALUE), min_size=1, max_size=120)


@settings(max_examples=300, deadline=None)
@given(values=_values, k=st.integers(1, 130), data=st.data())
def test_both_layouts_equal_the_lexsort_reference(values, k, data):
    values = np.asarray(values, np.int64)
    order = np.asarray(data.draw(st.permutations(range(len(values)))), np.int64)
    _check(pair_heap(values.astype(np.float32), k), values, k)
    _check(pair_heap(values.astype(np.float32), k, order), values, k)
    _check(packed_heap(values, k, np.arange(len(values))), values, k)
    _check(packed_heap(values, k, order), values, k)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False) | st.sampled_from([0.0, -0.0, 1.5]),
                    min_size=1, max_size=100),
    k=st.integers(1, 110),
    data=st.data(),
)  # fmt: skip
def test_pair_heap_on_float_values(values, k, data):
    values = np.asarray(values, np.float32)
    order = np.asarray(data.draw(st.permutations(range(len(values)))), np.int64)
    _check(pair_heap(values, k), values, k)
    _check(pair_heap(values, k, order), values, k)


def test_all_equal_values_keep_the_lowest_indexes():
    values = np.full(50, 3, np.int64)
    for k in (1, 7, 50):
        order = np.random.default_rng(k).permutation(50)
        for got in (pair_heap(values.astype(np.float32), k), pair_heap(values.astype(np.float32), k, order),
                    packed_heap(values, k, order)):  # fmt: skip
            np.testing.assert_array_equal(got[0], np.arange(k))


@pytest.mark.parametrize("k", [1, 2, 5, 16])
def test_sift_down_restores_the_min_heap_order(k):
    # a heap whose root was replaced: after sift_down the root is the worst by (value, -index)
    rng = np.random.default_rng(k)
    for _ in range(50):
        hv = rng.integers(0, 4, k).astype(np.float32)
        hi = rng.permutation(1000)[:k].astype(np.int64)
        for pos in range(k // 2 - 1, -1, -1):  # heapify bottom-up with sift_down
            sift_down(hv, hi, pos, k)
        worst = np.lexsort((-hi, hv))[0]  # smallest value, then largest index
        assert (hv[0], hi[0]) == (hv[worst], hi[worst])
        for j in range(1, k):
            parent = (j - 1) // 2
            assert (hv[parent], -hi[parent]) <= (hv[j], -hi[j])
