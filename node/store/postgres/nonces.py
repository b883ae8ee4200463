"""Seen request nonces in PostgreSQL: one row per nonce, insert-or-refuse atomically across replicas."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Final

import psycopg

from node.store.errors import StoreError
from node.store.postgres import pool as pools
from node.store.postgres.pooled import Pooled

_PURGE_EVERY: Final[int] = 1000
_SCHEMA: Final[str] = """
CREATE TABLE IF NOT EXISTS hedui_nonces(key BYTEA PRIMARY KEY, issued_at_ms BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS hedui_nonces_by_time ON hedui_nonces(issued_at_ms);
"""
# One clock for every replica: the database's. Rows older than twice the window by now() are purged, so a nonce
# issued before that horizon is never recorded as fresh (it may have been seen and purged): it answers "used".
_HORIZON: Final[str] = "(extract(epoch FROM now()) * 1000)::bigint - %(keep)s"
_INSERT_ONE: Final[str] = (
    "INSERT INTO hedui_nonces(key, issued_at_ms) SELECT %(key)s, %(at)s::bigint "
    f"WHERE %(at)s::bigint >= {_HORIZON} ON CONFLICT DO NOTHING"
)
# Duplicates inside one statement are skipped by ON CONFLICT DO NOTHING; RETURNING names the rows inserted.
_INSERT_MANY: Final[str] = (
    "INSERT INTO hedui_nonces(key, issued_at_ms) SELECT k, t FROM unnest(%(keys)s::bytea[], %(ats)s::bigint[]) "
    f"WITH ORDINALITY AS u(k, t, n) WHERE t >= {_HORIZON} ORDER BY n ON CONFLICT DO NOTHING RETURNING key"
)
_PURGE: Final[str] = f"DELETE FROM hedui_nonces WHERE issued_at_ms < {_HORIZON}"


def _key(requester: str, nonce: bytes) -> bytes:
    return requester.encode() + b"\x00" + bytes(nonce)


class PgNonceStore(Pooled):
    """Remembers (requester, nonce) pairs for twice the clock window, by the database's clock, in hedui_nonces.

    The primary key makes "fresh or replay" one atomic decision of the server: of concurrent
    inserts of one key from any number of processes or hosts, exactly one inserts a row.
    """

    what = "nonce store"
    relations = ("hedui_nonces", "hedui_nonces_by_time")

    def __init__(self, url: str, *, window_ms: int) -> None:
        self._window_ms = window_ms
        self._local = threading.local()  # the connection of this thread's open transaction()
        self._lock = threading.Lock()
        self._inserts = 0
        super().__init__(url, _SCHEMA)

    @property
    def window_ms(self) -> int:
        return self._window_ms

    def _label(self, doing: str) -> str:
        return f"{self.what} {doing}"

    @contextlib.contextmanager
    def _writing(self) -> Iterator[psycopg.Connection]:
        """This thread's transaction() connection, else a pooled one for one autocommitted statement."""
        held: psycopg.Connection | None = getattr(self._local, "conn", None)
        if held is not None:
            try:
                yield held
            except psycopg.Error as exc:
                raise StoreError(f"nonce store write failed: {pools.describe(exc)}") from None
            return
        with self._conn("write") as conn:
            yield conn

    def remember(self, requester: str, nonce: bytes, issued_at_ms: int) -> bool:
        """Record a nonce; False when this requester already used it."""
        with self._writing() as conn:
            fresh = conn.execute(_INSERT_ONE, {"key": _key(requester, nonce), "at": issued_at_ms,
                                               "keep": 2 * self._window_ms}).rowcount == 1
        self._count(1)
        return fresh

    def remember_many(self, nonces: Sequence[tuple[str, bytes, int]]) -> list[bool]:
        """Record many in one statement (all or none); per nonce, False when used before or earlier in `nonces`."""
        keys = [_key(requester, nonce) for requester, nonce, _ in nonces]
        if not keys:
            return []
        # In key order: two replicas inserting overlapping batches take the row locks in one order (no deadlock).
        ordered = sorted(range(len(keys)), key=keys.__getitem__)  # stable: a repeat stays after its first
        with self._writing() as conn:
            inserted = {bytes(r[0]) for r in conn.execute(_INSERT_MANY, {
                "keys": [keys[i] for i in ordered], "ats": [nonces[i][2] for i in ordered],
                "keep": 2 * self._window_ms}).fetchall()}
        fresh: list[bool] = []
        for key in keys:
            fresh.append(key in inserted)
            inserted.discard(key)  # a repeat later in the batch is a replay
        self._count(len(keys))
        return fresh

    def _count(self, n: int) -> None:
        """Forget nonces older than twice the window by the database's now() every _PURGE_EVERY inserts (outside
        any transaction()); a replica's own clock, fast or slow, decides nothing here."""
        with self._lock:
            self._inserts += n
            due = self._inserts >= _PURGE_EVERY and getattr(self._local, "conn", None) is None
            if due:
                self._inserts = 0
        if due:
            with self._conn("write") as conn:
                conn.execute(_PURGE, {"keep": 2 * self._window_ms})

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """This thread's remember calls in one transaction, committed at the end even on an exception.

        Rows are inserted as they are recorded, so a concurrent insert of the same key anywhere
        waits on the row lock and then sees the replay.
        """
        if getattr(self._local, "conn", None) is not None:
            yield  # nested: the outer transaction commits
            return
        with self._conn("write") as conn:
            conn.execute("BEGIN")
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None
                conn.execute("COMMIT")  # a failed statement inside makes this a rollback (nothing half-written)
