"""The versioned catalog store: packs, deltas, HNSW index and raw vectors of every catalog version on disk.

Layout (``ROOT`` = any folder; see the serving section of the issue 7 spec)::

    ROOT/<catalog>/manifest.json                          the only file readers trust; replaced atomically
    ROOT/<catalog>/.lock                                  fcntl lock: builds and deletions of a catalog serialise
    ROOT/<catalog>/v000003/pack.rpk                       all layers (layer 0 coarse, layer 1.. refinement)
    ROOT/<catalog>/v000003/layer0.rpk                     layer 0 only (what a phone downloads first)
    ROOT/<catalog>/v000003/delta-from-000002.rpk          make_delta(v2 pack.rpk -> v3 pack.rpk)
    ROOT/<catalog>/v000003/layer0-delta-from-000002.rpk   make_delta(v2 layer0.rpk -> v3 layer0.rpk)
    ROOT/<catalog>/v000003/index.usearch                  HNSW over the float32 vectors (server side)
    ROOT/<catalog>/v000003/vectors.npy, ids.npy           float32 [n, d], int64 [n], sorted by id (server side)
    ROOT/<catalog>/v000003/users.npy, user_ids.npy        optional float32 [m, d], int64 [m], sorted by user id
    ROOT/<catalog>/v000003/edge.rpec                      optional EdgeCatalog (build_catalog(edge=True)): coarse
                                                          clusters + sq8 codes the service cuts device summaries from

Publishing a version: everything is written into ``ROOT/<catalog>/.staging-<random>``, fsynced, renamed to
``v00000N`` and only then is ``manifest.json`` replaced (temp file + ``os.replace``). A reader that opens the
manifest sees either the previous versions or the new one complete; a crash at any point leaves the previous
manifest and its files valid (the next build removes stale staging folders and version folders the manifest
does not list).

Version chain: the first version fits the codecs (``seed``); each later version is made with
:func:`~reelpack.format.make_delta` against the previous version's ``pack.rpk`` (and ``layer0.rpk``), which reuses
the previous codecs while their distortion allows, so ``apply_delta(previous pack, delta)`` rebuilds the new pack
byte for byte (checked at build time). A change of codecs, dimension or items per block starts a fresh chain
(codecs re-fitted, no delta, ``delta_from`` null).

The latest version cannot be deleted (publish a new version instead, e.g. the old vectors again): version numbers
are never reused, so a phone's cached ``(version, sha256)`` always means the same bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.util.atomic import atomic_path
from reelpack.util.validate import as_float_matrix
from reelpack.errors import (
    CodecSpecError,
    DataFormatError,
    DataNotFoundError,
    DimensionMismatchError,
    DTypeError,
    EmptyInputError,
    InvalidInputError,
    NotFoundError,
    ReelpackError,
    StoreError,
)
from reelpack.format.delta import sha256_file

__all__ = [
    "CatalogStore",
    "validate_catalog_name",
    "load_embeddings",
    "build_catalog",
    "FILE_KINDS",
    "MANIFEST_FORMAT",
    "DEFAULT_CODECS",
]

MANIFEST_FORMAT = 1
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
STAGING_PREFIX = ".staging-"
DEFAULT_CODECS = ("pq4", "sq8")
DEFAULT_ITEMS_PER_BLOCK = 1024
RECALL_QUERIES = 200
RECALL_K = 50
FILE_KINDS = ("pack", "layer0", "index", "vectors", "ids", "users", "user_ids", "delta", "layer0_delta", "edge")
"""Kinds of files a version entry can list (``CatalogStore.file``)."""

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_VERSION_DIR_RE = re.compile(r"v(\d{6})")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_MAX_MANIFEST_BYTES = 64 << 20

ProgressFn = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as each build stage starts (``done`` stages finished of ``total``)."""


# ================================================================================================
# Names, ids, small helpers
# ================================================================================================
def validate_catalog_name(name: str) -> str:
    """Return ``name`` if it is a valid catalog name: ``^[a-z0-9][a-z0-9_-]{0,63}$``.

    Lower-case letters, digits, ``_`` and ``-``, starting with a letter or digit, at most 64 characters: so a
    name is always a single, plain folder name (no ``..``, ``/``, dots or hidden files).

    Raises:
        InvalidInputError: anything else (not a string, empty, upper case, too long, path characters).
    """
    if not isinstance(name, str):
        raise InvalidInputError(f"catalog name must be a string, got {type(name).__name__}")
    if not _NAME_RE.fullmatch(name):
        raise InvalidInputError(
            f"invalid catalog name {name[:80]!r}: expected 1-64 characters of a-z, 0-9, '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _version_number(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or int(version) < 1:
        raise InvalidInputError(f"version must be a positive integer, got {version!r}")
    return int(version)


def _version_dir(version: int) -> str:
    return f"v{version:06d}"


def _check_ids(ids: object, n: int | None, what: str) -> np.ndarray:
    """Unique non-negative integer ids as int64 [n], or a typed error."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise DTypeError(f"{what} must be a 1-D integer array, got dtype {arr.dtype} shape {arr.shape}")
    if arr.size == 0:
        raise EmptyInputError(f"{what} is empty")
    if n is not None and arr.shape[0] != n:
        raise DimensionMismatchError(f"{what} must have shape ({n},) to match the vectors, got {arr.shape}")
    if arr.dtype.kind == "u" and int(arr.max()) >= 2**63:
        raise InvalidInputError(f"{what} must be < 2**63")
    arr = arr.astype(np.int64)
    if int(arr.min()) < 0:
        raise InvalidInputError(f"{what} must be non-negative, found {int(arr.min())}")
    s = np.sort(arr)
    dup = s[1:][s[1:] == s[:-1]]
    if dup.size:
        raise InvalidInputError(f"{what} must be unique; {dup.size} duplicate(s), e.g. {int(dup[0])}")
    return arr


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


# ================================================================================================
# Manifest validation
# ================================================================================================
def _bad(catalog: str, why: str) -> StoreError:
    return StoreError(f"manifest of catalog {catalog!r} is corrupt: {why}")


def _check_manifest(catalog: str, m: object) -> dict[str, Any]:
    """Structural check of a parsed manifest; :class:`StoreError` naming the first problem."""
    if not isinstance(m, dict):
        raise _bad(catalog, f"expected a JSON object, found {type(m).__name__}")
    if m.get("catalog") != catalog:
        raise _bad(catalog, f"it names catalog {m.get('catalog')!r}")
    if m.get("format") != MANIFEST_FORMAT:
        raise _bad(catalog, f"format {m.get('format')!r}, this reader implements {MANIFEST_FORMAT}")
    versions = m.get("versions")
    if not isinstance(versions, list) or not versions:
        raise _bad(catalog, "'versions' must be a non-empty list")
    seen: set[int] = set()
    for e in versions:
        if not isinstance(e, dict):
            raise _bad(catalog, "a version entry is not an object")
        v = e.get("version")
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v in seen:
            raise _bad(catalog, f"bad or repeated version number {v!r}")
        seen.add(v)
        files = e.get("files")
        if not isinstance(files, dict) or "pack" not in files or "layer0" not in files:
            raise _bad(catalog, f"version {v}: 'files' must list at least pack and layer0")
        for kind, f in files.items():
            if kind not in FILE_KINDS:
                raise _bad(catalog, f"version {v}: unknown file kind {kind!r}")
            if not isinstance(f, dict):
                raise _bad(catalog, f"version {v}: file {kind!r} is not an object")
            p, b, h = f.get("path"), f.get("bytes"), f.get("sha256")
            parts = p.split("/") if isinstance(p, str) else []
            if len(parts) != 2 or parts[0] != _version_dir(v) or parts[1] in ("", ".", "..") or "\\" in p:
                raise _bad(catalog, f"version {v}: file {kind!r} has path {p!r} outside {_version_dir(v)}/")
            if isinstance(b, bool) or not isinstance(b, int) or b < 0:
                raise _bad(catalog, f"version {v}: file {kind!r} has bytes {b!r}")
            if not isinstance(h, str) or not _SHA_RE.fullmatch(h):
                raise _bad(catalog, f"version {v}: file {kind!r} has sha256 {h!r}")
        for key in ("n_items", "dim", "items_per_block"):
            x = e.get(key)
            if isinstance(x, bool) or not isinstance(x, int) or x < 1:
                raise _bad(catalog, f"version {v}: {key} {x!r}")
        codecs = e.get("codecs")
        if not isinstance(codecs, list) or not codecs or not all(isinstance(c, str) for c in codecs):
            raise _bad(catalog, f"version {v}: codecs {codecs!r}")
        df = e.get("delta_from")
        if df is not None and (isinstance(df, bool) or not isinstance(df, int) or not 1 <= df < v):
            raise _bad(catalog, f"version {v}: delta_from {df!r}")
    latest = m.get("latest")
    if latest != max(seen):
        raise _bad(catalog, f"latest is {latest!r} but the newest version listed is {max(seen)}")
    return m


# ================================================================================================
# CatalogStore
# ================================================================================================
class CatalogStore:
    """Read (and, through :func:`build_catalog`, write) the catalogs under one root folder.

    Readers only trust ``manifest.json``; every method reads it afresh (it is small), so a store object sees
    versions published by other processes.

    Attributes:
        root: the root folder (created if missing).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store root {self.root}: {exc.strerror or exc}") from None
        if not self.root.is_dir():
            raise StoreError(f"store root {self.root} is not a folder")

    def __repr__(self) -> str:
        return f"CatalogStore({str(self.root)!r})"

    # ------------------------------------------------------------------ paths
    def catalog_dir(self, catalog: str) -> Path:
        """``root / catalog`` after :func:`validate_catalog_name` (the folder need not exist)."""
        return self.root / validate_catalog_name(catalog)

    @contextlib.contextmanager
    def lock(self, catalog: str) -> Iterator[Path]:
        """Exclusive ``fcntl.flock`` on ``ROOT/<catalog>/.lock`` (creating the folder); yields the catalog folder.

        Builds and deletions of one catalog hold it, so they run one after the other, across threads and
        processes. Readers never need it.
        """
        cat_dir = self.catalog_dir(catalog)
        try:
            cat_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(cat_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot lock catalog {catalog!r} in {self.root}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield cat_dir
        finally:
            os.close(fd)  # closing the only descriptor of this open file releases the lock

    # ------------------------------------------------------------------ reading
    def catalogs(self) -> list[str]:
        """Sorted names of the catalogs that have a manifest."""
        out = []
        for p in self.root.iterdir():
            if _NAME_RE.fullmatch(p.name) and (p / MANIFEST_NAME).is_file():
                out.append(p.name)
        return sorted(out)

    def _read_manifest(self, catalog: str) -> dict[str, Any] | None:
        path = self.catalog_dir(catalog) / MANIFEST_NAME
        try:
            with open(path, "rb") as fh:
                raw = fh.read(_MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read the manifest of catalog {catalog!r}: {exc.strerror or exc}") from None
        if len(raw) > _MAX_MANIFEST_BYTES:
            raise _bad(catalog, f"larger than {_MAX_MANIFEST_BYTES} bytes")
        try:
            m = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _bad(catalog, f"not valid JSON ({exc})") from None
        return _check_manifest(catalog, m)

    def manifest(self, catalog: str) -> dict[str, Any]:
        """The parsed ``manifest.json`` of ``catalog`` (format in the module docstring).

        Raises:
            InvalidInputError: invalid catalog name.
            NotFoundError: no such catalog.
            StoreError: the manifest is unreadable or inconsistent.
        """
        m = self._read_manifest(catalog)
        if m is None:
            raise NotFoundError(f"unknown catalog {catalog!r} in store {self.root}")
        return m

    def versions(self, catalog: str) -> list[int]:
        """Published versions of ``catalog``, ascending."""
        return sorted(e["version"] for e in self.manifest(catalog)["versions"])

    def latest(self, catalog: str) -> int:
        """The newest published version of ``catalog``."""
        return int(self.manifest(catalog)["latest"])

    def version_info(self, catalog: str, version: int) -> dict[str, Any]:
        """The manifest entry of one version (``NotFoundError`` if it is not published)."""
        v = _version_number(version)
        for e in self.manifest(catalog)["versions"]:
            if e["version"] == v:
                return e
        raise NotFoundError(f"catalog {catalog!r} has no version {v} (versions: {self.versions(catalog)})")

    def file(self, catalog: str, version: int, kind: str) -> Path:
        """Path of one file of a version.

        Args:
            kind: one of :data:`FILE_KINDS` (``pack``, ``layer0``, ``index``, ``vectors``, ``ids``, ``users``,
                ``user_ids``, ``delta``, ``layer0_delta``).

        Raises:
            InvalidInputError: unknown kind. NotFoundError: unknown catalog/version, or the version has no such
            file (no users, no index, first version has no delta). StoreError: listed but missing on disk.
        """
        if kind not in FILE_KINDS:
            raise InvalidInputError(f"unknown file kind {kind!r}; expected one of {', '.join(FILE_KINDS)}")
        entry = self.version_info(catalog, version)
        f = entry["files"].get(kind)
        if f is None:
            raise NotFoundError(f"catalog {catalog!r} version {entry['version']} has no {kind} file")
        path = self.catalog_dir(catalog) / f["path"]
        if not path.is_file():
            raise StoreError(f"catalog {catalog!r} version {entry['version']}: {kind} file {path} is missing")
        return path

    # ------------------------------------------------------------------ deleting
    def delete_version(self, catalog: str, version: int) -> None:
        """Unpublish a version: the manifest is replaced without it first, then its folder is removed.

        Raises:
            NotFoundError: unknown catalog or version.
            InvalidInputError: ``version`` is the latest (publish a newer version first; numbers are never reused).
        """
        v = _version_number(version)
        with self.lock(catalog) as cat_dir:
            m = self.manifest(catalog)
            if v not in [e["version"] for e in m["versions"]]:
                raise NotFoundError(f"catalog {catalog!r} has no version {v}")
            if v == m["latest"]:
                raise InvalidInputError(
                    f"cannot delete version {v} of catalog {catalog!r}: it is the latest; publish a newer version first"
                )
            m = dict(m, versions=[e for e in m["versions"] if e["version"] != v])
            _write_manifest(cat_dir, m)
            shutil.rmtree(cat_dir / _version_dir(v), ignore_errors=True)


def _write_manifest(cat_dir: Path, manifest: dict[str, Any]) -> None:
    """Replace ``cat_dir/manifest.json`` atomically: temp file (mode 0644), fsync, ``os.replace``, fsync of the folder.

    Once ``os.replace`` has run the new manifest is visible; nothing after it raises.
    """
    data = (json.dumps(manifest, indent=1, allow_nan=False) + "\n").encode("utf-8")
    with atomic_path(cat_dir / MANIFEST_NAME, mode=0o644) as tmp:
        tmp.write_bytes(data)
    with contextlib.suppress(OSError):
        _fsync_dir(cat_dir)


def _clean_stale(cat_dir: Path, manifest: dict[str, Any] | None) -> None:
    """Remove staging folders, version folders the manifest does not list and manifest temp files (crashes).

    Called with the catalog lock held.
    """
    listed = set() if manifest is None else {_version_dir(e["version"]) for e in manifest["versions"]}
    for p in cat_dir.iterdir():
        orphan = _VERSION_DIR_RE.fullmatch(p.name) is not None and p.name not in listed
        if p.is_dir() and (p.name.startswith(STAGING_PREFIX) or orphan):
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file() and p.name.startswith(f".{MANIFEST_NAME}.") and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)


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


def _load_array(path: Path, what: str) -> np.ndarray:
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
        X = as_float_matrix(_load_array(path, "embeddings"), "embeddings")
        if ids_path is None:
            return np.arange(X.shape[0], dtype=np.int64), X
        ids_path = Path(ids_path)
        if not ids_path.is_file():
            raise DataNotFoundError(f"ids file not found: {ids_path}")
        return _check_ids(_load_array(ids_path, "ids"), X.shape[0], "ids"), X
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
        return _check_ids(raw_ids, X.shape[0], "ids"), X
    if suffix in (".parquet", ".pq"):
        raw_ids, raw_X = _parquet_vectors(path)
        X = as_float_matrix(raw_X, "embedding")
        return _check_ids(raw_ids, X.shape[0], "id column"), X
    raise DataFormatError(
        f"{path}: expected a .npy, .npz or .parquet file, got {suffix or 'no suffix'!r}", path=str(path)
    )


# ================================================================================================
# build_catalog
# ================================================================================================
def _file_entry(cat_dir: Path, path: Path) -> dict[str, Any]:
    return {"path": path.relative_to(cat_dir).as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _recall_queries(X: np.ndarray, users: np.ndarray | None, seed: int) -> tuple[np.ndarray, str]:
    """Up to 200 queries float32 [q, d]: sampled users, else sampled items plus Gaussian noise (norm ~ 0.5 |x|)."""
    rng = np.random.default_rng([int(seed), 0x5EC])
    if users is not None:
        rows = rng.choice(users.shape[0], min(RECALL_QUERIES, users.shape[0]), replace=False)
        return users[np.sort(rows)], "users"
    rows = np.sort(rng.choice(X.shape[0], min(RECALL_QUERIES, X.shape[0]), replace=False))
    base = X[rows]
    scale = 0.5 * np.linalg.norm(base, axis=1, keepdims=True) / np.sqrt(X.shape[1])
    noise = rng.standard_normal(base.shape).astype(np.float32)
    return (base + scale * noise).astype(np.float32), "items+noise"


def _same_codec_bytes(a: Path, b: Path) -> bool:
    from reelpack.format import PackReader

    with PackReader(a) as ra, PackReader(b) as rb:
        return ra.codec(0).to_bytes() == rb.codec(0).to_bytes()


def _check_delta(base: Path, delta: Path, target: Path, scratch: Path) -> None:
    """``apply_delta(base, delta)`` must give ``target`` byte for byte (what a phone will do)."""
    from reelpack.format import apply_delta

    out = scratch / f".check-{delta.name}"
    try:
        apply_delta(base, delta, out)
        if sha256_file(out) != sha256_file(target):
            raise StoreError(f"applying {delta.name} to the previous version does not rebuild {target.name}")
    finally:
        out.unlink(missing_ok=True)


@dataclass
class _Staging:
    """A version being built: ``staging`` (the folder written into), ``final`` (``vNNNNNN``) and whether it has
    been published (see :func:`_staged_version`)."""

    cat_dir: Path
    catalog: str
    version: int
    staging: Path
    final: Path
    published: bool = False

    def publish(self, files: dict[str, Path], entry: dict[str, Any], prev_manifest: dict[str, Any] | None) -> None:
        """Publish the complete staging folder as ``final`` (caller holds the lock): chmod 0644 and fsync every
        file, fsync the folder, rename it, fill ``entry["files"]`` and replace the manifest with ``entry`` appended.

        Once this returns the version is visible (``published``); if it raises, :func:`_staged_version` removes
        ``staging`` and ``final``.
        """
        for p in files.values():
            os.chmod(p, 0o644)  # temp files (make_delta, index) are created 0600; the service may run as another user
            _fsync_file(p)
        _fsync_dir(self.staging)
        os.rename(self.staging, self.final)
        _fsync_dir(self.cat_dir)
        entry["files"] = {kind: _file_entry(self.cat_dir, self.final / p.name) for kind, p in files.items()}
        versions = [] if prev_manifest is None else list(prev_manifest["versions"])
        manifest = {"catalog": self.catalog, "format": MANIFEST_FORMAT, "latest": entry["version"],
                    "versions": versions + [entry]}  # fmt: skip
        _write_manifest(self.cat_dir, manifest)
        self.published = True  # from here on the version is visible: never remove its folder


@contextlib.contextmanager
def _staged_version(cat_dir: Path, catalog: str, version: int) -> Iterator[_Staging]:
    """The staging folder of ``version`` (created empty; the caller holds the catalog lock). An ``OSError`` in the
    block becomes a :class:`StoreError`; unless :meth:`_Staging.publish` completed, the staging folder and the
    version folder are removed on the way out, so no partial version is ever left behind."""
    stage = _Staging(cat_dir, catalog, version, cat_dir / f"{STAGING_PREFIX}{secrets.token_hex(8)}",
                     cat_dir / _version_dir(version))  # fmt: skip
    try:
        stage.staging.mkdir()
        yield stage
    except OSError as exc:
        raise StoreError(f"cannot write version {version} of catalog {catalog!r}: {exc.strerror or exc}") from exc
    finally:
        if not stage.published:
            shutil.rmtree(stage.staging, ignore_errors=True)
            shutil.rmtree(stage.final, ignore_errors=True)


def _check_codecs_and_block(codecs: Sequence[str] | str | None, items_per_block: int | None) -> list[str] | None:
    """Check the ``codecs`` and ``items_per_block`` arguments of a catalog build (``build_catalog``,
    :func:`~reelpack.catalog.build.build_catalog_sharded`); return the codecs' canonical specs (``None`` when
    ``codecs`` is ``None``: the previous version's or the default codecs apply).

    Raises:
        CodecSpecError: ``codecs`` is empty, not strings, or holds a bad spec (rejected before any work).
        InvalidInputError: ``items_per_block`` is given and not an integer in 1..2**20.
    """
    from reelpack.codecs import make_codec

    specs: list[str] | None = None
    if isinstance(codecs, str):
        codecs = [s for s in re.split(r"[;\s]+", codecs.strip()) if s]
    if codecs is not None:
        codecs = list(codecs)
        if not codecs or not all(isinstance(c, str) for c in codecs):
            raise CodecSpecError(f"codecs must be a non-empty list of codec specs, got {codecs!r}")
        specs = [make_codec(c).spec for c in codecs]
    if items_per_block is not None and (
        isinstance(items_per_block, bool) or not isinstance(items_per_block, (int, np.integer))
        or not 1 <= int(items_per_block) <= 1 << 20
    ):  # fmt: skip
        raise InvalidInputError(f"items_per_block must be an integer in 1..{1 << 20}, got {items_per_block!r}")
    return specs


def build_catalog(
    store: CatalogStore,
    catalog: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    *,
    codecs: Sequence[str] | str | None = None,
    users: np.ndarray | None = None,
    user_ids: np.ndarray | None = None,
    items_per_block: int | None = None,
    seed: int = 0,
    index: bool = True,
    progress: ProgressFn | None = None,
    distortion_threshold: float = 0.1,
    connectivity: int | None = None,
    expansion_add: int | None = None,
    expansion_search: int | None = None,
    threads: int = 1,
    verify_deltas: bool = True,
    fit_sample: int | None = None,
    edge: bool = False,
    edge_nlist: int | None = None,
) -> dict[str, Any]:
    """Build and publish the next version of ``catalog``; return its manifest entry.

    Args:
        store: the store. catalog: a valid catalog name (created on the first build).
        ids: unique non-negative integer item ids [n] (any order). vectors: float [n, d], finite.
        codecs: codec specs, layer 0 first (a list, or one string separated by spaces/';'). Default: the
            previous version's codecs, else ``("pq4", "sq8")``. Different codecs than the previous version's
            start a fresh chain (re-fitted, no delta).
        users, user_ids: optional user vectors float [m, d] and unique ids [m] (default ``0..m-1``), stored with
            the version (sorted by user id) and used as the recall queries of the index.
        items_per_block: items per block of both packs. Default: the previous version's, else 1024. A
            different value starts a fresh chain.
        seed: seed of codec fitting (first version / re-fits), of the index insertion order and recall queries.
        index: build the HNSW index (``index.usearch``); without it the entry's ``index`` is null.
        progress: optional ``progress(stage, done, total)`` callback.
        distortion_threshold: codec reuse rule of :func:`~reelpack.format.make_delta`.
        connectivity, expansion_add, expansion_search: HNSW parameters (default: :mod:`reelpack.catalog.ann`'s).
        threads: HNSW insertion threads (1 = deterministic; 0 = all cores).
        verify_deltas: check that applying each delta to the previous file rebuilds the new file byte for byte.
        fit_sample: a fresh chain's codecs are fitted on :func:`reelpack.catalog.build.fit_sample_rows` of the
            id-sorted catalog (all rows up to ``fit_sample``, default 131072; above it, seeded runs of 256 rows)
            and every block is encoded on its own, so :func:`reelpack.catalog.build.build_catalog_sharded` writes
            the same bytes.
        edge: also build the hierarchical index's :class:`~reelpack.catalog.edge.EdgeCatalog` (faiss k-means
            coarse clusters of the float32 vectors, ``sq8`` codes, ``seed``) as ``edge.rpec``; the service cuts
            device summaries from it (``GET .../edge-summary``). The entry's ``edge`` then describes it.
        edge_nlist: its coarse clusters (default ``min(1024, max(1, n // 64))``, at most n); needs ``edge``.

    Returns:
        the new version entry of the manifest (see the module docstring).

    Raises:
        InvalidInputError and subclasses (bad name, shapes, ids, NaN), CodecSpecError (bad codec spec),
        StoreError (corrupt existing manifest, unwritable store). On any error no new version is published.
    """
    from reelpack.codecs import make_codec
    from reelpack.format import make_delta
    from reelpack.catalog import ann
    from reelpack.catalog.build import DEFAULT_FIT_SAMPLE, _Part, encode_blocks, fit_codecs, fit_sample_rows, write_packs

    if fit_sample is None:
        fit_sample = DEFAULT_FIT_SAMPLE
    fit_sample_rows(1, 0, fit_sample)  # validates fit_sample

    validate_catalog_name(catalog)
    if not isinstance(store, CatalogStore):
        raise InvalidInputError(f"store must be a CatalogStore, got {type(store).__name__}")
    X = as_float_matrix(vectors, "vectors")
    item_ids = _check_ids(ids, X.shape[0], "ids")
    U = uids = None
    if users is not None:
        U = as_float_matrix(users, "users", dim=X.shape[1])
        uids = (
            np.arange(U.shape[0], dtype=np.int64) if user_ids is None else _check_ids(user_ids, U.shape[0], "user_ids")
        )
    elif user_ids is not None:
        raise InvalidInputError("user_ids given without users")
    specs = _check_codecs_and_block(codecs, items_per_block)  # rejects bad specs before any work
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if not isinstance(edge, (bool, np.bool_)):
        raise InvalidInputError(f"edge must be a bool, got {edge!r}")
    if edge_nlist is not None and not edge:
        raise InvalidInputError("edge_nlist needs edge=True")
    nlist = min(1024, max(1, X.shape[0] // 64)) if edge_nlist is None else edge_nlist
    if isinstance(nlist, bool) or not isinstance(nlist, (int, np.integer)) or not 1 <= int(nlist) <= X.shape[0]:
        raise InvalidInputError(f"edge_nlist must be an integer in 1..{X.shape[0]} (the item count), got {nlist!r}")
    hnsw = {
        "connectivity": ann.DEFAULT_CONNECTIVITY if connectivity is None else connectivity,
        "expansion_add": ann.DEFAULT_EXPANSION_ADD if expansion_add is None else expansion_add,
        "expansion_search": ann.DEFAULT_EXPANSION_SEARCH if expansion_search is None else expansion_search,
    }
    order = np.argsort(item_ids, kind="stable")
    item_ids, X = item_ids[order], np.ascontiguousarray(X[order])
    if U is not None:
        uorder = np.argsort(uids, kind="stable")
        uids, U = uids[uorder], np.ascontiguousarray(U[uorder])

    stages = (["prepare", "pack", "layer0", "arrays"] + (["index", "recall"] if index else [])
              + (["edge"] if edge else []) + ["publish"])  # fmt: skip

    def step(name: str) -> None:
        if progress is not None:
            progress(name, stages.index(name), len(stages))

    with store.lock(catalog) as cat_dir:
        step("prepare")
        prev_manifest = store._read_manifest(catalog)  # StoreError if corrupt: never overwrite it
        _clean_stale(cat_dir, prev_manifest)
        prev = None
        if prev_manifest is not None:
            prev = next(e for e in prev_manifest["versions"] if e["version"] == prev_manifest["latest"])
        version = 1 if prev is None else prev["version"] + 1
        if specs is None:
            specs = list(prev["codecs"]) if prev is not None else [make_codec(c).spec for c in DEFAULT_CODECS]
        ipb = int(items_per_block) if items_per_block is not None else (
            prev["items_per_block"] if prev is not None else DEFAULT_ITEMS_PER_BLOCK)  # fmt: skip
        chain = (
            prev is not None and prev["codecs"] == specs and prev["items_per_block"] == ipb
            and prev["dim"] == X.shape[1]
        )  # fmt: skip
        meta = {"catalog": catalog, "catalog_version": version}
        with _staged_version(cat_dir, catalog, version) as stage:
            staging = stage.staging
            pack, layer0 = staging / "pack.rpk", staging / "layer0.rpk"
            files: dict[str, Path] = {"pack": pack, "layer0": layer0}
            reused: list[bool] | None = None
            step("pack")
            if chain:
                base_dir = cat_dir / _version_dir(prev["version"])
                delta = staging / f"delta-from-{prev['version']:06d}.rpk"
                l0_delta = staging / f"layer0-delta-from-{prev['version']:06d}.rpk"
                rep = make_delta(base_dir / "pack.rpk", item_ids, X, delta, distortion_threshold=distortion_threshold,
                                 metadata=meta, seed=seed, target_path=pack)  # fmt: skip
                step("layer0")
                make_delta(base_dir / "layer0.rpk", item_ids, X, l0_delta, distortion_threshold=distortion_threshold,
                           metadata=meta, seed=seed, target_path=layer0)  # fmt: skip
                files.update(delta=delta, layer0_delta=l0_delta)
                reused = [lay.reused for lay in rep.layers]
                if verify_deltas:
                    _check_delta(base_dir / "pack.rpk", delta, pack, staging)
                    _check_delta(base_dir / "layer0.rpk", l0_delta, layer0, staging)
            else:  # the sharded build (reelpack.catalog.build) follows the same rules: byte-identical files
                fitted = fit_codecs(specs, X, seed, fit_sample)
                codes, err, sums = encode_blocks(fitted, X, ipb)
                step("layer0")
                write_packs(pack, layer0, item_ids, fitted, lambda: iter([_Part(0, X.shape[0], codes, err)]), sums,
                            meta, ipb)  # fmt: skip
                del codes, err
            if not _same_codec_bytes(pack, layer0):
                raise StoreError(
                    f"catalog {catalog!r} version {version}: layer0.rpk and pack.rpk have different layer-0 codecs"
                )
            step("arrays")
            files["vectors"], files["ids"] = staging / "vectors.npy", staging / "ids.npy"
            _save_npy(files["vectors"], X)
            _save_npy(files["ids"], item_ids)
            if U is not None:
                files["users"], files["user_ids"] = staging / "users.npy", staging / "user_ids.npy"
                _save_npy(files["users"], U)
                _save_npy(files["user_ids"], uids)
            index_info = None
            if index:
                step("index")
                hidx = ann.HNSWIndex.build(X, item_ids, seed=seed, threads=threads, **hnsw)
                files["index"] = staging / "index.usearch"
                hidx.save(files["index"])
                step("recall")
                queries, source = _recall_queries(X, U, seed)
                k = min(RECALL_K, X.shape[0])
                index_info = {"kind": "usearch-hnsw", "metric": "ip", **hnsw,
                              "recall_at_50": round(hidx.recall_at(X, queries, k), 4),
                              "recall_queries": source, "recall_k": k}  # fmt: skip
                del hidx
            edge_info = None
            if edge:
                from reelpack.catalog.edge import EdgeCatalog

                step("edge")
                ecat = EdgeCatalog.build(X, item_ids, nlist=int(nlist), codec="sq8", catalog_version=version, seed=seed)
                files["edge"] = ecat.save(staging / "edge.rpec")
                edge_info = {"nlist": ecat.nlist, "codec": ecat.codec.spec, "fingerprint": ecat.fingerprint.hex(),
                             "fixed_bytes": int(ecat.fixed_bytes), "item_bytes": int(ecat.item_bytes())}  # fmt: skip
                del ecat
            step("publish")
            entry = {
                "version": version,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "n_items": int(X.shape[0]),
                "dim": int(X.shape[1]),
                "codecs": specs,
                "items_per_block": ipb,
                "files": {},
                "delta_from": prev["version"] if chain else None,
                "index": index_info,
                "n_users": None if U is None else int(U.shape[0]),
                "seed": seed,
                "codecs_reused": reused,
                "edge": edge_info,
            }
            stage.publish(files, entry, prev_manifest)
    if progress is not None:
        progress("done", len(stages), len(stages))
    return entry
