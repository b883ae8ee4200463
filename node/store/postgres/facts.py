"""The fact store in PostgreSQL: subjects by token, facts as integer fen (BIGINT), one writer at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any, Final

import psycopg

from node.store.errors import StoreCorrupt, StoreError
from node.store.interfaces import Fact
from node.store.postgres import ddl
from node.store.postgres import pool as pools
from node.store.postgres.pooled import Pooled

SCHEMA_VERSION: Final[int] = 2  # the SQLite store's schema 2: subjects carry their possession key
TOKEN_BYTES: Final[int] = 32
POSSESSION_BYTES: Final[int] = 32
_CHUNK: Final[int] = 5000  # tokens or fact rows per statement
_TABLES: Final[tuple[str, ...]] = ("store_meta", "subjects", "facts", "attributes", "store_version")

# Text columns use the "C" collation: max(as_of) compares ISO dates bytewise whatever the database locale.
_SCHEMA: Final[str] = f"""
CREATE TABLE IF NOT EXISTS store_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects(
    id BIGINT PRIMARY KEY,
    token BYTEA NOT NULL UNIQUE CHECK (octet_length(token) = {TOKEN_BYTES}),
    possession BYTEA CHECK (possession IS NULL OR octet_length(possession) = {POSSESSION_BYTES})
);
CREATE INDEX IF NOT EXISTS subjects_without_possession ON subjects(id) WHERE possession IS NULL;
CREATE TABLE IF NOT EXISTS facts(
    subject_id BIGINT NOT NULL REFERENCES subjects(id),
    attribute TEXT COLLATE "C" NOT NULL,
    as_of TEXT COLLATE "C" NOT NULL,
    source TEXT COLLATE "C" NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (subject_id, attribute, as_of, source)
);
CREATE TABLE IF NOT EXISTS attributes(
    code TEXT COLLATE "C" PRIMARY KEY,
    aggregate TEXT NOT NULL CHECK (aggregate IN ('sum', 'max'))
);
CREATE TABLE IF NOT EXISTS store_version(one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one), v BIGINT NOT NULL);
INSERT INTO store_version(one, v) VALUES (true, 0) ON CONFLICT DO NOTHING;
INSERT INTO store_meta(key, value) VALUES ('schema_version', '{SCHEMA_VERSION}') ON CONFLICT DO NOTHING;
"""

_CHANGED: Final[str] = "hedui_store_changed"
# The change triggers bump store_version on every committed change (ChangeWatch): always-enabled, so a session in
# replica mode cannot change facts unseen; reported by missing_guards(), restored by a writable open.
GUARDS: Final[ddl.Guards] = ddl.Guards(
    {_CHANGED: """
BEGIN
    UPDATE store_version SET v = v + 1;
    RETURN NULL;
END """},
    {f"{t}_changed": (t, ddl.INSERT | ddl.UPDATE | ddl.DELETE | ddl.TRUNCATE, _CHANGED)
     for t in ("subjects", "facts", "attributes")})


# Per (subject, attribute): that attribute's latest as_of, then that date's rows (one per source).
_LOOKUP_SQL: Final[str] = """
SELECT s.token, w.attribute, f.as_of, f.value, a.aggregate
FROM subjects s CROSS JOIN unnest(%s::text[]) AS w(attribute)
JOIN facts f ON f.subject_id = s.id AND f.attribute = w.attribute
    AND f.as_of = (SELECT max(g.as_of) FROM facts g WHERE g.subject_id = s.id AND g.attribute = w.attribute)
LEFT JOIN attributes a ON a.code = w.attribute
WHERE s.token = ANY(%s::bytea[])
"""
_HELD: Final[str] = "EXISTS (SELECT 1 FROM facts f WHERE f.subject_id = s.id)"


def _chunks(items: Sequence[Any], n: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), n):
        yield items[start:start + n]


class PgChangeWatch:
    """ChangeWatch: the store_version counter, bumped by a statement trigger on every change."""

    def __init__(self, store: PgStore) -> None:
        self._store = store

    def version(self) -> int:
        with self._store._conn("store read") as conn:
            return int(conn.execute("SELECT v FROM store_version").fetchone()[0])

    def close(self) -> None:
        """Nothing to release (the store's pool serves the reads)."""


class PgStore(Pooled):
    """The fact store of one province in a PostgreSQL database; safe from many threads, processes and hosts."""

    what = "store"
    relations = (*_TABLES, "subjects_without_possession")
    guards = GUARDS

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self._location = pools.redact(url)
        super().__init__(url, _SCHEMA, readonly=readonly)

    def _open(self) -> None:
        super()._open()
        self._check_version()

    def _label(self, doing: str) -> str:
        return doing if doing.startswith("store") else f"{doing} store"  # "store read", "creating store"

    @property
    def location(self) -> str:
        return self._location

    def _check_version(self) -> None:
        with self._conn("store read") as conn:
            if conn.execute("SELECT to_regclass('store_meta') IS NULL").fetchone()[0]:
                raise pools.missing(f"no fact store at {self._location}", self._location)
            row = conn.execute("SELECT value FROM store_meta WHERE key = 'schema_version'").fetchone()
        if row is None or row[0] != str(SCHEMA_VERSION):
            found = "none" if row is None else row[0]
            raise StoreError(f"store {self._location} has schema version {found}; this node needs {SCHEMA_VERSION}")

    # -- reads -------------------------------------------------------------------------------

    def lookup(self, tokens: Sequence[bytes], attributes: Sequence[str]) -> dict[tuple[int, str], Fact]:
        """(index into tokens, attribute) -> Fact at the latest as-of date; same-date facts combined."""
        if not tokens or not attributes:
            return {}
        attrs = list(dict.fromkeys(attributes))
        where: dict[bytes, list[int]] = {}
        for i, token in enumerate(tokens):
            where.setdefault(bytes(token), []).append(i)
        combined: dict[tuple[bytes, str], list[Any]] = {}
        with self._conn("store lookup") as conn:
            for chunk in _chunks(list(where)):
                for token, attribute, as_of, value, aggregate in conn.execute(_LOOKUP_SQL, (attrs, list(chunk))):
                    key = (bytes(token), attribute)
                    acc = combined.get(key)
                    if acc is None:
                        combined[key] = [value, as_of]
                    elif aggregate == "sum":
                        acc[0] += value
                    elif value > acc[0]:
                        acc[0] = value
        out: dict[tuple[int, str], Fact] = {}
        for (token, attribute), (value, as_of) in combined.items():
            fact = Fact(value, as_of)
            for i in where[token]:
                out[(i, attribute)] = fact
        return out

    def holds(self, tokens: Sequence[bytes]) -> list[bool]:
        """For each token, whether this store has any fact about that subject."""
        if not tokens:
            return []
        distinct = list(dict.fromkeys(bytes(t) for t in tokens))
        held: set[bytes] = set()
        with self._conn("store read") as conn:
            for chunk in _chunks(distinct):
                held.update(bytes(r[0]) for r in conn.execute(
                    f"SELECT s.token FROM subjects s WHERE s.token = ANY(%s::bytea[]) AND {_HELD}", (list(chunk),)))
        return [bytes(t) in held for t in tokens]

    def possession_keys(self, tokens: Sequence[bytes]) -> dict[bytes, bytes]:
        """token -> possession key, for the tokens of subjects this store holds."""
        distinct = list(dict.fromkeys(bytes(t) for t in tokens))
        keys: dict[bytes, bytes] = {}
        with self._conn("store read") as conn:
            for chunk in _chunks(distinct):
                keys.update((bytes(t), bytes(p)) for t, p in conn.execute(
                    "SELECT token, possession FROM subjects WHERE token = ANY(%s::bytea[]) AND possession IS NOT NULL",
                    (list(chunk),)))
        return keys

    def missing_possession(self) -> int:
        """How many subjects have no possession key."""
        with self._conn("store read") as conn:
            return int(conn.execute("SELECT count(*) FROM subjects WHERE possession IS NULL").fetchone()[0])

    def held_tokens(self, batch: int = 10_000) -> Iterator[bytes]:
        """Every token of a subject with a fact, streamed from one REPEATABLE READ snapshot."""
        with self._conn("store read") as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            with conn.cursor(name="hedui_held_tokens") as cur:
                cur.itersize = batch
                cur.execute(f"SELECT s.token FROM subjects s WHERE {_HELD}")
                for (token,) in cur:
                    yield bytes(token)

    def held_count(self) -> int:
        """How many subjects this store has a fact about."""
        with self._conn("store read") as conn:
            return int(conn.execute(f"SELECT count(*) FROM subjects s WHERE {_HELD}").fetchone()[0])

    def change_watch(self) -> PgChangeWatch:
        """A watch on store_version (changes when anyone commits a change)."""
        return PgChangeWatch(self)

    def counts(self) -> dict[str, int]:
        """Numbers of subjects and facts held."""
        with self._conn("store read") as conn:
            subjects, facts = conn.execute("SELECT (SELECT count(*) FROM subjects), (SELECT count(*) FROM facts)").fetchone()
        return {"subjects": int(subjects), "facts": int(facts)}

    def newest_as_of(self) -> dict[str, str]:
        """Each data item's newest as-of date held."""
        with self._conn("store read") as conn:
            return dict(conn.execute("SELECT attribute, max(as_of) FROM facts GROUP BY attribute ORDER BY attribute"))

    def check_integrity(self) -> None:
        """StoreCorrupt unless every table is there and the schema version is this one."""
        with self._conn("store integrity check") as conn:
            missing = [t for t in _TABLES if conn.execute("SELECT to_regclass(%s) IS NULL", (t,)).fetchone()[0]]
        if missing:
            raise StoreCorrupt(f"store {self._location} lacks tables {missing}")
        self._check_version()

    # -- writes ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator[PgWriter]:
        """One write transaction, serialised with every other writer of this database by an advisory lock."""
        if self.readonly:
            raise StoreError(f"store {self._location} is open read-only")
        with self._conn("store write") as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (pools.lock_key("facts-writer"),))
            yield PgWriter(conn)


class PgWriter:
    """FactWriter inside one open transaction (see PgStore.writer); ids allocated here under the lock."""

    _INSERT_SUBJECTS: Final[str] = (
        "INSERT INTO subjects(id, token, possession) SELECT * FROM unnest(%s::bigint[], %s::bytea[], %s::bytea[])")
    _SET_POSSESSION: Final[str] = (
        "UPDATE subjects SET possession = v.p FROM unnest(%s::bytea[], %s::bigint[]) AS v(p, id) WHERE subjects.id = v.id")
    _UPSERT_FACTS: Final[str] = (
        "INSERT INTO facts(subject_id, attribute, as_of, source, value) "
        "SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::bigint[]) "
        "ON CONFLICT (subject_id, attribute, as_of, source) "
        "DO UPDATE SET value = excluded.value WHERE facts.value IS DISTINCT FROM excluded.value")
    _FLUSH_AT: Final[int] = 8192
    _ALLOCATED_MAX: Final[int] = 1 << 20

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn
        self._next_id = int(conn.execute("SELECT coalesce(max(id), 0) FROM subjects").fetchone()[0]) + 1
        self._pending: dict[bytes, tuple[int, bytes | None]] = {}
        self._allocated: dict[bytes, int] | None = {} if self._next_id == 1 else None
        self.new_subjects = 0
        self.possession_added = 0

    @staticmethod
    def _checked(possession: bytes) -> bytes:
        if len(possession) != POSSESSION_BYTES:
            raise StoreError(f"possession keys must be {POSSESSION_BYTES} bytes")
        return bytes(possession)

    def subject_id(self, token: bytes, possession: bytes | None = None) -> int:
        """The subject's id, allocating one when new; records a missing possession key."""
        token = bytes(token)
        pending = self._pending.get(token)
        if pending is not None:
            return pending[0]
        row = self._conn.execute("SELECT id, possession FROM subjects WHERE token = %s", (token,)).fetchone()
        if row is not None:
            if row[1] is None and possession is not None:
                self._conn.execute("UPDATE subjects SET possession = %s WHERE id = %s", (self._checked(possession), row[0]))
                self.possession_added += 1
            return int(row[0])
        self._allocated = None
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
        """subject_id(token, possession) of each pair in order, with one SELECT per chunk of tokens."""
        tokens = [bytes(t) for t in tokens]
        given = dict(zip(tokens, possessions, strict=True))
        pending = self._pending
        sid = {t: p[0] for t in given if (p := pending.get(t)) is not None}
        unknown = [t for t in given if t not in sid]
        fill: list[tuple[bytes, int]] = []
        allocated = self._allocated
        select = unknown
        if allocated is not None:
            sid.update((t, allocated[t]) for t in unknown if t in allocated)
            select = []
        for chunk in _chunks(select):
            for token, known, possession in self._conn.execute(
                    "SELECT token, id, possession FROM subjects WHERE token = ANY(%s::bytea[])", (list(chunk),)):
                token = bytes(token)
                sid[token] = int(known)
                if possession is None:
                    fill.append((self._checked(given[token]), int(known)))
        if fill:
            self._conn.execute(self._SET_POSSESSION, ([p for p, _ in fill], [i for _, i in fill]))
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
                    self._allocated = None
            pending.update(zip(new, zip(ids, (bytes(k) for k in keys), strict=True), strict=True))
            self._next_id += len(new)
            self.new_subjects += len(new)
            if len(pending) >= self._FLUSH_AT:
                self.flush()
        return list(map(sid.__getitem__, tokens))

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """A part of the transaction undone, with this writer's counters, when the block raises."""
        allocated = None if self._allocated is None else dict(self._allocated)
        state = (self._next_id, dict(self._pending), self.new_subjects, self.possession_added, allocated)
        try:
            with self._conn.transaction():  # a SAVEPOINT inside the writer's transaction
                yield
        except BaseException:
            self._next_id, self._pending, self.new_subjects, self.possession_added, self._allocated = state
            raise

    def flush(self) -> None:
        """Insert the subjects allocated so far."""
        for chunk in _chunks(list(self._pending.items())):
            self._conn.execute(self._INSERT_SUBJECTS, ([i for _, (i, _) in chunk], [t for t, _ in chunk],
                                                       [p for _, (_, p) in chunk]))
        self._pending = {}

    def upsert_facts(self, rows: Iterable[tuple[int, str, str, str, int]]) -> int:
        """Upsert rows a chunk per statement; the number inserted or changed (a key repeated in a chunk: the last wins)."""
        changed = 0
        rows = iter(rows)
        while chunk := list(islice(rows, _CHUNK)):
            self.flush()  # the chunk may name subjects allocated while it was read
            last = {(r[0], r[1], r[2], r[3]): r[4] for r in chunk}
            cols = list(zip(*((*k, v) for k, v in last.items()), strict=True))
            changed += self._conn.execute(self._UPSERT_FACTS, [list(c) for c in cols]).rowcount
        self.flush()
        return changed

    def set_aggregates(self, aggregates: Mapping[str, str]) -> None:
        """Record how each attribute's same-date facts combine ('sum' or 'max')."""
        with self._conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO attributes(code, aggregate) VALUES (%s, %s) ON CONFLICT (code) "
                "DO UPDATE SET aggregate = excluded.aggregate WHERE attributes.aggregate IS DISTINCT FROM excluded.aggregate",
                sorted(aggregates.items()))
