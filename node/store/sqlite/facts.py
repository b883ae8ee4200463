"""The fact store (node.store.interfaces.FactStore) on SQLite (WAL), keyed by subject tokens; raw ID numbers are never stored.

Schema (version 2):

    meta(key, value)                       schema_version
    subjects(id, token UNIQUE, possession) token = 32-byte HMAC subject token; possession = the
                                           subject's 32-byte possession key (node.crypto.tokens),
                                           NULL only for subjects ingested under schema 1
    facts(subject_id, attribute, as_of, source, value)   PK(subject_id, attribute, as_of, source)
    attributes(code, aggregate)            'sum' | 'max', written from the catalogue at ingest

A schema-1 store is upgraded in place when opened (the possession column is added, empty);
possession keys cannot be computed from tokens, so its subjects get them only when their
departmental files are ingested again (`missing_possession` counts those still without one,
and a node refuses to serve while there are any).

The facts columns are declared in primary-key order: SQLite 3.40's quick_check reports false
"NULL value" errors for a WITHOUT ROWID table whose non-key column precedes a key column.

A lookup answers with each attribute's latest as-of date; several sources reporting on that
date are combined by the attribute's aggregate. Reads use one connection per thread
(query_only); writes go through one writer connection under a lock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from node.store.errors import StoreCorrupt, StoreError
from node.store.interfaces import Fact

STORE_FILE: Final[str] = "store.sqlite"
SCHEMA_VERSION: Final[int] = 2
POSSESSION_BYTES: Final[int] = 32
TOKEN_BYTES: Final[int] = 32
_CHUNK: Final[int] = 500  # tokens per statement (well under SQLite's variable limit)
_BUSY_TIMEOUT_S: Final[float] = 30.0
_READ_CACHE_KIB: Final[int] = 4 * 1024  # private page cache per reading thread
_READ_MMAP_BYTES: Final[int] = 0
_WRITE_CACHE_KIB: Final[int] = 128 * 1024
_WAL_LIMIT_BYTES: Final[int] = 64 * 1024 * 1024

_SCHEMA: Final[str] = f"""
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE subjects(
    id INTEGER PRIMARY KEY,
    token BLOB NOT NULL UNIQUE CHECK (length(token) = {TOKEN_BYTES}),
    possession BLOB CHECK (possession IS NULL OR length(possession) = {POSSESSION_BYTES})
);
CREATE INDEX subjects_without_possession ON subjects(id) WHERE possession IS NULL;
CREATE TABLE facts(
    subject_id INTEGER NOT NULL REFERENCES subjects(id),
    attribute TEXT NOT NULL,
    as_of TEXT NOT NULL,
    source TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (subject_id, attribute, as_of, source)
) WITHOUT ROWID;
CREATE TABLE attributes(
    code TEXT PRIMARY KEY,
    aggregate TEXT NOT NULL CHECK (aggregate IN ('sum', 'max'))
) WITHOUT ROWID;
INSERT INTO meta(key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
"""
_TABLES: Final[frozenset[str]] = frozenset({"meta", "subjects", "facts", "attributes"})
_UPGRADE_FROM_1: Final[tuple[str, ...]] = (
    f"ALTER TABLE subjects ADD COLUMN possession BLOB"
    f" CHECK (possession IS NULL OR length(possession) = {POSSESSION_BYTES})",
    "CREATE INDEX subjects_without_possession ON subjects(id) WHERE possession IS NULL",
    f"UPDATE meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version'",
)

# Per (subject, attribute): the latest as_of by one index seek, then that date's rows (one per
# source) with the attribute's aggregate; the few rows are combined in Python.
_LOOKUP_SQL: Final[str] = """
WITH want(attribute) AS (VALUES {attrs})
SELECT s.token, w.attribute, f.as_of, f.value, a.aggregate
FROM subjects s CROSS JOIN want w
JOIN facts f ON f.subject_id = s.id AND f.attribute = w.attribute
    AND f.as_of = (SELECT max(g.as_of) FROM facts g
                   WHERE g.subject_id = s.id AND g.attribute = w.attribute)
LEFT JOIN attributes a ON a.code = w.attribute
WHERE s.token IN ({tokens})
"""
_POSSESSION_SQL: Final[str] = """
SELECT token, possession FROM subjects WHERE token IN ({tokens}) AND possession IS NOT NULL
"""
_HOLDS_SQL: Final[str] = """
SELECT s.token FROM subjects s
WHERE s.token IN ({tokens}) AND EXISTS (SELECT 1 FROM facts f WHERE f.subject_id = s.id)
"""


class ChangeWatch:
    """`PRAGMA data_version` on a connection of its own: changes when any other connection commits."""

    def __init__(self, path: Path) -> None:
        try:
            self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                         check_same_thread=False, timeout=_BUSY_TIMEOUT_S)
            self._seen = self.version()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot watch store {path}: {exc}") from None

    def version(self) -> int:
        """The data version now (comparable only with this watch's own earlier readings)."""
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        self._conn.close()


class Store:
    """The fact store of one province node; safe to use from many threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._lock = threading.Lock()  # guards _readers and _closed
        self._write_lock = threading.Lock()
        self._closed = False
        self._sql: dict[tuple[int, int], str] = {}
        self._writer = self._open_writer()

    @classmethod
    def open(cls, data_dir: Path) -> Store:
        """Open (creating if needed) the store `<data_dir>/store.sqlite`."""
        data_dir = Path(data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(f"cannot create data directory {data_dir}: {exc.strerror}") from None
        return cls(data_dir / STORE_FILE)

    @property
    def location(self) -> str:
        return str(self.path)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection; the store cannot be used afterwards. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        with self._write_lock:
            self._writer.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open_writer(self) -> sqlite3.Connection:
        if not self.path.exists():
            try:  # create the file private before SQLite does (its -wal/-shm copy the mode)
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            except OSError as exc:
                raise StoreError(f"cannot create store {self.path}: {exc.strerror}") from None
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from None
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"store {self.path} cannot use WAL journal mode")
            for pragma in (
                "synchronous=NORMAL",
                f"journal_size_limit={_WAL_LIMIT_BYTES}",
                f"cache_size=-{_WRITE_CACHE_KIB}",
                f"temp.cache_size=-{_WRITE_CACHE_KIB}",
            ):
                conn.execute(f"PRAGMA {pragma}")
            self._ensure_schema(conn)
        except sqlite3.OperationalError as exc:  # locked, read-only, I/O error...
            conn.close()
            raise StoreError(f"cannot open store {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:  # e.g. "file is not a database"
            conn.close()
            raise StoreCorrupt(f"{self.path} is not a usable Hedui store: {exc}") from None
        except StoreError:
            conn.close()
            raise
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        if not self._tables(conn):
            conn.execute("BEGIN IMMEDIATE")
            try:
                if not self._tables(conn):  # nobody created it meanwhile
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        if not _TABLES <= self._tables(conn):
            raise StoreCorrupt(f"{self.path} is an SQLite file but not a Hedui store")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and row[0] == "1":
            self._upgrade_from_1(conn)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or row[0] != str(SCHEMA_VERSION):
            found = "none" if row is None else row[0]
            raise StoreError(
                f"store {self.path} has schema version {found}; this node needs {SCHEMA_VERSION}"
            )

    @staticmethod
    def _upgrade_from_1(conn: sqlite3.Connection) -> None:
        """Schema 1 -> 2 in one transaction: add the (empty) possession column."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if version is not None and version[0] == "1":  # nobody upgraded it meanwhile
                for statement in _UPGRADE_FROM_1:
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _tables(conn: sqlite3.Connection) -> set[str]:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        with self._lock:
            if self._closed:
                raise StoreError("store is closed")
            try:
                conn = sqlite3.connect(
                    self.path,
                    timeout=_BUSY_TIMEOUT_S,
                    isolation_level=None,
                    check_same_thread=False,  # used by its own thread only; closed by close()
                    cached_statements=256,
                )
                for pragma in (
                    "query_only=ON",
                    f"cache_size=-{_READ_CACHE_KIB}",
                    f"mmap_size={_READ_MMAP_BYTES}",
                ):
                    conn.execute(f"PRAGMA {pragma}")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open store {self.path} for reading: {exc}") from None
            self._readers.append(conn)
        self._local.conn = conn
        return conn

    # -- reads -----------------------------------------------------------------------------

    def lookup(
        self, tokens: Sequence[bytes], attributes: Sequence[str]
    ) -> dict[tuple[int, str], Fact]:
        """(index into tokens, attribute) -> Fact at the latest as-of date; absent = no record.

        Same-date facts from several sources combine by the attribute's recorded aggregate
        ('sum' or 'max'; 'max' when none is recorded). One statement per 500 tokens.
        """
        if not tokens or not attributes:
            return {}
        attrs = list(dict.fromkeys(attributes))
        where: dict[bytes, list[int]] = {}
        for i, token in enumerate(tokens):
            where.setdefault(bytes(token), []).append(i)
        distinct = list(where)
        combined: dict[tuple[bytes, str], list[Any]] = {}
        conn = self._reader()
        try:
            for start in range(0, len(distinct), _CHUNK):
                chunk = distinct[start : start + _CHUNK]
                sql = self._lookup_sql(len(chunk), len(attrs))
                for token, attribute, as_of, value, aggregate in conn.execute(sql, (*attrs, *chunk)):
                    key = (token, attribute)
                    acc = combined.get(key)
                    if acc is None:
                        combined[key] = [value, as_of]
                    elif aggregate == "sum":
                        acc[0] += value
                    elif value > acc[0]:
                        acc[0] = value
        except sqlite3.Error as exc:
            raise StoreError(f"store lookup failed: {type(exc).__name__}") from None
        out: dict[tuple[int, str], Fact] = {}
        for (token, attribute), (value, as_of) in combined.items():
            fact = Fact(value, as_of)
            for i in where[token]:
                out[(i, attribute)] = fact
        return out

    def _lookup_sql(self, n_tokens: int, n_attrs: int) -> str:
        key = (n_tokens, n_attrs)
        sql = self._sql.get(key)
        if sql is None:
            sql = _LOOKUP_SQL.format(
                attrs=",".join(["(?)"] * n_attrs), tokens=",".join(["?"] * n_tokens)
            )
            if len(self._sql) < 1024:
                self._sql[key] = sql
        return sql

    def holds(self, tokens: Sequence[bytes]) -> list[bool]:
        """For each token, whether this store has any fact about that subject."""
        if not tokens:
            return []
        distinct = list(dict.fromkeys(bytes(t) for t in tokens))
        held: set[bytes] = set()
        conn = self._reader()
        try:
            for start in range(0, len(distinct), _CHUNK):
                chunk = distinct[start : start + _CHUNK]
                sql = _HOLDS_SQL.format(tokens=",".join(["?"] * len(chunk)))
                held.update(row[0] for row in conn.execute(sql, chunk))
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {type(exc).__name__}") from None
        return [bytes(t) in held for t in tokens]

    def possession_keys(self, tokens: Sequence[bytes]) -> dict[bytes, bytes]:
        """token -> possession key, for the tokens of subjects this store holds (one statement per 500)."""
        distinct = list(dict.fromkeys(bytes(t) for t in tokens))
        keys: dict[bytes, bytes] = {}
        conn = self._reader()
        try:
            for start in range(0, len(distinct), _CHUNK):
                chunk = distinct[start : start + _CHUNK]
                sql = _POSSESSION_SQL.format(tokens=",".join(["?"] * len(chunk)))
                keys.update(conn.execute(sql, chunk).fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {type(exc).__name__}") from None
        return keys

    def missing_possession(self) -> int:
        """How many subjects have no possession key (ingested under schema 1 and not since)."""
        conn = self._reader()
        try:
            return int(conn.execute(
                "SELECT count(*) FROM subjects INDEXED BY subjects_without_possession WHERE possession IS NULL"
            ).fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {type(exc).__name__}") from None

    def held_tokens(self, batch: int = 10_000) -> Iterator[bytes]:
        """Every token of a subject this store has a fact about (as `holds` answers), streamed in batches
        from one read snapshot (for the node's discovery locator)."""
        conn = self._reader()
        try:
            conn.execute("BEGIN")
            try:
                cursor = conn.execute("SELECT s.token FROM subjects s WHERE EXISTS "
                                      "(SELECT 1 FROM facts f WHERE f.subject_id = s.id)")
                while rows := cursor.fetchmany(batch):
                    for (token,) in rows:
                        yield bytes(token)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {type(exc).__name__}") from None

    def held_count(self) -> int:
        """How many subjects this store has a fact about (the count `held_tokens` streams)."""
        conn = self._reader()
        try:
            return int(conn.execute("SELECT count(*) FROM subjects s WHERE EXISTS "
                                    "(SELECT 1 FROM facts f WHERE f.subject_id = s.id)").fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {type(exc).__name__}") from None

    def change_watch(self) -> ChangeWatch:
        """A watch that tells when anyone (this process or `hedui data ingest`) committed a change."""
        return ChangeWatch(self.path)

    def counts(self) -> dict[str, int]:
        """Numbers of subjects and facts held (for `hedui node status`)."""
        conn = self._reader()
        try:
            subjects, facts = conn.execute(
                "SELECT (SELECT count(*) FROM subjects), (SELECT count(*) FROM facts)"
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {type(exc).__name__}") from None
        return {"subjects": subjects, "facts": facts}

    def newest_as_of(self) -> dict[str, str]:
        """Each data item's newest as-of date held (for the web application's federation page)."""
        conn = self._reader()
        try:
            rows = conn.execute("SELECT attribute, max(as_of) FROM facts GROUP BY attribute ORDER BY attribute").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {type(exc).__name__}") from None
        return dict(rows)

    def check_integrity(self) -> None:
        """Run SQLite's quick_check; raise StoreCorrupt when the file is damaged."""
        conn = self._reader()
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
            tables = self._tables(conn)
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(f"store {self.path} integrity check failed: {exc}") from None
        if rows != ["ok"]:
            raise StoreCorrupt(f"store {self.path} integrity check failed: {'; '.join(rows)}")
        if not _TABLES <= tables:
            raise StoreCorrupt(f"store {self.path} lacks tables {sorted(_TABLES - tables)}")

    # -- writes ----------------------------------------------------------------------------

    @contextmanager
    def writer(self) -> Iterator[Writer]:
        """One write transaction: committed when the block ends normally, rolled back on error.

        Only one writer runs at a time (per process by a lock, across processes by SQLite's
        write lock); readers keep seeing the previous state until the commit.
        """
        with self._write_lock:
            if self._closed:
                raise StoreError("store is closed")
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot start a store write: {exc}") from None
            try:
                yield Writer(conn)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"store write failed: {exc}") from None
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass  # a checkpoint is an optimisation; the next one will catch up


class Writer:
    """Writes inside one open transaction (see Store.writer)."""

    _SELECT_SUBJECT: Final[str] = "SELECT id, possession FROM subjects WHERE token = ?"
    _SELECT_SUBJECTS: Final[str] = "SELECT token, id, possession FROM subjects WHERE token IN ({tokens})"
    _INSERT_SUBJECTS: Final[str] = "INSERT INTO subjects(id, token, possession) VALUES (?, ?, ?)"
    _SET_POSSESSION: Final[str] = "UPDATE subjects SET possession = ? WHERE id = ?"
    _UPSERT_FACT: Final[str] = (
        "INSERT INTO facts(subject_id, attribute, as_of, source, value) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT(subject_id, attribute, as_of, source)"
        " DO UPDATE SET value = excluded.value WHERE facts.value IS NOT excluded.value"
    )
    _FLUSH_AT: Final[int] = 8192
    _ALLOCATED_MAX: Final[int] = 1 << 20

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._cursor = conn.cursor()
        # The transaction holds the write lock, so ids can be allocated here and inserted in
        # batches (one executemany instead of one INSERT per new subject).
        self._next_id = int(conn.execute("SELECT coalesce(max(id), 0) FROM subjects").fetchone()[0]) + 1
        self._pending: dict[bytes, tuple[int, bytes | None]] = {}
        # While the store was empty when the transaction began, every subject in it was allocated
        # by subject_ids(): this map (until it grows past _ALLOCATED_MAX) answers without a SELECT.
        self._allocated: dict[bytes, int] | None = {} if self._next_id == 1 else None
        self.new_subjects = 0
        self.possession_added = 0  # possession keys given to subjects that had none

    def subject_id(self, token: bytes, possession: bytes | None = None) -> int:
        """The id of the subject with this token, allocating one when the subject is new.

        `possession` is the subject's possession key (ingest always has it); it is recorded for
        a new subject, and for a known one that has none yet (a store upgraded from schema 1).
        """
        pending = self._pending.get(token)
        if pending is not None:
            return pending[0]
        row = self._cursor.execute(self._SELECT_SUBJECT, (token,)).fetchone()
        if row is not None:
            if row[1] is None and possession is not None:
                self._cursor.execute(self._SET_POSSESSION, (self._checked(possession), row[0]))
                self.possession_added += 1
            return int(row[0])
        return self._allocate(token, possession)

    def _allocate(self, token: bytes, possession: bytes | None) -> int:
        """A new subject's id; its row is inserted at the next flush()."""
        self._allocated = None  # no longer every subject of the store
        if len(token) != TOKEN_BYTES:
            raise StoreError(f"subject tokens must be {TOKEN_BYTES} bytes")
        sid = self._next_id
        self._pending[token] = (sid, None if possession is None else self._checked(possession))
        self._next_id += 1
        self.new_subjects += 1
        if len(self._pending) >= self._FLUSH_AT:
            self.flush()
        return sid

    def subject_ids(self, tokens: Sequence[bytes], possessions: Sequence[bytes]) -> list[int]:
        """subject_id(token, possession) of each pair in order, with one SELECT per 500 tokens.

        Same ids, possession keys and counters as calling subject_id() pair by pair: new
        subjects get ids in the order of their first appearance."""
        given = dict(zip(tokens, possessions, strict=True))  # distinct tokens, first appearance first
        pending = self._pending
        sid = {t: p[0] for t in given if (p := pending.get(t)) is not None}
        unknown = [t for t in given if t not in sid]
        fill: list[tuple[bytes, int]] = []  # (possession, id) of stored subjects that have none
        allocated = self._allocated
        select = unknown
        if allocated is not None:
            sid.update((t, allocated[t]) for t in unknown if t in allocated)
            select = []
        for start in range(0, len(select), _CHUNK):
            chunk = select[start : start + _CHUNK]
            sql = self._SELECT_SUBJECTS.format(tokens=",".join(["?"] * len(chunk)))
            for token, known, possession in self._conn.execute(sql, chunk):
                sid[token] = known
                if possession is None:
                    fill.append((self._checked(given[token]), known))
        if fill:
            self._conn.executemany(self._SET_POSSESSION, fill)
            self.possession_added += len(fill)
        new = [t for t in unknown if t not in sid]
        if new:
            keys = [given[t] for t in new]
            if {len(t) for t in new} != {TOKEN_BYTES}:
                raise StoreError(f"subject tokens must be {TOKEN_BYTES} bytes")
            if {len(k) for k in keys} != {POSSESSION_BYTES}:
                raise StoreError(f"possession keys must be {POSSESSION_BYTES} bytes")
            ids = range(self._next_id, self._next_id + len(new))
            sid.update(zip(new, ids, strict=True))
            if allocated is not None:
                allocated.update(zip(new, ids, strict=True))
                if len(allocated) > self._ALLOCATED_MAX:
                    self._allocated = None  # SELECT from now on
            pending.update(zip(new, zip(ids, keys, strict=True), strict=True))
            self._next_id += len(new)
            self.new_subjects += len(new)
            if len(pending) >= self._FLUSH_AT:
                self.flush()
        return list(map(sid.__getitem__, tokens))

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A part of the transaction undone, with this writer's counters, when the block raises."""
        allocated = None if self._allocated is None else dict(self._allocated)
        state = (self._next_id, dict(self._pending), self.new_subjects, self.possession_added, allocated)
        self._conn.execute("SAVEPOINT writer_part")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK TO writer_part")
            self._conn.execute("RELEASE writer_part")
            self._next_id, self._pending, self.new_subjects, self.possession_added, self._allocated = state
            raise
        self._conn.execute("RELEASE writer_part")

    @staticmethod
    def _checked(possession: bytes) -> bytes:
        if len(possession) != POSSESSION_BYTES:
            raise StoreError(f"possession keys must be {POSSESSION_BYTES} bytes")
        return possession

    def flush(self) -> None:
        """Insert the subjects allocated so far (done before every fact write completes)."""
        if self._pending:
            pending, self._pending = self._pending, {}
            self._conn.executemany(self._INSERT_SUBJECTS, ((i, t, p) for t, (i, p) in pending.items()))

    def upsert_facts(self, rows: Iterable[tuple[int, str, str, str, int]]) -> int:
        """Upsert (subject_id, attribute, as_of, source, value) rows; the number inserted or changed.

        `rows` may call subject_id() while it is being consumed.
        """
        self.flush()
        before = self._conn.total_changes, self.new_subjects, self.possession_added
        self._conn.executemany(self._UPSERT_FACT, rows)
        self.flush()
        subject_changes = self.new_subjects - before[1] + self.possession_added - before[2]
        return self._conn.total_changes - before[0] - subject_changes

    def set_aggregates(self, aggregates: Mapping[str, str]) -> None:
        """Record how each attribute's same-date facts combine ('sum' or 'max')."""
        self._conn.executemany(
            "INSERT INTO attributes(code, aggregate) VALUES (?, ?) ON CONFLICT(code)"
            " DO UPDATE SET aggregate = excluded.aggregate"
            " WHERE attributes.aggregate IS NOT excluded.aggregate",
            sorted(aggregates.items()),
        )
