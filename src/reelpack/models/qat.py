"""Compression-aware training: tune a codec's codebooks (and optionally the user tower) through the quantiser.

Post-training quantisation (PTQ) fits a codec to fixed item vectors and accepts
whatever ranking error follows. Here the quantised catalog is trained instead:
the item tower's output for item ``i`` *is* the codec's reconstruction
``x_hat_i = sum_m C[m, codes[i, m]]`` (an :class:`~reelpack.codecs.additive.AdditiveCodebookCodec`),
so gradients reach the codebooks ``C`` float32 [M, K, d] directly; the codes of
the base encoder stay fixed (they are what the pack stores). Scores are cosines
on both sides: ``s(u, i) = cos(user_u, x_hat_i)``, as the codec scores.

Two objectives (``QATConfig.objective``):

``"softmax"`` (default): rank the user's *training positives* against the catalog.
    ``positives = (users int64 [nnz], items int64 [nnz])`` are the two-tower's own
    train pairs (``split.train_pairs()``; on a validation protocol the *fit* split's,
    never test or validation items). A batch holds ``B`` pairs ``(u_a, i_a)`` drawn
    without replacement from the shuffled pairs, plus ``R = random_items`` items
    ``r_1..r_R`` drawn uniformly from the catalog (shared by the batch). For row ``a``::

        logit[a, b]     = cos(U[u_a], x_hat[i_b]) / temperature - log c(i_b)    (in-batch columns, b < B)
        logit[a, B + j] = cos(U[u_a], x_hat[r_j]) / temperature - log c(r_j)    (uniform columns)
        logit[a, b]     = -inf  where column b holds i_a and b != a             (duplicates / accidental hits)
        loss = mean_a cross_entropy(logit[a, :], target = a)

    ``q(i)`` is the item's frequency among the pairs
    (:func:`~reelpack.models.twotower.item_log_q`) and ``c(i)`` its expected count
    among a batch's columns: ``c = q`` when ``R = 0`` (exactly the two-tower's logQ
    correction, :func:`~reelpack.models.twotower.in_batch_logits`), else the
    mixed-sampling count ``c = B * q + R / n_items``. With ``distill_weight > 0``
    the distillation loss below (over the batch's distinct users, sharing the
    batch's uniform items) is added with that weight. Users are tuned only when
    ``tune_users`` is true (default false here: the shipped user tower stays the
    model's). This objective optimises what Recall@K measures on held-out items
    of the same users; the distillation target does not, because the float32
    top list is dominated by the user's own train items, which evaluation excludes.

``"distill"``: distil the float32 model's scores; no interaction data needed.
    For each user of a batch of ``batch_users`` users, the candidate list is the
    user's float32 top-``teacher_top`` items plus the ``random_items`` uniform
    items, and the loss is ``KL(softmax(s_float / tau) || softmax(s_quant / tau))``
    over that list (``s_float = cos(user, item_emb)``; two-tower items are unit
    norm). Users are tuned by default (``tune_users`` unset means true here).

Divergence: before any step the loss is measured on the first (up to 4) batches
of epoch 1 (:attr:`QATResult.initial_loss`). A non-finite loss, non-finite
parameters, or an epoch whose mean loss exceeds ``diverge_factor`` times that
initial loss raise :class:`~reelpack.errors.TrainingDivergedError`; the caller
then keeps the untouched codec (the input codec is never modified).

Adam with a cosine learning-rate decay; seeded (same seed, data and config give
identical results on CPU); CPU threads set by ``num_threads``. The caller decides
on a validation split whether the tuned codec beats the untouched one.

>>> import numpy as np
>>> from reelpack.codecs import make_codec
>>> rng = np.random.default_rng(0)
>>> items = rng.normal(size=(600, 16)).astype(np.float32); items /= np.linalg.norm(items, axis=1, keepdims=True)
>>> users = rng.normal(size=(200, 16)).astype(np.float32)
>>> pairs = (rng.integers(0, 200, 2000), rng.integers(0, 600, 2000))
>>> codec = make_codec("qat-pq4").fit(items)
>>> res = finetune_codebooks(users, items, codec, QATConfig(epochs=1, batch_pairs=256, progress=False), positives=pairs)
>>> res.codes.shape, res.user_emb.shape, res.codec.spec, len(res.loss_history)
((600, 4), (200, 16), 'qat-pq4', 1)
>>> cfg = QATConfig(objective="distill", epochs=1, teacher_top=20, progress=False)
>>> res = finetune_codebooks(users, items, codec, cfg)
>>> res.codec.spec
'qat-pq4'
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from reelpack.util.validate import as_codes, as_float_matrix
from reelpack.codecs.additive import AdditiveCodebookCodec
from reelpack.codecs.base import Codec
from reelpack.codecs.registry import codec_from_bytes
from reelpack.errors import (
    DimensionMismatchError,
    DTypeError,
    InvalidInputError,
    NotFittedError,
    TrainingDivergedError,
)
from reelpack.models.twotower import in_batch_logits, item_log_q

__all__ = ["OBJECTIVES", "QATConfig", "QATResult", "finetune_codebooks", "teacher_topk"]

OBJECTIVES: tuple[str, ...] = ("softmax", "distill")
"""The training objectives :class:`QATConfig` accepts."""

_PROBE_BATCHES = 4
"""Batches of epoch 1 over which the loss before any step is measured."""

_MIN_REFERENCE_LOSS = 1e-3
"""An initial loss below this counts as this in the divergence test (a near-perfect start is not flagged for noise)."""


@dataclass(frozen=True)
class QATConfig:
    """Hyper-parameters of :func:`finetune_codebooks`.

    Attributes:
        objective: ``"softmax"`` (rank the training positives; needs ``positives``) or ``"distill"``
            (distil the float32 scores); see the module docstring.
        epochs: passes over the positives (``"softmax"``) or over the users (``"distill"``).
        lr: Adam learning rate (cosine-decayed to 0).
        temperature: softmax temperature on cosine scores. For ``"softmax"`` the two-tower's own
            temperature (``TwoTowerConfig.temperature``) is the natural choice.
        teacher_top: candidates per user from the float32 ranking (distillation term only).
        random_items: uniformly drawn items shared by a batch (extra negatives / candidates); 0 for none.
        batch_users: users per step of ``"distill"``.
        batch_pairs: positive pairs per step of ``"softmax"`` (= in-batch negatives + 1).
        tune_users: also fine-tune the user vectors; ``None`` means false for ``"softmax"``, true for
            ``"distill"`` (see :attr:`tunes_users`).
        distill_weight: weight of the distillation term added to the ``"softmax"`` loss (>= 0; ignored by
            ``"distill"``).
        diverge_factor: an epoch whose mean loss exceeds this times the initial loss raises
            :class:`~reelpack.errors.TrainingDivergedError` (>= 1; ``inf`` turns the check off; a
            non-finite loss always raises).
        seed: seeds the shuffles and the random items.
        num_threads: torch CPU threads.
        progress: show a rich progress bar.
    """

    objective: str = "softmax"
    epochs: int = 4
    lr: float = 1e-3
    temperature: float = 0.05
    teacher_top: int = 100
    random_items: int = 1024
    batch_users: int = 256
    batch_pairs: int = 1024
    tune_users: bool | None = None
    distill_weight: float = 0.0
    diverge_factor: float = 1.5
    seed: int = 0
    num_threads: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InvalidInputError(
                f"QATConfig.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )
        for name in ("epochs", "teacher_top", "batch_users", "num_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidInputError(f"QATConfig.{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.batch_pairs, bool) or not isinstance(self.batch_pairs, int) or self.batch_pairs < 2:
            raise InvalidInputError(f"QATConfig.batch_pairs must be an integer >= 2, got {self.batch_pairs!r}")
        if isinstance(self.random_items, bool) or not isinstance(self.random_items, int) or self.random_items < 0:
            raise InvalidInputError(f"QATConfig.random_items must be an integer >= 0, got {self.random_items!r}")
        for name in ("lr", "temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise InvalidInputError(f"QATConfig.{name} must be a positive finite number, got {v!r}")
        w = self.distill_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise InvalidInputError(f"QATConfig.distill_weight must be a finite number >= 0, got {w!r}")
        f = self.diverge_factor
        if isinstance(f, bool) or not isinstance(f, (int, float)) or math.isnan(f) or f < 1:
            raise InvalidInputError(f"QATConfig.diverge_factor must be a number >= 1 (inf: no check), got {f!r}")
        if self.tune_users is not None and not isinstance(self.tune_users, bool):
            raise InvalidInputError(f"QATConfig.tune_users must be True, False or None, got {self.tune_users!r}")

    @property
    def tunes_users(self) -> bool:
        """Whether the user vectors are trained: ``tune_users``, or when unset ``objective == "distill"``."""
        return self.objective == "distill" if self.tune_users is None else self.tune_users


@dataclass
class QATResult:
    """Output of :func:`finetune_codebooks`.

    Attributes:
        codec: the tuned codec (a copy; the input codec is not modified).
        codes: uint8 [n_items, M], the catalog's codes (those of the base encoder).
        user_emb: float32 [n_users, d], L2-normalised (tuned when :attr:`QATConfig.tunes_users`).
        loss_history: mean training loss of each epoch.
        seconds: wall-clock training time.
        initial_loss: the loss before any step (mean over the first batches of epoch 1).
    """

    codec: AdditiveCodebookCodec
    codes: np.ndarray
    user_emb: np.ndarray
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    initial_loss: float = float("nan")


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


def _check_positives(positives: object, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(users int64 [nnz], items int64 [nnz]) from ``positives``, or a typed error naming what is wrong."""
    expected = "positives must be a pair (user index int64 [nnz], item index int64 [nnz])"
    if not isinstance(positives, (tuple, list)) or len(positives) != 2:
        raise InvalidInputError(f"{expected}, got {type(positives).__name__}")
    out = []
    for name, arr, n in (("users", positives[0], n_users), ("items", positives[1], n_items)):
        a = np.asarray(arr)
        if a.dtype.kind not in "iu":
            raise DTypeError(f"{expected}: the {name} index must be an integer array, got dtype {a.dtype}")
        if a.ndim != 1:
            raise DimensionMismatchError(f"{expected}: the {name} index must be 1-D, got shape {a.shape}")
        if a.size and (a.min() < 0 or a.max() >= n):
            raise InvalidInputError(
                f"positives' {name} index must lie in [0, {n}), got values in [{a.min()}, {a.max()}]"
            )
        out.append(np.ascontiguousarray(a, dtype=np.int64))
    if out[0].shape != out[1].shape:
        raise DimensionMismatchError(
            f"{expected}: users has {out[0].shape[0]} entries, items {out[1].shape[0]}"
        )
    if out[0].shape[0] < 2:
        raise InvalidInputError(f"positives must hold at least 2 pairs for an in-batch softmax, got {out[0].shape[0]}")
    return out[0], out[1]


def finetune_codebooks(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    codec: Codec,
    config: QATConfig = QATConfig(),
    codes: np.ndarray | None = None,
    positives: tuple[np.ndarray, np.ndarray] | None = None,
) -> QATResult:
    """Tune ``codec``'s codebooks (and, if asked, the users) through the quantiser.

    Args:
        user_emb: float32 [n_users, d], the float32 user tower's outputs.
        item_emb: float32 [n_items, d], the float32 item vectors (unit norm for a two-tower model); the
            distillation teacher, and what ``codec`` is fitted on.
        codec: a fitted ``"qat-..."`` codec (:class:`AdditiveCodebookCodec`); fit it on ``item_emb``.
        config: hyper-parameters; ``config.objective`` picks the loss (module docstring).
        codes: uint8 [n_items, M], ``codec.encode(item_emb)`` when already computed (else encoded here).
        positives: (user index int64 [nnz], item index int64 [nnz]), the two-tower's training pairs
            (``split.train_pairs()``); required by ``"softmax"``, ignored by ``"distill"`` (checked if given).

    Returns:
        :class:`QATResult` with the tuned codec, the item codes, the user vectors and the losses.

    Raises:
        InvalidInputError: wrong codec type, shapes, fewer than 2 items, or ``positives`` missing (for
            ``"softmax"``), not a pair of 1-D integer arrays of one length, with fewer than 2 pairs or
            indexes out of range.
        NotFittedError: the codec is not fitted.
        TrainingDivergedError: the loss or the parameters became NaN/Inf, or an epoch's mean loss exceeded
            ``config.diverge_factor`` times the initial loss; the untouched codec is the fallback.
    """
    if not isinstance(codec, AdditiveCodebookCodec):
        raise InvalidInputError(
            f"compression-aware training needs a 'qat-...' codec (additive codebooks), got {getattr(codec, 'spec', codec)!r}"
        )
    if not codec.is_fitted:
        raise NotFittedError(f"{codec.spec!r}: fit it on the item vectors before fine-tuning")
    item_emb = as_float_matrix(item_emb, "item_emb", dim=codec.dim)
    user_emb = as_float_matrix(user_emb, "user_emb", dim=codec.dim)
    n_users, d = user_emb.shape
    n_items = item_emb.shape[0]
    if n_items < 2:
        raise InvalidInputError(f"need at least 2 items to fine-tune, got {n_items}")
    softmax = config.objective == "softmax"
    if positives is not None:
        pos_users, pos_items = _check_positives(positives, n_users, n_items)
    elif softmax:
        raise InvalidInputError(
            "objective 'softmax' needs positives=(user index, item index), the two-tower's train pairs "
            "(split.train_pairs()); or use QATConfig(objective='distill')"
        )
    if codes is None:
        codes = codec.encode(item_emb)
    else:
        codes = as_codes(codes, codec.bytes_per_vector)
        if codes.shape[0] != n_items:
            raise InvalidInputError(f"codes have {codes.shape[0]} rows, item_emb {n_items}")
    tuned = codec_from_bytes(codec.to_bytes())  # a copy
    if not isinstance(tuned, AdditiveCodebookCodec):  # pragma: no cover - the registry round-trips the family
        raise InvalidInputError(f"{codec.spec!r} did not round-trip to an additive codec")
    distill_w = 1.0 if not softmax else float(config.distill_weight)
    top = teacher_topk(user_emb, item_emb, config.teacher_top) if distill_w > 0 else None
    tune_users = config.tunes_users
    tau = float(config.temperature)
    n_rand = int(config.random_items)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    t0 = time.perf_counter()
    history: list[float] = []
    try:
        C = torch.tensor(tuned.codebooks, requires_grad=True)
        U = torch.tensor(user_emb, requires_grad=tune_users)
        U0 = torch.from_numpy(user_emb)
        I0 = torch.from_numpy(item_emb)
        codes_t = torch.from_numpy(codes.astype(np.int64))
        top_t = torch.from_numpy(top) if top is not None else None
        books = torch.arange(C.shape[0])
        opt = torch.optim.Adam([C] + ([U] if tune_users else []), lr=config.lr)

        def decode(idx: torch.Tensor) -> torch.Tensor:
            return C[books, codes_t[idx]].sum(-2)

        def distill_loss(u: torch.Tensor, rnd: torch.Tensor | None) -> torch.Tensor:
            """KL(teacher || student) over each user's float32 top list and the shared random items."""
            assert top_t is not None
            own = top_t[u]  # [b, T]
            uv = F.normalize(U[u], dim=1)
            xo = F.normalize(decode(own.reshape(-1)), dim=1).reshape(len(u), own.shape[1], d)
            student = [(uv[:, None, :] * xo).sum(-1)]
            with torch.no_grad():
                tu = F.normalize(U0[u], dim=1)  # cosine on the teacher side too
                teacher = [(tu[:, None, :] * I0[own]).sum(-1)]
            if rnd is not None:
                student.append(uv @ F.normalize(decode(rnd), dim=1).T)
                with torch.no_grad():
                    teacher.append(tu @ I0[rnd].T)
            s_log = torch.cat(student, 1) / tau
            with torch.no_grad():
                t_log = torch.cat(teacher, 1) / tau
            return F.kl_div(F.log_softmax(s_log, 1), F.log_softmax(t_log, 1), log_target=True, reduction="batchmean")

        if softmax:
            n_rows = pos_users.shape[0]
            bs = min(config.batch_pairs, n_rows)
            pu_t = torch.from_numpy(pos_users)
            pi_t = torch.from_numpy(pos_items)
            log_q = item_log_q(np.bincount(pos_items, minlength=n_items))
            if n_rand:  # expected count of each item among the batch's B + R columns (mixed sampling)
                log_c = np.log(bs * np.exp(log_q.astype(np.float64)) + n_rand / n_items).astype(np.float32)
            else:
                log_c = log_q
            log_c_t = torch.from_numpy(log_c)
            target = torch.arange(bs)

            def batch_loss(rows: torch.Tensor, rnd: torch.Tensor | None) -> torch.Tensor:
                u, i = pu_t[rows], pi_t[rows]
                uv = F.normalize(U[u], dim=1)
                logits = in_batch_logits(uv, F.normalize(decode(i), dim=1), i, tau, log_c_t[i])
                if rnd is not None:
                    extra = torch.addmm(-log_c_t[rnd].unsqueeze(0), uv * (1.0 / tau), F.normalize(decode(rnd), dim=1).T)
                    extra = extra.masked_fill(rnd[None, :] == i[:, None], float("-inf"))  # accidental hits
                    logits = torch.cat([logits, extra], 1)
                loss = F.cross_entropy(logits, target[: len(rows)])
                if distill_w > 0:
                    loss = loss + distill_w * distill_loss(torch.unique(u), rnd)
                return loss

        else:
            n_rows = n_users
            bs = min(config.batch_users, n_users)

            def batch_loss(rows: torch.Tensor, rnd: torch.Tensor | None) -> torch.Tensor:
                return distill_loss(rows, rnd)

        steps = max(1, n_rows // bs)
        total = config.epochs * steps

        def batches(gen: torch.Generator) -> Callable[[int], tuple[torch.Tensor, torch.Tensor | None]]:
            """One epoch's batches: the shuffle, then per step the rows and the uniform items (drawn in order)."""
            perm = torch.randperm(n_rows, generator=gen)

            def at(s: int) -> tuple[torch.Tensor, torch.Tensor | None]:
                rnd = torch.randint(0, n_items, (n_rand,), generator=gen) if n_rand else None
                return perm[s * bs : (s + 1) * bs], rnd

            return at

        # the loss before any step: the first batches of epoch 1 (a generator seeded alike draws the same ones)
        probe = batches(torch.Generator().manual_seed(int(config.seed)))
        with torch.no_grad():
            probe_losses = [float(batch_loss(*probe(s))) for s in range(min(_PROBE_BATCHES, steps))]
        initial = float(np.mean(probe_losses))
        if not math.isfinite(initial):
            raise TrainingDivergedError(
                f"compression-aware training of {codec.spec}: the {config.objective} loss is {initial} before "
                f"any step; check the inputs or raise temperature (now {tau}); the untouched codec is the fallback"
            )
        threshold = config.diverge_factor * max(initial, _MIN_REFERENCE_LOSS)

        gen = torch.Generator().manual_seed(int(config.seed))
        step = 0
        with _progress(config.progress) as bar:
            label = f"compression-aware {codec.spec} ({config.objective})"
            task = bar.add_task(label, total=total) if bar is not None else None
            for epoch in range(config.epochs):
                at = batches(gen)
                loss_sum = 0.0
                for s in range(steps):
                    for group in opt.param_groups:
                        group["lr"] = config.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
                    loss = batch_loss(*at(s))
                    if not torch.isfinite(loss):
                        raise TrainingDivergedError(
                            f"compression-aware training of {codec.spec} diverged at epoch "
                            f"{epoch + 1}/{config.epochs}, step {s + 1}: the {config.objective} loss became "
                            f"{loss.item()}; lower lr (now {config.lr}) or raise temperature (now {tau}); "
                            f"the untouched codec is the fallback"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    loss_sum += float(loss.detach())
                    step += 1
                    if bar is not None:
                        bar.advance(task)
                history.append(loss_sum / steps)
                if bar is not None:
                    bar.update(task, description=f"{label} loss {history[-1]:.4f}")
                if history[-1] > threshold:
                    raise TrainingDivergedError(
                        f"compression-aware training of {codec.spec} diverged at epoch {epoch + 1}/{config.epochs}: "
                        f"mean {config.objective} loss {history[-1]:.4g} > {config.diverge_factor} x the initial loss "
                        f"{initial:.4g}; lower lr (now {config.lr}); the untouched codec is the fallback"
                    )
        books_out = C.detach().numpy()
        with torch.no_grad():
            users_out = F.normalize(U.detach(), dim=1).numpy().astype(np.float32)
    finally:
        torch.set_num_threads(prev_threads)
    if not (np.isfinite(books_out).all() and np.isfinite(users_out).all()):
        raise TrainingDivergedError(
            f"compression-aware training of {codec.spec} produced NaN/Inf codebooks or user vectors; lower lr "
            f"(now {config.lr}); the untouched codec is the fallback"
        )
    tuned.set_codebooks(books_out)
    return QATResult(tuned, codes, np.ascontiguousarray(users_out), history, time.perf_counter() - t0, initial)
