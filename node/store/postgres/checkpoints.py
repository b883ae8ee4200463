"""The node's own signed audit checkpoints in PostgreSQL: one row per checkpoint, append-only by trigger."""

from __future__ import annotations

import base64
import binascii
import contextlib
import threading
import weakref
from typing import TYPE_CHECKING, Final

import psycopg

from node import files
from node.store.errors import StoreError
from node.store.postgres import ddl
from node.store.postgres import pool as pools

if TYPE_CHECKING:
    from node.store.audit.checkpoints import SignedCheckpoint

TABLE: Final[str] = "audit_checkpoints"
_SCHEMA: Final[str] = f"""
CREATE TABLE IF NOT EXISTS {TABLE}(pos BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, line TEXT NOT NULL);
CREATE OR REPLACE FUNCTION hedui_checkpoints_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'append-only: % on % refused', TG_OP, TG_TABLE_NAME USING ERRCODE = 'restrict_violation'; END $$;
CREATE OR REPLACE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION hedui_checkpoints_refuse();
CREATE OR REPLACE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION hedui_checkpoints_refuse();
"""


class PgCheckpoints:
    """CheckpointStorage: each row holds the JSON line audit-checkpoints.jsonl would hold (the blob authoritative)."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.readonly = readonly
        self._closed = False
        self._lock = threading.Lock()
        self._pool = pools.acquire(url, readonly=readonly)
        self._release = weakref.finalize(self, pools.release, self._pool)  # also if dropped unclosed
        try:
            if not readonly:
                with self._conn("creating") as conn:
                    ddl.ensure(conn, lambda c: ddl.present(c, (TABLE,), ("hedui_checkpoints_refuse",), (
                        (TABLE, f"{TABLE}_append_only"), (TABLE, f"{TABLE}_no_truncate"))), _SCHEMA)
        except BaseException:
            self.close()
            raise

    def _conn(self, what: str) -> contextlib.AbstractContextManager[psycopg.Connection]:
        if self._closed:
            raise StoreError("checkpoint storage is closed")
        return pools.connection(self._pool, f"{what} audit checkpoints")

    def append(self, signed: SignedCheckpoint) -> None:
        """Keep one signed checkpoint durably (one committed INSERT)."""
        if self.readonly:
            raise StoreError("checkpoint storage is open read-only")
        with self._conn("writing") as conn:
            conn.execute(f"INSERT INTO {TABLE}(line) VALUES (%s)", (signed.to_json_line(),))

    def read(self) -> list[tuple[int, bytes | None, str | None]]:
        """(position, blob or None, problem or None) for every row, in the order appended."""
        with self._conn("reading") as conn:
            if conn.execute("SELECT to_regclass(%s) IS NULL", (TABLE,)).fetchone()[0]:
                return []
            rows = conn.execute(f"SELECT pos, line FROM {TABLE} ORDER BY pos").fetchall()
        out: list[tuple[int, bytes | None, str | None]] = []
        for n, (_, line) in enumerate(rows, start=1):
            try:
                out.append((n, base64.b64decode(files.parse_json(line)["blob"], validate=True), None))
            except (ValueError, KeyError, TypeError, binascii.Error):
                out.append((n, None, "not a checkpoint line"))
        return out

    def last_link(self) -> tuple[int, bytes]:
        """The `link` of the last readable checkpoint held (`NO_PREVIOUS` if none)."""
        from node.store.audit.checkpoints import last_link

        return last_link(self.read())

    def close(self) -> None:
        """Give back the pool; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._release()
