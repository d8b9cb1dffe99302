"""The one atomic file writer: temp file in the same folder, fsync, optional mode, rename, directory fsync.

Every module that writes a file a reader may open (packs, the store's manifest and version folders, the
HNSW index, the edge catalog, the embedding cache, reports) goes through :func:`atomic_path` /
:func:`atomic_write_bytes`, or through :func:`fsync_file` and :func:`fsync_dir` when it renames a whole
folder. A failure raises (``OSError``); the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_file", "fsync_dir"]


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data to disk (raises ``OSError`` on failure)."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder so that a rename or a new entry in it is durable (raises ``OSError`` on failure).

    On Windows, where folders cannot be opened, this is a no-op: ``os.replace`` is durable there already.
    """
    if sys.platform == "win32":  # pragma: no cover - POSIX CI
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for the caller (or a library that writes by path) to fill; on a
    clean exit the file is fsynced (and given ``mode`` when set), renamed over ``path`` and the folder is
    fsynced, so readers see the old file or the whole new one, never a part, also after a crash.

    The temporary file (``.NAME.*.tmp``, created 0600 by ``mkstemp``) is removed if anything fails.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    path = Path(path)
    with atomic_path(path, mode) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, mode: int | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode)
