"""Backup and restore of a PostgreSQL store in the SQLite backup format: one snapshot, checked, portable, reversible."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from node.store import ledger
from node.store.audit import AuditLog
from node.store.factory import open_url
from node.store.postgres import backup as pg_backup
from node.store.postgres import probes
from node.store.postgres.chain import PgChain
from node.store.postgres.checkpoints import PgCheckpoints
from node.store.postgres.facts import PgStore
from node.store.sqlite import backup as sqlite_backup

TOKEN, POSSESSION = b"t" * 32, b"p" * 32


def _populate(url: str, data_dir: Path) -> None:
    storage = open_url(url, data_dir)
    try:
        with storage.facts().writer() as w:
            sid = w.subject_id(TOKEN, POSSESSION)
            w.upsert_facts([(sid, "income.wage_monthly", "2026-10-31", "hrss", 567800)])
        audit = storage.audit()
        audit.append_many([("audit.record", f"old{i}", b"{}") for i in range(5)], at_ms=1000)
        audit.append("audit.record", "recent", b"{}")
        assert AuditLog(audit).prune() == 5  # the backup must carry the anchor
        chain = storage.ledger()
        chain.append(ledger.GRANT, "c1", b"g")
        chain.append(ledger.GRANT, "c2", b"g")
    finally:
        storage.close()


def test_backup_is_checked_and_restores_onto_sqlite(postgres_url: str, tmp_path: Path) -> None:
    """A PostgreSQL backup passes the SQLite backup's checks and restores into a SQLite data dir that verifies."""
    _populate(postgres_url, tmp_path / "data")
    report = pg_backup.backup(postgres_url, tmp_path / "data", tmp_path / "bak", identity="urn:test")
    chains = {f.name: f.chain_entries for f in report.files}
    assert chains == {"audit.sqlite": 2, "ledger.sqlite": 3, "store.sqlite": None}
    sqlite_backup.restore(tmp_path / "bak", tmp_path / "onto-sqlite")
    storage = open_url("sqlite:", tmp_path / "onto-sqlite")
    try:
        assert AuditLog(storage.audit()).verify().ok
        assert storage.audit().anchor()[0] == 6
        assert storage.facts().lookup([TOKEN], ["income.wage_monthly"])[(0, "income.wage_monthly")].value == 567800
    finally:
        storage.close()


def test_restore_into_postgres_keeps_revocations_and_the_replaced_data(postgres_url: str, tmp_path: Path) -> None:
    """Restoring over newer data needs --force, starts a new epoch carrying later revocations, and keeps the old contents aside."""
    data = tmp_path / "data"
    _populate(postgres_url, data)
    pg_backup.backup(postgres_url, data, tmp_path / "bak")
    storage = open_url(postgres_url, data)
    chain = storage.ledger()
    chain.append(ledger.REVOKE, "c1", b"")
    chain.append(ledger.GRANT, "c3", b"g")
    storage.close()
    with pytest.raises(sqlite_backup.BackupRefused):
        pg_backup.restore(tmp_path / "bak", data, postgres_url)
    report = pg_backup.restore(tmp_path / "bak", data, postgres_url, force=True)
    assert report.ledger is not None and report.ledger.carried == 1 and report.ledger.lost == 1
    assert report.moved_aside is not None
    assert {"audit.sqlite", "ledger.sqlite", "store.sqlite"} <= {p.name for p in report.moved_aside.iterdir()}
    storage = open_url(postgres_url, data)  # writable: this host's ledger.head follows the restored ledger
    try:
        chain = storage.ledger()
        assert chain.verify().ok
        granted, revoked = ledger.consents(chain)
        assert granted == {"c1", "c2"} and revoked == {"c1"}
        assert AuditLog(storage.audit()).verify().ok
        assert storage.facts().counts() == {"subjects": 1, "facts": 1}
    finally:
        storage.close()


def test_restore_refused_while_a_member_is_connected(postgres_url: str, tmp_path: Path) -> None:
    """A restore refuses while any Hedui process (a running replica's pool) is connected to the database."""
    data = tmp_path / "data"
    _populate(postgres_url, data)
    pg_backup.backup(postgres_url, data, tmp_path / "bak")
    running = open_url(postgres_url, data)
    try:
        chain = running.audit()  # held, as a serving replica holds it
        with pytest.raises(sqlite_backup.DataDirBusy):
            pg_backup.restore(tmp_path / "bak", data, postgres_url, force=True)
        assert AuditLog(chain).verify().ok  # nothing was touched
    finally:
        running.close()


def test_restore_into_postgres_leaves_every_guard_always_enabled(postgres_url: str, tmp_path: Path) -> None:
    """After a PostgreSQL restore no guard of the chains, checkpoint book, probing ledger or facts is missing
    (none left origin-only), and a replica-mode session cannot change a lodged checkpoint."""
    data = tmp_path / "data"
    _populate(postgres_url, data)
    with PgCheckpoints(postgres_url) as book, psycopg.connect(postgres_url, autocommit=True) as sql:
        sql.execute("INSERT INTO audit_checkpoints(line) VALUES ('{}')")
        assert book.missing_guards() == ()
    with probes.PgProbeLedger(postgres_url, key=b"k" * 32) as budgets:
        assert budgets.admit("r", "c", {"i": "cut"}, 3) == (None, 1)
    pg_backup.backup(postgres_url, data, tmp_path / "bak")
    pg_backup.restore(tmp_path / "bak", data, postgres_url, force=True)
    opened = (PgCheckpoints(postgres_url, readonly=True), PgStore(postgres_url, readonly=True), PgChain(postgres_url, "audit", prunable=True, readonly=True),
              PgChain(postgres_url, "ledger", readonly=True))
    try:
        assert [o.missing_guards() for o in opened] == [()] * len(opened)
        with psycopg.connect(postgres_url) as sql:  # read-only: a ledger's open would restore what it finds missing
            assert probes.GUARDS.missing(sql) == ()
    finally:
        for o in opened:
            o.close()
    with psycopg.connect(postgres_url, autocommit=True) as sql:
        sql.execute("SET session_replication_role = replica")
        for statement in ("UPDATE audit_checkpoints SET line = 'x'", "DELETE FROM audit_checkpoints"):
            with pytest.raises(psycopg.errors.RestrictViolation):
                sql.execute(statement)
