"""An append-only, hash-chained log on SQLite: the consent ledger and every node's audit log."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from node.store.errors import StoreCorrupt, StoreError

# Hash encoding (version 1), every integer big-endian:
#
#   SHA-256( b"hedui/v1/chain\x00" || u32 len(table) || table
#            || u64 idx || i64 at_ms
#            || u32 len(kind) || kind || u32 len(key) || key || u32 len(payload) || payload
#            || prev_hash )
#
# kind, key and table are UTF-8. The table name is length-prefixed like every other
# variable-length field, so no two (table, entry) pairs share an encoding.

HASH_BYTES: Final[int] = 32
GENESIS: Final[bytes] = bytes(HASH_BYTES)
DOMAIN: Final[bytes] = b"hedui/v1/chain\x00"
_MAX_LEN: Final[int] = 0xFFFF_FFFF
_I64_MIN: Final[int] = -(2**63)
_I64_MAX: Final[int] = 2**63 - 1
_BUSY_TIMEOUT_S: Final[float] = 30.0
_TABLE_RE: Final[re.Pattern[str]] = re.compile(r"[a-z][a-z0-9_]{0,62}")
_COLUMNS: Final[tuple[str, ...]] = (
    "idx", "at_ms", "kind", "key", "payload", "prev_hash", "hash",
)  # fmt: skip
_SELECT: Final[str] = "SELECT idx, at_ms, kind, key, payload, prev_hash, hash FROM {t}"
_U32: Final[struct.Struct] = struct.Struct(">I")
_HEAD: Final[struct.Struct] = struct.Struct(">QqI")  # idx, at_ms, len(kind)

BROKEN: Final[str] = "entry {n}: chain broken (missing or reordered entries before it)"
MISMATCH: Final[str] = "entry {n}: content does not match its hash"
CHECKPOINT: Final[str] = "entry {n} missing or changed since checkpoint"

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


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a chain; `hash` commits to every other field and to the table name."""

    idx: int
    at_ms: int
    kind: str
    key: str
    payload: bytes
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of `HashChain.verify`.

    `count` is the number of entries that verified before the first bad one (all of them when
    `ok`); `head_hash` is the hash of the last entry that verified (GENESIS if none).
    `first_bad` and `reason` name the first problem; both are None when `ok`.
    """

    ok: bool
    count: int
    first_bad: int | None
    reason: str | None
    head_hash: bytes

    def __bool__(self) -> bool:
        """True exactly when the chain verified, so `if chain.verify():` means what it says."""
        return self.ok


def _prefix(table: str) -> bytes:
    """The fixed start of every hash input of `table`."""
    name = table.encode()
    return DOMAIN + _U32.pack(len(name)) + name


def entry_hash(
    table: str, idx: int, at_ms: int, kind: str, key: str, payload: bytes, prev_hash: bytes
) -> bytes:
    """The SHA-256 of one entry in the version-1 encoding (see the comment at the top)."""
    return _digest(_prefix(table), idx, at_ms, kind.encode(), key.encode(), payload, prev_hash)


def _digest(
    prefix: bytes, idx: int, at_ms: int, kind: bytes, key: bytes, payload: bytes, prev: bytes
) -> bytes:
    return hashlib.sha256(
        b"".join(
            (
                prefix,
                _HEAD.pack(idx, at_ms, len(kind)),
                kind,
                _U32.pack(len(key)),
                key,
                _U32.pack(len(payload)),
                payload,
                prev,
            )
        )
    ).digest()


def _check_table(table: str) -> str:
    """`table` if it is a lowercase SQL identifier (it is both SQL text and hashed)."""
    if not isinstance(table, str) or not _TABLE_RE.fullmatch(table):
        raise ValueError("table name must match [a-z][a-z0-9_]{0,62}")
    if table.startswith("sqlite"):
        raise ValueError("table names starting with 'sqlite' are reserved")
    return table


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _encode_item(kind: str, key: str, payload: bytes) -> tuple[str, str, bytes, bytes, bytes]:
    """Check one (kind, key, payload) and return it with kind and key as UTF-8 bytes."""
    if not isinstance(kind, str) or not kind:
        raise ValueError("kind must be a non-empty string")
    if not isinstance(key, str):
        raise TypeError("key must be a string")
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError("payload must be bytes")
    payload = bytes(payload)
    kind_b, key_b = kind.encode(), key.encode()  # lone surrogates raise UnicodeEncodeError
    if max(len(kind_b), len(key_b), len(payload)) > _MAX_LEN:
        raise ValueError("kind, key and payload must each be under 4 GiB")
    return kind, key, payload, kind_b, key_b


def _check_expect_head(expect_head: tuple[int, bytes] | None) -> tuple[int, bytes]:
    if expect_head is None:
        return 0, GENESIS
    idx, digest = expect_head
    if not isinstance(idx, int) or idx < 0 or not isinstance(digest, bytes):
        raise ValueError("expect_head must be (index >= 0, hash bytes)")
    if len(digest) != HASH_BYTES or (idx == 0 and digest != GENESIS):
        raise ValueError("expect_head hash must be 32 bytes (all zero for index 0)")
    return idx, digest


def _verify_rows(
    prefix: bytes, rows: Iterable[tuple[Any, ...]], want_idx: int, want_hash: bytes
) -> VerifyReport:
    """Walk rows in idx order, recomputing each hash; stop at the first problem."""
    # One tight loop with local names: this runs once per entry of a possibly large chain.
    sha256, head, u32 = hashlib.sha256, _HEAD.pack, _U32.pack
    prev_idx, prev_hash = 0, GENESIS

    def bad(n: int, template: str) -> VerifyReport:
        return VerifyReport(False, prev_idx, n, template.format(n=n), prev_hash)

    for idx, at_ms, kind, key, payload, stored_prev, stored in rows:
        if idx != prev_idx + 1 or stored_prev != prev_hash:
            return bad(idx, BROKEN)
        try:
            kind_b, key_b = kind.encode(), key.encode()
            digest: bytes | None = sha256(
                b"".join(
                    (
                        prefix,
                        head(idx, at_ms, len(kind_b)),
                        kind_b,
                        u32(len(key_b)),
                        key_b,
                        u32(len(payload)),
                        payload,
                        stored_prev,
                    )
                )
            ).digest()
        except (AttributeError, TypeError, ValueError, struct.error):
            digest = None  # a column was given a value of the wrong type: tampered
        if digest != stored:
            return bad(idx, MISMATCH)
        if idx == want_idx and stored != want_hash:
            return bad(idx, CHECKPOINT)
        prev_idx, prev_hash = idx, stored
    if prev_idx < want_idx:
        return bad(want_idx, CHECKPOINT)
    return VerifyReport(True, prev_idx, None, None, prev_hash)


class HashChain:
    """One hash chain in one SQLite table; safe to use from many threads.

    Writes go through one writer connection under a lock, each in an IMMEDIATE transaction
    that reads the head, so several processes may append to the same file. Point reads use a
    connection per thread; `entries()` and `verify()` stream on a connection of their own, so
    a half-consumed iterator never pins other reads to an old snapshot.
    """

    def __init__(self, path: Path, *, table: str = "entries",
                 on_commit: Callable[[Entry], None] | None = None) -> None:
        """Open (creating if needed) the chain `table` in the SQLite file `path`.

        `on_commit(last_entry)` runs after each committed append, under this object's write lock
        (the consent ledger records its head outside SQLite this way, see node.store.ledger).
        """
        self._setup(Path(path), _check_table(table), readonly=False)
        self.restored_guards: tuple[str, ...] = ()
        self._on_commit = on_commit
        self._writer: sqlite3.Connection | None = self._open_writer()

    @classmethod
    def open_readonly(cls, path: Path, table: str = "entries") -> HashChain:
        """Open an existing chain read-only (SQLite `mode=ro`), e.g. for the verifier CLI.

        Works on a file whose guards (triggers) were dropped; see `missing_guards()`.
        """
        self = cls.__new__(cls)
        self._setup(Path(path), _check_table(table), readonly=True)
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
        self._prefix = _prefix(table)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._lock = threading.Lock()  # guards _readers and _closed
        self._write_lock = threading.Lock()
        self._closed = False
        self._insert_sql = (
            f"INSERT INTO {table}(idx, at_ms, kind, key, payload, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)"
        )

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
        return self._append([_encode_item(kind, key, payload)], at_ms)[0]

    def append_many(
        self, items: Sequence[tuple[str, str, bytes]], *, at_ms: int | None = None
    ) -> list[Entry]:
        """Append several entries in one transaction (all or none); they share one at_ms."""
        return self._append([_encode_item(*item) for item in items], at_ms)

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
        def items(head: tuple[int, bytes]) -> list[tuple[str, str, bytes, bytes, bytes]]:
            return [_encode_item(*item) for item in build(head)]

        return self._append(items, at_ms)

    def _append(
        self,
        items: list[tuple[str, str, bytes, bytes, bytes]]
        | Callable[[tuple[int, bytes]], list[tuple[str, str, bytes, bytes, bytes]]],
        at_ms: int | None,
    ) -> list[Entry]:
        if at_ms is None:
            at_ms = _now_ms()
        elif not isinstance(at_ms, int) or not _I64_MIN <= at_ms <= _I64_MAX:
            raise ValueError("at_ms must be a signed 64-bit integer")
        if not items:
            return []
        with self._write_lock:
            conn = self._writable()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    head = self._head(conn)
                    batch = items(head) if callable(items) else items
                    entries = self._link(head, batch, at_ms)
                    conn.executemany(self._insert_sql, (_row(e) for e in entries))
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"append to chain {self.table} failed: {exc}") from None
            if entries and self._on_commit is not None:
                self._on_commit(entries[-1])
        return entries

    def _writable(self) -> sqlite3.Connection:
        if self._writer is None:
            raise StoreError(f"chain {self.path} is open read-only")
        if self._closed:
            raise StoreError("chain is closed")
        return self._writer

    def _link(
        self,
        head: tuple[int, bytes],
        items: list[tuple[str, str, bytes, bytes, bytes]],
        at_ms: int,
    ) -> list[Entry]:
        """Entries for `items`, numbered and hashed on from `head`."""
        idx, prev = head
        out: list[Entry] = []
        for kind, key, payload, kind_b, key_b in items:
            idx += 1
            digest = _digest(self._prefix, idx, at_ms, kind_b, key_b, payload, prev)
            out.append(Entry(idx, at_ms, kind, key, payload, prev, digest))
            prev = digest
        return out

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
        want_idx, want_hash = _check_expect_head(expect_head)
        rows = self._stream(_SELECT.format(t=self.table) + " ORDER BY idx", ())
        try:
            return _verify_rows(self._prefix, rows, want_idx, want_hash)
        finally:
            rows.close()

    def missing_guards(self) -> tuple[str, ...]:
        """Names of the append-only triggers absent from the file (empty when intact)."""
        try:
            return self._missing_guards(self._reader())
        except sqlite3.Error as exc:
            raise StoreError(f"reading chain {self.table} failed: {exc}") from None


def _row(e: Entry) -> tuple[int, int, str, str, bytes, bytes, bytes]:
    return (e.idx, e.at_ms, e.kind, e.key, e.payload, e.prev_hash, e.hash)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open (SQLite may already have rolled it back)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")
