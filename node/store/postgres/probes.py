"""The probing ledger in PostgreSQL: one row per (requester, consent, item, keyed cut digest), never removed.

Every replica of a province on every host counts against the same rows: an admit takes a transaction
advisory lock on (requester, consent), counts, and inserts, so two hosts cannot both grant the last cut.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Final

from node.store.postgres import ddl
from node.store.postgres import pool as pools
from node.store.postgres.pooled import Pooled
from node.store.probes import Key, cut_digest

_CACHE_MAX: Final[int] = 100_000
_SCHEMA: Final[str] = """
CREATE TABLE IF NOT EXISTS hedui_probes(
    requester TEXT NOT NULL, consent_id TEXT NOT NULL, item TEXT NOT NULL, cut BYTEA NOT NULL, at_ms BIGINT NOT NULL,
    PRIMARY KEY (requester, consent_id, item, cut));
"""
_REFUSE: Final[str] = "hedui_probes_refuse"
# Uses are never removed or changed: always-enabled guards (reported by missing_guards(), restored by a writable open).
GUARDS: Final[ddl.Guards] = ddl.Guards(
    {_REFUSE: """
BEGIN
    RAISE EXCEPTION 'probe uses are never removed or changed' USING ERRCODE = 'restrict_violation';
END """},
    {"hedui_probes_append_only": ("hedui_probes", ddl.ROW | ddl.BEFORE | ddl.UPDATE | ddl.DELETE, _REFUSE),
     "hedui_probes_no_truncate": ("hedui_probes", ddl.BEFORE | ddl.TRUNCATE, _REFUSE)})


class PgProbeLedger(Pooled):
    """node.store.interfaces.ProbeBudgets in the table hedui_probes (same digests as the SQLite ProbeLedger)."""

    what = "probing ledger"
    relations = ("hedui_probes",)
    guards = GUARDS

    def __init__(self, url: str, *, key: bytes) -> None:
        super().__init__(url, _SCHEMA)
        self._key = key
        self._lock = threading.Lock()
        self._known: set[Key] = set()  # uses known to be committed (rows are never removed)

    def admit(self, requester: str, consent_id: str, cuts: Mapping[str, str], budget: int) -> tuple[str | None, int]:
        keys = [(requester, consent_id, item, cut_digest(self._key, requester, consent_id, item, c))
                for item, c in sorted(cuts.items())]
        with self._lock:
            if all(k in self._known for k in keys):
                return None, 0  # asked before, and committed: free
        items = [k[2] for k in keys]
        with self._conn("writing") as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (pools.lock_key("probes", requester, consent_id),))
            used: dict[str, set[bytes]] = {item: set() for item in items}
            for item, digest in conn.execute(
                    "SELECT item, cut FROM hedui_probes WHERE requester = %s AND consent_id = %s AND item = ANY(%s)",
                    (requester, consent_id, items)).fetchall():
                used[item].add(bytes(digest))
            new = [k for k in keys if k[3] not in used[k[2]]]
            for key in new:
                if len(used[key[2]]) + 1 > budget:
                    return key[2], 0
            now_ms = int(time.time() * 1000)
            if new:
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO hedui_probes(requester, consent_id, item, cut, at_ms) "
                                    "VALUES (%s, %s, %s, %s, %s)", [(*k, now_ms) for k in new])
        with self._lock:
            if len(self._known) + len(keys) > _CACHE_MAX:
                self._known.clear()
            self._known.update(keys)
        return None, len(new)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Each admit commits on its own here (no batch transaction: two batches' per-consent locks taken in
        different orders could deadlock); the verdicts are the same."""
        yield

    def uses(self, requester: str, consent_id: str, item: str) -> int:
        with self._conn("reading") as conn:
            (n,) = conn.execute("SELECT count(*) FROM hedui_probes WHERE requester = %s AND consent_id = %s "
                                "AND item = %s", (requester, consent_id, item)).fetchone()
        return int(n)
