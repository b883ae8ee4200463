"""A consent revocation waits for a grant batch's commit off the event loop (SECURITY G39): feeds and consent
checks keep answering meanwhile, the ledger orders the revocation after the batch, and once the revocation is
acknowledged no consent check of that coordinator passes it."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import grpc
import pytest

from node.coordinator.consents import GRANT, REVOKE
from node.errors import ErrorCode
from node.store import audit
from node.testing import Federation
from node.wire.v1 import coordinator_pb2, coordinator_pb2_grpc, verification_pb2
from tests.security.coordinator_harness import WAIT_S, GatedSigner, LoopReadsFail, channel, signed
from tests.security.coordinator_harness import coordinator_fed  # noqa: F401  (the `fed` fixture)

CALL_S = 10.0  # deadline of the calls made while the batch is parked: they fail only if the loop is held
BATCH = 64


class _WatchedChain:
    """The coordinator's real ledger; says when an append is about to wait for the chain's write lock."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.appending = threading.Event()
        self.threads: list[str] = []

    def append_next(self, build: Any, **kw: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        self.appending.set()
        return self.inner.append_next(build, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _consent_id(status: coordinator_pb2.ConsentStatus) -> str:
    return verification_pb2.ConsentBody.FromString(status.receipt.body).consent_id


def _check(stub: Any, consent_id: str) -> str:
    """The coordinator's consent check on `consent_id`, through Route with no envelope: the refusal it gives."""
    try:
        stub.Route(coordinator_pb2.RouteRequest(request_id=uuid.uuid4().hex, consent_id=consent_id), timeout=CALL_S)
    except grpc.RpcError as exc:
        return exc.details()
    raise AssertionError("a Route without envelopes was answered")


ACTIVE = "1 to 64 envelopes"  # the consent check passed; the envelope count is checked next
REVOKED = ErrorCode.CONSENT_REVOKED.value


def test_a_revocation_waits_for_a_grant_batch_off_the_loop(fed: Federation) -> None:
    """While a grant batch holds the ledger's write lock, a revocation waits for it in a worker thread: the
    consent feed and consent checks still answer (the consent still active), then the revocation commits after
    the whole batch, is in the feed, and every check refuses the consent once the revocation has returned."""
    server = fed.servers["coordinator"]
    consents = server.servicer.consents
    with channel(fed, "51") as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        consent_id = _consent_id(stub.RegisterConsent(signed(fed), timeout=CALL_S))
        before = stub.ConsentUpdates(coordinator_pb2.ConsentUpdatesRequest(after_index=0), timeout=CALL_S).head_index
        gate = GatedSigner(consents.signer)
        consents.signer = gate
        batch = coordinator_pb2.RegisterConsentBatchRequest(requests=[signed(fed) for _ in range(BATCH)])
        granted = stub.RegisterConsentBatch.future(batch, timeout=4 * WAIT_S)
        try:
            assert gate.entered.wait(WAIT_S), "the batch never reached its receipt signing"
            watched = consents.chain = _WatchedChain(consents.chain)  # after the batch took the write lock
            revoked = stub.RevokeConsent.future(
                coordinator_pb2.RevokeConsentRequest(consent_id=consent_id, reason="applicant_withdrew"),
                timeout=4 * WAIT_S)
            assert watched.appending.wait(WAIT_S), "the revocation never reached its ledger append"
            during = stub.ConsentUpdates(coordinator_pb2.ConsentUpdatesRequest(after_index=0), timeout=CALL_S)
            checked = _check(stub, consent_id)
            assert not revoked.done() and not granted.done(), "the revocation or the batch finished too early"
        finally:
            gate.release.set()
        status = revoked.result()
        refused_at_once = _check(stub, consent_id)  # first call after the revocation was acknowledged
        batch_reply = granted.result()
        after = stub.ConsentUpdates(coordinator_pb2.ConsentUpdatesRequest(after_index=0), timeout=CALL_S)
    assert watched.threads and not any(name == "hedui-loop" for name in watched.threads)  # appended off the loop
    assert during.head_index == before and not during.updates  # answered with neither change in the ledger
    assert ACTIVE in checked  # the consent still passed its check while the revocation waited
    assert status.state == coordinator_pb2.REVOKED and status.revoked_at_ms
    assert REVOKED in refused_at_once
    batch_indices = [i.status.ledger_index for i in batch_reply.items]
    assert batch_indices == list(range(before + 1, before + BATCH + 1))  # the batch was not split by the revocation
    assert [(u.ledger_index, u.consent_id) for u in after.updates] == [(before + BATCH + 1, consent_id)]
    assert after.head_index == before + BATCH + 1
    records = [audit.AuditRecord.from_json(e.payload) for e in server.audit_log.chain.entries()
               if e.kind == audit.KIND_RECORD]
    assert [r.consent_id for r in records if r.decision == audit.CONSENT_REVOKE] == [consent_id]


def test_concurrent_revocations_of_one_consent_write_one_entry(fed: Federation) -> None:
    """Several revocations of one consent sent at once (each off the loop) all answer REVOKED with the same
    time, the ledger holds one revocation entry and the feed lists it once."""
    with channel(fed, "51") as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        consent_id = _consent_id(stub.RegisterConsent(signed(fed), timeout=CALL_S))
        calls = [stub.RevokeConsent.future(coordinator_pb2.RevokeConsentRequest(consent_id=consent_id, reason="case_closed"),
                                           timeout=WAIT_S) for _ in range(6)]
        statuses = [c.result() for c in calls]
        feed = stub.ConsentUpdates(coordinator_pb2.ConsentUpdatesRequest(after_index=0), timeout=CALL_S)
        checked = _check(stub, consent_id)
    assert {s.state for s in statuses} == {coordinator_pb2.REVOKED}
    assert len({s.revoked_at_ms for s in statuses}) == 1
    assert [u.consent_id for u in feed.updates] == [consent_id]
    ledger = fed.servers["coordinator"].chain
    assert [e.kind for e in ledger.entries(key=consent_id)] == [GRANT, REVOKE]
    assert REVOKED in checked


def test_a_revocation_is_refused_for_another_province_and_a_bad_reason(fed: Federation) -> None:
    """The revocation's checks stay on the loop before any append: another province's consent and an unknown
    reason are refused, and the consent stays active."""
    with channel(fed, "51") as ch51, channel(fed, "44") as ch44:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch51)
        consent_id = _consent_id(stub.RegisterConsent(signed(fed), timeout=CALL_S))
        with pytest.raises(grpc.RpcError) as other:
            coordinator_pb2_grpc.CoordinatorStub(ch44).RevokeConsent(
                coordinator_pb2.RevokeConsentRequest(consent_id=consent_id, reason="other"), timeout=CALL_S)
        with pytest.raises(grpc.RpcError) as reason:
            stub.RevokeConsent(coordinator_pb2.RevokeConsentRequest(consent_id=consent_id, reason="bored"), timeout=CALL_S)
        checked = _check(stub, consent_id)
    assert other.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ACTIVE in checked
    assert [e.kind for e in fed.servers["coordinator"].chain.entries(key=consent_id)] == [GRANT]


def test_a_revocation_committed_before_its_catch_up_failed_has_its_audit_record(fed: Federation) -> None:
    """A revocation appended by the worker thread is audited even when the loop's ledger read after it fails (the
    call is refused UNAVAILABLE, the revocation is in the ledger, and so is its consent.revoke record)."""
    consents = fed.servers["coordinator"].servicer.consents
    with channel(fed, "51") as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        consent_id = _consent_id(stub.RegisterConsent(signed(fed), timeout=CALL_S))
        watched = LoopReadsFail(consents.chain, after_append=True)
        consents.chain = watched
        try:
            with pytest.raises(grpc.RpcError) as failed:
                stub.RevokeConsent(coordinator_pb2.RevokeConsentRequest(consent_id=consent_id, reason="case_closed"),
                                   timeout=CALL_S)
        finally:
            consents.chain = watched.inner
        again = stub.RevokeConsent(coordinator_pb2.RevokeConsentRequest(consent_id=consent_id, reason="case_closed"),
                                   timeout=CALL_S)  # the caseworker retries: the state comes from the ledger
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [e.kind for e in fed.servers["coordinator"].chain.entries(key=consent_id)] == [GRANT, REVOKE]
    assert again.state == coordinator_pb2.REVOKED
    server = fed.servers["coordinator"]
    records = [audit.AuditRecord.from_json(e.payload) for e in server.audit_log.chain.entries()
               if e.kind == audit.KIND_RECORD]  # the retry's record is written after the failed call's (one queue)
    assert [r.consent_id for r in records if r.decision == audit.CONSENT_REVOKE] == [consent_id, consent_id]
