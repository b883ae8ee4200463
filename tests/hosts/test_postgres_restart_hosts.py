"""A PostgreSQL restart under a federation across hosts: nothing committed is lost, calls fail closed while it is down."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from node.member import Member
from node.store.factory import open_storage
from node.wire.v1 import verification_pb2
from tests.conftest import WORKER
from tests.hosts.conftest import HEDUI, ROOT, HostedFederation
from tests.hosts.test_province_hosts import CHECK, DEADLINE_S, MARGIN_S, answered_by, verify

HOLDERS = ("44", "51")
RECOVER_WITHIN_S = 30.0  # the nodes' next consent sync (every second) after the coordinator's store is back


def queries(replies: list[dict[str, object]], province: str) -> list[verification_pb2.QueryBody]:
    return [verification_pb2.QueryBody.FromString(bytes.fromhex(a["query_body"]))
            for r in replies for a in r["answers"] if a["province"] == province]  # type: ignore[attr-defined]


def hedui(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEDUI, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def audited(config: Path) -> set[str]:
    exported = hedui("audit", "export", "--config", str(config))
    assert exported.returncode == 0, exported.stderr
    return {json.loads(line).get("request_id") for line in exported.stdout.splitlines() if line.strip()}


def fact_counts(config: Path) -> dict[str, int]:
    with open_storage(Member.from_config(config).cfg) as storage:
        return storage.facts().counts()


ON_POSTGRESQL = pytest.mark.parametrize("replica_store", ["postgresql"])


def refused_unavailable(reply: dict[str, object]) -> bool:
    """The call was refused as UNAVAILABLE: by the coordinator as a whole, or for every holder it routes to."""
    if "error" in reply:
        return "UNAVAILABLE" in str(reply["error"])
    return all(reply["routing"].get(code) == "UNAVAILABLE" for code in HOLDERS)  # type: ignore[attr-defined]


@pytest.mark.slow
@ON_POSTGRESQL
def test_a_postgresql_restart_loses_nothing_committed(hosted: HostedFederation) -> None:
    """PostgreSQL (every store of the federation) crashes and recovers from its WAL: a call made while it is down gets
    no answer, every answered call's nonce is still refused as a replay and its audit record is there, the audit
    chains verify, the facts are intact, and calls are answered again once the nodes' consent feed has synced
    (the pools reconnect; nothing is restarted)."""
    fed = hosted
    assert fed.postgres is not None
    local = {code: fed.local_config(fed.configs[code]) for code in HOLDERS}
    consent = fed.requester.ask(op="grant", ids=[WORKER])["consent_id"]
    replies = [verify(fed, consent) for _ in range(3)]
    assert all(answered_by(fed, r, code) for r in replies for code in HOLDERS)
    facts = {code: fact_counts(local[code]) for code in HOLDERS}
    fed.postgres.stop("immediate")  # a crash: no checkpoint, recovery from the WAL at the next start
    try:
        down = fed.requester.ask(op="verify", ids=[WORKER], checks=CHECK, consent_id=consent, deadline_s=DEADLINE_S)
    finally:
        fed.postgres.restart()
    assert "error" in down or not any(answered_by(fed, down, code) for code in HOLDERS), down  # fails closed
    # the nodes' consent feed failed while the coordinator's store was down, so they fail closed (G4) until their
    # next sync; a call meeting a connection the restart broke may also fail closed as a whole (an error reply):
    # ask until both holders answer (bounded; each ask is itself bounded by its deadline)
    recovered_by = time.monotonic() + RECOVER_WITHIN_S
    while True:
        after = fed.requester.ask(op="verify", ids=[WORKER], checks=CHECK, consent_id=consent, deadline_s=DEADLINE_S)
        if "error" not in after:
            replies.append(after)
            if all(answered_by(fed, after, code) for code in HOLDERS):
                break
        assert time.monotonic() < recovered_by, f"no answer after the restart: {after.get('routing', after)}"
    for code in HOLDERS:
        answered = queries(replies, code)
        assert len(answered) == sum(answered_by(fed, r, code) for r in replies) >= 4
        cfg = Member.from_config(local[code]).cfg
        with open_storage(cfg) as storage:  # remember() is False for a nonce the store already holds
            nonces = storage.nonces(window_ms=cfg.limits.clock_skew_s * 1000)
            assert [nonces.remember(q.requester, q.nonce, q.issued_at_ms) for q in answered] == [False] * len(answered)
        verified = hedui("audit", "verify", "--config", str(local[code]), "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert {q.request_id for q in answered} <= audited(local[code])
        assert fact_counts(local[code]) == facts[code]
    coordinator = fed.local_config(fed.coordinator_config)
    for chain in ("audit", "ledger"):
        verified = hedui(chain, "verify", "--config", str(coordinator), "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow
@ON_POSTGRESQL
def test_a_call_while_postgresql_is_down_is_refused_unavailable_within_the_deadline(hosted: HostedFederation) -> None:
    """With PostgreSQL down, a routed call is refused as UNAVAILABLE within the caller's deadline (fail closed: no
    answer without its durable audit record and nonce), not left to run out the deadline."""
    fed = hosted
    assert fed.postgres is not None
    consent = fed.requester.ask(op="grant", ids=[WORKER])["consent_id"]
    assert all(answered_by(fed, verify(fed, consent), code) for code in HOLDERS)
    fed.postgres.stop("immediate")
    try:
        down = fed.requester.ask(op="verify", ids=[WORKER], checks=CHECK, consent_id=consent, deadline_s=DEADLINE_S)
    finally:
        fed.postgres.restart()
    assert "error" in down or not any(answered_by(fed, down, code) for code in HOLDERS), down
    assert down["elapsed_s"] <= DEADLINE_S + MARGIN_S, down  # type: ignore[operator]
    assert refused_unavailable(down), down
