"""Seen request nonces on SQLite (node.store.interfaces.NonceStore): a restart does not reopen the replay window."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from node.store.errors import StoreError

_PURGE_EVERY: Final[int] = 1000
_SELECT_CHUNK: Final[int] = 500


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
        #: The thread inside transaction() (it holds the lock for the whole transaction), else None. Only
        #: that thread writes without taking the lock; any other (e.g. the coordinator's consent
        #: registration in a worker thread) waits for the lock, so no two threads share the open transaction.
        self._batching: int | None = None

    def remember(self, requester: str, nonce: bytes, issued_at_ms: int) -> bool:
        """Record a nonce; False when this requester already used it."""
        try:
            return self._remember(requester, nonce, issued_at_ms)
        except sqlite3.Error as exc:
            raise StoreError(f"nonce store {self.path}: {type(exc).__name__}: {exc}") from None

    def _remember(self, requester: str, nonce: bytes, issued_at_ms: int) -> bool:
        key = requester.encode() + b"\x00" + nonce
        if self._batching == threading.get_ident():  # inside this thread's transaction(): the lock is held
            cursor = self._db.execute("INSERT OR IGNORE INTO nonces (key, issued_at_ms) VALUES (?, ?)", (key, issued_at_ms))
            self._inserts += 1
            return cursor.rowcount == 1
        with self._lock:
            cursor = self._db.execute("INSERT OR IGNORE INTO nonces (key, issued_at_ms) VALUES (?, ?)", (key, issued_at_ms))
            fresh = cursor.rowcount == 1
            self._inserts += 1
            self._purge_if_due()
        return fresh

    def remember_many(self, nonces: Sequence[tuple[str, bytes, int]]) -> list[bool]:
        """Record many (requester, nonce, issued_at_ms) in one write; per nonce, False when already used
        (before, or earlier in `nonces`). One row per nonce, as `remember` writes it."""
        try:
            return self._remember_many(nonces)
        except sqlite3.Error as exc:
            raise StoreError(f"nonce store {self.path}: {type(exc).__name__}: {exc}") from None

    def _remember_many(self, nonces: Sequence[tuple[str, bytes, int]]) -> list[bool]:
        keys = [requester.encode() + b"\x00" + nonce for requester, nonce, _ in nonces]
        if not keys:
            return []
        if self._batching == threading.get_ident():  # inside this thread's transaction(): lock and BEGIN IMMEDIATE held
            return self._record_all(keys, nonces)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                fresh = self._record_all(keys, nonces)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._purge_if_due()
            self._db.execute("COMMIT")
        return fresh

    def _record_all(self, keys: list[bytes], nonces: Sequence[tuple[str, bytes, int]]) -> list[bool]:
        """Inside a write transaction: which keys are new (one SELECT per 500), then one INSERT per 500."""
        seen: set[bytes] = set()
        for start in range(0, len(keys), _SELECT_CHUNK):
            chunk = keys[start:start + _SELECT_CHUNK]
            sql = f"SELECT key FROM nonces WHERE key IN ({','.join('?' * len(chunk))})"
            seen.update(k for (k,) in self._db.execute(sql, chunk))
        fresh: list[bool] = []
        rows: list[tuple[bytes, int]] = []
        for key, (_, _, issued_at_ms) in zip(keys, nonces, strict=True):
            new = key not in seen
            fresh.append(new)
            if new:
                seen.add(key)
                rows.append((key, issued_at_ms))
        for start in range(0, len(rows), _SELECT_CHUNK):  # one INSERT statement per 500 new nonces
            chunk = rows[start:start + _SELECT_CHUNK]
            sql = f"INSERT OR IGNORE INTO nonces (key, issued_at_ms) VALUES {','.join(['(?, ?)'] * len(chunk))}"
            cursor = self._db.execute(sql, [v for row in chunk for v in row])
            if cursor.rowcount != len(chunk):  # cannot happen under the write lock; fail closed if it does
                raise StoreError("nonce store changed while a batch was recorded")
            self._inserts += len(chunk)
        return fresh

    def _purge_if_due(self) -> None:
        """Forget nonces older than twice the clock window, every _PURGE_EVERY inserts (lock held)."""
        if self._inserts >= _PURGE_EVERY:
            self._inserts = 0
            horizon = int(time.time() * 1000) - 2 * self.window_ms
            self._db.execute("DELETE FROM nonces WHERE issued_at_ms < ?", (horizon,))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Record many nonces in one transaction (a batch of queries); duplicates are still seen at once.

        The lock is held for the whole transaction: another thread's `remember` waits for its end
        instead of writing into it (and reading another thread's row count)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"nonce store {self.path}: {type(exc).__name__}: {exc}") from None
            self._batching = threading.get_ident()
            try:
                yield
            finally:
                self._batching = None
                try:
                    self._purge_if_due()
                finally:
                    self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the connection; idempotent (a later use raises StoreError)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
