"""Storage on one PostgreSQL database: the fact store, nonces, chains and checkpoints a member opens."""

from __future__ import annotations

import secrets
import threading
from types import TracebackType
from typing import Any, Self

from node.store.errors import StoreError
from node.store.postgres import pool as pools
from node.store.postgres.chain import PgChain
from node.store.postgres.checkpoints import PgCheckpoints
from node.store.postgres.facts import PgStore
from node.store.postgres.nonces import PgNonceStore

LEDGER_TABLE = "ledger"
AUDIT_TABLE = "audit"


class PgStorage:
    """`[store] url = "postgresql://..."`: every object on one database (a schema per member via
    `?options=-csearch_path%3D<schema>` when several members share a database)."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self._url = url
        self._readonly = readonly
        self._opened: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def url(self) -> str:
        return pools.redact(self._url)

    @property
    def readonly(self) -> bool:
        return self._readonly

    def _keep(self, obj: Any) -> Any:
        with self._lock:
            if self._closed:
                obj.close()
                raise StoreError("storage is closed")
            self._opened.append(obj)
        return obj

    def facts(self) -> PgStore:
        """The province's fact store (tables subjects, facts, attributes)."""
        return self._keep(PgStore(self._url, readonly=self._readonly))

    def nonces(self, *, window_ms: int) -> PgNonceStore:
        """The replay guard's nonces (table hedui_nonces)."""
        if self._readonly:
            raise StoreError("the nonce store cannot be opened read-only")
        return self._keep(PgNonceStore(self._url, window_ms=window_ms))

    def chain(self, table: str, *, prunable: bool = False) -> PgChain:
        """The chain in `table` (created if absent, unless read-only)."""
        return self._keep(PgChain(self._url, table, prunable=prunable, readonly=self._readonly))

    def ledger(self) -> PgChain:
        """The consent ledger; a new (writable) one gets its identity entry, as node.store.ledger.open_ledger does.

        There is no ledger.head file: a PostgreSQL commit is durable on the server (synchronous_commit on),
        and the file of one replica's host could not speak for the others.
        """
        chain = self.chain(LEDGER_TABLE)
        if not self._readonly:
            try:
                chain.append_next(lambda head: _identity_if_missing(chain, head))
            except BaseException:
                chain.close()
                raise
        return chain

    def audit(self) -> PgChain:
        """The member's audit chain (prunable)."""
        return self.chain(AUDIT_TABLE, prunable=True)

    def checkpoints(self) -> PgCheckpoints:
        """The node's own signed audit checkpoints (table audit_checkpoints)."""
        return self._keep(PgCheckpoints(self._url, readonly=self._readonly))

    def close(self) -> None:
        """Close whatever this storage opened; idempotent."""
        with self._lock:
            self._closed = True
            opened, self._opened = self._opened, []
        for obj in opened:
            obj.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _identity_if_missing(chain: PgChain, head: tuple[int, bytes]) -> list[tuple[str, str, bytes]]:
    """The ledger.epoch entry of a ledger that has none (inside the append transaction, under the chain lock)."""
    from node.store import ledger

    if ledger.read_identity(chain) is not None:  # type: ignore[arg-type]
        return []
    lineage = ((ledger.LEGACY_EPOCH, head[0]),) if head[0] else ()
    identity = ledger.Identity(secrets.token_bytes(16), secrets.token_bytes(16), lineage, head[0] + 1,
                               "upgraded" if head[0] else "created")
    return [(ledger.EPOCH, ledger.IDENTITY_KEY, identity.payload())]
