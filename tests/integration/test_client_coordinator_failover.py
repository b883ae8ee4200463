"""Caseworker clients fail over between coordinator replicas: with one replica killed or hung the CLI
commands succeed through the other within their deadline; with both down they fail with one clear
line (exit 4, no traceback); `hedui node init` with several coordinators writes a node that fails over."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from node import config as config_mod
from tests.conftest import SPOUSE, WORKER
from tests.integration import test_coordinator_replicas as shared
from tests.integration.test_coordinator_replicas import HEDUI, Replicas
from tests.integration.test_household import PERIOD, STANDARDS
from tests.integration.test_workers import _serve_workers

CHECK = "deposit.balance_total<=2000000"
DEADLINE_S = 4.0  # the node's [limits] default_deadline_s in these tests: every single call's deadline
BATCH_DEADLINE_S = 30.0  # BatchSession's per-call deadline
STARTUP_S = 15.0  # a bound on starting a CLI process on a shared 2-core machine, never a speed requirement
FAULTS = {"killed": signal.SIGKILL, "hung": signal.SIGSTOP}
replicas = shared.replicas  # the fixture: two `coordinator serve` processes on one store, nodes 51 and 44 using both


def _limit_deadline(path: Path) -> None:
    """Give the node's CLI calls a short deadline (so a hung replica's share is short)."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    data.setdefault("limits", {})["default_deadline_s"] = DEADLINE_S
    config_mod.write(path, data)


def _cli(*args: object, bound: float) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `hedui ARGS`; the process and its elapsed seconds (asserted under `bound` + process start)."""
    started = time.monotonic()
    done = subprocess.run([*HEDUI, *map(str, args)], capture_output=True, text=True, timeout=bound + 60)
    elapsed = time.monotonic() - started
    assert elapsed <= bound + STARTUP_S, f"{args[:2]} took {elapsed:.1f} s"
    return done, elapsed


def _ok(*args: object, bound: float = DEADLINE_S * 2) -> Any:
    done, _ = _cli(*args, bound=bound)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout) if "--json" in args else done.stdout


def _households(root: Path) -> Path:
    path = root / "households.csv"
    path.write_text(f"household,id_number,region\nh1,{WORKER},510104\nh1,{SPOUSE},510104\n", encoding="utf-8")
    return path


def _fault(rep: Replicas, replica: int, fault: signal.Signals) -> None:
    rep.procs[replica].send_signal(fault)
    if fault == signal.SIGKILL:
        rep.procs[replica].wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_caseworker_commands_succeed_with_the_first_replica_down(replicas: Replicas, tmp_path: Path, fault: str) -> None:
    """With replica 1 SIGKILLed (refuses connections) or SIGSTOPped (never completes a handshake), consent
    grant/show/revoke, routed and direct verify, household check and the batch commands succeed through
    replica 2 within their deadlines."""
    rep = replicas
    config = rep.fed.configs["51"]
    rep.fed.publish_standards("51", _standards(tmp_path))
    _limit_deadline(config)
    households = _households(tmp_path)
    _fault(rep, 0, FAULTS[fault])
    consent = _ok("consent", "grant", "--config", config, "--id", WORKER, "--purpose", "dibao", "--json")["consent_id"]
    assert _ok("consent", "show", "--config", config, consent, "--json")["state"] == "ACTIVE"
    routed = _ok("verify", "--config", config, "--id", WORKER, "--purpose", "dibao", "--check", CHECK,
                 "--consent", consent, "--json")
    assert routed["routing"]["44"] == "OK"
    direct = _ok("verify", "--config", config, "--to", rep.fed.addresses["44"], "--province", "44", "--id", WORKER,
                 "--purpose", "dibao", "--check", CHECK, "--consent", consent, "--json")
    assert [a["province"] for a in direct["answers"]] == ["44"]
    consents = tmp_path / "consents.csv"
    _ok("consent", "grant-batch", "--config", config, "--in", households, "--purpose", "dibao", "--out", consents,
        bound=BATCH_DEADLINE_S)
    results = tmp_path / "results.jsonl"
    _ok("verify-batch", "--config", config, "--in", households, "--consents", consents, "--purpose", "dibao",
        "--out", results, "--check", CHECK, bound=BATCH_DEADLINE_S)
    assert [json.loads(line)["household"] for line in results.read_text().splitlines()] == ["h1"]
    if fault == "killed":  # a hung replica costs a batch session its connection share: the single check stands for both
        decided = tmp_path / "decided.jsonl"
        _ok("household", "check-batch", "--config", config, "--in", households, "--consents", consents,
            "--purpose", "dibao", "--period", PERIOD, "--out", decided, bound=BATCH_DEADLINE_S)
        assert [json.loads(line)["household"] for line in decided.read_text().splitlines()] == ["h1"]
    household = _ok("consent", "grant", "--config", config, "--id", WORKER, "--id", SPOUSE, "--purpose", "dibao",
                    "--json")["consent_id"]
    decision = _ok("household", "check", "--config", config, "--consent", household, "--id", WORKER, "--id", SPOUSE,
                   "--purpose", "dibao", "--region", "510104", "--period", PERIOD, "--json")
    assert decision["consent_id"] == household
    assert _ok("consent", "revoke", "--config", config, consent, "--json")["state"] == "REVOKED"


def _standards(root: Path) -> Path:
    path = root / "standards.toml"
    path.write_text(STANDARDS, encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_with_both_replicas_down_a_command_fails_with_one_line_within_its_deadline(
        replicas: Replicas, fault: str) -> None:
    """With both replicas killed or hung, `consent show` and a routed `verify` exit 4 with one line on
    stderr (no traceback) within their deadline."""
    rep = replicas
    config = rep.fed.configs["51"]
    _limit_deadline(config)
    with rep.client("51", 1) as second:
        consent = second.grant([WORKER], "dibao").consent_id
    for replica in (0, 1):
        _fault(rep, replica, FAULTS[fault])
    for args in (("consent", "show", "--config", config, consent),
                 ("verify", "--config", config, "--id", WORKER, "--purpose", "dibao", "--check", CHECK,
                  "--consent", consent)):
        done, _ = _cli(*args, bound=DEADLINE_S)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 4, done.stderr
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert "coordinator replica" in lines[0], lines[0]


def test_node_init_with_two_coordinators_writes_a_node_that_fails_over(replicas: Replicas, tmp_path: Path) -> None:
    """`node init --coordinator A --coordinator B` (or "A,B") writes a TOML array, one --coordinator a string;
    the node from the array config serves and is listed with replica 1 killed (`node wait` exits 0)."""
    rep = replicas
    a, b = rep.addresses

    def init(name: str, *coordinators: str) -> Path:
        path = tmp_path / f"{name}.toml"
        flags = [x for c in coordinators for x in ("--coordinator", c)]
        _ok("node", "init", "--pki", rep.fed.pki, "--province", "51", "--listen", "127.0.0.1:0",
            "--data-dir", tmp_path / name, "--config", path, *flags)
        return path

    repeated, comma, single = init("repeated", a, b), init("comma", f"{a},{b}"), init("single", a)
    for path in (repeated, comma):
        assert tomllib.loads(path.read_text(encoding="utf-8"))["member"]["coordinator"] == [a, b]
        assert config_mod.load(path).coordinator_endpoints == (a, b)
    assert tomllib.loads(single.read_text(encoding="utf-8"))["member"]["coordinator"] == a
    done, _ = _cli("node", "init", "--pki", rep.fed.pki, "--province", "51", "--listen", "127.0.0.1:0",
                   "--data-dir", tmp_path / "twice", "--config", tmp_path / "twice.toml",
                   "--coordinator", f"{a},{a}", bound=DEADLINE_S)
    assert done.returncode == 2 and "same endpoint twice" in done.stderr
    rep.kill(0)
    proc, events = _serve_workers(repeated, 1)
    try:
        port = next(e["port"] for e in events if e.get("event") == "serving")
        _ok("node", "wait", "--config", repeated, "--to", f"127.0.0.1:{port}", "--timeout", "30", bound=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_call_sent_to_a_hung_replica_is_resent_only_when_that_is_safe(replicas: Replicas) -> None:
    """On a connection made before replica 1 hung: a Route (forwarded to holders) is not sent again, so it
    fails DEADLINE_EXCEEDED instead of reaching replica 2; a registration is resent and registered once
    (replica 1, resumed, finds it in the ledger); a read is resent and answered."""
    import uuid

    from node.client.client import PeerUnreachable
    from node.client.coordinator import CoordinatorClient
    from node.member import Member
    from node.store import ledger
    from node.store.factory import open_storage_readonly
    from node.wire.v1 import coordinator_pb2, verification_pb2

    rep = replicas
    client = CoordinatorClient(Member(config_mod.load(rep.fed.configs["51"])), deadline_s=DEADLINE_S)
    try:
        first = client.grant([WORKER], "dibao")  # replica 1 answers: the client's connection to it is up
        rep.procs[0].send_signal(signal.SIGSTOP)
        route = coordinator_pb2.RouteRequest(consent_id=first.consent_id, request_id=uuid.uuid4().hex)
        with pytest.raises(PeerUnreachable) as lost:  # replica 2 would have refused it (no envelopes): not asked
            client.call("Route", route)
        assert lost.value.status == "DEADLINE_EXCEEDED"
        again = client.grant([WORKER], "dibao")  # sent to replica 1 (hung), then resent to replica 2
        assert client.show(first.consent_id).state == "ACTIVE"
    finally:
        client.__exit__()
        rep.procs[0].send_signal(signal.SIGCONT)
    with rep.client("51", 0) as resumed:  # replica 1 runs again, its backlog (the first send) handled
        assert resumed.show(again.consent_id).state == "ACTIVE"
    cfg = config_mod.load(rep.fed.coordinator_config)
    with open_storage_readonly(cfg) as storage:
        requests = [coordinator_pb2.ConsentRequestBody.FromString(verification_pb2.ConsentBody.FromString(
            verification_pb2.SignedConsent.FromString(e.payload).body).request).request_id
            for e in storage.ledger().entries() if e.kind == ledger.GRANT]
    assert requests.count(again.request_id) == 1


def test_the_web_desk_reaches_the_directory_and_probes_every_endpoint_of_a_province(replicas: Replicas) -> None:
    """With replica 1 killed, the web desk's long-lived coordinator client still reads the directory, and its
    health probe says SERVING for a province whose first listed endpoint refuses but whose second serves."""
    import dataclasses
    import socket

    from node.web.desk import Desk

    rep = replicas
    rep.kill(0)
    with socket.socket() as s:  # a port nothing listens on: connections to it are refused
        s.bind(("127.0.0.1", 0))
        refused = f"127.0.0.1:{s.getsockname()[1]}"
    desk = Desk(rep.fed.configs["51"])
    try:
        entry = desk.coordinator.directory()["44"]
        assert desk._health(dataclasses.replace(entry, endpoint=refused, endpoints=(refused,))) == "UNAVAILABLE"
        assert desk._health(dataclasses.replace(entry, endpoint=refused, endpoints=(refused, entry.endpoint))) == "SERVING"
    finally:
        desk.close()
