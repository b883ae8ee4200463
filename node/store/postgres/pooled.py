"""The common shape of a small PostgreSQL-backed object: the process's pool for its URL, its schema created once, close()."""

from __future__ import annotations

import contextlib
import threading
import weakref

import psycopg

from node.store.errors import StoreError
from node.store.postgres import pool as pools


class Pooled:
    """Holds a pool reference (given back on close() or when dropped) and creates `schema` under the schema lock."""

    what = "storage"

    def __init__(self, url: str, schema: str | None, *, readonly: bool = False) -> None:
        self.readonly = readonly
        self._closed = False
        self._close_lock = threading.Lock()
        self._pool = pools.acquire(url, readonly=readonly)
        self._release = weakref.finalize(self, pools.release, self._pool)  # also if dropped unclosed
        if schema is None or readonly:
            return
        try:
            with self._conn("creating") as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (pools.lock_key("schema"),))
                conn.execute(schema)
        except BaseException:
            self.close()
            raise

    def _conn(self, doing: str) -> contextlib.AbstractContextManager[psycopg.Connection]:
        if self._closed:
            raise StoreError(f"{self.what} is closed")
        return pools.connection(self._pool, f"{doing} {self.what}")

    def close(self) -> None:
        """Give back the pool; idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._release()
