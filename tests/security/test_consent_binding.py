"""Consents bound to the requester's signature (issue 12 point 2): a coordinator alone cannot authorise a query.

A hostile coordinator is simulated with the coordinator's real signing key from the test PKI: it
signs receipts that carry no request, a request for other subjects or terms, or a request signed
by another province, and the requester hands them to holders on every path (direct, routed,
household round). Real servers, real mutual TLS, real signatures.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node import config as config_mod
from node.client.batch import BatchSession, Household, parse_checks
from node.client.client import PeerRefused
from node.client.household import household_check
from node.client.routed import routed_verify
from node.crypto import signing
from node.crypto.tokens import subject_token
from node.errors import HeduiError
from node.member import Member
from node.service.consent import commitment
from node.store import audit, ledger
from node.store.sqlite import ledger as sqlite_ledger
from node.testing import Federation, run_cluster
from node.testing.consents import reissue
from node.testing.standards import standards_document
from node.wire.v1 import coordinator_pb2, verification_pb2
from node.store.sqlite.storage import audit_file_readonly
from tests.conftest import SPOUSE, WORKER

CHECKS = ["deposit.balance_total<=2000000", "income.wage_monthly<300000"]
REGION = "510104"
HEDUI = [sys.executable, "-m", "node.cli.main"]


@pytest.fixture(scope="module")
def fed(planted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    d = tmp_path_factory.mktemp("binding")
    (d / "standards.toml").write_text(standards_document(), encoding="utf-8")
    with run_cluster(["32", "44", "51"], data=planted, root=d / "fed") as federation:
        federation.publish_standards("51", d / "standards.toml")
        yield federation


@pytest.fixture(scope="module")
def coordinator_key(fed: Federation) -> signing.Signer:
    """The coordinator's real signing key: what a hostile coordinator signs forged receipts with."""
    return Member.from_config(fed.coordinator_config).signer  # type: ignore[arg-type]


def audit_rows(fed: Federation, code: str, after: int = 0) -> list[dict[str, Any]]:
    path = config_mod.load(fed.configs[code]).data_dir / audit.AUDIT_DB
    with audit_file_readonly(path) as log:
        return [row for e in log.entries(after=after) if e.kind == audit.KIND_RECORD
                for row in audit.per_query(json.loads(e.payload))]  # a batch record: one row per query


def audit_head(fed: Federation, code: str) -> int:
    with audit_file_readonly(config_mod.load(fed.configs[code]).data_dir / audit.AUDIT_DB) as log:
        return log.head()[0]


def direct(fed: Federation, receipt: verification_pb2.SignedConsent, ids: list[str] | None = None,
           purpose: str = "dibao", checks: list[str] | None = None) -> str:
    """One direct query from 51 to 44 under `receipt`: "OK" when answered, else the refusal's status and message."""
    try:
        with fed.client("51", to="44") as peer:
            peer.verify(ids or [WORKER], purpose, checks or CHECKS, consent=receipt)
    except PeerRefused as refused:
        return f"{refused.status}: {refused}"
    return "OK"


def refused_and_audited(fed: Federation, receipt: verification_pb2.SignedConsent, **query: Any) -> str:
    """The refusal of a direct query under `receipt`, checked to be PERMISSION_DENIED and audited by the holder."""
    before = audit_head(fed, "44")
    outcome = direct(fed, receipt, **query)
    assert outcome.startswith("PERMISSION_DENIED: "), outcome
    consent_id = verification_pb2.ConsentBody.FromString(receipt.body).consent_id
    rows = [r for r in audit_rows(fed, "44", after=before) if r["consent_id"] == consent_id]
    assert [r["decision"] for r in rows] == ["refused:CONSENT_INVALID"] and rows[0]["requester"] == "51"
    return outcome


def test_receipt_without_the_requesters_signed_request_is_refused_on_every_path(
        fed: Federation, coordinator_key: signing.Signer) -> None:
    """A coordinator-signed receipt that carries no signed request (as every receipt did before) is refused and audited."""
    genuine = fed.grant("51", [WORKER, SPOUSE], "dibao")
    bare = reissue(genuine.receipt, coordinator_key, drop_request=True)
    outcome = refused_and_audited(fed, bare)
    assert "carries no request signed by the requester" in outcome and "register the consent again" in outcome
    routed = routed_verify(fed.member("51"), [WORKER], "dibao", CHECKS, consent=bare)
    assert routed.routing["44"] == "DENIED" and routed.answers == []
    assert direct(fed, genuine.receipt) == "OK"


@pytest.mark.parametrize(("edits", "named"), [
    ({"purpose": "medical"}, "purpose"),
    ({"scopes": ["deposit", "income", "pension"]}, "scopes"),
    ({"not_after_ms": 4_000_000_000_000}, "validity window"),
    ({"not_before_ms": 1}, "validity window"),
    ({"case_reference": "CASE-OTHER"}, "case reference"),
    ({"evidence_algorithm": "sha256", "evidence_digest": b"\x01" * 32}, "evidence digest"),
])
def test_receipt_whose_terms_differ_from_the_signed_request_is_refused(
        fed: Federation, coordinator_key: signing.Signer, edits: dict[str, Any], named: str) -> None:
    """A receipt carrying a genuine request but another purpose, scope, validity, case or form is refused, naming it."""
    genuine = fed.grant("51", [WORKER], "dibao", scopes=["deposit", "income"], days=30, case_reference="CASE-1")
    forged = reissue(genuine.receipt, coordinator_key, **edits)
    query = {"purpose": "medical"} if "purpose" in edits else {}
    outcome = refused_and_audited(fed, forged, **query)
    assert f"does not match the requester's signed request ({named})" in outcome
    assert direct(fed, genuine.receipt) == "OK"


def test_receipt_for_other_subjects_than_the_request_is_refused(fed: Federation, coordinator_key: signing.Signer) -> None:
    """The coordinator cannot reuse a signed request for the worker to authorise a query about his wife."""
    genuine = fed.grant("51", [WORKER], "dibao")
    body = verification_pb2.ConsentBody.FromString(genuine.receipt.body)
    wife = commitment(body.subject_salt, subject_token(fed.member("51").linkage_key, SPOUSE))
    other = reissue(genuine.receipt, coordinator_key, subject_commitments=[wife])
    outcome = refused_and_audited(fed, other, ids=[SPOUSE])
    assert "does not match the requester's signed request (subjects)" in outcome
    added = reissue(genuine.receipt, coordinator_key, subject_commitments=[*body.subject_commitments, wife])
    assert "(subjects)" in refused_and_audited(fed, added, ids=[WORKER, SPOUSE])
    resalted = reissue(genuine.receipt, coordinator_key, subject_salt=secrets.token_bytes(16),
                       subject_commitments=[commitment(b"s" * 16, subject_token(fed.member("51").linkage_key, WORKER))])
    assert "(subjects)" in refused_and_audited(fed, resalted)


def test_request_signed_by_another_province_than_its_requester_is_refused(
        fed: Federation, coordinator_key: signing.Signer) -> None:
    """A request naming Sichuan but signed by Jiangsu (or by the coordinator itself) does not authorise Sichuan."""
    genuine = fed.grant("51", [WORKER], "dibao")
    by_jiangsu = reissue(genuine.receipt, coordinator_key, request_signer=fed.member("32").signer)
    assert "not signed by the province it names as requester" in refused_and_audited(fed, by_jiangsu)
    by_coordinator = reissue(genuine.receipt, coordinator_key, request_signer=coordinator_key)
    assert "not signed by the province it names as requester" in refused_and_audited(fed, by_coordinator)
    # Jiangsu's own genuine request, relabelled as Sichuan's consent: the requester does not match.
    jiangsu = fed.grant("32", [WORKER], "dibao")
    relabelled = reissue(jiangsu.receipt, coordinator_key, requester="51")
    assert "(requester)" in refused_and_audited(fed, relabelled)
    edited = reissue(genuine.receipt, coordinator_key, request_edits={"purpose": "medical"}, purpose="medical")
    assert "signature on the consent request does not verify" in refused_and_audited(fed, edited, purpose="medical")


def test_genuine_receipt_works_end_to_end_and_shows_its_request(fed: Federation, tmp_path: Path) -> None:
    """A consent registered by the requester verifies directly, routed and in a household round; show names its request."""
    consent = fed.grant("51", [WORKER, SPOUSE], "dibao")
    body = verification_pb2.ConsentBody.FromString(consent.receipt.body)
    request = coordinator_pb2.ConsentRequestBody.FromString(body.request)
    assert request.requester == "51" and list(request.subject_commitments) == list(body.subject_commitments)
    assert direct(fed, consent.receipt) == "OK"
    routed = fed.verify("51", [WORKER], CHECKS, consent_id=consent.consent_id)
    assert routed.routing["44"] == "OK" and routed.answers[0].signature_valid
    result = fed.household("51", [WORKER, SPOUSE], REGION, consent_id=consent.consent_id)
    assert result.routing["44"] == result.routing["51"] == "OK" and result.to_json()["verdict"] != "INCOMPLETE"
    shown = subprocess.run([*HEDUI, "consent", "show", consent.consent_id, "--config", str(fed.configs["51"]), "--json"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["requester_signed"] is True and data["request_id"] == request.request_id
    assert data["consent_id"] == consent.consent_id and data["state"] == "ACTIVE"
    text = subprocess.run([*HEDUI, "consent", "show", consent.consent_id, "--config", str(fed.configs["51"])],
                          capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and f"request     {request.request_id}" in text.stdout


@pytest.mark.parametrize("forgery", ["no request", "longer validity"])
def test_household_round_under_a_forged_receipt_is_refused_by_the_holders(
        fed: Federation, coordinator_key: signing.Signer, forgery: str) -> None:
    """Contribution queries under a receipt that is not the signed request's are refused and audited; nothing is summed."""
    genuine = fed.grant("51", [WORKER, SPOUSE], "dibao")
    if forgery == "no request":
        forged = reissue(genuine.receipt, coordinator_key, drop_request=True)
    else:
        forged = reissue(genuine.receipt, coordinator_key, not_after_ms=4_000_000_000_000)
    before = audit_head(fed, "44")
    try:
        result = household_check(fed.member("51"), [WORKER, SPOUSE], "dibao", REGION, consent=forged)
    except HeduiError as refused:
        message = str(refused)
    else:
        message = json.dumps(result.to_json())
        assert result.to_json()["verdict"] == "INCOMPLETE" and "OK" not in result.routing.values()
    assert "consent" in message, message
    decisions = [r["decision"] for r in audit_rows(fed, "44", after=before)]
    assert "refused:CONSENT_INVALID" in decisions and not any(d.startswith("contribut") for d in decisions), decisions
    assert fed.household("51", [WORKER, SPOUSE], REGION, consent_id=genuine.consent_id).routing["44"] == "OK"


def test_batch_verification_refuses_the_forged_receipt_and_answers_the_genuine(
        fed: Federation, coordinator_key: signing.Signer) -> None:
    """In one VerifyBatch, the household under a receipt without the signed request is DENIED and audited; the other answered."""
    genuine = fed.grant("51", [WORKER], "dibao")
    forged = reissue(fed.grant("51", [WORKER, SPOUSE], "dibao").receipt, coordinator_key, drop_request=True)
    member = fed.member("51")

    async def run() -> list[dict[str, Any]]:
        session = BatchSession(member)
        try:
            return await session.verify([(Household("good", [WORKER]), genuine.receipt),
                                         (Household("forged", [WORKER, SPOUSE]), forged)],
                                        "dibao", parse_checks(CHECKS, member, "dibao"))
        finally:
            await session.close()

    before = audit_head(fed, "44")
    good, bad = asyncio.run(run())
    assert good["routing"]["44"] == "OK" and good["answers"][0]["signature_valid"]
    assert bad["routing"]["44"] == "DENIED" and bad["answers"] == []
    rows = audit_rows(fed, "44", after=before)
    forged_id = verification_pb2.ConsentBody.FromString(forged.body).consent_id
    assert [r["decision"] for r in rows if r["consent_id"] == forged_id] == ["refused:CONSENT_INVALID"]


def test_receipt_in_the_ledger_from_before_binding_is_refused_by_the_coordinator(fed: Federation,
                                                                                 coordinator_key: signing.Signer) -> None:
    """A grant recorded in the ledger without a request (as every earlier grant was) no longer authorises discovery."""
    m = fed.member("51")
    salt = secrets.token_bytes(16)
    consent_id = "c-" + secrets.token_hex(12)
    data_dir = config_mod.load(fed.coordinator_config).data_dir  # type: ignore[arg-type]
    chain = sqlite_ledger.open_ledger(data_dir)
    try:
        epoch = ledger.read_identity(chain).epoch  # type: ignore[union-attr]

        def old_grant(head: tuple[int, bytes]) -> list[tuple[str, str, bytes]]:
            raw = verification_pb2.ConsentBody(
                consent_id=consent_id, requester="51", purpose="dibao", subject_salt=salt,
                subject_commitments=[commitment(salt, subject_token(m.linkage_key, WORKER))],
                not_before_ms=0, not_after_ms=4_000_000_000_000, ledger_index=head[0] + 1, ledger_epoch=epoch,
            ).SerializeToString()
            receipt = verification_pb2.SignedConsent(body=raw, signature=coordinator_key.sign(signing.CONSENT, raw))
            return [(ledger.GRANT, consent_id, receipt.SerializeToString())]

        chain.append_next(old_grant)
    finally:
        chain.close()
    with fed.coordinator("51") as coordinator, pytest.raises(PeerRefused) as refused:
        epoch, tokens = coordinator.discovery_tokens([subject_token(m.linkage_key, WORKER)])
        coordinator.call("Discover", coordinator_pb2.DiscoverRequest(
            consent_id=consent_id, request_id=uuid.uuid4().hex, discovery_tokens=tokens, epoch=epoch))
    assert refused.value.status == "PERMISSION_DENIED"
    assert "carries no request signed by the requester" in str(refused.value) and "register the consent again" in str(refused.value)
    shown = fed.coordinator("51").show(consent_id)
    assert shown.state == "ACTIVE" and shown.to_json()["requester_signed"] is False  # still listed, never honoured
    assert "carries no request" in direct(fed, shown.receipt)


def test_consent_request_signed_with_a_certificate_revoked_later_is_refused(planted: dict[str, Path], tmp_path: Path) -> None:
    """A consent survives the requester's key rotation, but not the revocation of the certificate that signed its request."""
    from node.cli.node_cmd import install_member_keys
    from node.crypto.pki import issue_member, load_cert
    from node.crypto.revocation import revoke

    with run_cluster(["44", "51"], data=planted, root=tmp_path) as fed:
        consent = fed.grant("51", [WORKER], "dibao")
        old_serial = load_cert(fed.member("51").cfg.sign_cert).serial_number
        issue_member(fed.pki, "51")
        install_member_keys(fed.pki, "51", fed.member("51").cfg.data_dir, linkage=True)
        assert load_cert(fed.member("51").cfg.sign_cert).serial_number != old_serial
        assert direct(fed, consent.receipt) == "OK"  # signed with the new key, under the consent signed with the old
        report = revoke(fed.pki, serials=[old_serial])
        coordinator = fed.servers["coordinator"]
        coordinator.crl.path.write_bytes(report.path.read_bytes())
        coordinator.crl.refresh()
        fed.loop.run(fed.servers["44"].link.sync_certificate_revocations())
        outcome = refused_and_audited(fed, consent.receipt)
        assert "certificate on the consent request is no longer valid (revoked or expired)" in outcome
