"""Coordinator replicas on two hosts sharing one PostgreSQL: a killed replica loses nothing, a revocation holds with one down.

Each replica has its own data directory (COORDINATOR_DATA_DIRS_SEPARATE in tests/hosts/conftest.py): the directory
announcements, locators, standards, ledger, nonces and audit chain they share are all in the one database.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import pytest

from node import config as config_mod
from node.store import audit, ledger
from node.store.factory import open_audit_log, open_storage, open_storage_readonly
from node.wire.v1 import verification_pb2
from tests.conftest import WORKER
from tests.hosts.conftest import HEDUI, ROOT, CoordinatedFederation

pytestmark = pytest.mark.slow  # federations across network namespaces (root): scripts/test and CI run them

CHECK = ["real_estate.count<=1"]
DEADLINE_S = 3.0
REVOCATION_IN_FORCE_S = 5.0  # docs/SECURITY.md G4: a revocation is in force at every holder within 5 s
HOLDERS = ("44", "51")


def hedui(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEDUI, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def ask(fed: CoordinatedFederation, via: str, **command: Any) -> dict[str, Any]:
    """One requester command sent through the coordinator replica on host `via`."""
    return fed.requester.ask(via=fed.endpoint(via), **command)


def routed(fed: CoordinatedFederation, via: str, consent_id: str) -> dict[str, Any]:
    return ask(fed, via, op="verify", ids=[WORKER], checks=CHECK, consent_id=consent_id, deadline_s=DEADLINE_S)


def answered(reply: dict[str, Any], province: str) -> bool:
    return any(a["province"] == province and a["valid"] for a in reply.get("answers", []))


def direct(fed: CoordinatedFederation, via: str, consent_id: str) -> dict[str, Any]:
    """Sichuan's question straight to Guangdong's node (so the holder's own consent check decides, not a coordinator)."""
    return ask(fed, via, op="direct", to=f"{fed.hosts['gd'].address}:7443", province="44", ids=[WORKER],
               checks=CHECK, consent_id=consent_id, deadline_s=DEADLINE_S)


def audited(cfg: config_mod.MemberConfig, decision: str) -> set[str]:
    """Consent ids the coordinator's audit chain holds a `decision` record for (read through the storage factory)."""
    with open_storage_readonly(cfg) as storage:
        return {json.loads(e.payload).get("consent_id", "") for e in open_audit_log(storage, cfg).entries()
                if e.kind == audit.KIND_RECORD and json.loads(e.payload).get("decision") == decision}


def test_killing_a_coordinator_replica_loses_nothing_committed(coordinated: CoordinatedFederation) -> None:
    """SIGKILL the coordinator replica that registered consents and a revocation: every acknowledged registration and
    the revocation are in the shared ledger, with their signed requests (a resend is answered from it), their audit records are
    there, `ledger verify` and `audit verify` pass, and the next registration and routed call succeed at the other
    (one PostgreSQL database, a data directory per replica)."""
    fed = coordinated
    grants = [ask(fed, "coord1", op="grant", ids=[WORKER]) for _ in range(3)]
    assert all("consent_id" in g for g in grants), grants
    assert ask(fed, "coord1", op="revoke", consent_id=grants[0]["consent_id"]) == {"revoked": grants[0]["consent_id"]}
    reply = routed(fed, "coord1", grants[1]["consent_id"])
    assert all(answered(reply, code) for code in HOLDERS), reply
    fed.served["coord1"].proc.send_signal(signal.SIGKILL)
    fed.served["coord1"].proc.wait(timeout=30)
    after = ask(fed, "coord2", op="grant", ids=[WORKER])
    assert "consent_id" in after, after
    reply = routed(fed, "coord2", after["consent_id"])
    assert all(answered(reply, code) for code in HOLDERS), reply
    local = fed.local_config(fed.coordinator_configs["coord2"])
    cfg = config_mod.load(local)
    ids = [g["consent_id"] for g in [*grants, after]]
    with open_storage(cfg) as storage:
        granted, revoked = ledger.consents(storage.ledger())
        assert set(ids) <= granted and revoked == {grants[0]["consent_id"]}
        # Each acknowledged grant holds its very signed request: a resend of it at any replica is answered with
        # that consent and registers nothing (registrations are idempotent by the ledger, SECURITY G45).
        requests = {}
        for entry in storage.ledger().entries():
            if entry.kind == ledger.GRANT:
                receipt = verification_pb2.SignedConsent.FromString(entry.payload)
                requests[entry.key] = verification_pb2.ConsentBody.FromString(receipt.body).request
        assert [requests[g["consent_id"]] for g in grants] == [bytes.fromhex(g["request_body"]) for g in grants]
    for chain in ("ledger", "audit"):
        verified = hedui(chain, "verify", "--config", str(local), "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    assert set(ids) <= audited(cfg, audit.CONSENT_GRANT)
    assert grants[0]["consent_id"] in audited(cfg, audit.CONSENT_REVOKE)


def test_revocation_stays_in_force_within_5s_with_one_coordinator_replica_down(coordinated: CoordinatedFederation) -> None:
    """With the first coordinator replica's host cut off (the one the nodes poll), a revocation acknowledged by the
    other replica is refused by the holder itself within 5 s (the nodes' feed fails over; they never fail closed;
    one PostgreSQL database, a data directory per replica)."""
    fed = coordinated
    consent = ask(fed, "coord2", op="grant", ids=[WORKER])["consent_id"]
    assert answered(direct(fed, "coord2", consent), "44")
    fed.net.cut(fed.hosts["coord1"])
    try:
        assert ask(fed, "coord2", op="revoke", consent_id=consent) == {"revoked": consent}
        acknowledged = time.monotonic()
        while answered(outcome := direct(fed, "coord2", consent), "44"):
            assert time.monotonic() - acknowledged <= REVOCATION_IN_FORCE_S, "the revocation never reached the holder"
            time.sleep(0.05)  # observing a bound, not waiting for readiness
        elapsed = time.monotonic() - acknowledged
    finally:
        fed.net.heal(fed.hosts["coord1"])
    assert "revoked" in outcome.get("error", ""), outcome
    assert elapsed <= REVOCATION_IN_FORCE_S, f"revocation took {elapsed:.1f} s to reach the holder"
