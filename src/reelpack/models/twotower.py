"""Two-tower retrieval model trained with an in-batch sampled softmax.

Model
-----
Each tower maps an ID to an L2-normalised vector of size ``dim``::

    e = Embedding(id)                       # [dim]
    h = MLP(e)   (only if config.hidden)    # dim -> hidden[0] -> ... -> hidden[-1] -> dim, ReLU between
    out = h / ||h||_2

A user's score for an item is the inner product (= cosine) of the two outputs.

Loss
----
A batch holds ``B`` train pairs (user u_b, item i_b), drawn without replacement
from the shuffled train interactions. For rows ``a`` and columns ``b``::

    logit[a, b] = <U[u_a], V[i_b]> / temperature  -  log q(i_b)      (logQ correction, if config.logq)
    logit[a, b] = -inf   where i_b == i_a and b != a                  (in-batch duplicates of the positive)
    loss = mean_a  cross_entropy(logit[a, :], target = a)

``q(i) = item_counts[i] / sum(item_counts)`` is the item's probability of being
sampled into a batch as a positive (its train frequency), so subtracting
``log q`` removes the popularity bias of in-batch negatives (Yi et al., RecSys 2019).
The correction applies to training only; scores at serving are plain inner products.

Optimiser: AdamW semantics (decoupled weight decay) with the learning rate
warmed up linearly over ``warmup_fraction`` of the steps, then decayed to zero
on a cosine. MLP weights use ``torch.optim.Adam``. The ID tables use
:class:`_RowAdam`, which gives the same result as dense Adam on the whole table
(up to Adam's ``eps``) while reading and writing only the rows in each batch:
the moves a row would have made on its momentum while idle are applied in
closed form when it is next used. A step costs O(batch), not O(catalog), and,
unlike "lazy" sparse Adam, rarely seen IDs keep dense Adam's momentum tail
(on amazon-book at 64-d, lazy Adam reached Recall@50 0.07 after 10 epochs,
dense Adam 0.11 after 5).

Reproducibility: initialisation and shuffling draw from one ``torch.Generator``
seeded with ``config.seed``; the global torch RNG is left untouched. On CPU the
same seed, data and config give bit-identical embeddings.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reelpack.data.interactions import Split
from reelpack.errors import InvalidInputError, TrainingError

__all__ = [
    "TwoTowerConfig",
    "TrainedEmbeddings",
    "train_two_tower",
    "in_batch_logits",
    "in_batch_softmax_loss",
    "item_log_q",
]


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass (its ``hidden`` tuple as a list)."""
    d = asdict(config)
    d["hidden"] = list(config.hidden)
    return d


def config_from_dict(cls: type, d: object) -> Any:
    """Rebuild config dataclass ``cls`` from :func:`config_to_dict` output (missing keys take defaults).

    Raises :class:`InvalidInputError` for a non-dict or unknown keys; the dataclass checks the values.
    """
    if not isinstance(d, dict):
        raise InvalidInputError(f"config must be a dict, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InvalidInputError(f"unknown {cls.__name__} field(s) {unknown}; expected some of {sorted(known)}")
    kw = dict(d)
    if isinstance(kw.get("hidden"), list):
        kw["hidden"] = tuple(kw["hidden"])
    return cls(**kw)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if int(value) < minimum:
        kind = "positive" if minimum == 1 else f">= {minimum}"
        raise InvalidInputError(f"{name} must be {kind}, got {value}")
    return int(value)


def _check_float(name: str, value: object, low: float, low_inclusive: bool, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise InvalidInputError(f"{name} must be finite, got {v}")
    ok_low = v >= low if low_inclusive else v > low
    ok_high = high is None or v < high
    if not (ok_low and ok_high):
        lo = "[" if low_inclusive else "("
        hi = f"{high})" if high is not None else "inf)"
        raise InvalidInputError(f"{name} must lie in {lo}{low}, {hi}, got {v}")
    return v


@dataclass(frozen=True)
class TwoTowerConfig:
    """Hyper-parameters of :func:`train_two_tower` (defaults tuned on amazon-book at 64-d).

    Attributes:
        dim: output (and ID embedding) dimension; any positive integer.
        hidden: widths of the optional MLP hidden layers of each tower (``()``: none).
        temperature: softmax temperature dividing the cosine scores (> 0).
        logq: subtract ``log q(item)`` (train frequency / total) from the logits.
        epochs: passes over the train interactions.
        batch_size: train pairs per batch (= in-batch negatives + 1); >= 2.
        lr: peak Adam learning rate.
        weight_decay: decoupled (AdamW) weight decay, >= 0.
        warmup_fraction: share of the steps with linearly increasing learning rate, in [0, 1).
        init_std: standard deviation of the normal initialisation of the ID embeddings. Keep it
            small: IDs seen a handful of times must move away from their random start
            (0.1 instead of 0.01 left amazon-book at Recall@50 0.01 after 3 epochs).
        seed: seeds initialisation and shuffling; same seed, same data, same
            ``num_threads`` -> identical embeddings.
        num_threads: torch intra-op threads used while training (restored afterwards).
    """

    dim: int = 64
    hidden: tuple[int, ...] = ()
    temperature: float = 0.15
    logq: bool = True
    epochs: int = 20
    batch_size: int = 1024
    lr: float = 1e-2
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    init_std: float = 0.01
    seed: int = 0
    num_threads: int = 2

    def __post_init__(self) -> None:
        _check_int("dim", self.dim, 1)
        if isinstance(self.hidden, (str, bytes)) or not isinstance(self.hidden, (tuple, list)):
            raise InvalidInputError(f"hidden must be a tuple of positive integers, got {self.hidden!r}")
        hidden = tuple(_check_int("hidden width", h, 1) for h in self.hidden)
        object.__setattr__(self, "hidden", hidden)
        object.__setattr__(self, "dim", int(self.dim))
        object.__setattr__(
            self, "temperature", _check_float("temperature", self.temperature, 0.0, low_inclusive=False)
        )
        if not isinstance(self.logq, (bool, np.bool_)):
            raise InvalidInputError(f"logq must be a bool, got {type(self.logq).__name__} {self.logq!r}")
        object.__setattr__(self, "logq", bool(self.logq))
        object.__setattr__(self, "epochs", _check_int("epochs", self.epochs, 1))
        object.__setattr__(self, "batch_size", _check_int("batch_size", self.batch_size, 2))
        object.__setattr__(self, "lr", _check_float("lr", self.lr, 0.0, low_inclusive=False))
        object.__setattr__(self, "weight_decay", _check_float("weight_decay", self.weight_decay, 0.0, True))
        object.__setattr__(
            self, "warmup_fraction", _check_float("warmup_fraction", self.warmup_fraction, 0.0, True, high=1.0)
        )
        object.__setattr__(self, "init_std", _check_float("init_std", self.init_std, 0.0, low_inclusive=False))
        object.__setattr__(self, "seed", _check_int("seed", self.seed, 0))
        object.__setattr__(self, "num_threads", _check_int("num_threads", self.num_threads, 1))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (``hidden`` as a list)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TwoTowerConfig:
        """Inverse of :meth:`to_dict`; missing keys take defaults, unknown keys raise :class:`InvalidInputError`."""
        return config_from_dict(cls, d)

    @classmethod
    def for_synthetic(cls, **overrides: Any) -> TwoTowerConfig:
        """Preset for the synthetic default catalog (``synthetic_interactions()``): 32-d, a few seconds.

        One thread: the batches are small, and a second thread only adds
        synchronisation (and stalls badly when another process shares the cores).
        """
        base: dict[str, Any] = dict(dim=32, epochs=5, batch_size=512, num_threads=1)
        base.update(overrides)
        return cls(**base)


@dataclass
class TrainedEmbeddings:
    """Output of :func:`train_two_tower` / :func:`reelpack.models.load_or_train`.

    Attributes:
        user_emb: float32 [n_users, dim], L2-normalised rows; row u is Split user index u.
        item_emb: float32 [n_items, dim], L2-normalised rows; row i is Split item index i.
        config: the configuration trained with.
        data_hash: ``split.data_hash`` of the training data.
        metrics: ranking metrics of :func:`reelpack.bench.evaluate_scores` on the test
            split (``recall@50``, ``ndcg@10``, ``mrr``, ...); empty if not evaluated.
        train_seconds: wall-clock seconds of the training loop (excluding evaluation).
        synthetic: True when trained on generated data.
        source: ``split.source``.
        loss_history: mean train loss of each epoch.
    """

    user_emb: np.ndarray
    item_emb: np.ndarray
    config: TwoTowerConfig
    data_hash: str
    metrics: dict[str, float]
    train_seconds: float
    synthetic: bool
    source: str
    loss_history: list[float] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.item_emb.shape[1])


# ----------------------------------------------------------------------------- loss


def item_log_q(item_counts: np.ndarray) -> np.ndarray:
    """float32 [n_items]: ``log(item_counts / item_counts.sum())``; items with count 0 get the log of half a count."""
    counts = np.asarray(item_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise InvalidInputError(f"item_counts must be a non-empty 1-D array, got shape {counts.shape}")
    if (counts < 0).any() or counts.sum() <= 0:
        raise InvalidInputError("item_counts must be non-negative with a positive sum")
    return np.log(np.maximum(counts, 0.5) / counts.sum()).astype(np.float32)


def in_batch_logits(
    user_vecs: torch.Tensor,
    item_vecs: torch.Tensor,
    item_ids: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch softmax logits float [B, B]; row a's positive is column a.

    Args:
        user_vecs: float [B, d], query tower outputs of the batch rows.
        item_vecs: float [B, d], item tower outputs of the batch positives.
        item_ids: int [B], item index of each positive (to mask duplicates).
        temperature: divides the inner products.
        log_q: float [B] or ``None``; ``log q`` of each column's item, subtracted from every row.

    Returns:
        ``user_vecs @ item_vecs.T / temperature - log_q[None, :]``, with ``-inf`` where
        column b holds the same item as row a's positive (b != a).
    """
    scaled = user_vecs * (1.0 / temperature)
    if log_q is None:
        logits = scaled @ item_vecs.T
    else:
        logits = torch.addmm(-log_q.to(scaled.dtype).unsqueeze(0), scaled, item_vecs.T)
    rows, cols = _duplicate_pairs(item_ids)
    if rows.numel():
        logits.index_put_((rows, cols), torch.tensor(float("-inf"), dtype=logits.dtype))
    return logits


def _duplicate_pairs(item_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows int64 [p], cols int64 [p]): every a != b with ``item_ids[a] == item_ids[b]``.

    Sort-based, O(B log B + d^2) for the d batch entries whose item occurs more than once.
    """
    ids = item_ids.reshape(-1)
    sorted_ids, order = torch.sort(ids, stable=True)
    same_next = sorted_ids[1:] == sorted_ids[:-1]
    in_group = torch.zeros_like(sorted_ids, dtype=torch.bool)
    in_group[1:] |= same_next
    in_group[:-1] |= same_next
    d_pos = order[in_group]
    if d_pos.numel() == 0:
        return d_pos, d_pos
    d_ids = ids[d_pos]
    eq = d_ids.unsqueeze(1) == d_ids.unsqueeze(0)
    eq.fill_diagonal_(False)
    r, c = torch.nonzero(eq, as_tuple=True)
    return d_pos[r], d_pos[c]


def in_batch_softmax_loss(
    user_vecs: torch.Tensor,
    item_vecs: torch.Tensor,
    item_ids: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar mean cross-entropy of :func:`in_batch_logits` with the diagonal as targets."""
    logits = in_batch_logits(user_vecs, item_vecs, item_ids, temperature, log_q)
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target)


# ----------------------------------------------------------------------------- model


class _Tower(nn.Module):
    """ID embedding -> optional MLP -> L2 normalisation: int64 ids [b] -> float32 [b, dim].

    The ID table is not an autograd parameter: training gathers the batch's
    unique rows, differentiates with respect to them and updates them with
    :class:`_RowAdam` (only the rows in the batch are read and written).
    """

    def __init__(self, n: int, dim: int, hidden: tuple[int, ...], init_std: float, gen: torch.Generator) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.empty(n, dim), requires_grad=False)
        nn.init.normal_(self.table, 0.0, init_std, generator=gen)
        layers: list[nn.Module] = []
        width = dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        if hidden:
            layers.append(nn.Linear(width, dim))
        for layer in layers:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
                bound = 1.0 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
        self.mlp = nn.Sequential(*layers)

    def head(self, rows: torch.Tensor) -> torch.Tensor:
        """float [b, dim] raw embeddings -> float [b, dim] L2-normalised outputs."""
        return F.normalize(self.mlp(rows), dim=-1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.table[ids])

    @torch.no_grad()
    def embed_all(self, chunk: int = 65536) -> np.ndarray:
        n, dim = self.table.shape
        out = np.empty((n, dim), np.float32)
        for start in range(0, n, chunk):
            ids = torch.arange(start, min(n, start + chunk))
            out[start : start + len(ids)] = self(ids).numpy()
        return out


_TAIL = 128


class _RowAdam:
    """Dense Adam(W) on an ID table, computed only on the rows a batch touches.

    Dense Adam keeps moving a row after its last gradient: with zero gradients
    its moments decay (``m *= b1``, ``v *= b2``) and every idle step still moves
    it by ``lr_s * m_hat / sqrt(v_hat)``. That momentum tail is what trains rarely
    seen IDs, so a "lazy" optimiser that skips idle rows learns them worse. Here
    each row records the last step applied to it; when it is next touched (and
    once at the end, :meth:`finish`) its idle steps are applied in closed form:

        w <- w * prod_{s=last+1..t-1} (1 - lr_s * wd)                 (decoupled weight decay)
        w <- w - (m / sqrt(v)) * sum_{j=1..k} c(last + j) * (b1 / sqrt(b2))^j
        m <- m * b1^k,   v <- v * b2^k

    with ``c(s) = lr_s * sqrt(1 - b2^s) / (1 - b1^s)``. The sum is taken term by
    term over the first ``_TAIL`` idle steps (``(b1/sqrt(b2))^128 < 2e-6``) and in
    closed form beyond. This equals dense AdamW up to Adam's ``eps`` and the
    decay of the tail's own steps. Cost per step: O(rows in the batch).

    Args:
        table: float32 [n, dim], updated in place.
        lrs: float64 [total_steps + 1], learning rate of each 1-based step (index 0 unused).
    """

    def __init__(
        self,
        table: torch.Tensor,
        lrs: np.ndarray,
        weight_decay: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.table = table
        self.m = torch.zeros_like(table)
        self.v = torch.zeros_like(table)
        self.last = torch.zeros(table.shape[0], dtype=torch.int64)
        self.b1, self.b2 = betas
        self.eps = eps
        self.wd = weight_decay
        s = np.arange(lrs.size, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            c = lrs * np.sqrt(1.0 - self.b2**s) / (1.0 - self.b1**s)
        c[0] = 0.0
        self.lrs = lrs
        self.c = torch.from_numpy(np.concatenate([c, np.zeros(_TAIL + 2)]))
        self.log_keep = torch.from_numpy(np.cumsum(np.log1p(-np.minimum(lrs * weight_decay, 1.0 - 1e-12))))
        self.a = self.b1 / math.sqrt(self.b2)
        self.j = torch.arange(1, _TAIL + 1, dtype=torch.int64)
        self.a_pow = self.a ** self.j.to(torch.float64)

    @torch.no_grad()
    def catch_up(self, rows: torch.Tensor, t: int) -> None:
        """Apply the idle steps of ``rows`` (unique int64 [r]) so they stand after step ``t - 1``."""
        last = self.last.index_select(0, rows)
        k = (t - 1) - last
        if not bool((k > 0).any()):
            return
        kf = k.to(torch.float64)
        w = self.table.index_select(0, rows)
        m = self.m.index_select(0, rows)
        v = self.v.index_select(0, rows)
        if self.wd:
            keep = torch.exp(self.log_keep[t - 1] - self.log_keep.index_select(0, last))
            w.mul_(keep.to(w.dtype).unsqueeze(1))
        steps = last.unsqueeze(1) + self.j  # [r, _TAIL] the idle steps, while j <= k
        near = (self.c[steps] * self.a_pow * (self.j <= k.unsqueeze(1))).sum(1)
        # beyond _TAIL steps: c frozen at its value there, geometric series in closed form
        far_k = (kf - _TAIL).clamp(min=0.0)
        far = self.c.index_select(0, last + _TAIL + 1) * self.a ** (_TAIL + 1) * (1.0 - self.a**far_k) / (1.0 - self.a)
        tail = near + far
        ratio = m / (v.sqrt() + 1e-30)
        w.sub_(ratio * tail.to(w.dtype).unsqueeze(1))
        m.mul_((self.b1**kf).to(m.dtype).unsqueeze(1))
        v.mul_((self.b2**kf).to(v.dtype).unsqueeze(1))
        self.table.index_copy_(0, rows, w)
        self.m.index_copy_(0, rows, m)
        self.v.index_copy_(0, rows, v)
        self.last.index_fill_(0, rows, t - 1)

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grad: torch.Tensor, t: int) -> None:
        """Adam step ``t`` (1-based) on ``rows`` (unique int64 [r], caught up to ``t - 1``) with ``grad`` [r, dim]."""
        lr = float(self.lrs[t])
        m = self.m.index_select(0, rows).mul_(self.b1).add_(grad, alpha=1.0 - self.b1)
        v = self.v.index_select(0, rows).mul_(self.b2).addcmul_(grad, grad, value=1.0 - self.b2)
        self.m.index_copy_(0, rows, m)
        self.v.index_copy_(0, rows, v)
        bc1 = 1.0 - self.b1**t
        bc2 = 1.0 - self.b2**t
        w = self.table.index_select(0, rows)
        if self.wd:
            w.mul_(1.0 - lr * self.wd)
        denom = v.sqrt_().div_(math.sqrt(bc2)).add_(self.eps)
        w.addcdiv_(m, denom, value=-lr / bc1)
        self.table.index_copy_(0, rows, w)
        self.last.index_fill_(0, rows, t)

    def finish(self, total_steps: int) -> None:
        """Bring every row to the state after the last step."""
        n = self.table.shape[0]
        for start in range(0, n, 1 << 16):
            self.catch_up(torch.arange(start, min(n, start + (1 << 16))), total_steps + 1)


def _lr_lambda(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """Learning-rate multiplier of 0-based step: linear warm-up to 1, then cosine decay towards 0."""
    warm = int(round(warmup_fraction * total_steps))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        span = max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / span)))

    return f


def _progress_bar(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def _check_split(split: Split) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(split, Split):
        raise InvalidInputError(f"split must be a reelpack.data.Split, got {type(split).__name__}")
    users, items = split.train_pairs()
    if users.size == 0:
        raise TrainingError("the train split holds no interactions; nothing to train on")
    if split.n_items < 2:
        raise TrainingError(f"the catalog holds {split.n_items} item(s); a two-tower model needs at least 2")
    return users, items


def train_two_tower(
    split: Split, config: TwoTowerConfig | None = None, progress: bool = True, evaluate: bool = True
) -> TrainedEmbeddings:
    """Train user and item towers on ``split``'s train interactions.

    Args:
        split: the train/test split; rows of the outputs follow its user and item indexes.
        config: hyper-parameters (default ``TwoTowerConfig()``).
        progress: show a ``rich`` progress bar.
        evaluate: fill ``metrics`` with :func:`reelpack.bench.evaluate_scores` over every
            user with test items (train items excluded from the ranking).

    Returns:
        :class:`TrainedEmbeddings` with ``user_emb`` float32 [n_users, dim] and
        ``item_emb`` float32 [n_items, dim], both L2-normalised.

    Raises:
        InvalidInputError: ``split`` is not a Split, or the config is invalid.
        TrainingError: the train split is empty, or the loss became NaN/Inf.
    """
    config = TwoTowerConfig() if config is None else config
    if not isinstance(config, TwoTowerConfig):
        raise InvalidInputError(f"config must be a TwoTowerConfig, got {type(config).__name__}")
    users_np, items_np = _check_split(split)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            user_emb, item_emb, seconds, history = _fit(split, config, users_np, items_np, progress)
    finally:
        torch.set_num_threads(prev_threads)
    metrics: dict[str, float] = {}
    if evaluate and split.eval_users().size > 0:
        from reelpack.metrics.ranking import dense_score_fn, evaluate_scores

        k_max = min(50, split.n_items)
        ks = tuple(k for k in (10, 20, 50) if k <= k_max) or (k_max,)
        metrics, _ = evaluate_scores(dense_score_fn(user_emb, item_emb), split, ks=ks)
    return TrainedEmbeddings(
        user_emb=user_emb,
        item_emb=item_emb,
        config=config,
        data_hash=split.data_hash,
        metrics=metrics,
        train_seconds=seconds,
        synthetic=split.synthetic,
        source=split.source,
        loss_history=history,
    )


def _fit(
    split: Split, config: TwoTowerConfig, users_np: np.ndarray, items_np: np.ndarray, progress: bool
) -> tuple[np.ndarray, np.ndarray, float, list[float]]:
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(config.seed)
    user_tower = _Tower(split.n_users, config.dim, config.hidden, config.init_std, gen)
    item_tower = _Tower(split.n_items, config.dim, config.hidden, config.init_std, gen)
    mlp_params = list(user_tower.mlp.parameters()) + list(item_tower.mlp.parameters())
    mlp_opt = (
        torch.optim.Adam(mlp_params, lr=config.lr, weight_decay=config.weight_decay, decoupled_weight_decay=True)
        if mlp_params
        else None
    )
    n = users_np.size
    bs = min(config.batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    total = config.epochs * steps_per_epoch
    lr_at = _lr_lambda(total, config.warmup_fraction)
    lrs = np.array([0.0] + [config.lr * lr_at(s) for s in range(total)], dtype=np.float64)
    row_opts = (
        _RowAdam(user_tower.table, lrs, config.weight_decay),
        _RowAdam(item_tower.table, lrs, config.weight_decay),
    )
    users_t = torch.from_numpy(users_np)
    items_t = torch.from_numpy(items_np)
    log_q_all = torch.from_numpy(item_log_q(split.item_counts)) if config.logq else None
    history: list[float] = []
    step = 0
    with _progress_bar(progress) as bar:
        task = bar.add_task(f"two-tower {config.dim}-d", total=total)
        for epoch in range(config.epochs):
            perm = torch.randperm(n, generator=gen)
            loss_sum = torch.zeros((), dtype=torch.float64)
            for s in range(steps_per_epoch):
                idx = perm[s * bs : (s + 1) * bs]
                u, i = users_t[idx], items_t[idx]
                step += 1
                u_rows, u_inv = torch.unique(u, return_inverse=True)
                i_rows, i_inv = torch.unique(i, return_inverse=True)
                row_opts[0].catch_up(u_rows, step)
                row_opts[1].catch_up(i_rows, step)
                u_leaf = user_tower.table.index_select(0, u_rows).requires_grad_(True)
                i_leaf = item_tower.table.index_select(0, i_rows).requires_grad_(True)
                log_q = log_q_all[i] if log_q_all is not None else None
                loss = in_batch_softmax_loss(
                    user_tower.head(u_leaf[u_inv]), item_tower.head(i_leaf[i_inv]), i, config.temperature, log_q
                )
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"loss became {loss.item()} at epoch {epoch + 1}, step {s + 1}; "
                        f"lower lr (now {config.lr}) or raise temperature (now {config.temperature})"
                    )
                if mlp_opt is not None:
                    mlp_opt.zero_grad(set_to_none=True)
                loss.backward()
                row_opts[0].step(u_rows, u_leaf.grad, step)
                row_opts[1].step(i_rows, i_leaf.grad, step)
                if mlp_opt is not None:
                    for group in mlp_opt.param_groups:
                        group["lr"] = float(lrs[step])
                    mlp_opt.step()
                loss_sum += loss.detach()
                bar.advance(task)
            history.append(float(loss_sum) / steps_per_epoch)
            bar.update(task, description=f"two-tower {config.dim}-d loss {history[-1]:.3f}")
    for opt in row_opts:
        opt.finish(total)
    user_tower.eval()
    item_tower.eval()
    user_emb = user_tower.embed_all()
    item_emb = item_tower.embed_all()
    if not (np.isfinite(user_emb).all() and np.isfinite(item_emb).all()):
        raise TrainingError("training produced NaN/Inf embeddings; lower lr or raise temperature")
    return user_emb, item_emb, time.perf_counter() - t0, history
