"""The phone's SQLite cache (one file, WAL, ``synchronous=NORMAL``; every update is one transaction).

:class:`ClientCache` holds, for one catalog: complete files (``layer0.rpk`` of the version the phone keeps),
partial downloads chunk by chunk (so a cut download resumes at the byte where it stopped), manifest entries,
layer codecs, user vectors and edge summaries. SQL lives here only; what to download and when is
:mod:`reelpack.device.sync`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reelpack.errors import StoreError

__all__ = ["ClientCache", "SCHEMA_VERSION"]

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    catalog TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL,
    etag TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL,
    complete INTEGER NOT NULL, fetched_at REAL NOT NULL,
    PRIMARY KEY (catalog, version, kind));
CREATE TABLE IF NOT EXISTS partial_downloads (
    catalog TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL,
    etag TEXT, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (catalog, version, kind));
CREATE TABLE IF NOT EXISTS partial_chunks (
    catalog TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL, offset INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (catalog, version, kind, offset));
CREATE TABLE IF NOT EXISTS versions (
    catalog TEXT NOT NULL, version INTEGER NOT NULL, entry TEXT NOT NULL, PRIMARY KEY (catalog, version));
CREATE TABLE IF NOT EXISTS codecs (
    catalog TEXT NOT NULL, version INTEGER NOT NULL, layer INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (catalog, version, layer));
CREATE TABLE IF NOT EXISTS user_vectors (
    catalog TEXT NOT NULL, user_id TEXT NOT NULL, version INTEGER NOT NULL, dim INTEGER NOT NULL,
    vector BLOB NOT NULL, n_updates INTEGER NOT NULL, PRIMARY KEY (catalog, user_id));
CREATE TABLE IF NOT EXISTS edge_summaries (
    catalog TEXT NOT NULL, user_id TEXT NOT NULL, version INTEGER NOT NULL, budget INTEGER NOT NULL,
    lam REAL NOT NULL, data BLOB NOT NULL, fetched_at REAL NOT NULL, PRIMARY KEY (catalog, user_id));
"""


class ClientCache:
    """One catalog's rows in a reelpack SQLite cache file (created if missing).

    Raises:
        StoreError: the file cannot be opened as a reelpack cache, or has another schema version.
    """

    def __init__(self, path: Path, catalog: str) -> None:
        self.path, self.catalog = Path(path), catalog
        self.db = self._open(self.path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise StoreError(f"client cache {path} has schema {row[0]!r}, this reelpack reads {SCHEMA_VERSION!r}")
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(f"client cache {path} cannot be opened as a reelpack SQLite cache: {exc}") from None
        return db

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One atomic transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ---- complete files and versions --------------------------------------------------------------
    def cached_versions(self) -> list[int]:
        """Versions whose ``layer0`` is complete in the cache, ascending."""
        rows = self.db.execute(
            "SELECT version FROM files WHERE catalog = ? AND kind = 'layer0' AND complete = 1 ORDER BY version",
            (self.catalog,),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def cached_file(self, version: int, kind: str = "layer0") -> bytes:
        """The complete cached file; StoreError if absent."""
        row = self.db.execute(
            "SELECT data FROM files WHERE catalog = ? AND version = ? AND kind = ? AND complete = 1",
            (self.catalog, version, kind),
        ).fetchone()
        if row is None:
            raise StoreError(f"the cache holds no complete {kind} of {self.catalog} version {version}")
        return bytes(row[0])

    def drop_files(self, version: int) -> None:
        """Forget the files of ``version`` (a cached file found corrupt)."""
        with self.tx() as db:
            db.execute("DELETE FROM files WHERE catalog = ? AND version = ?", (self.catalog, version))

    def record_version(self, version: int, entry: dict[str, Any]) -> None:
        """Store the manifest's entry of ``version``."""
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO versions (catalog, version, entry) VALUES (?,?,?)",
                       (self.catalog, version, json.dumps(entry)))  # fmt: skip

    def version_entry(self, version: int) -> dict[str, Any]:
        """The stored manifest entry of ``version`` (``{}`` when none)."""
        row = self.db.execute("SELECT entry FROM versions WHERE catalog = ? AND version = ?",
                              (self.catalog, version)).fetchone()  # fmt: skip
        return json.loads(row[0]) if row else {}

    def store_complete(self, version: int, kind: str, data: bytes, sha: str, entry: dict[str, Any],
                       drop_partials: tuple[tuple[int, str], ...] = ()) -> None:  # fmt: skip
        """In one transaction: keep the checked file, its version entry, drop its partials (and ``drop_partials``)
        and every other version's files, codecs and partials (a phone keeps one catalog version)."""
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO files (catalog, version, kind, etag, sha256, size, data, complete, "
                       "fetched_at) VALUES (?,?,?,?,?,?,?,1,?)",
                       (self.catalog, version, kind, sha, sha, len(data), data, time.time()))  # fmt: skip
            db.execute("INSERT OR REPLACE INTO versions (catalog, version, entry) VALUES (?,?,?)",
                       (self.catalog, version, json.dumps(entry)))  # fmt: skip
            for v, k in ((version, kind), *drop_partials):
                db.execute("DELETE FROM partial_chunks WHERE catalog = ? AND version = ? AND kind = ?",
                           (self.catalog, v, k))  # fmt: skip
                db.execute("DELETE FROM partial_downloads WHERE catalog = ? AND version = ? AND kind = ?",
                           (self.catalog, v, k))  # fmt: skip
            # A phone keeps one catalog version: other versions' files, codecs and partials go (also a newer
            # version that the server no longer lists as latest).
            for table in ("files", "partial_chunks", "partial_downloads", "codecs", "versions"):
                db.execute(f"DELETE FROM {table} WHERE catalog = ? AND version != ?", (self.catalog, version))

    # ---- partial downloads ------------------------------------------------------------------------
    def partial_bytes(self, version: int, kind: str = "layer0") -> int:
        """Bytes of an unfinished download of ``kind`` for ``version`` held in the cache (0 if none)."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM partial_chunks WHERE catalog = ? AND version = ? AND kind = ?",
            (self.catalog, version, kind),
        ).fetchone()
        return int(row[0])

    def drop_partial(self, version: int, kind: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM partial_chunks WHERE catalog = ? AND version = ? AND kind = ?",
                       (self.catalog, version, kind))  # fmt: skip
            db.execute("DELETE FROM partial_downloads WHERE catalog = ? AND version = ? AND kind = ?",
                       (self.catalog, version, kind))  # fmt: skip

    def commit_chunk(self, version: int, kind: str, offset: int, data: bytes, etag: str | None) -> None:
        """Keep ``data`` received at ``offset`` of a partial download (and the ETag it came with)."""
        if not data:
            return
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO partial_chunks (catalog, version, kind, offset, data) "
                       "VALUES (?,?,?,?,?)",
                       (self.catalog, version, kind, offset, data))  # fmt: skip
            db.execute("UPDATE partial_downloads SET etag = ? WHERE catalog = ? AND version = ? AND kind = ?",
                       (etag, self.catalog, version, kind))  # fmt: skip

    def partial_state(self, version: int, kind: str, sha: str, size: int) -> tuple[int, str | None]:
        """(bytes held, etag) of the partial download, starting a fresh one if absent or for another file."""
        row = self.db.execute(
            "SELECT etag, sha256, size FROM partial_downloads WHERE catalog = ? AND version = ? AND kind = ?",
            (self.catalog, version, kind),
        ).fetchone()
        if row is not None and (row[1] != sha or int(row[2]) != size):
            self.drop_partial(version, kind)
            row = None
        if row is None:
            with self.tx() as db:
                db.execute("INSERT INTO partial_downloads (catalog, version, kind, etag, sha256, size) "
                           "VALUES (?,?,?,?,?,?)",
                           (self.catalog, version, kind, None, sha, size))  # fmt: skip
            return 0, None
        chunks = self.db.execute(
            "SELECT offset, LENGTH(data) FROM partial_chunks WHERE catalog = ? AND version = ? AND kind = ? "
            "ORDER BY offset",
            (self.catalog, version, kind),
        ).fetchall()
        held = 0
        for off, length in chunks:
            if int(off) != held:  # not contiguous (cannot happen through this class): start again
                self.drop_partial(version, kind)
                return self.partial_state(version, kind, sha, size)
            held += int(length)
        return held, row[0]

    def assemble(self, version: int, kind: str) -> bytes:
        """The partial download's chunks joined in order."""
        rows = self.db.execute(
            "SELECT data FROM partial_chunks WHERE catalog = ? AND version = ? AND kind = ? ORDER BY offset",
            (self.catalog, version, kind),
        ).fetchall()
        return b"".join(bytes(r[0]) for r in rows)

    # ---- codecs, user vectors, edge summaries -----------------------------------------------------
    def codec_bytes(self, version: int, layer: int) -> bytes | None:
        row = self.db.execute("SELECT data FROM codecs WHERE catalog = ? AND version = ? AND layer = ?",
                              (self.catalog, version, layer)).fetchone()  # fmt: skip
        return None if row is None else bytes(row[0])

    def put_codec(self, version: int, layer: int, data: bytes) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO codecs (catalog, version, layer, data) VALUES (?,?,?,?)",
                       (self.catalog, version, layer, data))  # fmt: skip

    def user_vector_row(self, user_id: str) -> tuple[int, int, bytes, int] | None:
        """(version, dim, float32 LE vector bytes, n_updates) of the cached user vector, or None."""
        row = self.db.execute("SELECT version, dim, vector, n_updates FROM user_vectors WHERE catalog = ? AND "
                              "user_id = ?", (self.catalog, user_id)).fetchone()  # fmt: skip
        return None if row is None else (int(row[0]), int(row[1]), bytes(row[2]), int(row[3]))

    def put_user_vector(self, user_id: str, version: int, dim: int, vector: bytes, n_updates: int) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO user_vectors (catalog, user_id, version, dim, vector, n_updates) "
                       "VALUES (?,?,?,?,?,?)",
                       (self.catalog, user_id, version, dim, vector, n_updates))  # fmt: skip

    def edge_summary_row(self, user_id: str) -> tuple[int, int, float, bytes] | None:
        """(version, budget, lam, summary bytes) of the cached edge summary, or None."""
        row = self.db.execute("SELECT version, budget, lam, data FROM edge_summaries WHERE catalog = ? AND "
                              "user_id = ?", (self.catalog, user_id)).fetchone()  # fmt: skip
        return None if row is None else (int(row[0]), int(row[1]), float(row[2]), bytes(row[3]))

    def put_edge_summary(self, user_id: str, version: int, budget: int, lam: float, data: bytes) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO edge_summaries (catalog, user_id, version, budget, lam, data, "
                       "fetched_at) VALUES (?,?,?,?,?,?,?)",
                       (self.catalog, user_id, version, budget, lam, data, time.time()))  # fmt: skip
