"""Storage on one PostgreSQL database: the fact store, nonces, chains and checkpoints a member opens."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from node.store.errors import StoreError
from node.store.postgres import checkpoints, facts, probes
from node.store.postgres import pool as pools
from node.store.postgres.chain import PgChain
from node.store.postgres.checkpoints import PgCheckpoints
from node.store.postgres.facts import PgStore
from node.store.postgres.nonces import PgNonceStore
from node.store.postgres.documents import PgDocument
from node.store.postgres.leases import PgLease
from node.store.postgres.locators import PgLocators
from node.store.postgres.probes import PgProbeLedger
from node.store.sqlite.leases import check_name

LEDGER_TABLE = "ledger"
AUDIT_TABLE = "audit"
# What missing_guards() checks besides the chains: name -> (a table it guards, that must exist, and its guards).
TABLE_GUARDS = {"checkpoints": (checkpoints.TABLE, checkpoints.GUARDS), "probes": ("hedui_probes", probes.GUARDS),
                "facts": ("facts", facts.GUARDS)}


class PgStorage:
    """`[store] url = "postgresql://..."`: every object on one database (a schema per member via
    `?options=-csearch_path%3D<schema>` when several members share a database)."""

    def __init__(self, url: str, *, readonly: bool = False, data_dir: Path | None = None) -> None:
        self._url = url
        self._data_dir = Path(data_dir) if data_dir is not None else Path(".")
        self._readonly = readonly
        self._opened: weakref.WeakSet[Any] = weakref.WeakSet()  # what close() closes; a dropped object drops out
        self._restored: dict[str, None] = {}  # guard names the objects opened re-installed, in order, once each
        self._lock = threading.Lock()
        self._closed = False

    @property
    def url(self) -> str:
        return pools.redact(self._url)

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def threaded(self) -> bool:
        return True  # pooled connections, any thread; every call a round trip

    def _keep(self, obj: Any) -> Any:
        with self._lock:
            if self._closed:
                obj.close()
                raise StoreError("storage is closed")
            self._opened.add(obj)
            self._restored.update(dict.fromkeys(getattr(obj, "restored_guards", ())))
        return obj

    def restored_guards(self) -> tuple[str, ...]:
        """Names of the guards the objects this storage opened found missing and re-installed (chains, checkpoint
        book, probing ledger, facts), each once."""
        with self._lock:
            return tuple(self._restored)

    def missing_guards(self) -> dict[str, tuple[str, ...]]:
        """The guards missing now of the checkpoint book, probing ledger and facts ("checkpoints", "probes",
        "facts" -> names, as their missing_guards() gives them), for those whose table exists; changes nothing."""
        pool = pools.acquire(self._url, readonly=True)
        try:
            with pools.connection(pool, "reading guards") as conn:
                return {what: guards.missing(conn) for what, (table, guards) in TABLE_GUARDS.items()
                        if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]}
        finally:
            pools.release(pool)

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
        """The consent ledger. Writable: as node.store.sqlite.ledger.open_ledger does - refuse one that lost
        committed entries, give a new one its identity - with `ledger.head` in this host's data_dir.

        Every replica host keeps its own head file, advanced by its own commits and by the higher heads it
        reads (each recorded head was committed, so each host's check is sound, and a tail any host saw is
        missed by it); a host that has none yet takes the current head on first open (trust on first use).
        """
        if self._readonly:
            return self.chain(LEDGER_TABLE)
        from types import SimpleNamespace

        from node.store import ledger
        from node.store.sqlite import ledger as heads_file

        try:
            self._data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(f"cannot create data directory {self._data_dir}: {exc.strerror}") from None
        heads = heads_file.HeadFile(self._data_dir / heads_file.HEAD_FILE)
        chain = self._keep(PgChain(self._url, LEDGER_TABLE, on_commit=heads.advance))
        try:
            problem = heads_file.truncation(chain, heads.read())  # type: ignore[arg-type]
            if problem is not None:
                raise ledger.LedgerTruncated(f"{problem}; restore a backup (`hedui restore`) or accept the loss "
                                             "(`hedui ledger new-epoch`)")
            chain.append_next(lambda head: _identity_if_missing(chain, heads, head))
            # After the checks: a head this host reads (another replica's commit) is vouched for too.
            chain.follow_reads(lambda head: heads.advance(SimpleNamespace(idx=head[0], hash=head[1])))  # type: ignore[arg-type]
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

    def lease(self, name: str) -> PgLease:
        """The singleton role `name`: a session advisory lock, one holder across every host on this database."""
        return self._keep(PgLease(self._url, check_name(name)))

    def document(self, name: str) -> PgDocument:
        """The shared document `name` (a row of hedui_documents)."""
        if not name or "/" in name:
            raise ValueError(f"a document name is a plain file name: {name!r}")
        return self._keep(PgDocument(self._url, name))

    def locators(self) -> PgLocators:
        """The coordinator's locator rows (tables hedui_locator_*)."""
        if self._readonly:
            raise StoreError("the locators are not opened read-only")
        return self._keep(PgLocators(self._url))

    def probes(self, *, key: bytes) -> PgProbeLedger:
        """The node's probing ledger (table hedui_probes), shared by every replica host."""
        if self._readonly:
            raise StoreError("the probing ledger is not opened read-only")
        return self._keep(PgProbeLedger(self._url, key=key))

    def close(self) -> None:
        """Close whatever this storage opened; idempotent."""
        with self._lock:
            self._closed = True
            opened, self._opened = list(self._opened), weakref.WeakSet()
        for obj in opened:
            obj.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _identity_if_missing(chain: PgChain, heads: Any, head: tuple[int, bytes]) -> list[tuple[str, str, bytes]]:
    """The ledger.epoch entry of a ledger that has none (inside the append transaction, under the chain lock)."""
    from node.store import ledger
    from node.store.sqlite.ledger import Head

    if heads.read() is None:  # a new ledger, or a replica host opening it for the first time
        heads.reset(Head(*head))
    if ledger.read_identity(chain) is not None:
        return []
    return [(ledger.EPOCH, ledger.IDENTITY_KEY, ledger.first_identity(head).payload())]


def open_url(url: str, data_dir: Path, *, readonly: bool) -> PgStorage:
    """The factory's opener for "postgresql://..." (and "postgres://..."): libpq URL syntax; data_dir is not used."""
    try:
        pools.check_url(url)
    except StoreError as exc:
        raise ValueError(str(exc)) from None
    return PgStorage(url, readonly=readonly, data_dir=data_dir)
