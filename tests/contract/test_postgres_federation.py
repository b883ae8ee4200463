"""A federation whose coordinator and nodes all keep their storage in PostgreSQL, over real mutual TLS on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.store.audit import AuditLog
from node.store.factory import open_url
from node.store.postgres.chain import PgChain
from node.testing.cluster import Federation, LoopThread, build_federation
from node.testing.postgres import PostgresServer, put_on_postgres
from tests.conftest import SPOUSE, WORKER


@pytest.fixture
def fed(tmp_path: Path, planted: dict[str, Path], postgres_server: PostgresServer) -> Iterator[Federation]:
    """Coordinator, Guangdong (44) and Sichuan (51), each on its own database; data ingested into PostgreSQL."""
    federation = build_federation(tmp_path, ["44", "51"])
    assert federation.coordinator_config is not None
    put_on_postgres([federation.coordinator_config, *federation.configs.values()], postgres_server)
    for code in ("44", "51"):
        federation.ingest(code, planted[code])
    federation.loop = LoopThread()
    with contextlib.ExitStack() as stack:
        stack.callback(federation.loop.close)
        try:
            federation.start_coordinator()
            for code in ("44", "51"):
                federation.start_node(code)
            yield federation
        finally:
            for code in sorted(federation.servers, key=lambda c: c == "coordinator"):
                federation.stop_node(code)


def _url(path: Path) -> str:
    import tomllib

    return tomllib.loads(path.read_text(encoding="utf-8"))["store"]["url"]


def test_routed_verification_with_every_store_in_postgres(fed: Federation) -> None:
    """Consent in the coordinator's PostgreSQL ledger, facts and audit records in the nodes' databases: a routed check works."""
    consent = fed.grant("51", [WORKER, SPOUSE], "dibao").consent_id
    result = fed.verify("51", [WORKER, SPOUSE], ["income.wage_monthly<=600000"], consent_id=consent)
    assert result.routing == {"44": "OK"}
    outcomes = {(r.subject, r.check): r.outcome for a in result.answers for r in a.results}
    assert outcomes[(0, "income.wage_monthly<=600000")] == "SATISFIED"
    assert outcomes[(1, "income.wage_monthly<=600000")] == "NO_RECORD"
    assert fed.coordinator_config is not None
    with PgChain(_url(fed.coordinator_config), "ledger", readonly=True) as ledger:
        assert ledger.verify().ok and ledger.latest(consent) is not None
    node44 = fed.configs["44"]
    storage = open_url(_url(node44), node44.parent, readonly=True)
    try:
        log = AuditLog(storage.audit())
        report = log.verify()
        assert report.ok and report.count >= 1
        assert any(b"answered" in e.payload for e in storage.audit().entries())
    finally:
        storage.close()


@contextlib.contextmanager
def _asked_while_facts_locked(fed: Federation, consent: str) -> Iterator[dict[str, Any]]:
    """51 asks 44 (routed, 60 s deadline) while 44's `facts` table is locked; yields once 44's lookup waits on the
    lock (PostgreSQL's own view of its sessions), then releases it and waits for the answer (`["answer"]`)."""
    import threading
    import time

    import psycopg

    result: dict[str, Any] = {}
    with psycopg.connect(_url(fed.configs["44"]), autocommit=True) as blocker:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE facts IN ACCESS EXCLUSIVE MODE")  # 44's lookup waits behind this
        asking = threading.Thread(target=lambda: result.update(answer=fed.verify(
            "51", [WORKER, SPOUSE], ["income.wage_monthly<=600000"], consent_id=consent, deadline_s=60)))
        asking.start()
        try:
            with psycopg.connect(_url(fed.configs["44"]), autocommit=True) as watch:
                deadline = time.monotonic() + 30
                while not watch.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                        "AND application_name = 'hedui'").fetchone()[0]:
                    assert time.monotonic() < deadline, "44's lookup never reached the locked table"
                    time.sleep(0.02)  # polling the server's own view of its sessions: a condition, not a delay
            yield result
        finally:
            blocker.execute("COMMIT")
            asking.join(timeout=60)


@pytest.mark.slow
def test_a_store_call_that_waits_does_not_hold_the_nodes_event_loop(fed: Federation) -> None:
    """On PostgreSQL a node's store work for a query runs off its event loop (node.server.store_threads, SECURITY
    G40): while 44's fact lookup waits on a lock, the loop (which also runs the consent feed, every other call
    and here the coordinator) keeps running; once the lock is released the query is answered."""
    import asyncio

    consent = fed.grant("51", [WORKER, SPOUSE], "dibao").consent_id
    with _asked_while_facts_locked(fed, consent) as result:
        # The lookup is waiting now; the loop must still run (blocked, this would wait for the lock).
        fed.loop.run(asyncio.sleep(0), timeout=20)
    assert result["answer"].routing == {"44": "OK"}


def _answered_records(config_path: Path) -> int:
    storage = open_url(_url(config_path), config_path.parent, readonly=True)
    try:
        return sum(b"answered" in e.payload for e in storage.audit().entries())
    finally:
        storage.close()


@pytest.mark.slow
def test_a_query_whose_caller_left_during_store_work_is_still_audited(fed: Federation) -> None:
    """Off the loop, a query's nonce and budget are spent once its store work starts: when the caller's deadline
    passes meanwhile (the coordinator cancels 44's call), the work still finishes and 44 audits the answer."""
    import time

    import psycopg

    consent = fed.grant("51", [WORKER, SPOUSE], "dibao").consent_id
    before = _answered_records(fed.configs["44"])
    with psycopg.connect(_url(fed.configs["44"]), autocommit=True) as blocker:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE facts IN ACCESS EXCLUSIVE MODE")
        try:
            result = fed.verify("51", [WORKER, SPOUSE], ["income.wage_monthly<=600000"], consent_id=consent,
                                deadline_s=2.0)
        finally:
            blocker.execute("COMMIT")
    assert result.routing == {"44": "DEADLINE_EXCEEDED"}
    deadline = time.monotonic() + 30
    while _answered_records(fed.configs["44"]) == before:
        assert time.monotonic() < deadline, "the abandoned query was never audited at 44"
        time.sleep(0.05)  # polling the audit chain for the record: a condition, not a delay


@pytest.mark.slow
def test_a_consent_revoked_while_the_store_work_ran_is_not_answered(fed: Federation) -> None:
    """The consent is checked on the loop before the store work and again after it (VerificationService.recheck):
    a revocation 44 applies while its lookup waits refuses the answer, so the 5 s revocation bound holds."""
    import time

    consent = fed.grant("51", [WORKER, SPOUSE], "dibao").consent_id
    with _asked_while_facts_locked(fed, consent) as result:
        fed.revoke("51", consent)
        view, deadline = fed.servers["44"].revocations, time.monotonic() + 30
        while consent not in view.revoked:
            assert time.monotonic() < deadline, "44 never applied the revocation"
            time.sleep(0.02)  # waiting for 44's consent feed to apply it: a condition
    answer = result["answer"]
    assert answer.routing == {"44": "DENIED"} and not answer.answers, answer
