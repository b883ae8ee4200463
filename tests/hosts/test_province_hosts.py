"""Province nodes on separate hosts: a partitioned holder, a killed replica, a healed link, with real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from node.member import Member
from node.store.factory import open_storage
from node.wire.v1 import verification_pb2
from tests.conftest import WORKER
from tests.hosts.conftest import HEDUI, ROOT, HostedFederation

pytestmark = pytest.mark.slow  # federations across network namespaces (root): scripts/test and CI run them

CHECK = ["real_estate.count<=1"]
DEADLINE_S = 3.0
#: Allowance past the caller's deadline for the reply to travel and the requester to read it (a bound, not a speed).
MARGIN_S = 1.5
HEAL_WITHIN_S = 30.0  # gRPC's reconnection back-off (at most 2 s on the router) and the node's consent re-sync


def verify(fed: HostedFederation, consent_id: str, deadline_s: float = DEADLINE_S) -> dict[str, object]:
    reply = fed.requester.ask(op="verify", ids=[WORKER], checks=CHECK, consent_id=consent_id, deadline_s=deadline_s)
    assert "error" not in reply, reply
    return reply


def answered_by(fed: HostedFederation, reply: dict[str, object], province: str) -> bool:
    return any(a["province"] == province and a["valid"] for a in reply["answers"])  # type: ignore[attr-defined]


def test_a_partitioned_holder_is_reported_unavailable_within_the_deadline(hosted: HostedFederation) -> None:
    """Guangdong's host cut off: the routed call reports it UNAVAILABLE (Sichuan still answers) within the
    caller's deadline, never waiting past it."""
    fed = hosted
    consent = fed.requester.ask(op="grant", ids=[WORKER])["consent_id"]
    fed.net.cut(fed.hosts["gd"])
    try:
        reply = verify(fed, consent)
    finally:
        fed.net.heal(fed.hosts["gd"])
    assert reply["routing"]["44"] == "UNAVAILABLE"  # type: ignore[index]
    assert answered_by(fed, reply, "51")
    assert reply["elapsed_s"] <= DEADLINE_S + MARGIN_S  # type: ignore[operator]


def test_healing_the_link_makes_the_holder_answer_again(hosted: HostedFederation) -> None:
    """Guangdong answers, is cut off and reported failed, then answers again once its link is healed."""
    fed = hosted
    consent = fed.requester.ask(op="grant", ids=[WORKER])["consent_id"]
    assert answered_by(fed, verify(fed, consent), "44")
    fed.net.cut(fed.hosts["gd"])
    try:
        cut = verify(fed, consent)
    finally:
        fed.net.heal(fed.hosts["gd"])
    # a call sent on the connection made before the cut may have been processed: DEADLINE_EXCEEDED, not retried
    assert cut["routing"]["44"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")  # type: ignore[index]
    assert cut["elapsed_s"] <= DEADLINE_S + MARGIN_S  # type: ignore[operator]
    healed_by = time.monotonic() + HEAL_WITHIN_S
    while True:  # readiness: ask again until Guangdong answers (each ask is itself bounded by its deadline)
        reply = verify(fed, consent)
        if answered_by(fed, reply, "44"):
            break
        assert time.monotonic() < healed_by, f"Guangdong never answered after the heal: {reply['routing']}"
    assert reply["routing"]["44"] == "OK"  # type: ignore[index]


def test_killing_a_replica_loses_nothing_committed_and_the_other_answers(hosted: HostedFederation) -> None:
    """SIGKILL the Sichuan replica that answered: every answered query's nonce is still in the shared nonce store,
    the audit chain verifies and holds every answered request, and the next call is answered by the other replica."""
    fed = hosted
    consent = fed.requester.ask(op="grant", ids=[WORKER])["consent_id"]
    replies = [verify(fed, consent) for _ in range(3)]
    assert all(answered_by(fed, r, "51") for r in replies)
    first = fed.served["sc1"]  # the first endpoint in the directory's stable order (10.99.0.3 before .4)
    assert first.answered() and not fed.served["sc2"].answered()
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=30)
    after = verify(fed, consent)
    assert after["routing"]["51"] == "OK" and answered_by(fed, after, "51")  # type: ignore[index]
    assert fed.served["sc2"].answered()
    local = fed.local_config(fed.configs["51"])  # the shared store, read through the storage factory
    sc = Member.from_config(local)
    queries = [verification_pb2.QueryBody.FromString(bytes.fromhex(a["query_body"]))
               for r in [*replies, after] for a in r["answers"] if a["province"] == "51"]  # type: ignore[attr-defined]
    assert len(queries) == 4
    with open_storage(sc.cfg) as storage:  # remember() is False for a nonce the store already holds: none was lost
        nonces = storage.nonces(window_ms=sc.cfg.limits.clock_skew_s * 1000)
        assert [nonces.remember(q.requester, q.nonce, q.issued_at_ms) for q in queries] == [False] * 4
    verified = subprocess.run([*HEDUI, "audit", "verify", "--config", str(local), "--json"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    exported = subprocess.run([*HEDUI, "audit", "export", "--config", str(local)],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert exported.returncode == 0, exported.stderr
    audited = {json.loads(line).get("request_id") for line in exported.stdout.splitlines() if line.strip()}
    assert {q.request_id for q in queries} <= audited
