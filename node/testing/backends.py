"""The storage backends the contract suite (tests/contract) runs against: one entry per implementation.

`BACKENDS` maps a name to a function that makes a fresh, empty `Backend` in a temporary
directory. A backend gives the suite what the interfaces do not: a URL a child process can
open with node.store.factory.open_url (several processes share one storage), and raw SQL
below the interfaces, to show the append-only guards refuse a change and that verification
catches one made with the guards out of the way. To run the suite against a new backend, add
one entry here (e.g. "postgresql": a function that starts or names a throwaway server).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.store.factory import open_url
from node.store.interfaces import Storage
from node.testing.postgres import postgres_backend


@dataclass
class Backend:
    """One empty storage of one implementation, and raw access to it for the tests."""

    name: str
    url: str
    data_dir: Path
    #: (chain table, SQL statement) -> None: run one statement below the interface, guards in force.
    sql: Callable[[str, str], None]
    #: (chain table, SQL statements) -> None: run statements with the append-only guards out of the way.
    tamper: Callable[[str, Sequence[str]], None]
    #: What `sql` raises when a guard refuses.
    refused: tuple[type[BaseException], ...]
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def open(self, *, readonly: bool = False) -> Storage:
        """A new Storage on this backend's data (each call: another instance, as another process would get)."""
        return open_url(self.url, self.data_dir, readonly=readonly)

    def close(self) -> None:
        for undo in reversed(self.cleanup):
            undo()


def _sqlite(tmp: Path) -> Backend:
    from node.store.sqlite.storage import chain_file

    data_dir = tmp / "data"

    def run(table: str, statements: Sequence[str], *, unguarded: bool) -> None:
        conn = sqlite3.connect(chain_file(data_dir, table), isolation_level=None)
        try:
            if unguarded:
                for guard in ("no_update", "no_delete", "append_next"):
                    conn.execute(f"DROP TRIGGER IF EXISTS {table}_{guard}")
            for statement in statements:
                conn.execute(statement)
        finally:
            conn.close()

    return Backend(
        name="sqlite", url="sqlite:", data_dir=data_dir,
        sql=lambda table, statement: run(table, [statement], unguarded=False),
        tamper=lambda table, statements: run(table, statements, unguarded=True),
        refused=(sqlite3.IntegrityError,),
    )  # fmt: skip


#: name -> make a fresh empty backend in the given temporary directory.
BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "sqlite": _sqlite,
    "postgresql": postgres_backend,  # a fresh database on this process's throwaway server (node.testing.postgres)
}


def describe(backend: Backend) -> dict[str, Any]:
    """What a child process needs to open the same storage."""
    return {"url": backend.url, "data_dir": str(backend.data_dir)}
