"""A consent receipt bound to the requester's signed request: made by the coordinator, checked by holders.

The coordinator copies the request's fields into the receipt (`receipt_body`) and carries the
request itself, bytes and signature unmodified. A holder (`bound_request`) accepts a receipt
only when the request verifies as signed by the province it names and every field the request
determines is the same in the receipt, so the coordinator alone cannot authorise anything.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf.message import DecodeError

from node.crypto import signing
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.errors import ErrorCode, Refusal
from node.wire.v1 import common_pb2, coordinator_pb2, verification_pb2

#: Receipt fields copied from the request, and the name a mismatch is reported under.
BOUND_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("requester", "requester"),
    ("subject_salt", "subjects"),
    ("subject_commitments", "subjects"),
    ("discovery_commitments", "subjects"),
    ("discovery_first_epoch", "subjects"),
    ("purpose", "purpose"),
    ("scopes", "scopes"),
    ("not_before_ms", "validity window"),
    ("not_after_ms", "validity window"),
    ("case_reference", "case reference"),
    ("evidence_algorithm", "evidence digest"),
    ("evidence_digest", "evidence digest"),
)

#: Bound fields that are repeated (compared as lists).
_REPEATED: Final[frozenset[str]] = frozenset({"subject_commitments", "discovery_commitments", "scopes"})

#: Under 160 characters, so the coordinator passes it on whole in a route status (it cuts at 200).
UNBOUND: Final[str] = ("receipt carries no request signed by the requester (as before consents were bound): "
                       "the coordinator alone cannot authorise; register the consent again")


def _expected(req: coordinator_pb2.ConsentRequestBody, field: str) -> Any:
    """The value the receipt must carry in `field` for request `req` (scopes: sorted, de-duplicated)."""
    if field == "scopes":
        return sorted(set(req.scopes))
    value = getattr(req, field)
    return list(value) if field in _REPEATED else value


def receipt_body(raw: bytes, signature: common_pb2.Signature, req: coordinator_pb2.ConsentRequestBody,
                 consent_id: str, now_ms: int) -> verification_pb2.ConsentBody:
    """The receipt body for the signed request (`raw` parsed is `req`), before its ledger position is set."""
    body = verification_pb2.ConsentBody(consent_id=consent_id, registered_at_ms=now_ms, request=raw,
                                        request_signature=signature)
    for field, _ in BOUND_FIELDS:
        value = _expected(req, field)
        if isinstance(value, list):
            getattr(body, field).extend(value)
        else:
            setattr(body, field, value)
    return body


def bound_request(body: verification_pb2.ConsentBody, verifier: signing.Verifier) -> coordinator_pb2.ConsentRequestBody:
    """The requester's request a receipt carries, once it verifies and matches; else Refusal(CONSENT_INVALID).

    Checks, in order: a request is present; its signature verifies under
    "hedui/v1/consent-request" with a valid, unrevoked federation certificate; the request
    parses; the signer's province is the request's `requester`; every bound field matches.
    """
    if not body.request or not body.HasField("request_signature"):
        raise Refusal(ErrorCode.CONSENT_INVALID, UNBOUND)
    try:
        verified = verifier.verify(body.request_signature, signing.CONSENT_REQUEST, body.request)
    except CertificateRejected:
        raise Refusal(ErrorCode.CONSENT_INVALID, "the requester's certificate on the consent request is not "
                                                 "accepted (revoked, expired or not of this federation)") from None
    except SignatureInvalid:
        raise Refusal(ErrorCode.CONSENT_INVALID, "the requester's signature on the consent request does not verify") from None
    try:
        req = coordinator_pb2.ConsentRequestBody.FromString(body.request)
    except DecodeError:
        raise Refusal(ErrorCode.CONSENT_INVALID, "the consent request in the receipt does not parse") from None
    if verified.identity.province is None or verified.identity.province != req.requester:
        raise Refusal(ErrorCode.CONSENT_INVALID, "consent request not signed by the province it names as requester")
    differing: list[str] = []
    for field, label in BOUND_FIELDS:
        actual = getattr(body, field)
        if (list(actual) if field in _REPEATED else actual) != _expected(req, field):
            if label not in differing:
                differing.append(label)
    if differing:
        raise Refusal(ErrorCode.CONSENT_INVALID, "consent receipt does not match the requester's signed request "
                                                 f"({', '.join(differing)})")
    return req


def recheck_requester(body: verification_pb2.ConsentBody, verifier: signing.Verifier) -> None:
    """Re-check the requester's certificate of an already verified receipt (validity, revocation)."""
    try:
        verifier.anchor.validate_signing_cert(body.request_signature.certificate)
    except CertificateRejected:
        raise Refusal(ErrorCode.CONSENT_INVALID, "the requester's certificate on the consent request is no "
                                                 "longer valid (revoked or expired)") from None
