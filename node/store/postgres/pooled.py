"""The common shape of a PostgreSQL-backed object: the process's pool for its URL, its schema and guards, close()."""

from __future__ import annotations

import contextlib
import threading
import weakref
from types import TracebackType
from typing import Self

import psycopg

from node.store.errors import StoreError
from node.store.postgres import ddl
from node.store.postgres import pool as pools


class Pooled:
    """Holds a pool reference (given back on close() or when dropped) and creates `schema` under the schema lock.

    With `relations`, the schema runs only when one of them is missing, and `guards` (the tables' trigger
    functions and always-enabled triggers) are checked at every writable open and re-installed when dropped,
    disabled or altered (`restored_guards`); `missing_guards()` reports them. Without, the schema runs at every
    writable open. A subclass sets what `_open` needs before calling this __init__.
    """

    what = "storage"
    relations: tuple[str, ...] = ()
    guards: ddl.Guards | None = None

    def __init__(self, url: str, schema: str | None = None, *, readonly: bool = False) -> None:
        self.readonly = readonly
        self.restored_guards: tuple[str, ...] = ()
        self._schema = schema
        self._closed = False
        self._close_lock = threading.Lock()
        self._pool = pools.acquire(url, readonly=readonly)
        self._release = weakref.finalize(self, pools.release, self._pool)  # also if dropped unclosed
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        """Create the schema and restore the guards (unless read-only); an exception closes the object again."""
        if self._schema is None or self.readonly:
            return
        with self._conn("creating") as conn:
            if self.relations:
                self.restored_guards = ddl.ensure_guarded(conn, self.relations, self._schema, self.guards)
                return
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (pools.lock_key("schema"),))
                conn.execute(self._schema)

    def _label(self, doing: str) -> str:
        """What a connection error names (e.g. "reading shared document")."""
        return f"{doing} {self.what}"

    def _conn(self, doing: str) -> contextlib.AbstractContextManager[psycopg.Connection]:
        if self._closed:
            raise StoreError(f"{self.what} is closed")
        return pools.connection(self._pool, self._label(doing))

    def missing_guards(self) -> tuple[str, ...]:
        """Guard triggers absent, altered or not always-enabled (disabled, origin- or replica-only), and guard
        functions whose source or search_path was changed ("name()"); () when there are none to check."""
        if self.guards is None:
            return ()
        with self._conn("reading") as conn:
            return self.guards.missing(conn)

    def close(self) -> None:
        """Give back the pool; idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
