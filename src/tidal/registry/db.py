"""The registry's SQLite metadata: schema, connections and write transactions.

One connection per operation (so the registry is safe across ``fork`` and threads), WAL mode
(readers never block the writer), and ``BEGIN IMMEDIATE`` for every write: the write lock is
taken before anything is read, so two processes never compute the same next version. Other
writers wait up to ``timeout`` seconds (SQLite's busy timeout) instead of failing.

SQLite locking needs a local (or otherwise POSIX-locking) file system: not NFS, not S3.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["Database", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1

_TABLES = [
    """CREATE TABLE IF NOT EXISTS models (
        name TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        deploy_seq INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS versions (
        name TEXT NOT NULL REFERENCES models(name),
        version INTEGER NOT NULL,
        flavor TEXT NOT NULL,
        signature TEXT NOT NULL,
        sha256 TEXT NOT NULL UNIQUE,
        metrics TEXT NOT NULL,
        params TEXT NOT NULL,
        tags TEXT NOT NULL,
        lineage TEXT NOT NULL,
        created_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
        PRIMARY KEY (name, version))""",
    """CREATE TABLE IF NOT EXISTS aliases (
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        version INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (name, alias),
        FOREIGN KEY (name, version) REFERENCES versions(name, version))""",
    """CREATE TABLE IF NOT EXISTS alias_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        old_version INTEGER,
        new_version INTEGER,
        action TEXT NOT NULL,
        reason TEXT NOT NULL,
        time REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS alias_history_by_alias ON alias_history (name, alias, id)",
    """CREATE TABLE IF NOT EXISTS deployments (
        name TEXT NOT NULL REFERENCES models(name),
        seq INTEGER NOT NULL,
        mode TEXT NOT NULL,
        primary_version INTEGER NOT NULL,
        secondary_version INTEGER,
        share REAL NOT NULL,
        reason TEXT NOT NULL,
        time REAL NOT NULL,
        record BLOB NOT NULL,
        published INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (name, seq))""",
]


class Database:
    """``registry.db``: created with its tables on first use, by whichever process comes first."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._init()

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database's write lock from its first statement."""
        conn = self.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for several queries."""
        conn = self.connect()
        try:
            conn.execute("BEGIN")
            yield conn
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _init(self) -> None:
        conn = self.connect()
        try:
            self._wal(conn)
            conn.execute("BEGIN IMMEDIATE")
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found > SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                raise RuntimeError(f"{self.path}: registry schema {found} is newer than this tidal's "
                                   f"({SCHEMA_VERSION}); upgrade tidal")
            for statement in _TABLES:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL once (it persists in the file); another process may hold the lock meanwhile."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
