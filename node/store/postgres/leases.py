"""A named singleton role on PostgreSQL: a session advisory lock on a connection of its own (one holder per database)."""

from __future__ import annotations

import threading
import time
from typing import Final

import psycopg

from node.store.errors import StoreError
from node.store.postgres import pool as pools

_CONNECT_TIMEOUT_S: Final[int] = 3
_CHECK_S: Final[float] = 2.0  # a holder confirms its session at most this often (held() is called on hot paths)
_RETRY_S: Final[float] = 5.0  # after a failed connect, not again before this (held() must not stall its caller)
# The server drops the session (and the lock) of a holder whose host vanished within ~30 s, not the OS default 2 h;
# the client gives up on an unanswered check after 5 s (tcp_user_timeout) instead of TCP's minutes.
_SESSION: Final[tuple[str, ...]] = (
    "SET tcp_keepalives_idle = 10", "SET tcp_keepalives_interval = 5", "SET tcp_keepalives_count = 3",
    "SET tcp_user_timeout = 15000",
)


class PgLease:
    """Held while this object's own session holds `pg_try_advisory_lock(name)`; the server drops it when the
    session ends (the process died, the connection broke, the server restarted)."""

    def __init__(self, url: str, name: str) -> None:
        self._url = url
        self.name = name
        self._key = pools.lock_key("lease", name)
        self._conn: psycopg.Connection | None = None
        self._checked = 0.0
        self._failed = -_RETRY_S
        self._lock = threading.Lock()
        self._restores: int | None = None  # the store's restore count its first session found (pool.restores)

    def held(self) -> bool:
        """Never raises for a database that is down: not reachable means not held (another holder may lead)."""
        with self._lock:
            if pools.fenced(self._url):  # restored since this process opened it: it leads nothing until restarted
                self._drop()
                return False
            now = time.monotonic()
            if self._conn is not None:
                if now - self._checked < _CHECK_S:
                    return True
                try:
                    self._conn.execute("SELECT 1")  # the session (and with it the lock) is still there
                    self._checked = now
                    return True
                except psycopg.Error:
                    self._drop()
            if now - self._failed < _RETRY_S:
                return False
            try:
                conn = psycopg.connect(self._url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S,
                                       application_name="hedui", tcp_user_timeout=5000)
            except psycopg.Error:
                self._failed = now
                return False
            try:
                for statement in _SESSION:
                    conn.execute(statement)
                pools.hold_shared(conn, self._url)  # like every Hedui session: no lease taken during a restore
                count = pools.restores(conn)
                if self._restores is not None and count != self._restores:  # restored since: as the pools do
                    pools.fence(self._url)
                    raise StoreError(pools.RESTORED)
                self._restores = count
                (taken,) = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
            except (psycopg.Error, StoreError):
                conn.close()
                self._failed = now
                return False
            if not taken:
                conn.close()
                return False
            self._conn, self._checked = conn, now
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
