"""Queries of any finite magnitude up to the 1e30 limit: every codec's ``score`` and scanner either rank them
as they rank the unscaled query (ranking by inner product is invariant under a positive scale), with finite
scores, or refuse them with :class:`~reelpack.errors.InvalidInputError`; never a wrong top-K, an inf score or
another exception."""

from __future__ import annotations

import numpy as np
import pytest
from test_contract import ALL_SPECS, QUERY_QUANTISED

from reelpack.codecs import make_codec
from reelpack.errors import InvalidInputError
from reelpack.search import make_scanner

K = 5
SCALES = (1e-30, 1e-10, 1e10, 1e20, 1e25, 1e29)
PQ_FAMILY = ["pq8", "pq8x4", "opq8,pq8", "apq8", "opq8,apq8"]


def _probe_queries(queries: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, unscaled query batch, scaled batch): the contract queries times each scale, and queries with a
    single huge coordinate (positive and negative)."""
    out = [(f"q*{s:g}", queries, queries * np.float32(s)) for s in SCALES]
    one = np.zeros((2, queries.shape[1]), np.float32)
    one[0, 3], one[1, 7] = 1.0, -1.0
    out.append(("one huge coordinate", one, one * np.float32(1e29)))
    return out


def _outcome(fn):
    """The result of ``fn()``, or the InvalidInputError it raised (any other exception propagates)."""
    try:
        return fn()
    except InvalidInputError as exc:
        return exc


def _assert_top_k(label: str, ids: np.ndarray, reference_scores: np.ndarray) -> None:
    """``ids`` [q, K] are a top-K of ``reference_scores`` [q, n] (float64), up to ties."""
    kth = -np.sort(-reference_scores, axis=1)[:, K - 1 : K]
    tol = 1e-5 * np.abs(reference_scores).max(axis=1, keepdims=True) + 1e-30
    picked = np.take_along_axis(reference_scores, ids, axis=1)
    assert (picked >= kth - tol).all(), f"{label}: top-{K} differs from the unscaled query's"


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_scaled_queries_rank_as_the_unscaled_query_or_are_refused(spec, fitted, contract_data):
    codec = fitted(spec)
    codes = codec.encode(contract_data["items"])
    scanner = make_scanner(codec, codes)
    for label, base, scaled in _probe_queries(contract_data["queries"]):
        base_scores = codec.score(base, codes).astype(np.float64)
        base_ids = scanner.search(base, K)[0]
        scores = _outcome(lambda q=scaled: codec.score(q, codes))
        found = _outcome(lambda q=scaled: scanner.search(q, K))
        if isinstance(scores, InvalidInputError) or isinstance(found, InvalidInputError):
            # a refusal is fine, as long as score and scanner refuse the same queries
            assert isinstance(scores, InvalidInputError) and isinstance(found, InvalidInputError), (label, scores, found)
            continue
        assert np.isfinite(scores).all(), f"{label}: codec.score gave inf/NaN"
        ids, vals = found
        assert np.isfinite(vals).all(), f"{label}: the scanner gave inf/NaN scores"
        _assert_top_k(label + " (codec.score)", np.argsort(-scores, axis=1, kind="stable")[:, :K], base_scores)
        if spec in QUERY_QUANTISED:
            # the scanner quantises the query: its ranking is its own, but it must not depend on the scale
            assert np.array_equal(np.sort(ids, axis=1), np.sort(base_ids, axis=1)), label
        else:
            _assert_top_k(label + " (scanner)", ids, base_scores)


@pytest.mark.parametrize("spec", PQ_FAMILY)
def test_pq_tables_that_overflow_float32_are_refused(spec, contract_data):
    """Items near 1e10 and a query near 1e29: the true scores (~1e40) lie beyond float32. The lookup tables
    overflowed to inf (wrong ids, inf scores) and the 4-bit fast-scan divided by zero while quantising them."""
    big = np.float32(1e10)
    codec = make_codec(spec).fit(contract_data["train"] * big, seed=0)
    codes = codec.encode(contract_data["items"] * big)
    queries = contract_data["queries"] * np.float32(1e29)
    with pytest.raises(InvalidInputError, match="float32"):
        codec.score(queries, codes)
    with pytest.raises(InvalidInputError, match="float32"):
        codec.score(queries[:1], codes)
    options = [{}, {"exact": False}] if getattr(codec, "nbits", 8) == 4 else [{}]
    for opts in options:
        scanner = make_scanner(codec, codes, **opts)
        with pytest.raises(InvalidInputError, match="float32"):
            scanner.search(queries, K)
        with pytest.raises(InvalidInputError, match="float32"):
            scanner.search(queries[2], K)
        # the same scanner still answers ordinary queries afterwards
        ids, vals = scanner.search(contract_data["queries"], K)
        assert np.isfinite(vals).all() and ids.shape == (len(queries), K)


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_scores_beyond_float32_are_refused_for_every_codec(spec, contract_data):
    """Items near 1e10 (inside the item limit) and a query near 1e29: the true scores exceed float32's range, so
    ``score`` and the scanner both refuse with InvalidInputError, never inf scores or a silent wrong order."""
    codec = make_codec(spec)
    limit = codec.max_item_value
    scale = np.float32(1e10 if limit is None else min(1e10, limit / 10))
    items = contract_data["items"] * scale
    codec.fit(contract_data["train"] * scale, seed=0)
    codes = codec.encode(items)
    huge = contract_data["queries"][:2] * np.float32(1e29)
    for what, run in (("score", lambda: codec.score(huge, codes)),
                      ("scanner", lambda: make_scanner(codec, codes).search(huge, K))):  # fmt: skip
        got = _outcome(run)
        if isinstance(got, InvalidInputError):
            continue
        scores = got if what == "score" else got[1]
        assert np.isfinite(scores).all(), (spec, what)


@pytest.mark.parametrize("spec", [s for s in ALL_SPECS if make_codec(s).max_item_value is not None])
def test_item_values_beyond_the_limit_are_refused_before_training(spec, contract_data):
    """fit and encode refuse item values beyond ``max_item_value`` with a typed error (faiss k-means on such values
    overflows float32 and can abort the whole process)."""
    codec = make_codec(spec)
    too_big = contract_data["train"] * np.float32(codec.max_item_value * 10)
    with pytest.raises(InvalidInputError, match="beyond"):
        codec.fit(too_big, seed=0)
    codec.fit(contract_data["train"], seed=0)
    with pytest.raises(InvalidInputError, match="beyond"):
        codec.encode(too_big[:3])
