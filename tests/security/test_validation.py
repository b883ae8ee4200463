"""Validation before anything is consumed, decided, audited or logged (issue 9, items 4, 5 and 8).

One check per item per query, counted per item in the audit; request ids checked by one
validator at every entry point that carries one; a reply key checked before a query is decided.
Real servers on loopback with mutual TLS, real signatures, real SQLite audit logs.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node import config as config_mod
from node import logs
from node.client.query import PreparedQuery, locked_envelope, prepare, sign_query
from node.coordinator.consents import CONSENT_REQUEST_DOMAIN
from node.crypto import sealing
from node.crypto.tokens import possession_key, subject_token
from node.domain import idnumber
from node.domain.predicate import MalformedCheck, parse_check
from node.domain.regions import province_uri
from node.service.consent import SALT_BYTES, commitment
from node.store import audit
from node.testing import Federation, capture_logs, run_cluster
from node.wire.v1 import coordinator_pb2, coordinator_pb2_grpc, verification_pb2, verification_pb2_grpc
from node.store.sqlite.storage import audit_file, audit_file_readonly
from tests.conftest import SPOUSE, WORKER

# A valid GB 11643 number (check character computed), sent where a request id belongs.
PROBE = idnumber.make("440305", dt.date(1979, 3, 3), 557)
NEEDLES = (PROBE, PROBE[:17])
CHECKS = ["deposit.balance_total<=2000000", "income.wage_monthly<300000"]
Outcome = tuple[str, str]  # ("OK", "") or (status or item error code, public message)


@pytest.fixture(scope="module")
def log_sink() -> Iterator[io.StringIO]:
    """Every line every server of this module logs, as JSON."""
    with capture_logs() as sink:
        yield sink


@pytest.fixture(scope="module")
def fed(planted: dict[str, Path], log_sink: io.StringIO) -> Iterator[Federation]:
    with run_cluster(["32", "44", "51"], data=planted) as federation:
        yield federation


@pytest.fixture(scope="module")
def consent(fed: Federation) -> Any:
    return fed.grant("51", [WORKER, SPOUSE], "dibao")


# ---------------------------------------------------------------- helpers


def data_dir(fed: Federation, who: str) -> Path:
    cfg = fed.coordinator_config if who == "coordinator" else fed.configs[who]
    return config_mod.load(cfg).data_dir


def audit_rows(fed: Federation, who: str, after: int = 0) -> list[dict[str, Any]]:
    """The audit records of a member (a province code or "coordinator") after index `after`."""
    with audit_file_readonly(data_dir(fed, who) / audit.AUDIT_DB) as log:
        return [row for e in log.entries(after=after) if e.kind == audit.KIND_RECORD
                for row in audit.per_query(json.loads(e.payload))]  # a batch record: one row per query


def audit_head(fed: Federation, who: str) -> int:
    with audit_file_readonly(data_dir(fed, who) / audit.AUDIT_DB) as log:
        return log.head()[0]


def channel(fed: Federation, member: str, target: str) -> grpc.Channel:
    """A channel to `target` presenting `member`'s TLS certificate (a province code or "coordinator")."""
    folder = fed.pki / "members" / member
    creds = grpc.ssl_channel_credentials(root_certificates=(fed.pki / "ca.pem").read_bytes(),
                                         private_key=(folder / "tls.key").read_bytes(),
                                         certificate_chain=(folder / "tls.pem").read_bytes())
    return grpc.secure_channel(fed.addresses[target], creds)


def outcome(send: Callable[[], Outcome]) -> Outcome:
    try:
        return send()
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""


def token(fed: Federation, number: str = WORKER) -> bytes:
    return subject_token(fed.member("51").linkage_key, number)


def discovery_tokens(fed: Federation, number: str = WORKER) -> tuple[int, list[bytes]]:
    """The current discovery epoch and `number`'s discovery token in it, as province 51 derives them."""
    with fed.coordinator("51") as c:
        return c.discovery_tokens([token(fed, number)])


def body(fed: Federation, consent: Any, *, checks: list[str] = CHECKS, audience: str = "44",
         reply_key: bytes = b"", reply_suite: str = sealing.SUITE_NAME) -> verification_pb2.QueryBody:
    """A query from 51 about WORKER with a fixed nonce: change only what a test varies, then sign it."""
    prepared = PreparedQuery("51", "dibao", (token(fed),), tuple(parse_check(c) for c in checks))
    return prepared.body(audience=audience, consent=consent.receipt, reply_key=reply_key,
                         reply_suite=reply_suite if reply_key else "")


def seal_key(fed: Federation, province: str) -> bytes:
    with fed.coordinator("51") as c:
        return c.directory()[province].seal_public_key


def reply_pair() -> tuple[X25519PrivateKey, bytes]:
    key = X25519PrivateKey.generate()
    return key, sealing.public_bytes(key.public_key())


def locked_to(fed: Federation, queries: list[verification_pb2.SignedQuery], *, batch: bool) -> Any:
    """Signed queries about WORKER, locked to WORKER's possession key and sealed to 44 (one query, or a batch)."""
    m = fed.member("51")
    prepared = PreparedQuery("51", "dibao", (token(fed),), (), (possession_key(m.linkage_key, WORKER),))
    request_id = verification_pb2.QueryBody.FromString(queries[0].body).request_id
    return locked_envelope("44", [(prepared, q.SerializeToString()) for q in queries], request_id=request_id,
                           seal_key=seal_key(fed, "44"), batch=batch).query


def batch_outcome(reply: verification_pb2.VerifyBatchResponse, key: X25519PrivateKey) -> Outcome:
    raw = sealing.open_sealed(reply.sealed, kind=sealing.ANSWER, identity=province_uri("51"), private_key=key)
    item = verification_pb2.AnswerBatch.FromString(raw).items[0]
    return (item.error_code, item.error) if item.error_code else ("OK", "")


def routed_outcome(answer: coordinator_pb2.RoutedAnswer) -> Outcome:
    return ("OK", "") if answer.status == coordinator_pb2.ROUTE_OK else \
        (coordinator_pb2.RouteStatus.Name(answer.status), answer.message)


def consent_request(fed: Federation) -> coordinator_pb2.ConsentRequestBody:
    m = fed.member("51")
    salt, now_ms = os.urandom(SALT_BYTES), int(time.time() * 1000)
    return coordinator_pb2.ConsentRequestBody(
        requester="51", nonce=os.urandom(16), issued_at_ms=now_ms, purpose="dibao", subject_salt=salt,
        subject_commitments=[commitment(salt, subject_token(m.linkage_key, WORKER))],
        not_before_ms=now_ms - 60_000, not_after_ms=now_ms + 86_400_000)


# ---------------------------------------------------------------- entry points carrying a request id
# Each builds its request once (one nonce) and returns (send(request_id) -> Outcome, whose audit log
# records the refusal). Sending twice with different request ids reuses that nonce.


def _verify(fed: Federation, consent: Any) -> tuple[Callable[[str], Outcome], str]:
    template = body(fed, consent)

    def send(request_id: str) -> Outcome:
        query = verification_pb2.QueryBody()
        query.CopyFrom(template)
        query.request_id = request_id
        with channel(fed, "51", "44") as ch:
            verification_pb2_grpc.VerificationStub(ch).Verify(
                verification_pb2.VerifyRequest(signed=sign_query(fed.member("51").signer, query)), timeout=10)
        return "OK", ""
    return send, "44"


def _verify_batch(fed: Federation, consent: Any) -> tuple[Callable[[str], Outcome], str]:
    key, public = reply_pair()
    template = body(fed, consent, reply_key=public)

    def send(request_id: str) -> Outcome:
        query = verification_pb2.QueryBody()
        query.CopyFrom(template)
        query.request_id = request_id
        batch = verification_pb2.QueryBatch(queries=[sign_query(fed.member("51").signer, query)])
        with channel(fed, "51", "44") as ch:
            reply = verification_pb2_grpc.VerificationStub(ch).VerifyBatch(
                verification_pb2.VerifyBatchRequest(sealed=locked_to(fed, list(batch.queries), batch=True)), timeout=10)
        return batch_outcome(reply, key)
    return send, "44"


def _coordinator_call(fed: Federation, method: str, request: Any) -> Any:
    with channel(fed, "51", "coordinator") as ch:
        return getattr(coordinator_pb2_grpc.CoordinatorStub(ch), method)(request, timeout=10)


def _discover(fed: Federation, consent: Any) -> tuple[Callable[[str], Outcome], str]:
    def send(request_id: str) -> Outcome:
        epoch, edts = discovery_tokens(fed)
        _coordinator_call(fed, "Discover", coordinator_pb2.DiscoverRequest(
            consent_id=consent.consent_id, request_id=request_id, discovery_tokens=edts, epoch=epoch))
        return "OK", ""
    return send, "coordinator"


def _discover_batch(fed: Federation, consent: Any) -> tuple[Callable[[str], Outcome], str]:
    def send(request_id: str) -> Outcome:
        epoch, edts = discovery_tokens(fed)
        _coordinator_call(fed, "DiscoverBatch", coordinator_pb2.DiscoverBatchRequest(
            request_id=request_id, epoch=epoch,
            households=[coordinator_pb2.HouseholdDiscovery(consent_id=consent.consent_id, discovery_tokens=edts)]))
        return "OK", ""
    return send, "coordinator"


def _locked_envelope(fed: Federation, consent: Any, *, batch: bool) -> coordinator_pb2.Envelope:
    """A query from 51 about WORKER, locked to WORKER's possession key and sealed to 44, as routed_verify sends it."""
    _, public = reply_pair()
    m = fed.member("51")
    prepared = PreparedQuery("51", "dibao", (token(fed),), tuple(parse_check(c) for c in CHECKS),
                             (possession_key(m.linkage_key, WORKER),))
    query = prepared.body(audience="44", consent=consent.receipt, reply_key=public, reply_suite=sealing.SUITE_NAME)
    raw = sign_query(m.signer, query).SerializeToString()
    return locked_envelope("44", [(prepared, raw)], request_id=query.request_id, seal_key=seal_key(fed, "44"), batch=batch)


def _route(fed: Federation, consent: Any) -> tuple[Callable[[str], Outcome], str]:
    envelope = _locked_envelope(fed, consent, batch=False)

    def send(request_id: str) -> Outcome:
        reply = _coordinator_call(fed, "Route", coordinator_pb2.RouteRequest(
            consent_id=consent.consent_id, request_id=request_id, envelopes=[envelope]))
        return routed_outcome(reply.answers[0])
    return send, "coordinator"


def _route_batch(fed: Federation, consent: Any) -> tuple[Callable[[str], Outcome], str]:
    envelope = _locked_envelope(fed, consent, batch=True)

    def send(request_id: str) -> Outcome:
        reply = _coordinator_call(fed, "RouteBatch", coordinator_pb2.RouteBatchRequest(
            request_id=request_id, consent_ids=[consent.consent_id], envelopes=[envelope]))
        return routed_outcome(reply.answers[0])
    return send, "coordinator"


def _signed_consent_request(fed: Federation, template: coordinator_pb2.ConsentRequestBody,
                            request_id: str) -> coordinator_pb2.RegisterConsentRequest:
    request = coordinator_pb2.ConsentRequestBody()
    request.CopyFrom(template)
    request.request_id = request_id
    raw = request.SerializeToString()
    return coordinator_pb2.RegisterConsentRequest(body=raw, signature=fed.member("51").signer.sign(CONSENT_REQUEST_DOMAIN, raw))


def _register_consent(fed: Federation, consent: Any) -> tuple[Callable[[str], Outcome], str]:
    template = consent_request(fed)

    def send(request_id: str) -> Outcome:
        _coordinator_call(fed, "RegisterConsent", _signed_consent_request(fed, template, request_id))
        return "OK", ""
    return send, "coordinator"


def _register_consent_batch(fed: Federation, consent: Any) -> tuple[Callable[[str], Outcome], str]:
    template = consent_request(fed)

    def send(request_id: str) -> Outcome:
        reply = _coordinator_call(fed, "RegisterConsentBatch", coordinator_pb2.RegisterConsentBatchRequest(
            requests=[_signed_consent_request(fed, template, request_id)]))
        item = reply.items[0]
        return (item.error_code, item.error) if item.error_code else ("OK", "")
    return send, "coordinator"


ENTRY_POINTS = {
    "Verify": _verify, "VerifyBatch": _verify_batch, "Discover": _discover,
    "DiscoverBatch": _discover_batch, "Route": _route, "RouteBatch": _route_batch,
    "RegisterConsent": _register_consent, "RegisterConsentBatch": _register_consent_batch,
}


def assert_nowhere(fed: Federation, sink: io.StringIO, needles: tuple[str, ...]) -> None:
    """No log line and no audit record of any member holds any of `needles`."""
    logged = sink.getvalue()
    assert '"refused"' in logged, "the servers logged no refusal: the canary proves nothing"
    assert not [n for n in needles if n in logged]
    for who in ("coordinator", *fed.configs):
        text = json.dumps(audit_rows(fed, who))
        assert not [n for n in needles if n in text], f"found in the audit log of {who}"


# ---------------------------------------------------------------- item 4: one check per item


def test_32_checks_on_one_item_are_refused_by_the_client_and_by_the_holder(fed: Federation, consent: Any) -> None:
    """A query comparing one item 32 times is refused as bad input by the client and MALFORMED by the holder, and audited with its count."""
    m = fed.member("51")
    probes = [f"deposit.balance_total<={v * 100_000}" for v in range(32)]
    with pytest.raises(MalformedCheck, match="at most once"):
        prepare(requester="51", linkage_key=m.linkage_key, ids=[WORKER], purpose="dibao", checks=probes,
                catalogue=m.catalogue, policy=m.policy)
    before = audit_head(fed, "44")
    query = body(fed, consent, checks=probes)  # built by hand: what a client that skips the check sends
    query.request_id = uuid.uuid4().hex
    with channel(fed, "51", "44") as ch, pytest.raises(grpc.RpcError) as err:
        verification_pb2_grpc.VerificationStub(ch).Verify(
            verification_pb2.VerifyRequest(signed=sign_query(m.signer, query)), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most once" in (err.value.details() or "")
    (row,) = [r for r in audit_rows(fed, "44", before) if r["request_id"] == query.request_id]
    assert row["decision"] == "refused:MALFORMED"
    assert row["checks"] == {"deposit.balance_total": 32}


def test_audit_counts_checks_per_item_of_an_answered_query(fed: Federation, consent: Any) -> None:
    """The holder's audit record of an answer says how many checks touched each item."""
    before = audit_head(fed, "44")
    result = fed.verify("51", [WORKER], CHECKS, consent_id=consent.consent_id, to="44")
    (row,) = [r for r in audit_rows(fed, "44", before) if r["request_id"] == result.request_id]
    assert row["decision"] == "answered"
    assert row["items"] == ["deposit.balance_total", "income.wage_monthly"]
    assert row["checks"] == {"deposit.balance_total": 1, "income.wage_monthly": 1}


def test_audit_records_written_before_counts_still_parse_and_verify(tmp_path: Path) -> None:
    """An audit log holding records without `checks` (the earlier format) still verifies, and they parse with no counts."""
    legacy = json.dumps({"at_ms": 1, "request_id": "req-00000001", "requester": "51", "purpose": "dibao",
                         "consent_id": "c-00aa", "items": ["deposit.balance_total"], "outcome_digest": "ab" * 32,
                         "decision": "answered", "extra": {}}, sort_keys=True, separators=(",", ":")).encode()
    with audit_file(tmp_path / audit.AUDIT_DB) as log:
        log.chain.append(audit.KIND_RECORD, "req-00000001", legacy)
        log.record(audit.AuditRecord(at_ms=2, request_id="req-00000002", requester="51", decision="answered",
                                     items=("income.wage_monthly",), checks={"income.wage_monthly": 1}))
        assert log.verify().ok
        old, new = (audit.AuditRecord.from_json(e.payload) for e in log.entries())
    assert old.checks == {} and old.items == ("deposit.balance_total",)
    assert new.checks == {"income.wage_monthly": 1}


# ---------------------------------------------------------------- item 5: request ids


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_id_number_as_request_id_is_refused_before_any_nonce_is_used(
        fed: Federation, consent: Any, log_sink: io.StringIO, entry: str) -> None:
    """An ID number as request id is refused INVALID_ARGUMENT without echo, audited as "invalid", never logged; the same nonce then works."""
    send, auditor = ENTRY_POINTS[entry](fed, consent)
    before = audit_head(fed, auditor)
    status, message = outcome(lambda: send(PROBE))
    assert status in ("INVALID_ARGUMENT", "MALFORMED"), (status, message)
    assert "request id" in message or "could be answered" in message
    assert not [n for n in NEEDLES if n in message]
    refusals = [r for r in audit_rows(fed, auditor, before) if r["decision"] == "refused:MALFORMED"]
    assert [r for r in refusals if r["request_id"] == "invalid"], refusals
    assert outcome(lambda: send(uuid.uuid4().hex)) == ("OK", "")  # nothing was consumed by the refusal
    assert_nowhere(fed, log_sink, NEEDLES)


@pytest.mark.parametrize("shape", ["3 MB", "newlines"])
def test_oversized_or_multiline_request_id_to_discover_is_refused_and_not_logged(
        fed: Federation, consent: Any, log_sink: io.StringIO, shape: str) -> None:
    """Discover refuses a 3 MB or newline-carrying request id without logging or echoing it."""
    marker = "forged-" + uuid.uuid4().hex
    request_id = marker + "A" * 3_000_000 if shape == "3 MB" else f"req-0001\n{{\"event\": \"{marker}\"}}\n"
    before = audit_head(fed, "coordinator")
    send, _ = _discover(fed, consent)
    status, message = outcome(lambda: send(request_id))
    assert status == "INVALID_ARGUMENT" and marker not in message and len(message) < 300
    (row,) = audit_rows(fed, "coordinator", before)
    assert (row["decision"], row["request_id"]) == ("refused:MALFORMED", "invalid")
    assert marker not in log_sink.getvalue()
    assert max(len(line) for line in log_sink.getvalue().splitlines()) < 4096


# ---------------------------------------------------------------- item 8: reply keys


UNUSABLE_KEYS = {"small-order point": bytes(32), "31 bytes": b"\x07" * 31}


@pytest.mark.parametrize("key_name", sorted(UNUSABLE_KEYS))
@pytest.mark.parametrize("call", ["VerifyBatch", "Verify"])
def test_unusable_reply_key_is_refused_and_audited_before_anything_is_decided(
        fed: Federation, consent: Any, key_name: str, call: str) -> None:
    """A sealed query or batch naming an unusable reply key is refused MALFORMED and audited as refused, never as answered; its nonce stays unused."""
    m = fed.member("51")
    template = body(fed, consent, reply_key=UNUSABLE_KEYS[key_name])
    template.request_id = uuid.uuid4().hex

    def send(query: verification_pb2.QueryBody) -> Any:
        signed = sign_query(m.signer, query)
        with channel(fed, "51", "44") as ch:
            stub = verification_pb2_grpc.VerificationStub(ch)
            if call == "Verify":
                return stub.Verify(verification_pb2.VerifyRequest(sealed=locked_to(fed, [signed], batch=False)), timeout=10)
            batch = verification_pb2.QueryBatch(queries=[signed])
            return stub.VerifyBatch(verification_pb2.VerifyBatchRequest(sealed=locked_to(fed, list(batch.queries), batch=True)), timeout=10)

    before = audit_head(fed, "44")
    with pytest.raises(grpc.RpcError) as err:
        send(template)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no usable reply key" in (err.value.details() or "")
    added = audit_rows(fed, "44", before)
    assert [r["decision"] for r in added] == ["refused:MALFORMED"]
    key, public = reply_pair()
    template.reply_seal_key = public  # the same nonce and request id, now with a key an answer can be sealed to
    reply = send(template)
    raw = sealing.open_sealed(reply.sealed, kind=sealing.ANSWER, identity=province_uri("51"), private_key=key)
    if call == "VerifyBatch":
        assert verification_pb2.AnswerBatch.FromString(raw).items[0].answer.body
    assert [r["decision"] for r in audit_rows(fed, "44", before)] == ["refused:MALFORMED", "answered"]


def test_log_lines_never_carry_an_invalid_request_id() -> None:
    """Whatever a handler passes as request_id, a log line shows a valid one as is and any other as "invalid"."""
    sink = io.StringIO()
    logs.configure("info", json=True, stream=sink)
    try:
        log = logs.get("test")
        log.info("probe", request_id=PROBE)
        log.info("probe", request_id="req-0001\nforged")
        log.info("probe", request_id="3f2a9c0e5b7d4e1f8a6b2c9d0e1f2a3b")
    finally:
        logs.configure("warning")
    shown = [json.loads(line)["request_id"] for line in sink.getvalue().splitlines()]
    assert shown == ["invalid", "invalid", "3f2a9c0e5b7d4e1f8a6b2c9d0e1f2a3b"]
