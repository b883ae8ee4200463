"""Schema changes only when the catalog lacks something, under the schema lock and a lock timeout; guard triggers."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import psycopg

from node.store.postgres import pool as pools

#: How long a schema change waits for a table lock (CREATE TRIGGER / CREATE INDEX conflict with an open write
#: transaction on the table, e.g. an ingest) or for another opener's schema lock, before it fails as a
#: StoreError naming the lock timeout. Opens that find the catalog complete run no DDL and take no lock.
LOCK_TIMEOUT_MS: Final[int] = 5000

_COMPLETE_SQL: Final[str] = """
SELECT (SELECT count(*) FROM unnest(%s::text[]) r WHERE to_regclass(r) IS NOT NULL) = cardinality(%s::text[])
   AND (SELECT count(*) FROM unnest(%s::text[]) f WHERE to_regproc(f) IS NOT NULL) = cardinality(%s::text[])
   AND (SELECT count(*) FROM unnest(%s::text[], %s::text[]) AS w(rel, name)
        JOIN pg_trigger t ON t.tgrelid = to_regclass(w.rel) AND t.tgname = w.name
        WHERE NOT t.tgisinternal AND t.tgenabled <> 'D') = cardinality(%s::text[])
"""


def present(conn: psycopg.Connection, relations: Sequence[str], functions: Sequence[str] = (),
            triggers: Sequence[tuple[str, str]] = ()) -> bool:
    """Whether every relation (table or index), function and enabled trigger (relation, name) exists."""
    rels, funcs = list(relations), list(functions)
    on, names = [t[0] for t in triggers], [t[1] for t in triggers]
    return bool(conn.execute(_COMPLETE_SQL, (rels, rels, funcs, funcs, on, names, names)).fetchone()[0])


def locked(conn: psycopg.Connection) -> None:
    """Inside a transaction: bound its lock waits by LOCK_TIMEOUT_MS and take the schema advisory lock."""
    conn.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (pools.lock_key("schema"),))


def ensure(conn: psycopg.Connection, complete: Callable[[psycopg.Connection], bool], script: str) -> bool:
    """Run `script` unless `complete(conn)` (checked first without, then under the schema lock); whether it ran."""
    if complete(conn):
        return False
    with conn.transaction():
        locked(conn)
        if complete(conn):
            return False
        conn.execute(script)
    return True


# -- guards: trigger functions and the triggers that call them, checked at every open -------------------------

# pg_trigger.tgtype bits.
ROW, BEFORE, INSERT, DELETE, UPDATE, TRUNCATE = 1, 2, 4, 8, 16, 32
_EVENTS: Final[dict[int, str]] = {INSERT: "INSERT", DELETE: "DELETE", UPDATE: "UPDATE", TRUNCATE: "TRUNCATE"}


def create_function(name: str, body: str) -> str:
    """CREATE OR REPLACE FUNCTION of a trigger function with this body (dollar-quoted verbatim), its search_path
    pinned to the schema it is created in with pg_temp last: a session cannot put its own (temporary) tables in
    front of the real ones. Run it, then PIN_SEARCH_PATH with the same name."""
    return f'CREATE OR REPLACE FUNCTION "{name}"() RETURNS trigger LANGUAGE plpgsql AS $$' + body + "$$"


# The schema a function was just created in is only known to the server: pin its search_path there (psycopg
# cannot bind parameters into DDL, so one DO block builds the ALTER with format(%I)).
PIN_SEARCH_PATH: Final[str] = (
    "DO $pin$ BEGIN EXECUTE format('ALTER FUNCTION %I() SET search_path = %I, pg_temp', {name!r}, current_schema()); "
    "END $pin$"
)


def create_guard(name: str, table: str, tgtype: int, function: str) -> str:
    """DROP + CREATE + ENABLE ALWAYS of one guard trigger (an ordinary or replica-only trigger does not fire
    in a `session_replication_role = replica` session, so only an always-enabled guard guards)."""
    events = " OR ".join(word for bit, word in _EVENTS.items() if tgtype & bit)
    each = "ROW" if tgtype & ROW else "STATEMENT"
    timing = "BEFORE" if tgtype & BEFORE else "AFTER"
    return (f'DROP TRIGGER IF EXISTS "{name}" ON "{table}"; '
            f'CREATE TRIGGER "{name}" {timing} {events} ON "{table}" FOR EACH {each} EXECUTE FUNCTION "{function}"(); '
            f'ALTER TABLE "{table}" ENABLE ALWAYS TRIGGER "{name}"')


ENABLE_ALWAYS: Final[str] = 'ALTER TABLE "{t}" ENABLE ALWAYS TRIGGER "{name}"'
# The triggers that guard: always-enabled ('D' disabled, 'O' origin-only, 'R' replica-only do not count), no WHEN
# clause, no column list, a PL/pgSQL function; with their table, type and function name (compared with Guards).
# The function is the trigger's own (t.tgfoid) and must live in the current schema, as the table does: a trigger
# re-pointed at a same-named function in another schema does not count (a trigger function takes no arguments,
# so the name in this schema is that one row, whose source and search_path _FUNCTIONS_SQL checks).
_TRIGGERS_SQL: Final[str] = (
    "SELECT c.relname, t.tgname, t.tgtype, p.proname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
    "JOIN pg_class c ON c.oid = t.tgrelid "
    "WHERE t.tgrelid = ANY(ARRAY(SELECT to_regclass(quote_ident(r)) FROM unnest(%s::text[]) r)) "
    "AND c.relnamespace = to_regnamespace(quote_ident(current_schema())) AND p.pronamespace = c.relnamespace "
    "AND NOT t.tgisinternal AND t.tgenabled = 'A' AND t.tgqual IS NULL AND cardinality(t.tgattr::int2[]) = 0 "
    "AND p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'plpgsql')"
)
# The source of guard functions, by name in the current schema (the one the triggers' functions must be in; not
# the search path, where another schema's function of the same name may come first or a trigger's may not be).
# A function counts as intact only with the expected body and its search_path pinned to the current schema.
_FUNCTIONS_SQL: Final[str] = (
    "SELECT proname, CASE WHEN proconfig = ARRAY['search_path=' || quote_ident(current_schema()) || ', pg_temp'] "
    "THEN prosrc END FROM pg_proc WHERE oid = ANY(ARRAY(SELECT to_regproc(quote_ident(current_schema()) || '.' "
    "|| quote_ident(n)) FROM unnest(%s::text[]) n))"
)


@dataclass(frozen=True)
class Guards:
    """The PL/pgSQL trigger functions (name -> body, exactly as pg_proc.prosrc holds it) and the always-enabled
    triggers (name -> (table, tgtype, function)) that keep some tables append-only or counted."""

    functions: Mapping[str, str]
    triggers: Mapping[str, tuple[str, int, str]]

    def missing(self, conn: psycopg.Connection) -> tuple[str, ...]:
        """Functions whose source or search_path differ ("name()"), then triggers absent, altered or not ALWAYS."""
        found = dict(conn.execute(_FUNCTIONS_SQL, (list(self.functions),)).fetchall())
        changed = [f"{name}()" for name, body in self.functions.items() if found.get(name) != body]
        tables = sorted({table for table, _, _ in self.triggers.values()})
        present = {tuple(row) for row in conn.execute(_TRIGGERS_SQL, (tables,))}
        return (*changed, *(name for name, (table, tgtype, fn) in self.triggers.items()
                            if (table, name, tgtype, fn) not in present))

    def install(self, conn: psycopg.Connection, problems: Sequence[str]) -> None:
        """Inside the schema lock: re-create the functions and triggers `missing` named (tables must exist)."""
        for name, body in self.functions.items():
            if f"{name}()" in problems:
                conn.execute(create_function(name, body))
                conn.execute(PIN_SEARCH_PATH.format(name=name))
        for name, (table, tgtype, fn) in self.triggers.items():
            if name in problems:
                conn.execute(create_guard(name, table, tgtype, fn))


def ensure_guarded(conn: psycopg.Connection, relations: Sequence[str], script: str,
                   guards: Guards | None) -> tuple[str, ...]:
    """Run `script` when a relation is missing and re-install guards `guards.missing` names, under the schema lock;
    nothing (no DDL, no lock) when all is in place. The guards re-installed on relations that were there."""
    if present(conn, relations) and (guards is None or not guards.missing(conn)):
        return ()
    with conn.transaction():
        locked(conn)
        existed = present(conn, relations)
        if not existed:
            conn.execute(script)
        problems = () if guards is None else guards.missing(conn)
        if guards is not None:
            guards.install(conn, problems)
    return problems if existed else ()
