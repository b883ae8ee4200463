"""The probing budgets and shared documents of a PostgreSQL backup: hedui_probes <-> probes.sqlite, hedui_documents <-> files.

A SQLite member keeps these in its data directory (probes.sqlite, directory.json, standards.json) and its
backup copies them; a PostgreSQL member keeps them in the database, so node.store.postgres.backup exports them
into those same files (one snapshot with everything else) and imports them back inside the restore's one
transaction. Probe uses are merged, never replaced: a use recorded after the backup stays spent.

Left out on purpose (both backends): the coordinator's locators (hedui_locator_* / locators.sqlite), signed
Bloom filters for the current and next discovery epoch only, which every node lodges again at start and
within node.server.locator_publisher.HELD_CHECK_S of finding them gone; and leases (held by running
processes only).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

import psycopg

from node.files import write_file
from node.store.probes import PROBES_DB, ProbeLedger

#: The shared documents a backup carries (the published standards; the directory refills by re-announcement
#: within 30 s but is carried as a SQLite backup carries its directory.json).
DOCUMENTS: Final[tuple[str, ...]] = ("directory.json", "standards.json")
_COLUMNS: Final[str] = "requester, consent_id, item, cut, at_ms"
_BATCH: Final[int] = 5000


def _exists(conn: psycopg.Connection, table: str) -> bool:
    return bool(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0])


def export_probes(conn: psycopg.Connection, path: Path) -> bool:
    """hedui_probes' rows into a new probes.sqlite at `path` (the SQLite ProbeLedger's schema); False when none."""
    if not _exists(conn, "hedui_probes") or conn.execute("SELECT NOT EXISTS (SELECT 1 FROM hedui_probes)").fetchone()[0]:
        return False
    ProbeLedger(path, key=b"").close()  # the schema and its append-only triggers (the key digests nothing here)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        with conn.cursor(name="hedui_export_probes") as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM hedui_probes ORDER BY requester, consent_id, item, cut")
            while rows := cur.fetchmany(_BATCH):
                db.executemany(f"INSERT INTO probes({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                               [(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows])
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, as a backup's databases are
    finally:
        db.close()
    return True


def export_documents(conn: psycopg.Connection, dest: Path, names: tuple[str, ...]) -> list[str]:
    """The hedui_documents rows of `names` as files in `dest` (0600); the names written."""
    wanted = [n for n in DOCUMENTS if n in names]
    if not wanted or not _exists(conn, "hedui_documents"):
        return []
    rows = conn.execute("SELECT name, body FROM hedui_documents WHERE name = ANY(%s) ORDER BY name", (wanted,)).fetchall()
    for name, body in rows:
        write_file(dest / name, bytes(body))
    return [name for name, _ in rows]


def import_probes(conn: psycopg.Connection, path: Path) -> None:
    """Add the staged probes.sqlite's uses to hedui_probes (inside the restore's transaction); rows held stay."""
    if not path.is_file():
        return
    conn.execute("CREATE TEMP TABLE hedui_probes_in (LIKE hedui_probes) ON COMMIT DROP")
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        with conn.cursor() as cur, cur.copy(f"COPY hedui_probes_in({_COLUMNS}) FROM STDIN") as copy:
            for row in db.execute(f"SELECT {_COLUMNS} FROM probes"):
                copy.write_row(row)
    finally:
        db.close()
    conn.execute(f"INSERT INTO hedui_probes({_COLUMNS}) SELECT {_COLUMNS} FROM hedui_probes_in "
                 "ON CONFLICT DO NOTHING")


def import_documents(conn: psycopg.Connection, stage: Path, names: tuple[str, ...]) -> None:
    """Each staged document of `names` replaces its hedui_documents row, one version up (a cached copy is read again)."""
    for name in (n for n in DOCUMENTS if n in names):
        if (stage / name).is_file():
            conn.execute("INSERT INTO hedui_documents(name, body, version) VALUES (%s, %s, 1) ON CONFLICT (name) "
                         "DO UPDATE SET body = excluded.body, version = hedui_documents.version + 1",
                         (name, (stage / name).read_bytes()))


HELD: Final[tuple[str, ...]] = (PROBES_DB, *DOCUMENTS)  # what this module moves between the database and files
