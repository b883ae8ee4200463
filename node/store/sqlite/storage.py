"""`Storage` on SQLite files in one directory (data_dir): what `[store] url = "sqlite:"` opens.

    store.sqlite          the fact store (facts.Store)
    nonces.sqlite         the replay guard (nonces.NonceStore)
    <table>.sqlite        the chain <table>: ledger.sqlite (+ ledger.head), audit.sqlite
    audit-checkpoints.jsonl  the node's own signed checkpoints (checkpoints.CheckpointFile)

and, in the member's data_dir (the same directory unless the url names another), the files replicas on
one host share: directory.json / standards.json (documents), locators.sqlite, probes.sqlite, and the
leases' `<name>.lock` files.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from node.store import ledger
from node.store.sqlite import ledger as sqlite_ledger
from node.store.audit import CHECKPOINT_FILE, DEFAULT_RETENTION_DAYS, AuditLog
from node.store.audit.records import TABLE as AUDIT_TABLE
from node.store.chainformat import check_table
from node.store.errors import StoreError, StoreMissing
from node.store.sqlite.chain import HashChain
from node.store.sqlite.checkpoints import CheckpointFile
from node.store.sqlite.facts import STORE_FILE, Store
from node.store.sqlite.nonces import NonceStore
from node.store.probes import PROBES_DB, ProbeLedger
from node.store.sqlite.documents import FileDocument
from node.store.sqlite.leases import FileLease, check_name
from node.store.sqlite.locators import LOCATORS_FILE, SqliteLocators

SCHEME: Final[str] = "sqlite"
NONCES_FILE: Final[str] = "nonces.sqlite"
_T = TypeVar("_T")


def chain_file(directory: Path, table: str) -> Path:
    """The file that holds the chain `table`: `<directory>/<table>.sqlite`."""
    return Path(directory) / f"{check_table(table)}.sqlite"


class SqliteStorage:
    """A member's storage as SQLite files in `directory` (see the module docstring)."""

    def __init__(self, directory: Path, *, readonly: bool = False, url: str = "sqlite:",
                 local_dir: Path | None = None) -> None:
        self.directory = Path(directory)
        self.local_dir = Path(local_dir) if local_dir is not None else self.directory  # documents, leases, ...
        self._url = url
        self._readonly = readonly
        self._opened: weakref.WeakSet[Any] = weakref.WeakSet()  # what close() closes; a dropped object drops out
        self._restored: dict[str, None] = {}  # guard names the chains opened re-installed, in order, once each
        self._lock = threading.Lock()
        if not readonly:
            try:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise StoreError(f"cannot create data directory {self.directory}: {exc.strerror}") from None

    @property
    def url(self) -> str:
        return self._url

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def threaded(self) -> bool:
        return False  # connections stay on the thread that opened them

    def _keep(self, opened: _T) -> _T:
        with self._lock:
            self._opened.add(opened)
            self._restored.update(dict.fromkeys(getattr(opened, "restored_guards", ())))
        return opened

    def restored_guards(self) -> tuple[str, ...]:
        """Names of the guards the chains this storage opened found missing and re-installed, each once."""
        with self._lock:
            return tuple(self._restored)

    def missing_guards(self) -> dict[str, tuple[str, ...]]:
        """{}: besides the chains' triggers SQLite has no guards (the checkpoint book is a JSONL file)."""
        return {}

    def _existing(self, path: Path, what: str) -> Path:
        if self._readonly and not path.is_file():
            raise StoreMissing(f"no {what} at {path}", str(path))
        return path

    def facts(self) -> Store:
        if self._readonly:  # SQLite's fact store always opens its writer (schema upgrades, WAL)
            raise StoreError("the fact store is not opened read-only")
        return self._keep(Store(self.directory / STORE_FILE))

    def nonces(self, *, window_ms: int) -> NonceStore:
        if self._readonly:
            raise StoreError("the nonce store is not opened read-only")
        return self._keep(NonceStore(self.directory / NONCES_FILE, window_ms=window_ms))

    def chain(self, table: str, *, prunable: bool = False) -> HashChain:
        path = self._existing(chain_file(self.directory, table), f"{table} chain")
        if self._readonly:
            return self._keep(HashChain.open_readonly(path, table))
        return self._keep(HashChain(path, table=table, prunable=prunable))

    def ledger(self) -> HashChain:
        if self._readonly:
            return self.chain(ledger.TABLE)
        return self._keep(sqlite_ledger.open_ledger(self.directory))

    def audit(self) -> HashChain:
        return self.chain(AUDIT_TABLE, prunable=True)

    def checkpoints(self) -> CheckpointFile:
        return CheckpointFile(self.directory / CHECKPOINT_FILE)

    def lease(self, name: str) -> FileLease:
        return self._keep(FileLease(self.local_dir / f"{check_name(name)}.lock"))

    def document(self, name: str) -> FileDocument:
        if Path(name).name != name or not name:
            raise ValueError(f"a document name is a plain file name: {name!r}")
        return FileDocument(self.local_dir / name)

    def locators(self) -> SqliteLocators:
        if self._readonly:
            raise StoreError("the locators are not opened read-only")
        return self._keep(SqliteLocators(self.local_dir / LOCATORS_FILE))

    def probes(self, *, key: bytes) -> ProbeLedger:
        if self._readonly:
            raise StoreError("the probing ledger is not opened read-only")
        return self._keep(ProbeLedger(self.local_dir / PROBES_DB, key=key))

    def close(self) -> None:
        """Close every store and chain opened from this storage (each close is idempotent)."""
        with self._lock:
            opened, self._opened = list(self._opened), weakref.WeakSet()
        for thing in opened:
            thing.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def open_url(url: str, data_dir: Path, *, readonly: bool) -> SqliteStorage:
    """The factory's opener: "sqlite:" (or "sqlite://") = `data_dir`; "sqlite:///DIR" = the directory DIR."""
    rest = url[len(SCHEME) + 1:]
    if rest in ("", "//"):
        directory = Path(data_dir)
    elif rest.startswith("///") and len(rest) > 3:
        directory = Path(rest[2:])
    else:
        raise ValueError('a sqlite store url is "sqlite:" (the data_dir) or "sqlite:///ABSOLUTE/DIR"')
    return SqliteStorage(directory, readonly=readonly, url=url, local_dir=Path(data_dir))


def audit_file(path: Path, *, retention_days: int = DEFAULT_RETENTION_DAYS) -> AuditLog:
    """The audit log in the SQLite file `path` (created if absent): for tools and tests that name a file."""
    return AuditLog(HashChain(Path(path), table=AUDIT_TABLE, prunable=True), retention_days=retention_days)


def audit_file_readonly(path: Path, *, retention_days: int = DEFAULT_RETENTION_DAYS) -> AuditLog:
    """The existing audit log in the SQLite file `path`, read-only (StoreError if there is none)."""
    return AuditLog(HashChain.open_readonly(Path(path), AUDIT_TABLE), retention_days=retention_days)
