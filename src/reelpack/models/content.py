"""Content tower for cold-start items, and the cold-start evaluation.

An item nobody has interacted with has no ID embedding. The content tower maps
its metadata (:class:`reelpack.data.metadata.ItemMetadata`: creator id, category
id, numeric features) into the two-tower item space, so a phone can score it
like any other item.

Model
-----
::

    e_cr  = CreatorTable[row(creator)]      # [creator_dim]; row 0 = "unknown"
    e_cat = CategoryTable[row(category)]    # [category_dim]; row 0 = "unknown"
    x     = (features - mean) / std         # [f], statistics of the warm training items
    h     = concat(e_cr, e_cat, x)
    h     = ReLU(W_l h + b_l)  for each hidden width
    out   = normalise(W_o h + b_o)          # [dim] = the ID tower's item dimension, unit L2 norm

``row(id) = 1 + id`` for ids seen among the training (warm) items, 0 otherwise:
a new creator (or an id beyond the table) shares the "unknown" row. The unknown
rows are trained by replacing each training item's creator (and, independently,
category) by "unknown" with probability ``unknown_dropout``.

Training (warm items only)
--------------------------
Targets are the ID tower's L2-normalised item embeddings ``v_i``. A batch of B
warm items gives content outputs ``c_a``; the in-batch softmax::

    logit[a, b] = <c_a, v_b> / temperature,    loss = mean_a cross_entropy(logit[a, :], a)

(``loss="cosine"``: ``mean_a 1 - <c_a, v_a>``). The softmax asks ``c_a`` to rank its
own item above the other items, which preserves the ranking geometry the users
see; cosine regression only pulls towards each target. Adam, fixed seed (one
``torch.Generator`` for initialisation, shuffling and dropout; the global torch
RNG is untouched). Inference (:meth:`ContentTower.embed`) is plain NumPy over the
exported weights, and save/load goes through NumPy arrays only (no pickle).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reelpack.data.interactions import Split
from reelpack.data.metadata import ItemMetadata
from reelpack.errors import (
    DimensionMismatchError,
    EmptyInputError,
    InvalidInputError,
    SerializationError,
    TrainingError,
)
from reelpack.models.twotower import (
    TwoTowerConfig,
    _check_float,
    _check_int,
    config_from_dict,
    config_to_dict,
    train_two_tower,
)

__all__ = [
    "ContentTowerConfig",
    "ContentTower",
    "train_content_tower",
    "ColdStartResult",
    "cold_start_eval",
]

_FORMAT_VERSION = 1
MAX_ID = 1 << 21
"""Creator/category ids of training items must be below this (the tables have max id + 2 rows);
re-index sparse raw ids densely first."""
_LOSSES = ("softmax", "cosine")


@dataclass(frozen=True)
class ContentTowerConfig:
    """Hyper-parameters of :func:`train_content_tower`.

    Defaults were picked on the synthetic default catalog (cold seeds 0 and 1): more epochs
    over-fit the warm items (cold-only Recall@50 0.80 at 20 epochs, 0.76 at 80).

    Attributes:
        creator_dim: width of the creator embedding table.
        category_dim: width of the category embedding table.
        hidden: widths of the MLP hidden layers (``()``: a linear projection).
        loss: ``"softmax"`` (in-batch softmax against the ID item embeddings) or ``"cosine"``.
        temperature: softmax temperature (> 0).
        epochs: passes over the warm items.
        batch_size: warm items per batch (= in-batch negatives + 1), >= 2.
        lr: Adam learning rate.
        weight_decay: decoupled (AdamW) weight decay, >= 0.
        unknown_dropout: probability, per training item and per id field, of feeding the
            "unknown" row instead of the item's id (trains the row new creators map to); in [0, 1).
        seed: seeds initialisation, shuffling and dropout.
        num_threads: torch intra-op threads while training (restored afterwards).
    """

    creator_dim: int = 32
    category_dim: int = 16
    hidden: tuple[int, ...] = (128,)
    loss: str = "softmax"
    temperature: float = 0.1
    epochs: int = 15
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    unknown_dropout: float = 0.2
    seed: int = 0
    num_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("creator_dim", "category_dim", "epochs", "num_threads"):
            object.__setattr__(self, name, _check_int(name, getattr(self, name), 1))
        object.__setattr__(self, "batch_size", _check_int("batch_size", self.batch_size, 2))
        object.__setattr__(self, "seed", _check_int("seed", self.seed, 0))
        if isinstance(self.hidden, (str, bytes)) or not isinstance(self.hidden, (tuple, list)):
            raise InvalidInputError(f"hidden must be a tuple of positive integers, got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(_check_int("hidden width", h, 1) for h in self.hidden))
        if self.loss not in _LOSSES:
            raise InvalidInputError(f"loss must be one of {', '.join(_LOSSES)}; got {self.loss!r}")
        object.__setattr__(self, "temperature", _check_float("temperature", self.temperature, 0.0, False))
        object.__setattr__(self, "lr", _check_float("lr", self.lr, 0.0, False))
        object.__setattr__(self, "weight_decay", _check_float("weight_decay", self.weight_decay, 0.0, True))
        object.__setattr__(
            self, "unknown_dropout", _check_float("unknown_dropout", self.unknown_dropout, 0.0, True, high=1.0)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (``hidden`` as a list)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContentTowerConfig:
        """Inverse of :meth:`to_dict`; missing keys take defaults, unknown keys raise :class:`InvalidInputError`."""
        return config_from_dict(cls, d)


# ----------------------------------------------------------------------------- inference


def _id_rows(ids: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """int64 [n] table rows: ``1 + id`` where ``id < len(seen)`` and ``seen[id]``, else 0 (unknown)."""
    ok = ids < seen.shape[0]
    rows = np.zeros(ids.shape[0], np.int64)
    idx = np.flatnonzero(ok)
    known = seen[ids[idx]]
    rows[idx[known]] = ids[idx[known]] + 1
    return rows


@dataclass
class ContentTower:
    """A trained content tower: metadata rows -> float32 [n, dim] unit vectors in the item space.

    Attributes:
        creator_table: float32 [n_creators + 1, creator_dim]; row 0 is "unknown", row 1 + c is creator c.
        category_table: float32 [n_categories + 1, category_dim]; row 0 is "unknown".
        creator_seen, category_seen: bool [n_creators] / [n_categories], ids seen in training
            (unseen ids use row 0).
        feat_mean, feat_std: float32 [f] standardisation of the numeric features (std > 0).
        weights, biases: the MLP layers, float32 [out, in] and [out]; the last maps to ``dim``.
        config: the configuration trained with.
    """

    creator_table: np.ndarray
    category_table: np.ndarray
    creator_seen: np.ndarray
    category_seen: np.ndarray
    feat_mean: np.ndarray
    feat_std: np.ndarray
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    config: ContentTowerConfig
    loss_history: list[float] = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0

    @property
    def dim(self) -> int:
        return int(self.weights[-1].shape[0])

    @property
    def n_features(self) -> int:
        return int(self.feat_mean.shape[0])

    def _inputs(self, metadata: ItemMetadata) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not isinstance(metadata, ItemMetadata):
            raise InvalidInputError(f"metadata must be an ItemMetadata, got {type(metadata).__name__}")
        if metadata.n_features != self.n_features:
            raise DimensionMismatchError(
                f"metadata has {metadata.n_features} numeric features, this tower was trained on {self.n_features}"
            )
        cr = _id_rows(metadata.creator, self.creator_seen)
        ca = _id_rows(metadata.category, self.category_seen)
        x = (metadata.features - self.feat_mean) / self.feat_std
        return cr, ca, x.astype(np.float32)

    def embed(self, metadata: ItemMetadata, chunk: int = 65536) -> np.ndarray:
        """float32 [len(metadata), dim] L2-normalised embeddings of the metadata rows (NumPy only).

        Creator/category ids not seen in training (including ids beyond the tables) use the
        shared "unknown" rows.
        """
        cr, ca, x = self._inputs(metadata)
        n = cr.shape[0]
        out = np.empty((n, self.dim), np.float32)
        for s in range(0, n, chunk):
            h = np.concatenate(
                [self.creator_table[cr[s : s + chunk]], self.category_table[ca[s : s + chunk]], x[s : s + chunk]],
                axis=1,
            )
            for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
                h = h @ w.T + b
                if layer < len(self.weights) - 1:
                    np.maximum(h, 0.0, out=h)
            norm = np.linalg.norm(h, axis=1, keepdims=True)
            out[s : s + chunk] = h / np.maximum(norm, 1e-12)
        return out

    # --------------------------------------------------------------------- serialisation

    def state(self) -> dict[str, np.ndarray]:
        """Every parameter as a NumPy array (``config`` as UTF-8 JSON bytes in a uint8 array)."""
        st: dict[str, np.ndarray] = {
            "format_version": np.array([_FORMAT_VERSION], np.int64),
            "config": np.frombuffer(json.dumps(self.config.to_dict(), sort_keys=True).encode(), np.uint8).copy(),
            "creator_table": self.creator_table,
            "category_table": self.category_table,
            "creator_seen": self.creator_seen.astype(np.uint8),
            "category_seen": self.category_seen.astype(np.uint8),
            "feat_mean": self.feat_mean,
            "feat_std": self.feat_std,
            "n_layers": np.array([len(self.weights)], np.int64),
        }
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            st[f"w{i}"] = w
            st[f"b{i}"] = b
        return st

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> ContentTower:
        """Rebuild from :meth:`state`; anything missing, mistyped or inconsistent raises :class:`SerializationError`."""
        try:
            return cls._from_state(state)
        except SerializationError:
            raise
        except (KeyError, ValueError, TypeError, IndexError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SerializationError(f"corrupt content tower state: {exc}") from None

    @classmethod
    def _from_state(cls, st: dict[str, np.ndarray]) -> ContentTower:
        def arr(name: str, dtype: type, ndim: int) -> np.ndarray:
            if name not in st:
                raise SerializationError(f"content tower state lacks {name!r}")
            a = np.asarray(st[name])
            if a.dtype != np.dtype(dtype) or a.ndim != ndim:
                raise SerializationError(
                    f"{name!r} must be {np.dtype(dtype).name} with {ndim} dims, got {a.dtype} shape {a.shape}"
                )
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise SerializationError(f"{name!r} holds NaN or Inf")
            return np.ascontiguousarray(a)

        version = arr("format_version", np.int64, 1)
        if version.shape != (1,) or int(version[0]) != _FORMAT_VERSION:
            raise SerializationError(f"content tower format version must be {_FORMAT_VERSION}, got {version.tolist()}")
        try:
            config = ContentTowerConfig.from_dict(json.loads(arr("config", np.uint8, 1).tobytes().decode()))
        except InvalidInputError as exc:
            raise SerializationError(f"content tower config is invalid: {exc}") from None
        ct, kt = arr("creator_table", np.float32, 2), arr("category_table", np.float32, 2)
        cs, ks = arr("creator_seen", np.uint8, 1), arr("category_seen", np.uint8, 1)
        mean, std = arr("feat_mean", np.float32, 1), arr("feat_std", np.float32, 1)
        n_layers = arr("n_layers", np.int64, 1)
        if n_layers.shape != (1,) or int(n_layers[0]) != len(config.hidden) + 1:
            raise SerializationError(f"n_layers {n_layers.tolist()} does not match config hidden {config.hidden}")
        if ct.shape != (cs.size + 1, config.creator_dim) or kt.shape != (ks.size + 1, config.category_dim):
            raise SerializationError(
                f"embedding tables {ct.shape}, {kt.shape} do not match seen masks ({cs.size}, {ks.size}) "
                f"and dims ({config.creator_dim}, {config.category_dim})"
            )
        if cs.max(initial=0) > 1 or ks.max(initial=0) > 1:
            raise SerializationError("seen masks must hold 0 or 1")
        if mean.shape != std.shape or (std <= 0).any():
            raise SerializationError("feat_mean/feat_std must have equal shapes and std > 0")
        weights, biases = [], []
        width = config.creator_dim + config.category_dim + mean.size
        for i in range(int(n_layers[0])):
            w, b = arr(f"w{i}", np.float32, 2), arr(f"b{i}", np.float32, 1)
            if w.shape[1] != width or b.shape != (w.shape[0],):
                raise SerializationError(
                    f"layer {i}: weight {w.shape} / bias {b.shape} do not chain from width {width}"
                )
            if i < len(config.hidden) and w.shape[0] != config.hidden[i]:
                raise SerializationError(f"layer {i} has {w.shape[0]} outputs, config says {config.hidden[i]}")
            weights.append(w)
            biases.append(b)
            width = w.shape[0]
        extra = set(st) - {
            "format_version", "config", "creator_table", "category_table", "creator_seen", "category_seen",
            "feat_mean", "feat_std", "n_layers",
        } - {f"w{i}" for i in range(len(weights))} - {f"b{i}" for i in range(len(weights))}  # fmt: skip
        if extra:
            raise SerializationError(f"content tower state has unexpected keys {sorted(extra)}")
        return cls(ct, kt, cs.astype(bool), ks.astype(bool), mean, std, weights, biases, config)

    def save(self, path: str | os.PathLike) -> None:
        """Write the state as an uncompressed ``.npz`` (NumPy arrays only, loadable without pickle)."""
        with open(path, "wb") as fh:
            np.savez(fh, **self.state())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ContentTower:
        """Read a file written by :meth:`save` (``allow_pickle=False``).

        Raises:
            FileNotFoundError: no such file.
            SerializationError: not an ``.npz`` of a content tower, or its arrays are inconsistent.
        """
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as z:
                st = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
            raise SerializationError(f"{p}: not a content tower file ({exc})") from None
        return cls.from_state(st)


# ----------------------------------------------------------------------------- training


class _TorchTower(nn.Module):
    def __init__(self, n_cr: int, n_cat: int, n_feat: int, dim: int, cfg: ContentTowerConfig, gen: torch.Generator):
        super().__init__()
        self.cr = nn.Parameter(torch.randn(n_cr + 1, cfg.creator_dim, generator=gen) * 0.1)
        self.cat = nn.Parameter(torch.randn(n_cat + 1, cfg.category_dim, generator=gen) * 0.1)
        layers: list[nn.Linear] = []
        width = cfg.creator_dim + cfg.category_dim + n_feat
        for h in (*cfg.hidden, dim):
            lin = nn.Linear(width, h)
            nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=gen)
            bound = 1.0 / math.sqrt(width)
            nn.init.uniform_(lin.bias, -bound, bound, generator=gen)
            layers.append(lin)
            width = h
        self.layers = nn.ModuleList(layers)

    def forward(self, cr: torch.Tensor, ca: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.cr[cr], self.cat[ca], x], dim=1)
        for i, lin in enumerate(self.layers):
            h = lin(h)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        return F.normalize(h, dim=-1)


def _warm_index(warm_items: object, n: int) -> np.ndarray:
    w = np.asarray(warm_items)
    if w.dtype == bool:
        if w.shape != (n,):
            raise DimensionMismatchError(f"warm_items mask has shape {w.shape}, expected ({n},)")
        w = np.flatnonzero(w)
    elif w.dtype.kind in "iu" and w.ndim == 1:
        w = w.astype(np.int64)
        if w.size and (int(w.min()) < 0 or int(w.max()) >= n):
            raise InvalidInputError(f"warm_items must index rows in [0, {n}), got range [{w.min()}, {w.max()}]")
        if np.unique(w).size != w.size:
            raise InvalidInputError("warm_items holds duplicate rows")
    else:
        raise InvalidInputError(f"warm_items must be a bool mask or 1-D int indexes, got {w.dtype} {w.shape}")
    if w.size < 2:
        raise EmptyInputError(f"need at least 2 warm items to train a content tower, got {w.size}")
    return w


def train_content_tower(
    metadata: ItemMetadata,
    item_embeddings: np.ndarray,
    warm_items: np.ndarray,
    config: ContentTowerConfig | None = None,
) -> ContentTower:
    """Fit a content tower mapping metadata of warm items to their ID item embeddings.

    Args:
        metadata: one row per catalog item, aligned with ``item_embeddings`` rows
            (for a Split: ``raw_metadata.take(split.item_ids)``).
        item_embeddings: float [n_items, dim] ID-tower item embeddings (rows are L2-normalised here).
            Only the warm rows are read; cold rows may hold anything finite or not.
        warm_items: int indexes [m] or bool mask [n_items] of the rows to train on (m >= 2).
        config: hyper-parameters (default ``ContentTowerConfig()``).

    Returns:
        :class:`ContentTower` whose :meth:`~ContentTower.embed` outputs float32 [n, dim].

    Raises:
        DimensionMismatchError: ``metadata`` and ``item_embeddings`` row counts differ.
        NonFiniteError: warm item embeddings hold NaN/Inf.
        EmptyInputError: fewer than 2 warm items.
        InvalidInputError: a warm creator/category id is ``>= MAX_ID``, or bad ``warm_items``.
        TrainingError: the loss became NaN/Inf.
    """
    from reelpack.util.validate import as_float_matrix

    config = ContentTowerConfig() if config is None else config
    if not isinstance(config, ContentTowerConfig):
        raise InvalidInputError(f"config must be a ContentTowerConfig, got {type(config).__name__}")
    if not isinstance(metadata, ItemMetadata):
        raise InvalidInputError(f"metadata must be an ItemMetadata, got {type(metadata).__name__}")
    emb = np.asarray(item_embeddings)
    if emb.ndim != 2 or emb.shape[0] != len(metadata):
        raise DimensionMismatchError(
            f"item_embeddings has shape {emb.shape}, metadata has {len(metadata)} rows; need [{len(metadata)}, dim]"
        )
    warm = _warm_index(warm_items, len(metadata))
    target = as_float_matrix(emb[warm], "item_embeddings[warm_items]")
    target = target / np.maximum(np.linalg.norm(target, axis=1, keepdims=True), 1e-12)
    meta = metadata.take(warm)
    for name, ids in (("creator", meta.creator), ("category", meta.category)):
        if int(ids.max()) >= MAX_ID:
            raise InvalidInputError(
                f"{name} ids of warm items reach {int(ids.max())}; they must be below {MAX_ID} "
                "(re-index them densely, e.g. with np.unique(..., return_inverse=True))"
            )
    n_cr = int(meta.creator.max()) + 1
    n_cat = int(meta.category.max()) + 1
    cr_seen = np.zeros(n_cr, bool)
    cr_seen[meta.creator] = True
    cat_seen = np.zeros(n_cat, bool)
    cat_seen[meta.category] = True
    mean = meta.features.mean(axis=0).astype(np.float32)
    std = meta.features.std(axis=0).astype(np.float32)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
    prev = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model, history = _fit(meta, target, n_cr, n_cat, mean, std, config)
    finally:
        torch.set_num_threads(prev)
    with torch.no_grad():
        weights = [lin.weight.detach().numpy().astype(np.float32).copy() for lin in model.layers]
        biases = [lin.bias.detach().numpy().astype(np.float32).copy() for lin in model.layers]
        tower = ContentTower(
            creator_table=model.cr.detach().numpy().astype(np.float32).copy(),
            category_table=model.cat.detach().numpy().astype(np.float32).copy(),
            creator_seen=cr_seen,
            category_seen=cat_seen,
            feat_mean=mean,
            feat_std=std,
            weights=weights,
            biases=biases,
            config=config,
            loss_history=history,
            train_seconds=time.perf_counter() - t0,
        )
    if not all(np.isfinite(a).all() for a in (tower.creator_table, tower.category_table, *weights, *biases)):
        raise TrainingError("content tower training produced NaN/Inf weights; lower lr")
    return tower


def _fit(
    meta: ItemMetadata,
    target: np.ndarray,
    n_cr: int,
    n_cat: int,
    mean: np.ndarray,
    std: np.ndarray,
    cfg: ContentTowerConfig,
) -> tuple[_TorchTower, list[float]]:
    gen = torch.Generator().manual_seed(cfg.seed)
    model = _TorchTower(n_cr, n_cat, meta.n_features, target.shape[1], cfg, gen)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled_weight_decay=True)
    cr_all = torch.from_numpy(meta.creator + 1)
    ca_all = torch.from_numpy(meta.category + 1)
    x_all = torch.from_numpy(((meta.features - mean) / std).astype(np.float32))
    v_all = torch.from_numpy(target)
    n = target.shape[0]
    bs = min(cfg.batch_size, n)
    steps = math.ceil(n / bs)
    history: list[float] = []
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for s in range(steps):
            idx = perm[s * bs : (s + 1) * bs]
            if idx.numel() < 2:
                continue
            cr, ca = cr_all[idx], ca_all[idx]
            if cfg.unknown_dropout > 0:
                drop = torch.rand(2, idx.numel(), generator=gen) < cfg.unknown_dropout
                cr = torch.where(drop[0], torch.zeros_like(cr), cr)
                ca = torch.where(drop[1], torch.zeros_like(ca), ca)
            c = model(cr, ca, x_all[idx])
            v = v_all[idx]
            if cfg.loss == "softmax":
                logits = (c @ v.T) / cfg.temperature
                loss = F.cross_entropy(logits, torch.arange(idx.numel()))
            else:
                loss = (1.0 - (c * v).sum(1)).mean()
            if not torch.isfinite(loss):
                raise TrainingError(f"content tower loss became {loss.item()} at epoch {epoch + 1}; lower lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        history.append(total / steps)
    model.eval()
    return model, history


# ----------------------------------------------------------------------------- evaluation


def _filter_csr(indptr: np.ndarray, items: np.ndarray, keep: np.ndarray, remap: np.ndarray | None = None):
    """Keep the CSR entries where ``keep`` (bool [nnz]); optionally renumber items through ``remap``."""
    n = indptr.shape[0] - 1
    users = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    new_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(users[keep], minlength=n), out=new_ptr[1:])
    new_items = items[keep].astype(np.int64)
    if remap is not None:
        new_items = remap[new_items]
    return new_ptr, new_items.astype(np.int32)


def _sub_split(split: Split, items: np.ndarray | None, test_keep_item: np.ndarray, train_keep_item: np.ndarray | None):
    """A Split view: test entries on items with ``test_keep_item``; train entries filtered by ``train_keep_item``
    (None: all); catalog restricted to ``items`` (sorted int indexes; None: unchanged)."""
    remap = None
    if items is not None:
        remap = np.full(split.n_items, -1, np.int64)
        remap[items] = np.arange(items.size)
        catalog = np.zeros(split.n_items, bool)
        catalog[items] = True
        test_keep_item = test_keep_item & catalog
        train_keep_item = catalog if train_keep_item is None else train_keep_item & catalog
    tr_keep = np.ones(split.train_items.size, bool) if train_keep_item is None else train_keep_item[split.train_items]
    tr_ptr, tr_items = _filter_csr(split.train_indptr, split.train_items, tr_keep, remap)
    te_ptr, te_items = _filter_csr(split.test_indptr, split.test_items, test_keep_item[split.test_items], remap)
    counts = np.bincount(tr_items, minlength=split.n_items if items is None else items.size).astype(np.int64)
    return dataclasses.replace(
        split,
        item_ids=split.item_ids if items is None else split.item_ids[items],
        train_indptr=tr_ptr,
        train_items=tr_items,
        test_indptr=te_ptr,
        test_items=te_items,
        item_counts=counts,
    )


@dataclass
class ColdStartResult:
    """Output of :func:`cold_start_eval`.

    Attributes:
        rows: one dict per (method, scope): ``method``, ``scope`` (``"cold-only"``, ``"full/cold"``:
            full catalog, cold targets; ``"full/all"``: full catalog, all test targets), ``recall@50``,
            ``ndcg@10``, ``n_users``.
        cold_items: int64 [n_cold] Split item indexes held out as cold.
        info: sizes, timings, the two-tower metrics and the data labels.
    """

    rows: list[dict[str, Any]]
    cold_items: np.ndarray
    info: dict[str, Any]

    def get(self, method: str, scope: str, metric: str = "recall@50") -> float:
        for r in self.rows:
            if r["method"] == method and r["scope"] == scope:
                return float(r[metric])
        raise InvalidInputError(f"no result for method {method!r}, scope {scope!r}")

    def table(self) -> str:
        """Fixed-width text table: one line per method, Recall@50 / NDCG@10 per scope."""
        scopes = [s for s in ("cold-only", "full/cold", "full/all") if any(r["scope"] == s for r in self.rows)]
        methods = list(dict.fromkeys(r["method"] for r in self.rows))
        head = f"{'method':<18}" + "".join(f"{s + ' R@50':>16}{s + ' N@10':>16}" for s in scopes)
        lines = [head, "-" * len(head)]
        for m in methods:
            cells = []
            for s in scopes:
                try:
                    cells.append(f"{self.get(m, s):>16.4f}{self.get(m, s, 'ndcg@10'):>16.4f}")
                except InvalidInputError:
                    cells.append(f"{'-':>16}{'-':>16}")
            lines.append(f"{m:<18}" + "".join(cells))
        return "\n".join(lines)


def cold_start_eval(
    split: Split,
    metadata: ItemMetadata,
    cold_fraction: float = 0.1,
    seed: int = 0,
    two_tower: TwoTowerConfig | None = None,
    content: ContentTowerConfig | None = None,
    oracle: bool = True,
    ablations: bool = False,
) -> ColdStartResult:
    """Item cold-start benchmark: hold out items, embed them from metadata, rank.

    Protocol:

    1. ``round(cold_fraction * n_items)`` catalog items (seeded by ``seed``) become COLD.
       Every train interaction with them is removed before the two-tower is trained
       (the ID tower never sees them; their ID rows are never used).
    2. The content tower is trained on the warm items' ID embeddings and embeds the cold items.
    3. Targets: each user's *test* interactions with cold items (``cold-only``, ``full/cold``),
       and every test interaction (``full/all``). Each user's train interactions (including the
       removed ones with cold items) are excluded from the ranking, for every method alike.
       Scopes: ``cold-only`` ranks the cold items only; ``full/*`` rank the whole catalog
       (warm ID embeddings + cold embeddings).
    4. Methods: ``content`` (the content tower), ``random`` (random unit vectors for cold
       items), ``popularity`` (warm train counts; cold items score 0, ties broken by index),
       ``oracle`` (a two-tower trained with the cold items' train interactions, the upper bound).

    Args:
        split: train/test split of the interactions.
        metadata: one row per Split item (``raw_metadata.take(split.item_ids)``).
        two_tower: config of both two-towers (default ``TwoTowerConfig.for_synthetic()``).
        content: content tower config (default ``ContentTowerConfig()``).
        oracle: also train the oracle two-tower (doubles the two-tower time).
        ablations: also score ``content-nocreator`` (every cold creator mapped to "unknown")
            and ``content-nofeat`` (cold numeric features set to the warm mean).

    Returns:
        :class:`ColdStartResult` (``.table()`` prints it).
    """
    from reelpack.metrics.ranking import dense_score_fn, evaluate_scores

    if not isinstance(split, Split):
        raise InvalidInputError(f"split must be a reelpack.data.Split, got {type(split).__name__}")
    if not isinstance(metadata, ItemMetadata):
        raise InvalidInputError(f"metadata must be an ItemMetadata, got {type(metadata).__name__}")
    if len(metadata) != split.n_items:
        raise DimensionMismatchError(
            f"metadata has {len(metadata)} rows, the split catalog {split.n_items}; pass metadata.take(split.item_ids)"
        )
    cold_fraction = _check_float("cold_fraction", cold_fraction, 0.0, False, high=1.0)
    seed = _check_int("seed", seed, 0)
    two_tower = TwoTowerConfig.for_synthetic() if two_tower is None else two_tower
    content = ContentTowerConfig() if content is None else content
    n = split.n_items
    n_cold = int(round(cold_fraction * n))
    if n_cold < 50 or n - n_cold < 2:
        raise InvalidInputError(f"cold_fraction {cold_fraction} gives {n_cold} cold of {n} items; need >= 50 cold")
    rng = np.random.default_rng([seed, 0x636F6C64])  # "cold"
    cold = np.sort(rng.choice(n, size=n_cold, replace=False)).astype(np.int64)
    is_cold = np.zeros(n, bool)
    is_cold[cold] = True
    warm = np.flatnonzero(~is_cold)

    t0 = time.perf_counter()
    warm_split = _sub_split(split, None, np.ones(n, bool), ~is_cold)  # train without cold items
    if warm_split.train_items.size == 0:
        raise TrainingError("removing the cold items leaves no train interactions")
    emb = train_two_tower(warm_split, two_tower, progress=False, evaluate=False)
    t_tt = time.perf_counter() - t0
    t0 = time.perf_counter()
    tower = train_content_tower(metadata, emb.item_emb, warm, content)
    cold_emb = tower.embed(metadata.take(cold))
    t_ct = time.perf_counter() - t0

    rand = np.random.default_rng([seed, 0x72616E64]).standard_normal((n_cold, emb.dim)).astype(np.float32)
    rand /= np.linalg.norm(rand, axis=1, keepdims=True)
    models: dict[str, tuple[np.ndarray, np.ndarray] | np.ndarray] = {}
    for name, ce in (("content", cold_emb), ("random", rand)):
        items = emb.item_emb.copy()
        items[cold] = ce
        models[name] = (emb.user_emb, items)
    pop = warm_split.item_counts.astype(np.float32)  # cold items: 0
    if ablations:
        cm = metadata.take(cold)
        no_cr = dataclasses.replace(cm, creator=np.full(n_cold, tower.creator_seen.size, np.int64))
        no_ft = dataclasses.replace(cm, features=np.broadcast_to(tower.feat_mean, cm.features.shape).copy())
        for name, md in (("content-nocreator", no_cr), ("content-nofeat", no_ft)):
            items = emb.item_emb.copy()
            items[cold] = tower.embed(md)
            models[name] = (emb.user_emb, items)
    models["popularity"] = pop
    t_or = 0.0
    if oracle:
        t0 = time.perf_counter()
        full = train_two_tower(split, two_tower, progress=False, evaluate=False)
        t_or = time.perf_counter() - t0
        models["oracle"] = (full.user_emb, full.item_emb)

    scopes = {
        "cold-only": (cold, is_cold),
        "full/cold": (None, is_cold),
        "full/all": (None, np.ones(n, bool)),
    }
    rows: list[dict[str, Any]] = []
    for scope, (items, test_keep) in scopes.items():
        sub = _sub_split(split, items, test_keep, None)
        if sub.eval_users().size == 0:
            raise InvalidInputError(f"no user has a test interaction in scope {scope!r}; use more data")
        sel = np.arange(n) if items is None else items
        for name, model in models.items():
            if isinstance(model, tuple):
                fn = dense_score_fn(model[0], model[1][sel])
            else:
                p = model[sel]

                def fn(users: np.ndarray, p: np.ndarray = p) -> np.ndarray:
                    return np.broadcast_to(p, (len(users), p.size))

            m, _ = evaluate_scores(fn, sub, ks=(10, 50))
            rows.append(
                {"method": name, "scope": scope, "recall@50": m["recall@50"], "ndcg@10": m["ndcg@10"],
                 "n_users": int(m["n_users"])}  # fmt: skip
            )
    info = {
        "n_items": n,
        "n_cold": n_cold,
        "n_users": split.n_users,
        "train_removed": int(split.train_items.size - warm_split.train_items.size),
        "two_tower_seconds": t_tt,
        "content_seconds": t_ct,
        "oracle_seconds": t_or,
        "content_loss": tower.loss_history,
        "data": split.label,
        "metadata": metadata.label,
        "synthetic": bool(split.synthetic or metadata.synthetic),
    }
    return ColdStartResult(rows=rows, cold_items=cold, info=info)
