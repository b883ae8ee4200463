"""The web application's SQLite file, `<data_dir>/web.sqlite` (0600): accounts, sessions, cases, batches."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from node.store.errors import StoreError

WEB_DB: Final[str] = "web.sqlite"
_SCHEMA: Final[str] = """
CREATE TABLE IF NOT EXISTS accounts(
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL, office TEXT NOT NULL,
    pw_hash TEXT NOT NULL, failures INTEGER NOT NULL DEFAULT 0, locked_until_ms INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions(
    token_hash BLOB PRIMARY KEY, account_id TEXT, csrf TEXT NOT NULL, created_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cases(
    id TEXT PRIMARY KEY, office TEXT NOT NULL, created_by TEXT NOT NULL, created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL, status TEXT NOT NULL, region TEXT NOT NULL, purpose TEXT NOT NULL,
    applicant TEXT NOT NULL, notes TEXT NOT NULL, members TEXT NOT NULL, consent_id TEXT NOT NULL,
    consent_expires_ms INTEGER NOT NULL, evidence_sha256 TEXT NOT NULL, evidence_file TEXT NOT NULL,
    result TEXT NOT NULL DEFAULT '', record TEXT NOT NULL DEFAULT '', checked_ms INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS cases_office ON cases(office, created_ms);
CREATE TABLE IF NOT EXISTS batches(
    id TEXT PRIMARY KEY, office TEXT NOT NULL, created_by TEXT NOT NULL, created_ms INTEGER NOT NULL,
    purpose TEXT NOT NULL, region TEXT NOT NULL, status TEXT NOT NULL, total INTEGER NOT NULL, done INTEGER NOT NULL,
    incomplete INTEGER NOT NULL, rejected INTEGER NOT NULL, error TEXT NOT NULL, finished_ms INTEGER NOT NULL);
"""


class WebDb:
    """One connection (serialised by a lock) to the web application's SQLite file."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / WEB_DB
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
            os.close(fd)
        os.chmod(self.path, 0o600)
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the web database {self.path}: {exc}") from None
        for suffix in ("-wal", "-shm"):
            extra = Path(str(self.path) + suffix)
            if extra.exists():
                os.chmod(extra, 0o600)
        self._lock = threading.Lock()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def one(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        with self._lock:
            return self._conn.execute(sql, args).fetchone()

    def all(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def close(self) -> None:
        self._conn.close()
