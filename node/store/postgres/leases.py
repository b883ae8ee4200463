"""A named singleton role on PostgreSQL: a session advisory lock on a connection of its own (one holder per database)."""

from __future__ import annotations

import threading
from typing import Final

import psycopg

from node.store.postgres import pool as pools

_CONNECT_TIMEOUT_S: Final[int] = 10


class PgLease:
    """Held while this object's own session holds `pg_try_advisory_lock(name)`; the server drops it when the
    session ends (the process died, the connection broke, the server restarted)."""

    def __init__(self, url: str, name: str) -> None:
        self._url = url
        self.name = name
        self._key = pools.lock_key("lease", name)
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def held(self) -> bool:
        """Never raises for a database that is down: not reachable means not held (another holder may lead)."""
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.execute("SELECT 1")  # the session (and with it the lock) is still there
                    return True
                except psycopg.Error:
                    self._drop()
            try:
                conn = psycopg.connect(self._url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S,
                                       application_name="hedui")
            except psycopg.Error:
                return False
            try:
                (taken,) = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
            except psycopg.Error:
                conn.close()
                return False
            if not taken:
                conn.close()
                return False
            self._conn = conn
            return True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()  # ending the session releases the lock
            except psycopg.Error:
                pass

    def release(self) -> None:
        with self._lock:
            self._drop()

    close = release
