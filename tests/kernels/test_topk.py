import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from reelpack.errors import DimensionMismatchError, InvalidKError
from reelpack.kernels._reference import topk_reference
from reelpack.kernels.topk import mask_rows, topk


@settings(max_examples=80, deadline=None)
@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 70)), elements=st.integers(-5, 5).map(float)),
    st.data(),
)
def test_topk_equals_reference_with_ties(scores, data):
    k = data.draw(st.integers(1, scores.shape[1]))
    ids, vals = topk(scores, k)
    rids, rvals = topk_reference(scores, k)
    assert np.array_equal(ids, rids) and np.array_equal(vals, rvals)


def test_topk_handles_minus_inf_and_large_rows():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(3, 5000)).astype(np.float32)
    s[:, ::2] = -np.inf
    ids, vals = topk(s, 100)
    assert np.array_equal(ids, topk_reference(s, 100)[0])
    assert np.isfinite(vals).all()


def test_topk_bad_input():
    with pytest.raises(InvalidKError):
        topk(np.zeros((2, 3)), 0)
    with pytest.raises(InvalidKError):
        topk(np.zeros((2, 3)), 4)
    with pytest.raises(InvalidKError):
        topk(np.zeros((2, 3)), 1.5)
    with pytest.raises(DimensionMismatchError):
        topk(np.zeros(3), 1)


def test_mask_rows():
    s = np.zeros((2, 5), np.float32)
    mask_rows(s, np.array([0, 2, 2, 3]), np.array([1, 4, 0]), np.array([2, 0]))
    assert np.isneginf(s[0, 0]) and np.isneginf(s[1, 1]) and np.isneginf(s[1, 4])
    assert np.isfinite(s).sum() == 7
