"""Offline training of the re-ranker (torch) on the train split, and the candidate pipeline it shares with evaluation.

Candidates. For each user the codec scores every item (``q @ decode(codes).T``, equal to
the codec's own ADC score up to float32 rounding), the user's train items are excluded,
and the ``R`` best form the list (codec rank order); :func:`candidate_lists`.

Targets (no test item is ever read):

* ``"float32"`` (distillation): the teacher is the float32 score ``q . x`` of each
  candidate; the loss is ListNet's cross-entropy between ``softmax(teacher / T)`` and
  ``softmax(model)`` over each list, with ``T`` = ``temperature`` times the standard
  deviation of the teacher scores over all training lists, so the target concentrates on
  the first few tens of the float32 order (what Recall@50 and NDCG@10 reward).
* optional interaction term (``interaction_weight > 0``, off by default): the last
  ``holdout`` share of each training user's train items is held out as positives. The
  user vectors were trained on those items, so they are easier than real test items;
  on amazon-book 64-d ``apq8`` (3,000 users) adding it with weight 1 lowered rel
  Recall@50 of the re-ranked list from 0.845 to 0.805, so it stays off.

Training users are given explicitly (the benchmark draws them from users outside the
evaluated sample). A share ``drop_history`` of the training lists have their history
removed, so that users without history are a trained case (see
:mod:`reelpack.models.rerank.features`). Adam, full-list mini-batches, fixed seeds; torch runs on
one thread for reproducible timings.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from reelpack.codecs.base import Codec
from reelpack.data.interactions import Split
from reelpack.errors import DimensionMismatchError, InvalidInputError, TrainingError
from reelpack.models.rerank.features import CandidateBatch, compute_features, feature_names, quantise_popularity
from reelpack.models.rerank.model import Reranker, codec_fingerprint
from reelpack.kernels.topk import mask_rows, topk

__all__ = [
    "candidate_lists", "user_history", "holdout_split", "make_batch", "train_reranker", "DEFAULT_R", "DEFAULT_WINDOW",
]

DEFAULT_R = 200
DEFAULT_WINDOW = 16


def candidate_lists(scores: np.ndarray, split: Split, users: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``r`` item indexes int64 [b, r] and scores float32 [b, r] per user, train items excluded.

    ``scores`` float32 [b, n_items] is modified in place (train items set to -inf).
    """
    users = np.asarray(users, np.int64)
    if scores.shape != (len(users), split.n_items):
        raise DimensionMismatchError(f"scores must be [{len(users)}, {split.n_items}], got {scores.shape}")
    mask_rows(scores, split.train_indptr, split.train_items, users)
    return topk(scores, r)


def user_history(split: Split, users: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Last ``window`` train items of each user (file order): (item int64 [b, L], valid bool [b, L]).

    Users with fewer than ``window`` train items are left-padded (``valid`` False, item 0).
    """
    users = np.asarray(users, np.int64)
    start, end = split.train_indptr[users], split.train_indptr[users + 1]
    pos = end[:, None] - window + np.arange(window)[None, :]
    valid = pos >= start[:, None]
    items = split.train_items[np.where(valid, pos, 0)].astype(np.int64)
    return np.where(valid, items, 0), valid


def holdout_split(split: Split, share: float) -> tuple[Split, np.ndarray, np.ndarray]:
    """Hold out the last ``share`` of each user's train items (file order; at least 1 when a user has 2+).

    Returns (a Split whose train part is the remaining "context" items, positives indptr int64
    [n_users + 1], positives items int32 [nnz]). Test items are not touched or read.
    """
    import dataclasses

    counts = np.diff(split.train_indptr)
    n_hold = np.where(counts >= 2, np.maximum(1, np.rint(share * counts)), 0).astype(np.int64)
    n_hold = np.minimum(n_hold, np.maximum(counts - 1, 0))
    user_of = np.repeat(np.arange(split.n_users), counts)
    pos_in_user = np.arange(split.train_items.size) - np.repeat(split.train_indptr[:-1], counts)
    held = pos_in_user >= (counts - n_hold)[user_of]
    ctx_indptr = np.zeros(split.n_users + 1, np.int64)
    np.cumsum(counts - n_hold, out=ctx_indptr[1:])
    hold_indptr = np.zeros(split.n_users + 1, np.int64)
    np.cumsum(n_hold, out=hold_indptr[1:])
    ctx = dataclasses.replace(split, train_indptr=ctx_indptr, train_items=split.train_items[~held])
    return ctx, hold_indptr, split.train_items[held]


def make_batch(
    queries: np.ndarray,
    codes: np.ndarray,
    cand: np.ndarray,
    pop_bytes: np.ndarray | None,
    hist_items: np.ndarray | None,
    hist_valid: np.ndarray | None,
) -> CandidateBatch:
    """Gather what the phone holds into a :class:`CandidateBatch` (codes uint8 [n_items, B], cand int [b, R])."""
    return CandidateBatch(
        queries=np.ascontiguousarray(queries, np.float32),
        cand_codes=codes[cand],
        pop_bytes=None if pop_bytes is None else pop_bytes[cand],
        recent_codes=None if hist_items is None else codes[hist_items],
        recent_mask=hist_valid,
    )


def train_reranker(
    codec: Codec,
    codes: np.ndarray,
    split: Split,
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    users: np.ndarray,
    *,
    r: int = DEFAULT_R,
    window: int = DEFAULT_WINDOW,
    hidden: int = 32,
    epochs: int = 12,
    lists_per_step: int = 64,
    lr: float = 3e-3,
    temperature: float = 0.03,
    drop_history: float = 0.1,
    interaction_weight: float = 0.0,
    holdout: float = 0.2,
    popularity: bool = True,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> Reranker:
    """Train a re-ranker for ``codec`` on the train split of ``users`` with float32 distillation targets.

    Args:
        codec: fitted codec; codes: uint8 [n_items, B] its codes of every catalog item.
        split: the train/test split (only train items are read).
        user_emb, item_emb: float32 [n_users, d], [n_items, d]: queries and the float32 teacher.
        users: int user indexes to train on (keep the evaluated users out).
        r: candidates per list; window: history items L; hidden: H.
        temperature: teacher softmax temperature in units of the teacher scores' std.
        drop_history: share of training lists whose history is removed.
        interaction_weight: weight of the interaction loss (0 = pure distillation): the last
            ``holdout`` share of each training user's train items (file order) is held out,
            candidates and history come from the rest, and the loss adds
            ``interaction_weight * softmax cross-entropy`` towards the held-out items in the list.
        popularity: use the ``log_pop`` feature (one popularity byte per item on the phone);
            False trains on the codes alone (the file records the feature names without it).
        progress: ``progress(stage, done, total)`` callback.

    Raises:
        InvalidInputError, DimensionMismatchError: bad arguments; TrainingError: loss not finite.
    """
    import torch

    users = np.asarray(users, np.int64)
    if users.size == 0:
        raise InvalidInputError("train_reranker needs at least one training user")
    if item_emb.shape != (split.n_items, codec.dim) or user_emb.shape[1] != codec.dim:
        raise DimensionMismatchError(
            f"embeddings must be users [n, {codec.dim}] and items [{split.n_items}, {codec.dim}], "
            f"got {user_emb.shape} and {item_emb.shape}"
        )
    if not 1 <= r <= split.n_items:
        raise InvalidInputError(f"R must lie in 1..{split.n_items}, got {r}")
    names = feature_names(codec, popularity=bool(popularity))
    pop_bytes, pop_scale = quantise_popularity(split.item_counts)
    if not popularity:
        pop_bytes = None  # never read: proves the model needs no popularity signal
    rng = np.random.default_rng(seed)
    xhat_t = np.ascontiguousarray(codec.decode(codes).T)
    feats, teach, labels = [], [], []
    block = 512
    ctx = split
    if interaction_weight > 0:
        from reelpack.metrics.quality import hit_matrix

        ctx, hold_indptr, hold_items = holdout_split(split, holdout)
    for start in range(0, len(users), block):
        ub = users[start : start + block]
        q = np.ascontiguousarray(user_emb[ub], np.float32)
        cand, _ = candidate_lists(q @ xhat_t, ctx, ub, r)
        hist, valid = user_history(ctx, ub, window)
        if interaction_weight > 0:
            labels.append(hit_matrix(cand, ub, hold_indptr, hold_items).astype(np.float32))
        valid = valid & (rng.random(len(ub)) >= drop_history)[:, None]
        batch = make_batch(q, codes, cand, pop_bytes, hist, valid)
        feats.append(compute_features(codec, batch, names, pop_scale))
        teach.append(np.einsum("bd,brd->br", q, item_emb[cand]).astype(np.float32))
        if progress is not None:
            progress("features", min(start + block, len(users)), len(users))
    x = np.concatenate(feats)
    t = np.concatenate(teach)
    flat = x.reshape(-1, x.shape[2])
    mean = flat.mean(axis=0).astype(np.float32)
    std = flat.std(axis=0).astype(np.float32)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
    tau = float(temperature * t.std()) or 1.0

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    f = len(names)
    lin1, lin2, out = torch.nn.Linear(f, hidden), torch.nn.Linear(hidden, hidden), torch.nn.Linear(hidden, 1)
    skip = torch.nn.Linear(f, 1, bias=False)
    params = [*lin1.parameters(), *lin2.parameters(), *out.parameters(), *skip.parameters()]
    with torch.no_grad():  # start from the codec's own order: skip = codec score, MLP output small
        skip.weight.zero_()
        skip.weight[0, names.index("codec_score")] = float(std[names.index("codec_score")] / tau)
        out.weight.mul_(0.1)
    opt = torch.optim.Adam(params, lr=lr)
    xt = torch.from_numpy((x - mean) / std)
    target = torch.softmax(torch.from_numpy(t / tau), dim=1)
    if interaction_weight > 0:
        lab = np.concatenate(labels)
        lab = lab / np.maximum(lab.sum(axis=1, keepdims=True), 1.0)  # lists without a positive add nothing
        target = target + float(interaction_weight) * torch.from_numpy(lab)

    def forward(z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(lin2(torch.relu(lin1(z))))
        return (out(h) + skip(z)).squeeze(-1)

    n = xt.shape[0]
    steps = max(1, (n + lists_per_step - 1) // lists_per_step)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    loss_v = float("nan")
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for s in range(steps):
            idx = perm[s * lists_per_step : (s + 1) * lists_per_step]
            logp = torch.log_softmax(forward(xt[idx]), dim=1)
            loss = -(target[idx] * logp).sum(dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        loss_v = total / n
        if not np.isfinite(loss_v):
            raise TrainingError(f"re-ranker loss is not finite at epoch {epoch}")
        if progress is not None:
            progress("epochs", epoch + 1, epochs)
    b3 = out.bias.detach().numpy().astype(np.float32).reshape(1)
    arrays = {
        "mean": mean, "std": std,
        "w1": lin1.weight.detach().numpy().T.copy(), "b1": lin1.bias.detach().numpy().copy(),
        "w2": lin2.weight.detach().numpy().T.copy(), "b2": lin2.bias.detach().numpy().copy(),
        "w3": out.weight.detach().numpy()[0].copy(), "b3": b3,
        "w_lin": skip.weight.detach().numpy()[0].copy(),
    }  # fmt: skip
    info = {"target": "float32" if interaction_weight <= 0 else "float32+interactions",
            "interaction_weight": float(interaction_weight), "holdout": float(holdout),
            "train_users": int(len(users)), "r": int(r), "epochs": int(epochs),
            "temperature": float(temperature), "tau": tau, "final_loss": loss_v, "seed": int(seed),
            "drop_history": float(drop_history), "lr": float(lr), "popularity": bool(popularity)}  # fmt: skip
    fingerprint = codec_fingerprint(codec)
    return Reranker(codec.spec, fingerprint, int(codec.dim), names, hidden, pop_scale, window, arrays, info)
