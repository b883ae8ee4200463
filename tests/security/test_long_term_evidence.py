"""Long-term evidence (issue 12 point 4, G8): saved answers, batch evidence and household decision
records verify at their signed time, after rotation and expiry, and fail when revoked before."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from node.cli.node_cmd import install_member_keys
from node.client.decision_record import verify_record
from node.client.query import sign_query
from node.client.saved_answers import SavedEntry, check_saved
from node.crypto import pki, signing
from node.crypto.evidence import Evidence
from node.crypto.revocation import CRL_FILE, revoke
from node.domain.regions import province_uri
from node.testing import Federation, run_cluster
from node.testing.standards import standards_document
from node.wire.v1 import verification_pb2
from tests.conftest import WORKER

HEDUI = [sys.executable, "-m", "node.cli.main"]
CHECK = "deposit.balance_total<=2000000"


def hedui(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEDUI, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def fed(planted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("evidence")
    (root / "standards.toml").write_text(standards_document(), encoding="utf-8")
    with run_cluster(["51", "44"], root=root / "fed", data=planted) as federation:
        federation.publish_standards("51", root / "standards.toml")
        yield federation


@pytest.fixture(scope="module")
def consent(fed: Federation) -> str:
    return fed.grant("51", [WORKER], "dibao").consent_id


def rotate(fed: Federation, code: str) -> int:
    """Re-issue a province's keys (`pki issue`), install them at its running node; the old signing serial."""
    old = pki.load_cert(fed.member(code).cfg.sign_cert).serial_number
    pki.issue_member(fed.pki, code)
    install_member_keys(fed.pki, code, fed.member(code).cfg.data_dir, linkage=True)
    fed.loop.run(fed.servers[code].check_keys())
    return old


def current_serial(fed: Federation, code: str) -> int:
    return pki.load_cert(fed.member(code).cfg.sign_cert).serial_number


def save_answer(fed: Federation, consent: str, path: Path, *, routed: bool = False) -> Path:
    """`hedui verify --save` as province 51: directly to 44, or routed through the coordinator."""
    # --province: a province whose signing certificate is revoked is no longer in the directory
    to = [] if routed else ["--to", fed.addresses["44"], "--province", "44"]
    proc = hedui("verify", "--config", fed.configs["51"], *to, "--id", WORKER,
                 "--purpose", "dibao", "--check", CHECK, "--consent", consent, "--save", path)
    assert proc.returncode in (0, 1), proc.stderr  # 1: the live check may already see a revocation
    return path


def evidence(fed: Federation) -> Evidence:
    crl = fed.pki / CRL_FILE
    return Evidence.of(pki.load_cert(fed.pki / "ca.pem"), [crl.read_bytes()] if crl.exists() else [])


def test_saved_answer_verifies_after_rotation_and_later_revocation(fed: Federation, consent: str,
                                                                   tmp_path: Path) -> None:
    """An answer saved today still verifies after its holder's key was rotated and the old certificate revoked."""
    rotate(fed, "44")
    saved = save_answer(fed, consent, tmp_path / "answer.json")
    old = rotate(fed, "44")
    revoke(fed.pki, serials=[old])
    proc = hedui("answer", "verify", "--pki", fed.pki, saved, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["valid"] and out["warnings"] == []
    assert out["answers"][0]["requester"] == "51" and out["answers"][0]["answered_at"]
    text = hedui("answer", "verify", "--pki", fed.pki, saved)
    assert text.returncode == 0 and "province 44: valid" in text.stdout and text.stderr == ""


def test_saved_answer_fails_if_revoked_before_the_answer(fed: Federation, consent: str, tmp_path: Path) -> None:
    """A holder certificate revoked before the answer (or compromised since before it) makes the file INVALID."""
    rotate(fed, "44")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)  # CRL times are whole seconds: clearly before
    revoke(fed.pki, serials=[current_serial(fed, "44")], now=past)  # the requester's node has not heard of it yet
    early = save_answer(fed, consent, tmp_path / "early.json")
    proc = hedui("answer", "verify", "--pki", fed.pki, early)
    assert proc.returncode == 1 and "INVALID" in proc.stdout and "revoked" in proc.stdout
    assert len(proc.stdout.splitlines()) == 1

    rotate(fed, "44")
    before = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    late = save_answer(fed, consent, tmp_path / "late.json")
    revoked = hedui("pki", "revoke", "--pki", fed.pki, "--serial", current_serial(fed, "44"),  # revoked later,
                    "--compromised-since", before.isoformat())  # dated earlier
    assert revoked.returncode == 0, revoked.stderr
    proc = hedui("answer", "verify", "--pki", fed.pki, late)
    assert proc.returncode == 1 and "revoked" in proc.stdout


def test_saved_answer_fails_if_the_consent_requests_certificate_was_compromised_before_it(
        fed: Federation, tmp_path: Path) -> None:
    """The requester's signed consent request inside the receipt is checked at the answer's time too."""
    rotate(fed, "44")  # earlier tests leave the holder's current certificate revoked
    rotate(fed, "51")  # the module's consent keeps the certificate it was signed with
    consent = fed.grant("51", [WORKER], "dibao").consent_id
    request_serial = current_serial(fed, "51")
    rotate(fed, "51")  # the query is signed with a newer certificate than the consent request
    saved = save_answer(fed, consent, tmp_path / "answer.json")
    assert hedui("answer", "verify", "--pki", fed.pki, saved).returncode == 0
    before = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    revoked = hedui("pki", "revoke", "--pki", fed.pki, "--serial", request_serial,
                    "--compromised-since", before.isoformat())
    assert revoked.returncode == 0, revoked.stderr
    proc = hedui("answer", "verify", "--pki", fed.pki, saved)
    assert proc.returncode == 1 and "consent request" in proc.stdout, proc.stdout


def test_the_files_own_revocation_list_is_applied(fed: Federation, consent: str, tmp_path: Path) -> None:
    """A verifier without a CRL of its own still applies the CA-signed CRL the file carries; a forged one is refused."""
    rotate(fed, "44")
    revoke(fed.pki, serials=[current_serial(fed, "44")], now=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2))
    crl = (fed.pki / CRL_FILE).read_bytes()
    (fed.member("51").cfg.data_dir / CRL_FILE).write_bytes(crl)  # the requester knows when saving
    saved = save_answer(fed, consent, tmp_path / "answer.json")
    ca = fed.pki / "ca.pem"
    proc = hedui("answer", "verify", "--ca", ca, saved)
    assert proc.returncode == 1 and "revoked" in proc.stdout
    assert "no revocation list of its own" in proc.stderr  # an older CRL in a file would hide a revocation
    data = json.loads(saved.read_text())
    data["crl"] = base64.b64encode(b"not a revocation list").decode()
    saved.write_text(json.dumps(data))
    proc = hedui("answer", "verify", "--ca", ca, saved)
    assert proc.returncode == 1 and "revocation list" in proc.stdout


def test_saved_answer_proves_the_asker_and_tampering_fails(fed: Federation, consent: str, tmp_path: Path) -> None:
    """The file carries the requester's query signature; a changed query, signature or answer is INVALID."""
    rotate(fed, "44")
    saved = save_answer(fed, consent, tmp_path / "answer.json")
    data = json.loads(saved.read_text())
    entry = SavedEntry.from_json(data["answers"][0])
    checked = check_saved(entry, evidence(fed))
    assert checked.valid and checked.requester == "51" and checked.warning is None
    other = sign_query(fed.member("44").signer, verification_pb2.QueryBody.FromString(entry.query))
    forged = SavedEntry(entry.query, entry.answer, other.signature.SerializeToString())
    assert check_saved(forged, evidence(fed)).problem == "query signed by another member than its requester"
    flipped = bytearray(entry.query_signature or b"")
    flipped[-1] ^= 1
    assert "query signature" in (check_saved(SavedEntry(entry.query, entry.answer, bytes(flipped)),
                                             evidence(fed)).problem or "")
    query = verification_pb2.QueryBody.FromString(entry.query)
    query.purpose = "other"
    assert not check_saved(SavedEntry(query.SerializeToString(), entry.answer, entry.query_signature),
                           evidence(fed)).valid
    data["answers"][0]["query_signature"] = base64.b64encode(bytes(flipped)).decode()
    saved.write_text(json.dumps(data))
    proc = hedui("answer", "verify", "--pki", fed.pki, saved)
    assert proc.returncode == 1 and "INVALID: requester's query signature" in proc.stdout
    routed = save_answer(fed, consent, tmp_path / "routed.json", routed=True)
    entry = SavedEntry.from_json(json.loads(routed.read_text())["answers"][0])
    assert entry.query_signature and check_saved(entry, evidence(fed)).valid


def test_an_old_answer_file_verifies_with_a_warning(fed: Federation, consent: str, tmp_path: Path) -> None:
    """A file saved before this change (no query signature, no CRL) verifies its answer and says what it lacks."""
    rotate(fed, "44")
    saved = save_answer(fed, consent, tmp_path / "answer.json")
    data = json.loads(saved.read_text())
    old = {"format": data["format"], "request_id": data["request_id"],
           "answers": [{k: a[k] for k in ("province", "query", "answer")} for a in data["answers"]]}
    saved.write_text(json.dumps(old))
    proc = hedui("answer", "verify", "--pki", fed.pki, saved)
    assert proc.returncode == 0 and "province 44: valid" in proc.stdout
    assert "does not prove who asked" in proc.stderr and "revocation list" in proc.stderr


def old_signer(fed: Federation, code: str, now: dt.datetime, *, foreign: bool = False) -> signing.Signer:
    """A real signing key of `code` whose certificate was valid from 800 to 70 days ago (from another CA if `foreign`)."""
    ca_cert, ca_key = (pki.make_ca("Other Root CA") if foreign else
                       (pki.load_cert(fed.pki / "ca.pem"), pki.load_private_key(fed.pki / "ca.key")))
    key = ed25519.Ed25519PrivateKey.generate()
    cert = pki.issue_signing_cert(ca_cert, ca_key, province_uri(code), key.public_key(),  # type: ignore[arg-type]
                                  not_before=now - dt.timedelta(days=800), not_after=now - dt.timedelta(days=70))
    return signing.Signer(key, cert.public_bytes(Encoding.DER))


def test_signature_made_before_expiry_verifies_after_it(fed: Federation) -> None:
    """A signature dated inside its certificate's validity verifies after expiry; one dated after expiry, or by
    a certificate of another CA, fails."""
    now = dt.datetime.now(dt.UTC)
    holder, requester = old_signer(fed, "44", now), old_signer(fed, "51", now)
    body = verification_pb2.QueryBody(requester="51", request_id="old-answer-1", issued_at_ms=1, purpose="dibao")
    signed_query = sign_query(requester, body)
    for days_ago, valid, signer in ((100, True, holder), (10, False, holder),
                                    (100, False, old_signer(fed, "44", now, foreign=True))):
        answered = int((now - dt.timedelta(days=days_ago)).timestamp() * 1000)
        answer_body = verification_pb2.AnswerBody(responder="44", requester="51", request_id="old-answer-1",
                                                  digest_algorithm="sha256", query_digest=signing.digest(signed_query.body),
                                                  answered_at_ms=answered)
        raw = answer_body.SerializeToString()
        answer = verification_pb2.SignedAnswer(body=raw, signature=signer.sign(signing.ANSWER, raw))
        entry = SavedEntry(signed_query.body, answer.SerializeToString(), signed_query.signature.SerializeToString())
        checked = check_saved(entry, evidence(fed))
        assert checked.valid is valid, checked.problem
        if not valid:
            assert checked.problem == ("expired" if signer is holder else "not issued by the federation CA")


def household_record(fed: Federation, consent: str) -> dict[str, Any]:
    return fed.household("51", [WORKER], "510104", consent_id=consent).record


def test_household_record_verifies_after_rotation_and_fails_if_revoked_before(fed: Federation, consent: str,
                                                                              tmp_path: Path) -> None:
    """A decision record verifies after its holder's certificate is rotated and revoked, not if revoked before."""
    rotate(fed, "44")
    record = household_record(fed, consent)
    assert record["version"] == 2 and "crl" in record
    old = rotate(fed, "44")
    revoke(fed.pki, serials=[old])
    checked = verify_record(record, evidence(fed))
    assert checked.valid, checked.problems
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    proc = hedui("household", "verify", "--pki", fed.pki, path)
    assert proc.returncode == 0 and "decision record valid" in proc.stdout and proc.stderr == ""

    legacy = {k: v for k, v in record.items() if k not in ("version", "crl")}
    path.write_text(json.dumps(legacy))
    proc = hedui("household", "verify", "--pki", fed.pki, path)
    assert proc.returncode == 0 and "without the revocation list" in proc.stderr

    decided = dt.datetime.fromtimestamp(record["body"]["decided_at_ms"] / 1000, dt.UTC)
    revoke(fed.pki, serials=[old], compromised_since=decided - dt.timedelta(seconds=1))  # merged: the earlier date stays
    assert verify_record(record, evidence(fed)).valid  # a CRL entry keeps its first date
    rotate(fed, "44")
    fresh = household_record(fed, consent)
    revoke(fed.pki, serials=[current_serial(fed, "44")],
           compromised_since=dt.datetime.fromtimestamp(fresh["body"]["decided_at_ms"] / 1000, dt.UTC)
           - dt.timedelta(seconds=1))
    checked = verify_record(fresh, evidence(fed))
    assert not checked.valid and any("revoked" in p for p in checked.problems)
    path.write_text(json.dumps(fresh))
    proc = hedui("household", "verify", "--pki", fed.pki, path)
    assert proc.returncode == 1 and "INVALID" in proc.stdout and "revoked" in proc.stdout

    tampered = json.loads(json.dumps(record))
    tampered["body"]["decided_at_ms"] -= 1
    assert not verify_record(tampered, evidence(fed)).valid


def test_batch_evidence_verifies_after_rotation_and_fails_if_revoked_before(fed: Federation, tmp_path: Path) -> None:
    """verify-batch lines carry query signatures and the CRL, and verify (or fail) at each answer's time."""
    rotate(fed, "44")
    households = tmp_path / "households.csv"
    households.write_text(f"household,id_number\nh1,{WORKER}\n")
    consents = tmp_path / "consents.csv"
    assert hedui("consent", "grant-batch", "--config", fed.configs["51"], "--in", households, "--purpose", "dibao",
                 "--out", consents).returncode == 0
    out = tmp_path / "results.jsonl"
    proc = hedui("verify-batch", "--config", fed.configs["51"], "--in", households, "--consents", consents,
                 "--purpose", "dibao", "--check", CHECK, "--out", out)
    assert proc.returncode == 0, proc.stderr
    line = json.loads(out.read_text())
    assert "crl" in line and all("query_signature" in e for e in line["evidence"]) and line["evidence"]
    old = rotate(fed, "44")
    revoke(fed.pki, serials=[old])
    proc = hedui("answer", "verify", "--pki", fed.pki, out)
    assert proc.returncode == 0 and "province 44: valid" in proc.stdout
    rotate(fed, "44")
    revoke(fed.pki, serials=[current_serial(fed, "44")], now=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2))
    early = tmp_path / "early.jsonl"
    assert hedui("verify-batch", "--config", fed.configs["51"], "--in", households, "--consents", consents,
                 "--purpose", "dibao", "--check", CHECK, "--out", early).returncode == 0
    proc = hedui("answer", "verify", "--pki", fed.pki, early)
    assert proc.returncode == 1 and "revoked" in proc.stdout
    line["evidence"][0]["query"] = line["evidence"][0]["answer"]
    out.write_text(json.dumps(line) + "\n")
    assert hedui("answer", "verify", "--pki", fed.pki, out).returncode == 1


def test_cli_errors_are_one_line(fed: Federation, tmp_path: Path) -> None:
    """A missing file, an unreadable answer file or a CRL not from the federation CA: exit 2 and one line."""
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    bad_crl = tmp_path / "crl.pem"
    bad_crl.write_text("not a crl")
    for args in (["answer", "verify", "--pki", fed.pki, tmp_path / "missing.json"],
                 ["answer", "verify", "--pki", fed.pki, junk],
                 ["answer", "verify", "--pki", fed.pki, "--crl", bad_crl, junk],
                 ["household", "verify", "--pki", fed.pki, tmp_path / "missing.json"],
                 ["household", "verify", "--ca", fed.pki / "ca.pem", "--crl", bad_crl, junk]):
        proc = hedui(*args)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, (args, proc.stderr)
    proc = hedui("answer", "verify", "--config", fed.configs["51"], junk)
    assert proc.returncode == 2 and "not a" in proc.stderr
    proc = hedui("pki", "revoke", "--pki", fed.pki, "--serial", "1", "--compromised-since", "yesterday")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "ISO 8601" in proc.stderr


def test_a_consent_receipt_without_the_requesters_request_is_flagged() -> None:
    """Evidence whose query carries a receipt made before consents were bound says so (it proves only the
    coordinator's consent); one with the signed request does not."""
    from node.client import saved_answers

    def query(request: bytes) -> verification_pb2.QueryBody:
        body = verification_pb2.ConsentBody(consent_id="c-" + "0" * 24, request=request).SerializeToString()
        return verification_pb2.QueryBody(consent=verification_pb2.SignedConsent(body=body))

    assert saved_answers._unbound_consent(query(b"")) == saved_answers.UNBOUND_CONSENT
    assert saved_answers._unbound_consent(query(b"\x0a\x0251")) is None
    assert saved_answers._unbound_consent(verification_pb2.QueryBody()) is None
