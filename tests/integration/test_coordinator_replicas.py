"""Coordinator replicas: several `hedui coordinator serve` processes on one data directory serve one
federation; nodes configured with every replica fail over between them, and a replica that dies loses
no committed consent, revocation, nonce or audit record."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from node import config as config_mod
from node.client.client import PeerRefused, PeerUnreachable
from node.client.coordinator import CoordinatorClient
from node.client.routed import routed_verify
from node.config import ConfigError
from node.member import Member
from node.service.consent import parse_ledger_head
from node.store import audit, ledger
from node.store.factory import open_audit_log, open_storage, open_storage_readonly
from node.testing.cluster import Federation, LoopThread, build_federation
from node.wire.v1 import coordinator_pb2, verification_pb2
from tests.conftest import WORKER
from tests.integration.test_workers import _serve_workers

HEDUI = [sys.executable, "-m", "node.cli.main"]
CHECKS = ["deposit.balance_total<=2000000"]
BOUND_S = 30.0  # a bound on waiting for something to happen, never a speed requirement
REVOCATION_IN_FORCE_S = 5.0  # issue 14: revocation in force within 5 s with one coordinator replica down
#: The replicas' shared store, one fixture parameter each: extra tables for the coordinator's config. SQLite
#: (one data dir on one filesystem) today; the PostgreSQL backend adds {"store": {"url": ...}} here (and the
#: direct reads in _ledger_consents/_audited go through the storage factory).
STORES: dict[str, Callable[[Path], dict[str, Any]]] = {"sqlite": lambda tmp: {}}


@dataclasses.dataclass
class Replicas:
    """A federation whose coordinator runs as several processes on one data directory."""

    fed: Federation
    procs: list[subprocess.Popen[str]]
    addresses: list[str]

    def member(self, code: str, replica: int) -> Member:
        """Province `code` as a client of one replica only."""
        cfg = config_mod.load(self.fed.configs[code])
        return Member(dataclasses.replace(cfg, coordinator=self.addresses[replica]))

    def client(self, code: str, replica: int) -> CoordinatorClient:
        return CoordinatorClient(self.member(code, replica), deadline_s=10)

    def kill(self, replica: int) -> None:
        """SIGKILL one replica (no shutdown of any kind) and reap it."""
        self.procs[replica].send_signal(signal.SIGKILL)
        self.procs[replica].wait(timeout=30)


def _point_at(path: Path, addresses: list[str]) -> None:
    """Configure a node with every coordinator replica (a TOML array, in dialling order)."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    data["member"]["coordinator"] = addresses
    config_mod.write(path, data)


@pytest.fixture(params=sorted(STORES))
def replicas(request: pytest.FixtureRequest, planted: dict[str, Path], tmp_path: Path) -> Iterator[Replicas]:
    """Two coordinator replicas (real processes, port 0 each, one store) and two province nodes using both."""
    fed = build_federation(tmp_path, ["51", "44"], data=planted, coordinator_extra=STORES[request.param](tmp_path))
    procs: list[subprocess.Popen[str]] = []
    addresses = []
    fed.loop = LoopThread()
    try:
        for _ in range(2):
            proc, events = _serve_workers(fed.coordinator_config, 1, role="coordinator", level="info")
            procs.append(proc)
            port = next(e["port"] for e in events if e.get("event") == "serving")
            addresses.append(f"127.0.0.1:{port}")
        for path in fed.configs.values():
            _point_at(path, addresses)
        for code in ("51", "44"):
            fed.start_node(code)
        yield Replicas(fed, procs, addresses)
    finally:
        for code in list(fed.servers):
            fed.stop_node(code)
        fed.loop.close()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a replica a test hung (SIGSTOP) stops too
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)


def _verify_direct(rep: Replicas, receipt: Any) -> str:
    """Province 51 asks 44 directly under `receipt`: "OK" or the refusal (status and public reason)."""
    from node.client.client import PeerClient

    try:  # its directory look-up (the pinned certificate of 44) asks replica 2, which no test stops
        with PeerClient(rep.member("51", 1), rep.fed.addresses["44"], province="44", deadline_s=5) as peer:
            result = peer.verify([WORKER], "dibao", CHECKS, consent=receipt)
        assert result.answers and result.answers[0].signature_valid
        return "OK"
    except (PeerRefused, PeerUnreachable) as exc:  # a node failing closed is "unreachable" (UNAVAILABLE)
        return str(exc)


def _seconds_until_revoked(rep: Replicas, receipt: Any) -> float:
    """Seconds from now until node 44 refuses `receipt` as revoked (observed every 50 ms, bounded by
    BOUND_S); any other refusal first (a node failing closed: its feed stopped) fails the test."""
    started = time.monotonic()
    while (outcome := _verify_direct(rep, receipt)) == "OK":
        assert time.monotonic() - started < BOUND_S, "the revocation never reached the node"
        time.sleep(0.05)  # observing a bound, not waiting for readiness
    assert "revoked" in outcome, outcome
    return time.monotonic() - started


def _run(*args: str) -> dict[str, Any]:
    done = subprocess.run([*HEDUI, *args, "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def _ledger_consents(cfg: config_mod.MemberConfig) -> dict[str, str]:
    """consent id -> "grant" or "revoke" (the last entry's kind) from the coordinator's ledger itself."""
    with open_storage_readonly(cfg) as storage:
        return {e.key: e.kind for e in storage.ledger().entries() if e.kind in (ledger.GRANT, ledger.REVOKE)}


def _audited(cfg: config_mod.MemberConfig, decision: str) -> set[str]:
    """Consent ids the coordinator's audit chain holds a `decision` record for."""
    with open_storage_readonly(cfg) as storage:
        log = open_audit_log(storage, cfg)
        return {json.loads(e.payload).get("consent_id", "") for e in log.entries()
                if e.kind == audit.KIND_RECORD and json.loads(e.payload).get("decision") == decision}


def test_node_config_names_several_coordinator_replicas(tmp_path: Path) -> None:
    """[member] coordinator takes one endpoint or an array of distinct ones; `coordinator` is the first."""
    fed = build_federation(tmp_path, ["51"])
    path = fed.configs["51"]
    _point_at(path, ["127.0.0.1:7001", "127.0.0.1:7002"])
    cfg = config_mod.load(path)
    assert cfg.coordinator == "127.0.0.1:7001" and cfg.coordinator_endpoints == ("127.0.0.1:7001", "127.0.0.1:7002")
    assert dataclasses.replace(cfg, coordinator="127.0.0.1:9").coordinator_endpoints == ("127.0.0.1:9",)
    for bad in (["127.0.0.1:7001", "127.0.0.1:7001"], ["127.0.0.1:7001", ""], [7001]):
        _point_at(path, bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="member.coordinator"):
            config_mod.load(path)


def test_a_consent_and_its_revocation_hold_across_replicas(replicas: Replicas) -> None:
    """A consent registered at replica 1 is active at replica 2 (routed there too); its revocation at
    replica 2 is in force at a node that polls replica 1."""
    rep = replicas
    with rep.client("51", 0) as first:
        info = first.grant([WORKER], "dibao")
    with rep.client("51", 0) as first, rep.client("51", 1) as second:  # one ledger: the same signed head from both
        heads = [c.stub.ConsentUpdates(coordinator_pb2.ConsentUpdatesRequest(), timeout=5).head for c in (first, second)]
        assert heads[0].body == heads[1].body  # each signature the coordinator's (a token key may sign differently)
        verifier = rep.member("51", 0).verifier
        assert parse_ledger_head(heads[0], verifier) == parse_ledger_head(heads[1], verifier)
    with rep.client("51", 1) as second:
        assert second.show(info.consent_id).state == "ACTIVE"
        result = routed_verify(rep.member("51", 1), [WORKER], "dibao", CHECKS, consent=info.receipt, coordinator=second)
        assert result.routing.get("44") == "OK" and result.answers[0].signature_valid
    assert _verify_direct(rep, info.receipt) == "OK"
    assert rep.fed.servers["44"].link.replicas.current == 0  # the node polls the first replica
    with rep.client("51", 1) as second:
        assert second.revoke(info.consent_id).state == "REVOKED"
    with rep.client("51", 0) as first:
        assert first.show(info.consent_id).state == "REVOKED"
    _seconds_until_revoked(rep, info.receipt)
    assert rep.fed.servers["44"].link.replicas.current == 0


class _Recording(CoordinatorClient):
    """A real client that keeps the signed RegisterConsent requests it sent (to replay one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[coordinator_pb2.RegisterConsentRequest] = []

    def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        if method == "RegisterConsent":
            self.sent.append(request)
        return super().call(method, request, timeout=timeout)


@pytest.mark.slow
def test_a_killed_replica_loses_nothing_committed(replicas: Replicas) -> None:
    """SIGKILL one replica while consents are being registered through it: every acknowledged
    registration and revocation is in the ledger and the audit chain (both verify), a resend of one registers
    nothing new at the other replica (its receipt is confirmed), the next call succeeds there, and the nodes'
    feeds carry on."""
    rep = replicas
    cfg = config_mod.load(rep.fed.coordinator_config)
    with rep.client("51", 0) as first:
        revoked = first.grant([WORKER], "dibao")
        first.revoke(revoked.consent_id)
    acknowledged: list[str] = []
    recorder = _Recording(rep.member("51", 0), deadline_s=5)
    stop = threading.Event()

    def register() -> None:
        while not stop.is_set():
            try:
                acknowledged.append(recorder.grant([WORKER], "dibao").consent_id)
            except Exception:  # noqa: BLE001 - the replica died under this call: not acknowledged
                return

    worker = threading.Thread(target=register)
    worker.start()
    deadline = time.monotonic() + BOUND_S
    while len(acknowledged) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)  # observing progress, not waiting for readiness
    rep.kill(0)
    killed_at = time.monotonic()
    stop.set()
    worker.join(timeout=BOUND_S)
    recorder.__exit__()
    assert len(acknowledged) >= 5
    with rep.client("51", 1) as second:
        assert all(second.show(c).state == "ACTIVE" for c in acknowledged)
        assert second.show(revoked.consent_id).state == "REVOKED"
        # registered at the dead replica: the ledger holds it, so nothing is registered again and its receipt is confirmed (G45)
        resent = second.stub.RegisterConsent(recorder.sent[0], timeout=5)
        assert verification_pb2.ConsentBody.FromString(resent.receipt.body).consent_id == acknowledged[0]
        after = second.grant([WORKER], "dibao")  # the next call succeeds through the other replica
    kinds = _ledger_consents(cfg)
    assert all(kinds[c] == ledger.GRANT for c in [*acknowledged, after.consent_id]) and kinds[revoked.consent_id] == ledger.REVOKE
    granted = _audited(cfg, audit.CONSENT_GRANT)
    assert set(acknowledged) | {after.consent_id, revoked.consent_id} <= granted
    assert revoked.consent_id in _audited(cfg, audit.CONSENT_REVOKE)
    assert _run("ledger", "verify", "--config", str(rep.fed.coordinator_config))["ok"]
    assert _run("audit", "verify", "--config", str(rep.fed.coordinator_config))["ok"]
    # The nodes' feed moved to the live replica: their views are refreshed after the kill, so they answer.
    view = rep.fed.servers["44"].revocations
    while view.synced_at is None or view.synced_at < killed_at:
        assert time.monotonic() - killed_at < BOUND_S, "the node's consent feed did not fail over"
        time.sleep(0.05)  # observing a bound, not waiting for readiness
    assert rep.fed.servers["44"].link.replicas.current == 1
    assert _verify_direct(rep, after.receipt) == "OK"
    # The heads the node witnessed from both replicas (before and after the kill) are all on the one chain.
    rep.fed.loop.run(rep.fed.servers["44"].link.sync_revocations())
    witnessed = ["--witness", str(rep.fed.member("44").cfg.data_dir)]
    for chain in ("ledger", "audit"):
        report = _run(chain, "verify", "--config", str(rep.fed.coordinator_config), *witnessed)
        assert report["ok"] and report["witness"]["ok"] and report["witness"]["heads"], report


@pytest.mark.slow
@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_revocation_in_force_within_5s_with_one_replica_down(replicas: Replicas, fault: signal.Signals) -> None:
    """With the replica the nodes poll killed (connections refused) or hung (SIGSTOP: calls time out), a
    revocation acknowledged by the other one is refused by the holder within 5 s of its acknowledgement
    (the nodes' feed fails over within its own deadline, so it never fails closed; G4)."""
    rep = replicas
    with rep.client("51", 1) as second:
        info = second.grant([WORKER], "dibao")
    assert _verify_direct(rep, info.receipt) == "OK"
    assert rep.fed.servers["44"].link.replicas.current == 0
    rep.procs[0].send_signal(fault)
    with rep.client("51", 1) as second:
        assert second.revoke(info.consent_id).state == "REVOKED"
        acknowledged = time.monotonic()
    _seconds_until_revoked(rep, info.receipt)
    elapsed = time.monotonic() - acknowledged
    assert elapsed <= REVOCATION_IN_FORCE_S, f"revocation took {elapsed:.1f} s to reach the holder"
    assert rep.fed.servers["44"].link.replicas.current == 1


def test_concurrent_registrations_on_both_replicas_keep_the_ledger_linear(replicas: Replicas) -> None:
    """Consents registered at once through both replicas each get their own ledger entry (the index the
    receipt names), and the ledger and audit chains verify."""
    rep = replicas
    results: dict[int, list[Any]] = {0: [], 1: []}

    def register(replica: int) -> None:
        with rep.client("51", replica) as client:
            results[replica].extend(client.grant([WORKER], "dibao") for _ in range(12))

    threads = [threading.Thread(target=register, args=(r,)) for r in (0, 1, 0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=BOUND_S * 2)
    infos = results[0] + results[1]
    assert len(infos) == 48
    assert len({i.ledger_index for i in infos}) == 48
    cfg = config_mod.load(rep.fed.coordinator_config)
    with open_storage_readonly(cfg) as storage:
        chain = storage.ledger()
        assert all(chain.entry(i.ledger_index).key == i.consent_id for i in infos)
        assert chain.verify().ok
    assert _run("ledger", "verify", "--config", str(rep.fed.coordinator_config))["ok"]
    assert _run("audit", "verify", "--config", str(rep.fed.coordinator_config))["ok"]


def test_a_consent_revoked_at_two_replicas_at_once_is_revoked_once(replicas: Replicas) -> None:
    """Two replicas revoking one consent at the same moment (the other's entry lands between this one's
    catch-up and its append) write one revocation entry, and both then report that one."""
    from node.coordinator.consents import ConsentRegistry

    rep = replicas
    with rep.client("51", 0) as client:
        info = client.grant([WORKER], "dibao")
    cfg = config_mod.load(rep.fed.coordinator_config)
    m = Member(cfg)
    stores = [open_storage(cfg) for _ in range(2)]  # two handles on the shared store, as two replicas hold
    chains = [s.ledger() for s in stores]
    try:
        a, b = (ConsentRegistry(c, signer=m.signer, verifier=m.verifier, catalogue=m.catalogue, policy=m.policy)
                for c in chains)
        assert b.status("51", info.consent_id).state == coordinator_pb2.ACTIVE  # b has caught up: not revoked

        def first_a(real: Any) -> Any:
            def append(*args: Any, **kwargs: Any) -> Any:  # a's revocation commits just before b's append
                a.revoke("51", info.consent_id, "case_closed")
                return real(*args, **kwargs)
            return append

        chains[1].append, chains[1].append_next = first_a(chains[1].append), first_a(chains[1].append_next)  # type: ignore[method-assign]
        status = b.revoke("51", info.consent_id, "other")
        held = a.status("51", info.consent_id)
        assert status.state == held.state == coordinator_pb2.REVOKED and status.revoked_at_ms == held.revoked_at_ms
        revocations = [e for e in chains[0].entries() if e.kind == ledger.REVOKE and e.key == info.consent_id]
        assert len(revocations) == 1 and revocations[0].payload == b"case_closed"
        assert [u.ledger_index for u in b.updates(0).updates] == [revocations[0].idx]
    finally:
        for s in stores:
            s.close()


def test_a_household_round_opened_at_one_replica_is_routed_at_the_other(replicas: Replicas) -> None:
    """Rounds keep no state at a replica: the holder set replica 1 signed is routed by replica 2, and the
    round id (remembered in the shared nonce store, so masks never repeat) is refused there."""
    import uuid

    from node.client.household import _Round
    from node.crypto.tokens import subject_token
    from node.wire.v1 import household_pb2, household_pb2_grpc

    rep = replicas
    member = rep.member("51", 1)
    tokens = [subject_token(member.linkage_key, WORKER)]
    with rep.client("51", 0) as first, rep.client("51", 1) as second:
        info = first.grant([WORKER], "dibao")
        epoch, edts = first.discovery_tokens(tokens)
        request = household_pb2.OpenRoundRequest(consent_id=info.consent_id, round_id=uuid.uuid4().hex,
                                                 discovery_tokens=edts, epoch=epoch)
        opened = household_pb2_grpc.HouseholdRoundsStub(first._channel).OpenRound(request, timeout=10)
        holders = set(household_pb2.HolderSetBody.FromString(opened.holder_set.body).holders)
        assert holders == {"51", "44"}
        with pytest.raises(grpc.RpcError) as reused:
            household_pb2_grpc.HouseholdRoundsStub(second._channel).OpenRound(request, timeout=10)
        assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        session = _Round(member, household_pb2_grpc.HouseholdRoundsStub(second._channel), second.directory(),
                         info.receipt, info.consent_id, "dibao", tokens, ["income_monthly"], time.monotonic() + 30,
                         discovery=(epoch, edts))
        answered, failed, outcome = session.ask(opened.holder_set, {})
    assert not failed and set(answered) == holders and outcome is not None
