"""A registration sent again is confirmed from the ledger (SECURITY G45): the very same signed request the ledger
holds is answered with its receipt and registers nothing new; the nonce store decides nothing, so a nonce a
replica spent without a ledger entry, or a new request reusing a nonce, is registered once."""

from __future__ import annotations

from node import config as config_mod
from node.client.coordinator import require_own_request
from node.coordinator.consents import GRANT, ConsentRegistry
from node.member import Member
from node.coordinator.server import RESENT
from node.store import audit
from node.store.factory import open_storage
from node.testing import Federation
from node.wire.v1 import coordinator_pb2, coordinator_pb2_grpc, verification_pb2
from tests.security.coordinator_harness import LoopReadsFail, channel, consent_body, signed
from tests.security.coordinator_harness import coordinator_fed  # noqa: F401  (the `fed` fixture)

CALL_S = 10.0


def _head(stub: coordinator_pb2_grpc.CoordinatorStub) -> int:
    return stub.ConsentUpdates(coordinator_pb2.ConsentUpdatesRequest(after_index=0), timeout=CALL_S).head_index


def _grant_records(fed: Federation, consent_id: str) -> list[audit.AuditRecord]:
    entries = fed.servers["coordinator"].audit_log.chain.entries()
    records = [audit.AuditRecord.from_json(e.payload) for e in entries if e.kind == audit.KIND_RECORD]
    return [r for r in records if r.decision == audit.CONSENT_GRANT and r.consent_id == consent_id]


def test_a_resent_registration_is_confirmed_with_its_receipt(fed: Federation) -> None:
    """The same signed request sent again is answered with the receipt the ledger holds (the client's own check
    of it passes), no ledger entry is added, and the confirmation is audited as a resent grant."""
    request = signed(fed, consent_body())
    with channel(fed, "51") as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        first = stub.RegisterConsent(request, timeout=CALL_S)
        head = _head(stub)
        with fed.coordinator("51") as client:  # the client's resend after a replica failed: a plain answer
            again = client.call("RegisterConsent", request)
        after = _head(stub)
    consent_id = verification_pb2.ConsentBody.FromString(first.receipt.body).consent_id
    assert again == first
    require_own_request(again.receipt, request.body, fed.member("51").verifier)
    assert after == head
    assert [e.kind for e in fed.servers["coordinator"].chain.entries(key=consent_id)] == [GRANT]
    assert [r.extra for r in _grant_records(fed, consent_id)] == [{}, RESENT]


def test_a_resent_batch_confirms_only_what_the_ledger_holds(fed: Federation) -> None:
    """In a batch, a resent registered request is confirmed, and a fresh one and a new request reusing another's
    nonce (a different signed body: no replay of a signed message) are registered, each on its own."""
    registered = signed(fed, consent_body())
    with channel(fed, "51") as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        first = stub.RegisterConsent(registered, timeout=CALL_S)
        reused = signed(fed, consent_body(nonce=coordinator_pb2.ConsentRequestBody.FromString(registered.body).nonce,
                                    purpose="tekun"))
        head = _head(stub)
        reply = stub.RegisterConsentBatch(coordinator_pb2.RegisterConsentBatchRequest(
            requests=[registered, signed(fed, consent_body()), reused]), timeout=CALL_S)
        after = _head(stub)
    assert [i.error_code for i in reply.items] == ["", "", ""]
    assert reply.items[0].status == first
    assert [i.status.ledger_index for i in reply.items[1:]] == [head + 1, head + 2] and after == head + 2
    require_own_request(reply.items[2].status.receipt, reused.body, fed.member("51").verifier)


def test_a_request_whose_nonce_a_killed_replica_spent_is_registered(fed: Federation) -> None:
    """A nonce spent in the nonce store with no ledger entry (what a replica killed between the two writes left
    before G45) does not refuse the request: it is registered, once."""
    body = consent_body()
    cfg = config_mod.load(fed.coordinator_config)
    with open_storage(cfg) as storage:  # what the killed replica wrote before it died
        nonces = storage.nonces(window_ms=cfg.limits.clock_skew_s * 1000)
        try:
            assert nonces.remember(body.requester, body.nonce, body.issued_at_ms)
        finally:
            nonces.close()
    request = signed(fed, body)
    with channel(fed, "51") as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        head = _head(stub)
        status = stub.RegisterConsent(request, timeout=CALL_S)
        after = _head(stub)
    require_own_request(status.receipt, request.body, fed.member("51").verifier)
    assert status.ledger_index == after == head + 1


def test_a_resend_in_a_batch_whose_look_up_fails_still_audits_the_grants_it_committed(fed: Federation) -> None:
    """When the store's reads on the event loop fail after the batch's fresh grants were committed, the call still
    answers (the resend decided inside the append transaction), and every committed grant has its audit record
    (no ledger entry without its record)."""
    consents = fed.servers["coordinator"].servicer.consents
    registered, fresh = signed(fed, consent_body()), signed(fed, consent_body())
    cfg = config_mod.load(fed.coordinator_config)
    with channel(fed, "51") as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        stub.RegisterConsent(registered, timeout=CALL_S)
        # Another replica registers one meanwhile: the batch's entries then do not follow the registry's last,
        # so the loop must read the ledger after the batch (the read that fails here).
        member = Member(cfg)
        with open_storage(cfg) as storage:
            chain = storage.ledger()
            try:
                ConsentRegistry(chain, signer=member.signer, verifier=member.verifier, catalogue=member.catalogue,
                                policy=member.policy).register("51", signed(fed, consent_body()))
            finally:
                chain.close()
        watched = LoopReadsFail(consents.chain)
        consents.chain, watched.failing = watched, True
        try:
            reply = stub.RegisterConsentBatch(coordinator_pb2.RegisterConsentBatchRequest(requests=[registered, fresh]),
                                              timeout=CALL_S)
        finally:
            consents.chain, watched.failing = watched.inner, False
    assert [i.error_code for i in reply.items] == ["", ""]  # the resend confirmed from what this process holds
    fresh_id = reply.items[1].status.receipt and verification_pb2.ConsentBody.FromString(
        reply.items[1].status.receipt.body).consent_id
    grants = [e.key for e in consents.chain.entries() if e.kind == GRANT]
    assert fresh_id in grants and len(grants) == 3
    assert watched.refused >= 1  # the loop's read after the batch was tried, and failed
    assert [r.extra for r in _grant_records(fed, fresh_id)] == [{}]
