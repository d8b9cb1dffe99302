"""Compression-aware training, objective "distill": finetune_codebooks distils the float32 scores into a qat- codec."""

from __future__ import annotations

import numpy as np
import pytest

from reelpack.codecs import make_codec
from reelpack.errors import InvalidInputError, NotFittedError
from reelpack.models.qat import QATConfig, finetune_codebooks, teacher_topk

D = 16
N_ITEMS = 800
N_USERS = 300
FAST = dict(
    objective="distill", lr=3e-3, teacher_top=20, random_items=128, batch_users=32, num_threads=1, progress=False
)


@pytest.fixture(scope="module")
def problem(clustered_unit):
    """800 unit items, 300 users near items: 2-byte PQ (PTQ) visibly loses the float32 top-10."""
    items = clustered_unit(N_ITEMS, D, seed=0)
    rng = np.random.default_rng(1)
    users = items[rng.integers(0, N_ITEMS, N_USERS)] + 0.1 * rng.normal(size=(N_USERS, D)).astype(np.float32)
    codec = make_codec("qat-pq2").fit(items, seed=0)
    codes = codec.encode(items)
    return {"items": items, "users": users.astype(np.float32), "codec": codec, "codes": codes}


def overlap10(users: np.ndarray, items: np.ndarray, scores: np.ndarray) -> float:
    """Mean |top10(float32 IP) & top10(scores)| / 10 over users."""
    ref = np.argsort(-(users @ items.T), axis=1)[:, :10]
    got = np.argsort(-scores, axis=1)[:, :10]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ref, got)]))


@pytest.fixture(scope="module")
def tuned(problem):
    cfg = QATConfig(epochs=10, seed=0, **FAST)
    before = problem["codec"].to_bytes()
    res = finetune_codebooks(problem["users"], problem["items"], problem["codec"], cfg, codes=problem["codes"])
    return res, before


def test_finetune_lowers_loss_and_raises_overlap(problem, tuned):
    res, _ = tuned
    hist = res.loss_history
    assert len(hist) == 10 and all(np.isfinite(hist))
    assert hist[0] > hist[1] > hist[2] and hist[-1] < 0.75 * hist[0]
    users, items = problem["users"], problem["items"]
    ptq = overlap10(users, items, problem["codec"].score(users, problem["codes"]))
    qat = overlap10(users, items, res.codec.score(res.user_emb, res.codes))
    assert ptq < 0.85  # the problem is hard for 2-byte PTQ
    assert qat >= ptq + 0.03, (ptq, qat)
    assert res.codes.shape == (N_ITEMS, 2) and res.codes.dtype == np.uint8
    assert res.user_emb.shape == (N_USERS, D) and res.user_emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(res.user_emb, axis=1), 1.0, atol=1e-5)
    assert res.codec.spec == "qat-pq2" and res.seconds > 0


def test_input_codec_untouched_and_codes_kept(problem, tuned):
    res, before = tuned
    assert problem["codec"].to_bytes() == before
    np.testing.assert_array_equal(res.codes, problem["codes"])  # codes of the base encoder, as passed in
    assert not np.array_equal(res.codec.codebooks, problem["codec"].codebooks)
    assert res.codec is not problem["codec"]


def test_three_epochs_loss_decreases_and_default_codes(problem):
    cfg = QATConfig(epochs=3, seed=0, **FAST)
    res = finetune_codebooks(problem["users"], problem["items"], problem["codec"], cfg)  # codes encoded here
    np.testing.assert_array_equal(res.codes, problem["codes"])
    assert len(res.loss_history) == 3 and res.loss_history[0] > res.loss_history[1] > res.loss_history[2]


def test_codes_passed_in_are_used(problem):
    cfg = QATConfig(epochs=1, seed=0, **FAST)
    other = np.roll(problem["codes"], 1, axis=0)
    res = finetune_codebooks(problem["users"], problem["items"], problem["codec"], cfg, codes=other)
    np.testing.assert_array_equal(res.codes, other)
    with pytest.raises(InvalidInputError, match="rows"):
        finetune_codebooks(problem["users"], problem["items"], problem["codec"], cfg, codes=problem["codes"][:-1])
    with pytest.raises(InvalidInputError):
        finetune_codebooks(problem["users"], problem["items"], problem["codec"], cfg, codes=problem["codes"][:, :1])


def test_bad_codec_and_inputs(problem):
    cfg = QATConfig(epochs=1, **FAST)
    pq = make_codec("pq2").fit(problem["items"], seed=0)
    with pytest.raises(InvalidInputError, match="qat-"):
        finetune_codebooks(problem["users"], problem["items"], pq, cfg)
    with pytest.raises(NotFittedError):
        finetune_codebooks(problem["users"], problem["items"], make_codec("qat-pq2"), cfg)
    with pytest.raises(InvalidInputError):
        finetune_codebooks(problem["users"][:, :8], problem["items"], problem["codec"], cfg)
    with pytest.raises(InvalidInputError):
        finetune_codebooks(problem["users"], problem["items"][:1], problem["codec"], cfg)


@pytest.mark.parametrize(
    "field, value",
    [("epochs", 0), ("epochs", 1.5), ("epochs", True), ("teacher_top", 0), ("batch_users", -1),
     ("num_threads", 0), ("random_items", -1), ("random_items", False), ("lr", 0.0), ("lr", float("nan")),
     ("temperature", -0.1), ("temperature", float("inf")), ("lr", "0.1")],
)  # fmt: skip
def test_bad_config(field, value):
    with pytest.raises(InvalidInputError, match=field):
        QATConfig(**{field: value})


def test_frozen_users_stay_put(problem):
    cfg = QATConfig(epochs=2, seed=0, tune_users=False, **FAST)
    res = finetune_codebooks(problem["users"], problem["items"], problem["codec"], cfg, codes=problem["codes"])
    u = problem["users"] / np.linalg.norm(problem["users"], axis=1, keepdims=True)
    np.testing.assert_allclose(res.user_emb, u, rtol=1e-6, atol=1e-6)
    assert not np.array_equal(res.codec.codebooks, problem["codec"].codebooks)


def test_same_seed_same_result(problem):
    cfg = QATConfig(epochs=2, seed=3, **FAST)
    a = finetune_codebooks(problem["users"], problem["items"], problem["codec"], cfg, codes=problem["codes"])
    b = finetune_codebooks(problem["users"], problem["items"], problem["codec"], cfg, codes=problem["codes"])
    assert a.codec.to_bytes() == b.codec.to_bytes()
    np.testing.assert_array_equal(a.user_emb, b.user_emb)
    assert a.loss_history == b.loss_history
    c = finetune_codebooks(
        problem["users"], problem["items"], problem["codec"], QATConfig(epochs=2, seed=4, **FAST), codes=problem["codes"]
    )
    assert c.codec.to_bytes() != a.codec.to_bytes()


def test_teacher_topk_matches_argsort(problem):
    users, items = problem["users"][:20], problem["items"]
    top = teacher_topk(users, items, 15, block=7)
    ref = np.argsort(-(users @ items.T), axis=1)[:, :15]
    assert top.shape == (20, 15) and top.dtype == np.int64
    for a, b in zip(top, ref):
        assert set(a) == set(b)
    assert teacher_topk(users, items[:5], 50).shape == (20, 4)  # capped at n_items - 1


def test_scores_are_cosine_on_both_sides(problem):
    """Scaling the users changes neither teacher nor student (both score by cosine) when users are frozen."""
    cfg = QATConfig(epochs=1, seed=0, tune_users=False, **FAST)
    a = finetune_codebooks(problem["users"], problem["items"], problem["codec"], cfg, codes=problem["codes"])
    b = finetune_codebooks(5.0 * problem["users"], problem["items"], problem["codec"], cfg, codes=problem["codes"])
    np.testing.assert_allclose(a.codec.codebooks, b.codec.codebooks, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.loss_history, b.loss_history, rtol=1e-4)
