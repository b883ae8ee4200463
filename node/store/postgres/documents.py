"""Shared documents in PostgreSQL: one row per name with a version counter, so "changed?" is one small read."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Final

from node.store.postgres import pool as pools
from node.store.postgres.pooled import Pooled

_SCHEMA: Final[str] = """
CREATE TABLE IF NOT EXISTS hedui_documents(name TEXT PRIMARY KEY, body BYTEA NOT NULL, version BIGINT NOT NULL);
"""


class PgDocument(Pooled):
    """node.store.interfaces.SharedDocument `name` in the table hedui_documents."""

    what = "shared document"

    def __init__(self, url: str, name: str) -> None:
        super().__init__(url, _SCHEMA)
        self.name = name
        self._version: int | None = None
        self._lock = threading.Lock()

    def changed(self) -> bytes | None:
        with self._conn("reading") as conn:
            row = conn.execute("SELECT version FROM hedui_documents WHERE name = %s", (self.name,)).fetchone()
            if row is None or row[0] == self._version:
                return None
            row = conn.execute("SELECT body, version FROM hedui_documents WHERE name = %s", (self.name,)).fetchone()
        self._version = row[1]
        return bytes(row[0])

    def write(self, body: bytes) -> None:
        with self._conn("writing") as conn:
            (self._version,) = conn.execute(
                "INSERT INTO hedui_documents(name, body, version) VALUES (%s, %s, 1) ON CONFLICT (name) DO UPDATE "
                "SET body = excluded.body, version = hedui_documents.version + 1 RETURNING version",
                (self.name, bytes(body))).fetchone()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """A session advisory lock on the name, held on one pooled connection for the block."""
        key = pools.lock_key("document", self.name)
        with self._lock, self._conn("locking") as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
