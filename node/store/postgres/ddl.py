"""Schema changes only when the catalog lacks something, under the schema lock and a lock timeout."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
