"""Exposure weights: how often each item ranks in the users' float32 top-K, as codec training weights.

A codec fitted with uniform rows spends its error evenly over the catalog; the ranking only needs the items some
user's query can reach. :func:`exposure_counts` ranks the catalog for each user with the float32 embeddings and
counts, per item, the users whose top ``k`` holds it; :func:`exposure_weights` turns the counts into
``(counts + 1) ** beta``, passed to :meth:`reelpack.codecs.Codec.fit` (``weights=``) like
:func:`reelpack.data.popularity_weights`. Only the embeddings are read: no interaction, validation or test item.

``reelpack tune --exposure-betas 1`` fits candidates with these weights as ``"spec@expoB"``, chosen only where they
win on validation. :data:`DEFAULT_EXPOSURE_K` (1000) was chosen on validation (amazon-book, 512-d ``rq8-r-n``, one
seed, 10,000 validation users, exposure counted on the other users: K = 50, 200 and 1000 gave relative Recall@50
0.894, 0.897 and 0.907). On every validation user and 3 seeds, ``@expo1`` beat popularity weights by 0.009 at 512-d
8 B and tied them at 64-d and 128-d (BENCHMARKS.md 1.6, "Stop 28"); K = 3000 lost to K = 1000 by 0.007 on the
same users and seeds (and beta = 1.5 lost on one seed; "Stop 29").

>>> import numpy as np
>>> U = np.array([[1.0, 0.0], [0.9, 0.1]], np.float32)
>>> X = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]], np.float32)
>>> exposure_counts(U, X, k=1).tolist()
[2, 0, 0]
>>> exposure_weights(U, X, k=2, beta=1.0).tolist()
[3.0, 1.0, 3.0]
"""

from __future__ import annotations

import numpy as np

from reelpack.data.interactions import MAX_POPULARITY_BETA
from reelpack.errors import InvalidInputError
from reelpack.util.validate import as_float_matrix

__all__ = ["DEFAULT_EXPOSURE_K", "exposure_counts", "exposure_weights", "weights_from_exposure"]

#: top-K of each user that counts as exposure (chosen on validation, see the module docstring)
DEFAULT_EXPOSURE_K = 1000
#: scores held at once while ranking (float32 entries: users per batch x items)
_BLOCK_ENTRIES = 1 << 24


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
        raise InvalidInputError(f"exposure k must be a positive integer, got {k!r}")
    return int(k)


def exposure_counts(user_emb: np.ndarray, item_emb: np.ndarray, k: int = DEFAULT_EXPOSURE_K) -> np.ndarray:
    """Per item, the number of users whose float32 top ``k`` by inner product holds it: int64 [n_items].

    Args:
        user_emb: float [n_users, d], the query (user tower) vectors.
        item_emb: float [n_items, d], the catalog.
        k: top-K per user; ``k >= n_items`` counts every item for every user. Ties at the K-th score are broken
            arbitrarily (each user still adds exactly ``min(k, n_items)`` counts).

    Raises:
        DTypeError, DimensionMismatchError, EmptyInputError, NonFiniteError, InvalidInputError: bad embeddings
            (:func:`reelpack.util.validate.as_float_matrix`); ``k`` not a positive integer.
    """
    k = _check_k(k)
    X = as_float_matrix(item_emb, "item_emb")
    U = as_float_matrix(user_emb, "user_emb", dim=X.shape[1])
    n_items = X.shape[0]
    counts = np.zeros(n_items, np.int64)
    if k >= n_items:
        counts[:] = U.shape[0]
        return counts
    batch = max(1, _BLOCK_ENTRIES // n_items)
    XT = np.ascontiguousarray(X.T)
    for start in range(0, U.shape[0], batch):
        scores = U[start : start + batch] @ XT
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        counts += np.bincount(top.ravel(), minlength=n_items)
    return counts


def exposure_weights(
    user_emb: np.ndarray, item_emb: np.ndarray, k: int = DEFAULT_EXPOSURE_K, beta: float = 1.0
) -> np.ndarray:
    """Codec training weights ``(exposure_counts(user_emb, item_emb, k) + 1) ** beta``: float64 [n_items].

    ``beta = 0`` gives uniform weights; the ``+ 1`` keeps a little weight on items no user reaches.

    Raises:
        InvalidInputError: ``beta`` outside [0, MAX_POPULARITY_BETA], and everything :func:`exposure_counts` raises.
    """
    return weights_from_exposure(exposure_counts(user_emb, item_emb, k), beta)


def weights_from_exposure(counts: np.ndarray, beta: float) -> np.ndarray:
    """``(counts + 1) ** beta``, float64 [n_items], from :func:`exposure_counts` int [n_items]: the weights of
    :func:`exposure_weights` when the counts serve several exponents.

    Raises:
        InvalidInputError: ``beta`` outside [0, MAX_POPULARITY_BETA]; counts not a 1-D array of finite numbers >= 0.
    """
    try:
        b = float(beta)
        c = np.asarray(counts, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"exposure beta must be a number and counts an array, got {beta!r}") from None
    if not 0.0 <= b <= MAX_POPULARITY_BETA:
        raise InvalidInputError(f"exposure beta must lie in [0, {MAX_POPULARITY_BETA}], got {beta}")
    if c.ndim != 1 or not np.all(np.isfinite(c)) or np.any(c < 0):
        raise InvalidInputError("exposure counts must be a 1-D array of finite numbers >= 0")
    return (c + 1.0) ** b
