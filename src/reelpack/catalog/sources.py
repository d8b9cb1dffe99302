"""Where a catalog build reads its rows: sources readable by row range on any worker, and embedding files.

* :class:`CatalogSource`: ``n`` rows of dimension ``d`` in id order, readable by row range (:meth:`~CatalogSource.rows`)
  in any process, with an :meth:`~CatalogSource.identity` that is part of every shard's fingerprint.
  :class:`ArraySource` (in memory: the single-process build), :class:`NpySource` (a ``.npy`` file memory-mapped
  by each worker), :class:`SyntheticSource` (generated chunk by chunk from a seed).
* :func:`load_embeddings`: item embeddings and ids from a ``.npy``, ``.npz`` or Parquet file (``reelpack
  build-catalog EMBEDDINGS``); :func:`load_npy_array` reads one ``.npy`` array with typed errors.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.errors import (
    DataFormatError,
    DataNotFoundError,
    InvalidInputError,
    ReelpackError,
)
from reelpack.util.atomic import atomic_path
from reelpack.util.ids import check_item_ids
from reelpack.util.validate import as_float_matrix

__all__ = [
    "SYNTH_CHUNK",
    "CatalogSource",
    "ArraySource",
    "NpySource",
    "SyntheticSource",
    "check_row_range",
    "load_embeddings",
    "load_npy_array",
]

SYNTH_CHUNK = 1024
"""Rows per independently seeded chunk of :class:`SyntheticSource`."""


# ================================================================================================
# Sources: the id-sorted catalog, readable by row range on any worker
# ================================================================================================
class CatalogSource:
    """Base of the catalog sources: ``n`` rows of dimension ``d`` in id order, readable by row range."""

    n: int
    d: int

    def rows(self, lo: int, hi: int) -> np.ndarray:  # pragma: no cover - abstract
        """Rows ``[lo, hi)`` of the id-sorted catalog: float32 [hi - lo, d], C-contiguous, finite."""
        raise NotImplementedError

    def ids(self) -> np.ndarray:  # pragma: no cover - abstract
        """Sorted unique item ids int64 [n]."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """JSON-able description that changes whenever the rows could change (part of the shard fingerprint)."""
        raise NotImplementedError

    def prepare(self, work_dir: Path) -> None:
        """Driver-side set-up before :meth:`ids` (and before the rows are read on workers); ``work_dir`` is the
        build's work folder. Nothing by default."""


@dataclass(frozen=True)
class SyntheticSource(CatalogSource):
    """SYNTHETIC clustered catalog of unit vectors, ids ``0..n-1``, generated chunk by chunk.

    Row ``i`` belongs to chunk ``i // SYNTH_CHUNK``; each chunk is drawn from its own generator
    ``default_rng([seed, 0x5C7A, chunk])`` (cluster label, then centre + 0.8 x Gaussian noise, normalised), the
    ``n_clusters`` centres from ``default_rng([seed, 0x5C7A])``. So any row range is generated identically by
    any process, and a 10M x 128 catalog never exists in one process.
    """

    n: int
    d: int
    seed: int = 0
    n_clusters: int = 256

    def __post_init__(self) -> None:
        for name, v, lo in (("n", self.n, 1), ("d", self.d, 1), ("seed", self.seed, 0), ("n_clusters", self.n_clusters, 1)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < lo:
                raise InvalidInputError(f"SyntheticSource {name} must be an integer >= {lo}, got {v!r}")

    def _centres(self) -> np.ndarray:
        rng = np.random.default_rng([int(self.seed), 0x5C7A])
        return rng.standard_normal((self.n_clusters, self.d), dtype=np.float32)

    def rows(self, lo: int, hi: int) -> np.ndarray:
        lo, hi = check_row_range(lo, hi, self.n)
        centres = self._centres()
        out = np.empty((hi - lo, self.d), np.float32)
        for c in range(lo // SYNTH_CHUNK, -(-hi // SYNTH_CHUNK)):
            c_lo = c * SYNTH_CHUNK
            m = SYNTH_CHUNK  # always a whole chunk: a row does not depend on n
            rng = np.random.default_rng([int(self.seed), 0x5C7A, c])
            block = centres[rng.integers(0, self.n_clusters, m)]
            block += np.float32(0.8) * rng.standard_normal((m, self.d), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            a, b = max(lo, c_lo), min(hi, c_lo + m)
            out[a - lo : b - lo] = block[a - c_lo : b - c_lo]
        return out

    def ids(self) -> np.ndarray:
        return np.arange(self.n, dtype=np.int64)

    def identity(self) -> dict[str, Any]:
        return {"kind": "synthetic", "n": int(self.n), "d": int(self.d), "seed": int(self.seed),
                "n_clusters": int(self.n_clusters), "chunk": SYNTH_CHUNK}  # fmt: skip


def _file_identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


class NpySource(CatalogSource):
    """Item vectors in a ``.npy`` file (float [n, d]), memory-mapped and sliced by each worker.

    Args:
        path: the ``.npy`` file; it must be readable at the same path on every worker (shared filesystem).
        ids_path: optional ``.npy`` integer ids [n] (default ``0..n-1``). Rows are served in id order; when
            the ids are not sorted, the order is computed once and saved to ``order_path`` (in the work folder)
            for the workers.

    The identity (part of every shard's fingerprint) is the files' resolved paths, sizes and modification
    times: rewriting the input makes a rerun rebuild every shard.
    """

    def __init__(self, path: str | os.PathLike[str], ids_path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.ids_path = None if ids_path is None else Path(ids_path)
        if not self.path.is_file():
            raise DataNotFoundError(f"embeddings file not found: {self.path}")
        if self.path.suffix.lower() != ".npy":
            raise DataFormatError(
                f"the sharded build reads .npy files (memory-mapped by each worker), got {self.path.name}; "
                "convert it with numpy.save or build without --scheduler",
                path=str(self.path),
            )
        X = self._map()
        if X.ndim != 2 or X.dtype.kind not in "fiu" or X.shape[0] == 0 or X.shape[1] == 0:
            raise DataFormatError(f"{self.path}: expected a non-empty 2-D numeric array, got {X.dtype} {X.shape}",
                                  path=str(self.path))  # fmt: skip
        self.n, self.d = int(X.shape[0]), int(X.shape[1])
        self.order_path: str | None = None
        self._ids: np.ndarray | None = None

    def _map(self) -> np.ndarray:
        try:
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise DataFormatError(f"cannot read {self.path} as a .npy array: {exc}", path=str(self.path)) from None

    def prepare(self, work_dir: Path) -> None:
        """Read and check the ids (driver); save the id order to the work folder when the ids are not sorted."""
        if self.ids_path is None:
            self._ids = np.arange(self.n, dtype=np.int64)
            return
        if not self.ids_path.is_file():
            raise DataNotFoundError(f"ids file not found: {self.ids_path}")
        ids = check_item_ids(load_npy_array(self.ids_path, "ids"), what="ids", n=self.n)
        if ids.size > 1 and np.any(np.diff(ids) < 0):
            order = np.argsort(ids, kind="stable")
            path = work_dir / "order.npy"
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, order.astype(np.int64), allow_pickle=False)
            self.order_path = str(path)
            ids = ids[order]
        self._ids = ids

    def rows(self, lo: int, hi: int) -> np.ndarray:
        lo, hi = check_row_range(lo, hi, self.n)
        X = self._map()
        if self.order_path is None:
            part = X[lo:hi]
        else:
            order = np.load(self.order_path, mmap_mode="r")[lo:hi]
            idx = np.argsort(order, kind="stable")  # read the memory map in file order, then put rows in id order
            part = np.empty((hi - lo, self.d), X.dtype)
            part[idx] = X[np.asarray(order)[idx]]
        return np.ascontiguousarray(as_float_matrix(part, f"rows {lo}..{hi} of {self.path.name}"))

    def ids(self) -> np.ndarray:
        if self._ids is None:
            raise InvalidInputError("NpySource.prepare() must run before ids()")
        return self._ids

    def identity(self) -> dict[str, Any]:
        out = {"kind": "npy", "vectors": _file_identity(self.path), "shape": [self.n, self.d]}
        out["ids"] = None if self.ids_path is None else _file_identity(self.ids_path)
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_ids"}  # workers need no ids

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._ids = None


class ArraySource(CatalogSource):
    """An in-memory catalog: ids [n] (any order) and vectors float [n, d], kept sorted by id (float32 [n, d]).

    The single-process :func:`~reelpack.catalog.build.build_catalog` reads its arrays through it; with a
    process cluster the arrays are pickled into every task: use :class:`NpySource` for large catalogs.

    Raises:
        InvalidInputError and subclasses: vectors not a finite 2-D float array, ids not unique non-negative
        integers [n].
    """

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        X = as_float_matrix(vectors, "vectors")
        ids = check_item_ids(ids, what="ids", n=X.shape[0])
        order = np.argsort(ids, kind="stable")
        self._sorted_ids, self._X = ids[order], np.ascontiguousarray(X[order])
        self.n, self.d = int(X.shape[0]), int(X.shape[1])
        self._digest: str | None = None

    def rows(self, lo: int, hi: int) -> np.ndarray:
        lo, hi = check_row_range(lo, hi, self.n)
        return self._X[lo:hi]

    def ids(self) -> np.ndarray:
        return self._sorted_ids

    def identity(self) -> dict[str, Any]:
        if self._digest is None:  # only a build with a work folder (shard fingerprints) needs it
            h = hashlib.sha256(self._sorted_ids.tobytes())
            h.update(self._X.tobytes())
            self._digest = h.hexdigest()
        return {"kind": "array", "shape": [self.n, self.d], "sha256": self._digest}


def check_row_range(lo: int, hi: int, n: int) -> tuple[int, int]:
    """``(lo, hi)`` as ints when ``0 <= lo < hi <= n``; else :class:`InvalidInputError`."""
    lo, hi = int(lo), int(hi)
    if not 0 <= lo < hi <= n:
        raise InvalidInputError(f"row range [{lo}, {hi}) is outside [0, {n})")
    return lo, hi


# ================================================================================================
# Loading embeddings
# ================================================================================================
def _parquet_vectors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataFormatError(f"cannot read {path} as Parquet: {exc}", path=str(path)) from None
    names = table.column_names
    if "id" not in names:
        raise DataFormatError(f"{path}: Parquet file needs an 'id' column, found {names[:10]}", path=str(path))
    id_col = table.column("id")
    if id_col.null_count:
        raise DataFormatError(f"{path}: column 'id' holds {id_col.null_count} null(s)", path=str(path))
    if not pa.types.is_integer(id_col.type):
        raise DataFormatError(f"{path}: column 'id' must be integers, found {id_col.type}", path=str(path))
    ids = id_col.to_numpy()
    n = table.num_rows
    if "embedding" in names:
        col = table.column("embedding").combine_chunks()
        t = col.type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
            raise DataFormatError(f"{path}: column 'embedding' must be a list of floats, found {t}", path=str(path))
        if col.null_count:
            raise DataFormatError(f"{path}: column 'embedding' holds {col.null_count} null row(s)", path=str(path))
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if n == 0 or lengths.min() != lengths.max() or lengths[0] == 0:
            raise DataFormatError(
                f"{path}: every 'embedding' must have the same non-zero length, found lengths "
                f"{int(lengths.min()) if n else 0}..{int(lengths.max()) if n else 0}",
                path=str(path),
            )
        flat = pc.list_flatten(col)
        if flat.null_count:
            raise DataFormatError(f"{path}: 'embedding' holds null values", path=str(path))
        if not (pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type)):
            raise DataFormatError(f"{path}: 'embedding' values must be numbers, found {flat.type}", path=str(path))
        X = flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, int(lengths[0]))
        return ids, X
    cols = sorted((int(c[1:]), c) for c in names if re.fullmatch(r"e\d+", c))
    if not cols:
        raise DataFormatError(
            f"{path}: Parquet file needs an 'embedding' list column or columns e0..e{{d-1}}, found {names[:10]}",
            path=str(path),
        )
    if [i for i, _ in cols] != list(range(len(cols))):
        raise DataFormatError(f"{path}: embedding columns must be e0..e{len(cols) - 1} without gaps", path=str(path))
    parts = []
    for _, c in cols:
        col = table.column(c)
        if col.null_count or not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            raise DataFormatError(f"{path}: column {c!r} must be non-null numbers, found {col.type}", path=str(path))
        parts.append(col.to_numpy().astype(np.float32))
    return ids, np.stack(parts, axis=1) if n else np.empty((0, len(cols)), np.float32)


def load_npy_array(path: Path, what: str) -> np.ndarray:
    """The array in the ``.npy`` file ``path`` (no pickles); :class:`DataFormatError` naming ``what`` if unreadable."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataFormatError(f"cannot read {what} {path} as a .npy array: {exc}", path=str(path)) from None
    if not isinstance(arr, np.ndarray):
        raise DataFormatError(f"{what} {path} is not a .npy array", path=str(path))
    return arr


def load_embeddings(
    path: str | os.PathLike[str], ids_path: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read item embeddings and ids from a file.

    Formats (by suffix):

    * ``.npy``: float [n, d]; ids from ``ids_path`` (``.npy`` integer [n]) or ``0..n-1``.
    * ``.npz``: arrays ``vectors`` float [n, d] and ``ids`` integer [n].
    * ``.parquet`` / ``.pq``: an integer ``id`` column and either a list<float> ``embedding`` column or float
      columns ``e0 .. e{d-1}``.

    Returns:
        (ids int64 [n], vectors float32 [n, d]) in file order; ids unique and non-negative, vectors finite.

    Raises:
        DataNotFoundError: a file does not exist. DataFormatError: unreadable file, missing arrays/columns.
        InvalidInputError (DTypeError, DimensionMismatchError, NonFiniteError, EmptyInputError): bad contents.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"embeddings file not found: {path}")
    suffix = path.suffix.lower()
    if ids_path is not None and suffix != ".npy":
        raise InvalidInputError(f"ids_path is only used with a .npy embeddings file, not {suffix or path.name}")
    if suffix == ".npy":
        X = as_float_matrix(load_npy_array(path, "embeddings"), "embeddings")
        if ids_path is None:
            return np.arange(X.shape[0], dtype=np.int64), X
        ids_path = Path(ids_path)
        if not ids_path.is_file():
            raise DataNotFoundError(f"ids file not found: {ids_path}")
        return check_item_ids(load_npy_array(ids_path, "ids"), what="ids", n=X.shape[0]), X
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("ids", "vectors") if k not in z.files]
                if missing:
                    raise DataFormatError(
                        f"{path}: .npz needs arrays 'ids' and 'vectors', missing {missing} (has {z.files[:10]})",
                        path=str(path),
                    )
                raw_ids, raw_X = z["ids"], z["vectors"]
        except (OSError, ValueError, EOFError) as exc:
            if isinstance(exc, ReelpackError):
                raise
            raise DataFormatError(f"cannot read {path} as a .npz archive: {exc}", path=str(path)) from None
        X = as_float_matrix(raw_X, "vectors")
        return check_item_ids(raw_ids, what="ids", n=X.shape[0]), X
    if suffix in (".parquet", ".pq"):
        raw_ids, raw_X = _parquet_vectors(path)
        X = as_float_matrix(raw_X, "embedding")
        return check_item_ids(raw_ids, what="id column", n=X.shape[0]), X
    raise DataFormatError(
        f"{path}: expected a .npy, .npz or .parquet file, got {suffix or 'no suffix'!r}", path=str(path)
    )

