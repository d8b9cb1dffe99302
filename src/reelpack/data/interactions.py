"""Implicit-feedback interactions: loading, the synthetic default, and the train/test split.

File format (as ``amazon-book/interactions.txt``): one user a line,
``user_id item_id item_id ...``, non-negative integers separated by single
spaces or tabs; a line may hold the user id alone; blank lines are skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reelpack.errors import DataFormatError, DataNotFoundError, DimensionMismatchError, InvalidInputError

__all__ = [
    "Interactions",
    "Split",
    "DATA_ENV_VAR",
    "load_interactions",
    "resolve_data_path",
    "synthetic_interactions",
    "train_test_split",
    "check_validation_split",
]

DATA_ENV_VAR = "REELPACK_DATA"
SYNTHETIC_LABEL = "SYNTHETIC catalog (generated, not real data)"


@dataclass(frozen=True)
class Interactions:
    """Per-user item lists in CSR form, with raw (file) ids.

    Attributes:
        user_ids: int64 [n_users], raw user id of each row.
        indptr: int64 [n_users + 1], row offsets into ``items``.
        items: int64 [nnz], raw item ids, unique within a user, in file order.
        source: the file path, or a description of the synthetic generator.
        data_hash: sha256 hex of the file bytes (or of the generator parameters).
        synthetic: True for generated data; every report says so.
    """

    user_ids: np.ndarray
    indptr: np.ndarray
    items: np.ndarray
    source: str
    data_hash: str
    synthetic: bool = False
    meta: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def n_interactions(self) -> int:
        return int(self.items.shape[0])

    @property
    def label(self) -> str:
        """Human label for reports: the path, or a loud SYNTHETIC marker."""
        return f"{SYNTHETIC_LABEL}: {self.source}" if self.synthetic else self.source


def resolve_data_path(path: str | os.PathLike | None) -> Path | None:
    """Return ``path``, else ``$REELPACK_DATA``, else ``None`` (meaning: the synthetic default)."""
    if path is None or str(path) == "":
        env = os.environ.get(DATA_ENV_VAR, "")
        if not env:
            return None
        path = env
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataNotFoundError(f"interactions file not found: {p}")
    return p


def load_interactions(path: str | os.PathLike | None = None) -> Interactions:
    """Load an interactions file by path (or ``$REELPACK_DATA``).

    Raises:
        DataNotFoundError: neither a path nor ``$REELPACK_DATA`` names an existing file.
        DataFormatError: a line is malformed; the message names the file and 1-based line number.
    """
    p = resolve_data_path(path)
    if p is None:
        raise DataNotFoundError(f"no interactions file given and ${DATA_ENV_VAR} is not set")
    raw = p.read_bytes()
    data_hash = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataFormatError(f"{p}:{line}: non-ASCII byte in interactions file", str(p), line) from None
    user_ids: list[int] = []
    counts: list[int] = []
    chunks: list[np.ndarray] = []
    seen_users: set[int] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            values = np.array([int(t) for t in tokens], dtype=np.int64)
        except ValueError:
            bad = next(t for t in tokens if not t.lstrip("-").isdigit())
            raise DataFormatError(f"{p}:{lineno}: {bad!r} is not an integer id", str(p), lineno) from None
        if (values < 0).any():
            raise DataFormatError(f"{p}:{lineno}: ids must be non-negative", str(p), lineno)
        if values.max() >= 2**31:
            raise DataFormatError(f"{p}:{lineno}: id {int(values.max())} exceeds 2**31 - 1", str(p), lineno)
        uid = int(values[0])
        if uid in seen_users:
            raise DataFormatError(f"{p}:{lineno}: user {uid} appears on more than one line", str(p), lineno)
        seen_users.add(uid)
        items = values[1:]
        if items.size:
            _, first = np.unique(items, return_index=True)
            items = items[np.sort(first)]
        user_ids.append(uid)
        counts.append(items.size)
        chunks.append(items)
    if not user_ids:
        raise DataFormatError(f"{p}: file holds no users", str(p), None)
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    items_all = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    if items_all.size == 0:
        raise DataFormatError(f"{p}: file holds no interactions", str(p), None)
    return Interactions(np.array(user_ids, np.int64), indptr, items_all, str(p), data_hash, synthetic=False)


def synthetic_interactions(
    n_users: int = 6000,
    n_items: int = 5000,
    n_clusters: int = 25,
    mean_items_per_user: float = 14.0,
    in_cluster_share: float = 0.85,
    popularity_exponent: float = 1.0,
    seed: int = 0,
) -> Interactions:
    """Generate a clustered catalog with popularity skew (the embedded default, labelled SYNTHETIC).

    Items belong to ``n_clusters`` clusters and have Zipf-like popularity
    (weight ~ rank^-``popularity_exponent`` within the catalog). Each user has
    one or two home clusters; a share ``in_cluster_share`` of their items is
    drawn from home clusters by popularity, the rest from the whole catalog by
    popularity, so that a model that learns clusters gets a meaningful Recall.
    """
    for name, v in (("n_users", n_users), ("n_items", n_items), ("n_clusters", n_clusters)):
        if int(v) <= 0:
            raise InvalidInputError(f"{name} must be positive, got {v}")
    if n_clusters > n_items:
        raise InvalidInputError(f"n_clusters ({n_clusters}) cannot exceed n_items ({n_items})")
    if not 0.0 <= in_cluster_share <= 1.0:
        raise InvalidInputError(f"in_cluster_share must lie in [0, 1], got {in_cluster_share}")
    if mean_items_per_user < 2:
        raise InvalidInputError(f"mean_items_per_user must be >= 2, got {mean_items_per_user}")
    params = dict(
        n_users=n_users,
        n_items=n_items,
        n_clusters=n_clusters,
        mean_items_per_user=mean_items_per_user,
        in_cluster_share=in_cluster_share,
        popularity_exponent=popularity_exponent,
        seed=seed,
    )
    rng = np.random.default_rng(seed)
    cluster_of = rng.integers(0, n_clusters, size=n_items)
    cluster_of[rng.permutation(n_items)[:n_clusters]] = np.arange(n_clusters)  # no empty cluster
    pop = (1.0 + rng.permutation(n_items)) ** -popularity_exponent
    global_p = pop / pop.sum()
    members = [np.flatnonzero(cluster_of == c) for c in range(n_clusters)]
    member_p = [pop[m] / pop[m].sum() for m in members]
    sizes = np.maximum(2, rng.poisson(mean_items_per_user - 2, size=n_users) + 2)
    home = rng.integers(0, n_clusters, size=(n_users, 2))
    two_homes = rng.random(n_users) < 0.4
    chunks = []
    for u in range(n_users):
        n = int(sizes[u])
        n_in = int(rng.binomial(n, in_cluster_share))
        homes = home[u, : 2 if two_homes[u] else 1]
        which = rng.integers(0, len(homes), size=n_in)
        picks = [
            rng.choice(members[homes[h]], size=int((which == h).sum()), p=member_p[homes[h]]) for h in range(len(homes))
        ]
        picks.append(rng.choice(n_items, size=n - n_in, p=global_p))
        chunks.append(np.unique(np.concatenate(picks)))
        rng.shuffle(chunks[-1])
    counts = np.array([c.size for c in chunks])
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    blob = json.dumps(params, sort_keys=True).encode()
    desc = "synthetic(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
    return Interactions(
        np.arange(n_users, dtype=np.int64),
        indptr,
        np.concatenate(chunks).astype(np.int64),
        desc,
        hashlib.sha256(b"reelpack-synthetic-v1" + blob).hexdigest(),
        synthetic=True,
        meta={"item_cluster": cluster_of},
    )


@dataclass(frozen=True)
class Split:
    """A per-user train/test split over a catalog of the items seen in train.

    Items are re-indexed 0..n_items-1 (``item_ids[i]`` is the raw id of index i);
    users keep their row order (``user_ids[u]`` is the raw id of row u).

    Attributes:
        train_indptr, train_items: CSR int64 / int32 of each user's train item indexes.
        test_indptr, test_items: CSR of held-out item indexes (items absent from the
            train catalog are dropped; ``n_test_dropped`` counts them).
        item_counts: int64 [n_items], train interactions per item (popularity).
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    train_indptr: np.ndarray
    train_items: np.ndarray
    test_indptr: np.ndarray
    test_items: np.ndarray
    item_counts: np.ndarray
    n_test_dropped: int
    source: str
    data_hash: str
    synthetic: bool
    seed: int
    test_fraction: float
    #: > 0 when this split is the *validation* split carved from another split's train part
    #: (:func:`validation_split`): ``train_*`` then hold the fit part, ``test_*`` the validation items.
    validation_fraction: float = 0.0
    validation_seed: int = 0

    @property
    def is_validation(self) -> bool:
        """True for a split made by :func:`validation_split` (its ``test_*`` are validation items)."""
        return self.validation_fraction > 0.0

    @property
    def n_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def label(self) -> str:
        return f"{SYNTHETIC_LABEL}: {self.source}" if self.synthetic else self.source

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(user index int64 [nnz], item index int64 [nnz]) of every train interaction."""
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(self.train_indptr))
        return users, self.train_items.astype(np.int64)

    def eval_users(self) -> np.ndarray:
        """int64 indexes of users with at least one test item (the users metrics average over)."""
        return np.flatnonzero(np.diff(self.test_indptr) > 0)


def train_test_split(inter: Interactions, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Split each user's items at random: ``round(test_fraction * n)`` to test (at least 1 when n >= 2).

    Deterministic for a given ``seed``; users with one item keep it in train.
    The catalog is every item seen in train.
    """
    if not 0.0 < test_fraction < 1.0:
        raise InvalidInputError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    counts = np.diff(inter.indptr)
    n_users = inter.n_users
    user_of = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    rng = np.random.default_rng(seed)
    keys = rng.random(inter.n_interactions)
    order = np.lexsort((keys, user_of))  # group by user, random order within user
    rank = np.empty(inter.n_interactions, np.int64)
    rank[order] = np.arange(inter.n_interactions) - np.repeat(inter.indptr[:-1], counts)
    n_test = np.where(counts >= 2, np.maximum(1, np.rint(test_fraction * counts)), 0).astype(np.int64)
    n_test = np.minimum(n_test, np.maximum(counts - 1, 0))
    is_test = rank < n_test[user_of]
    # Keep file order within each user for both parts.
    train_users, train_raw = user_of[~is_test], inter.items[~is_test]
    test_users, test_raw = user_of[is_test], inter.items[is_test]
    item_ids, train_idx = np.unique(train_raw, return_inverse=True)
    if item_ids.size == 0:
        raise InvalidInputError("the train split holds no items")
    pos = np.searchsorted(item_ids, test_raw)
    pos_c = np.minimum(pos, item_ids.size - 1)
    known = item_ids[pos_c] == test_raw
    test_users, test_idx = test_users[known], pos_c[known]
    train_indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(train_users, minlength=n_users), out=train_indptr[1:])
    test_indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(test_users, minlength=n_users), out=test_indptr[1:])
    return Split(
        user_ids=inter.user_ids.copy(),
        item_ids=item_ids.astype(np.int64),
        train_indptr=train_indptr,
        train_items=train_idx.astype(np.int32),
        test_indptr=test_indptr,
        test_items=test_idx.astype(np.int32),
        item_counts=np.bincount(train_idx, minlength=item_ids.size).astype(np.int64),
        n_test_dropped=int((~known).sum()),
        source=inter.source,
        data_hash=inter.data_hash,
        synthetic=inter.synthetic,
        seed=int(seed),
        test_fraction=float(test_fraction),
    )


#: users with validation items below which :func:`validation_split` refuses to decide anything
MIN_VALIDATION_USERS = 200


def validation_split(
    split: Split, fraction: float = 0.1, seed: int = 0, min_users: int = MIN_VALIDATION_USERS
) -> Split:
    """Carve a validation split out of ``split``'s train interactions only; the test part is never read.

    Each user with at least 3 train items moves ``round(fraction * n)`` of them (at least 1) to
    validation; users with fewer keep all. The result has the same users and the same item catalog
    (indexes unchanged, so codecs and embeddings line up with ``split``):

    * ``train_*``: the *fit* part (train the model on it; exclude it when ranking for validation);
    * ``test_*``: the validation items (choose codecs, parameters and fine-tuning on them);
    * ``item_counts``: popularity over the fit part.

    The report then evaluates the same model on ``split`` (exclusions: all of ``split``'s train
    items; positives: its test items), once.

    Raises:
        InvalidInputError: ``split`` is itself a validation split, or ``fraction`` is not in (0, 0.5].
        ValidationTooSmallError: fewer than ``min_users`` users receive validation items.
    """
    from reelpack.errors import ValidationTooSmallError

    if not isinstance(split, Split):
        raise InvalidInputError(f"split must be a reelpack.data.Split, got {type(split).__name__}")
    if split.is_validation:
        raise InvalidInputError("split is already a validation split; carve validation from the train/test split")
    if not 0.0 < float(fraction) <= 0.5:
        raise InvalidInputError(f"validation fraction must lie in (0, 0.5], got {fraction}")
    counts = np.diff(split.train_indptr)
    n_users = split.n_users
    nnz = int(split.train_items.shape[0])
    user_of = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    rng = np.random.default_rng([int(seed), 0x5A11D])
    keys = rng.random(nnz)
    order = np.lexsort((keys, user_of))
    rank = np.empty(nnz, np.int64)
    rank[order] = np.arange(nnz) - np.repeat(split.train_indptr[:-1], counts)
    n_val = np.where(counts >= 3, np.maximum(1, np.rint(fraction * counts)), 0).astype(np.int64)
    is_val = rank < n_val[user_of]
    n_val_users = int((n_val > 0).sum())
    if n_val_users < int(min_users):
        raise ValidationTooSmallError(
            f"the validation split holds {n_val_users} users with validation items; at least {int(min_users)} are "
            f"needed to choose between codecs (users need 3 or more train items; use more users or data)",
            users=n_val_users,
            needed=int(min_users),
        )
    fit_items = split.train_items[~is_val]
    val_items = split.train_items[is_val]
    fit_indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(user_of[~is_val], minlength=n_users), out=fit_indptr[1:])
    val_indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(user_of[is_val], minlength=n_users), out=val_indptr[1:])
    return Split(
        user_ids=split.user_ids,
        item_ids=split.item_ids,
        train_indptr=fit_indptr,
        train_items=np.ascontiguousarray(fit_items, np.int32),
        test_indptr=val_indptr,
        test_items=np.ascontiguousarray(val_items, np.int32),
        item_counts=np.bincount(fit_items, minlength=split.n_items).astype(np.int64),
        n_test_dropped=0,
        source=split.source,
        data_hash=split.data_hash,
        synthetic=split.synthetic,
        seed=split.seed,
        test_fraction=split.test_fraction,
        validation_fraction=float(fraction),
        validation_seed=int(seed),
    )


def check_validation_split(val_split: object, split: Split | None = None, *, refusal: str | None = None) -> Split:
    """Return ``val_split`` when it is a validation split (made by :func:`validation_split`), carved from ``split``.

    Args:
        val_split: the split to check: its ``train_*`` the fit part, its ``test_*`` the validation items.
        split: the train/test split ``val_split`` must have been carved from (same data hash, user and item ids,
            and fit + validation items exactly ``split``'s train items); None checks ``val_split`` alone.
        refusal: the message when ``val_split`` is a train/test split (default: says so and how to carve one).

    Returns:
        ``val_split``, typed as a :class:`Split`.

    Raises:
        InvalidInputError: ``val_split`` is not a :class:`Split`, not a validation split, or not carved from
            ``split`` (other data or ids, or fit + validation items that are not ``split``'s train items).
        DimensionMismatchError: ``val_split`` and ``split`` have other user or item counts.
    """
    if not isinstance(val_split, Split):
        raise InvalidInputError(f"val_split must be a reelpack.data.Split, got {type(val_split).__name__}")
    if not val_split.is_validation:
        raise InvalidInputError(
            refusal
            or "val_split is a train/test split, not a validation split: choosing on it would read its test items; "
            "carve one with reelpack.data.validation_split(split, fraction, seed)"
        )
    if split is None:
        return val_split
    if val_split.n_users != split.n_users or val_split.n_items != split.n_items:
        raise DimensionMismatchError(
            f"val_split has {val_split.n_users} users x {val_split.n_items} items, the split "
            f"{split.n_users} x {split.n_items}; carve it from this split with reelpack.data.validation_split"
        )
    if (
        val_split.data_hash != split.data_hash
        or not np.array_equal(val_split.user_ids, split.user_ids)
        or not np.array_equal(val_split.item_ids, split.item_ids)
    ):
        raise InvalidInputError(
            "val_split was carved from other data (its data hash or user/item ids differ from the split's)"
        )
    n_fit, n_val, n_train = (np.diff(p) for p in (val_split.train_indptr, val_split.test_indptr, split.train_indptr))
    same = np.array_equal(n_fit + n_val, n_train)
    if same:
        def keys(indptr: np.ndarray, items: np.ndarray) -> np.ndarray:
            owner = np.repeat(np.arange(split.n_users, dtype=np.int64), np.diff(indptr))
            return owner * split.n_items + items.astype(np.int64)

        carved = np.concatenate([keys(val_split.train_indptr, val_split.train_items),
                                 keys(val_split.test_indptr, val_split.test_items)])  # fmt: skip
        same = np.array_equal(np.sort(carved), np.sort(keys(split.train_indptr, split.train_items)))
    if not same:
        raise InvalidInputError(
            "val_split's fit and validation items are not the split's train items (it was carved from another "
            "split, or holds test items); carve it with reelpack.data.validation_split(split, fraction, seed)"
        )
    return val_split


#: largest popularity exponent :func:`popularity_weights` accepts (beyond it one item takes nearly all the weight)
MAX_POPULARITY_BETA = 4.0


def popularity_weights(item_counts: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """Codec training weights from item popularity: ``(item_counts + 1) ** beta``, float64 [n_items].

    ``item_counts`` is int [n_items] training interactions per item (:attr:`Split.item_counts`: on a validation
    split the fit part only, so the weights never see validation or test items). ``beta = 0`` gives uniform
    weights; ``beta = 1`` weights an item by its interactions (+1, so unseen items keep a little weight). Passed to
    :meth:`reelpack.codecs.Codec.fit` (``weights=``), the codec spends its error where users' positives are:
    ``reelpack tune`` chooses ``beta`` on validation with the codec.

    Raises:
        InvalidInputError: counts not 1-D, negative or not finite; ``beta`` outside [0, MAX_POPULARITY_BETA].
    """
    try:
        b = float(beta)
        counts = np.asarray(item_counts, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError("item_counts must be an integer array and beta a number") from None
    if not 0.0 <= b <= MAX_POPULARITY_BETA:
        raise InvalidInputError(f"popularity beta must lie in [0, {MAX_POPULARITY_BETA}], got {beta}")
    if counts.ndim != 1 or counts.size == 0:
        raise InvalidInputError(f"item_counts must be a non-empty 1-D array, got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise InvalidInputError("item_counts must be finite and >= 0")
    return (counts + 1.0) ** b
