"""A hash chain in one PostgreSQL table: appends serialised by an advisory lock, guards as PL/pgSQL triggers."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import psycopg

from node.store.chainformat import (
    GENESIS,
    HASH_BYTES,
    Encoded,
    Entry,
    VerifyReport,
    check_at_ms,
    check_expect_head,
    check_table,
    encode_item,
    link,
    prefix,
    verify_rows,
)
from node.store.errors import StoreCorrupt, StoreError
from node.store.interfaces import Item, Link, PrefixRemoval, PrefixView
from node.store.postgres import ddl
from node.store.postgres import pool as pools
from node.store.postgres import schema
from node.store.postgres.pooled import Pooled

_PAGE: Final[int] = 2000  # entries per page of entries() and per fetch of a snapshot
_SELECT: Final[str] = 'SELECT idx, at_ms, kind, key, payload, prev_hash, hash FROM "{t}"'


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _text(raw: Any) -> Any:
    """A kind or key column back as str; bytes that are not UTF-8 stay bytes (tampered: the verifier flags them)."""
    if isinstance(raw, (bytes, memoryview)):
        try:
            return bytes(raw).decode()
        except UnicodeDecodeError:
            return bytes(raw)
    return raw


def _row(raw: Sequence[Any]) -> tuple[Any, ...]:
    idx, at_ms, kind, key, payload, prev, digest = raw
    return (idx, at_ms, _text(kind), _text(key), bytes(payload), bytes(prev), bytes(digest))


def _entry(raw: Sequence[Any]) -> Entry:
    return Entry(*_row(raw))


class _View:
    """PrefixView over the connection inside remove_prefix's locked transaction."""

    def __init__(self, chain: PgChain, cur: psycopg.Cursor[Any], head: Link, anchor: Link) -> None:
        self._chain, self._cur, self._head, self._anchor = chain, cur, head, anchor

    @property
    def head(self) -> Link:
        return self._head

    @property
    def anchor(self) -> Link:
        return self._anchor

    def entry(self, idx: int) -> Entry | None:
        row = self._cur.execute(_SELECT.format(t=self._chain.table) + " WHERE idx = %s", (idx,)).fetchone()
        return None if row is None else _entry(row)

    def first_since(self, at_ms: int) -> int | None:
        row = self._cur.execute(f'SELECT min(idx) FROM "{self._chain.table}" WHERE at_ms >= %s', (at_ms,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def count_before(self, idx: int) -> int:
        return int(self._cur.execute(f'SELECT count(*) FROM "{self._chain.table}" WHERE idx < %s', (idx,)).fetchone()[0])

    def anchor_for(self, keep: int) -> Link:
        if keep == self._head[0] + 1:
            return keep, self._head[1]
        found = self.entry(keep)
        if found is None:
            raise StoreCorrupt(f"chain {self._chain.table}: entry {keep} is missing")
        return keep, found.prev_hash


class _Snapshot:
    """ChainSnapshot: one REPEATABLE READ transaction on one connection."""

    def __init__(self, chain: PgChain, conn: psycopg.Connection, anchor: Link | None) -> None:
        self._chain, self._conn, self._anchor = chain, conn, anchor

    @property
    def anchor(self) -> Link | None:
        return self._anchor

    def entries(self) -> Iterator[Entry]:
        for row in self._chain._rows_in(self._conn):
            yield Entry(*row)


class PgChain(Pooled):
    """One chain in one table of a PostgreSQL database; safe from many threads, processes and hosts.

    Every write runs in one transaction that first takes the chain's advisory lock (writers of
    the same chain queue, on every host; readers and vacuum are not blocked), then reads the head,
    inserts and commits with synchronous_commit on. The triggers refuse UPDATE, TRUNCATE, a DELETE
    other than remove_prefix's, and an INSERT that does not continue the head.
    """

    def __init__(self, url: str, table: str, *, prunable: bool = False, readonly: bool = False,
                 on_commit: Callable[[Entry], None] | None = None) -> None:
        """Open (creating unless `readonly`) the chain `table` in the database at `url`."""
        self._table = check_table(table)
        self._prefix = prefix(table)
        self._prunable = prunable
        self._on_commit = on_commit
        self._location = f"{pools.redact(url)} table {table}"
        self.what = f"chain {table}"
        self.guards = schema.chain_guards(table, prunable)
        self._local = threading.local()  # .conn: this thread's locked append transaction (reads inside build use it)
        self._on_read: Callable[[Link], None] | None = None
        self._read_seen = 0
        # One statement per batch, rows in order (the append guard checks each against the one before).
        self._insert = (f'INSERT INTO "{table}"(idx, at_ms, kind, key, payload, prev_hash, hash) '
                        "SELECT i, a, k, y, p, ph, h FROM unnest(%s::bigint[], %s::bigint[], %s::bytea[], %s::bytea[], "
                        "%s::bytea[], %s::bytea[], %s::bytea[]) WITH ORDINALITY AS u(i, a, k, y, p, ph, h, n) ORDER BY n")
        super().__init__(url, readonly=readonly)

    def _open(self) -> None:
        if not self.readonly:
            self._ensure_schema()
            return
        with self._conn("opening") as conn:
            if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{self._table}"',)).fetchone()[0]:
                raise pools.missing(f"no {self._table} chain at {self._location}", self._location)
            self._check_schema(conn)

    # -- properties --------------------------------------------------------------------------

    @property
    def table(self) -> str:
        return self._table

    @property
    def location(self) -> str:
        return self._location

    def _conn(self, what: str) -> contextlib.AbstractContextManager[psycopg.Connection]:
        """This thread's locked append connection while append_next's build runs, else a pooled one."""
        if self._closed:
            raise StoreError(f"{self.what} is closed")
        held: psycopg.Connection | None = getattr(self._local, "conn", None)
        if held is not None:
            return self._held(held, self._label(what))
        return super()._conn(what)

    @staticmethod
    @contextlib.contextmanager
    def _held(conn: psycopg.Connection, what: str) -> Iterator[psycopg.Connection]:
        """The held connection, its errors as StoreError (as pools.connection words them)."""
        try:
            yield conn
        except psycopg.Error as exc:
            raise StoreError(f"{what} failed: {pools.describe(exc)}") from None

    # -- schema ------------------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        """Create what is missing and re-install (and report) guards or functions someone changed; an open that
        finds the catalog as expected runs no DDL (DDL waits for table locks: behind an open write, it would stall)."""
        with self._conn("creating") as conn:
            if self._complete(conn):
                return
            with conn.transaction():
                ddl.locked(conn)
                exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{self._table}"',)).fetchone()[0]
                problems = self.guards.missing(conn)
                if not ddl.present(conn, (schema.ANCHORS,)):
                    conn.execute(schema.ANCHORS_TABLE)
                if not ddl.present(conn, (f'"{self._table}"', f'"{self._table}_key"')):
                    conn.execute(schema.TABLE.format(t=self._table))
                self._check_schema(conn)
                self.guards.install(conn, problems)
        self.restored_guards = problems if exists else ()

    def _complete(self, conn: psycopg.Connection) -> bool:
        """Table, index and anchors table present (the table a chain's), every guard and guard function as expected."""
        if not ddl.present(conn, (f'"{self._table}"', f'"{self._table}_key"', schema.ANCHORS)):
            return False
        self._check_schema(conn)
        return not self.guards.missing(conn)

    def _check_schema(self, conn: psycopg.Connection) -> None:
        """StoreCorrupt unless the table exists with exactly the chain's columns."""
        columns = tuple(r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum", (f'"{self._table}"',)))
        if not columns:
            raise StoreCorrupt(f"{self._location}: no chain table {self._table!r}")
        if columns != schema.COLUMNS:
            raise StoreCorrupt(f"{self._location}: table {self._table!r} is not a hash chain")

    # -- writes ------------------------------------------------------------------------------

    def append(self, kind: str, key: str, payload: bytes, *, at_ms: int | None = None) -> Entry:
        """Append one entry durably and return it."""
        return self._append([encode_item(kind, key, payload)], at_ms)[0]

    def append_many(self, items: Sequence[Item], *, at_ms: int | None = None) -> list[Entry]:
        """Append several entries in one transaction (all or none); they share one at_ms."""
        return self._append([encode_item(*item) for item in items], at_ms)

    def append_next(self, build: Callable[[Link], Sequence[Item]], *, at_ms: int | None = None) -> list[Entry]:
        """Append what `build(head)` returns, with the head read under the chain's lock in the same transaction."""
        return self._append(lambda head: [encode_item(*item) for item in build(head)], at_ms)

    def _locked(self, conn: psycopg.Connection) -> Link:
        """Take the chain's write lock (held to the end of the transaction) and read the head.

        A transaction-level advisory lock keyed by schema and table, not LOCK TABLE: it queues every
        writer of this chain on every host, yet conflicts with no table lock, so (auto)vacuum never
        stalls an append. A writer that skips it (raw SQL) still cannot fork the chain: idx is the
        primary key and the append guard checks the head.
        """
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('hedui-chain:' || current_schema() || '.' || %s, 0))",
                     (self._table,))
        return self._head(conn)

    def _writable(self) -> None:
        if self.readonly:
            raise StoreError(f"chain {self._location} is open read-only")

    def _append(self, items: list[Encoded] | Callable[[Link], list[Encoded]], at_ms: int | None) -> list[Entry]:
        at_ms = _now_ms() if at_ms is None else check_at_ms(at_ms)
        if not items:
            return []
        self._writable()
        with self._conn("append to") as conn:
            with conn.transaction():
                head = self._locked(conn)
                if callable(items):  # build's own reads (head, entry, latest) run here: the locked view, no 2nd connection
                    self._local.conn = conn
                    try:
                        batch = items(head)
                    finally:
                        self._local.conn = None
                else:
                    batch = items
                entries = link(self._prefix, head, batch, at_ms)
                if entries:
                    conn.execute(self._insert, self._columns(entries))
            if entries and self._on_commit is not None:
                self._on_commit(entries[-1])
        return entries

    @staticmethod
    def _columns(entries: Sequence[Entry]) -> list[list[Any]]:
        """The INSERT's seven arrays (kind and key as their UTF-8 bytes)."""
        return [[e.idx for e in entries], [e.at_ms for e in entries], [e.kind.encode() for e in entries],
                [e.key.encode() for e in entries], [e.payload for e in entries], [e.prev_hash for e in entries],
                [e.hash for e in entries]]

    def remove_prefix(self, plan: Callable[[PrefixView], tuple[int, Item] | None], *,
                      at_ms: int | None = None) -> PrefixRemoval | None:
        """Append plan's marker, record the anchor and delete every entry below `keep`, in one locked transaction."""
        at_ms = _now_ms() if at_ms is None else check_at_ms(at_ms)
        self._writable()
        if not self._prunable:
            raise StoreError(f"chain {self._table} is not prunable")
        with self._conn("removing a prefix of") as conn:
            with conn.transaction(), conn.cursor() as cur:
                head = self._locked(conn)
                anchor = self._anchor(conn)
                if anchor is None:
                    raise StoreCorrupt(f"chain {self._table}: its recorded anchor is malformed")
                view = _View(self, cur, head, anchor)
                decided = plan(view)
                if decided is None:
                    return None
                keep, marker = decided
                if not isinstance(keep, int) or not anchor[0] < keep <= head[0] + 1:
                    raise ValueError("keep must be above the anchor and at most head + 1")
                new_anchor = view.anchor_for(keep)
                entry = link(self._prefix, head, [encode_item(*marker)], at_ms)[0]
                cur.execute(self._insert, self._columns([entry]))
                # The setting first: the anchors' guard lets the anchor move only up to it, in this transaction.
                cur.execute("SELECT set_config(%s, %s, true)", (schema.REMOVE_BELOW.format(t=self._table), str(keep)))
                cur.execute(f"INSERT INTO {schema.ANCHORS}(chain, idx, prev_hash) VALUES (%s, %s, %s) "
                            "ON CONFLICT (chain) DO UPDATE SET idx = excluded.idx, prev_hash = excluded.prev_hash",
                            (self._table, new_anchor[0], new_anchor[1]))
                cur.execute(f'DELETE FROM "{self._table}" WHERE idx < %s', (keep,))
                removed = cur.rowcount
            with contextlib.suppress(psycopg.Error):
                conn.execute(f'VACUUM "{self._table}"')  # free the removed rows' space for reuse now
        return PrefixRemoval(entry, new_anchor, removed)

    # -- reads -------------------------------------------------------------------------------

    def _head(self, conn: psycopg.Connection) -> Link:
        row = conn.execute(f'SELECT idx, hash FROM "{self._table}" ORDER BY idx DESC LIMIT 1').fetchone()
        return (0, GENESIS) if row is None else (int(row[0]), bytes(row[1]))

    def head(self) -> Link:
        """(index, hash) of the last entry; (0, GENESIS) when the chain is empty."""
        with self._conn("reading") as conn:
            found = self._head(conn)
        if self._on_read is not None and found[0] > self._read_seen:  # cheap: only a higher head is passed on
            self._read_seen = found[0]
            self._on_read(found)
        return found

    def follow_reads(self, on_read: Callable[[Link], None]) -> None:
        """Call `on_read(head)` whenever head() reads a head higher than any before (a read head was committed)."""
        self._on_read = on_read

    def _anchor(self, conn: psycopg.Connection) -> Link | None:
        """The recorded anchor ((1, GENESIS) when none); None when malformed."""
        if conn.execute("SELECT to_regclass(%s) IS NULL", (schema.ANCHORS,)).fetchone()[0]:
            return 1, GENESIS
        row = conn.execute(f"SELECT idx, prev_hash FROM {schema.ANCHORS} WHERE chain = %s", (self._table,)).fetchone()
        if row is None:
            return 1, GENESIS
        idx, prev = row[0], bytes(row[1])
        if idx < 1 or len(prev) != HASH_BYTES or (idx == 1 and prev != GENESIS):
            return None
        return int(idx), prev

    def anchor(self) -> Link:
        """(first retained index, its prev_hash): (1, GENESIS) until remove_prefix first ran."""
        with self._conn("reading") as conn:
            found = self._anchor(conn)
        if found is None:
            raise StoreCorrupt(f"chain {self._table}: its recorded anchor is malformed")
        return found

    def count(self) -> int:
        """The number of entries held."""
        with self._conn("reading") as conn:
            return int(conn.execute(f'SELECT count(*) FROM "{self._table}"').fetchone()[0])

    def entry(self, idx: int) -> Entry | None:
        """The entry at index `idx`, or None."""
        if not -(2**63) <= idx < 2**63:
            return None
        with self._conn("reading") as conn:
            row = conn.execute(_SELECT.format(t=self._table) + " WHERE idx = %s", (idx,)).fetchone()
        return None if row is None else _entry(row)

    def latest(self, key: str) -> Entry | None:
        """The last entry with this key, or None."""
        with self._conn("reading") as conn:
            row = conn.execute(_SELECT.format(t=self._table) + " WHERE key = %s ORDER BY idx DESC LIMIT 1",
                               (key.encode(),)).fetchone()
        return None if row is None else _entry(row)

    def entries(self, *, after: int = 0, key: str | None = None, since_ms: int | None = None,
                limit: int | None = None) -> Iterator[Entry]:
        """Entries with idx > after (and key, and at_ms >= since_ms) in index order, a page at a time.

        Each page is its own short query (no transaction held between pages), so a half-consumed
        iterator holds no connection and no snapshot.
        """
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        if self._closed:
            raise StoreError(f"{self.what} is closed")
        return self._pages(after, key, since_ms, limit)

    def _pages(self, after: int, key: str | None, since_ms: int | None, limit: int | None) -> Iterator[Entry]:
        where, params = ["idx > %s"], [after]
        if key is not None:
            where.append("key = %s")
            params.append(key.encode())  # type: ignore[arg-type]
        if since_ms is not None:
            where.append("at_ms >= %s")
            params.append(since_ms)
        sql = _SELECT.format(t=self._table) + " WHERE " + " AND ".join(where) + " ORDER BY idx LIMIT %s"
        left = limit
        while left is None or left > 0:
            page = _PAGE if left is None else min(_PAGE, left)
            with self._conn("reading") as conn:
                rows = conn.execute(sql, (*params, page)).fetchall()
            for raw in rows:
                yield _entry(raw)
            if len(rows) < page:
                return
            params[0] = rows[-1][0]
            if left is not None:
                left -= len(rows)

    def _rows_in(self, conn: psycopg.Connection) -> Iterator[tuple[Any, ...]]:
        """Every row in index order through a server-side cursor of the connection's open transaction."""
        with conn.cursor(name=f"hedui_{self._table}_rows") as cur:
            cur.itersize = _PAGE
            cur.execute(_SELECT.format(t=self._table) + " ORDER BY idx")
            for raw in cur:
                yield _row(raw)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[_Snapshot]:
        """(anchor, entries) as of one instant: a REPEATABLE READ, READ ONLY transaction."""
        with self._conn("reading") as conn:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield _Snapshot(self, conn, self._anchor(conn))

    def verify(self, expect_head: Link | None = None) -> VerifyReport:
        """Recompute every hash from genesis on one snapshot; stop at the first problem."""
        want_idx, want_hash = check_expect_head(expect_head)
        with self.snapshot() as snap:
            return verify_rows(self._prefix, (_row_of(e) for e in snap.entries()), want_idx, want_hash)


def _row_of(e: Entry) -> tuple[Any, ...]:
    return (e.idx, e.at_ms, e.kind, e.key, e.payload, e.prev_hash, e.hash)
