"""The coordinator's locator rows in `locators.sqlite` (WAL; the schema and file of before, unchanged)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from node.store.errors import StoreError
from node.store.interfaces import LocatorSet

LOCATORS_FILE: Final[str] = "locators.sqlite"
_SCHEMA: Final[str] = """
CREATE TABLE IF NOT EXISTS shards(
    province TEXT NOT NULL, epoch INTEGER NOT NULL, generation INTEGER NOT NULL, shard INTEGER NOT NULL,
    shard_bits INTEGER NOT NULL, subject_count INTEGER NOT NULL, shard_count INTEGER NOT NULL, filter BLOB NOT NULL,
    PRIMARY KEY (province, epoch, generation, shard)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS active(
    province TEXT NOT NULL, epoch INTEGER NOT NULL, generation INTEGER NOT NULL, subject_count INTEGER NOT NULL,
    PRIMARY KEY (province, epoch)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""


class SqliteLocators:
    """node.store.interfaces.LocatorStore on one SQLite file shared by the coordinator's processes on a host."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open locators {self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def put_shard(self, province: str, epoch: int, generation: int, shard: int, shard_bits: int,
                  subject_count: int, shard_count: int, filter_bytes: bytes, *, oldest_epoch: int,
                  max_pending: int) -> str:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    outcome = put(self._db, (province, epoch), generation, shard, shard_bits, subject_count,
                                  shard_count, filter_bytes, oldest_epoch, max_pending)
                    self._db.execute("COMMIT" if outcome != "mismatch" else "ROLLBACK")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"locators {self.path}: {exc}") from None
        return outcome

    def read(self, version: int, known: Mapping[tuple[str, int], int]) -> tuple[int, list[LocatorSet]] | None:
        with self._lock:
            try:
                self._db.execute("BEGIN")
                try:
                    return read(self._db, version, known)
                finally:
                    self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"locators {self.path}: {exc}") from None


def put(db: sqlite3.Connection, key: tuple[str, int], generation: int, shard: int, shard_bits: int, subject_count: int,
        shard_count: int, filter_bytes: bytes, oldest_epoch: int, max_pending: int) -> str:
    """The put_shard decision inside the caller's write transaction."""
    row = db.execute("SELECT generation FROM active WHERE province = ? AND epoch = ?", key).fetchone()
    in_force = row[0] if row is not None else 0
    if generation < in_force:
        return "older"
    if generation == in_force:
        return "in_force"  # a shard of the set in force, sent again
    db.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               (*key, generation, shard, shard_bits, subject_count, shard_count, filter_bytes))
    # Generations still arriving side by side (e.g. from a node's several workers) each complete on
    # their own; beyond the newest max_pending, older unfinished ones are dropped (bounded storage).
    db.execute("DELETE FROM shards WHERE province = ? AND epoch = ? AND generation != ? AND generation NOT IN "
               "(SELECT DISTINCT generation FROM shards WHERE province = ? AND epoch = ? AND generation != ?"
               " ORDER BY generation DESC LIMIT ?)", (*key, in_force, *key, in_force, max_pending))
    shards, total, claims = db.execute(
        "SELECT count(*), sum(shard_count), count(DISTINCT subject_count) FROM shards"
        " WHERE province = ? AND epoch = ? AND generation = ?", (*key, generation)).fetchone()
    if shards < 1 << shard_bits:
        return "pending"
    if claims != 1 or total != subject_count:
        return "mismatch"
    db.execute("INSERT OR REPLACE INTO active VALUES (?, ?, ?, ?)", (*key, generation, subject_count))
    db.execute("DELETE FROM shards WHERE province = ? AND epoch = ? AND generation < ?", (*key, generation))
    db.execute("DELETE FROM shards WHERE epoch < ?", (oldest_epoch,))
    db.execute("DELETE FROM active WHERE epoch < ?", (oldest_epoch,))
    db.execute("INSERT INTO meta VALUES ('version', 1) ON CONFLICT(key) DO UPDATE SET value = value + 1")
    return "complete"


def read(db: sqlite3.Connection, version: int, known: Mapping[tuple[str, int], int]) -> tuple[int, list[LocatorSet]] | None:
    """LocatorStore.read inside the caller's read transaction."""
    row = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
    now = row[0] if row else 0
    if now == version:
        return None
    sets = []
    for province, epoch, generation, count in db.execute("SELECT * FROM active").fetchall():
        shards = None
        if known.get((province, epoch)) != generation:
            shards = tuple((b, n, bytes(f)) for b, n, f in db.execute(
                "SELECT shard_bits, shard_count, filter FROM shards WHERE province = ? AND epoch = ? AND generation = ?"
                " ORDER BY shard", (province, epoch, generation)).fetchall())
        sets.append(LocatorSet(province, epoch, generation, count, shards))
    return now, sets
