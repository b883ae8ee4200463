"""Seen request nonces, persisted: a restart does not reopen the replay window."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from node.store.errors import StoreError

_PURGE_EVERY: Final[int] = 1000


class NonceStore:
    """Remembers (requester, nonce) pairs for twice the clock window; SQLite in WAL mode.

    A nonce is recorded before the request is answered; a request whose issue time is outside
    the clock window is refused before it gets here, so older nonces can be forgotten.
    """

    def __init__(self, path: Path, *, window_ms: int) -> None:
        self.path = path
        self.window_ms = window_ms
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS nonces (key BLOB PRIMARY KEY, issued_at_ms INTEGER NOT NULL) WITHOUT ROWID")
            self._db.execute("CREATE INDEX IF NOT EXISTS nonces_by_time ON nonces(issued_at_ms)")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open nonce store {path}: {exc}") from None
        self._inserts = 0
        self._batching = False

    def remember(self, requester: str, nonce: bytes, issued_at_ms: int) -> bool:
        """Record a nonce; False when this requester already used it."""
        key = requester.encode() + b"\x00" + nonce
        if self._batching:  # inside transaction(): same thread, lock already taken by the batch's owner
            cursor = self._db.execute("INSERT OR IGNORE INTO nonces (key, issued_at_ms) VALUES (?, ?)", (key, issued_at_ms))
            self._inserts += 1
            return cursor.rowcount == 1
        with self._lock:
            cursor = self._db.execute("INSERT OR IGNORE INTO nonces (key, issued_at_ms) VALUES (?, ?)", (key, issued_at_ms))
            fresh = cursor.rowcount == 1
            self._inserts += 1
            self._purge_if_due()
        return fresh

    def _purge_if_due(self) -> None:
        """Forget nonces older than twice the clock window, every _PURGE_EVERY inserts (lock held)."""
        if self._inserts >= _PURGE_EVERY:
            self._inserts = 0
            horizon = int(time.time() * 1000) - 2 * self.window_ms
            self._db.execute("DELETE FROM nonces WHERE issued_at_ms < ?", (horizon,))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Record many nonces in one transaction (a batch of queries); duplicates are still seen at once."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._batching = True
        try:
            yield
        finally:
            with self._lock:
                self._batching = False
                self._purge_if_due()
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
