"""Guards of the checkpoint book, probing ledger and facts on PostgreSQL are reported: by `hedui audit verify`
(read-only, nothing repaired) and, when a server's open re-installs them, by a `store_guards_restored` warning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from node import config
from node.store.factory import open_storage
from node.testing import capture_logs
from node.testing.cluster import LoopThread, build_federation
from node.testing.postgres import PostgresServer, put_on_postgres

pytestmark = pytest.mark.slow  # CLI processes and real servers against PostgreSQL: scripts/test and CI run them

REPO = Path(__file__).resolve().parents[2]
_DROPPED = {"checkpoints": "audit_checkpoints_no_truncate ON audit_checkpoints",
            "probes": "hedui_probes_append_only ON hedui_probes", "facts": "facts_changed ON facts"}


def _open_everything(cfg_path: Path) -> str:
    """Create every store of the node (audit chain, checkpoint book, probing ledger, facts); its URL."""
    cfg = config.load(cfg_path)
    with open_storage(cfg) as storage:
        storage.audit(), storage.checkpoints(), storage.probes(key=b"k" * 32), storage.facts()
        assert storage.missing_guards() == {"checkpoints": (), "probes": (), "facts": ()}
    return str(cfg.store_url)


def _drop(url: str, which: dict[str, str]) -> None:
    with psycopg.connect(url, autocommit=True) as sql:
        for target in which.values():
            sql.execute(f"DROP TRIGGER {target}")


def test_audit_verify_lists_missing_table_guards_without_repairing_them(tmp_path: Path,
                                                                        postgres_server: PostgresServer) -> None:
    """`hedui audit verify --json` lists dropped guards of the checkpoint book, probing ledger and facts, by store
    and in `missing_guards`, warns about them in text, and a second run still finds them (it opens read-only)."""
    fed = build_federation(tmp_path, ["44"])
    cfg = fed.configs["44"]
    put_on_postgres([cfg], postgres_server)
    url = _open_everything(cfg)
    _drop(url, _DROPPED)
    names = {what: [target.split()[0]] for what, target in _DROPPED.items()}
    for _ in range(2):
        run = subprocess.run([sys.executable, "-m", "node.cli.main", "audit", "verify", "--config", str(cfg), "--json"],
                             capture_output=True, text=True, timeout=120, cwd=REPO)
        report = json.loads(run.stdout)
        assert run.returncode == 0 and report["ok"], run.stderr
        assert report["missing_guards_by_store"] == {"audit": [], **names}
        assert report["missing_guards"] == [name for group in names.values() for name in group]
    text = subprocess.run([sys.executable, "-m", "node.cli.main", "audit", "verify", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert text.returncode == 0 and "warning: store guards missing: audit_checkpoints_no_truncate" in text.stderr


def test_server_starts_log_the_guards_their_open_restored(tmp_path: Path, postgres_server: PostgresServer) -> None:
    """A node whose checkpoint and probe guards were dropped, and a coordinator whose audit guard was, each log
    one `store_guards_restored` warning naming exactly those guards; afterwards none is missing."""
    fed = build_federation(tmp_path, ["44"])
    assert fed.coordinator_config is not None
    urls = put_on_postgres([fed.coordinator_config, fed.configs["44"]], postgres_server)
    node_url, coordinator_url = urls[fed.configs["44"]], urls[fed.coordinator_config]
    fed.loop = LoopThread()
    try:
        fed.start_coordinator()
        fed.start_node("44")  # creates every store
        fed.stop_node("44")
        fed.stop_node("coordinator")
        _drop(node_url, {k: _DROPPED[k] for k in ("checkpoints", "probes")})
        _drop(coordinator_url, {"audit": "audit_no_update ON audit"})
        with capture_logs("warning") as sink:
            fed.start_coordinator()
            fed.start_node("44")
        events = [json.loads(line) for line in sink.getvalue().splitlines() if line.strip()]
        restored = [e for e in events if e.get("event") == "store_guards_restored"]
        assert sorted(map(tuple, (e["guards"] for e in restored))) == [
            ("audit_checkpoints_no_truncate", "hedui_probes_append_only"), ("audit_no_update",)]
        with open_storage(config.load(fed.configs["44"])) as storage:
            assert storage.missing_guards() == {"checkpoints": (), "probes": (), "facts": ()}
    finally:
        for code in sorted(fed.servers, key=lambda c: c == "coordinator"):
            fed.stop_node(code)
        fed.loop.close()
