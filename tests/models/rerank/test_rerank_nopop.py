"""Re-ranker without the popularity feature: codes only (8 B/item for an 8-byte codec)."""

from __future__ import annotations

import numpy as np
import pytest

from reelpack.codecs import make_codec
from reelpack.errors import InvalidInputError
from reelpack.models.rerank import (
    CandidateBatch,
    OnnxReranker,
    compute_features,
    feature_names,
    load_reranker,
    train_reranker,
)
from reelpack.models.rerank.evaluate import rerank_benchmark

D = 16
R = 40


@pytest.fixture(scope="module")
def world(embedding_world):
    """Synthetic split, unit-norm embeddings, a fitted pq4 codec, its codes, and re-rankers with and without log_pop."""
    split, items, users, codec, codes = embedding_world(400, 600, seed=1, dim=D)
    kw = dict(r=R, window=8, hidden=16, epochs=2, seed=0)
    nopop = train_reranker(codec, codes, split, users, items, np.arange(250), popularity=False, **kw)
    withpop = train_reranker(codec, codes, split, users, items, np.arange(250), **kw)
    return split, items, users, codec, codes, nopop, withpop


def test_feature_names_without_popularity():
    pq = make_codec("pq4").fit(np.random.default_rng(0).normal(size=(300, D)).astype(np.float32), seed=0)
    full, short = feature_names(pq), feature_names(pq, popularity=False)
    assert "log_pop" in full and "log_pop" not in short
    assert short == tuple(n for n in full if n != "log_pop")  # same order, log_pop simply omitted


def test_nopop_model_scores_without_popularity_bytes(world, rerank_batch):
    split, items, users, codec, codes, nopop, withpop = world
    assert not nopop.uses_popularity and withpop.uses_popularity
    assert nopop.info["popularity"] is False and len(nopop.feature_names) == len(withpop.feature_names) - 1
    uidx = np.arange(300, 330)
    batch, cand = rerank_batch(world, uidx, R, pop=False)
    res = nopop.rerank(codec, batch)  # no pop bytes, no fallback needed
    assert not res.fallback and np.isfinite(res.scores).all()
    assert sorted(res.order[0]) == list(range(R))
    # popularity bytes, when given anyway, are ignored: same scores
    with_bytes, _ = rerank_batch(world, uidx, R, pop=True)
    np.testing.assert_array_equal(nopop.features(codec, with_bytes), nopop.features(codec, batch))
    # the features equal the popularity model's minus the log_pop column
    x_full = withpop.features(codec, with_bytes)
    keep = [i for i, n in enumerate(withpop.feature_names) if n != "log_pop"]
    np.testing.assert_allclose(nopop.features(codec, batch), x_full[:, :, keep])
    # the popularity model still refuses (or falls back) without the bytes
    with pytest.raises(InvalidInputError, match="popularity"):
        withpop.rerank(codec, batch)
    assert withpop.rerank(codec, batch, fallback=True).fallback


def test_nopop_numpy_equals_onnx(world, rerank_batch):
    *_, codec, codes, nopop, _ = world
    batch, _ = rerank_batch(world, np.arange(300, 340), R, pop=False)
    x = nopop.features(codec, batch)
    onnx = OnnxReranker(nopop.to_onnx())
    assert onnx.feature_names == nopop.feature_names and "log_pop" not in onnx.feature_names
    np.testing.assert_allclose(nopop.score_features(x), onnx.score_features(x), atol=1e-5, rtol=1e-5)


def test_nopop_file_round_trip(world, tmp_path, rerank_batch):
    *_, codec, codes, nopop, _ = world
    back = load_reranker(nopop.save(tmp_path / "nopop.rerank"))
    assert back.feature_names == nopop.feature_names and not back.uses_popularity
    for k, v in nopop.arrays.items():
        np.testing.assert_array_equal(back.arrays[k], v)
    batch, _ = rerank_batch(world, np.arange(300, 310), R, pop=False)
    np.testing.assert_array_equal(back.rerank(codec, batch).order, nopop.rerank(codec, batch).order)


def test_feature_names_must_be_one_of_the_two_sets(world, rerank_batch):
    *_, codec, codes, nopop, _ = world
    batch, _ = rerank_batch(world, np.arange(300, 303), R, pop=True)
    bad = tuple(n for n in nopop.feature_names if n != "recent_max")
    with pytest.raises(InvalidInputError, match="do not match"):
        compute_features(codec, batch, bad, 1.0)
    swapped = ("log_pop", *nopop.feature_names)  # log_pop in the wrong place
    with pytest.raises(InvalidInputError, match="do not match"):
        compute_features(codec, CandidateBatch(batch.queries, batch.cand_codes, batch.pop_bytes), swapped, 1.0)


def test_benchmark_rows_report_bytes_per_item(world):
    split, items, users, *_ = world
    res = rerank_benchmark(split, users, items, ("pq4",), np.arange(300, 360), np.arange(100), r=60,
                           latency_users=3, popularity=(True, False), train_kwargs={"epochs": 1, "hidden": 8})
    rows = res["rows"]
    assert [r["popularity"] for r in rows] == [True, False]
    assert [r["bytes_per_item"] for r in rows] == [5, 4]  # pq4 codes: 4 B/item (+1 popularity byte)
    assert rows[0]["codec_rel"] == rows[1]["codec_rel"]  # same candidates (the codec's own ranking)
    assert "log_pop" not in rows[1]["feature_names"] and rows[1]["latency"]["numpy_onnx_max_abs_diff"] < 1e-4
    with pytest.raises(InvalidInputError):
        rerank_benchmark(split, users, items, ("pq4",), np.arange(300, 310), np.arange(50), r=60, popularity=())
