"""The hash chain (node.store.interfaces.Chain) on SQLite: the consent ledger, every member's audit log."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from node.store.chainformat import (
    BROKEN,
    CHECKPOINT,
    GENESIS,
    HASH_BYTES,
    MISMATCH,
    Encoded,
    Entry,
    VerifyReport,
    check_at_ms,
    check_expect_head,
    check_table,
    encode_item,
    entry_hash,
    link,
    prefix,
    verify_rows,
)
from node.store.errors import StoreCorrupt, StoreError
from node.store.interfaces import PrefixRemoval

__all__ = [
    "BROKEN", "CHECKPOINT", "GENESIS", "HASH_BYTES", "MISMATCH", "Entry", "HashChain", "VerifyReport", "entry_hash",
]  # fmt: skip

_BUSY_TIMEOUT_S: Final[float] = 30.0

_COLUMNS: Final[tuple[str, ...]] = (
    "idx", "at_ms", "kind", "key", "payload", "prev_hash", "hash",
)  # fmt: skip
_SELECT: Final[str] = "SELECT idx, at_ms, kind, key, payload, prev_hash, hash FROM {t}"
_SCHEMA: Final[str] = f"""
CREATE TABLE IF NOT EXISTS {{t}}(
    idx INTEGER PRIMARY KEY CHECK (idx >= 1),
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL,
    prev_hash BLOB NOT NULL CHECK (length(prev_hash) = {HASH_BYTES}),
    hash BLOB NOT NULL CHECK (length(hash) = {HASH_BYTES})
);
CREATE INDEX IF NOT EXISTS {{t}}_key ON {{t}}(key)
"""
# The guards: name suffix -> statement. The hash chain is what detects tampering; these only
# stop an accidental UPDATE/DELETE (or a skipping INSERT) made through SQL.
_GUARDS: Final[dict[str, str]] = {
    "no_update": """
CREATE TRIGGER IF NOT EXISTS {t}_no_update BEFORE UPDATE ON {t}
BEGIN SELECT RAISE(ABORT, 'append-only'); END""",
    "no_delete": """
CREATE TRIGGER IF NOT EXISTS {t}_no_delete BEFORE DELETE ON {t}
BEGIN SELECT RAISE(ABORT, 'append-only'); END""",
    "append_next": f"""
CREATE TRIGGER IF NOT EXISTS {{t}}_append_next BEFORE INSERT ON {{t}}
WHEN NEW.idx IS NOT (SELECT coalesce(max(idx), 0) + 1 FROM {{t}})
  OR NEW.prev_hash IS NOT coalesce(
       (SELECT hash FROM {{t}} WHERE idx = NEW.idx - 1), zeroblob({HASH_BYTES}))
BEGIN SELECT RAISE(ABORT, 'append-only: idx must be max(idx)+1 and prev_hash the head hash');
END""",
}
# A prunable chain's anchor (first retained idx, its prev_hash) lives in `{t}_meta`, row 'anchor':
# {"idx": n, "prev": hex}; absent = (1, GENESIS).
_META: Final[str] = "CREATE TABLE IF NOT EXISTS {t}_meta(name TEXT PRIMARY KEY, value TEXT NOT NULL)"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class HashChain:
    """One hash chain in one SQLite table; safe to use from many threads.

    Writes go through one writer connection under a lock, each in an IMMEDIATE transaction
    that reads the head, so several processes may append to the same file. Point reads use a
    connection per thread; `entries()` and `verify()` stream on a connection of their own, so
    a half-consumed iterator never pins other reads to an old snapshot.
    """

    def __init__(self, path: Path, *, table: str = "entries",
                 on_commit: Callable[[Entry], None] | None = None, prunable: bool = False) -> None:
        """Open (creating if needed) the chain `table` in the SQLite file `path`.

        `on_commit(last_entry)` runs after each committed append, under this object's write lock
        (the consent ledger records its head outside SQLite this way, see node.store.sqlite.ledger).
        `prunable` also creates the `<table>_meta` table that records the anchor.
        """
        self._prunable = prunable
        self._setup(Path(path), check_table(table), readonly=False)
        self.restored_guards: tuple[str, ...] = ()
        self._on_commit = on_commit
        self._writer: sqlite3.Connection | None = self._open_writer()

    @classmethod
    def open_readonly(cls, path: Path, table: str = "entries") -> HashChain:
        """Open an existing chain read-only (SQLite `mode=ro`), e.g. for the verifier CLI.

        Works on a file whose guards (triggers) were dropped; see `missing_guards()`.
        """
        self = cls.__new__(cls)
        self._prunable = False
        self._setup(Path(path), check_table(table), readonly=True)
        self.restored_guards = ()
        self._on_commit = None
        self._writer = None
        if not self.path.is_file():
            raise StoreError(f"chain file {self.path} does not exist")
        try:
            self._check_schema(self._reader())
        except BaseException:
            self.close()
            raise
        return self

    def _setup(self, path: Path, table: str, *, readonly: bool) -> None:
        self.path = path
        self.table = table
        self.readonly = readonly
        self._prefix = prefix(table)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._lock = threading.Lock()  # guards _readers and _closed
        self._write_lock = threading.Lock()
        self._closed = False
        self._wal_pending = False  # a prefix was removed and the WAL not yet truncated (a reader held it)
        self._insert_sql = (
            f"INSERT INTO {table}(idx, at_ms, kind, key, payload, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)"
        )

    @property
    def location(self) -> str:
        return str(self.path)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection; the chain cannot be used afterwards. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open_writer(self) -> sqlite3.Connection:
        """The writer connection: WAL, synchronous=FULL, secure_delete=ON, schema ensured."""
        self._create_file()
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,  # used only under _write_lock
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open chain {self.path}: {exc}") from None
        try:
            if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
                raise StoreError(f"chain {self.path} cannot use WAL journal mode")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")
            self._ensure_schema(conn)
        except sqlite3.OperationalError as exc:  # locked, read-only file, I/O error, ...
            conn.close()
            raise StoreError(f"cannot open chain {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:  # e.g. "file is not a database"
            conn.close()
            raise StoreCorrupt(f"{self.path} is not a usable chain file: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_file(self) -> None:
        """Create the file private before SQLite does (its -wal and -shm copy the mode)."""
        if self.path.exists():
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StoreError(f"cannot create chain {self.path}: {exc.strerror}") from None

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        """Create the table, index and guards as needed; re-install guards someone dropped."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            missing: tuple[str, ...] = ()
            if self._has_table(conn):
                self._check_schema(conn)
                missing = self._missing_guards(conn)
            for statement in _SCHEMA.format(t=self.table).split(";"):
                conn.execute(statement)
            for statement in _GUARDS.values():
                conn.execute(statement.format(t=self.table))
            if self._prunable:
                conn.execute(_META.format(t=self.table))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self.restored_guards = missing

    def _has_table(self, conn: sqlite3.Connection) -> bool:
        row = conn.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (self.table,)
        ).fetchone()
        return row is not None

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        """Raise StoreCorrupt unless the table exists with exactly the chain's columns."""
        try:
            columns = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({self.table})"))
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(f"{self.path} is not a usable chain file: {exc}") from None
        if not columns:
            raise StoreCorrupt(f"{self.path} has no chain table {self.table!r}")
        if columns != _COLUMNS:
            raise StoreCorrupt(f"{self.path}: table {self.table!r} is not a hash chain")

    def _missing_guards(self, conn: sqlite3.Connection) -> tuple[str, ...]:
        names = {
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?",
                (self.table,),
            )
        }
        return tuple(n for n in (f"{self.table}_{g}" for g in _GUARDS) if n not in names)

    def _connect_reader(self) -> sqlite3.Connection:
        """A new read-only connection (query_only, or `mode=ro` for open_readonly)."""
        try:
            if self.readonly:
                uri = self.path.resolve().as_uri() + "?mode=ro"
                conn = sqlite3.connect(
                    uri,
                    uri=True,
                    timeout=_BUSY_TIMEOUT_S,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                conn = sqlite3.connect(
                    self.path,
                    timeout=_BUSY_TIMEOUT_S,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open chain {self.path} for reading: {exc}") from None
        return conn

    def _reader(self) -> sqlite3.Connection:
        """This thread's reader for point queries (closed by close())."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        with self._lock:
            if self._closed:
                raise StoreError("chain is closed")
            conn = self._connect_reader()
            self._readers.append(conn)
        self._local.conn = conn
        return conn

    def _stream(self, sql: str, params: Sequence[object]) -> Generator[tuple[Any, ...], None, None]:
        """Rows of one SELECT on a connection of its own, closed when the stream ends."""
        if self._closed:
            raise StoreError("chain is closed")
        conn = self._connect_reader()
        try:
            yield from conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"reading chain {self.table} failed: {exc}") from None
        finally:
            conn.close()

    # -- writes ----------------------------------------------------------------------------

    def append(self, kind: str, key: str, payload: bytes, *, at_ms: int | None = None) -> Entry:
        """Append one entry durably (committed and fsynced) and return it."""
        return self._append([encode_item(kind, key, payload)], at_ms)[0]

    def append_many(
        self, items: Sequence[tuple[str, str, bytes]], *, at_ms: int | None = None
    ) -> list[Entry]:
        """Append several entries in one transaction (all or none); they share one at_ms."""
        return self._append([encode_item(*item) for item in items], at_ms)

    def append_next(
        self,
        build: Callable[[tuple[int, bytes]], Sequence[tuple[str, str, bytes]]],
        *,
        at_ms: int | None = None,
    ) -> list[Entry]:
        """Append the entries `build(head)` returns, in one transaction that holds the write lock.

        `head` is the (index, hash) the entries follow, read inside that transaction, so `build`
        may write the index its entries will get into their payloads (or decide to append
        nothing) and no other process can append in between.
        """
        def items(head: tuple[int, bytes]) -> list[Encoded]:
            return [encode_item(*item) for item in build(head)]

        return self._append(items, at_ms)

    def _append(
        self,
        items: list[Encoded] | Callable[[tuple[int, bytes]], list[Encoded]],
        at_ms: int | None,
    ) -> list[Entry]:
        at_ms = _now_ms() if at_ms is None else check_at_ms(at_ms)
        if not items:
            return []
        with self._write_lock:
            conn = self._writable()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    head = self._head(conn)
                    batch = items(head) if callable(items) else items
                    entries = link(self._prefix, head, batch, at_ms)
                    conn.executemany(self._insert_sql, (_row(e) for e in entries))
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
                if self._wal_pending:
                    self._truncate_wal(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"append to chain {self.table} failed: {exc}") from None
            if entries and self._on_commit is not None:
                self._on_commit(entries[-1])
        return entries

    def _truncate_wal(self, conn: sqlite3.Connection) -> None:
        """Checkpoint and truncate the WAL so removed entries do not linger in it or in the file's old pages,
        without waiting for readers (the writer lock is held): a reader's open snapshot (a backup, an export)
        makes it fail at once, and it is tried again after each append until it succeeds."""
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        except sqlite3.Error:
            busy = 1
        self._wal_pending = bool(busy)

    def _writable(self) -> sqlite3.Connection:
        if self._writer is None:
            raise StoreError(f"chain {self.path} is open read-only")
        if self._closed:
            raise StoreError("chain is closed")
        return self._writer

    # -- reads -----------------------------------------------------------------------------

    def _head(self, conn: sqlite3.Connection) -> tuple[int, bytes]:
        row = conn.execute(f"SELECT idx, hash FROM {self.table} ORDER BY idx DESC LIMIT 1")
        found = row.fetchone()
        return (0, GENESIS) if found is None else (found[0], found[1])

    def head(self) -> tuple[int, bytes]:
        """(index, hash) of the last entry; (0, GENESIS) when the chain is empty."""
        try:
            return self._head(self._reader())
        except sqlite3.Error as exc:
            raise StoreError(f"reading chain {self.table} failed: {exc}") from None

    def count(self) -> int:
        """The number of rows (equal to head()[0] unless rows were deleted behind our back)."""
        try:
            return int(self._reader().execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreError(f"reading chain {self.table} failed: {exc}") from None

    def entry(self, idx: int) -> Entry | None:
        """The entry at index `idx`, or None."""
        sql = _SELECT.format(t=self.table) + " WHERE idx = ?"
        try:
            row = self._reader().execute(sql, (idx,)).fetchone()
        except (sqlite3.Error, OverflowError) as exc:
            raise StoreError(f"reading chain {self.table} failed: {exc}") from None
        return None if row is None else Entry(*row)

    def latest(self, key: str) -> Entry | None:
        """The last entry with this key, or None."""
        sql = _SELECT.format(t=self.table) + " WHERE key = ? ORDER BY idx DESC LIMIT 1"
        try:
            row = self._reader().execute(sql, (key,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"reading chain {self.table} failed: {exc}") from None
        return None if row is None else Entry(*row)

    def entries(
        self,
        *,
        after: int = 0,
        key: str | None = None,
        since_ms: int | None = None,
        limit: int | None = None,
    ) -> Generator[Entry, None, None]:
        """Entries with idx > after (and the given key, and at_ms >= since_ms) in idx order."""
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        where: list[str] = ["idx > ?"]
        params: list[object] = [after]
        if key is not None:
            where.append("key = ?")
            params.append(key)
        if since_ms is not None:
            where.append("at_ms >= ?")
            params.append(since_ms)
        sql = _SELECT.format(t=self.table) + " WHERE " + " AND ".join(where) + " ORDER BY idx"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return self._entries(sql, params)

    def _entries(self, sql: str, params: Sequence[object]) -> Generator[Entry, None, None]:
        rows = self._stream(sql, params)
        try:
            for row in rows:
                yield Entry(*row)
        finally:
            rows.close()

    def verify(self, expect_head: tuple[int, bytes] | None = None) -> VerifyReport:
        """Recompute every hash from genesis, streaming; stop at the first problem.

        Catches edited, deleted, inserted and reordered entries. A deleted tail leaves a valid
        shorter chain: pass `expect_head` (a head recorded earlier, e.g. a signed checkpoint)
        to check that entry is still present and unchanged.
        """
        want_idx, want_hash = check_expect_head(expect_head)
        rows = self._stream(_SELECT.format(t=self.table) + " ORDER BY idx", ())
        try:
            return verify_rows(self._prefix, rows, want_idx, want_hash)
        finally:
            rows.close()

    def missing_guards(self) -> tuple[str, ...]:
        """Names of the append-only triggers absent from the file (empty when intact)."""
        try:
            return self._missing_guards(self._reader())
        except sqlite3.Error as exc:
            raise StoreError(f"reading chain {self.table} failed: {exc}") from None


    # -- the anchor and prefix removal -------------------------------------------------------

    def anchor(self) -> tuple[int, bytes]:
        """(first retained index, its prev_hash): (1, GENESIS) until `remove_prefix` first ran."""
        try:
            found = _read_anchor(self._reader(), self.table)
        except sqlite3.Error as exc:
            raise StoreError(f"reading chain {self.table} failed: {exc}") from None
        if found is None:
            raise StoreCorrupt(_META_BAD.format(t=self.table))
        return found

    @contextmanager
    def snapshot(self) -> Iterator[_Snapshot]:
        """One read transaction on a connection of its own: the anchor and the rows as of one instant."""
        if self._closed:
            raise StoreError("chain is closed")
        conn = self._connect_reader()
        try:
            conn.execute("BEGIN")
            yield _Snapshot(conn, self.table)
        except sqlite3.Error as exc:
            raise StoreError(f"reading chain {self.table} failed: {exc}") from None
        finally:
            conn.close()

    def remove_prefix(
        self,
        plan: Callable[[_View], tuple[int, tuple[str, str, bytes]] | None],
        *,
        at_ms: int | None = None,
    ) -> PrefixRemoval | None:
        """Append `plan(view)`'s marker and remove the entries before its `keep`, in one transaction.

        The anchor goes into `<table>_meta`; the no-delete guard is dropped for the DELETE and
        re-created in the same transaction (SQLite DDL is transactional); afterwards the WAL is
        checkpointed so the removed content does not linger there (secure_delete is on): at once, or, while a
        reader holds a snapshot, after the first append once it has ended (`_truncate_wal`).
        """
        at_ms = _now_ms() if at_ms is None else check_at_ms(at_ms)
        t = self.table
        with self._write_lock:
            conn = self._writable()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    view = _View(conn, t)
                    planned = plan(view)
                    if planned is None:
                        _rollback(conn)
                        return None
                    keep, item = planned
                    head = self._head(conn)
                    if not isinstance(keep, int) or not view.anchor[0] < keep <= head[0] + 1:
                        raise ValueError("remove_prefix: keep must be above the anchor and at most head + 1")
                    anchor = view.anchor_for(keep)
                    removed = view.count_before(keep)
                    marker = link(self._prefix, head, [encode_item(*item)], at_ms)[0]
                    conn.execute(self._insert_sql, _row(marker))
                    conn.execute(_META.format(t=t))
                    conn.execute(f"INSERT OR REPLACE INTO {t}_meta(name, value) VALUES ('anchor', ?)",
                                 (json.dumps({"idx": anchor[0], "prev": anchor[1].hex()}),))
                    conn.execute(f"DROP TRIGGER IF EXISTS {t}_no_delete")
                    conn.execute(f"DELETE FROM {t} WHERE idx < ?", (keep,))
                    conn.execute(_GUARDS["no_delete"].format(t=t))
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
                self._truncate_wal(conn)  # do not leave the removed content in the WAL file either
            except sqlite3.Error as exc:
                raise StoreError(f"removing a prefix of chain {t} failed: {exc}") from None
            if self._on_commit is not None:
                self._on_commit(marker)
        return PrefixRemoval(marker, anchor, removed)


def _row(e: Entry) -> tuple[int, int, str, str, bytes, bytes, bytes]:
    return (e.idx, e.at_ms, e.kind, e.key, e.payload, e.prev_hash, e.hash)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open (SQLite may already have rolled it back)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


_META_BAD: Final[str] = "{t}_meta anchor is malformed"


def _read_anchor(conn: sqlite3.Connection, table: str) -> tuple[int, bytes] | None:
    """(first retained idx, its prev_hash); (1, GENESIS) if never pruned; None if malformed."""
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (f"{table}_meta",)
    ).fetchone()
    if has_meta is None:
        return 1, GENESIS
    row = conn.execute(f"SELECT value FROM {table}_meta WHERE name = 'anchor'").fetchone()
    if row is None:
        return 1, GENESIS
    try:
        raw = json.loads(row[0])
        idx, prev = raw["idx"], bytes.fromhex(raw["prev"])
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(idx, int) or idx < 1 or len(prev) != HASH_BYTES or (idx == 1 and prev != GENESIS):
        return None
    return idx, prev


class _Snapshot:
    """`HashChain.snapshot`'s view: every read on one connection inside one read transaction."""

    def __init__(self, conn: sqlite3.Connection, table: str) -> None:
        self._conn = conn
        self._table = table
        self.anchor = _read_anchor(conn, table)  # the first read: it fixes the snapshot

    def entries(self) -> Iterator[Entry]:
        try:
            for row in self._conn.execute(_SELECT.format(t=self._table) + " ORDER BY idx"):
                yield Entry(*row)
        except sqlite3.Error as exc:
            raise StoreError(f"reading chain {self._table} failed: {exc}") from None


class _View:
    """`HashChain.remove_prefix`'s reads, inside its write transaction."""

    def __init__(self, conn: sqlite3.Connection, table: str) -> None:
        self._conn = conn
        self._table = table
        found = _read_anchor(conn, table)
        if found is None:
            raise StoreCorrupt(_META_BAD.format(t=table))
        self.anchor = found

    @property
    def head(self) -> tuple[int, bytes]:
        row = self._conn.execute(f"SELECT idx, hash FROM {self._table} ORDER BY idx DESC LIMIT 1").fetchone()
        return (0, GENESIS) if row is None else (row[0], row[1])

    def entry(self, idx: int) -> Entry | None:
        row = self._conn.execute(_SELECT.format(t=self._table) + " WHERE idx = ?", (idx,)).fetchone()
        return None if row is None else Entry(*row)

    def first_since(self, at_ms: int) -> int | None:
        row = self._conn.execute(f"SELECT min(idx) FROM {self._table} WHERE at_ms >= ?", (at_ms,)).fetchone()
        return None if row[0] is None else int(row[0])

    def count_before(self, idx: int) -> int:
        return int(self._conn.execute(f"SELECT count(*) FROM {self._table} WHERE idx < ?", (idx,)).fetchone()[0])

    def anchor_for(self, keep: int) -> tuple[int, bytes]:
        head_idx, head_hash = self.head
        if keep == head_idx + 1:
            return keep, head_hash
        row = self._conn.execute(f"SELECT prev_hash FROM {self._table} WHERE idx = ?", (keep,)).fetchone()
        if row is None:
            raise ValueError(f"remove_prefix: no entry {keep} to keep")
        return keep, row[0]
