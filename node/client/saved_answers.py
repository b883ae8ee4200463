"""Saved answers as long-term evidence: what `verify --save` and `verify-batch` keep, and checking it later.

An entry keeps the query, the requester's signature over it, and the holder's signed answer; the
file keeps the CRL in force when it was saved. Every signature in an entry (holder, requester,
the coordinator's consent receipt and the requester's signed consent request it carries) is checked at the answer's signed time (node.crypto.evidence),
so an answer verifies after certificates expire or are rotated, and fails when one was revoked
before it. Entries saved before the query's signature was kept verify their answer alone, with a
warning that the file does not prove who asked.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.message import DecodeError

from node.client.query import Answer, check_answer
from node.crypto import signing
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.crypto.evidence import Evidence, at_ms
from node.domain.regions import COORDINATOR_URI
from node.errors import Refusal
from node.service import consent_request
from node.wire.v1 import common_pb2, verification_pb2

#: How much earlier than its query an answer may be dated (clocks differ; holders refuse older queries).
ANSWER_BEFORE_QUERY_MS: Final[int] = 3600 * 1000
#: Shown when an entry lacks the query's signature (saved by an earlier version).
NO_QUERY_SIGNATURE: Final[str] = "saved without the query's signature: the file does not prove who asked"
#: Shown when the consent receipt in a query carries no requester-signed request (registered before binding).
UNBOUND_CONSENT: Final[str] = ("the consent receipt carries no request signed by the requester: "
                               "the file shows the coordinator's consent only")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def evidence_entry(answer: Answer) -> dict[str, str]:
    """The saved form of one checked answer: its province, the query, the query's signature, the signed answer."""
    assert answer.signed is not None
    entry = {"province": answer.province, "query": _b64(answer.query_body)}
    if answer.query_signature is not None:
        entry["query_signature"] = _b64(answer.query_signature.SerializeToString())
    entry["answer"] = _b64(answer.signed.SerializeToString())
    return entry


@dataclass(frozen=True)
class SavedEntry:
    """One saved answer as read from a file: raw bytes, checked by `check_saved`."""

    query: bytes
    answer: bytes
    query_signature: bytes | None = None

    @classmethod
    def from_json(cls, entry: Any) -> SavedEntry:
        """An entry of a saved file (ValueError/KeyError/TypeError when malformed)."""
        signature = entry.get("query_signature")
        return cls(base64.b64decode(entry["query"], validate=True), base64.b64decode(entry["answer"], validate=True),
                   None if signature is None else base64.b64decode(signature, validate=True))


@dataclass(frozen=True)
class SavedCheck:
    """The outcome of checking one saved answer at its signed time."""

    province: str
    valid: bool
    problem: str | None
    answered_at: str | None = None
    requester: str | None = None
    warning: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"province": self.province, "valid": self.valid, "problem": self.problem,
                               "answered_at": self.answered_at, "requester": self.requester}
        if self.warning:
            out["warning"] = self.warning
        return out


def check_saved(entry: SavedEntry, evidence: Evidence) -> SavedCheck:
    """Check a saved answer, the query's signature and its consent receipt, all at the answer's signed time."""
    try:
        query = verification_pb2.QueryBody.FromString(entry.query)
        signed = verification_pb2.SignedAnswer.FromString(entry.answer)
        body = verification_pb2.AnswerBody.FromString(signed.body)
        query_signature = (None if entry.query_signature is None
                           else common_pb2.Signature.FromString(entry.query_signature))
    except DecodeError:
        return SavedCheck("?", False, "answer or query does not parse")
    province = body.responder or "?"
    if body.answered_at_ms <= 0:
        return SavedCheck(province, False, "answer carries no signed time", requester=query.requester)
    when = at_ms(body.answered_at_ms)
    shown = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    verifier = evidence.verifier(when)
    answer = check_answer(signed, query, entry.query, verifier)
    problem = answer.problem or _asker(query, entry.query, query_signature, verifier)
    if problem is None and body.answered_at_ms < query.issued_at_ms - ANSWER_BEFORE_QUERY_MS:
        problem = "answer dated before its query"
    warning = NO_QUERY_SIGNATURE if query_signature is None else _unbound_consent(query)
    return SavedCheck(answer.province, problem is None, problem, shown, query.requester, warning)


def _unbound_consent(query: verification_pb2.QueryBody) -> str | None:
    """A warning when the query's consent receipt carries no requester-signed request (made before binding)."""
    if not query.HasField("consent"):
        return None
    try:
        consent = verification_pb2.ConsentBody.FromString(query.consent.body)
    except DecodeError:
        return None  # reported as a problem by _asker
    return None if consent.request else UNBOUND_CONSENT


def _asker(query: verification_pb2.QueryBody, query_bytes: bytes, signature: common_pb2.Signature | None,
           verifier: signing.Verifier) -> str | None:
    """The problem with the requester's signature or the coordinator's receipt in the query, if any."""
    if signature is not None:
        try:
            signer = verifier.verify(signature, signing.QUERY, query_bytes).identity
        except (SignatureInvalid, CertificateRejected) as exc:
            return f"requester's query signature: {exc}"
        if signer.province != query.requester:
            return "query signed by another member than its requester"
    if query.HasField("consent"):
        try:
            coordinator = verifier.verify(query.consent.signature, signing.CONSENT, query.consent.body).identity
            consent = verification_pb2.ConsentBody.FromString(query.consent.body)
        except (SignatureInvalid, CertificateRejected) as exc:
            return f"consent receipt: {exc}"
        except DecodeError:
            return "the query's consent receipt does not parse"
        if coordinator.identity != COORDINATOR_URI or consent.requester != query.requester:
            return "the query's consent receipt is not the coordinator's receipt for its requester"
        if consent.request:  # receipts made before consents were bound carry none (the holder took it then)
            try:
                consent_request.bound_request(consent, verifier)
            except Refusal as exc:
                return f"consent receipt: {exc.detail}"
    return None


def check_documents(documents: list[tuple[list[SavedEntry], bytes | None]],
                    evidence: Evidence) -> tuple[list[SavedCheck], list[str]]:
    """Check every entry of a file's documents (entries, the CRL saved with them): results and warnings.

    Each document's own CRL joins the verifier's revocations; one that the CA did not sign makes
    that document's entries invalid.
    """
    results: list[SavedCheck] = []
    warnings: set[str] = set()
    for entries, crl in documents:
        try:
            trust = evidence.including(crl) if crl else evidence
        except CertificateRejected as exc:
            results.extend(SavedCheck("?", False, f"the file's revocation list: {exc}") for _ in entries)
            continue
        if crl is None and entries:
            warnings.add("saved without the revocation list in force: checked against the verifier's only")
        results.extend(check_saved(entry, trust) for entry in entries)
    warnings |= {r.warning for r in results if r.warning}
    return results, sorted(warnings)

