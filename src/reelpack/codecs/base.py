"""The shared :class:`Codec` interface and the byte format of fitted parameters.

A codec turns float32 vectors [n, d] into fixed-width uint8 codes
[n, bytes_per_vector] and back, and scores float32 queries against codes
without decoding them to float where it can (asymmetric scoring).

Fitted parameters serialise to bytes with :meth:`Codec.to_bytes` and load with
:func:`reelpack.codecs.codec_from_bytes`. Layout (all little-endian)::

    magic      4 bytes  b"RPCS"
    version    u16      1
    header_len u32      length of the JSON header that follows
    header     UTF-8 JSON {"spec": str, "dim": int, "meta": {...},
                           "arrays": [{"name", "dtype", "shape", "offset", "nbytes"}]}
    payload    concatenated raw array bytes, offsets relative to payload start

Every length and offset is checked against the buffer before anything is
allocated; corrupt input raises :class:`~reelpack.errors.SerializationError`.
"""

from __future__ import annotations

import json
import math
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import numpy as np
from threadpoolctl import threadpool_limits

from reelpack.util.validate import as_codes, as_float_matrix
from reelpack.codecs.scanner import GenericScanner, Scanner
from reelpack.kernels.dense import finite_scores
from reelpack.errors import (
    DimensionMismatchError,
    InvalidInputError,
    NotFittedError,
    SerializationError,
    UnsupportedOperationError,
)

__all__ = ["Codec", "check_weights", "weighted_rows", "one_blas_thread", "pack_state", "unpack_state", "check_state", "STATE_MAGIC", "STATE_VERSION"]

STATE_MAGIC = b"RPCS"
STATE_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
MAX_DIM = 1 << 20
MAX_ARRAY_NDIM = 8
MAX_ARRAY_EXTENT = 1 << 48  # product of the non-zero axes; keeps numpy's size arithmetic in range
_ALLOWED_DTYPES = {"<f4", "<f8", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "|i1", "<f2", "<i2"}


def pack_state(spec: str, dim: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise a codec's spec, dimension, JSON-able ``meta`` and named arrays to bytes."""
    entries = []
    chunks = []
    offset = 0
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        raw = a.tobytes()
        entries.append(
            {"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": offset, "nbytes": len(raw)}
        )
        chunks.append(raw)
        offset += len(raw)
    header = json.dumps({"spec": spec, "dim": int(dim), "meta": meta, "arrays": entries}, sort_keys=True).encode()
    return STATE_MAGIC + struct.pack("<HI", STATE_VERSION, len(header)) + header + b"".join(chunks)


def check_state(data: bytes | bytearray | memoryview) -> tuple[str, int, dict[str, Any], list[dict[str, Any]], int]:
    """Validate the structure of a codec state without reading its arrays.

    Checks the magic, the version, the JSON header length against the buffer, the header keys
    (``spec``, ``dim`` in 1..``MAX_DIM``, ``meta``, ``arrays``) and every array entry (name, dtype among the
    allowed numeric dtypes, shape, ``nbytes == prod(shape) * itemsize``, ``offset >= 0``,
    ``offset + nbytes`` within the payload, no overlap). Nothing of the size of an array is allocated.

    Returns:
        (spec, dim, meta, array entries, payload start): the payload starts ``10 + header_len`` bytes in.

    Raises:
        SerializationError: what was expected and what was found.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SerializationError(f"codec state must be bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    if len(view) < 10:
        raise SerializationError(f"codec state is truncated: {len(view)} bytes, need at least 10")
    if bytes(view[:4]) != STATE_MAGIC:
        raise SerializationError(f"not a reelpack codec state: magic {bytes(view[:4])!r}, expected {STATE_MAGIC!r}")
    version, header_len = struct.unpack_from("<HI", view, 4)
    if version != STATE_VERSION:
        raise SerializationError(f"codec state version {version} is not supported (this reader knows {STATE_VERSION})")
    if header_len > MAX_HEADER_BYTES or 10 + header_len > len(view):
        raise SerializationError(
            f"codec state header length {header_len} exceeds the buffer ({len(view)} bytes) "
            f"or the {MAX_HEADER_BYTES}-byte limit"
        )
    try:
        header = json.loads(bytes(view[10 : 10 + header_len]).decode("utf-8"))
        spec = header["spec"]
        dim = header["dim"]
        meta = header["meta"]
        entries = header["arrays"]
    except (UnicodeDecodeError, KeyError, TypeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and Python's int-digits limit; RecursionError deep nesting
        raise SerializationError(f"codec state header is corrupt: {type(exc).__name__}: {str(exc)[:200]}") from None
    if (
        not isinstance(spec, str)
        or not _is_int(dim)
        or not 0 < dim <= MAX_DIM
        or not isinstance(meta, dict)
    ):
        raise SerializationError(f"codec state header has invalid spec, dim (1..{MAX_DIM}) or meta fields")
    if not isinstance(entries, list):
        raise SerializationError("codec state header 'arrays' must be a list")
    payload_len = len(view) - 10 - header_len
    spans: list[tuple[int, int]] = []
    names: set[str] = set()
    for e in entries:
        if not isinstance(e, dict):
            raise SerializationError("codec state array entry must be an object")
        try:
            name, dtype, shape, off, nbytes = e["name"], e["dtype"], e["shape"], e["offset"], e["nbytes"]
        except KeyError:
            raise SerializationError("codec state array entry is missing fields") from None
        if not isinstance(name, str) or name in names:
            raise SerializationError(f"codec state array name {name!r} is not a string or is repeated")
        if not isinstance(dtype, str) or dtype not in _ALLOWED_DTYPES:
            raise SerializationError(f"codec state array {name!r} has unsupported dtype {dtype!r}")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_ARRAY_NDIM
            or not all(_is_int(s) and s >= 0 for s in shape)
            or math.prod(max(s, 1) for s in shape) > MAX_ARRAY_EXTENT
            or not _is_int(off)
            or not _is_int(nbytes)
            or off < 0
            or nbytes < 0
        ):
            raise SerializationError(f"codec state array {name!r} has an invalid shape or offset")
        dt = np.dtype(dtype)
        expected = dt.itemsize * math.prod(shape)  # Python ints: no overflow
        if expected != nbytes or off + nbytes > payload_len:
            raise SerializationError(
                f"codec state array {name!r} needs {expected} bytes at offset {off}, "
                f"entry says {nbytes}, payload has {payload_len}"
            )
        names.add(name)
        spans.append((off, nbytes))
    # arrays may not overlap: the copies of unpack_state then total at most the payload size
    spans.sort()
    for (o1, n1), (o2, _) in zip(spans, spans[1:]):
        if o1 + n1 > o2:
            raise SerializationError(f"codec state arrays overlap at payload offset {o2}")
    return spec, dim, meta, entries, 10 + header_len


def unpack_state(data: bytes) -> tuple[str, int, dict[str, Any], dict[str, np.ndarray]]:
    """Parse bytes written by :func:`pack_state`; return (spec, dim, meta, arrays).

    Raises :class:`SerializationError` on a wrong magic, unknown version, or any
    length, offset, dtype or shape that does not fit the buffer (:func:`check_state`).
    """
    spec, dim, meta, entries, start = check_state(data)
    payload = memoryview(bytes(data))[start:]
    arrays: dict[str, np.ndarray] = {}
    for e in entries:
        dt = np.dtype(e["dtype"])
        off, nbytes = e["offset"], e["nbytes"]
        arrays[e["name"]] = np.frombuffer(payload[off : off + nbytes], dtype=dt).reshape(e["shape"]).copy()
    return spec, dim, meta, arrays


def _is_int(v: object) -> bool:
    """A JSON integer (``bool`` is an ``int`` subclass in Python but not an integer here)."""
    return isinstance(v, int) and not isinstance(v, bool)


#: Default largest magnitude of an item vector's value that fit and encode accept (:attr:`Codec.max_item_value`):
#: codecs that train or assign by distances work in float32, where squared distances of larger values overflow
#: (faiss k-means would abort the process).
MAX_ITEM_VALUE = 1e15


def _finite_scores(compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()`` as float32 C-contiguous scores, refused (InvalidInputError) when not all finite: queries and
    codes are finite by then, so only a float32 overflow of the tables or sums gets here, which would rank wrong."""
    with np.errstate(over="ignore", invalid="ignore"):
        scores = np.ascontiguousarray(compute(), dtype=np.float32)
    return finite_scores(scores)


def check_weights(weights: Any, n: int, what: str = "weights", rows: str = "X") -> np.ndarray:
    """``weights`` as a float64 [n] C-contiguous copy, checked: 1-D, one value per row, finite, >= 0, a positive
    finite sum. ``what`` names the weights and ``rows`` their rows in the messages.

    Raises:
        InvalidInputError: not a 1-D float array of finite values >= 0 with a positive, finite sum.
        DimensionMismatchError: not ``n`` values.
    """
    try:
        w = np.array(weights, dtype=np.float64, copy=True, order="C")
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what} must be a float array of one value per row") from None
    if w.ndim != 1:
        raise InvalidInputError(f"{what} must be 1-D (one value per row), got shape {w.shape}")
    if w.shape[0] != n:
        raise DimensionMismatchError(f"{what} has {w.shape[0]} values, {rows} has {n} rows")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InvalidInputError(f"{what} must be finite and >= 0")
    with np.errstate(over="ignore"):
        total = float(w.sum())
    if not total > 0 or not math.isfinite(total):
        raise InvalidInputError(f"{what} must have a positive, finite sum (not all 0)")
    return w


def one_blas_thread() -> AbstractContextManager[Any]:
    """Limit every loaded BLAS / LAPACK library to one thread (``threadpoolctl``) for the duration.

    :meth:`Codec.fit` runs under it, so a fit gives the same bytes whatever the process's BLAS threading
    (``OMP_NUM_THREADS``, a Dask worker's settings): LAPACK's ``eigh`` and ``solve`` sum in an order that depends on
    the thread count, and a 1e-13 change in a PCA basis (``rq -pD``) sends k-means to other codebooks. It is also
    faster where numpy GEMMs alternate with faiss k-means: idle OpenBLAS workers spin after each call and starve
    faiss's OpenMP threads (OPQ training ran 3x slower on 2 cores without it).
    """
    return threadpool_limits(limits=1, user_api="blas")


def weighted_rows(X: np.ndarray, weights: np.ndarray, seed: int) -> np.ndarray:
    """``len(X)`` rows of ``X`` float [n, d] drawn with replacement, row ``i`` with probability proportional to
    ``weights[i]`` (float [n], finite, >= 0, not all 0); seeded: the same inputs give the same rows.

    The training set of a weighted :meth:`Codec.fit`: k-means and least-squares steps on these rows minimise the
    ``weights``-weighted error of ``X`` in expectation.

    Raises:
        InvalidInputError, DimensionMismatchError: bad ``weights`` (:func:`check_weights`).
    """
    w = check_weights(weights, X.shape[0])
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5EED])
    rows = rng.choice(X.shape[0], size=X.shape[0], replace=True, p=w / w.sum())
    return np.ascontiguousarray(X[np.sort(rows)])


class Codec(ABC):
    """A fixed-rate vector codec: fit, encode, decode, score, bytes per vector.

    Subclasses set :attr:`family` (the registry name) and implement the
    ``_fit``, ``_encode``, ``_decode``, ``_score``, ``_state`` and
    ``_load_state`` hooks; the public methods here validate input and output.

    Attributes:
        spec: factory string that rebuilds an unfitted twin, e.g. ``"opq16,pq16"``;
            ``make_codec(c.spec).spec == c.spec``.
        dim: input dimension, known after ``fit`` (``None`` before).
    """

    family: ClassVar[str] = ""
    #: Largest ``|x|`` of an item value that :meth:`fit` and :meth:`encode` accept (``None``: any finite value;
    #: the uncompressed codecs need no bound).
    max_item_value: ClassVar[float | None] = MAX_ITEM_VALUE

    def __init__(self) -> None:
        self.dim: int | None = None

    # ---- identity -------------------------------------------------------------------------------
    @property
    @abstractmethod
    def spec(self) -> str:
        """Factory string of this codec (see :func:`reelpack.codecs.make_codec`)."""

    @property
    def is_fitted(self) -> bool:
        """True once :meth:`fit` (or loading fitted state) has set the parameters."""
        return self.dim is not None

    @property
    def bytes_per_vector(self) -> int:
        """Width of one code in bytes (needs the dimension, so only after fit)."""
        self._require_fitted("bytes_per_vector")
        return self._bytes_per_vector()

    @abstractmethod
    def _bytes_per_vector(self) -> int: ...

    def __repr__(self) -> str:
        state = f"dim={self.dim}, bytes_per_vector={self._bytes_per_vector()}" if self.is_fitted else "unfitted"
        return f"{type(self).__name__}({self.spec!r}, {state})"

    # ---- public API -----------------------------------------------------------------------------
    def fit(self, X: np.ndarray, seed: int = 0, *, weights: np.ndarray | None = None) -> Codec:
        """Learn the codec's parameters from training vectors.

        Args:
            X: float array [n, d] (cast to float32); finite values.
            seed: seed for every random choice (k-means init, rotations, hashes).
            weights: optional float [n] row weights, finite, >= 0, not all 0 (for example item popularity,
                :func:`reelpack.data.popularity_weights`): the codec is trained on ``n`` rows drawn from ``X``
                with replacement, row ``i`` with probability ``weights[i] / sum(weights)`` (seeded by ``seed``,
                :func:`weighted_rows`), so its error is spent where the weight is. Codes, state and scores do
                not change; every family accepts it.

        The fit runs with one BLAS thread (:func:`one_blas_thread`): the same ``X``, ``seed`` and ``weights`` give
        the same bytes whatever the process's thread settings.

        Returns:
            ``self``, fitted.

        Raises:
            InvalidInputError: bad ``weights`` (negative, not finite, all zero).
            DimensionMismatchError: ``weights`` is not one value per row of ``X``.
        """
        X = self._check_item_magnitude(as_float_matrix(X, "X"))
        if weights is not None:
            X = weighted_rows(X, weights, int(seed))
        self._check_fit_input(X)
        with one_blas_thread():
            self._fit(X, int(seed))
        self.dim = int(X.shape[1])
        return self

    def encode(self, X: np.ndarray) -> np.ndarray:
        """Encode vectors float [n, d] to codes uint8 [n, bytes_per_vector]."""
        self._require_fitted("encode")
        X = self._check_item_magnitude(as_float_matrix(X, "X", dim=self.dim, allow_empty=True))
        codes = self._encode(X)
        assert codes.dtype == np.uint8 and codes.shape == (X.shape[0], self._bytes_per_vector())
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Reconstruct float32 vectors [n, d] from codes uint8 [n, bytes_per_vector]."""
        self._require_fitted("decode")
        codes = as_codes(codes, self._bytes_per_vector())
        return np.ascontiguousarray(self._decode(codes), dtype=np.float32)

    def score(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Asymmetric inner-product scores of float queries [q, d] against codes [n, B].

        Returns:
            float32 [q, n]; higher means more similar. For codecs whose
            estimator is the reconstruction, this equals ``queries @ decode(codes).T``.
        """
        self._require_fitted("score")
        queries = as_float_matrix(queries, "queries", dim=self.dim)
        codes = as_codes(codes, self._bytes_per_vector())
        return _finite_scores(lambda: self._score(queries, codes))

    def scanner(self, codes: np.ndarray, *, exact: bool = True, query_bits: int = 8,
                rerank: int | None = None) -> Scanner:  # fmt: skip
        """Prepare ``codes`` for fused score + top-K search (how this codec is searched on a device).

        Families with a fused kernel override this; the default scores row blocks with :meth:`score`
        and keeps the top K (:class:`reelpack.codecs.scanner.GenericScanner`).

        Args:
            codes: uint8 [n, bytes_per_vector] (a read-only memmap is fine).
            exact: 4-bit PQ: rescore candidates with float tables (exact ADC ranking).
            query_bits: bits per query coordinate for binary asymmetric scoring (simhash, rabitq).
            rerank: rabitq with B > 1 bits: candidates of the 1-bit stage rescored with all bits.

        Returns:
            a :class:`reelpack.codecs.scanner.Scanner`.
        """
        self._require_fitted("scanner")
        return GenericScanner(self, codes)

    def to_bytes(self) -> bytes:
        """Serialise the fitted parameters (see the module docstring for the layout)."""
        self._require_fitted("to_bytes")
        meta, arrays = self._state()
        return pack_state(self.spec, int(self.dim), meta, arrays)  # type: ignore[arg-type]

    # ---- progressive stages and score bounds -----------------------------------------------------
    @property
    def stage_bytes(self) -> tuple[int, ...]:
        """Widths in bytes of the code's progressive stages; they sum to :attr:`bytes_per_vector`.

        A code is the concatenation of its stages: columns ``[0, stage_bytes[0])`` are
        stage 0 (the coarse code a pack's layer 0 holds for every item), the next
        ``stage_bytes[1]`` columns refine it, and so on. Single-stage codecs return
        ``(bytes_per_vector,)``.
        """
        self._require_fitted("stage_bytes")
        return self._stage_bytes()

    def _stage_bytes(self) -> tuple[int, ...]:
        return (self._bytes_per_vector(),)

    def prefix_bytes(self, stages: int) -> int:
        """Bytes of the first ``stages`` stages (``1 <= stages <= len(stage_bytes)``)."""
        widths = self.stage_bytes
        if isinstance(stages, bool) or not isinstance(stages, (int, np.integer)) or not 1 <= stages <= len(widths):
            raise InvalidInputError(f"stages must be an integer in [1, {len(widths)}] for {self.spec!r}, got {stages!r}")
        return int(sum(widths[: int(stages)]))

    def score_prefix(self, queries: np.ndarray, codes: np.ndarray, stages: int) -> np.ndarray:
        """Scores float32 [q, n] of queries [q, d] from the first ``stages`` stages of each code.

        ``codes`` is uint8 [n, prefix_bytes(stages)]. With all stages this equals :meth:`score`.
        """
        self._require_fitted("score_prefix")
        width = self.prefix_bytes(stages)
        queries = as_float_matrix(queries, "queries", dim=self.dim)
        codes = as_codes(codes, width)
        if int(stages) == len(self.stage_bytes):
            return _finite_scores(lambda: self._score(queries, codes))
        return _finite_scores(lambda: self._score_prefix(queries, codes, int(stages)))

    def _score_prefix(self, queries: np.ndarray, codes: np.ndarray, stages: int) -> np.ndarray:
        raise UnsupportedOperationError(f"{self.spec!r} has a single stage; it cannot score a code prefix")

    @property
    def has_bounds(self) -> bool:
        """True when :meth:`score_bounds` gives per (query, item) error bounds."""
        return False

    def score_bounds(
        self, queries: np.ndarray, codes: np.ndarray, stages: int | None = None, confidence: float = 0.99
    ) -> tuple[np.ndarray, np.ndarray]:
        """Estimated scores and error half-widths from the first ``stages`` stages.

        Args:
            queries: float [q, d].
            codes: uint8 [n, prefix_bytes(stages)] (all stages when ``stages`` is None).
            stages: how many stages the codes hold.
            confidence: the probability, over the codec's randomness (or, for calibrated
                bounds, over the calibration distribution), that the true inner product
                lies in ``estimate +- half_width``; in (0, 1).

        Returns:
            ``(estimate, half_width)``, both float32 [q, n]; ``half_width >= 0``.

        Raises:
            UnsupportedOperationError: the codec has no bounds (``has_bounds`` is False).
        """
        self._require_fitted("score_bounds")
        if not self.has_bounds:
            raise UnsupportedOperationError(f"{self.spec!r} gives no score bounds; use a fixed top-R refinement instead")
        stages = len(self.stage_bytes) if stages is None else stages
        width = self.prefix_bytes(stages)
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < float(confidence) < 1.0:
            raise InvalidInputError(f"confidence must lie in (0, 1), got {confidence!r}")
        queries = as_float_matrix(queries, "queries", dim=self.dim)
        codes = as_codes(codes, width)
        est, half = self._score_bounds(queries, codes, int(stages), float(confidence))
        return np.ascontiguousarray(est, dtype=np.float32), np.ascontiguousarray(half, dtype=np.float32)

    def _score_bounds(
        self, queries: np.ndarray, codes: np.ndarray, stages: int, confidence: float
    ) -> tuple[np.ndarray, np.ndarray]:
        raise UnsupportedOperationError(f"{self.spec!r} gives no score bounds")

    # ---- hooks ----------------------------------------------------------------------------------
    def _check_fit_input(self, X: np.ndarray) -> None:
        """Raise if this codec cannot be fitted on X (e.g. too few rows); default accepts."""

    @abstractmethod
    def _fit(self, X: np.ndarray, seed: int) -> None: ...

    @abstractmethod
    def _encode(self, X: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _decode(self, codes: np.ndarray) -> np.ndarray: ...

    def _score(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return queries @ self._decode(codes).T

    @abstractmethod
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]: ...

    @abstractmethod
    def _load_state(self, dim: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None: ...

    def _check_item_magnitude(self, X: np.ndarray) -> np.ndarray:
        """``X`` (float32, finite) unchanged, or InvalidInputError when a value is beyond :attr:`max_item_value`."""
        limit = self.max_item_value
        if limit is not None and X.size and float(np.abs(X).max()) > limit:
            raise InvalidInputError(
                f"X holds values beyond {limit:.0e} in magnitude (largest {float(np.abs(X).max()):.3g}); "
                f"{self.spec} trains and encodes in float32: scale the vectors down first"
            )
        return X

    def _require_fitted(self, what: str) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} {self.spec!r}: call fit() before {what}()")
