"""`hedui backup`/`restore` carry what a member needs to resume (probe uses, published standards) on both stores, all or nothing,
and a PostgreSQL restore keeps every Hedui session out for its whole run (SECURITY G46, G47)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from node import config
from node.store import ledger
from node.store.factory import open_url
from node.store.postgres import backup as pg_backup
from node.store.postgres import pool as pools
from node.store.sqlite import backup as sqlite_backup
from node.testing.cluster import build_federation
from node.testing.postgres import PostgresServer, store_at

REPO = Path(__file__).resolve().parents[2]
KEY = b"k" * 32
STANDARDS = b'{"documents": {"51": "published"}}\n'
DIRECTORY = b'{"members": [], "seen_ms": []}\n'
TOKEN, POSSESSION = b"t" * 32, b"p" * 32


def hedui(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real CLI in a process of its own."""
    return subprocess.run([sys.executable, "-m", "node.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def _spend(url: str, data_dir: Path, cuts: list[str]) -> None:
    """Requester 51 spends one probe use per cut (budget 2) under consent c1, and the coordinator's documents are written."""
    storage = open_url(url, data_dir)
    try:
        probes = storage.probes(key=KEY)
        for cut in cuts:
            assert probes.admit("51", "c1", {"income.wage_monthly": cut}, 2) == (None, 1)
        storage.document("standards.json").write(STANDARDS)
        storage.document("directory.json").write(DIRECTORY)
        facts, chain = storage.facts(), storage.ledger()  # held: storage.close() closes them
        with facts.writer() as w:
            w.upsert_facts([(w.subject_id(TOKEN, POSSESSION), "income.wage_monthly", "2026-10-31", "hrss", 567800)])
        chain.append(ledger.GRANT, "c1", b"g")
    finally:
        storage.close()


def _budget(url: str, data_dir: Path) -> tuple[int, tuple[str | None, int], tuple[str | None, int]]:
    """(uses of c1, verdict on cut "a" asked again, verdict on a new cut "z") with budget 2."""
    storage = open_url(url, data_dir)
    try:
        probes = storage.probes(key=KEY)
        return (probes.uses("51", "c1", "income.wage_monthly"),
                probes.admit("51", "c1", {"income.wage_monthly": "a"}, 2),
                probes.admit("51", "c1", {"income.wage_monthly": "z"}, 2))
    finally:
        storage.close()


def _document(url: str, data_dir: Path, name: str) -> bytes | None:
    storage = open_url(url, data_dir)
    try:
        return storage.document(name).changed()
    finally:
        storage.close()


def test_postgres_backup_restores_probe_uses_and_standards_into_a_fresh_database(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    """A PostgreSQL backup carries the probe uses and the published standards: in a fresh database spent budgets stay spent."""
    url = postgres_server.create_database()
    _spend(url, tmp_path / "data", ["a", "b"])
    report = pg_backup.backup(url, tmp_path / "data", tmp_path / "bak")
    names = {f.name for f in report.files}
    assert {"probes.sqlite", "standards.json", "directory.json"} <= names
    assert not any("locator" in n for n in names)  # left out on purpose: nodes lodge them again
    fresh = postgres_server.create_database()
    pg_backup.restore(tmp_path / "bak", tmp_path / "fresh", fresh)
    assert _budget(fresh, tmp_path / "fresh") == (2, (None, 0), ("income.wage_monthly", 0))
    assert _document(fresh, tmp_path / "fresh", "standards.json") == STANDARDS
    assert _document(fresh, tmp_path / "fresh", "directory.json") == DIRECTORY


def test_postgres_backup_restores_onto_sqlite_with_probe_uses_and_public_standards(postgres_url: str, tmp_path: Path) -> None:
    """A PostgreSQL backup restored onto SQLite gives probes.sqlite and a host-readable standards.json in the data dir."""
    _spend(postgres_url, tmp_path / "data", ["a", "b"])
    pg_backup.backup(postgres_url, tmp_path / "data", tmp_path / "bak")
    sqlite_backup.restore(tmp_path / "bak", tmp_path / "onto")
    assert _budget("sqlite:", tmp_path / "onto") == (2, (None, 0), ("income.wage_monthly", 0))
    assert (tmp_path / "onto" / "standards.json").read_bytes() == STANDARDS
    assert stat.S_IMODE(os.stat(tmp_path / "onto" / "standards.json").st_mode) == 0o644


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_restore_keeps_probe_uses_recorded_after_the_backup(store: str, postgres_url: str, tmp_path: Path) -> None:
    """Restoring over a member with --force merges probe uses: a budget spent after the backup stays spent."""
    url = "sqlite:" if store == "sqlite" else postgres_url
    data = tmp_path / "data"
    _spend(url, data, ["a"])
    if store == "postgresql":
        pg_backup.backup(url, data, tmp_path / "bak")
    else:
        sqlite_backup.backup(data, tmp_path / "bak")
    _spend(url, data, ["b"])  # after the backup
    if store == "postgresql":
        pg_backup.restore(tmp_path / "bak", data, url, force=True)
    else:
        sqlite_backup.restore(tmp_path / "bak", data, force=True)
    assert _budget(url, data) == (2, (None, 0), ("income.wage_monthly", 0))


def test_sqlite_backup_carries_standards_and_an_older_backup_still_restores(tmp_path: Path) -> None:
    """A SQLite backup (format hedui-backup/2) holds standards.json; a hedui-backup/1 backup without it still restores."""
    _spend("sqlite:", tmp_path / "data", ["a", "b"])
    report = sqlite_backup.backup(tmp_path / "data", tmp_path / "bak")
    assert "standards.json" in {f.name for f in report.files}
    manifest = json.loads((tmp_path / "bak" / sqlite_backup.MANIFEST).read_text())
    assert manifest["format"] == "hedui-backup/2"
    manifest["format"] = "hedui-backup/1"  # as 0.3 wrote it: no standards.json
    manifest["files"] = [f for f in manifest["files"] if f["name"] != "standards.json"]
    (tmp_path / "bak" / "standards.json").unlink()
    (tmp_path / "bak" / sqlite_backup.MANIFEST).write_text(json.dumps(manifest))
    restored = sqlite_backup.restore(tmp_path / "bak", tmp_path / "old")
    assert "standards.json" not in {f.name for f in restored.files}
    assert _budget("sqlite:", tmp_path / "old") == (2, (None, 0), ("income.wage_monthly", 0))


def test_sqlite_restore_over_an_unreadable_probes_file_replaces_nothing(tmp_path: Path) -> None:
    """A restore whose replaced probes.sqlite cannot be read (its uses cannot be carried over) is refused, nothing replaced."""
    data = tmp_path / "data"
    _spend("sqlite:", data, ["a"])
    sqlite_backup.backup(data, tmp_path / "bak")
    (data / "probes.sqlite").write_bytes(b"not a database" * 100)
    held = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    with pytest.raises(sqlite_backup.BackupError, match="cannot carry the probe uses"):
        sqlite_backup.restore(tmp_path / "bak", data, force=True)
    assert {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()} == held
    assert not list(data.glob("pre-restore-*"))


@pytest.fixture
def member(tmp_path: Path, postgres_url: str) -> Path:
    """Province 44's node config on a fresh PostgreSQL database, with probe uses, documents, a fact and a grant."""
    cfg = store_at(build_federation(tmp_path, ["44"]).configs["44"], postgres_url)
    _spend(postgres_url, config.load(cfg).data_dir, ["a", "b"])
    return cfg


def test_truncated_backup_is_one_line_and_writes_nothing(member: Path, tmp_path: Path) -> None:
    """`hedui restore` of a backup with a truncated probes.sqlite exits 1 with one line; the PostgreSQL store is untouched."""
    made = hedui("backup", "--config", member, "--out", tmp_path / "bk", "--json")
    assert made.returncode == 0, made.stderr
    cfg = config.load(member)
    _spend(cfg.store_url, cfg.data_dir, [])  # a second write of the documents: one version up
    probes = tmp_path / "bk" / "probes.sqlite"
    probes.write_bytes(probes.read_bytes()[:1000])
    before = _contents(cfg.store_url)
    bad = hedui("restore", "--config", member, "--from", tmp_path / "bk", "--force")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
    assert "probes.sqlite does not match its manifest" in bad.stderr and "Traceback" not in bad.stderr
    assert _contents(cfg.store_url) == before
    assert before[3] == 2  # the documents' version: the second write
    assert not list(cfg.data_dir.glob("pre-restore-*")) and not list(cfg.data_dir.glob(".restore-*"))


def _contents(url: str) -> tuple[int, ...]:
    """Row counts of facts, ledger and hedui_probes, and the standards document's version."""
    with psycopg.connect(url, autocommit=True) as conn:
        return tuple(conn.execute(sql).fetchone()[0] for sql in (
            "SELECT count(*) FROM facts", "SELECT count(*) FROM ledger", "SELECT count(*) FROM hedui_probes",
            "SELECT version FROM hedui_documents WHERE name = 'standards.json'"))


def _wait_for(conn: psycopg.Connection, sql: str) -> None:
    """Readiness: poll until `sql` returns true (at most 60 s)."""
    deadline = time.monotonic() + 60
    while not conn.execute(sql).fetchone()[0]:
        assert time.monotonic() < deadline, f"never: {sql}"
        time.sleep(0.05)


def test_an_opener_during_a_restore_fails_at_once_with_one_line(member: Path, tmp_path: Path) -> None:
    """A Hedui process that starts while `hedui restore` runs fails with one line naming the restore; the restore completes."""
    assert hedui("backup", "--config", member, "--out", tmp_path / "bk").returncode == 0
    cfg = config.load(member)
    with psycopg.connect(cfg.store_url) as blocker:  # not a Hedui session: holds the restore inside its import
        blocker.execute("LOCK TABLE facts IN SHARE MODE")
        restore = subprocess.Popen([sys.executable, "-m", "node.cli.main", "restore", "--config", str(member), "--from",
                                    str(tmp_path / "bk"), "--force"], cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            with psycopg.connect(cfg.store_url, autocommit=True) as watch:
                _wait_for(watch, "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = 'hedui-backup' "
                                 "AND wait_event_type = 'Lock'")
            opener = hedui("ledger", "verify", "--config", member)
        finally:
            blocker.rollback()
            out, err = restore.communicate(timeout=120)
    assert restore.returncode == 0, err
    assert opener.returncode == 2 and opener.stderr.count("\n") == 1, opener.stdout + opener.stderr
    assert pools.RESTORING in opener.stderr and "Traceback" not in opener.stderr
    assert hedui("ledger", "verify", "--config", member).returncode == 0  # afterwards it opens as before


def test_restore_refused_while_another_process_holds_the_store_open(member: Path, tmp_path: Path) -> None:
    """A restore refuses (exit 2, one line) while a Hedui session of another process holds the restore lock shared."""
    assert hedui("backup", "--config", member, "--out", tmp_path / "bk").returncode == 0
    cfg = config.load(member)
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from node.store.factory import open_url; "
                               "s = open_url(sys.argv[1], sys.argv[2]); a = s.audit(); print('open', flush=True); "
                               "sys.stdin.readline()", cfg.store_url, str(cfg.data_dir)],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        refused = hedui("restore", "--config", member, "--from", tmp_path / "bk", "--force")
    finally:
        holder.communicate("\n", timeout=60)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "stop the member" in refused.stderr


def test_a_process_whose_sessions_were_gone_during_a_restore_refuses_afterwards(member: Path, tmp_path: Path) -> None:
    """A process that had the store open while PostgreSQL dropped its sessions, and a restore ran meanwhile, refuses
    every later store access with one line (restart it) instead of serving the replaced store's state from memory."""
    assert hedui("backup", "--config", member, "--out", tmp_path / "bk").returncode == 0
    cfg = config.load(member)
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from node.store.factory import open_url; "
                               "s = open_url(sys.argv[1], sys.argv[2]); f = s.facts(); print(f.counts()['facts'], flush=True); "
                               "sys.stdin.readline()\ntry:\n    print(f.counts())\nexcept Exception as exc:\n    print(exc)",
                               cfg.store_url, str(cfg.data_dir)],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "1\n"
        with psycopg.connect(cfg.store_url, autocommit=True) as conn:  # as a PostgreSQL restart would
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'hedui'")
            _wait_for(conn, "SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'hedui'")
        put = hedui("restore", "--config", member, "--from", tmp_path / "bk", "--force")
    finally:
        out, err = holder.communicate("\n", timeout=120)
    assert put.returncode == 0, put.stderr
    assert out.splitlines()[-1].endswith(f"failed: {pools.RESTORED}"), out + err
    assert hedui("ledger", "verify", "--config", member).returncode == 0  # a process started afterwards opens it


def test_backup_help_says_what_is_left_out() -> None:
    """`hedui backup --help` says locators are not backed up (nodes lodge them again) and `restore --help` that spent budgets stay spent."""
    shown = hedui("backup", "--help").stdout.replace("\n", " ")
    assert "locators: every node lodges its own again" in " ".join(shown.split())
    assert "spent budgets stay spent" in " ".join(hedui("restore", "--help").stdout.split())
