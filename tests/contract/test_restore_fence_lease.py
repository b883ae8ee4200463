"""A process that had a PostgreSQL store open when a restore replaced it leads nothing afterwards: its leases are
given up and not taken again (a fresh process takes them), and no lease is taken while a restore runs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from node import config
from node.store import ledger
from node.store.factory import open_url
from node.store.postgres import pool as pools
from node.store.postgres.leases import PgLease
from node.testing.cluster import build_federation
from node.testing.postgres import store_at

REPO = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
from node.store.factory import open_url
s = open_url(sys.argv[1], sys.argv[2])
lease = s.lease("locator-publisher")
print(lease.held(), flush=True)
sys.stdin.readline()
seen = []
deadline = time.monotonic() + 8  # past the lease's 2 s re-check: it finds its session gone and reconnects
while time.monotonic() < deadline:
    seen.append("T" if lease.held() else "F")
    time.sleep(0.2)
print("".join(seen), flush=True)
"""


def hedui(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


@pytest.fixture
def member(tmp_path: Path, postgres_url: str) -> Path:
    """Province 44's node config on a fresh PostgreSQL database holding a ledger entry (something to back up)."""
    path = store_at(build_federation(tmp_path, ["44"]).configs["44"], postgres_url)
    with open_url(postgres_url, config.load(path).data_dir) as storage:
        storage.ledger().append(ledger.GRANT, "c1", b"g")
    return path


def test_a_process_restored_under_gives_up_its_lease_and_a_fresh_one_takes_it(member: Path, tmp_path: Path) -> None:
    """The holder's sessions are dropped (as by a PostgreSQL restart), a restore runs, and the holder, once it
    reconnects, does not take its lease again; a process started afterwards takes it."""
    assert hedui("backup", "--config", member, "--out", tmp_path / "bk").returncode == 0
    cfg = config.load(member)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, cfg.store_url, str(cfg.data_dir)], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "True\n"
        with psycopg.connect(cfg.store_url, autocommit=True) as conn:  # as a PostgreSQL restart would
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'hedui'")
            deadline = time.monotonic() + 30
            while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hedui'").fetchone()[0]:
                assert time.monotonic() < deadline, "the holder's sessions did not end"
                time.sleep(0.05)
        put = hedui("restore", "--config", member, "--from", tmp_path / "bk", "--force")
    finally:
        out, err = holder.communicate("\n", timeout=120)
    assert put.returncode == 0, put.stderr
    seen = out.splitlines()[-1]
    assert "F" in seen and seen.endswith("F" * 10), out + err  # given up, and not taken again
    with open_url(cfg.store_url, cfg.data_dir) as fresh:
        assert fresh.lease("locator-publisher").held()


def test_no_lease_is_taken_while_a_restore_holds_the_store(member: Path) -> None:
    """A lease asked for while a restore holds the restore lock exclusive is not held (and takes nothing)."""
    cfg = config.load(member)
    with psycopg.connect(cfg.store_url, autocommit=True) as restore:
        assert restore.execute("SELECT pg_try_advisory_lock(%s)", (pools.restore_lock(),)).fetchone()[0]
        lease = PgLease(cfg.store_url, "locator-publisher")
        try:
            assert not lease.held()
        finally:
            lease.release()
        restore.execute("SELECT pg_advisory_unlock(%s)", (pools.restore_lock(),))


def test_the_restore_lock_outlives_a_server_idle_session_timeout(postgres_url: str) -> None:
    """The restore's lock session sits idle for the whole restore: a database-wide idle_session_timeout does not
    end it (and the lock with it), so no Hedui session can open meanwhile."""
    from node.store.postgres.backup import exclusive

    with psycopg.connect(postgres_url, autocommit=True) as admin:
        dbname = admin.execute("SELECT current_database()").fetchone()[0]
        admin.execute(f'ALTER DATABASE "{dbname}" SET idle_session_timeout = 500')
        try:
            with exclusive(postgres_url, "this test"):
                time.sleep(1.5)  # three timeouts of an idle session: the one the test is about, not a wait for readiness
                with psycopg.connect(postgres_url, autocommit=True) as other:
                    assert not other.execute("SELECT pg_try_advisory_lock_shared(%s)",
                                             (pools.restore_lock(),)).fetchone()[0]
        finally:
            admin.execute(f'ALTER DATABASE "{dbname}" RESET idle_session_timeout')
