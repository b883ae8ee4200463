"""A verification batch processed as columns keeps every check: replay, audit, possession, answer shape."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node import config as config_mod
from node.client.query import PreparedQuery, check_answer, locked_envelope
from node.crypto import sealing, signing
from node.crypto.tokens import possession_key, subject_token
from node.domain.predicate import parse_check
from node.domain.regions import province_uri
from node.store import audit
from node.testing import Federation, run_cluster
from node.wire.v1 import common_pb2, verification_pb2, verification_pb2_grpc
from node.store.sqlite.storage import audit_file_readonly
from tests.conftest import CANARY_DEPOSIT, SPOUSE, STRANGER, WORKER

CHECKS = ("deposit.balance_total<=2000000", "income.wage_monthly<=300000", "vehicle.count<=1")


@pytest.fixture(scope="module")
def fed(planted: dict[str, Path]) -> Iterator[Federation]:
    with run_cluster(["32", "44", "51"], data=planted) as federation:
        yield federation


class Batch:
    """Queries from 51 to 44, one per household, signed under one batch root and sealed as one LockedBatch."""

    def __init__(self, fed: Federation, households: list[list[str]], consent: Any, *, checks: tuple[str, ...] = CHECKS,
                 accept_packed: bool = True):
        m = fed.member("51")
        self.key = X25519PrivateKey.generate()
        self.request_id = uuid.uuid4().hex
        receipt = fed.receipt("51", consent.consent_id)
        self.prepared, self.raw = [], []
        for ids in households:
            p = PreparedQuery("51", "dibao", tuple(subject_token(m.linkage_key, n) for n in ids),
                              tuple(parse_check(c) for c in checks), tuple(possession_key(m.linkage_key, n) for n in ids))
            self.prepared.append(p)
            self.raw.append(p.body(audience="44", consent=receipt, request_id=self.request_id,
                                   reply_key=sealing.public_bytes(self.key.public_key()),
                                   reply_suite=sealing.SUITE_NAME, accept_packed=accept_packed).SerializeToString())
        signatures = m.signer.sign_many([(signing.QUERY, b) for b in self.raw])
        self.signed = [verification_pb2.SignedQuery(body=b, signature=s).SerializeToString()
                       for b, s in zip(self.raw, signatures, strict=True)]
        with fed.coordinator("51") as c:
            self.seal_key = c.directory()["44"].seal_public_key

    def request(self, indexes: list[int] | None = None) -> verification_pb2.VerifyBatchRequest:
        chosen = range(len(self.signed)) if indexes is None else indexes
        envelope = locked_envelope("44", [(self.prepared[i], self.signed[i]) for i in chosen],
                                   request_id=self.request_id, seal_key=self.seal_key, batch=True)
        return verification_pb2.VerifyBatchRequest(sealed=envelope.query)

    def single(self, i: int) -> verification_pb2.VerifyRequest:
        envelope = locked_envelope("44", [(self.prepared[i], self.signed[i])], request_id=self.request_id,
                                   seal_key=self.seal_key)
        return verification_pb2.VerifyRequest(sealed=envelope.query)

    def items(self, reply: verification_pb2.VerifyBatchResponse) -> list[verification_pb2.BatchItem]:
        raw = sealing.open_sealed(reply.sealed, kind=sealing.ANSWER, identity=province_uri("51"), private_key=self.key)
        return list(verification_pb2.AnswerBatch.FromString(raw).items)


def stub(fed: Federation) -> tuple[grpc.Channel, verification_pb2_grpc.VerificationStub]:
    folder = fed.pki / "members" / "51"
    creds = grpc.ssl_channel_credentials(root_certificates=(fed.pki / "ca.pem").read_bytes(),
                                         private_key=(folder / "tls.key").read_bytes(),
                                         certificate_chain=(folder / "tls.pem").read_bytes())
    channel = grpc.secure_channel(fed.addresses["44"], creds)
    return channel, verification_pb2_grpc.VerificationStub(channel)


def audit_payloads(fed: Federation, after: int) -> list[dict[str, Any]]:
    path = config_mod.load(fed.configs["44"]).data_dir / audit.AUDIT_DB
    with audit_file_readonly(path) as log:
        return [json.loads(e.payload) for e in log.entries(after=after) if e.kind == audit.KIND_RECORD]


def audit_head(fed: Federation) -> int:
    with audit_file_readonly(config_mod.load(fed.configs["44"]).data_dir / audit.AUDIT_DB) as log:
        return log.head()[0]


def test_a_batch_is_one_store_lookup_and_one_nonce_write(fed: Federation) -> None:
    """Four households in one VerifyBatch cost one facts lookup and one nonce insert at the holder, and all are answered."""
    consent = fed.grant("51", [WORKER, SPOUSE], "dibao")
    batch = Batch(fed, [[WORKER], [WORKER, SPOUSE], [SPOUSE, WORKER], [WORKER]], consent)
    server = fed.servers["44"]
    channel, verification = stub(fed)
    with channel:
        warm = Batch(fed, [[WORKER]], consent)
        verification.VerifyBatch(warm.request(), timeout=10)  # the loop thread's store reader exists from here
        statements: list[str] = []
        for conn in [*server.store._readers, server._nonces._db]:  # type: ignore[attr-defined]
            conn.set_trace_callback(statements.append)
        try:
            reply = verification.VerifyBatch(batch.request(), timeout=10)
        finally:
            for conn in [*server.store._readers, server._nonces._db]:  # type: ignore[attr-defined]
                conn.set_trace_callback(None)
    assert sum("JOIN facts f ON" in s for s in statements) == 1
    assert sum(s.lstrip().upper().startswith("INSERT") and "nonces" in s for s in statements) == 1
    items = batch.items(reply)
    assert [i.error_code or "OK" for i in items] == ["OK"] * 4
    m = fed.member("51")
    for i, item in enumerate(items):
        query = verification_pb2.QueryBody.FromString(batch.raw[i])
        answer = check_answer(item.answer, query, batch.raw[i], m.verifier, expect_province="44")
        assert answer.signature_valid, answer.problem
        body = verification_pb2.AnswerBody.FromString(item.answer.body)
        assert body.HasField("packed") and not body.results
        worker = [r for r in answer.results if query.subjects[r.subject] == subject_token(m.linkage_key, WORKER)]
        assert [(r.check, r.outcome, r.as_of) for r in worker] == [
            (CHECKS[0], "NOT_SATISFIED" if CANARY_DEPOSIT > 2000000 else "SATISFIED", "2026-10-31"),
            (CHECKS[1], "NOT_SATISFIED", "2026-10-31"), (CHECKS[2], "NO_RECORD", None)]


def test_a_leaf_answered_in_a_batch_is_never_answered_again(fed: Federation) -> None:
    """A batch sent again, one of its leaves in a regrouped batch or alone through Verify, and a duplicate within a batch are all REPLAYED."""
    consent = fed.grant("51", [WORKER], "dibao")
    batch = Batch(fed, [[WORKER], [WORKER], [WORKER]], consent)
    channel, verification = stub(fed)
    with channel:
        first = batch.items(verification.VerifyBatch(batch.request([0, 1]), timeout=10))
        assert [i.error_code or "OK" for i in first] == ["OK", "OK"]
        with pytest.raises(grpc.RpcError) as again:
            verification.VerifyBatch(batch.request([0, 1]), timeout=10)
        assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS and "already used" in (again.value.details() or "")
        regrouped = batch.items(verification.VerifyBatch(batch.request([1, 2, 2]), timeout=10))
        assert [i.error_code or "OK" for i in regrouped] == ["REPLAYED", "OK", "REPLAYED"]
        with pytest.raises(grpc.RpcError) as alone:
            verification.Verify(batch.single(0), timeout=10)
        assert alone.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_one_audit_record_per_batch_names_each_query(fed: Federation) -> None:
    """The answers of one VerifyBatch are one audit record whose entries carry each query's consent id and answer digest; the chain verifies."""
    consents = [fed.grant("51", [WORKER], "dibao"), fed.grant("51", [WORKER, SPOUSE], "dibao")]
    m = fed.member("51")
    key, request_id = X25519PrivateKey.generate(), uuid.uuid4().hex
    prepared, signed = [], []
    for consent, ids in zip(consents, [[WORKER], [WORKER, SPOUSE]], strict=True):
        p = PreparedQuery("51", "dibao", tuple(subject_token(m.linkage_key, n) for n in ids),
                          tuple(parse_check(c) for c in CHECKS), tuple(possession_key(m.linkage_key, n) for n in ids))
        raw = p.body(audience="44", consent=fed.receipt("51", consent.consent_id), request_id=request_id,
                     reply_key=sealing.public_bytes(key.public_key()), reply_suite=sealing.SUITE_NAME).SerializeToString()
        prepared.append(p)
        signed.append(raw)
    signatures = m.signer.sign_many([(signing.QUERY, b) for b in signed])
    with fed.coordinator("51") as c:
        seal_key = c.directory()["44"].seal_public_key
    envelope = locked_envelope("44", [(p, verification_pb2.SignedQuery(body=b, signature=s).SerializeToString())
                                      for p, b, s in zip(prepared, signed, signatures, strict=True)],
                               request_id=request_id, seal_key=seal_key, batch=True)
    before = audit_head(fed)
    channel, verification = stub(fed)
    with channel:
        reply = verification.VerifyBatch(verification_pb2.VerifyBatchRequest(sealed=envelope.query), timeout=10)
    raw = sealing.open_sealed(reply.sealed, kind=sealing.ANSWER, identity=province_uri("51"), private_key=key)
    items = verification_pb2.AnswerBatch.FromString(raw).items
    rows = [r for r in audit_payloads(fed, before) if r["decision"] == audit.ANSWERED]
    assert len(rows) == 1
    (row,) = rows
    assert row["requester"] == "51" and row["purpose"] == "dibao" and row["request_id"] == request_id
    assert row["checks"] == {c.split("<=")[0]: 1 for c in CHECKS}
    assert row["batch"] == [{"request_id": request_id, "consent_id": c.consent_id,
                             "outcome_digest": hashlib.sha256(i.answer.body).hexdigest()}
                            for c, i in zip(consents, items, strict=True)]
    assert [q["consent_id"] for q in audit.per_query(row)] == [c.consent_id for c in consents]
    text = json.dumps(row)
    assert WORKER not in text and SPOUSE not in text and str(CANARY_DEPOSIT) not in text
    with audit_file_readonly(config_mod.load(fed.configs["44"]).data_dir / audit.AUDIT_DB) as log:
        assert log.verify().ok


def test_a_household_with_no_member_held_is_not_read(fed: Federation) -> None:
    """In a batch, a household none of whose members the holder has stays NOT_HELD and costs no facts lookup of its tokens."""
    consent = fed.grant("51", [WORKER, STRANGER], "dibao")
    batch = Batch(fed, [[WORKER], [STRANGER]], consent)
    channel, verification = stub(fed)
    with channel:
        items = batch.items(verification.VerifyBatch(batch.request(), timeout=10))
    assert [i.error_code or "OK" for i in items] == ["OK", "NOT_HELD"]


def _signed_answer(fed: Federation, query: bytes, results: verification_pb2.AnswerBody) -> verification_pb2.SignedAnswer:
    holder = fed.member("44")
    q = verification_pb2.QueryBody.FromString(query)
    body = verification_pb2.AnswerBody(responder="44", requester="51", request_id=q.request_id, digest_algorithm="sha256",
                                       query_digest=signing.digest(query), answered_at_ms=q.issued_at_ms)
    body.MergeFrom(results)
    raw = body.SerializeToString()
    return verification_pb2.SignedAnswer(body=raw, signature=holder.signer.sign(signing.ANSWER, raw))


def test_packed_results_are_checked_and_row_answers_still_verify(fed: Federation) -> None:
    """A signed answer in the 0.2 row form verifies as before; packed answers of the wrong shape are invalid, not a crash."""
    consent = fed.grant("51", [WORKER], "dibao")
    batch = Batch(fed, [[WORKER]], consent, checks=CHECKS[:2])
    raw, m = batch.raw[0], fed.member("51")
    query = verification_pb2.QueryBody.FromString(raw)
    rows = verification_pb2.AnswerBody(results=[
        verification_pb2.Result(subject=0, check=0, outcome=common_pb2.SATISFIED, as_of="2026-10-31"),
        verification_pb2.Result(subject=0, check=1, outcome=common_pb2.NO_RECORD)])
    packed = verification_pb2.AnswerBody(packed=verification_pb2.PackedResults(
        outcomes=bytes([common_pb2.SATISFIED, common_pb2.NO_RECORD]), dates=["2026-10-31"], date_of=bytes([1, 0])))
    old, new = (check_answer(_signed_answer(fed, raw, b), query, raw, m.verifier) for b in (rows, packed))
    assert old.signature_valid and new.signature_valid
    assert old.results == new.results and [r.as_of for r in new.results] == ["2026-10-31", None]
    broken = {
        "two forms": verification_pb2.AnswerBody(results=rows.results, packed=packed.packed),
        "short": verification_pb2.AnswerBody(packed=verification_pb2.PackedResults(outcomes=b"\x01", date_of=b"\x00")),
        "outcome": verification_pb2.AnswerBody(packed=verification_pb2.PackedResults(outcomes=b"\x01\x09", date_of=b"\x00\x00")),
        "date": verification_pb2.AnswerBody(packed=verification_pb2.PackedResults(outcomes=b"\x01\x01", date_of=b"\x01\x02",
                                                                                  dates=["2026-10-31"])),
    }
    for name, body in broken.items():
        answer = check_answer(_signed_answer(fed, raw, body), query, raw, m.verifier)
        assert not answer.signature_valid and answer.problem, name


def test_a_requester_that_does_not_accept_packed_results_gets_rows(fed: Federation) -> None:
    """A batch query without accept_packed (as a 0.2 requester sends it) is answered with Result rows it can read."""
    consent = fed.grant("51", [WORKER], "dibao")
    batch = Batch(fed, [[WORKER]], consent, accept_packed=False)
    channel, verification = stub(fed)
    with channel:
        (item,) = batch.items(verification.VerifyBatch(batch.request(), timeout=10))
    body = verification_pb2.AnswerBody.FromString(item.answer.body)
    assert not body.HasField("packed") and len(body.results) == len(CHECKS)
    query = verification_pb2.QueryBody.FromString(batch.raw[0])
    answer = check_answer(item.answer, query, batch.raw[0], fed.member("51").verifier, expect_province="44")
    assert answer.signature_valid and [r.as_of for r in answer.results] == ["2026-10-31", "2026-10-31", None]
