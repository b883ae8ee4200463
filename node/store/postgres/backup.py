"""`hedui backup`/`restore` for a PostgreSQL store, in the SQLite backup directory format of node.store.sqlite.backup.

Backup: the store's tables (facts, audit and ledger chains with their anchors, the node's
checkpoints, the probing budgets, the shared documents directory.json and standards.json) are
read in ONE `REPEATABLE READ, READ ONLY` transaction - one snapshot across all of them,
consistent while replicas keep writing - and written as store.sqlite, audit.sqlite,
ledger.sqlite, audit-checkpoints.jsonl, probes.sqlite, directory.json and standards.json into a
private export directory, next to what the data directory itself holds (witnesses). The
coordinator's locators are left out (node.store.postgres.backup_state says why).
node.store.sqlite.backup.backup then copies, checks (integrity, every chain verified) and
manifests that directory exactly as it does a SQLite member's. So a PostgreSQL backup is
verified, restored and audited offline by the same code, and can be restored onto either
backend.

Restore: the current PostgreSQL contents are exported the same way into a staging
directory, node.store.sqlite.backup.restore installs the backup over it with --force (every
check, the replaced contents moved aside, a restored ledger's new epoch with the replaced
ledger's revocations carried over, the replaced probe uses merged in), and the staged result
replaces the tables in one transaction (probe uses are only ever added). The replaced contents stay in DATA_DIR/pre-restore-<time>/ as SQLite files.
This host's ledger.head is reset to the restored ledger's new head (the old one kept aside); other
replica hosts' head files record the replaced ledger's heads: remove them there (each host then
takes the current head on its next start).

A restore (and a new epoch) holds the restore advisory lock EXCLUSIVE on a connection of its own from
its first read to its last write; every pooled Hedui session holds it SHARED from the moment it connects
(node.store.postgres.pool.hold_shared). So it is refused while any Hedui process has the store open, and
a replica that starts during it fails at once with one line (pool.RESTORING) instead of reading or
keeping the replaced ledger's state (SECURITY G47). Each restore also adds a row to hedui_restores in
its transaction: a process that had the store open but no session alive (a PostgreSQL restart dropped
them, so the lock could not show it) sees the count change when it reconnects and refuses every later
access (pool.RESTORED: restart it) rather than serve what it holds in memory of the replaced store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import psycopg

from node.store.audit import CHECKPOINT_FILE
from node.store.sqlite.ledger import HEAD_FILE
from node.store.chainformat import GENESIS
from node.store.probes import PROBES_DB
from node.store.postgres import backup_state
from node.store.postgres import pool as pools
from node.store.postgres import schema
from node.store.postgres.chain import PgChain, _text
from node.store.postgres.checkpoints import GUARDS as CHECKPOINT_GUARDS
from node.store.postgres.checkpoints import TABLE as CHECKPOINTS
from node.store.postgres.facts import PgStore
from node.store.sqlite import backup as sqlite_backup
from node.store.sqlite.chain import HashChain
from node.store.sqlite.facts import STORE_FILE, Store

CHAINS: Final[dict[str, bool]] = {"audit": True, "ledger": False}  # chain table -> prunable
HELD: Final[tuple[str, ...]] = (STORE_FILE, "audit.sqlite", "ledger.sqlite", CHECKPOINT_FILE,
                                 *backup_state.HELD)  # in PostgreSQL
_BATCH: Final[int] = 5000
_APP: Final[str] = "hedui-backup"


@contextlib.contextmanager
def _connect(url: str) -> Iterator[psycopg.Connection]:
    """A connection of its own (not a pool's), as application hedui-backup; psycopg errors as BackupError."""
    pools.check_url(url)
    try:
        conn = psycopg.connect(url, autocommit=True, application_name=_APP, connect_timeout=10)
    except psycopg.Error as exc:
        raise sqlite_backup.BackupError(pools.connect_failure(url, exc)) from None
    try:
        with conn:
            conn.execute("SET synchronous_commit = on")
            yield conn
    except psycopg.Error as exc:
        raise sqlite_backup.BackupError(f"PostgreSQL {pools.redact(url)}: {pools.describe(exc)}") from None


def _exists(conn: psycopg.Connection, table: str) -> bool:
    return bool(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{table}"',)).fetchone()[0])


def _stream(conn: psycopg.Connection, sql: str) -> Iterator[list[Any]]:
    """Batches of rows through a server-side cursor of the open transaction."""
    with conn.cursor(name="hedui_export") as cur:
        cur.execute(sql)
        while rows := cur.fetchmany(_BATCH):
            yield rows


@contextlib.contextmanager
def exclusive(url: str, doing: str) -> Iterator[None]:
    """For the block, the restore lock held exclusive on a connection of its own (DataDirBusy while any Hedui session
    holds it shared): no Hedui session opens on `url` until the block ends; this process's own pools skip it."""
    with _connect(url) as conn:
        # This session sits idle for the whole block: a server-side idle_session_timeout (PostgreSQL 14+) must not
        # end it, or the lock would go with it mid-restore.
        if conn.execute("SELECT count(*) FROM pg_settings WHERE name = 'idle_session_timeout'").fetchone()[0]:
            conn.execute("SET idle_session_timeout = 0")
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (pools.restore_lock(),)).fetchone()[0]:
            raise sqlite_backup.DataDirBusy(f"a Hedui process has {pools.redact(url)} open (or a restore runs): "
                                            f"stop the member (every replica) before {doing}")
        ensure_idle(url, doing)  # also a process that connects without the lock (an older Hedui)
        with pools.restoring(url):
            yield


def ensure_idle(url: str, doing: str) -> None:
    """DataDirBusy while any Hedui process (a serving replica's pool, application_name hedui) uses the database."""
    with _connect(url) as conn:
        others = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                              "AND application_name = 'hedui' AND pid <> pg_backend_pid()").fetchone()[0]
    if others:
        raise sqlite_backup.DataDirBusy(f"{others} Hedui connection(s) to {pools.redact(url)} are open: "
                                        f"stop the member (every replica) before {doing}")


def new_epoch(url: str, data_dir: Path, reason: str = "new-epoch") -> tuple[Any, int]:
    """`hedui ledger new-epoch` on PostgreSQL: a new epoch at the ledger's head, this host's ledger.head reset to it;
    (identity, last old entry). The coordinator must be stopped (every replica)."""
    pools.check_url(url)  # first: libpq's own parse errors quote the URL, password included
    from node.store import ledger
    from node.store.sqlite.ledger import Head, HeadFile

    with exclusive(url, "starting a new epoch"):
        chain = PgChain(url, "ledger")
        try:
            if chain.head()[0] == 0:
                raise sqlite_backup.BackupRefused(f"no ledger at {chain.location}")
            kept = chain.head()[0]
            identity = ledger.start_epoch(chain, reason)
            HeadFile(Path(data_dir) / HEAD_FILE).reset(Head(*chain.head()))
        finally:
            chain.close()
    return identity, kept


# -- export: PostgreSQL -> SQLite files -----------------------------------------------------------


def export(url: str, dest: Path, names: tuple[str, ...] = HELD) -> list[str]:
    """Write what PostgreSQL holds of `names` into `dest` from one snapshot; the names written."""
    written: list[str] = []
    with _connect(url) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if STORE_FILE in names and _exists(conn, "store_meta"):
            _export_facts(conn, dest / STORE_FILE)
            written.append(STORE_FILE)
        for table, prunable in CHAINS.items():
            if f"{table}.sqlite" in names and _exists(conn, table):
                _export_chain(conn, table, prunable, dest / f"{table}.sqlite")
                written.append(f"{table}.sqlite")
        if CHECKPOINT_FILE in names and _exists(conn, CHECKPOINTS):
            lines = [line for batch in _stream(conn, f"SELECT line FROM {CHECKPOINTS} ORDER BY pos") for (line,) in batch]
            if lines:
                fd = os.open(dest / CHECKPOINT_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write("".join(f"{line}\n" for line in lines))
                written.append(CHECKPOINT_FILE)
        if PROBES_DB in names and backup_state.export_probes(conn, dest / PROBES_DB):
            written.append(PROBES_DB)
        written += backup_state.export_documents(conn, dest, names)
    return written


def _export_facts(conn: psycopg.Connection, path: Path) -> None:
    Store(path).close()  # the SQLite schema, version 2
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        for sql, insert in (
            ("SELECT id, token, possession FROM subjects ORDER BY id", "INSERT INTO subjects VALUES (?, ?, ?)"),
            ("SELECT subject_id, attribute, as_of, source, value FROM facts",
             "INSERT INTO facts(subject_id, attribute, as_of, source, value) VALUES (?, ?, ?, ?, ?)"),
            ("SELECT code, aggregate FROM attributes", "INSERT INTO attributes(code, aggregate) VALUES (?, ?)"),
        ):
            for rows in _stream(conn, sql):
                db.executemany(insert, rows)
        db.execute("COMMIT")
    finally:
        db.close()


def _export_chain(conn: psycopg.Connection, table: str, prunable: bool, path: Path) -> None:
    """The chain's rows as they are stored (a tampered row stays tampered: the backup's check reports it)."""
    HashChain(path, table=table, prunable=prunable).close()  # table, guards and anchor table
    row = conn.execute(f"SELECT idx, prev_hash FROM {schema.ANCHORS} WHERE chain = %s", (table,)).fetchone() \
        if _exists(conn, schema.ANCHORS) else None
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute(f"DROP TRIGGER {table}_append_next")  # a pruned chain starts at its anchor, not at 1
        for rows in _stream(conn, f'SELECT idx, at_ms, kind, key, payload, prev_hash, hash FROM "{table}" ORDER BY idx'):
            db.executemany(f"INSERT INTO {table}(idx, at_ms, kind, key, payload, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(r[0], r[1], _text(r[2]), _text(r[3]), r[4], r[5], r[6]) for r in rows])
        if row is not None and (row[0], bytes(row[1])) != (1, GENESIS):
            db.execute(f"INSERT OR REPLACE INTO {table}_meta(name, value) VALUES ('anchor', ?)",
                       (json.dumps({"idx": row[0], "prev": bytes(row[1]).hex()}),))
        db.execute("COMMIT")
    finally:
        db.close()
    HashChain(path, table=table, prunable=prunable).close()  # re-installs the append guard


# -- backup -------------------------------------------------------------------------------------


def backup(url: str, data_dir: Path, out: Path, *, identity: str | None = None) -> sqlite_backup.BackupReport:
    """Back up the member whose store is at `url` (and whose data_dir holds its other files) into `out`."""
    pools.check_url(url)  # first: libpq's own parse errors quote the URL, password included
    data_dir, out = Path(data_dir), Path(out)
    sqlite_backup._check_destination(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    except OSError as exc:
        raise sqlite_backup.BackupError(f"cannot create backup directory {out}: {exc.strerror}") from None
    try:
        for name in sqlite_backup.STATE_FILES:  # before the snapshot, as the SQLite backup does
            if name not in HELD and (data := sqlite_backup._read_state_file(data_dir / name)) is not None:
                (tmp / name).parent.mkdir(mode=0o700, exist_ok=True)
                sqlite_backup._write_new(tmp / name, data)
        for name in sqlite_backup.DATABASES:
            if name not in HELD and (data_dir / name).is_file():  # none today: every database is in PostgreSQL
                sqlite_backup._snapshot(data_dir / name, tmp / name)
        export(url, tmp)
        return sqlite_backup.backup(tmp, out, identity=identity)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- restore ------------------------------------------------------------------------------------


def restore(backup_dir: Path, data_dir: Path, url: str, *, force: bool = False,
            expect_identity: str | None = None) -> sqlite_backup.RestoreReport:
    """Install a backup into the PostgreSQL store at `url` (and data_dir's local files); the member must be stopped."""
    pools.check_url(url)  # first: libpq's own parse errors quote the URL, password included
    backup_dir, data_dir = Path(backup_dir), Path(data_dir)
    _, files = sqlite_backup._read_manifest(backup_dir)
    with exclusive(url, "restoring"):  # from the first read of the replaced contents to the last write
        return _restore(backup_dir, data_dir, url, tuple(f.name for f in files), force, expect_identity)


def _restore(backup_dir: Path, data_dir: Path, url: str, names: tuple[str, ...], force: bool,
             expect_identity: str | None) -> sqlite_backup.RestoreReport:
    """restore() under the exclusive restore lock."""
    local = [n for n in names if n not in HELD]
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        stage = Path(tempfile.mkdtemp(prefix=".restore-pg-", dir=data_dir))
    except OSError as exc:
        raise sqlite_backup.BackupError(f"cannot write to data directory {data_dir}: {exc.strerror}") from None
    try:
        held = export(url, stage, tuple(n for n in names if n in HELD))
        conflicts = held + [n for n in local if (data_dir / n).exists()]
        if conflicts and not force:
            raise sqlite_backup.BackupRefused(f"{pools.redact(url)} and {data_dir} already hold {', '.join(sorted(conflicts))}; "
                                              "use --force to move them aside")
        report = sqlite_backup.restore(backup_dir, stage, force=True, expect_identity=expect_identity)
        _import(url, stage, tuple(n for n in names if n in HELD))
        if report.ledger is not None:  # this host's ledger.head goes to the restored ledger's new head
            local.append(HEAD_FILE)
        aside = None
        if report.moved_aside is not None or any((data_dir / n).exists() for n in local):
            aside = sqlite_backup._aside_dir(data_dir)
            if report.moved_aside is not None:
                for item in report.moved_aside.iterdir():
                    os.replace(item, aside / item.name)
        for name in local:
            if aside is not None and (data_dir / name).exists():
                (aside / name).parent.mkdir(mode=0o700, exist_ok=True)
                os.replace(data_dir / name, aside / name)
            (data_dir / name).parent.mkdir(mode=0o700, exist_ok=True)
            os.replace(stage / name, data_dir / name)
        sqlite_backup._fsync_subdirs(data_dir)
        sqlite_backup._fsync_dir(data_dir)
    except OSError as exc:
        raise sqlite_backup.BackupError(f"restore into {data_dir} failed: {exc.strerror}: {exc.filename}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dataclasses.replace(report, data_dir=data_dir, moved_aside=aside)


def _import(url: str, stage: Path, names: tuple[str, ...]) -> None:
    """Replace the tables of `names` with the staged SQLite files' rows, in one transaction."""
    if STORE_FILE in names:
        PgStore(url).close()  # create what is missing before the transaction
    for table, prunable in CHAINS.items():
        if f"{table}.sqlite" in names:
            PgChain(url, table, prunable=prunable).close()
    if CHECKPOINT_FILE in names:
        from node.store.postgres.checkpoints import PgCheckpoints

        PgCheckpoints(url).close()
    if PROBES_DB in names:
        from node.store.postgres.probes import PgProbeLedger

        PgProbeLedger(url, key=b"").close()
    for name in (n for n in backup_state.DOCUMENTS if n in names):
        from node.store.postgres.documents import PgDocument

        PgDocument(url, name).close()
    with _connect(url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (pools.lock_key("facts-writer"),))
        if STORE_FILE in names:
            conn.execute("DELETE FROM facts")
            conn.execute("DELETE FROM subjects")
            conn.execute("DELETE FROM attributes")
            with _sqlite(stage / STORE_FILE) as db:
                _copy(conn, db, "SELECT id, token, possession FROM subjects ORDER BY id", "subjects(id, token, possession)")
                _copy(conn, db, "SELECT subject_id, attribute, as_of, source, value FROM facts",
                      "facts(subject_id, attribute, as_of, source, value)")
                _copy(conn, db, "SELECT code, aggregate FROM attributes", "attributes(code, aggregate)")
        if any(f"{table}.sqlite" in names for table in CHAINS):  # this is a restore: anchors go back too
            conn.execute(f'ALTER TABLE "{schema.ANCHORS}" DISABLE TRIGGER USER')
        for table, prunable in CHAINS.items():
            if f"{table}.sqlite" not in names:
                continue
            conn.execute(f'ALTER TABLE "{table}" DISABLE TRIGGER USER')  # the guards: this is a restore
            conn.execute(f'DELETE FROM "{table}"')
            conn.execute(f"DELETE FROM {schema.ANCHORS} WHERE chain = %s", (table,))
            with _sqlite(stage / f"{table}.sqlite") as db:
                rows = db.execute(f"SELECT idx, at_ms, kind, key, payload, prev_hash, hash FROM {table} ORDER BY idx")
                _copy_rows(conn, f'"{table}"(idx, at_ms, kind, key, payload, prev_hash, hash)',
                           ((i, a, _utf8(k), _utf8(y), p, ph, h) for i, a, k, y, p, ph, h in rows))
                anchor = _sqlite_anchor(db, table)
            if anchor is not None:
                conn.execute(f"INSERT INTO {schema.ANCHORS}(chain, idx, prev_hash) VALUES (%s, %s, %s)",
                             (table, anchor[0], anchor[1]))
            for guard in schema.guards(table, prunable):  # back to ALWAYS (ENABLE TRIGGER USER leaves them origin-only)
                conn.execute(schema.ENABLE_ALWAYS.format(t=schema.guard_table(guard, table), name=guard))
        if CHECKPOINT_FILE in names:
            conn.execute(f"ALTER TABLE {CHECKPOINTS} DISABLE TRIGGER USER")
            conn.execute(f"DELETE FROM {CHECKPOINTS}")
            path = stage / CHECKPOINT_FILE
            if path.is_file():
                data = path.read_bytes()
                lines = data[: data.rfind(b"\n") + 1].decode().splitlines()
                _copy_rows(conn, f"{CHECKPOINTS}(line)", ((line,) for line in lines if line.strip()))
            for guard, (table, _, _) in CHECKPOINT_GUARDS.triggers.items():  # ALWAYS, as before (not origin-only)
                conn.execute(schema.ENABLE_ALWAYS.format(t=table, name=guard))
        if PROBES_DB in names:
            backup_state.import_probes(conn, stage / PROBES_DB)
        backup_state.import_documents(conn, stage, names)
        # A process that had the store open, with no session alive for the lock to show it, refuses on reconnecting.
        conn.execute(f"CREATE TABLE IF NOT EXISTS {pools.RESTORES_TABLE}(at timestamptz NOT NULL DEFAULT now())")
        conn.execute(f"INSERT INTO {pools.RESTORES_TABLE} DEFAULT VALUES")


@contextlib.contextmanager
def _sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        yield db
    finally:
        db.close()


def _utf8(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _copy(conn: psycopg.Connection, db: sqlite3.Connection, select: str, target: str) -> None:
    _copy_rows(conn, target, db.execute(select))


def _copy_rows(conn: psycopg.Connection, target: str, rows: Any) -> None:
    """COPY rows into `target` ("table(columns)")."""
    with conn.cursor() as cur, cur.copy(f"COPY {target} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _sqlite_anchor(db: sqlite3.Connection, table: str) -> tuple[int, bytes] | None:
    """The anchor a staged SQLite chain records in `<table>_meta` (None: never pruned)."""
    has = db.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (f"{table}_meta",)).fetchone()
    if has is None:
        return None
    row = db.execute(f"SELECT value FROM {table}_meta WHERE name = 'anchor'").fetchone()
    if row is None:
        return None
    raw = json.loads(row[0])
    return int(raw["idx"]), bytes.fromhex(raw["prev"])
