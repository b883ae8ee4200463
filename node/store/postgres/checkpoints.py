"""The node's own signed audit checkpoints in PostgreSQL: one row per checkpoint, append-only by trigger."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Final

from node import files
from node.store.errors import StoreError
from node.store.postgres import ddl, schema
from node.store.postgres.pooled import Pooled

if TYPE_CHECKING:
    from node.store.audit.checkpoints import SignedCheckpoint

TABLE: Final[str] = "audit_checkpoints"
_REFUSE: Final[str] = "hedui_checkpoints_refuse"
_SCHEMA: Final[str] = (f"CREATE TABLE IF NOT EXISTS {TABLE}(pos BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                        "line TEXT NOT NULL)")
GUARDS: Final[ddl.Guards] = ddl.Guards(
    {_REFUSE: schema.BODIES["hedui_chain_refuse"]},  # the chains' refusal, under this table's own function name
    {f"{TABLE}_append_only": (TABLE, ddl.ROW | ddl.BEFORE | ddl.UPDATE | ddl.DELETE, _REFUSE),
     f"{TABLE}_no_truncate": (TABLE, ddl.BEFORE | ddl.TRUNCATE, _REFUSE)})


class PgCheckpoints(Pooled):
    """CheckpointStorage: each row holds the JSON line audit-checkpoints.jsonl would hold (the blob authoritative).

    The rows are append-only by always-enabled triggers (`GUARDS`: reported by missing_guards(), restored by a
    writable open).
    """

    what = "checkpoint storage"
    relations = (TABLE,)
    guards = GUARDS

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        super().__init__(url, _SCHEMA, readonly=readonly)

    def _label(self, doing: str) -> str:
        return f"{doing} audit checkpoints"

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
