"""Video catalogs: per-video frame embeddings plus a title embedding; the SYNTHETIC generator and file loaders.

A :class:`VideoCatalog` row ``i`` is one video: ``frames[i, :n_frames[i]]`` are its
frame embeddings (from any frozen image encoder), the rest is zero padding, and
``title_emb[i]`` is its title embedding already aligned to the frame space
(:func:`reelpack.models.video.text.align_titles`), zeros when the title is missing.

Documented fallbacks for bad or partial input
---------------------------------------------
* **Zero-frame videos** (``n_frames[i] == 0``) are allowed: their frames are all
  zero and :meth:`VideoCatalog.mean_frames` returns a zero row. Consumers (the
  aggregator) then use the title only; a video with neither frames nor a title
  gets whatever the consumer's "unknown" vector is.
* **Missing titles** (``""``) have a zero ``title_emb`` row; consumers fall back to
  frame-only selection.
* **NaN/Inf frames** are an error (:class:`~reelpack.errors.NonFiniteError`, naming
  the videos), never silently zeroed.
* **Dimension mismatch** between frames and aligned titles is an error
  (:class:`~reelpack.errors.DimensionMismatchError`).

The SYNTHETIC catalog (:func:`synthetic_video_catalog`)
--------------------------------------------------------
No video data set exists here, so the generator plants a known structure on top of
:func:`reelpack.data.synthetic_interactions` (whose users pick items by *cluster*,
``inter.meta["item_cluster"]``). With a generator seeded by ``(seed, "video")``:

* ``n_clusters`` unit cluster centres ``c_k`` and ``N_GENERIC`` unit "generic"
  directions ``g_j`` (intro, logo, black, end card) in ``R^d_frame``;
* an item latent ``z_i = normalise(c_{cluster(i)} + ITEM_OFFSET * u_i)``, ``u_i`` a random
  unit vector (item-specific content);
* each video has ``n_frames`` frames (all unit vectors): exactly ``signal_frames`` of
  them, at random positions, are **signal** ``normalise(z_i + SIGNAL_NOISE * e)``; each
  other frame is, with probabilities ``DISTRACTOR_MIX``, **generic**
  ``normalise(g_j + GENERIC_NOISE * e)`` (j uniform), a **cut-away / ad**
  ``normalise(c_k + CUTAWAY_NOISE * e)`` from one of ``CUTAWAY_CLUSTERS`` other clusters
  chosen per video, or pure **noise** ``normalise(e)``; ``e`` is N(0, I/d_frame) (norm ~1);
* titles (``title_dim`` defaults to ``max(256, d_frame)``): ``TITLE_CLUSTER_WORDS`` words drawn (Zipf-weighted, no repeats) from the item
  cluster's vocabulary of ``VOCAB_PER_CLUSTER`` synthetic words ``"c07_w12"``, plus
  ``TITLE_COMMON_WORDS`` common English words, shuffled. A share ``wrong_title_rate`` of
  items (exactly ``round(rate * n)``) get the title of a random item of *another*
  cluster (``wrong_title`` marks them); ``missing_title_rate`` get ``""``;
  ``zero_frame_rate`` get no frames. Titles are encoded with
  :class:`~reelpack.models.video.text.HashingTitleEncoder` (dim ``d_frame``) and aligned with
  :func:`~reelpack.models.video.text.align_titles` fitted on (title, mean of *all* valid
  frames) of every video: the generator does not use its knowledge of the signal
  frames, because real data would not have it.

So mean pooling sees the signal diluted by generic frames and by frames of other
clusters, while the frames most similar to a correct title are mostly the signal
frames. Calibration at the defaults (``synthetic_interactions()``: 5000 items, 25
clusters; 64 frames, 8 signal, d_frame 128, title_dim 256), mean cosine with the item
latent ``z_i``: mean of all frames 0.40 (0.56 after subtracting the catalog-wide mean
frame), mean of the signal frames 0.985. Share of signal frames among the top-8 frames
by dot with the aligned title: 0.98 with correct titles (0.96 / 0.88 for the correct
ones when 20 % / 50 % of titles are wrong), 0.19 for wrong titles; by dot with the
*centred* mean frame (the missing-title fallback) 0.78, by the raw mean frame 0.07
(it points at the generic frames); chance 0.125.

The cluster vocabularies are small (12 words) on purpose: the hashed title space is
only ``title_dim`` wide and the ridge map is linear, so a large vocabulary would make
the alignment, not the frames, the bottleneck. The alignment is fitted on the same
videos it is applied to; with few videos per title dimension (``n_items`` not much
larger than ``title_dim``) it can memorise part of each video's own frames into its
title, which makes even wrong titles look informative: keep ``n_items >> title_dim``. Everything is labelled SYNTHETIC; ``meta`` keeps the planted latents
(``latent``, ``centres``, ``generic``, ``item_cluster``, ``frame_kind``) for oracles.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reelpack.data.interactions import SYNTHETIC_LABEL, Interactions
from reelpack.errors import (
    DataFormatError,
    DataNotFoundError,
    DimensionMismatchError,
    DTypeError,
    EmptyInputError,
    InvalidInputError,
    NonFiniteError,
)
from reelpack.models.video.text import HashingTitleEncoder, _l2_rows, align_titles

__all__ = [
    "VideoCatalog",
    "synthetic_video_catalog",
    "load_video_catalog",
    "FRAME_SIGNAL",
    "FRAME_GENERIC",
    "FRAME_CUTAWAY",
    "FRAME_NOISE",
    "FRAME_PAD",
]

# Generative model constants of the synthetic catalog (see the module docstring).
N_GENERIC = 4
ITEM_OFFSET = 0.6
SIGNAL_NOISE = 0.5
GENERIC_NOISE = 0.3
CUTAWAY_NOISE = 0.7
CUTAWAY_CLUSTERS = 3
DISTRACTOR_MIX = (0.45, 0.25, 0.30)  # generic, cut-away, noise
VOCAB_PER_CLUSTER = 12
TITLE_CLUSTER_WORDS = 3
TITLE_COMMON_WORDS = 3
COMMON_WORDS = (
    "the a new best top my how to in of with and for this day video official full part "
    "live show vlog review guide easy first last week today episode highlights trailer"
).split()
_BLOCK = 256  # items generated per block (part of the deterministic stream: do not change lightly)

# frame kinds in meta["frame_kind"] (int8 [n_items, n_frames])
FRAME_SIGNAL, FRAME_GENERIC, FRAME_CUTAWAY, FRAME_NOISE, FRAME_PAD = 0, 1, 2, 3, -1

_MAX_FRAMES = 1 << 16


def _nonfinite_items(arr: np.ndarray) -> np.ndarray:
    flat = arr.reshape(arr.shape[0], -1)
    bad = np.zeros(arr.shape[0], bool)
    for s in range(0, arr.shape[0], 1024):  # blockwise: no full-size boolean temporary
        bad[s : s + 1024] = ~np.isfinite(flat[s : s + 1024]).all(axis=1)
    return np.flatnonzero(bad)


def _raise_nonfinite(name: str, bad: np.ndarray) -> None:
    shown = ", ".join(str(int(r)) for r in bad[:20])
    more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
    raise NonFiniteError(f"{name} holds NaN or Inf in {len(bad)} video(s): {shown}{more}", rows=bad[:20].tolist())


@dataclass(frozen=True)
class VideoCatalog:
    """Frame and title embeddings of a video catalog (SYNTHETIC unless loaded from files).

    Rows are items. For a catalog made from ``synthetic_interactions`` row ``i`` is raw
    item id ``i``; a :class:`~reelpack.data.Split` re-indexes items, so use
    ``catalog.take(split.item_ids)`` to get rows in split order.

    Attributes:
        frames: float32 [n_items, n_frames, d_frame]; rows ``< n_frames[i]`` are the video's frames
            (unit rows for synthetic data), the rest is zero padding.
        n_frames: int64 [n_items], valid frames per video, in ``[0, frames.shape[1]]``
            (0 = no frames: the documented title-only fallback).
        titles: title text per item (``""`` = missing).
        title_emb: float32 [n_items, d_frame], aligned title embedding in the frame space,
            unit rows, zeros = missing.
        signal_mask: bool [n_items, n_frames], frames carrying the planted signal (synthetic only).
        wrong_title: bool [n_items], title replaced by another item's (synthetic only).
        synthetic: True for generated data.
        label: human label; SYNTHETIC catalogs say so loudly.
        item_ids: int64 [n_items], raw item id of each row.
        meta: free-form extras (synthetic: the planted latents; loaded: the paths).

    Raises (on construction):
        DTypeError / DimensionMismatchError / NonFiniteError / InvalidInputError for inconsistent fields.
    """

    frames: np.ndarray
    n_frames: np.ndarray
    titles: list[str]
    title_emb: np.ndarray
    signal_mask: np.ndarray | None
    wrong_title: np.ndarray | None
    synthetic: bool
    label: str
    item_ids: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        fr = np.asarray(self.frames)
        if fr.dtype.kind not in "fiu":
            raise DTypeError(f"frames must be a real float array, got dtype {fr.dtype}")
        if fr.ndim != 3:
            raise DimensionMismatchError(f"frames must be 3-D [n_items, n_frames, d_frame], got shape {fr.shape}")
        n, f, d = fr.shape
        if d == 0:
            raise DimensionMismatchError("frames have dimension 0")
        fr = np.ascontiguousarray(fr, dtype=np.float32)
        bad = _nonfinite_items(fr)
        if bad.size:
            _raise_nonfinite("frames", bad)
        nf = np.asarray(self.n_frames)
        if nf.dtype.kind not in "iu":
            raise DTypeError(f"n_frames must be an integer array, got dtype {nf.dtype}")
        if nf.shape != (n,):
            raise DimensionMismatchError(f"n_frames must have shape ({n},), got {nf.shape}")
        nf = nf.astype(np.int64)
        if nf.size and (nf.min() < 0 or nf.max() > f):
            i = int(np.flatnonzero((nf < 0) | (nf > f))[0])
            raise InvalidInputError(f"n_frames must lie in [0, {f}] (frames per video); video {i} has {int(nf[i])}")
        titles = list(self.titles)
        if len(titles) != n:
            raise DimensionMismatchError(f"titles has {len(titles)} entries, expected one per video ({n})")
        if any(not isinstance(t, str) for t in titles):
            raise InvalidInputError("titles must all be str ('' for a missing title)")
        te = np.asarray(self.title_emb)
        if te.dtype.kind not in "fiu":
            raise DTypeError(f"title_emb must be a real float array, got dtype {te.dtype}")
        if te.ndim != 2 or te.shape[0] != n:
            raise DimensionMismatchError(f"title_emb must have shape ({n}, {d}), got {te.shape}")
        if te.shape[1] != d:
            raise DimensionMismatchError(
                f"title_emb has dimension {te.shape[1]} but frames have {d}; align titles to the frame space "
                "first (reelpack.models.video.align_titles)"
            )
        te = np.ascontiguousarray(te, dtype=np.float32)
        bad = _nonfinite_items(te)
        if bad.size:
            _raise_nonfinite("title_emb", bad)
        for name in ("signal_mask", "wrong_title"):
            v = getattr(self, name)
            if v is None:
                continue
            v = np.asarray(v)
            want = (n, f) if name == "signal_mask" else (n,)
            if v.dtype != np.bool_ or v.shape != want:
                raise DimensionMismatchError(f"{name} must be bool {want}, got {v.dtype} {v.shape}")
            object.__setattr__(self, name, v)
        ids = np.arange(n, dtype=np.int64) if self.item_ids is None else np.asarray(self.item_ids)
        if ids.dtype.kind not in "iu" or ids.shape != (n,):
            raise DimensionMismatchError(f"item_ids must be integer ({n},), got {ids.dtype} {ids.shape}")
        object.__setattr__(self, "frames", fr)
        object.__setattr__(self, "n_frames", nf)
        object.__setattr__(self, "titles", titles)
        object.__setattr__(self, "title_emb", te)
        object.__setattr__(self, "item_ids", ids.astype(np.int64))

    @property
    def n_items(self) -> int:
        return int(self.frames.shape[0])

    @property
    def max_frames(self) -> int:
        return int(self.frames.shape[1])

    @property
    def d_frame(self) -> int:
        return int(self.frames.shape[2])

    @property
    def nbytes(self) -> int:
        """Bytes held by the frame and title arrays."""
        return int(self.frames.nbytes + self.title_emb.nbytes)

    def valid_mask(self) -> np.ndarray:
        """bool [n_items, max_frames]: True where a frame is a real (non-padding) frame."""
        return np.arange(self.max_frames)[None, :] < self.n_frames[:, None]

    def has_title(self) -> np.ndarray:
        """bool [n_items]: True where the aligned title embedding is non-zero."""
        return np.any(self.title_emb != 0, axis=1)

    def global_mean_frame(self) -> np.ndarray:
        """float32 [d_frame]: mean of all valid frames of the catalog (zeros if no video has frames).

        In the synthetic catalog this is dominated by the generic intro/logo/black frames
        every video shares; subtract it before using a video's mean frame as a query.
        """
        total = self.n_frames.sum()
        if total == 0:
            return np.zeros(self.d_frame, np.float32)
        return (self.mean_frames().astype(np.float64) * self.n_frames[:, None]).sum(0).astype(np.float32) / total

    def mean_frames(self, normalize: bool = False, center: bool = False) -> np.ndarray:
        """float32 [n_items, d_frame]: mean of each video's valid frames (zeros for zero-frame videos).

        With ``center`` the catalog-wide mean frame (:meth:`global_mean_frame`) is subtracted
        from every video that has frames (zero-frame rows stay zero): use this as the
        "title missing" query, because the raw mean frame points at the generic frames
        every video shares. With ``normalize`` the rows are L2-normalised (zero rows stay zero).
        """
        out = np.zeros((self.n_items, self.d_frame), np.float32)
        valid = self.valid_mask()
        for s in range(0, self.n_items, 1024):
            e = slice(s, s + 1024)
            tot = np.einsum("nf,nfd->nd", valid[e].astype(np.float32), self.frames[e])
            out[e] = tot / np.maximum(self.n_frames[e], 1)[:, None]
        if center:
            total = self.n_frames.sum()
            if total:
                g = (out.astype(np.float64) * self.n_frames[:, None]).sum(0) / total
                out[self.n_frames > 0] -= g.astype(np.float32)
        return _l2_rows(out).astype(np.float32) if normalize else out

    def signal_mean(self, normalize: bool = True) -> np.ndarray:
        """float32 [n_items, d_frame]: mean of the planted signal frames (the oracle; synthetic only).

        Raises:
            InvalidInputError: the catalog has no ``signal_mask`` (loaded from files).
        """
        if self.signal_mask is None:
            raise InvalidInputError("signal_mean needs a signal_mask (only SYNTHETIC catalogs have one)")
        m = (self.signal_mask & self.valid_mask()).astype(np.float32)
        out = np.zeros((self.n_items, self.d_frame), np.float32)
        for s in range(0, self.n_items, 1024):
            e = slice(s, s + 1024)
            out[e] = np.einsum("nf,nfd->nd", m[e], self.frames[e]) / np.maximum(m[e].sum(1), 1)[:, None]
        return _l2_rows(out).astype(np.float32) if normalize else out

    def take(self, rows: object) -> VideoCatalog:
        """Sub-catalog of the given rows (int array), e.g. ``catalog.take(split.item_ids)``.

        Raises:
            InvalidInputError: rows out of range or not integers.
        """
        r = np.asarray(rows)
        if r.dtype.kind not in "iu" or r.ndim != 1:
            raise InvalidInputError(f"rows must be a 1-D integer array, got {r.dtype} {r.shape}")
        if r.size and (r.min() < 0 or r.max() >= self.n_items):
            raise InvalidInputError(f"rows must lie in [0, {self.n_items}), got min {r.min()} max {r.max()}")
        meta = {
            k: (v[r] if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == self.n_items else v)
            for k, v in self.meta.items()
        }
        return VideoCatalog(
            frames=self.frames[r],
            n_frames=self.n_frames[r],
            titles=[self.titles[int(i)] for i in r],
            title_emb=self.title_emb[r],
            signal_mask=None if self.signal_mask is None else self.signal_mask[r],
            wrong_title=None if self.wrong_title is None else self.wrong_title[r],
            synthetic=self.synthetic,
            label=self.label,
            item_ids=self.item_ids[r],
            meta=meta,
        )


# ----------------------------------------------------------------------------------------------------------------
# synthetic generator


def _int_param(name: str, v: object, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer, got {v!r}")
    v = int(v)
    if not lo <= v <= hi:
        raise InvalidInputError(f"{name} must lie in [{lo}, {hi}], got {v}")
    return v


def _rate_param(name: str, v: object) -> float:
    try:
        v = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number in [0, 1], got {v!r}") from None
    if not 0.0 <= v <= 1.0:
        raise InvalidInputError(f"{name} must lie in [0, 1], got {v}")
    return v


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return _l2_rows(rng.standard_normal((n, d)))


def _make_titles(rng: np.random.Generator, cluster_of: np.ndarray, n_clusters: int) -> list[str]:
    """Title text per item: cluster words (Zipf-weighted within the cluster vocabulary) + common words."""
    n = cluster_of.size
    w = 1.0 / (1.0 + np.arange(VOCAB_PER_CLUSTER)) ** 0.8
    # Zipf-weighted sampling without replacement via Gumbel top-k on log-weights
    keys = np.log(w)[None, :] + rng.gumbel(size=(n, VOCAB_PER_CLUSTER))
    word_idx = np.argsort(-keys, axis=1)[:, :TITLE_CLUSTER_WORDS]
    common = rng.integers(0, len(COMMON_WORDS), size=(n, TITLE_COMMON_WORDS))
    order = np.argsort(rng.random((n, TITLE_CLUSTER_WORDS + TITLE_COMMON_WORDS)), axis=1)
    cw = len(str(max(n_clusters - 1, 1)))
    ww = len(str(VOCAB_PER_CLUSTER - 1))
    cl_words = np.char.add(
        np.char.add(np.char.add("c", np.char.zfill(cluster_of.astype(str), cw))[:, None], "_w"),
        np.char.zfill(word_idx.astype(str), ww),
    )
    words = np.concatenate([cl_words.astype(object), np.asarray(COMMON_WORDS, dtype=object)[common]], axis=1)
    words = np.take_along_axis(words, order, axis=1)
    return [" ".join(row) for row in words.tolist()]


def synthetic_video_catalog(
    interactions: Interactions,
    *,
    n_frames: int = 64,
    d_frame: int = 128,
    signal_frames: int = 8,
    wrong_title_rate: float = 0.0,
    seed: int = 0,
    missing_title_rate: float = 0.0,
    zero_frame_rate: float = 0.0,
    ridge: float = 1.0,
    title_dim: int | None = None,
) -> VideoCatalog:
    """Generate a SYNTHETIC video catalog for the items of ``synthetic_interactions`` output.

    See the module docstring for the generative model. Deterministic for given
    arguments (frames are generated in blocks of items, each block from its own
    seeded stream). Memory: ``n_items * n_frames * d_frame * 4`` bytes (5000 x 64 x 128:
    164 MB) plus one block of temporaries.

    Args:
        interactions: output of :func:`reelpack.data.synthetic_interactions` (its
            ``meta["item_cluster"]`` gives the item clusters; rows = raw item ids).
        n_frames: frames per video, in [1, 65536].
        d_frame: frame (and aligned title) dimension, in [2, 65536].
        signal_frames: planted signal frames per video, in [1, n_frames].
        wrong_title_rate: share of items whose title is another cluster's item's title.
        seed: seeds everything (frames, titles, title projection).
        missing_title_rate: share of items with an empty title (zero ``title_emb``).
        zero_frame_rate: share of items with no frames (``n_frames == 0``).
        ridge: ridge strength of the title alignment.
        title_dim: dimension of the raw hashed title embeddings before alignment
            (default ``max(256, d_frame)``).

    Returns:
        :class:`VideoCatalog` with ``synthetic=True``, ``signal_mask`` and ``wrong_title`` set.

    Raises:
        InvalidInputError: bad parameters, or ``interactions`` without ``meta["item_cluster"]``.
    """
    cluster_of = interactions.meta.get("item_cluster") if isinstance(interactions, Interactions) else None
    if cluster_of is None:
        raise InvalidInputError(
            "interactions must come from reelpack.data.synthetic_interactions (meta['item_cluster'] is missing)"
        )
    cluster_of = np.asarray(cluster_of, dtype=np.int64)
    n = int(cluster_of.size)
    if n == 0:
        raise EmptyInputError("interactions hold no items")
    n_frames = _int_param("n_frames", n_frames, 1, _MAX_FRAMES)
    d_frame = _int_param("d_frame", d_frame, 2, _MAX_FRAMES)
    signal_frames = _int_param("signal_frames", signal_frames, 1, n_frames)
    seed = _int_param("seed", seed, 0, 2**63 - 1)
    wrong_title_rate = _rate_param("wrong_title_rate", wrong_title_rate)
    missing_title_rate = _rate_param("missing_title_rate", missing_title_rate)
    zero_frame_rate = _rate_param("zero_frame_rate", zero_frame_rate)
    title_dim = max(256, d_frame) if title_dim is None else _int_param("title_dim", title_dim, 1, _MAX_FRAMES)
    if wrong_title_rate + missing_title_rate > 1.0:
        raise InvalidInputError(
            f"wrong_title_rate + missing_title_rate must be <= 1, got {wrong_title_rate + missing_title_rate}"
        )
    n_clusters = int(cluster_of.max()) + 1
    if np.unique(cluster_of).size < 2:
        raise InvalidInputError("the synthetic video catalog needs at least 2 item clusters (cut-aways, wrong titles)")

    tag = 0x766964656F  # "video"
    rng = np.random.default_rng([seed, tag, 0])
    centres = _unit(rng, n_clusters, d_frame)
    generic = _unit(rng, N_GENERIC, d_frame)
    latent = _l2_rows(centres[cluster_of] + ITEM_OFFSET * _unit(rng, n, d_frame))
    # per-video ad clusters (never the item's own cluster)
    ads = (cluster_of[:, None] + rng.integers(1, n_clusters, size=(n, CUTAWAY_CLUSTERS))) % n_clusters
    # zero-frame videos, wrong and missing titles: exact counts, random items
    perm = rng.permutation(n)
    zero_frame = np.zeros(n, bool)
    zero_frame[perm[: int(round(zero_frame_rate * n))]] = True
    perm = rng.permutation(n)
    n_wrong = int(round(wrong_title_rate * n))
    n_missing = min(int(round(missing_title_rate * n)), n - n_wrong)
    wrong = np.zeros(n, bool)
    wrong[perm[:n_wrong]] = True
    missing = np.zeros(n, bool)
    missing[perm[n_wrong : n_wrong + n_missing]] = True

    frames = np.zeros((n, n_frames, d_frame), np.float32)
    kind = np.full((n, n_frames), FRAME_PAD, np.int8)
    noise_scale = np.array([SIGNAL_NOISE, GENERIC_NOISE, CUTAWAY_NOISE, 1.0], np.float32)
    mix = np.cumsum(DISTRACTOR_MIX)
    for b, s in enumerate(range(0, n, _BLOCK)):
        e = min(n, s + _BLOCK)
        m = e - s
        brng = np.random.default_rng([seed, tag, 1, b])
        is_signal = np.argsort(brng.random((m, n_frames)), axis=1).argsort(axis=1) < signal_frames
        u = brng.random((m, n_frames))
        k = np.where(u < mix[0], FRAME_GENERIC, np.where(u < mix[1], FRAME_CUTAWAY, FRAME_NOISE)).astype(np.int8)
        k[is_signal] = FRAME_SIGNAL
        gen_j = brng.integers(0, N_GENERIC, size=(m, n_frames))
        ad_j = ads[s:e][np.arange(m)[:, None], brng.integers(0, CUTAWAY_CLUSTERS, size=(m, n_frames))]
        # anchor table rows: [latents of the block ; generic ; centres ; zero (noise)]
        table = np.concatenate([latent[s:e], generic, centres, np.zeros((1, d_frame))]).astype(np.float32)
        idx = np.select(
            [k == FRAME_SIGNAL, k == FRAME_GENERIC, k == FRAME_CUTAWAY],
            [np.broadcast_to(np.arange(m)[:, None], (m, n_frames)), m + gen_j, m + N_GENERIC + ad_j],
            default=m + N_GENERIC + n_clusters,
        )
        eps = brng.standard_normal((m, n_frames, d_frame), dtype=np.float32) / np.float32(np.sqrt(d_frame))
        x = table[idx] + noise_scale[k][..., None] * eps
        x /= np.linalg.norm(x, axis=2, keepdims=True)
        x[zero_frame[s:e]] = 0.0
        frames[s:e] = x
        k[zero_frame[s:e]] = FRAME_PAD
        kind[s:e] = k
    n_valid = np.where(zero_frame, 0, n_frames).astype(np.int64)

    titles = _make_titles(rng, cluster_of, n_clusters)
    if n_wrong:
        wi = np.flatnonzero(wrong)
        donor = rng.integers(0, n, size=wi.size)
        for _ in range(64):  # redraw donors from the same cluster (vectorised; terminates fast with >= 2 clusters)
            same = cluster_of[donor] == cluster_of[wi]
            if not same.any():
                break
            donor[same] = rng.integers(0, n, size=int(same.sum()))
        first_other = np.array([np.argmax(cluster_of != c) for c in range(n_clusters)])  # an item of another cluster
        fallback = first_other[cluster_of[wi]]
        donor = np.where(cluster_of[donor] == cluster_of[wi], fallback, donor)
        orig = list(titles)
        for i, dnr in zip(wi.tolist(), donor.tolist()):
            titles[i] = orig[dnr]
    for i in np.flatnonzero(missing).tolist():
        titles[i] = ""

    encoder = HashingTitleEncoder(dim=title_dim, seed=seed)
    raw = encoder.encode(titles)
    cat = VideoCatalog(
        frames=frames,
        n_frames=n_valid,
        titles=titles,
        title_emb=np.zeros((n, d_frame), np.float32),
        signal_mask=kind == FRAME_SIGNAL,
        wrong_title=wrong,
        synthetic=True,
        label="",
    )
    alignment = align_titles(raw, cat.mean_frames(), ridge=ridge)
    title_emb = alignment.apply(raw)
    params = dict(
        n_frames=n_frames,
        d_frame=d_frame,
        signal_frames=signal_frames,
        wrong_title_rate=wrong_title_rate,
        seed=seed,
        missing_title_rate=missing_title_rate,
        zero_frame_rate=zero_frame_rate,
        ridge=ridge,
        title_dim=title_dim,
    )
    desc = "synthetic_video_catalog(" + ", ".join(f"{k}={v}" for k, v in params.items()) + f") of {interactions.source}"
    digest = hashlib.sha256(
        b"reelpack-synthetic-video-v1" + json.dumps(params, sort_keys=True).encode() + interactions.data_hash.encode()
    ).hexdigest()
    return VideoCatalog(
        frames=frames,
        n_frames=n_valid,
        titles=titles,
        title_emb=title_emb,
        signal_mask=cat.signal_mask,
        wrong_title=wrong,
        synthetic=True,
        label=f"{SYNTHETIC_LABEL}: {desc}",
        item_ids=np.arange(n, dtype=np.int64),
        meta={
            "item_cluster": cluster_of,
            "latent": latent.astype(np.float32),
            "centres": centres.astype(np.float32),
            "generic": generic.astype(np.float32),
            "frame_kind": kind,
            "missing_title": missing,
            "alignment": alignment,
            "encoder": repr(encoder),
            "hash": digest,
        },
    )


# ----------------------------------------------------------------------------------------------------------------
# loaders


def _path(p: str | os.PathLike, what: str) -> Path:
    q = Path(p).expanduser()
    if not q.is_file():
        raise DataNotFoundError(f"{what} file not found: {q}")
    return q


def _load_npy(p: Path, what: str) -> np.ndarray:
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataFormatError(f"{p}: cannot read {what} as .npy: {exc}", str(p), None) from None


def _frames_from_parquet(p: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parquet with columns item_id (int), frame_index (int), embedding (list<float>) -> frames, n_frames, item ids."""
    import pyarrow.parquet as pq  # optional dependency, imported only here

    try:
        table = pq.read_table(p)
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        raise DataFormatError(f"{p}: cannot read Parquet: {exc}", str(p), None) from None
    cols = set(table.column_names)
    need = {"item_id", "frame_index", "embedding"}
    if not need <= cols:
        raise DataFormatError(
            f"{p}: Parquet frames need columns item_id, frame_index, embedding; found {sorted(cols)}", str(p), None
        )
    if table.num_rows == 0:
        raise EmptyInputError(f"{p}: Parquet file holds no frames")
    item = np.asarray(table.column("item_id").to_numpy(zero_copy_only=False))
    fidx = np.asarray(table.column("frame_index").to_numpy(zero_copy_only=False))
    if item.dtype.kind not in "iu" or fidx.dtype.kind not in "iu":
        raise DataFormatError(f"{p}: item_id and frame_index must be integer columns", str(p), None)
    emb_col = table.column("embedding").combine_chunks()
    try:
        lengths = np.asarray(emb_col.value_lengths().to_numpy(zero_copy_only=False))
        values = np.asarray(emb_col.flatten().to_numpy(zero_copy_only=False))
    except (AttributeError, TypeError) as exc:
        raise DataFormatError(f"{p}: embedding must be a list<float> column ({exc})", str(p), None) from None
    if values.dtype.kind not in "fiu":
        raise DataFormatError(f"{p}: embedding values must be numbers, got {values.dtype}", str(p), None)
    if emb_col.null_count or (lengths != lengths[0]).any() or lengths[0] == 0:
        raise DimensionMismatchError(f"{p}: every embedding must have the same non-zero length")
    d = int(lengths[0])
    emb = values.reshape(-1, d).astype(np.float32)
    if (fidx < 0).any() or (item < 0).any():
        raise DataFormatError(f"{p}: item_id and frame_index must be non-negative", str(p), None)
    ids, row = np.unique(item, return_inverse=True)
    row = row.ravel()
    key = row.astype(np.int64) * (int(fidx.max()) + 1) + fidx
    if np.unique(key).size != key.size:
        raise DataFormatError(f"{p}: an (item_id, frame_index) pair appears twice", str(p), None)
    # frames are stored in frame_index order; indexes need not be contiguous (gaps are compacted)
    order = np.lexsort((fidx, row))
    row_s = row[order]
    counts = np.bincount(row_s, minlength=ids.size).astype(np.int64)
    starts = np.zeros(ids.size + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    pos = np.arange(row_s.size) - starts[row_s]
    frames = np.zeros((ids.size, int(counts.max()), d), np.float32)
    frames[row_s, pos] = emb[order]
    return frames, counts, ids.astype(np.int64)


def load_video_catalog(
    frames_path: str | os.PathLike,
    titles_path: str | os.PathLike | None = None,
    *,
    title_emb_path: str | os.PathLike | None = None,
    encoder: HashingTitleEncoder | None = None,
    n_frames_path: str | os.PathLike | None = None,
    normalize: bool = True,
    ridge: float = 1.0,
) -> VideoCatalog:
    """Load frame embeddings (+ titles) from files into a (non-synthetic) :class:`VideoCatalog`.

    Frames:
        * ``.npy``: float [n, F, d]; valid frames per video from ``n_frames_path`` (.npy int [n]) if
          given, else inferred as "up to the last non-zero frame" (trailing all-zero frames are padding;
          an all-zero video has 0 frames). Item ids are ``0..n-1``.
        * ``.parquet``: one row per frame, columns ``item_id`` (int), ``frame_index`` (int),
          ``embedding`` (list<float>, same length everywhere). Rows of the catalog are the distinct
          item ids in ascending order (``item_ids``); each video's frames are ordered by
          ``frame_index`` and padded with zeros. Videos with no frames cannot appear in Parquet;
          use .npy with ``n_frames`` = 0 for them.
        With ``normalize`` (default) valid frames are L2-normalised (all-zero frames stay zero) and
        padding is zeroed.

    Titles (optional; without them every title is missing):
        * ``titles_path`` ``.txt`` (UTF-8, one title per line, exactly n lines, empty line = missing):
          encoded with ``encoder`` (default ``HashingTitleEncoder(dim=d)``), then aligned to the frame
          space by :func:`align_titles` fitted on (title, mean frame) pairs of this catalog;
        * ``titles_path`` ``.npy``: raw title embeddings [n, d_title] from any text encoder (zero
          rows = missing), aligned the same way (``titles`` text is then ``"<embedding>"`` / ``""``);
        * ``title_emb_path`` ``.npy``: title embeddings already in the frame space [n, d] (used as
          they are, L2-normalised; overrides the embeddings from ``titles_path``).

    Raises:
        DataNotFoundError: a path does not exist.
        DataFormatError: a file cannot be parsed, or the title count differs from the video count.
        DimensionMismatchError: frames not 3-D, aligned title dim != frame dim, row counts differ.
        NonFiniteError: NaN/Inf in frames or title embeddings (names the videos).
        InvalidInputError: ``n_frames`` outside ``[0, F]``.
    """
    fp = _path(frames_path, "frames")
    if fp.suffix.lower() == ".parquet":
        if n_frames_path is not None:
            raise InvalidInputError("n_frames_path applies to .npy frames only; Parquet gives frame counts itself")
        frames, n_valid, ids = _frames_from_parquet(fp)
        bad = _nonfinite_items(frames)
        if bad.size:
            _raise_nonfinite(f"frames ({fp})", bad)
    else:
        arr = _load_npy(fp, "frames")
        if arr.dtype.kind not in "fiu":
            raise DTypeError(f"{fp}: frames must be a real float array, got dtype {arr.dtype}")
        if arr.ndim != 3:
            raise DimensionMismatchError(f"{fp}: frames must be 3-D [n_items, n_frames, d_frame], got {arr.shape}")
        if arr.shape[0] == 0:
            raise EmptyInputError(f"{fp}: frames hold no videos")
        frames = np.array(arr, dtype=np.float32)  # own, writable copy
        bad = _nonfinite_items(frames)
        if bad.size:
            _raise_nonfinite(f"frames ({fp})", bad)
        if n_frames_path is not None:
            nf = _load_npy(_path(n_frames_path, "n_frames"), "n_frames")
            if nf.dtype.kind not in "iu":
                raise DTypeError(f"n_frames must be integers, got dtype {nf.dtype}")
            if nf.shape != (frames.shape[0],):
                raise DimensionMismatchError(f"n_frames must have shape ({frames.shape[0]},), got {nf.shape}")
            n_valid = nf.astype(np.int64)
            if n_valid.size and (n_valid.min() < 0 or n_valid.max() > frames.shape[1]):
                raise InvalidInputError(
                    f"n_frames must lie in [0, {frames.shape[1]}], got range [{n_valid.min()}, {n_valid.max()}]"
                )
        else:
            nz = np.any(frames != 0, axis=2)
            last = frames.shape[1] - np.argmax(nz[:, ::-1], axis=1)
            n_valid = np.where(nz.any(axis=1), last, 0).astype(np.int64)
        ids = np.arange(frames.shape[0], dtype=np.int64)
    n, _, d = frames.shape
    valid = np.arange(frames.shape[1])[None, :] < n_valid[:, None]
    frames[~valid] = 0.0
    if normalize:
        norms = np.linalg.norm(frames, axis=2, keepdims=True)
        np.divide(frames, norms, out=frames, where=norms > 1e-12)

    titles = [""] * n
    title_emb = np.zeros((n, d), np.float32)
    raw = None
    meta: dict = {"frames_path": str(fp)}
    if titles_path is not None:
        tp = _path(titles_path, "titles")
        meta["titles_path"] = str(tp)
        if tp.suffix.lower() == ".npy":
            raw = _load_npy(tp, "title embeddings")
            if raw.dtype.kind not in "fiu" or raw.ndim != 2 or raw.shape[0] != n:
                raise DimensionMismatchError(
                    f"{tp}: title embeddings must be a float array [{n}, d_title], got {raw.dtype} {raw.shape}"
                )
            bad = _nonfinite_items(raw)
            if bad.size:
                _raise_nonfinite(f"title embeddings ({tp})", bad)
            titles = ["<embedding>" if r else "" for r in np.any(raw != 0, axis=1).tolist()]
        else:
            try:
                text = tp.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise DataFormatError(f"{tp}: titles are not UTF-8 ({exc})", str(tp), None) from None
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines = lines[:-1]
            lines = [ln.rstrip("\r").strip() for ln in lines]
            if len(lines) != n:
                raise DataFormatError(
                    f"{tp}: {len(lines)} title lines for {n} videos (one per line expected)", str(tp), None
                )
            titles = lines
            enc = encoder if encoder is not None else HashingTitleEncoder(dim=d)
            raw = enc.encode(titles)
    if raw is not None and title_emb_path is None:
        mean = np.einsum("nf,nfd->nd", valid.astype(np.float32), frames) / np.maximum(n_valid, 1)[:, None]
        alignment = align_titles(raw, mean, ridge=ridge)
        title_emb = alignment.apply(raw)
        meta["alignment"] = alignment
    if title_emb_path is not None:
        ep = _path(title_emb_path, "title embeddings")
        meta["title_emb_path"] = str(ep)
        te = _load_npy(ep, "title embeddings")
        if te.dtype.kind not in "fiu" or te.ndim != 2:
            raise DimensionMismatchError(f"{ep}: title embeddings must be a float matrix, got {te.dtype} {te.shape}")
        if te.shape[1] != d:
            raise DimensionMismatchError(
                f"{ep}: title embeddings have dimension {te.shape[1]} but frames have {d}; "
                "pass raw text-encoder embeddings as titles_path (.npy) to align them"
            )
        if te.shape[0] != n:
            raise DimensionMismatchError(f"{ep}: {te.shape[0]} title embeddings for {n} videos")
        bad = _nonfinite_items(te)
        if bad.size:
            _raise_nonfinite(f"title embeddings ({ep})", bad)
        title_emb = _l2_rows(te.astype(np.float64)).astype(np.float32)
        if titles_path is None:
            titles = ["<embedding>" if r else "" for r in np.any(title_emb != 0, axis=1).tolist()]
    return VideoCatalog(
        frames=frames,
        n_frames=n_valid,
        titles=titles,
        title_emb=title_emb,
        signal_mask=None,
        wrong_title=None,
        synthetic=False,
        label=str(fp),
        item_ids=ids,
        meta=meta,
    )

