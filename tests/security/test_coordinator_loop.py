"""The coordinator keeps answering other calls while it registers a batch of consents (its event loop is
never held by the signing and durable ledger commit of a grant batch)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from node.crypto import signing
from node.errors import ErrorCode
from node.store import audit
from node.testing import Federation
from node.wire.v1 import coordinator_pb2, coordinator_pb2_grpc, verification_pb2
from tests.security.coordinator_harness import WAIT_S, GatedSigner, channel, coordinator_only, signed

CALL_S = 10.0  # deadline of the calls made while the batch is parked: they fail only if the loop is held
BATCH = 64


@pytest.fixture()
def fed(tmp_path: Path) -> Iterator[Federation]:
    with coordinator_only(tmp_path) as fed:
        yield fed


def _batch(fed: Federation, n: int) -> coordinator_pb2.RegisterConsentBatchRequest:
    return coordinator_pb2.RegisterConsentBatchRequest(requests=[signed(fed) for _ in range(n)])


def test_other_calls_are_answered_while_a_grant_batch_is_registered(fed: Federation) -> None:
    """While a grant batch is being signed and committed, ConsentUpdates and health still answer (and see the
    ledger without the batch); the batch then commits whole, its receipts on consecutive ledger entries."""
    consents = fed.servers["coordinator"].servicer.consents
    gate = GatedSigner(consents.signer)
    consents.signer = gate
    with channel(fed, "51") as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        before = stub.ConsentUpdates(coordinator_pb2.ConsentUpdatesRequest(after_index=0), timeout=CALL_S).head_index
        pending = stub.RegisterConsentBatch.future(_batch(fed, BATCH), timeout=4 * WAIT_S)
        try:
            assert gate.entered.wait(WAIT_S), "the batch never reached its receipt signing"
            during = stub.ConsentUpdates(coordinator_pb2.ConsentUpdatesRequest(after_index=0), timeout=CALL_S)
            healthy = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_S)
            assert not pending.done(), "the batch finished before the other calls were answered"
        finally:
            gate.release.set()
        reply = pending.result()
        after = stub.ConsentUpdates(coordinator_pb2.ConsentUpdatesRequest(after_index=0), timeout=CALL_S).head_index
    assert during.head_index == before  # answered with the batch not yet in the ledger
    assert healthy.status == health_pb2.HealthCheckResponse.SERVING
    assert [i.error_code for i in reply.items] == [""] * BATCH
    indices = [i.status.ledger_index for i in reply.items]
    assert indices == list(range(before + 1, before + BATCH + 1))
    assert after == before + BATCH
    for item in reply.items:  # each receipt names its own ledger entry and is the coordinator's signature
        body = verification_pb2.ConsentBody.FromString(item.status.receipt.body)
        assert body.ledger_index == item.status.ledger_index
        consents.verifier.verify(item.status.receipt.signature, signing.CONSENT, item.status.receipt.body)


def test_a_replayed_request_in_a_batch_is_still_refused(fed: Federation) -> None:
    """Registering off the loop keeps the nonce check: the same signed requests sent again register nothing
    new; the ledger holds them, so each is answered with the receipt it already has (SECURITY G45)."""
    batch = _batch(fed, 2)
    with channel(fed, "51") as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        first = stub.RegisterConsentBatch(batch, timeout=CALL_S)
        head = stub.ConsentUpdates(coordinator_pb2.ConsentUpdatesRequest(after_index=0), timeout=CALL_S).head_index
        again = stub.RegisterConsentBatch(batch, timeout=CALL_S)
        after = stub.ConsentUpdates(coordinator_pb2.ConsentUpdatesRequest(after_index=0), timeout=CALL_S).head_index
    assert [i.error_code for i in first.items] == ["", ""]
    assert [i.error_code for i in again.items] == ["", ""]
    assert [i.status for i in again.items] == [i.status for i in first.items]
    assert after == head


def test_a_grant_batch_is_audited_in_one_transaction_in_request_order(fed: Federation) -> None:
    """A batch's grant records (and a refused request's record) are written together, in request order,
    one per consent, after the ledger holds every granted consent."""
    batch = _batch(fed, 5)
    batch.requests[2].signature.value = b"\x00" * len(batch.requests[2].signature.value)  # refused, still audited
    with channel(fed, "51") as ch:
        reply = coordinator_pb2_grpc.CoordinatorStub(ch).RegisterConsentBatch(batch, timeout=CALL_S)
    assert [bool(i.error_code) for i in reply.items] == [False, False, True, False, False]
    granted = [verification_pb2.ConsentBody.FromString(i.status.receipt.body).consent_id for i in reply.items
               if not i.error_code]
    log = fed.servers["coordinator"].audit_log
    entries = [e for e in log.chain.entries() if e.kind == audit.KIND_RECORD]
    records = [audit.AuditRecord.from_json(e.payload) for e in entries[-5:]]
    assert [r.decision for r in records] == [audit.CONSENT_GRANT] * 2 + [audit.refused(ErrorCode.UNAUTHENTICATED)] \
        + [audit.CONSENT_GRANT] * 2
    assert [r.consent_id for r in records if r.decision == audit.CONSENT_GRANT] == granted
    assert len({e.at_ms for e in entries[-5:]}) == 1  # one transaction: the entries share their at_ms


class _GatedLog:
    """The coordinator's real audit log; its writes wait until the test lets them go."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    def record_many(self, records: Any, **kw: Any) -> Any:
        self.entered.set()
        self.release.wait(WAIT_S)
        return self.inner.record_many(records, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_no_answer_before_the_audit_commit(fed: Federation) -> None:
    """The coordinator answers an audited call only once its audit records are committed (the writer
    thread hands the result straight back to the loop), and the loop stays free while it waits."""
    auditor = fed.servers["coordinator"].servicer.auditor
    gate = _GatedLog(auditor.log)
    auditor.log = gate
    with channel(fed, "51") as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        pending = stub.RegisterConsentBatch.future(_batch(fed, 3), timeout=4 * WAIT_S)
        try:
            assert gate.entered.wait(WAIT_S), "the batch's audit records were never written"
            stub.ConsentUpdates(coordinator_pb2.ConsentUpdatesRequest(after_index=0), timeout=CALL_S)
            assert not pending.done(), "answered before its audit records were committed"
        finally:
            gate.release.set()
        reply = pending.result()
    records = [audit.AuditRecord.from_json(e.payload) for e in gate.inner.chain.entries() if e.kind == audit.KIND_RECORD]
    granted = [verification_pb2.ConsentBody.FromString(i.status.receipt.body).consent_id for i in reply.items]
    assert [r.consent_id for r in records[-3:]] == granted


def test_a_grant_committed_after_its_caller_gave_up_is_still_audited(fed: Federation) -> None:
    """A caller whose deadline passes while its batch is being committed in the worker thread gets
    DEADLINE_EXCEEDED, and the consents the ledger then holds still get their grant records (found in review:
    the cancelled handler never queued them)."""
    consents = fed.servers["coordinator"].servicer.consents
    gate = GatedSigner(consents.signer)
    consents.signer = gate
    log = fed.servers["coordinator"].audit_log
    with channel(fed, "51") as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        before = stub.ConsentUpdates(coordinator_pb2.ConsentUpdatesRequest(after_index=0), timeout=CALL_S).head_index
        pending = stub.RegisterConsentBatch.future(_batch(fed, 3), timeout=2.0)
        try:
            assert gate.entered.wait(WAIT_S), "the batch never reached its receipt signing"
            with pytest.raises(grpc.RpcError) as gave_up:
                pending.result()
            assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            gate.release.set()
        deadline = time.monotonic() + WAIT_S
        while True:  # the thread commits the batch after the caller left; its records follow
            granted = [e.key for e in consents.chain.entries(after=before)]
            records = [audit.AuditRecord.from_json(e.payload) for e in log.chain.entries() if e.kind == audit.KIND_RECORD]
            audited = {r.consent_id for r in records if r.decision == audit.CONSENT_GRANT}
            if len(granted) == 3 and set(granted) <= audited or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert len(granted) == 3, "the batch was not committed"
    assert set(granted) <= audited, "consents in the ledger without their grant record"


def test_another_thread_waits_for_a_nonce_transaction_instead_of_writing_into_it(tmp_path: Path) -> None:
    """While one thread holds a nonce transaction (a batch), another thread's remember waits for it to end and
    still sees a nonce the batch recorded as used (found in review: it wrote into the open transaction)."""
    from node.store.sqlite.nonces import NonceStore

    store = NonceStore(tmp_path / "nonces.sqlite", window_ms=600_000)
    now_ms = int(time.time() * 1000)
    inside, done = threading.Event(), threading.Event()
    outcome: list[bool] = []

    def other() -> None:
        assert inside.wait(WAIT_S)
        outcome.append(store.remember("51", b"n" * 16, now_ms))
        done.set()

    worker = threading.Thread(target=other)
    worker.start()
    with store.transaction():
        assert store.remember("51", b"n" * 16, now_ms) is True
        inside.set()
        assert not done.wait(0.2), "another thread wrote while the transaction was open"
    worker.join(WAIT_S)
    assert outcome == [False]  # it waited, then saw the batch's nonce as used
    store.close()
