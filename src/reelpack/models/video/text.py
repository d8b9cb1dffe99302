"""Title embeddings: a hashing sentence encoder and a linear alignment into the frame space.

The issue asks for title embeddings "from a small sentence encoder installed as
a package (no download at run time)". :class:`HashingTitleEncoder` is that
stand-in: scikit-learn's :class:`~sklearn.feature_extraction.text.HashingVectorizer`
(word unigrams + bigrams, L2-normalised, no vocabulary, no model file) followed by
a fixed, seeded Gaussian random projection to ``dim`` dimensions. Titles that
share words get a high cosine; it knows no synonyms (a real deployment would use
a sentence-transformer or the text tower of a text-image model such as CLIP).

Title and frame embeddings then live in different spaces. :func:`align_titles`
fits a ridge least-squares map from title space to frame space on
(title embedding, mean frame embedding) pairs of the catalog's videos. Real
data does not say which frames are relevant, so the target is the mean of *all*
valid frames; both sides are centred first, so the catalog-wide mean frame
(intro, logo and black frames that every video shares) is not part of the
aligned title. A real text-image model would make this step unnecessary; the
ridge map is the offline stand-in, documented as such.

The projection is generated per hashed feature column from a counter-based hash
(SplitMix64 + Box-Muller), so it never materialises the ``n_features x dim``
matrix and is identical across machines for a given ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reelpack.util.validate import as_float_matrix
from reelpack.errors import DimensionMismatchError, EmptyInputError, InvalidInputError

__all__ = ["HashingTitleEncoder", "TitleAlignment", "align_titles"]

_PROJ_CHUNK_ELEMS = 1 << 20  # projection entries generated at a time


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic, vectorised)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _hashed_gaussian(cols: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Standard normal float64 [len(cols), dim]: row j depends only on (seed, cols[j]) (Box-Muller)."""
    cols = cols.astype(np.uint64)[:, None]
    k = np.arange(dim, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        base = (cols * np.uint64(2 * dim) + np.uint64(2) * k) ^ _splitmix64(np.array([seed], np.uint64))
        h1 = _splitmix64(base)
        h2 = _splitmix64(base + np.uint64(1))
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53  # (0, 1)
    u2 = (h2 >> np.uint64(11)).astype(np.float64) / 2.0**53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _l2_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm; rows with norm <= eps become exact zeros."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out = np.where(norms > eps, x / np.maximum(norms, eps), 0.0)
    return out


def _check_int(name: str, v: object, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer, got {v!r}")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise InvalidInputError(f"{name} must be {rng}, got {v}")
    return v


class HashingTitleEncoder:
    """Deterministic bag-of-n-grams title encoder (the offline "small sentence encoder").

    ``encode`` lower-cases, tokenises (scikit-learn's default pattern: runs of >= 2
    word characters, so ``"c07_w12"`` is one token), hashes word unigrams and
    bigrams into ``n_features`` signed buckets (L2-normalised), then projects with a
    fixed Gaussian matrix (entries N(0, 1/dim), generated per bucket from ``seed``)
    and L2-normalises. Empty or missing titles (``""`` or ``None``) encode to zeros.

    Args:
        dim: output dimension (>= 1).
        n_features: hashing buckets (>= 16).
        seed: seeds the random projection (the hashing itself is seedless).
    """

    def __init__(self, dim: int = 128, n_features: int = 2**18, seed: int = 0) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer  # optional dependency, used only here

        self.dim = _check_int("dim", dim, 1)
        self.n_features = _check_int("n_features", n_features, 16, 2**31 - 1)
        self.seed = _check_int("seed", seed, 0, 2**63 - 1)
        self._hv = HashingVectorizer(
            n_features=self.n_features, ngram_range=(1, 2), norm="l2", alternate_sign=True, dtype=np.float64
        )

    def __repr__(self) -> str:
        return f"HashingTitleEncoder(dim={self.dim}, n_features={self.n_features}, seed={self.seed})"

    def encode(self, titles: Sequence[str | None]) -> np.ndarray:
        """Encode titles -> float32 [n, dim], unit rows (zero rows for empty/missing titles).

        Raises:
            InvalidInputError: ``titles`` is a bare string or holds something other than str/None.
        """
        from scipy.sparse import csr_matrix

        if isinstance(titles, (str, bytes)):
            raise InvalidInputError("titles must be a sequence of strings, got a single string")
        titles = list(titles)
        bad = [i for i, t in enumerate(titles) if t is not None and not isinstance(t, str)]
        if bad:
            raise InvalidInputError(
                f"titles must be str (or None for missing); row {bad[0]} is {type(titles[bad[0]]).__name__}"
            )
        n = len(titles)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        x = self._hv.transform(["" if t is None else t for t in titles]).tocsr()
        x.sum_duplicates()
        cols, inv = np.unique(x.indices, return_inverse=True)
        if cols.size == 0:
            return np.zeros((n, self.dim), np.float32)
        xs = csr_matrix((x.data, inv.ravel(), x.indptr), shape=(n, cols.size)).tocsc()
        y = np.zeros((n, self.dim), np.float64)
        step = max(1, _PROJ_CHUNK_ELEMS // self.dim)  # bounds the projection temporaries (~ 8 x 8 MB)
        for s in range(0, cols.size, step):
            proj = _hashed_gaussian(cols[s : s + step], self.dim, self.seed) / np.sqrt(self.dim)
            y += xs[:, s : s + step] @ proj
        return _l2_rows(y).astype(np.float32)


@dataclass(frozen=True)
class TitleAlignment:
    """A fitted linear map title space -> frame space (see :func:`align_titles`).

    Attributes:
        weight: float32 [d_title, d_frame], the ridge solution on centred pairs.
        title_mean: float32 [d_title], mean title embedding of the fitting rows (subtracted first).
        frame_mean: float32 [d_frame], mean target (mean-frame) of the fitting rows; *not* added back
            by :meth:`apply` (it is the part every video shares).
        ridge: the ridge strength used.
        n_fit: number of (title, frames) pairs the map was fitted on.
    """

    weight: np.ndarray
    title_mean: np.ndarray
    frame_mean: np.ndarray
    ridge: float
    n_fit: int

    @property
    def d_title(self) -> int:
        return int(self.weight.shape[0])

    @property
    def d_frame(self) -> int:
        return int(self.weight.shape[1])

    def predict(self, title_emb: object) -> np.ndarray:
        """Raw (un-normalised) centred prediction ``(t - title_mean) @ weight`` -> float32 [n, d_frame].

        All-zero (missing) title rows give zero rows.
        """
        t = as_float_matrix(title_emb, "title_emb", dim=self.d_title, allow_empty=True)
        missing = ~np.any(t != 0, axis=1)
        y = (t.astype(np.float64) - self.title_mean) @ self.weight.astype(np.float64)
        y[missing] = 0.0
        return y.astype(np.float32)

    def apply(self, title_emb: object) -> np.ndarray:
        """Aligned title embeddings float32 [n, d_frame], L2-normalised; missing (all-zero) titles -> zeros.

        Raises:
            DimensionMismatchError: ``title_emb`` is not [n, d_title].
            NonFiniteError: ``title_emb`` holds NaN/Inf.
        """
        return _l2_rows(self.predict(title_emb).astype(np.float64)).astype(np.float32)


def align_titles(title_emb: object, frame_mean: object, ridge: float = 1.0) -> TitleAlignment:
    """Fit a ridge least-squares map title space -> frame space on (title, mean frame) pairs.

    Rows whose title is missing (all zeros) or whose video has no frames (mean frame
    all zeros) are left out of the fit. Both sides are centred on the fitting rows;
    ``W = argmin ||Tc W - Fc||^2 + ridge ||W||^2`` (float64 normal equations).

    Args:
        title_emb: float [n, d_title] title embeddings (e.g. :meth:`HashingTitleEncoder.encode`).
        frame_mean: float [n, d_frame] mean of each video's valid frames (zeros for a zero-frame video).
        ridge: ridge strength >= 0 (finite).

    Returns:
        :class:`TitleAlignment`; ``.apply(title_emb)`` gives unit rows in the frame space.

    Raises:
        DimensionMismatchError: the two arrays have different row counts (or are not 2-D).
        EmptyInputError: fewer than 2 usable pairs.
        NonFiniteError: NaN/Inf in either array.
        InvalidInputError: negative or non-finite ``ridge``.
    """
    t = as_float_matrix(title_emb, "title_emb", allow_empty=True).astype(np.float64)
    f = as_float_matrix(frame_mean, "frame_mean", allow_empty=True).astype(np.float64)
    if t.shape[0] != f.shape[0]:
        raise DimensionMismatchError(
            f"title_emb has {t.shape[0]} rows but frame_mean has {f.shape[0]}; one pair per video is expected"
        )
    ridge = float(ridge)
    if not np.isfinite(ridge) or ridge < 0:
        raise InvalidInputError(f"ridge must be finite and >= 0, got {ridge}")
    use = np.any(t != 0, axis=1) & np.any(f != 0, axis=1)
    n_fit = int(use.sum())
    if n_fit < 2:
        raise EmptyInputError(f"align_titles needs at least 2 videos with both a title and frames, got {n_fit}")
    tu, fu = t[use], f[use]
    t_mu, f_mu = tu.mean(axis=0), fu.mean(axis=0)
    tc, fc = tu - t_mu, fu - f_mu
    gram = tc.T @ tc + ridge * np.eye(t.shape[1])
    w = np.linalg.lstsq(gram, tc.T @ fc, rcond=None)[0] if ridge == 0 else np.linalg.solve(gram, tc.T @ fc)
    return TitleAlignment(
        weight=w.astype(np.float32),
        title_mean=t_mu.astype(np.float32),
        frame_mean=f_mu.astype(np.float32),
        ridge=ridge,
        n_fit=n_fit,
    )
