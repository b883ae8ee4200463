"""The probing ledger: which budgeted cuts each requester used per consent and item; durable, never decremented.

One row per (requester, consent id, item, cut) in ``<data_dir>/probes.sqlite`` (WAL), shared by
every worker process on the host (`Storage.probes()`; on PostgreSQL node.store.postgres.probes keeps the
same rows in the database, shared by every replica host). A cut is stored only as a keyed digest (HMAC-SHA-256 under a key the node
derives from its sealing key, not kept in the file), so the file holds no operand. Rows are
only ever added: a budget, once used, stays used.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

from node.store.errors import StoreError

PROBES_DB: Final[str] = "probes.sqlite"
_DIGEST_BYTES: Final[int] = 16
_CACHE_MAX: Final[int] = 100_000

_SCHEMA: Final[str] = """
CREATE TABLE IF NOT EXISTS probes (
    requester TEXT NOT NULL, consent_id TEXT NOT NULL, item TEXT NOT NULL, cut BLOB NOT NULL,
    at_ms INTEGER NOT NULL, PRIMARY KEY (requester, consent_id, item, cut)) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS probes_no_delete BEFORE DELETE ON probes
    BEGIN SELECT RAISE(ABORT, 'probe uses are never removed'); END;
CREATE TRIGGER IF NOT EXISTS probes_no_update BEFORE UPDATE ON probes
    BEGIN SELECT RAISE(ABORT, 'probe uses are never changed'); END;
"""

Key = tuple[str, str, str, bytes]


def cut_digest(key: bytes, requester: str, consent_id: str, item: str, cut: str) -> bytes:
    """The stored form of one cut: a keyed digest (every backend stores this, never the operand)."""
    message = "\x00".join((requester, consent_id, item, cut)).encode()
    return hmac.digest(key, message, "sha256")[:_DIGEST_BYTES]


def ledger_key(secret: bytes) -> bytes:
    """The key cuts are digested under, derived from a node secret (its sealing key) kept outside the file."""
    return hmac.new(secret, b"hedui/v1/probe-ledger", hashlib.sha256).digest()


class ProbeLedger:
    """Counts distinct budgeted cuts per (requester, consent, item) and admits a query's all or none."""

    def __init__(self, path: Path, *, key: bytes) -> None:
        self.path = path
        self._key = key
        self._lock = threading.Lock()
        self._known: set[Key] = set()  # uses known to be committed (rows are never removed)
        self._pending: list[Key] = []
        self._batching = False
        self._open_tx = False
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # owner only (its -wal and -shm follow)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise StoreError(f"cannot open probing ledger {path}: {exc}") from None

    def _digest(self, requester: str, consent_id: str, item: str, cut: str) -> bytes:
        return cut_digest(self._key, requester, consent_id, item, cut)

    def admit(self, requester: str, consent_id: str, cuts: Mapping[str, str], budget: int) -> tuple[str | None, int]:
        """Record `cuts` (item -> cut) as uses, all or none.

        Returns (None, number of new uses) when every item stays within `budget` distinct cuts,
        else (the first item that would exceed it, 0) and records nothing.
        """
        keys = [(requester, consent_id, item, self._digest(requester, consent_id, item, c)) for item, c in sorted(cuts.items())]
        if all(k in self._known for k in keys):
            return None, 0  # asked before, and committed: free, no database access
        if self._batching:  # inside transaction(): same thread, lock taken by the batch's owner
            try:
                return self._admit(keys, budget)
            except sqlite3.Error as exc:
                raise StoreError(f"probing ledger {self.path}: {exc}") from None
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                verdict = self._admit(keys, budget)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._pending.clear()
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(f"probing ledger {self.path}: {exc}") from None
            self._flush()
        return verdict

    def _admit(self, keys: list[Key], budget: int) -> tuple[str | None, int]:
        """Count and insert (the write lock is held)."""
        if self._batching and not self._open_tx:
            self._db.execute("BEGIN IMMEDIATE")
            self._open_tx = True
        requester, consent_id = keys[0][0], keys[0][1]
        items = [k[2] for k in keys]
        used: dict[str, set[bytes]] = {item: set() for item in items}
        for item, digest in self._db.execute(
                f"SELECT item, cut FROM probes WHERE requester = ? AND consent_id = ? AND item IN ({','.join('?' * len(items))})",
                (requester, consent_id, *items)):
            used[item].add(digest)
        new = [k for k in keys if k[3] not in used[k[2]]]
        for key in new:
            if len(used[key[2]]) + 1 > budget:
                return key[2], 0
        now_ms = int(time.time() * 1000)
        self._db.executemany("INSERT INTO probes (requester, consent_id, item, cut, at_ms) VALUES (?, ?, ?, ?, ?)",
                             [(*k, now_ms) for k in new])
        self._pending.extend(keys)
        return None, len(new)

    def _flush(self) -> None:
        """Remember committed uses (lock held)."""
        if len(self._known) + len(self._pending) > _CACHE_MAX:
            self._known.clear()
        self._known.update(self._pending)
        self._pending.clear()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Admit many queries (a batch) in one transaction, begun at the first budgeted check."""
        with self._lock:
            self._batching = True
        try:
            yield
        finally:
            with self._lock:
                self._batching = False
                if self._open_tx:
                    self._open_tx = False
                    try:
                        self._db.execute("COMMIT")
                    except sqlite3.Error as exc:
                        self._pending.clear()
                        raise StoreError(f"probing ledger {self.path}: {exc}") from None
                self._flush()

    def uses(self, requester: str, consent_id: str, item: str) -> int:
        """How many distinct budgeted cuts `requester` used on `item` under `consent_id`."""
        with self._lock:
            (n,) = self._db.execute("SELECT count(*) FROM probes WHERE requester = ? AND consent_id = ? AND item = ?",
                                    (requester, consent_id, item)).fetchone()
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()
