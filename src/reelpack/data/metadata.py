"""Item metadata (creator, category, numeric features) and the SYNTHETIC metadata generator.

Cold-start items have no interactions, so a content tower
(:mod:`reelpack.models.content`) embeds them from metadata. Real catalogs supply
their own :class:`ItemMetadata`; the synthetic default catalog gets one from
:func:`synthetic_item_metadata`, generated from the same latent structure that
drives :func:`reelpack.data.synthetic_interactions`.

How the synthetic metadata is tied to the synthetic interactions
---------------------------------------------------------------
``synthetic_interactions(n_items, n_clusters, popularity_exponent, seed, ...)``
draws, as its first three calls on ``np.random.default_rng(seed)``, the item
clusters and the item popularity::

    cluster_of = rng.integers(0, n_clusters, size=n_items)
    cluster_of[rng.permutation(n_items)[:n_clusters]] = arange(n_clusters)
    pop = (1 + rng.permutation(n_items)) ** -popularity_exponent

Users then pick items from one or two home clusters by popularity, so
(cluster, popularity) is the whole latent state of an item. The generator does
not return ``pop``, so :func:`synthetic_item_metadata` *replays* these three
draws from the same seed (``synthetic_interactions`` is left unchanged) and,
when given the :class:`~reelpack.data.Interactions`, checks the replayed
clusters against ``inter.meta["item_cluster"]``.

From that latent state, with a second generator seeded by
``(seed, metadata_seed)``:

* a latent vector per cluster ``z_c ~ N(0, I_latent_dim)``; an item's latent vector is
  ``x_i = z_{c(i)}`` (items of a cluster are exchangeable to the users);
* ``category``: ``n_categories`` (default ``n_clusters``) coarse labels: the item's cluster
  through a fixed random map (clusters merge when ``n_categories < n_clusters``),
  replaced by a uniformly random category with probability ``category_noise``;
* ``creator``: a finer clustering: each cluster has ``creators_per_cluster`` creators
  with Zipf-like output; with probability ``creator_noise`` an item's creator is drawn
  from the whole creator pool instead (creators that publish across clusters).
  Creator ids are shuffled, so an id says nothing by itself;
* ``features`` float32 [n_items, n_features]: feature 0 is ``log(pop)`` standardised plus
  N(0, ``feature_noise``^2) noise (a noisy prior-popularity signal such as a creator's
  follower count); the others are a random linear map of ``x_i`` plus N(0,
  ``feature_noise``^2) noise (noisy content descriptors).

So metadata is informative but noisy, and the labels are SYNTHETIC, never real data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from reelpack.data.interactions import SYNTHETIC_LABEL, Interactions
from reelpack.errors import (
    DimensionMismatchError,
    DTypeError,
    EmptyInputError,
    InvalidInputError,
    NonFiniteError,
)

__all__ = ["ItemMetadata", "synthetic_item_metadata", "replay_synthetic_latents"]


def _as_ids(x: object, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise DTypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise DimensionMismatchError(f"{name} must be 1-D [n_items], got shape {arr.shape}")
    arr = arr.astype(np.int64)
    if arr.size and int(arr.min()) < 0:
        bad = np.flatnonzero(arr < 0)[:5].tolist()
        raise InvalidInputError(f"{name} ids must be non-negative, found negative ids at rows {bad}")
    return np.ascontiguousarray(arr)


@dataclass(frozen=True)
class ItemMetadata:
    """Content features of a catalog's items, one row per item.

    Attributes:
        creator: int64 [n], creator id of each item (>= 0; ids a model has not seen map to "unknown").
        category: int64 [n], category id of each item (>= 0).
        features: float32 [n, f] numeric features (``f`` may be 0), finite.
        source: where the metadata came from (generator description or file).
        synthetic: True for generated metadata; :attr:`label` then says SYNTHETIC.

    Construction validates everything: mismatched lengths raise
    :class:`DimensionMismatchError`, negative ids :class:`InvalidInputError`,
    non-integer ids :class:`DTypeError`, NaN/Inf features :class:`NonFiniteError`.
    """

    creator: np.ndarray
    category: np.ndarray
    features: np.ndarray
    source: str = "metadata"
    synthetic: bool = False
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        creator = _as_ids(self.creator, "creator")
        category = _as_ids(self.category, "category")
        n = creator.shape[0]
        if category.shape[0] != n:
            raise DimensionMismatchError(f"category has {category.shape[0]} rows, creator has {n}; lengths must match")
        feats = np.asarray(self.features)
        if feats.ndim == 1 and feats.size == 0:
            feats = feats.reshape(n, 0)
        if feats.dtype.kind not in "fiu":
            raise DTypeError(f"features must be a real float array, got dtype {feats.dtype}")
        if feats.ndim != 2:
            raise DimensionMismatchError(f"features must be 2-D [n_items, n_features], got shape {feats.shape}")
        if feats.shape[0] != n:
            raise DimensionMismatchError(f"features has {feats.shape[0]} rows, creator has {n}; lengths must match")
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        finite = np.isfinite(feats).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise NonFiniteError(
                f"features hold NaN or Inf in {bad.size} row(s): {bad[:20].tolist()}", rows=bad[:20].tolist()
            )
        object.__setattr__(self, "creator", creator)
        object.__setattr__(self, "category", category)
        object.__setattr__(self, "features", feats)

    def __len__(self) -> int:
        return int(self.creator.shape[0])

    @property
    def n_items(self) -> int:
        return len(self)

    @property
    def n_features(self) -> int:
        return int(self.features.shape[1])

    @property
    def label(self) -> str:
        """Human label for reports: the source, or a loud SYNTHETIC marker."""
        return f"{SYNTHETIC_LABEL}: {self.source}" if self.synthetic else self.source

    def take(self, rows: np.ndarray) -> ItemMetadata:
        """Metadata of ``rows`` (int indexes [m] into this table, e.g. ``split.item_ids``), in that order."""
        rows = np.asarray(rows)
        if rows.dtype.kind not in "iu" or rows.ndim != 1:
            raise InvalidInputError(f"rows must be a 1-D integer array, got dtype {rows.dtype}, shape {rows.shape}")
        if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= len(self)):
            raise InvalidInputError(f"rows must lie in [0, {len(self)}), got range [{rows.min()}, {rows.max()}]")
        return ItemMetadata(
            self.creator[rows], self.category[rows], self.features[rows], self.source, self.synthetic, dict(self.meta)
        )


def replay_synthetic_latents(
    n_items: int = 5000, n_clusters: int = 25, popularity_exponent: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Replay the item latents of :func:`reelpack.data.synthetic_interactions` with the same parameters.

    Returns:
        (cluster_of int64 [n_items], pop float64 [n_items]): the clusters (equal to
        ``inter.meta["item_cluster"]``) and the unnormalised Zipf popularity weights.
    """
    for name, v in (("n_items", n_items), ("n_clusters", n_clusters)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) <= 0:
            raise InvalidInputError(f"{name} must be a positive integer, got {v!r}")
    if n_clusters > n_items:
        raise InvalidInputError(f"n_clusters ({n_clusters}) cannot exceed n_items ({n_items})")
    rng = np.random.default_rng(seed)
    # Keep these three draws identical to synthetic_interactions (same order, same calls).
    cluster_of = rng.integers(0, n_clusters, size=n_items)
    cluster_of[rng.permutation(n_items)[:n_clusters]] = np.arange(n_clusters)
    pop = (1.0 + rng.permutation(n_items)) ** -popularity_exponent
    return cluster_of.astype(np.int64), pop.astype(np.float64)


def _check_prob(name: str, v: float) -> float:
    v = float(v)
    if not 0.0 <= v <= 1.0:
        raise InvalidInputError(f"{name} must lie in [0, 1], got {v}")
    return v


def synthetic_item_metadata(
    n_items: int = 5000,
    n_clusters: int = 25,
    popularity_exponent: float = 1.0,
    seed: int = 0,
    *,
    n_categories: int | None = None,
    category_noise: float = 0.25,
    creators_per_cluster: int = 8,
    creator_noise: float = 0.1,
    n_features: int = 4,
    feature_noise: float = 1.0,
    latent_dim: int = 8,
    metadata_seed: int = 0,
    interactions: Interactions | None = None,
) -> ItemMetadata:
    """SYNTHETIC item metadata for ``synthetic_interactions(n_items=, n_clusters=, popularity_exponent=, seed=)``.

    Pass the same four parameters as to ``synthetic_interactions`` (the defaults
    match its defaults); see the module docstring for the model. Rows are raw item
    ids ``0..n_items-1`` (take ``split.item_ids`` rows for a split's catalog).

    Args:
        n_categories: category labels (default ``n_clusters``).
        category_noise: probability an item's category is uniformly random.
        creators_per_cluster: creators per cluster (``n_clusters * creators_per_cluster`` creators).
        creator_noise: probability an item's creator comes from the whole pool.
        n_features: numeric features (0 allowed); feature 0 is noisy log-popularity.
        feature_noise: standard deviation of the feature noise (features have unit-scale signal).
        latent_dim: dimension of the per-cluster latent vectors behind the features.
        metadata_seed: seeds the metadata noise (together with ``seed``).
        interactions: if given, the replayed clusters must equal ``interactions.meta["item_cluster"]``
            (catches parameters that do not match the interactions).

    Returns:
        :class:`ItemMetadata` with ``synthetic=True``; ``meta`` holds ``item_cluster`` and ``pop``.

    Raises:
        InvalidInputError: bad parameters, or ``interactions`` not generated with these parameters.
    """
    cluster_of, pop = replay_synthetic_latents(n_items, n_clusters, popularity_exponent, seed)
    if interactions is not None:
        ref = interactions.meta.get("item_cluster") if isinstance(interactions, Interactions) else None
        if ref is None or np.shape(ref) != cluster_of.shape or not np.array_equal(ref, cluster_of):
            raise InvalidInputError(
                "interactions were not generated by synthetic_interactions with these n_items, n_clusters, seed "
                "(replayed item clusters differ from interactions.meta['item_cluster'])"
            )
    n_categories = n_clusters if n_categories is None else n_categories
    for name, v, lo in (
        ("n_categories", n_categories, 1),
        ("creators_per_cluster", creators_per_cluster, 1),
        ("n_features", n_features, 0),
        ("latent_dim", latent_dim, 1),
        ("metadata_seed", metadata_seed, 0),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < lo:
            raise InvalidInputError(f"{name} must be an integer >= {lo}, got {v!r}")
    category_noise = _check_prob("category_noise", category_noise)
    creator_noise = _check_prob("creator_noise", creator_noise)
    feature_noise = float(feature_noise)
    if not np.isfinite(feature_noise) or feature_noise < 0:
        raise InvalidInputError(f"feature_noise must be finite and >= 0, got {feature_noise}")
    if n_items == 0:
        raise EmptyInputError("n_items must be positive")

    rng = np.random.default_rng([int(seed), int(metadata_seed), 0x6D657461])  # "meta"
    n = int(n_items)
    # category: fixed random map cluster -> category, plus label noise
    cat_of_cluster = rng.permutation(max(n_clusters, n_categories))[:n_clusters] % n_categories
    category = cat_of_cluster[cluster_of]
    flip = rng.random(n) < category_noise
    category[flip] = rng.integers(0, n_categories, size=int(flip.sum()))
    # creator: a finer clustering nested in clusters, Zipf-like output per creator
    n_creators = n_clusters * creators_per_cluster
    w = 1.0 / (1.0 + np.arange(creators_per_cluster))
    local = rng.choice(creators_per_cluster, size=n, p=w / w.sum())
    creator_raw = cluster_of * creators_per_cluster + local
    cross = rng.random(n) < creator_noise
    creator_raw[cross] = rng.integers(0, n_creators, size=int(cross.sum()))
    creator = rng.permutation(n_creators)[creator_raw]
    # numeric features
    z = rng.standard_normal((n_clusters, latent_dim))
    feats = np.zeros((n, n_features), np.float64)
    if n_features:
        lp = np.log(pop)
        feats[:, 0] = (lp - lp.mean()) / (lp.std() + 1e-12)
        if n_features > 1:
            proj = rng.standard_normal((latent_dim, n_features - 1)) / np.sqrt(latent_dim)
            feats[:, 1:] = z[cluster_of] @ proj
        feats += feature_noise * rng.standard_normal((n, n_features))
    params = dict(
        n_items=n_items,
        n_clusters=n_clusters,
        popularity_exponent=popularity_exponent,
        seed=seed,
        n_categories=n_categories,
        category_noise=category_noise,
        creators_per_cluster=creators_per_cluster,
        creator_noise=creator_noise,
        n_features=n_features,
        feature_noise=feature_noise,
        latent_dim=latent_dim,
        metadata_seed=metadata_seed,
    )
    desc = "synthetic_item_metadata(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
    digest = hashlib.sha256(b"reelpack-synthetic-metadata-v1" + json.dumps(params, sort_keys=True).encode())
    return ItemMetadata(
        creator=creator.astype(np.int64),
        category=category.astype(np.int64),
        features=feats.astype(np.float32),
        source=desc,
        synthetic=True,
        meta={
            "item_cluster": cluster_of,
            "pop": pop,
            "n_creators": n_creators,
            "n_categories": int(n_categories),
            "hash": digest.hexdigest(),
        },
    )
