"""Compression-aware training, objective "softmax": rank the user's training positives through the codebooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reelpack.codecs import make_codec
from reelpack.errors import InvalidInputError, ReelpackError, TrainingDivergedError, TrainingError
from reelpack.models import qat as qat_module
from reelpack.models.qat import QATConfig, finetune_codebooks
from reelpack.models.twotower import in_batch_softmax_loss, item_log_q

D = 16
N_ITEMS = 300
N_USERS = 200
PER_USER = 8
FAST = dict(lr=1e-2, batch_pairs=64, random_items=64, num_threads=1, progress=False)


@pytest.fixture(scope="module")
def problem(clustered_unit):
    """300 unit items, 200 users near items, 8 training positives per user drawn from its float32 top-25."""
    items = clustered_unit(N_ITEMS, D, seed=0)
    rng = np.random.default_rng(1)
    users = (items[rng.integers(0, N_ITEMS, N_USERS)] + 0.1 * rng.normal(size=(N_USERS, D))).astype(np.float32)
    top = np.argsort(-(users @ items.T), axis=1)[:, :25]
    pos_items = np.concatenate([rng.choice(t, PER_USER, replace=False) for t in top]).astype(np.int64)
    pos_users = np.repeat(np.arange(N_USERS, dtype=np.int64), PER_USER)
    codec = make_codec("qat-pq2").fit(items, seed=0)
    return {
        "items": items, "users": users, "codec": codec, "codes": codec.encode(items),
        "positives": (pos_users, pos_items),
    }  # fmt: skip


def run(problem, positives=None, **overrides):
    cfg = QATConfig(**{"epochs": 6, "seed": 0, **FAST, **overrides})
    pos = problem["positives"] if positives is None else positives
    return finetune_codebooks(problem["users"], problem["items"], problem["codec"], cfg, problem["codes"], pos)


def recall_of_positives(scores: np.ndarray, positives: tuple[np.ndarray, np.ndarray], k: int = 10) -> float:
    """Mean over users of |top-k(scores) & training positives| / min(k, #positives)."""
    pu, pi = positives
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return float(np.mean([len(set(pi[pu == u]) & set(top[u])) / min(k, np.sum(pu == u)) for u in np.unique(pu)]))


@pytest.mark.parametrize("random_items", [64, 0])
def test_softmax_lowers_loss_and_ranks_training_positives_higher(problem, random_items):
    before = problem["codec"].to_bytes()
    res = run(problem, random_items=random_items)
    hist = res.loss_history
    assert len(hist) == 6 and np.isfinite(hist).all() and np.isfinite(res.initial_loss)
    assert hist[-1] < hist[2] < hist[0] and hist[-1] < 0.8 * res.initial_loss, (res.initial_loss, hist)
    users, pos = problem["users"], problem["positives"]
    ptq = recall_of_positives(problem["codec"].score(users, problem["codes"]), pos)
    tuned = recall_of_positives(res.codec.score(res.user_emb, res.codes), pos)
    assert tuned >= ptq + 0.2, (ptq, tuned)
    # the user tower stays the model's by default; the input codec and the codes are untouched
    np.testing.assert_allclose(res.user_emb, users / np.linalg.norm(users, axis=1, keepdims=True), atol=1e-6)
    assert problem["codec"].to_bytes() == before and res.codec is not problem["codec"]
    np.testing.assert_array_equal(res.codes, problem["codes"])
    assert res.codec.spec == "qat-pq2" and res.user_emb.dtype == np.float32 and res.seconds > 0


def test_initial_loss_is_the_twotower_in_batch_loss_on_decoded_items(problem):
    """With one batch holding every pair and no uniform items, the loss before training is
    twotower.in_batch_softmax_loss on (users, decoded items) with log q from the pairs."""
    pu, pi = problem["positives"]
    res = run(problem, epochs=1, random_items=0, batch_pairs=4096, lr=1e-9, temperature=0.1)
    perm = torch.randperm(len(pu), generator=torch.Generator().manual_seed(0))  # the order is irrelevant here
    u, i = torch.from_numpy(pu)[perm], torch.from_numpy(pi)[perm]
    x = F.normalize(torch.from_numpy(problem["codec"].decode(problem["codes"])), dim=1)
    uv = F.normalize(torch.from_numpy(problem["users"]), dim=1)
    log_q = torch.from_numpy(item_log_q(np.bincount(pi, minlength=N_ITEMS)))
    ref = float(in_batch_softmax_loss(uv[u], x[i], i, 0.1, log_q[i]))
    assert res.initial_loss == pytest.approx(ref, rel=1e-4)
    assert res.loss_history[0] == pytest.approx(ref, rel=1e-4)  # one step at lr 1e-9: the same batch, same loss


def test_initial_loss_is_measured_on_epoch_one_batches(problem):
    """Four batches per epoch (the probe's count) and a vanishing lr: the first epoch's mean is the initial loss."""
    res = run(problem, epochs=1, batch_pairs=len(problem["positives"][0]) // 4, lr=1e-9)
    assert res.loss_history[0] == pytest.approx(res.initial_loss, rel=1e-5)


def test_tune_users_default_depends_on_objective(problem):
    assert not QATConfig().tunes_users and QATConfig(objective="distill").tunes_users
    assert QATConfig(tune_users=True).tunes_users and not QATConfig(objective="distill", tune_users=False).tunes_users
    res = run(problem, epochs=2, tune_users=True)
    u = problem["users"] / np.linalg.norm(problem["users"], axis=1, keepdims=True)
    assert not np.allclose(res.user_emb, u, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(res.user_emb, axis=1), 1.0, atol=1e-5)


def test_distill_weight_adds_the_distillation_term(problem):
    plain = run(problem, epochs=2)
    mixed = run(problem, epochs=2, distill_weight=1.0, teacher_top=20)
    assert mixed.initial_loss > plain.initial_loss  # a KL term >= 0 is added (> 0: PTQ is lossy here)
    assert np.isfinite(mixed.loss_history).all() and mixed.loss_history[-1] < mixed.initial_loss
    assert mixed.codec.to_bytes() != plain.codec.to_bytes()


def test_same_seed_same_result(problem):
    a, b = run(problem, epochs=2, seed=3), run(problem, epochs=2, seed=3)
    assert a.codec.to_bytes() == b.codec.to_bytes()
    assert a.loss_history == b.loss_history and a.initial_loss == b.initial_loss
    np.testing.assert_array_equal(a.user_emb, b.user_emb)
    assert run(problem, epochs=2, seed=4).codec.to_bytes() != a.codec.to_bytes()


def test_positives_required_and_checked(problem):
    pu, pi = problem["positives"]
    with pytest.raises(InvalidInputError, match="objective 'softmax' needs positives"):
        finetune_codebooks(problem["users"], problem["items"], problem["codec"], QATConfig(progress=False))
    bad = [
        ((pu,), "pair"),
        ([pu, pi, pi], "pair"),
        (np.stack([pu, pi]), "pair"),
        ((pu.astype(np.float64), pi), "users index must be an integer"),
        ((pu, pi > 5), "items index must be an integer"),
        ((pu[:, None], pi[:, None]), "1-D"),
        ((pu, pi[:-1]), "users has 1600 entries, items 1599"),
        ((pu[:1], pi[:1]), "at least 2 pairs"),
        ((np.where(pu == 0, -1, pu), pi), r"users index must lie in \[0, 200\)"),
        ((pu, np.where(pi == pi[0], N_ITEMS, pi)), r"items index must lie in \[0, 300\)"),
    ]
    for positives, message in bad:
        with pytest.raises(InvalidInputError, match=message):
            run(problem, positives=positives, epochs=1)
    # narrower integer dtypes are accepted
    run(problem, positives=(pu.astype(np.int32), pi.astype(np.uint16)), epochs=1)


def test_distill_ignores_positives_but_checks_them(problem):
    cfg = dict(objective="distill", epochs=1, lr=3e-3, teacher_top=20, batch_users=32)
    a = run(problem, **cfg)
    b = finetune_codebooks(
        problem["users"], problem["items"], problem["codec"], QATConfig(**{**FAST, **cfg}), problem["codes"]
    )
    assert a.codec.to_bytes() == b.codec.to_bytes() and a.loss_history == b.loss_history
    with pytest.raises(InvalidInputError, match="lie in"):
        run(problem, positives=(problem["positives"][0] + N_USERS, problem["positives"][1]), **cfg)


@pytest.mark.parametrize(
    "overrides",
    [dict(lr=1e4), dict(lr=1e4, temperature=0.01), dict(objective="distill", lr=1e4, teacher_top=20, batch_users=32)],
)
def test_absurd_lr_raises_training_diverged(problem, overrides):
    with pytest.raises(TrainingDivergedError, match=r"diverged at epoch 1/3.*untouched codec is the fallback") as e:
        run(problem, epochs=3, **overrides)
    assert isinstance(e.value, TrainingError) and isinstance(e.value, ReelpackError)


def test_diverge_factor_inf_turns_the_epoch_check_off(problem):
    res = run(problem, epochs=2, lr=1e4, diverge_factor=float("inf"))
    assert res.loss_history[0] > 1.5 * res.initial_loss  # what the default factor would have refused


def test_non_finite_loss_raises_training_diverged(problem, monkeypatch):
    calls = {"n": 0}
    real = qat_module.in_batch_logits

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] > 4 + 2 else out  # after the probe's 4 batches and 2 steps

    monkeypatch.setattr(qat_module, "in_batch_logits", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"epoch 1/2, step 3: the softmax loss became nan"):
        run(problem, epochs=2)
    monkeypatch.setattr(qat_module, "in_batch_logits", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(TrainingDivergedError, match="before any step"):
        run(problem, epochs=1)


@pytest.mark.parametrize(
    "field, value",
    [("objective", "kl"), ("objective", None), ("batch_pairs", 1), ("batch_pairs", 2.0), ("distill_weight", -0.5),
     ("distill_weight", float("nan")), ("distill_weight", True), ("diverge_factor", 0.9),
     ("diverge_factor", float("nan")), ("diverge_factor", "2"), ("tune_users", "yes"), ("lr", True)],
)  # fmt: skip
def test_bad_config(field, value):
    with pytest.raises(InvalidInputError, match=field):
        QATConfig(**{field: value})
