"""`hedui audit verify`, `hedui ledger verify`, `hedui backup` and `hedui restore` with `[store] url = "postgresql://..."`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from node import config
from node.store import ledger
from node.store.audit import ANSWERED, AuditRecord
from node.store.factory import open_audit_log, open_storage
from node.testing.cluster import build_federation
from node.testing.postgres import PostgresServer, store_at

pytestmark = pytest.mark.slow  # each test runs several CLI processes against PostgreSQL: scripts/test and CI run them

REPO = Path(__file__).resolve().parents[2]


def hedui(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real CLI in a process of its own."""
    return subprocess.run([sys.executable, "-m", "node.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


@pytest.fixture
def members(tmp_path: Path, postgres_server: PostgresServer) -> dict[str, Path]:
    """Province 44's node and the coordinator, each on its own fresh PostgreSQL database."""
    fed = build_federation(tmp_path, ["44"])
    assert fed.coordinator_config is not None
    return {"44": store_at(fed.configs["44"], postgres_server.create_database()),
            "coordinator": store_at(fed.coordinator_config, postgres_server.create_database())}


def _records(cfg_path: Path, n: int) -> None:
    """`n` audit records dated an hour ago: well within the retention, so prune keeps them (on any date)."""
    cfg = config.load(cfg_path)
    at_ms = int((time.time() - 3600) * 1000)
    with open_storage(cfg) as storage:
        log = open_audit_log(storage, cfg)
        log.record_many([AuditRecord(at_ms=at_ms, request_id=f"req-{i:08d}", requester="51", decision=ANSWERED,
                                     purpose="dibao", items=("income.wage_monthly",), outcome_digest=f"{i:064x}")
                         for i in range(n)])


def test_audit_verify_on_postgres_catches_an_edited_row(members: dict[str, Path]) -> None:
    """`hedui audit verify` reads the audit chain from PostgreSQL: intact, then an edit made past the guard is named."""
    cfg = members["44"]
    _records(cfg, 10)
    ok = hedui("audit", "verify", "--config", cfg)
    assert ok.returncode == 0 and ok.stdout.startswith("audit log intact: entries 1..10"), ok.stderr
    with psycopg.connect(config.load(cfg).store_url, autocommit=True) as conn:
        conn.execute("DROP TRIGGER audit_no_update ON audit")
        conn.execute("UPDATE audit SET payload = convert_to(replace(convert_from(payload, 'UTF8'), 'answered', 'refused'), 'UTF8') "
                     "WHERE idx = 7")
    bad = hedui("audit", "verify", "--config", cfg, "--json")
    report = json.loads(bad.stdout)
    assert bad.returncode == 1 and (report["ok"], report["first_bad"]) == (False, 7)
    assert report["missing_guards"] == ["audit_no_update"] and "Traceback" not in bad.stderr


def test_ledger_verify_and_new_epochstore_at(members: dict[str, Path]) -> None:
    """`hedui ledger verify` checks the ledger on PostgreSQL against this host's ledger.head; `ledger new-epoch` accepts a loss."""
    cfg = members["coordinator"]
    with open_storage(config.load(cfg)) as storage:
        chain = storage.ledger()
        chain.append(ledger.GRANT, "consent-1", b"{}")
        chain.append(ledger.REVOKE, "consent-1", b"")
    ok = hedui("ledger", "verify", "--config", cfg, "--json")
    report = json.loads(ok.stdout)
    assert ok.returncode == 0 and report["ok"] and report["entries"] == 3, ok.stderr
    with psycopg.connect(config.load(cfg).store_url, autocommit=True) as conn:  # entry 3 dropped past the guards
        conn.execute("ALTER TABLE ledger DISABLE TRIGGER USER")
        conn.execute("DELETE FROM ledger WHERE idx = 3")
    cut = hedui("ledger", "verify", "--config", cfg, "--json")
    assert cut.returncode == 1 and json.loads(cut.stdout)["truncated"], cut.stdout
    accepted = hedui("ledger", "new-epoch", "--config", cfg, "--json")  # the operator accepts the loss
    assert accepted.returncode == 0 and json.loads(accepted.stdout)["kept_index"] == 2, accepted.stderr
    again = hedui("ledger", "verify", "--config", cfg, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["entries"] == 3, again.stdout


def test_backup_and_restore_clistore_at(members: dict[str, Path], planted: dict[str, Path], tmp_path: Path) -> None:
    """`hedui backup` of a PostgreSQL node verifies; `hedui restore --force` puts its facts and audit back."""
    cfg = members["44"]
    ingested = hedui("ingest", "--config", cfg, planted["44"])
    assert ingested.returncode == 0, ingested.stderr
    _records(cfg, 3)
    made = hedui("backup", "--config", cfg, "--out", tmp_path / "bk", "--json")
    assert made.returncode == 0, made.stderr
    files = {f["name"]: f for f in json.loads(made.stdout)["files"]}
    assert {"store.sqlite", "audit.sqlite"} <= set(files) and files["audit.sqlite"]["chain"]["entries"] == 3
    _records(cfg, 2)  # after the backup: replaced by the restore, kept aside
    refused = hedui("restore", "--config", cfg, "--from", tmp_path / "bk")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--force" in refused.stderr
    put = hedui("restore", "--config", cfg, "--from", tmp_path / "bk", "--force", "--json")
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout)["moved_aside"]
    with open_storage(config.load(cfg)) as storage:
        assert storage.audit().head()[0] == 3
        assert storage.facts().counts()["facts"] == 4
    assert hedui("audit", "verify", "--config", cfg).returncode == 0


def test_audit_export_checkpoint_prune_and_statusstore_at(members: dict[str, Path]) -> None:
    """`hedui audit export`, `checkpoint` (kept in PostgreSQL), `prune` and `node status` work on a PostgreSQL node."""
    cfg = members["44"]
    _records(cfg, 4)  # within the retention: prune keeps them
    exported = hedui("audit", "export", "--config", cfg)
    assert exported.returncode == 0 and len(exported.stdout.splitlines()) == 4, exported.stderr
    signed = hedui("audit", "checkpoint", "--config", cfg, "--json")
    assert signed.returncode == 0, signed.stderr
    with open_storage(config.load(cfg)) as storage:
        held = storage.checkpoints().read()
        assert len(held) == 1 and held[0][1] is not None and held[0][2] is None
    pruned = hedui("audit", "prune", "--config", cfg, "--json")
    assert pruned.returncode == 0 and json.loads(pruned.stdout)["removed"] == 0, pruned.stdout + pruned.stderr
    assert hedui("audit", "verify", "--config", cfg).returncode == 0
    status = hedui("node", "status", "--config", cfg, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["facts"] == 0, status.stderr


def test_unreachable_postgres_is_one_line_error(members: dict[str, Path]) -> None:
    """A `[store] url` whose server refuses the connection: exit 2 and one line naming it, no password, no traceback."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nobody listens on it once closed
    cfg = store_at(members["44"], f"postgresql://hedui:s3cret@127.0.0.1:{port}/nodb")
    proc = hedui("node", "status", "--config", cfg)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("hedui: cannot connect to PostgreSQL at") and f":{port}/nodb" in proc.stderr
    assert "s3cret" not in proc.stderr and "Traceback" not in proc.stderr
