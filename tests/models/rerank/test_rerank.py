"""Re-ranker: features against numpy references, numpy == ONNX, file round trip and bad input."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelpack.codecs import make_codec
from reelpack.errors import (
    DimensionMismatchError,
    InvalidInputError,
    NonFiniteError,
    SerializationError,
    UnsupportedVersionError,
)
from reelpack.models.rerank import (
    CandidateBatch,
    OnnxReranker,
    Reranker,
    candidate_lists,
    compute_features,
    feature_names,
    load_reranker,
    make_batch,
    quantise_popularity,
    train_reranker,
    user_history,
)

D = 16
R = 40


@pytest.fixture(scope="module")
def world(embedding_world):
    """Synthetic split, unit-norm item/user embeddings, a fitted pq4 codec, its codes and a trained re-ranker."""
    split, items, users, codec, codes = embedding_world(500, 800, seed=0, dim=D)
    train_users = np.arange(0, 300)
    rr = train_reranker(codec, codes, split, users, items, train_users, r=R, window=8, hidden=16, epochs=3, seed=0)
    return split, items, users, codec, codes, rr


def test_feature_names_fixed_order():
    pq = make_codec("pq4").fit(np.random.default_rng(0).normal(size=(300, D)).astype(np.float32), seed=0)
    names = feature_names(pq)
    assert names[:5] == ("codec_score", "score_gap", "rank_frac", "code_norm", "codec_cos")
    assert names[5:9] == ("sub_score_0", "sub_score_1", "sub_score_2", "sub_score_3")
    assert names[-4:] == ("log_pop", "recent_max", "recent_mean", "has_recent")
    sq = make_codec("sq8").fit(np.random.default_rng(0).normal(size=(300, D)).astype(np.float32), seed=0)
    assert feature_names(sq) == ("codec_score", "score_gap", "rank_frac", "code_norm", "codec_cos", "log_pop",
                                 "recent_max", "recent_mean", "has_recent")  # fmt: skip


def test_features_match_numpy_reference(world, rerank_batch):
    split, items, users, codec, codes, rr = world
    uidx = np.arange(300, 320)
    batch, cand = rerank_batch(world, uidx, R)
    x = compute_features(codec, batch, rr.feature_names, rr.pop_scale)
    names = rr.feature_names
    col = {n: x[:, :, i] for i, n in enumerate(names)}
    ref_score = np.stack([codec.score(users[u : u + 1], codes[cand[i]])[0] for i, u in enumerate(uidx)])
    np.testing.assert_allclose(col["codec_score"], ref_score, atol=1e-5)
    subs = np.stack([col[f"sub_score_{j}"] for j in range(4)], axis=2)
    np.testing.assert_allclose(subs.sum(axis=2), ref_score, atol=1e-5)
    dec = codec.decode(codes)
    np.testing.assert_allclose(col["code_norm"], np.linalg.norm(dec[cand], axis=2), atol=1e-5)
    np.testing.assert_allclose(col["codec_cos"], ref_score / np.linalg.norm(dec[cand], axis=2), atol=1e-4)
    assert (col["score_gap"] <= 1e-6).all() and np.allclose(col["score_gap"].max(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(col["log_pop"], np.log1p(split.item_counts[cand]), atol=rr.pop_scale / 255)
    hist, valid = user_history(split, uidx, rr.recent_window)
    for i, u in enumerate(uidx):  # plain loop: the reference
        own = split.train_items[split.train_indptr[u] : split.train_indptr[u + 1]][-rr.recent_window :]
        np.testing.assert_array_equal(hist[i][valid[i]], own)
        sims = dec[cand[i]] @ dec[own].T
        np.testing.assert_allclose(col["recent_max"][i], sims.max(axis=1), atol=1e-5)
        np.testing.assert_allclose(col["recent_mean"][i], sims.mean(axis=1), atol=1e-5)
    assert (col["has_recent"] == 1).all()


def test_numpy_and_onnx_scores_agree(world, rerank_batch):
    *_, codec, codes, rr = world
    batch, _ = rerank_batch(world, np.arange(300, 340), R)
    x = rr.features(codec, batch)
    onnx_scores = OnnxReranker(rr.to_onnx()).score_features(x)
    np.testing.assert_allclose(rr.score_features(x), onnx_scores, atol=1e-5, rtol=1e-5)
    assert 100 < rr.n_params < 5000


def test_reranker_moves_towards_float32(world, rerank_batch):
    """On users not trained on, the re-ranked top-10 overlaps the float32 order at least as well as the codec's."""
    split, items, users, codec, codes, rr = world
    uidx = np.arange(300, 500)
    batch, cand = rerank_batch(world, uidx, R)
    res = rr.rerank(codec, batch)
    teacher = np.einsum("bd,brd->br", users[uidx], items[cand])
    best = np.argsort(-teacher, axis=1)[:, :10]

    def overlap(order):
        return np.mean([len(set(order[i, :10]) & set(best[i])) for i in range(len(uidx))])

    assert overlap(res.order) >= overlap(np.tile(np.arange(R), (len(uidx), 1)))
    assert sorted(res.order[0]) == list(range(R))  # a permutation of the candidates
    assert (np.diff(res.scores, axis=1) <= 0).all()


def test_round_trip_and_corruption(world, tmp_path):
    *_, rr = world
    path = rr.save(tmp_path / "m.rerank")
    back = load_reranker(path)
    assert back.to_bytes() == rr.to_bytes()
    assert back.feature_names == rr.feature_names and back.codec_fingerprint == rr.codec_fingerprint
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(SerializationError, match="CRC32C"):
        load_reranker(bytes(data))
    with pytest.raises(SerializationError):
        load_reranker(bytes(path.read_bytes()[:-9]))
    newer = bytearray(path.read_bytes())
    newer[8:12] = struct.pack("<I", 99)
    with pytest.raises(UnsupportedVersionError, match="version 99"):
        load_reranker(bytes(newer))
    with pytest.raises(SerializationError, match="magic"):
        load_reranker(b"not a reranker file at all")


def _repack(data: bytes, edit) -> bytes:
    """Re-serialise ``data`` with its JSON header changed by ``edit(header)`` and a valid CRC."""
    import json

    from reelpack.format import crc32c

    (hdr_len,) = struct.unpack_from("<I", data, 12)
    header = json.loads(data[16 : 16 + hdr_len])
    edit(header)
    hdr = json.dumps(header).encode()
    body = data[:12] + struct.pack("<I", len(hdr)) + hdr + data[16 + hdr_len : -4]
    return body + struct.pack("<I", crc32c(body))


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda h: h["arrays"][2].update(shape=[3, 3]), "shape"),
        (lambda h: h["arrays"][0].update(offset=10**9), "outside"),
        (lambda h: h.update(hidden=0), "out of range"),
        (lambda h: h.pop("codec_spec"), "malformed"),
        (lambda h: h.update(feature_names=h["feature_names"][:-1]), "shape"),
        (lambda h: h.update(pop_scale=-1.0), "pop_scale"),
    ],
)
def test_consistent_crc_but_bad_header_is_refused(world, edit, words):
    *_, rr = world
    assert load_reranker(_repack(rr.to_bytes(), lambda h: None)).to_bytes() == rr.to_bytes()
    with pytest.raises(SerializationError, match=words):
        load_reranker(_repack(rr.to_bytes(), edit))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.integers(0, 10_000))
def test_fuzz_loader_only_raises_serialization_errors(world, junk, where):
    *_, rr = world
    good = rr.to_bytes()
    for blob in (junk, good[: where % len(good)] + junk, good[:8] + junk):
        try:
            load_reranker(blob)
        except SerializationError:
            pass


def test_file_for_another_codec_or_dimension(world, rerank_batch):
    split, items, users, codec, codes, rr = world
    other_fit = make_codec("pq4").fit(items, seed=1)
    with pytest.raises(InvalidInputError, match="another fit"):
        rr.check_codec(other_fit)
    other_spec = make_codec("pq8").fit(items, seed=0)
    with pytest.raises(InvalidInputError, match="'pq4'"):
        rr.check_codec(other_spec)
    other_dim = make_codec("pq4").fit(items[:, :8].copy(), seed=0)
    with pytest.raises(DimensionMismatchError, match="dimension 16"):
        rr.check_codec(other_dim)
    batch, _ = rerank_batch(world, np.arange(300, 305), R)
    with pytest.raises(InvalidInputError):
        rr.rerank(other_fit, batch)


def test_missing_signals(world, rerank_batch):
    *_, codec, codes, rr = world
    batch, _ = rerank_batch(world, np.arange(300, 310), R, pop=False)
    with pytest.raises(InvalidInputError, match="popularity"):
        rr.rerank(codec, batch)
    res = rr.rerank(codec, batch, fallback=True)
    assert res.fallback and "popularity" in res.reason
    np.testing.assert_array_equal(res.order, np.tile(np.arange(R), (10, 1)))  # the codec's own order
    no_hist, _ = rerank_batch(world, np.arange(300, 310), R, hist=False)
    x = rr.features(codec, no_hist)
    assert (x[:, :, rr.feature_names.index("has_recent")] == 0).all()
    assert np.isfinite(rr.rerank(codec, no_hist).scores).all()
    empty = CandidateBatch(no_hist.queries, no_hist.cand_codes, no_hist.pop_bytes,
                           np.zeros((10, 3, codec.bytes_per_vector), np.uint8), np.zeros((10, 3), bool))  # fmt: skip
    np.testing.assert_allclose(rr.features(codec, empty), x)


def test_bad_inputs(world, rerank_batch):
    *_, codec, codes, rr = world
    batch, _ = rerank_batch(world, np.arange(300, 302), R)
    bad_q = batch.queries.copy()
    bad_q[1, 0] = np.nan
    with pytest.raises(NonFiniteError):
        rr.rerank(codec, CandidateBatch(bad_q, batch.cand_codes, batch.pop_bytes))
    with pytest.raises(DimensionMismatchError, match="candidate codes"):
        rr.rerank(codec, CandidateBatch(batch.queries, batch.cand_codes[:, :, :2], batch.pop_bytes))
    with pytest.raises(DimensionMismatchError):
        rr.score_features(np.zeros((2, 3, 5), np.float32))
    with pytest.raises(SerializationError):
        Reranker(**{**rr.__dict__, "arrays": {**rr.arrays, "w1": np.zeros((2, 2), np.float32)}})


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 20), st.integers(0, 2**32 - 1))
def test_file_round_trip_property(n_features, hidden, seed):
    rng = np.random.default_rng(seed)
    shapes = {"mean": (n_features,), "std": (n_features,), "w1": (n_features, hidden), "b1": (hidden,),
              "w2": (hidden, hidden), "b2": (hidden,), "w3": (hidden,), "b3": (1,), "w_lin": (n_features,)}  # fmt: skip
    arrays = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    arrays["std"] = np.abs(arrays["std"]) + 0.1
    rr = Reranker("pq8", "ab" * 32, 64, tuple(f"f{i}" for i in range(n_features)), hidden, 3.5, 4, arrays, {"s": seed})
    back = load_reranker(rr.to_bytes())
    assert back.to_bytes() == rr.to_bytes() and back.info == {"s": seed}
    for k in shapes:
        np.testing.assert_array_equal(back.arrays[k], rr.arrays[k])
    x = rng.normal(size=(3, 5, n_features)).astype(np.float32)
    np.testing.assert_array_equal(back.score_features(x), rr.score_features(x))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=50))
def test_popularity_quantisation_error_is_bounded(counts):
    from reelpack.models.rerank import dequantise_popularity

    q, scale = quantise_popularity(np.asarray(counts))
    back = dequantise_popularity(q, scale)
    assert q.dtype == np.uint8 and np.all(np.abs(back - np.log1p(counts)) <= scale / 510 + 1e-5)


def test_holdout_split_uses_only_train_items_in_file_order(world):
    from reelpack.models.rerank.train import holdout_split

    split = world[0]
    ctx, hp, hi = holdout_split(split, 0.25)
    for u in range(0, split.n_users, 37):
        own = split.train_items[split.train_indptr[u] : split.train_indptr[u + 1]]
        c = ctx.train_items[ctx.train_indptr[u] : ctx.train_indptr[u + 1]]
        h = hi[hp[u] : hp[u + 1]]
        np.testing.assert_array_equal(np.concatenate([c, h]), own)  # context first, held-out = the last items
        assert len(c) >= 1 and (len(own) < 2 or len(h) >= 1)
    np.testing.assert_array_equal(ctx.test_items, split.test_items)


def test_interaction_term_trains(world):
    split, items, users, codec, codes, _ = world
    rr = train_reranker(codec, codes, split, users, items, np.arange(100), r=R, window=4, hidden=8, epochs=1,
                        interaction_weight=1.0)  # fmt: skip
    assert rr.info["target"] == "float32+interactions" and np.isfinite(rr.info["final_loss"])


def test_progressive_codec_gets_a_coarse_score(world):
    split, items, users, _, _, _ = world
    codec = make_codec("rq2+2").fit(items, seed=0)
    codes = codec.encode(items)
    names = feature_names(codec)
    assert "coarse_score" in names and not any(n.startswith("sub_score") for n in names)
    pop, scale = quantise_popularity(split.item_counts)
    uidx = np.arange(300, 304)
    cand, _ = candidate_lists(users[uidx] @ codec.decode(codes).T, split, uidx, R)
    x = compute_features(codec, make_batch(users[uidx], codes, cand, pop, None, None), names, scale)
    coarse = x[:, :, names.index("coarse_score")]
    for i, u in enumerate(uidx):
        np.testing.assert_allclose(coarse[i], codec.score_prefix(users[u : u + 1], codes[cand[i], :2], 1)[0], atol=1e-5)
        np.testing.assert_allclose(x[i, :, 0], codec.score(users[u : u + 1], codes[cand[i]])[0], atol=1e-4)
