"""Audit end to end on a running federation: every request recorded, history rewrites and crashes."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from node.client.client import PeerRefused, PeerUnreachable
from node.store.sqlite.chain import entry_hash
from node.testing import run_cluster
from tests.conftest import CANARY_DEPOSIT, WORKER

HEDUI = [sys.executable, "-m", "node.cli.main"]
CHECK = ["deposit.balance_total<=2000000"]


def hedui(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEDUI, *map(str, args)], capture_output=True, text=True, timeout=60)


def rewrite_history(db_path: Path) -> None:
    """What an operator with the sqlite3 tool does: edit entry 1 (its time), recompute every hash after it."""
    db = sqlite3.connect(db_path)
    db.execute("DROP TRIGGER audit_no_update")
    prev = bytes(32)
    for idx, at_ms, kind, key, payload in db.execute("SELECT idx, at_ms, kind, key, payload FROM audit ORDER BY idx").fetchall():
        if idx == 1:
            at_ms -= 3_600_000
        digest = entry_hash("audit", idx, at_ms, kind, key, payload, prev)
        db.execute("UPDATE audit SET at_ms=?, prev_hash=?, hash=? WHERE idx=?", (at_ms, prev, digest, idx))
        prev = digest
    db.commit()
    db.close()


def test_every_request_is_audited_refusals_included_and_rewrites_are_caught(planted: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    """Answers and refusals are audited without ID or value; a rewritten history fails the coordinator's checkpoints,
    even after the node lodged a new checkpoint on top of the rewrite."""
    checkpoints = tmp_path / "cp44.jsonl"
    with run_cluster(["51", "44"], root=tmp_path, data=planted) as fed:
        consent = fed.grant("51", [WORKER], "dibao").consent_id
        fed.verify("51", [WORKER], CHECK, consent_id=consent)
        fed.verify("51", [WORKER], CHECK, consent_id=consent, to="44")
        with pytest.raises(PeerRefused):
            fed.verify("51", [WORKER], CHECK, consent_id=consent, to="44", purpose="medical")
        link = fed.servers["44"].link
        fed.loop.run(link.checkpoint_once())
        exported = hedui("audit", "export", "--config", fed.configs["44"])
        coordinator_export = hedui("audit", "export", "--config", fed.coordinator_config)
        assert hedui("audit", "verify", "--config", fed.configs["44"]).returncode == 0
        # The operator rewrites history while the node runs; the node then records more and checkpoints again.
        rewrite_history(tmp_path / "node44" / "audit.sqlite")
        (tmp_path / "node44" / "audit-checkpoints.jsonl").unlink()  # and destroys the local copies
        fed.verify("51", [WORKER], CHECK, consent_id=consent, to="44")
        fed.loop.run(link.checkpoint_once())
        cp = hedui("audit", "export-checkpoint", "--config", fed.coordinator_config, "--member", "44", "--out", checkpoints)
        assert cp.returncode == 0, cp.stderr
        assert len(checkpoints.read_text().splitlines()) == 2
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    decisions = [r["decision"] for r in rows]
    assert decisions.count("answered") == 2 and "refused:CONSENT_INVALID" in decisions
    assert "holds" not in decisions and all(r["requester"] == "51" for r in rows)  # discovery asks no node
    assert {"consent.grant", "discover", "route", "announce", "locator"} <= {
        json.loads(x)["decision"] for x in coordinator_export.stdout.splitlines()}
    for blob in (exported.stdout, coordinator_export.stdout):
        assert WORKER not in blob and str(CANARY_DEPOSIT) not in blob
    config = fed.configs["44"]
    assert hedui("audit", "verify", "--config", config).returncode == 0  # the chain alone looks fine...
    caught = hedui("audit", "verify", "--config", config, "--checkpoint", checkpoints)
    assert caught.returncode == 1, caught.stdout  # ...the coordinator's first checkpoint does not


def test_kill_9_while_writing_audit_records_leaves_a_clean_chain(planted: dict[str, Path], tmp_path: Path) -> None:
    """A node killed with SIGKILL mid-traffic restarts with an audit chain that verifies."""
    with run_cluster(["51", "44"], root=tmp_path, data=planted) as fed:
        consent = fed.grant("51", [WORKER], "dibao").receipt
        fed.stop_node("44")
        proc = subprocess.Popen([*HEDUI, "node", "serve", "--config", str(fed.configs["44"]), "--listen", "127.0.0.1:0"],
                                stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:
            event = json.loads(line)
            if event.get("event") == "serving":
                address = f"127.0.0.1:{event['port']}"
                break
        answered = threading.Semaphore(0)
        stop = threading.Event()

        def traffic() -> None:
            with fed.client("51", to=address, deadline_s=5) as peer:
                while not stop.is_set():
                    try:
                        peer.verify([WORKER], "dibao", CHECK, consent=consent)
                        answered.release()
                    except (PeerRefused, PeerUnreachable):
                        return

        workers = [threading.Thread(target=traffic) for _ in range(4)]
        for w in workers:
            w.start()
        for _ in range(40):
            assert answered.acquire(timeout=30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        stop.set()
        for w in workers:
            w.join(timeout=30)
        report = hedui("audit", "verify", "--config", fed.configs["44"], "--json")
        assert report.returncode == 0, report.stdout + report.stderr
        assert json.loads(report.stdout)["entries"] >= 40
