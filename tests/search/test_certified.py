"""Certified progressive top-K: bounds prune the catalog, an exact layer certifies the result."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelpack.codecs import make_codec
from reelpack.codecs.base import Codec
from reelpack.errors import (
    DimensionMismatchError,
    DTypeError,
    InvalidInputError,
    InvalidKError,
    NonFiniteError,
    NotFittedError,
)
from reelpack.search.certified import certified_topk, certified_topk_batch


class TwoStageInt8(Codec):
    """Test codec with certain bounds; two stages over the PCA rotation ``y = x @ R``.

    Stage 0 (h + 1 bytes): int8 of ``y[:h]`` with a step per coordinate, plus one byte holding an
    upper bound on ``||y[h:]||`` (ceil on a grid up to the largest training norm).
    Stage 1 (d - h bytes): int8 of ``y[h:]``.
    Bounds: each quantised coordinate errs by at most step/2 (no clipping for vectors
    within the training range), the unknown tail by at most ``||q[h:]|| * norm bound``.
    """

    family = "test2stage"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    @property
    def spec(self) -> str:
        return "test2stage"

    def _bytes_per_vector(self) -> int:
        return int(self.dim) + 1  # type: ignore[arg-type]

    def _stage_bytes(self) -> tuple[int, ...]:
        h = int(self.dim) // 2  # type: ignore[arg-type]
        return (h + 1, int(self.dim) - h)  # type: ignore[arg-type]

    @property
    def has_bounds(self) -> bool:
        return True

    def _fit(self, X: np.ndarray, seed: int) -> None:
        d = X.shape[1]
        # principal axes, largest variance first, so stage 0 holds most of the energy
        evals, evecs = np.linalg.eigh(X.T.astype(np.float64) @ X)
        self.R = np.ascontiguousarray(evecs[:, ::-1]).astype(np.float32)
        Y = X @ self.R
        self.h = d // 2
        self.step = np.abs(Y).max(axis=0).astype(np.float64) / 127.0 * 1.001  # per coordinate
        self.norm_step = float(np.linalg.norm(Y[:, self.h :], axis=1).max()) / 255.0 * 1.001

    def _encode(self, X: np.ndarray) -> np.ndarray:
        Y = X @ self.R
        q = np.clip(np.round(Y / self.step), -127, 127).astype(np.int8).view(np.uint8)
        nb = np.clip(np.ceil(np.linalg.norm(Y[:, self.h :], axis=1) / self.norm_step), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.hstack([q[:, : self.h], nb[:, None], q[:, self.h :]]))

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        y = np.hstack([codes[:, : self.h], codes[:, self.h + 1 :]]).view(np.int8) * self.step.astype(np.float32)
        return y @ self.R.T

    def _score_prefix(self, queries: np.ndarray, codes: np.ndarray, stages: int) -> np.ndarray:
        return self._score_bounds(queries, codes, stages, 0.5)[0]

    def _score_bounds(
        self, queries: np.ndarray, codes: np.ndarray, stages: int, confidence: float
    ) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(codes.shape[0])
        qy = queries.astype(np.float64) @ self.R.astype(np.float64)
        h = self.h
        head = codes[:, :h].view(np.int8).astype(np.float64) * self.step[:h]
        est = qy[:, :h] @ head.T
        if stages == 1:
            tail_norm = codes[:, h].astype(np.float64) * self.norm_step
            half = (np.abs(qy[:, :h]) @ self.step[:h] / 2)[:, None] + np.linalg.norm(qy[:, h:], axis=1)[
                :, None
            ] * tail_norm[None, :]
        else:
            tail = codes[:, h + 1 :].view(np.int8).astype(np.float64) * self.step[h:]
            est = est + qy[:, h:] @ tail.T
            half = np.repeat((np.abs(qy) @ self.step / 2)[:, None], codes.shape[0], axis=1)
        half = half * (1 + 1e-5) + 1e-5  # float32 rounding of the estimate
        return est, half

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        raise NotImplementedError

    def _load_state(self, dim: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError


def _data(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    decay = np.exp(-np.arange(d) / (d / 5))  # a decaying spectrum, as in learned embeddings
    centers = rng.normal(size=(20, d)) * 1.5 * decay
    X = centers[rng.integers(0, 20, n)] + rng.normal(size=(n, d)) * decay
    rot = np.linalg.qr(rng.normal(size=(d, d)))[0]
    X = X @ rot
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    q = (centers[rng.integers(0, 20)] + rng.normal(size=d) * 0.5 * decay) @ rot
    return X.astype(np.float32), q.astype(np.float32)


class Store:
    """Stage codes and exact vectors behind recording fetch callbacks."""

    def __init__(self, codec: Codec, X: np.ndarray, exact_dtype: type = np.float32) -> None:
        self.codes = codec.encode(X)
        self.widths = codec.stage_bytes
        self.X = X.astype(exact_dtype)
        self.stage_calls: list[tuple[int, np.ndarray]] = []
        self.exact_calls: list[np.ndarray] = []

    @property
    def layer0(self) -> np.ndarray:
        return self.codes[:, : self.widths[0]]

    def fetch(self, stage: int, rows: np.ndarray) -> np.ndarray:
        self.stage_calls.append((stage, rows.copy()))
        lo = sum(self.widths[:stage])
        return self.codes[rows, lo : lo + self.widths[stage]]

    def exact(self, rows: np.ndarray) -> np.ndarray:
        self.exact_calls.append(rows.copy())
        return self.X[rows]


def _brute(X: np.ndarray, q: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    s = X.astype(np.float32) @ q
    if exclude is not None:
        s[exclude] = -np.inf
    return np.sort(s)[::-1][:k]


@pytest.fixture(scope="module")
def setup():
    X, q = _data(3000, 32, 0)
    codec = TwoStageInt8().fit(X, seed=0)
    return X, q, codec


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 40), d=st.sampled_from([16, 24, 32]))
def test_exact_layer_gives_brute_force_topk(seed, k, d):
    X, q = _data(800, d, seed)
    codec = TwoStageInt8().fit(X, seed=seed)
    store = Store(codec, X)
    res = certified_topk(q, codec, store.layer0, store.fetch, k, exact=store.exact)
    assert res.certified and res.exact_scores
    np.testing.assert_allclose(res.scores, _brute(X, q, k), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.scores, X[res.ids] @ q, rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(res.scores) <= 0) and len(set(res.ids.tolist())) == k


def test_bytes_accounting_and_pruning(setup):
    X, q, codec = setup
    store = Store(codec, X, np.float16)
    k = 20
    res = certified_topk(q, codec, store.layer0, store.fetch, k, exact=store.exact, exact_bytes_per_item=2 * 32)
    n = len(X)
    assert res.steps == ["stage1", "exact"]
    assert [s for s, _ in store.stage_calls] == [1]  # one call per stage, all rows at once
    rows1 = store.stage_calls[0][1]
    assert rows1.dtype == np.int64 and np.all(np.diff(rows1) > 0)  # sorted, unique
    assert len(store.exact_calls) == 1
    rows2 = store.exact_calls[0]
    assert np.all(np.diff(rows2) > 0) and np.isin(rows2, rows1).all()
    assert res.items_fetched == [rows1.size, rows2.size]
    assert k <= rows2.size <= rows1.size < n / 2  # bounds rule out most of the catalog
    assert res.bytes_layer0 == n * codec.stage_bytes[0]
    assert res.bytes_refined == [rows1.size * codec.stage_bytes[1], rows2.size * 2 * 32]
    assert res.bytes_per_item == pytest.approx(
        (n * codec.stage_bytes[0] + rows1.size * codec.stage_bytes[1] + rows2.size * 64) / n
    )
    # layer 0 was scored once for all items, stage 1 once for the candidates only
    assert codec.calls[-2:] == [n, rows1.size]
    # float16 vectors: exact scores of what was sent
    np.testing.assert_allclose(res.scores, X[res.ids].astype(np.float16).astype(np.float32) @ q, rtol=1e-5)


def test_without_exact_layer_certified_set_is_true_topk(setup):
    X, q, codec = setup
    store = Store(codec, X)
    certified = []
    for k in (1, 5, 30):
        res = certified_topk(q, codec, store.layer0, store.fetch, k)
        assert not res.exact_scores and res.steps == ["stage1"]
        assert res.items_fetched[0] > 0  # stage-0 bounds alone certify nothing here
        np.testing.assert_allclose(res.scores, codec.score(q[None], store.codes)[0][res.ids], rtol=1e-5, atol=1e-6)
        if res.certified:
            certified.append(k)
            true_scores = _brute(X, q, k)
            np.testing.assert_allclose(np.sort(X[res.ids] @ q)[::-1], true_scores, rtol=1e-5, atol=1e-6)
    assert certified == [1]  # int8 bounds separate the best item, not the best 5


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 5))
def test_certified_without_exact_is_true_topk_set(seed, k):
    X, q = _data(500, 16, seed)
    codec = TwoStageInt8().fit(X, seed=0)
    store = Store(codec, X)
    res = certified_topk(q, codec, store.layer0, store.fetch, k)
    if res.certified:
        np.testing.assert_allclose(np.sort(X[res.ids] @ q)[::-1], _brute(X, q, k), rtol=1e-5, atol=1e-6)


def test_budget_stops_early(setup):
    X, q, codec = setup
    store = Store(codec, X)
    full = certified_topk(q, codec, store.layer0, store.fetch, 10, exact=store.exact)
    store2 = Store(codec, X)
    budget = full.bytes_refined[0] - 1  # not even stage 1 fits
    res = certified_topk(q, codec, store2.layer0, store2.fetch, 10, exact=store2.exact, budget_bytes=budget)
    assert not res.certified and not res.exact_scores
    assert res.bytes_refined == [0, 0] and store2.stage_calls == [] and store2.exact_calls == []
    assert res.ids.shape == (10,)
    # a budget that covers stage 1 but not the exact layer
    store3 = Store(codec, X)
    budget = full.bytes_refined[0] + full.bytes_refined[1] - 1
    res = certified_topk(q, codec, store3.layer0, store3.fetch, 10, exact=store3.exact, budget_bytes=budget)
    assert res.bytes_refined == [full.bytes_refined[0], 0] and store3.exact_calls == []
    assert sum(res.bytes_refined) <= budget
    # enough budget: the same certified result
    res = certified_topk(
        q, codec, store.layer0, store.fetch, 10, exact=store.exact, budget_bytes=sum(full.bytes_refined)
    )
    assert res.certified
    np.testing.assert_array_equal(res.ids, full.ids)


def test_exclude(setup):
    X, q, codec = setup
    store = Store(codec, X)
    top = certified_topk(q, codec, store.layer0, store.fetch, 10, exact=store.exact).ids
    exclude = np.concatenate([top[:5], top[:2]])  # duplicates are fine
    res = certified_topk(q, codec, store.layer0, store.fetch, 10, exact=store.exact, exclude=exclude)
    assert res.certified and not np.isin(res.ids, exclude).any()
    np.testing.assert_allclose(res.scores, _brute(X, q, 10, exclude), rtol=1e-5, atol=1e-6)
    for rows in [r for _, r in store.stage_calls[-1:]] + store.exact_calls[-1:]:
        assert not np.isin(rows, exclude).any()  # excluded items are never fetched
    # k up to n - excluded works, one more does not
    small, sq = _data(60, 16, 1)
    c = TwoStageInt8().fit(small, seed=1)
    s = Store(c, small)
    res = certified_topk(sq, c, s.layer0, s.fetch, 55, exact=s.exact, exclude=np.arange(5))
    assert res.certified and set(res.ids.tolist()) == set(range(5, 60))
    with pytest.raises(InvalidKError, match="exclusion"):
        certified_topk(sq, c, s.layer0, s.fetch, 56, exact=s.exact, exclude=np.arange(5))


@pytest.mark.parametrize("spec", ["pq8"])
def test_fallback_without_bounds(spec):
    X, q = _data(2000, 32, 3)
    codec = make_codec(spec).fit(X, seed=0)
    assert not codec.has_bounds and len(codec.stage_bytes) == 1
    codes = codec.encode(X)
    calls: list[np.ndarray] = []

    def exact(rows):
        calls.append(rows)
        return X[rows]

    res = certified_topk(q, codec, codes, None, 10, exact=exact, fallback_candidates=500)
    assert not res.certified and res.exact_scores and res.items_fetched == [500]
    assert len(calls) == 1 and calls[0].size == 500 and np.all(np.diff(calls[0]) > 0)
    assert res.bytes_refined == [500 * 32 * 4]
    np.testing.assert_allclose(res.scores, _brute(X, q, 10), rtol=1e-5, atol=1e-6)
    # the candidates are layer 0's best 500
    assert set(calls[0].tolist()) == set(np.argsort(-codec.score(q[None], codes)[0], kind="stable")[:500].tolist())
    # R = n: exact everywhere, so certified
    res = certified_topk(q, codec, codes, None, 10, exact=exact, fallback_candidates=5000)
    assert res.certified and res.items_fetched == [2000]
    # a small R without an exact layer returns the codec's own top-k
    res = certified_topk(q, codec, codes, None, 10)
    assert res.steps == [] and res.bytes_refined == [] and not res.certified
    np.testing.assert_allclose(res.scores, np.sort(codec.score(q[None], codes)[0])[::-1][:10], rtol=1e-6)


def test_fallback_multistage_without_bounds(setup):
    """A two-stage codec that hides its bounds uses the fixed top-R path at each step."""
    X, q, codec = setup

    class NoBounds(TwoStageInt8):
        @property
        def has_bounds(self) -> bool:
            return False

    nb = NoBounds().fit(X, seed=0)
    store = Store(nb, X)
    res = certified_topk(q, nb, store.layer0, store.fetch, 10, exact=store.exact, fallback_candidates=[400, 100])
    assert res.items_fetched == [400, 100] and res.bytes_refined == [400 * nb.stage_bytes[1], 100 * 32 * 4]
    np.testing.assert_allclose(res.scores, _brute(X, q, 10), rtol=1e-5, atol=1e-6)
    assert np.isin(store.exact_calls[0], store.stage_calls[0][1]).all()
    with pytest.raises(InvalidInputError, match="one per refinement step"):
        certified_topk(q, nb, store.layer0, store.fetch, 10, exact=store.exact, fallback_candidates=[400])
    with pytest.raises(InvalidKError, match="at least k"):
        certified_topk(q, nb, store.layer0, store.fetch, 10, exact=store.exact, fallback_candidates=5)


def test_batch_matches_single_and_averages_bytes(setup):
    X, _, codec = setup
    rng = np.random.default_rng(5)
    Q = X[rng.integers(0, len(X), 7)] + rng.normal(size=(7, 32)).astype(np.float32) * 0.3
    store = Store(codec, X)
    excl = [rng.integers(0, len(X), 20) for _ in range(7)]
    batch = certified_topk_batch(Q, codec, store.layer0, store.fetch, 15, exact=store.exact, exclude=excl, batch_size=3)
    singles = [
        certified_topk(Q[i], codec, store.layer0, store.fetch, 15, exact=store.exact, exclude=excl[i]) for i in range(7)
    ]
    np.testing.assert_array_equal(batch.ids, np.stack([r.ids for r in singles]))
    np.testing.assert_allclose(batch.scores, np.stack([r.scores for r in singles]), rtol=1e-6)
    assert batch.certified.all()
    np.testing.assert_array_equal(batch.bytes_refined, [r.bytes_refined for r in singles])
    assert batch.mean_bytes_per_item == pytest.approx(np.mean([r.bytes_per_item for r in singles]))
    with pytest.raises(DimensionMismatchError, match="one array per query"):
        certified_topk_batch(Q, codec, store.layer0, store.fetch, 15, exclude=excl[:3])


def test_bad_inputs(setup):
    X, q, codec = setup
    store = Store(codec, X)
    args = (codec, store.layer0, store.fetch)
    for k in (0, -1, len(X) + 1):
        with pytest.raises(InvalidKError):
            certified_topk(q, *args, k)
    with pytest.raises(InvalidKError):
        certified_topk(q, *args, 2.5)
    bad_q = q.copy()
    bad_q[3] = np.nan
    with pytest.raises(NonFiniteError):
        certified_topk(bad_q, *args, 5)
    with pytest.raises(DimensionMismatchError):
        certified_topk(q[:10], *args, 5)
    with pytest.raises(DimensionMismatchError, match="bytes per vector"):
        certified_topk(q, codec, store.codes, store.fetch, 5)  # full codes instead of stage 0
    with pytest.raises(DTypeError):
        certified_topk(q, codec, store.layer0.astype(np.int16), store.fetch, 5)
    with pytest.raises(DimensionMismatchError, match="stage-1"):
        certified_topk(q, codec, store.layer0, lambda s, r: store.codes[r], 5)
    with pytest.raises(DimensionMismatchError, match="codes for"):
        certified_topk(q, codec, store.layer0, lambda s, r: store.fetch(s, r)[:-1], 5)
    with pytest.raises(DimensionMismatchError, match="exact"):
        certified_topk(q, *args, 5, exact=lambda r: X[r, :5])
    with pytest.raises(DTypeError, match="float"):
        certified_topk(q, *args, 5, exact=lambda r: (X[r] * 100).astype(np.int32))
    with pytest.raises(InvalidInputError, match="confidence"):
        certified_topk(q, *args, 5, confidence=1.0)
    with pytest.raises(InvalidInputError, match="budget"):
        certified_topk(q, *args, 5, budget_bytes=-1)
    with pytest.raises(InvalidInputError, match="fetch"):
        certified_topk(q, codec, store.layer0, None, 5)
    with pytest.raises(InvalidInputError, match="outside"):
        certified_topk(q, *args, 5, exclude=np.array([len(X)]))
    with pytest.raises(DTypeError):
        certified_topk(q, *args, 5, exclude=np.array([1.5]))
    with pytest.raises(NotFittedError):
        certified_topk(q, TwoStageInt8(), store.layer0, store.fetch, 5)
    with pytest.raises(InvalidInputError, match="Codec"):
        certified_topk(q, object(), store.layer0, store.fetch, 5)  # type: ignore[arg-type]
