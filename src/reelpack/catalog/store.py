"""The versioned catalog store: packs, deltas, HNSW index and raw vectors of every catalog version on disk.

Layout (``ROOT`` = any folder)::

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
    ROOT/<catalog>/.work/                                 shard files of a resumable build (build-catalog --scheduler)

This module is the store: names, the manifest, the lock, staging and publishing, reads (the server-side arrays
checked against the manifest: ``load_array``), verification (``verify``, ``reelpack verify-store``) and
deletions. A request the store refuses, or a build that fails, leaves no folder or lock file it created. The
builds that write versions are :func:`~reelpack.catalog.build.build_catalog` and
:func:`~reelpack.catalog.build.build_catalog_sharded` (one pipeline, :mod:`reelpack.catalog.pipeline`);
``build_catalog``, ``load_embeddings`` and ``DEFAULT_CODECS`` stay importable from here.

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
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reelpack.errors import DataFormatError, InvalidInputError, NotFoundError, StoreError
from reelpack.format.delta import sha256_file
from reelpack.util.npy import read_npy_header
from reelpack.util.atomic import atomic_write_bytes, fsync_dir, fsync_file

__all__ = [
    "CatalogStore",
    "StagedVersion",
    "validate_catalog_name",
    "version_dir",
    "staged_version",
    "clean_stale",
    "latest_entry",
    "FILE_KINDS",
    "MANIFEST_FORMAT",
    "WORK_NAME",
    "ARRAY_KINDS",
    "FileCheck",
    "StoreReport",
]

MANIFEST_FORMAT = 1
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
STAGING_PREFIX = ".staging-"
WORK_NAME = ".work"
FILE_KINDS = ("pack", "layer0", "index", "vectors", "ids", "users", "user_ids", "delta", "layer0_delta", "edge")
"""Kinds of files a version entry can list (``CatalogStore.file``)."""
ARRAY_KINDS = ("vectors", "ids", "users", "user_ids")
"""Kinds of the server-side ``.npy`` arrays (``CatalogStore.load_array``)."""

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_VERSION_DIR_RE = re.compile(r"v(\d{6})")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_MAX_MANIFEST_BYTES = 64 << 20


# names that moved to the build modules, still importable from here (``from reelpack.catalog.store import
# build_catalog``), resolved on first use because the build modules import this one
_MOVED = {
    "build_catalog": "reelpack.catalog.build",
    "load_embeddings": "reelpack.catalog.sources",
    "DEFAULT_CODECS": "reelpack.catalog.pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ================================================================================================
# Names
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


def version_dir(version: int) -> str:
    """The folder name of a version: ``v`` and six digits (``v000003``)."""
    return f"v{version:06d}"


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
            if len(parts) != 2 or parts[0] != version_dir(v) or parts[1] in ("", ".", "..") or "\\" in p:
                raise _bad(catalog, f"version {v}: file {kind!r} has path {p!r} outside {version_dir(v)}/")
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

        When the block raises, whatever this call created is removed again (holding the lock): the lock file,
        and the catalog folder when it holds nothing else (a catalog whose first build failed leaves no trace; a
        ``.work`` folder with shard files of a resumable build stays). A waiter whose lock file was removed so
        takes the lock again on a new one (the lock file's identity is checked after every ``flock``).
        """
        cat_dir = self.catalog_dir(catalog)
        while True:
            fd, made_dir, made_lock = self._open_lock(catalog, cat_dir)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if _same_file(fd, cat_dir / LOCK_NAME):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder removed it while this call waited: lock the new one
        try:
            yield cat_dir
        except BaseException:
            if made_lock:
                _remove_created(cat_dir, made_dir)
            raise
        finally:
            os.close(fd)  # closing the only descriptor of this open file releases the lock

    def _open_lock(self, catalog: str, cat_dir: Path) -> tuple[int, bool, bool]:
        """(descriptor of the lock file, whether the catalog folder and the lock file were created here)."""
        for _ in range(1000):  # a folder or lock file removed between two steps (a failed build): start again
            made_dir = False
            try:
                try:
                    cat_dir.mkdir()
                    made_dir = True
                except FileExistsError:
                    pass
                try:
                    return os.open(cat_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), made_dir, True
                except FileExistsError:
                    return os.open(cat_dir / LOCK_NAME, os.O_RDWR), made_dir, False
            except FileNotFoundError:
                continue
            except OSError as exc:
                if made_dir:
                    with contextlib.suppress(OSError):
                        cat_dir.rmdir()
                raise StoreError(f"cannot lock catalog {catalog!r}: {exc.strerror or exc}") from None
        raise StoreError(f"cannot lock catalog {catalog!r}: its folder keeps disappearing")

    # ------------------------------------------------------------------ reading
    def catalogs(self) -> list[str]:
        """Sorted names of the catalogs that have a manifest."""
        out = []
        for p in self.root.iterdir():
            if _NAME_RE.fullmatch(p.name) and (p / MANIFEST_NAME).is_file():
                out.append(p.name)
        return sorted(out)

    def read_manifest(self, catalog: str) -> dict[str, Any] | None:
        """The parsed manifest of ``catalog``, or ``None`` when it has none yet (a build's view: a catalog that
        does not exist is not an error). StoreError: unreadable or corrupt."""
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
        m = self.read_manifest(catalog)
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

    # ------------------------------------------------------------------ server-side arrays
    def load_array(self, catalog: str, version: int, kind: str, *, mmap: bool = True,
                   check_sha256: bool = True) -> np.ndarray:  # fmt: skip
        """A server-side array of a version (``vectors``, ``ids``, ``users``, ``user_ids``), checked first.

        The file must have the manifest's size and (``check_sha256``, streamed: about 1 s per GB) its SHA-256, a
        readable npy header without pickles, and exactly the bytes that header claims. Memory-mapped
        read-only unless ``mmap`` is false.

        Raises:
            InvalidInputError: another kind. NotFoundError: unknown catalog or version, or no such file (no
            users). StoreError: the file is missing or damaged; the message names the catalog, version and file
            (relative to the version folder), never a server path.
        """
        if kind not in ARRAY_KINDS:
            raise InvalidInputError(f"unknown array kind {kind!r}; expected one of {', '.join(ARRAY_KINDS)}")
        path = self.file(catalog, version, kind)
        entry = self.version_info(catalog, version)
        f = entry["files"][kind]
        what = f"catalog {catalog!r} version {entry['version']}: the {kind} array ({path.name})"
        check = _check_file(path, f, sha256=check_sha256)
        if check != "ok":
            raise StoreError(f"{what} is damaged ({check}); check the store with `reelpack verify-store`")
        try:
            with open(path, "rb") as fh:
                shape, dtype, offset = _npy_header(fh)
        except StoreError as exc:
            raise StoreError(f"{what} is damaged: {exc}; check the store with `reelpack verify-store`") from None
        except OSError as exc:
            raise StoreError(f"{what} cannot be read: {exc.strerror or type(exc).__name__}") from None
        claimed = offset + math.prod(shape) * dtype.itemsize
        if claimed != f["bytes"]:
            raise StoreError(f"{what} is damaged: its npy header claims {claimed} bytes, the file has {f['bytes']}")
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{what} cannot be read: {type(exc).__name__}") from None

    # ------------------------------------------------------------------ verifying
    def verify(self, catalog: str | None = None) -> StoreReport:
        """Check every file of every version (of ``catalog``, else of every catalog with a manifest) against the
        manifest's size and SHA-256 (streamed); a manifest that cannot be read is a ``manifest`` problem.

        Returns:
            a :class:`StoreReport` (``ok`` when every file verifies).

        Raises:
            InvalidInputError: invalid catalog name. NotFoundError: ``catalog`` has no manifest.
            StoreError: the store's root cannot be listed.
        """
        if catalog is not None:
            validate_catalog_name(catalog)
            if not (self.catalog_dir(catalog) / MANIFEST_NAME).is_file():
                raise NotFoundError(f"unknown catalog {catalog!r}")
            names = [catalog]
        else:
            try:
                names = self.catalogs()
            except OSError as exc:
                raise StoreError(f"cannot list the store's catalogs: {exc.strerror or exc}") from None
        checks: list[FileCheck] = []
        for name in names:
            try:
                manifest = self.read_manifest(name)
            except StoreError as exc:
                checks.append(FileCheck(name, None, "manifest", f"{name}/{MANIFEST_NAME}", None, None, "manifest",
                                        str(exc)))  # fmt: skip
                continue
            if manifest is None:  # removed since it was listed
                continue
            for e in sorted(manifest["versions"], key=lambda e: e["version"]):
                for kind, f in e["files"].items():
                    path = self.catalog_dir(name) / f["path"]
                    detail = _check_file(path, f, sha256=True)
                    status = detail.split(":", 1)[0]
                    found = None
                    with contextlib.suppress(OSError):
                        found = path.stat().st_size
                    checks.append(FileCheck(name, e["version"], kind, f"{name}/{f['path']}", f["bytes"], found,
                                            status, detail))  # fmt: skip
        return StoreReport(checks)

    # ------------------------------------------------------------------ deleting
    def delete_version(self, catalog: str, version: int) -> None:
        """Unpublish a version: the manifest is replaced without it first, then its folder is removed.

        Raises:
            NotFoundError: unknown catalog or version.
            InvalidInputError: ``version`` is the latest (publish a newer version first; numbers are never reused).
        """
        v = _version_number(version)
        self.manifest(catalog)  # NotFoundError before the lock: an unknown catalog gets no folder
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
            shutil.rmtree(cat_dir / version_dir(v), ignore_errors=True)


@dataclass(frozen=True)
class FileCheck:
    """One row of :meth:`CatalogStore.verify`.

    Attributes:
        catalog, version, kind: the file's catalog, version and kind (``version`` None, ``kind`` "manifest" for
            a manifest that cannot be read).
        path: relative to the store root (``books/v000002/users.npy``).
        expected_bytes, found_bytes: the manifest's size and the size on disk (None: unknown or missing).
        status: ``ok``, ``missing``, ``size`` (another size), ``sha256`` (same size, other bytes),
            ``unreadable`` or ``manifest``.
        detail: a sentence for people.
    """

    catalog: str
    version: int | None
    kind: str
    path: str
    expected_bytes: int | None
    found_bytes: int | None
    status: str
    detail: str


@dataclass(frozen=True)
class StoreReport:
    """What :meth:`CatalogStore.verify` found: one :class:`FileCheck` per file (and per unreadable manifest)."""

    checks: list[FileCheck]

    @property
    def ok(self) -> bool:
        """Whether every file verified."""
        return all(c.status == "ok" for c in self.checks)

    @property
    def problems(self) -> list[FileCheck]:
        """The rows that did not verify."""
        return [c for c in self.checks if c.status != "ok"]


def _check_file(path: Path, f: dict[str, Any], *, sha256: bool) -> str:
    """``ok``, or what is wrong with a version's file against its manifest entry ``f`` (``missing``,
    ``size: N bytes, the manifest says M``, ``sha256: ...``, ``unreadable: ...``)."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            return "unreadable: not a regular file"
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror or type(exc).__name__}"
    if size != f["bytes"]:
        return f"size: {size} bytes, the manifest says {f['bytes']}"
    if sha256:
        try:
            digest = sha256_file(path)
        except OSError as exc:
            return f"unreadable: {exc.strerror or type(exc).__name__}"
        if digest != f["sha256"]:
            return "sha256: its SHA-256 does not match the manifest"
    return "ok"


def _npy_header(fh: Any) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of the npy file ``fh``; StoreError (no path) for anything unreadable."""
    try:
        return read_npy_header(fh)
    except DataFormatError as exc:
        raise StoreError(f"{exc} (object arrays and other formats are never stored)") from None


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open descriptor ``fd`` is still the file at ``path`` (not removed or replaced)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


def _remove_created(cat_dir: Path, made_dir: bool) -> None:
    """After a failure under the lock: remove the lock file this call created and, when it also created the
    catalog folder, that folder if it holds nothing but the lock file and an empty ``.work`` (never raises)."""
    with contextlib.suppress(OSError):
        if made_dir:
            names = {p.name for p in cat_dir.iterdir()}
            if not names <= {LOCK_NAME, WORK_NAME}:
                return  # something else is there now: keep the folder (and its lock)
            if WORK_NAME in names:
                (cat_dir / WORK_NAME).rmdir()  # OSError when it holds shard files: everything stays
        (cat_dir / LOCK_NAME).unlink()
        if made_dir:
            cat_dir.rmdir()


def _write_manifest(cat_dir: Path, manifest: dict[str, Any]) -> None:
    """Replace ``cat_dir/manifest.json`` atomically (:func:`~reelpack.util.atomic.atomic_write_bytes`: temp file
    with mode 0644, fsync, ``os.replace``, fsync of the folder).

    Once ``os.replace`` has run the new manifest is visible, so nothing after it raises: should only the final
    folder fsync fail, the manifest in place is the new one and this returns normally.
    """
    data = (json.dumps(manifest, indent=1, allow_nan=False) + "\n").encode("utf-8")
    path = cat_dir / MANIFEST_NAME
    try:
        atomic_write_bytes(path, data, mode=0o644)
    except OSError:
        with contextlib.suppress(OSError):
            if path.read_bytes() == data:
                return
        raise


def clean_stale(cat_dir: Path, manifest: dict[str, Any] | None) -> None:
    """Remove staging folders, version folders the manifest does not list and manifest temp files (crashes).

    Called with the catalog lock held.
    """
    listed = set() if manifest is None else {version_dir(e["version"]) for e in manifest["versions"]}
    for p in cat_dir.iterdir():
        orphan = _VERSION_DIR_RE.fullmatch(p.name) is not None and p.name not in listed
        if p.is_dir() and (p.name.startswith(STAGING_PREFIX) or orphan):
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file() and p.name.startswith(f".{MANIFEST_NAME}.") and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)


def latest_entry(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """The entry of the latest version of a parsed manifest (``None`` for no manifest)."""
    if manifest is None:
        return None
    return next(e for e in manifest["versions"] if e["version"] == manifest["latest"])


# ================================================================================================
# Staging and publishing a version
# ================================================================================================
def _file_entry(cat_dir: Path, path: Path) -> dict[str, Any]:
    """A manifest file entry: path relative to the catalog folder, size in bytes, sha256."""
    return {"path": path.relative_to(cat_dir).as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


@dataclass
class StagedVersion:
    """A version being built: ``staging`` (the folder written into), ``final`` (``vNNNNNN``) and whether it has
    been published (see :func:`staged_version`)."""

    cat_dir: Path
    catalog: str
    version: int
    staging: Path
    final: Path
    published: bool = False

    def publish(self, files: dict[str, Path], entry: dict[str, Any], prev_manifest: dict[str, Any] | None) -> None:
        """Publish the complete staging folder as ``final`` (caller holds the lock): chmod 0644 and fsync every
        file, fsync the folder, rename it, fill ``entry["files"]`` and replace the manifest with ``entry`` appended.

        Once this returns the version is visible (``published``); if it raises, :func:`staged_version` removes
        ``staging`` and ``final``.
        """
        for p in files.values():
            os.chmod(p, 0o644)  # temp files (make_delta, index) are created 0600; the service may run as another user
            fsync_file(p)
        fsync_dir(self.staging)
        os.rename(self.staging, self.final)
        fsync_dir(self.cat_dir)
        entry["files"] = {kind: _file_entry(self.cat_dir, self.final / p.name) for kind, p in files.items()}
        versions = [] if prev_manifest is None else list(prev_manifest["versions"])
        manifest = {"catalog": self.catalog, "format": MANIFEST_FORMAT, "latest": entry["version"],
                    "versions": versions + [entry]}  # fmt: skip
        _write_manifest(self.cat_dir, manifest)
        self.published = True  # from here on the version is visible: never remove its folder


@contextlib.contextmanager
def staged_version(cat_dir: Path, catalog: str, version: int) -> Iterator[StagedVersion]:
    """The staging folder of ``version`` (created empty; the caller holds the catalog lock). An ``OSError`` in the
    block becomes a :class:`StoreError`; unless :meth:`StagedVersion.publish` completed, the staging folder and the
    version folder are removed on the way out, so no partial version is ever left behind."""
    stage = StagedVersion(cat_dir, catalog, version, cat_dir / f"{STAGING_PREFIX}{secrets.token_hex(8)}",
                          cat_dir / version_dir(version))  # fmt: skip
    try:
        stage.staging.mkdir()
        yield stage
    except OSError as exc:
        raise StoreError(f"cannot write version {version} of catalog {catalog!r}: {exc.strerror or exc}") from exc
    finally:
        if not stage.published:
            shutil.rmtree(stage.staging, ignore_errors=True)
            shutil.rmtree(stage.final, ignore_errors=True)
