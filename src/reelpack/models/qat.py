"""Compression-aware training: tune a codec's codebooks (and the user tower) through the quantiser.

Post-training quantisation (PTQ) fits a codec to fixed item vectors and accepts
whatever ranking error follows. Here the quantised catalog is trained instead:

* the item tower's output for item ``i`` *is* the codec's reconstruction
  ``x_hat_i = sum_m C[m, codes[i, m]]`` (an :class:`~reelpack.codecs.additive.AdditiveCodebookCodec`),
  so gradients reach the codebooks ``C`` float32 [M, K, d] directly; the codes of
  the base encoder stay fixed (they are what the pack stores);
* the user tower (optional, ``tune_users``) is fine-tuned jointly, starting from the float32 users;
* the loss **distils the float32 model's scores**: for each user of a batch, the
  candidate list is the user's float32 top-``teacher_top`` items plus
  ``random_items`` items drawn uniformly (shared by the batch), and the loss is
  ``KL(softmax(s_float / tau) || softmax(s_quant / tau))`` over that list, with
  ``s = cos(user, item)`` on both sides (items of the two-tower model are unit norm,
  and the codec scores by cosine). The top of the float ranking is what Recall@50
  and NDCG@10 measure, hence the per-user top list; the random items keep the rest
  of the catalog below it.

No interaction data is needed (the teacher already encodes it), nothing of the test
split is seen, and the result is scored against the *original* float32 model.

Adam with a cosine learning-rate decay; seeded; CPU threads set by ``num_threads``.

>>> import numpy as np
>>> from reelpack.codecs import make_codec
>>> rng = np.random.default_rng(0)
>>> items = rng.normal(size=(600, 16)).astype(np.float32); items /= np.linalg.norm(items, axis=1, keepdims=True)
>>> users = rng.normal(size=(200, 16)).astype(np.float32)
>>> res = finetune_codebooks(users, items, make_codec("qat-pq4").fit(items), QATConfig(epochs=1, teacher_top=20, progress=False))
>>> res.codes.shape, res.user_emb.shape, res.codec.spec
((600, 4), (200, 16), 'qat-pq4')
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from reelpack.util.validate import as_float_matrix
from reelpack.codecs.additive import AdditiveCodebookCodec
from reelpack.codecs.base import Codec
from reelpack.codecs.registry import codec_from_bytes
from reelpack.errors import InvalidInputError, NotFittedError, TrainingError

__all__ = ["QATConfig", "QATResult", "finetune_codebooks", "teacher_topk"]


@dataclass(frozen=True)
class QATConfig:
    """Hyper-parameters of :func:`finetune_codebooks`.

    Attributes:
        epochs: passes over the users.
        lr: Adam learning rate (cosine-decayed to 0).
        temperature: softmax temperature of the distillation (on cosine scores).
        teacher_top: candidates per user from the float32 ranking (its top list).
        random_items: uniformly drawn items shared by a batch.
        batch_users: users per step.
        tune_users: also fine-tune the user vectors.
        seed: seeds the user order and the random items.
        num_threads: torch CPU threads.
        progress: show a rich progress bar.
    """

    epochs: int = 4
    lr: float = 1e-3
    temperature: float = 0.05
    teacher_top: int = 100
    random_items: int = 1024
    batch_users: int = 256
    tune_users: bool = True
    seed: int = 0
    num_threads: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "teacher_top", "batch_users", "num_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidInputError(f"QATConfig.{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.random_items, bool) or not isinstance(self.random_items, int) or self.random_items < 0:
            raise InvalidInputError(f"QATConfig.random_items must be an integer >= 0, got {self.random_items!r}")
        for name in ("lr", "temperature"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise InvalidInputError(f"QATConfig.{name} must be a positive finite number, got {v!r}")


@dataclass
class QATResult:
    """Output of :func:`finetune_codebooks`.

    Attributes:
        codec: the tuned codec (a copy; the input codec is not modified).
        codes: uint8 [n_items, M], the catalog's codes (those of the base encoder).
        user_emb: float32 [n_users, d], L2-normalised (tuned when ``tune_users``).
        loss_history: mean distillation loss of each epoch.
        seconds: wall-clock training time.
    """

    codec: AdditiveCodebookCodec
    codes: np.ndarray
    user_emb: np.ndarray
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0


def teacher_topk(user_emb: np.ndarray, item_emb: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """Indexes int64 [n_users, k] of each user's ``k`` best items by float32 inner product (unordered)."""
    k = min(int(k), item_emb.shape[0] - 1) if item_emb.shape[0] > 1 else 1
    out = np.empty((user_emb.shape[0], k), np.int64)
    for s in range(0, user_emb.shape[0], block):
        sc = user_emb[s : s + block] @ item_emb.T
        out[s : s + block] = np.argpartition(-sc, k - 1, axis=1)[:, :k] if k < item_emb.shape[0] else np.arange(k)
    return out


def _progress(enabled: bool):
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn(), transient=False
    )


def finetune_codebooks(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    codec: Codec,
    config: QATConfig = QATConfig(),
    codes: np.ndarray | None = None,
) -> QATResult:
    """Tune ``codec``'s codebooks (and the users) by distilling the float32 model's scores.

    Args:
        user_emb: float32 [n_users, d], the float32 user tower's outputs.
        item_emb: float32 [n_items, d], the float32 item vectors (the teacher; unit norm for a two-tower model).
        codec: a fitted ``"qat-..."`` codec (:class:`AdditiveCodebookCodec`); fit it on ``item_emb``.
        config: hyper-parameters.
        codes: uint8 [n_items, M], ``codec.encode(item_emb)`` when already computed (else encoded here).

    Returns:
        :class:`QATResult` with the tuned codec, the item codes and the user vectors.

    Raises:
        InvalidInputError: wrong codec type, shapes, or fewer than 2 items.
        NotFittedError: the codec is not fitted.
        TrainingError: the loss became NaN/Inf.
    """
    if not isinstance(codec, AdditiveCodebookCodec):
        raise InvalidInputError(
            f"compression-aware training needs a 'qat-...' codec (additive codebooks), got {getattr(codec, 'spec', codec)!r}"
        )
    if not codec.is_fitted:
        raise NotFittedError(f"{codec.spec!r}: fit it on the item vectors before fine-tuning")
    item_emb = as_float_matrix(item_emb, "item_emb", dim=codec.dim)
    user_emb = as_float_matrix(user_emb, "user_emb", dim=codec.dim)
    if item_emb.shape[0] < 2:
        raise InvalidInputError(f"need at least 2 items to fine-tune, got {item_emb.shape[0]}")
    tuned = codec_from_bytes(codec.to_bytes())  # a copy
    assert isinstance(tuned, AdditiveCodebookCodec)
    if codes is None:
        codes = codec.encode(item_emb)
    else:
        from reelpack.util.validate import as_codes

        codes = as_codes(codes, codec.bytes_per_vector)
        if codes.shape[0] != item_emb.shape[0]:
            raise InvalidInputError(f"codes have {codes.shape[0]} rows, item_emb {item_emb.shape[0]}")
    n_users, d = user_emb.shape
    n_items = item_emb.shape[0]
    top = teacher_topk(user_emb, item_emb, config.teacher_top)
    t_users = user_emb.shape[0]
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    t0 = time.perf_counter()
    history: list[float] = []
    try:
        gen = torch.Generator().manual_seed(int(config.seed))
        C = torch.tensor(tuned.codebooks, requires_grad=True)
        U = torch.tensor(user_emb, requires_grad=config.tune_users)
        U0 = torch.from_numpy(user_emb)
        I0 = torch.from_numpy(item_emb)
        codes_t = torch.from_numpy(codes.astype(np.int64))
        top_t = torch.from_numpy(top)
        books = torch.arange(C.shape[0])
        params = [C] + ([U] if config.tune_users else [])
        opt = torch.optim.Adam(params, lr=config.lr)
        bs = min(config.batch_users, t_users)
        steps = max(1, t_users // bs)
        total = config.epochs * steps
        tau = float(config.temperature)

        def decode(idx: torch.Tensor) -> torch.Tensor:
            return C[books, codes_t[idx]].sum(-2)

        step = 0
        with _progress(config.progress) as bar:
            task = bar.add_task(f"compression-aware {codec.spec}", total=total) if bar is not None else None
            for epoch in range(config.epochs):
                perm = torch.randperm(t_users, generator=gen)
                loss_sum = 0.0
                for s in range(steps):
                    u = perm[s * bs : (s + 1) * bs]
                    for group in opt.param_groups:
                        group["lr"] = config.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
                    own = top_t[u]  # [b, T]
                    rnd = torch.randint(0, n_items, (config.random_items,), generator=gen)
                    uv = F.normalize(U[u], dim=1)
                    xo = F.normalize(decode(own.reshape(-1)), dim=1).reshape(len(u), own.shape[1], d)
                    student = [(uv[:, None, :] * xo).sum(-1)]
                    with torch.no_grad():
                        tu = F.normalize(U0[u], dim=1)  # cosine on the teacher side too (docstring)
                        teacher = [(tu[:, None, :] * I0[own]).sum(-1)]
                    if config.random_items:
                        student.append(uv @ F.normalize(decode(rnd), dim=1).T)
                        with torch.no_grad():
                            teacher.append(tu @ I0[rnd].T)
                    s_log = torch.cat(student, 1) / tau
                    with torch.no_grad():
                        t_log = torch.cat(teacher, 1) / tau
                    loss = F.kl_div(
                        F.log_softmax(s_log, 1), F.log_softmax(t_log, 1), log_target=True, reduction="batchmean"
                    )
                    if not torch.isfinite(loss):
                        raise TrainingError(f"distillation loss became {loss.item()} at epoch {epoch + 1}; lower lr")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    loss_sum += float(loss.detach())
                    step += 1
                    if bar is not None:
                        bar.advance(task)
                history.append(loss_sum / steps)
                if bar is not None:
                    bar.update(task, description=f"compression-aware {codec.spec} loss {history[-1]:.4f}")
        tuned.set_codebooks(C.detach().numpy())
        with torch.no_grad():
            users_out = F.normalize(U.detach(), dim=1).numpy().astype(np.float32)
    finally:
        torch.set_num_threads(prev_threads)
    if not np.isfinite(users_out).all():
        raise TrainingError("fine-tuning produced NaN/Inf user vectors; lower lr")
    return QATResult(tuned, codes, np.ascontiguousarray(users_out), history, time.perf_counter() - t0)
