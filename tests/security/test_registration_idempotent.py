"""A registration is idempotent by the consent ledger itself (SECURITY G45): whether the ledger already holds a
signed request is decided inside the append's locked transaction, so a resend after a commit that never
happened, two identical requests racing (threads or replicas) and a request twice in one batch each give one
ledger entry, and every answer names that consent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from node import config as config_mod
from node.client.coordinator import require_own_request
from node.coordinator.consents import GRANT, ConsentRegistry, Resent
from node.coordinator.server import RESENT
from node.member import Member
from node.store import audit
from node.store.factory import open_storage
from node.testing import Federation
from node.wire.v1 import coordinator_pb2, coordinator_pb2_grpc, verification_pb2
from tests.security.coordinator_harness import WAIT_S, AppendFailsOnce, GatedSigner, channel, signed
from tests.security.coordinator_harness import coordinator_fed  # noqa: F401  (the `fed` fixture)

pytestmark = pytest.mark.slow  # a coordinator on SQLite and on PostgreSQL

CALL_S = 10.0


class _Appends:
    """The coordinator's real ledger; `reached` is set when the `n`-th append begins (then it waits for the lock)."""

    def __init__(self, inner: Any, n: int) -> None:
        self.inner, self.n, self.calls = inner, n, 0
        self.reached = threading.Event()

    def append_next(self, build: Any, **kw: Any) -> Any:
        self.calls += 1
        if self.calls >= self.n:
            self.reached.set()
        return self.inner.append_next(build, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _consent_id(status: coordinator_pb2.ConsentStatus) -> str:
    return verification_pb2.ConsentBody.FromString(status.receipt.body).consent_id


def _grants_of(fed: Federation, request: coordinator_pb2.RegisterConsentRequest) -> list[int]:
    """Indices of the ledger's grants whose receipt carries this very signed request."""
    chain = fed.servers["coordinator"].chain
    return [e.idx for e in chain.entries() if e.kind == GRANT and verification_pb2.ConsentBody.FromString(
        verification_pb2.SignedConsent.FromString(e.payload).body).request == request.body]


def _grant_records(fed: Federation, consent_id: str) -> list[dict[str, Any]]:
    entries = fed.servers["coordinator"].audit_log.chain.entries()
    records = [audit.AuditRecord.from_json(e.payload) for e in entries if e.kind == audit.KIND_RECORD]
    return [r.extra for r in records if r.decision == audit.CONSENT_GRANT and r.consent_id == consent_id]


@pytest.fixture
def failing(fed: Federation) -> Iterator[AppendFailsOnce]:
    """The coordinator's ledger, its next append failing before the commit (the replica dying there)."""
    consents = fed.servers["coordinator"].servicer.consents
    consents.chain = wrapper = AppendFailsOnce(consents.chain)
    try:
        yield wrapper
    finally:
        consents.chain = wrapper.inner


def test_a_registration_whose_commit_failed_is_registered_once_when_resent(fed: Federation,
                                                                           failing: AppendFailsOnce) -> None:
    """A registration whose ledger transaction failed after the request was checked (where the nonce used to be
    spent) is, sent again, registered exactly once and answered with its receipt, not refused REPLAYED."""
    request = signed(fed)
    with channel(fed, "51") as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        with pytest.raises(grpc.RpcError) as died:
            stub.RegisterConsent(request, timeout=CALL_S)
        assert died.value.code() == grpc.StatusCode.UNAVAILABLE and _grants_of(fed, request) == []
        with fed.coordinator("51") as client:  # the client's resend (to another replica, or this one)
            status = client.call("RegisterConsent", request)
    require_own_request(status.receipt, request.body, fed.member("51").verifier)
    assert _grants_of(fed, request) == [status.ledger_index]
    assert _grant_records(fed, _consent_id(status)) == [{}]


def test_a_batch_whose_commit_failed_is_registered_once_when_resent(fed: Federation, failing: AppendFailsOnce) -> None:
    """The same for a batch (what `hedui consent grant` sends): resent after its transaction failed, every
    request is registered once and answered with its own receipt."""
    batch = coordinator_pb2.RegisterConsentBatchRequest(requests=[signed(fed) for _ in range(3)])
    with channel(fed, "51") as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        with pytest.raises(grpc.RpcError) as died:
            stub.RegisterConsentBatch(batch, timeout=CALL_S)
        assert died.value.code() == grpc.StatusCode.UNAVAILABLE
        reply = stub.RegisterConsentBatch(batch, timeout=CALL_S)
    assert [i.error_code for i in reply.items] == ["", "", ""]
    for request, item in zip(batch.requests, reply.items, strict=True):
        require_own_request(item.status.receipt, request.body, fed.member("51").verifier)
        assert _grants_of(fed, request) == [item.status.ledger_index]


def test_two_identical_requests_racing_register_one_consent(fed: Federation) -> None:
    """The same signed request sent twice at once (the second waiting for the ledger's write lock while the first
    holds it, signing) gives one ledger entry and two answers naming that consent, the second audited as resent."""
    consents = fed.servers["coordinator"].servicer.consents
    request = signed(fed)
    gate, appends = GatedSigner(consents.signer), _Appends(consents.chain, 2)
    consents.signer, consents.chain = gate, appends
    try:
        with channel(fed, "51") as one, channel(fed, "51") as two:
            first = coordinator_pb2_grpc.CoordinatorStub(one).RegisterConsent.future(request, timeout=4 * WAIT_S)
            assert gate.entered.wait(WAIT_S)  # the first holds the write lock
            second = coordinator_pb2_grpc.CoordinatorStub(two).RegisterConsent.future(request, timeout=4 * WAIT_S)
            second.add_done_callback(lambda _: appends.reached.set())  # (refused at once before G45)
            assert appends.reached.wait(WAIT_S)
            gate.release.set()
            answers = [first.result(), second.result()]
    finally:
        gate.release.set()
        consents.signer, consents.chain = gate.inner, appends.inner
    assert answers[0] == answers[1]
    assert _grants_of(fed, request) == [answers[0].ledger_index]
    assert _grant_records(fed, _consent_id(answers[0])) == [{}, RESENT]


def test_a_request_twice_in_one_batch_is_registered_once(fed: Federation) -> None:
    """A request sent twice in one batch is one ledger entry: both items name it, the other request is its own."""
    twice, other = signed(fed), signed(fed)
    with channel(fed, "51") as ch:
        reply = coordinator_pb2_grpc.CoordinatorStub(ch).RegisterConsentBatch(
            coordinator_pb2.RegisterConsentBatchRequest(requests=[twice, other, twice]), timeout=CALL_S)
    assert [i.error_code for i in reply.items] == ["", "", ""]
    assert reply.items[0].status == reply.items[2].status != reply.items[1].status
    assert _grants_of(fed, twice) == [reply.items[0].status.ledger_index]
    assert _grant_records(fed, _consent_id(reply.items[0].status)) == [{}, RESENT]


def test_a_request_another_replica_registered_meanwhile_is_answered_from_the_ledger(fed: Federation) -> None:
    """A second replica (its own store handle and registry) that has not caught up finds, inside its append
    transaction, the grant the first replica committed for the same request while it checked it: it appends
    nothing and answers with that consent."""
    cfg = config_mod.load(fed.coordinator_config)
    member = Member(cfg)
    first = fed.servers["coordinator"].servicer.consents
    request = signed(fed)
    with open_storage(cfg) as storage:
        chain = storage.ledger()
        try:
            second = ConsentRegistry(chain, signer=member.signer, verifier=member.verifier, catalogue=member.catalogue,
                                     policy=member.policy, clock_skew_s=cfg.limits.clock_skew_s)
            real = chain.append_next
            registered: list[coordinator_pb2.ConsentStatus] = []

            def first_commits(build: Any, **kw: Any) -> Any:  # the first replica's commit lands just before this one
                chain.append_next = real  # type: ignore[method-assign]
                registered.append(first.register("51", request))
                return real(build, **kw)

            chain.append_next = first_commits  # type: ignore[method-assign]
            (answer,) = second.register_many("51", [request])
        finally:
            chain.close()
    assert isinstance(answer, Resent) and answer.status == registered[0]
    assert _grants_of(fed, request) == [registered[0].ledger_index]


def test_a_resent_request_of_a_revoked_consent_stays_revoked(fed: Federation) -> None:
    """A registration replayed after its consent was revoked registers nothing and is answered REVOKED: a replay
    within the clock window cannot bring a consent back."""
    request = signed(fed)
    with channel(fed, "51") as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        consent_id = _consent_id(stub.RegisterConsent(request, timeout=CALL_S))
        stub.RevokeConsent(coordinator_pb2.RevokeConsentRequest(consent_id=consent_id, reason="case_closed"),
                           timeout=CALL_S)
        again = stub.RegisterConsent(request, timeout=CALL_S)
    assert _consent_id(again) == consent_id and again.state == coordinator_pb2.REVOKED
    assert len(_grants_of(fed, request)) == 1


class _Reads:
    """The coordinator's real ledger; counts the entries each registration's look-up (on a worker thread) reads."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.read: list[int] = []

    def entries(self, **kw: Any) -> Iterator[Any]:
        found = list(self.inner.entries(**kw))
        if threading.current_thread().name.startswith("hedui-consents"):
            self.read.append(len(found))
        return iter(found)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_registration_reads_only_the_ledger_entries_its_registry_has_not_indexed(fed: Federation) -> None:
    """A registration reads no entry this coordinator registered itself, and an entry another replica wrote is read
    by one registration only (the loop then catches up), before it takes the ledger's write lock: each reads twice,
    before the lock and inside it, and inside it reads nothing here (a standby replica far behind does not hold
    every replica's appends while it scans)."""
    cfg = config_mod.load(fed.coordinator_config)
    member = Member(cfg)
    consents = fed.servers["coordinator"].servicer.consents
    consents.chain = reads = _Reads(consents.chain)
    try:
        with channel(fed, "51") as ch:
            stub = coordinator_pb2_grpc.CoordinatorStub(ch)
            for _ in range(3):
                stub.RegisterConsent(signed(fed), timeout=CALL_S)
            with open_storage(cfg) as storage:  # another replica registers one
                chain = storage.ledger()
                try:
                    ConsentRegistry(chain, signer=member.signer, verifier=member.verifier, catalogue=member.catalogue,
                                    policy=member.policy).register("51", signed(fed))
                finally:
                    chain.close()
            for _ in range(2):
                stub.RegisterConsent(signed(fed), timeout=CALL_S)
    finally:
        consents.chain = reads.inner
    assert reads.read == [0, 0, 0, 0, 0, 0, 1, 0, 0, 0]  # (before the lock, inside it) per registration
