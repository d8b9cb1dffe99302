"""Joint training of a user tower and a video item tower on interactions.

Model: user tower = an ID embedding table (normal init, ``user_init_std``) -> L2 norm, as in
:mod:`reelpack.models.twotower` without the MLP; item tower = one of :mod:`reelpack.models.video.aggregator`'s
models (``"aggregator"``, ``"mean"``, ``"full"``) over the catalog's frozen frames and titles.
Loss: :func:`reelpack.models.twotower.in_batch_softmax_loss` with the logQ correction of
:func:`reelpack.models.twotower.item_log_q`; the item tower runs once per *unique* item of a batch.
Optimiser: Adam with decoupled weight decay; linear warm-up then cosine decay (the schedule
of :mod:`reelpack.models.twotower`); the user table at ``lr``, the item tower at ``item_lr``.

Frozen inputs are preprocessed once (timed as ``prep_seconds``, not part of an epoch):
the aggregator's gradient-free frame selection of the whole catalog (only the ``top_k`` selected
frames of a batch are gathered per step) and the mean frames of :class:`MeanPool`. Full
attention gathers all ``F`` frames of each batch item per step.

Peak memory: with ``measure_memory`` the ``VmHWM`` mark is reset (``/proc/self/clear_refs`` = 5)
when training starts, after the data are loaded, and the growth of ``VmHWM`` over ``VmRSS`` at
that moment is reported at the end of training (before evaluation): it excludes the catalog arrays
themselves (reported as ``data_bytes``). Measure each model in a fresh process
(:func:`train_isolated`), or earlier models' freed memory hides later models' growth.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from reelpack.util.memory import reset_peak_rss, status_kb
from reelpack.data.interactions import Split
from reelpack.errors import DimensionMismatchError, InvalidInputError, NonFiniteError, TrainingError
from reelpack.models.twotower import _lr_lambda, in_batch_softmax_loss, item_log_q
from reelpack.models.video.aggregator import (
    FullAttention,
    MeanPool,
    VideoAggregator,
    _masked_mean,
    _valid_mask,
    calibrate_title_threshold,
    check_video_inputs,
)

__all__ = ["VideoTrainConfig", "VideoTrainResult", "train_video_two_tower", "train_isolated", "restrict_catalog", "MODEL_NAMES"]

MODEL_NAMES: tuple[str, ...] = ("aggregator", "mean", "full")


@dataclass(frozen=True)
class VideoTrainConfig:
    """Hyper-parameters of :func:`train_video_two_tower`.

    Attributes:
        d_out: two-tower dimension.
        n_latents, top_k, n_heads, title_gate: :class:`VideoAggregator` arguments (n_heads also for full attention).
        title_quantile: quantile of the shuffled-title null used as the title threshold
            (:func:`calibrate_title_threshold`); ``None`` (default): chosen from the catalog's estimated
            share of wrong titles (0.5 when titles look right, up to 0.9 when many look wrong).
        temperature: softmax temperature (> 0).
        logq: logQ correction of in-batch negatives.
        epochs, batch_size: passes and train pairs per batch (>= 2).
        lr: peak learning rate of the user table; item_lr: of the item tower.
        weight_decay: decoupled weight decay (item tower only).
        warmup_fraction: share of steps warmed up linearly, in [0, 1).
        user_init_std: std of the user table's normal initialisation.
        eval_batch: videos per no-grad chunk when embedding the catalog.
        measure_memory: reset and read the peak-RSS mark around training (Linux).
        seed: initialisation and shuffling seed.
        num_threads: torch intra-op threads while training (restored afterwards).
    """

    d_out: int = 64
    n_latents: int = 4
    top_k: int = 8
    n_heads: int = 4
    title_gate: bool = True
    title_quantile: float | None = None
    temperature: float = 0.1
    logq: bool = True
    epochs: int = 5
    batch_size: int = 512
    lr: float = 1e-2
    item_lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    user_init_std: float = 0.01
    eval_batch: int = 512
    measure_memory: bool = False
    seed: int = 0
    num_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("d_out", "n_latents", "top_k", "n_heads", "epochs", "eval_batch", "num_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise InvalidInputError(f"batch_size must be an integer >= 2, got {self.batch_size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidInputError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name in ("temperature", "lr", "item_lr", "user_init_std"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise InvalidInputError(f"{name} must be a finite number > 0, got {v!r}")
        if not (0.0 <= self.weight_decay and math.isfinite(self.weight_decay)):
            raise InvalidInputError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise InvalidInputError(f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction!r}")
        if self.title_quantile is not None and not 0.0 < self.title_quantile < 1.0:
            raise InvalidInputError(f"title_quantile must lie in (0, 1), got {self.title_quantile!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VideoTrainResult:
    """Output of :func:`train_video_two_tower`.

    Attributes:
        model_name: ``"aggregator"``, ``"mean"`` or ``"full"``.
        user_emb: float32 [n_users, d_out], unit rows.
        item_emb: float32 [n_items, d_out], unit rows, computed from the catalog's frames/titles.
        metrics: test-split ranking metrics (``recall@50``, ``ndcg@10``, ...); empty if not evaluated.
        epoch_seconds: wall-clock seconds of each epoch.
        epoch_cpu_seconds: CPU seconds of this process in each epoch (``time.process_time``; robust
            to other processes sharing the cores, which inflate wall-clock times).
        prep_seconds: one-time preprocessing of the frozen inputs (selection / mean frames / calibration).
        loss_history: mean train loss per epoch.
        peak_growth_bytes: VmHWM growth during training (``None`` unless measured).
        data_bytes: bytes of the catalog arrays (frames + title embeddings).
        n_params: trainable parameters of the item tower.
        info: extra figures (title threshold, share of titles used, ...).
    """

    model_name: str
    user_emb: np.ndarray
    item_emb: np.ndarray
    config: VideoTrainConfig
    metrics: dict[str, float]
    epoch_seconds: list[float]
    epoch_cpu_seconds: list[float]
    prep_seconds: float
    loss_history: list[float]
    peak_growth_bytes: int | None
    data_bytes: int
    n_params: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall-clock seconds per epoch."""
        return float(np.mean(self.epoch_seconds))

    @property
    def cpu_seconds_per_epoch(self) -> float:
        """Mean CPU seconds per epoch."""
        return float(np.mean(self.epoch_cpu_seconds))

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures (no embeddings)."""
        return {
            "model": self.model_name,
            "metrics": self.metrics,
            "seconds_per_epoch": self.seconds_per_epoch,
            "epoch_seconds": self.epoch_seconds,
            "cpu_seconds_per_epoch": self.cpu_seconds_per_epoch,
            "epoch_cpu_seconds": self.epoch_cpu_seconds,
            "prep_seconds": self.prep_seconds,
            "loss_history": self.loss_history,
            "peak_growth_bytes": self.peak_growth_bytes,
            "data_bytes": self.data_bytes,
            "n_params": self.n_params,
            "info": self.info,
            "config": self.config.to_dict(),
        }


def _check_chunk(
    frames: np.ndarray, n_frames: np.ndarray, title: np.ndarray, start: int, chunk: int, d: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`check_video_inputs` on rows ``start:start+chunk``; NonFiniteError rows are catalog rows."""
    e = slice(start, start + chunk)
    try:
        return check_video_inputs(frames[e], n_frames[e], title[e], d)
    except NonFiniteError as exc:
        rows = [start + r for r in exc.rows]
        raise NonFiniteError(f"catalog {str(exc).replace('video(s)', 'catalog row(s)').split(' in catalog')[0]}"
                             f" in catalog row(s) {rows}", rows) from None  # fmt: skip


class _ItemTower:
    """Wraps a video model with its preprocessed frozen inputs: ``embed(item ids int64 [b]) -> [b, d_out]``."""

    def __init__(self, name: str, catalog: Any, config: VideoTrainConfig) -> None:
        frames = np.asarray(catalog.frames)
        n_frames = np.asarray(catalog.n_frames)
        title = np.asarray(catalog.title_emb)
        n, f, d = frames.shape
        self.name = name
        self.frames_np = frames
        self.info: dict[str, Any] = {}
        t0 = time.perf_counter()
        chunk = 128  # small preprocessing chunks: their temporaries count in the peak memory
        if name == "aggregator":
            self.model: nn.Module = VideoAggregator(
                d, config.d_out, config.n_latents, config.top_k, config.n_heads, config.title_gate
            )
            self.calibration: dict = {}
            thr, centre = calibrate_title_threshold(
                frames, n_frames, title, config.title_quantile, seed=config.seed, details=self.calibration
            )
            self.model.set_calibration(thr, centre)
            k = min(config.top_k, f)
            self.idx = np.empty((n, k), np.int64)
            self.sel_valid = np.empty((n, k), bool)
            self.title_used = np.empty(n, bool)
            for s in range(0, n, chunk):
                fr, nf, ti = _check_chunk(frames, n_frames, title, s, chunk, d)
                idx, sv, tu = self.model.select(fr, nf, ti)
                self.idx[s : s + len(nf)], self.sel_valid[s : s + len(nf)], self.title_used[s : s + len(nf)] = (
                    idx.numpy(), sv.numpy(), tu.numpy(),
                )  # fmt: skip
            self.title = torch.from_numpy(np.ascontiguousarray(title, np.float32))
            self.info.update(title_threshold=thr, title_used_share=float(self.title_used.mean()), **self.calibration)
        elif name == "mean":
            self.model = MeanPool(d, config.d_out)
            self.mean = np.empty((n, d), np.float32)
            for s in range(0, n, chunk):
                fr, nf, _ = _check_chunk(frames, n_frames, title, s, chunk, d)
                self.mean[s : s + len(nf)] = _masked_mean(fr, _valid_mask(nf, f)).numpy()
            self.has = torch.from_numpy(n_frames > 0)
            self.mean_t = torch.from_numpy(self.mean)
        elif name == "full":
            self.model = FullAttention(d, config.d_out, config.n_heads)
            for s in range(0, n, chunk):  # validate once; per-step batches are then used unchecked
                _check_chunk(frames, n_frames, title, s, chunk, d)
            self.title = torch.from_numpy(np.ascontiguousarray(title, np.float32))
        else:
            raise InvalidInputError(f"model_name must be one of {', '.join(MODEL_NAMES)}, got {name!r}")
        self.n_frames = torch.from_numpy(np.asarray(n_frames, np.int64))
        self.prep_seconds = time.perf_counter() - t0

    def embed(self, ids: np.ndarray) -> torch.Tensor:
        """float [b, d_out] item vectors of item indexes ``ids`` int64 [b]."""
        ids_t = torch.from_numpy(ids)
        if self.name == "aggregator":
            sel = torch.from_numpy(self.frames_np[ids[:, None], self.idx[ids]])  # [b, k, d]: only k frames gathered
            return self.model.aggregate(
                sel, torch.from_numpy(self.sel_valid[ids]), self.title[ids_t], torch.from_numpy(self.title_used[ids])
            )
        if self.name == "mean":
            return self.model.pooled(self.mean_t[ids_t], self.has[ids_t])
        fr = torch.from_numpy(self.frames_np[ids])  # [b, F, d]
        return self.model._encode(fr, self.n_frames[ids_t], self.title[ids_t])

    @torch.no_grad()
    def embed_all(self, chunk: int) -> np.ndarray:
        n = self.frames_np.shape[0]
        out = np.empty((n, self.model.d_out), np.float32)
        for s in range(0, n, chunk):
            ids = np.arange(s, min(n, s + chunk), dtype=np.int64)
            out[s : s + len(ids)] = self.embed(ids).numpy()
        return out


def _check_catalog(split: Split, catalog: Any) -> None:
    for attr in ("frames", "n_frames", "title_emb"):
        if not hasattr(catalog, attr):
            raise InvalidInputError(f"catalog must be a VideoCatalog (missing .{attr}), got {type(catalog).__name__}")
    frames = np.asarray(catalog.frames)
    if frames.ndim != 3:
        raise DimensionMismatchError(f"catalog.frames must be [n_items, F, d], got shape {frames.shape}")
    if frames.shape[0] != split.n_items:
        raise DimensionMismatchError(
            f"catalog holds {frames.shape[0]} videos but the split's catalog holds {split.n_items} items; "
            "row i must be the video of split item index i"
        )


def train_video_two_tower(
    split: Split, catalog: Any, model_name: str = "aggregator", config: VideoTrainConfig | None = None,
    evaluate: bool = True,
) -> VideoTrainResult:  # fmt: skip
    """Train the user tower jointly with a video item tower (module docstring).

    Args:
        split: train/test split; row i of the catalog is the video of split item index i.
        catalog: a :class:`reelpack.models.video.data.VideoCatalog` (frames float32 [n_items, F, d],
            n_frames int64 [n_items], title_emb float32 [n_items, d]).
        model_name: ``"aggregator"``, ``"mean"`` or ``"full"``.
        config: hyper-parameters (default ``VideoTrainConfig()``).
        evaluate: compute test-split metrics (train items excluded from the ranking).

    Raises:
        InvalidInputError: bad model name, config or split; NonFiniteError / DimensionMismatchError
            for bad catalog arrays.
        TrainingError: empty train split or a non-finite loss.
    """
    config = VideoTrainConfig() if config is None else config
    if not isinstance(config, VideoTrainConfig):
        raise InvalidInputError(f"config must be a VideoTrainConfig, got {type(config).__name__}")
    if model_name not in MODEL_NAMES:
        raise InvalidInputError(f"model_name must be one of {', '.join(MODEL_NAMES)}, got {model_name!r}")
    if not isinstance(split, Split):
        raise InvalidInputError(f"split must be a reelpack.data.Split, got {type(split).__name__}")
    _check_catalog(split, catalog)
    users_np, items_np = split.train_pairs()
    if users_np.size == 0:
        raise TrainingError("the train split holds no interactions; nothing to train on")
    prev = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            if config.measure_memory:
                _warm_up(model_name, catalog, config)
            base_kb = reset_peak_rss() if config.measure_memory else None
            torch.manual_seed(config.seed)
            tower = _ItemTower(model_name, catalog, config)
            user_emb, hist, secs, cpu = _fit(split, tower, config, users_np, items_np)
            peak_kb = status_kb("VmHWM") if base_kb is not None else None
            tower.model.eval()
            item_emb = tower.embed_all(config.eval_batch)
    finally:
        torch.set_num_threads(prev)
    if not (np.isfinite(item_emb).all() and np.isfinite(user_emb).all()):
        raise TrainingError("training produced NaN/Inf embeddings; lower item_lr or raise temperature")
    metrics: dict[str, float] = {}
    if evaluate and split.eval_users().size > 0:
        from reelpack.metrics.ranking import dense_score_fn, evaluate_scores

        ks = tuple(k for k in (10, 20, 50) if k <= split.n_items) or (split.n_items,)
        metrics, _ = evaluate_scores(dense_score_fn(user_emb, item_emb), split, ks=ks)
    frames = np.asarray(catalog.frames)
    return VideoTrainResult(
        model_name=model_name,
        user_emb=user_emb,
        item_emb=item_emb,
        config=config,
        metrics=metrics,
        epoch_seconds=secs,
        epoch_cpu_seconds=cpu,
        prep_seconds=tower.prep_seconds,
        loss_history=hist,
        peak_growth_bytes=None if base_kb is None or peak_kb is None else (peak_kb - base_kb) * 1024,
        data_bytes=int(frames.nbytes + np.asarray(catalog.title_emb).nbytes),
        n_params=sum(p.numel() for p in tower.model.parameters() if p.requires_grad),
        info=tower.info,
    )


def _warm_up(model_name: str, catalog: Any, config: VideoTrainConfig) -> None:
    """Run the whole pipeline once on a tiny random catalog of the same shape.

    First use of a torch operator pages in library code and sets up kernels (tens of MB of RSS);
    without this warm-up that one-time cost would count as the model's peak-memory growth.
    """
    from types import SimpleNamespace

    from reelpack.data.interactions import synthetic_interactions, train_test_split

    # big enough for a full batch of the real size (kernel workspaces depend on the shapes)
    inter = synthetic_interactions(n_users=600, n_items=800, n_clusters=4, mean_items_per_user=4, seed=0)
    split = train_test_split(inter, seed=0)
    _, f, d = np.asarray(catalog.frames).shape
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((split.n_items, f, d)).astype(np.float32)
    frames /= np.linalg.norm(frames, axis=2, keepdims=True)
    tiny = SimpleNamespace(
        frames=frames, n_frames=np.full(split.n_items, f, np.int64), title_emb=frames[:, 0].copy()
    )
    cfg = VideoTrainConfig(**{**config.to_dict(), "epochs": 1, "measure_memory": False})
    tower = _ItemTower(model_name, tiny, cfg)
    users, items = split.train_pairs()
    _fit(split, tower, cfg, users, items)
    tower.model.eval()
    tower.embed_all(8)


def _fit(
    split: Split, tower: _ItemTower, config: VideoTrainConfig, users_np: np.ndarray, items_np: np.ndarray
) -> tuple[np.ndarray, list[float], list[float]]:
    gen = torch.Generator().manual_seed(config.seed)
    users = nn.Embedding(split.n_users, config.d_out)
    nn.init.normal_(users.weight, 0.0, config.user_init_std, generator=gen)
    opt = torch.optim.Adam(
        [
            {"params": users.parameters(), "lr": config.lr, "weight_decay": 0.0},
            {"params": tower.model.parameters(), "lr": config.item_lr, "weight_decay": config.weight_decay},
        ],
        decoupled_weight_decay=True,
    )
    n = users_np.size
    bs = min(config.batch_size, n)
    steps = math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config.epochs * steps, config.warmup_fraction))
    log_q_all = torch.from_numpy(item_log_q(split.item_counts)) if config.logq else None
    users_t = torch.from_numpy(users_np)
    tower.model.train()
    hist: list[float] = []
    secs: list[float] = []
    cpu: list[float] = []
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        c0 = time.process_time()
        perm = torch.randperm(n, generator=gen).numpy()
        total = 0.0
        for s in range(steps):
            idx = perm[s * bs : (s + 1) * bs]
            items = items_np[idx]
            uniq, inv = np.unique(items, return_inverse=True)
            item_vecs = tower.embed(uniq)[torch.from_numpy(inv)]
            user_vecs = nn.functional.normalize(users(users_t[idx]), dim=1)
            items_t = torch.from_numpy(items)
            log_q = log_q_all[items_t] if log_q_all is not None else None
            loss = in_batch_softmax_loss(user_vecs, item_vecs, items_t, config.temperature, log_q)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at epoch {epoch + 1}, step {s + 1}; lower item_lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        hist.append(total / steps)
        secs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    with torch.no_grad():
        user_emb = nn.functional.normalize(users.weight, dim=1).numpy().astype(np.float32)
    return user_emb, hist, secs, cpu


# ----------------------------------------------------------------------------- isolated runs


def train_isolated(
    model_name: str,
    config: VideoTrainConfig,
    interactions_kwargs: dict[str, Any] | None = None,
    catalog_kwargs: dict[str, Any] | None = None,
    split_seed: int = 0,
    timeout: float = 1800.0,
) -> VideoTrainResult:
    """Train on the synthetic video catalog in a fresh Python process, measuring peak memory there.

    The child regenerates the (deterministic) synthetic interactions, split and catalog, then
    calls :func:`train_video_two_tower` with ``measure_memory=True``; embeddings come back
    through a temporary ``.npz``. The child inherits the environment (set OMP_NUM_THREADS etc.).
    """
    job = {
        "model": model_name,
        "config": {**config.to_dict(), "measure_memory": True},
        "interactions": interactions_kwargs or {},
        "catalog": catalog_kwargs or {},
        "split_seed": split_seed,
    }
    with tempfile.TemporaryDirectory(prefix="reelpack-video-") as tmp:
        out = os.path.join(tmp, "result")
        proc = subprocess.run(
            [sys.executable, "-m", "reelpack.models.video.train", json.dumps(job), out],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise TrainingError(f"isolated training of {model_name!r} failed: {tail}")
        with open(out + ".json") as fh:
            summary = json.load(fh)
        arrays = np.load(out + ".npz")
        return VideoTrainResult(
            model_name=model_name,
            user_emb=arrays["user_emb"],
            item_emb=arrays["item_emb"],
            config=config,
            metrics=summary["metrics"],
            epoch_seconds=summary["epoch_seconds"],
            epoch_cpu_seconds=summary["epoch_cpu_seconds"],
            prep_seconds=summary["prep_seconds"],
            loss_history=summary["loss_history"],
            peak_growth_bytes=summary["peak_growth_bytes"],
            data_bytes=summary["data_bytes"],
            n_params=summary["n_params"],
            info=summary["info"],
        )


def _worker(job_json: str, out: str) -> None:
    from reelpack.data.interactions import synthetic_interactions, train_test_split
    from reelpack.models.video.data import synthetic_video_catalog

    job = json.loads(job_json)
    inter = synthetic_interactions(**job["interactions"])
    split = train_test_split(inter, seed=job["split_seed"])
    catalog = synthetic_video_catalog(inter, **job["catalog"])
    catalog = restrict_catalog(catalog, split)
    res = train_video_two_tower(split, catalog, job["model"], VideoTrainConfig(**job["config"]))
    np.savez(out + ".npz", user_emb=res.user_emb, item_emb=res.item_emb)
    with open(out + ".json", "w") as fh:
        json.dump(res.summary(), fh)


def restrict_catalog(catalog: Any, split: Split) -> Any:
    """The catalog rows of the split's items (split item index i -> raw item id ``split.item_ids[i]``)."""
    if np.asarray(catalog.frames).shape[0] == split.n_items and np.array_equal(split.item_ids, np.arange(split.n_items)):
        return catalog
    if hasattr(catalog, "take"):
        return catalog.take(split.item_ids)
    import dataclasses

    ids = split.item_ids
    kw = {}
    for f in dataclasses.fields(catalog):
        v = getattr(catalog, f.name)
        if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == np.asarray(catalog.frames).shape[0]:
            kw[f.name] = v[ids]
        elif isinstance(v, list) and len(v) == np.asarray(catalog.frames).shape[0]:
            kw[f.name] = [v[i] for i in ids]
    return dataclasses.replace(catalog, **kw)


if __name__ == "__main__":  # pragma: no cover - exercised through train_isolated
    _worker(sys.argv[1], sys.argv[2])
