"""Consent on the holder's side: a query is answered only under a valid, unrevoked receipt."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from google.protobuf.message import DecodeError

from node.crypto import signing
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.domain import idnumber
from node.domain.predicate import Check
from node.domain.regions import COORDINATOR_URI
from node.errors import ErrorCode, Refusal
from node.wire.v1 import verification_pb2

_COMMIT_PREFIX: Final[bytes] = b"hedui/v1/consent-subject\x00"
SALT_BYTES: Final[int] = 16


def commitment(salt: bytes, token: bytes) -> bytes:
    """Salted commitment to a subject token: the coordinator stores these, never tokens."""
    return hashlib.sha256(_COMMIT_PREFIX + salt + token).digest()


@dataclass
class RevocationView:
    """What a node knows of revoked consents, refreshed from the coordinator.

    Fail closed: when the view has not been refreshed within `max_staleness_s`, no consent is
    trusted, so a revocation is in force on every path within that bound.
    """

    max_staleness_s: float = 4.0
    clock: Callable[[], float] = time.monotonic
    revoked: set[str] = field(default_factory=set)
    head_index: int = 0
    synced_at: float | None = None

    def apply(self, updates: Iterable[tuple[int, str, bool]], head_index: int) -> None:
        """Record (ledger index, consent id, revoked?) changes up to `head_index`."""
        for _, consent_id, revoked in updates:
            if revoked:
                self.revoked.add(consent_id)
            else:
                self.revoked.discard(consent_id)
        self.head_index = max(self.head_index, head_index)
        self.synced_at = self.clock()

    def check(self, consent_id: str) -> None:
        if self.synced_at is None or self.clock() - self.synced_at > self.max_staleness_s:
            raise Refusal(ErrorCode.UNAVAILABLE, "consent state could not be confirmed with the coordinator")
        if consent_id in self.revoked:
            raise Refusal(ErrorCode.CONSENT_REVOKED)


def parse_receipt(receipt: verification_pb2.SignedConsent, verifier: signing.Verifier) -> verification_pb2.ConsentBody:
    """Verify a coordinator-signed consent receipt and return its body."""
    try:
        verified = verifier.verify(receipt.signature, signing.CONSENT, receipt.body)
    except (SignatureInvalid, CertificateRejected):
        raise Refusal(ErrorCode.CONSENT_INVALID, "receipt signature does not verify") from None
    if verified.identity.identity != COORDINATOR_URI:
        raise Refusal(ErrorCode.CONSENT_INVALID, "receipt not signed by the coordinator")
    body = verification_pb2.ConsentBody()
    try:
        body.ParseFromString(receipt.body)
    except DecodeError:
        raise Refusal(ErrorCode.CONSENT_INVALID, "receipt does not parse") from None
    return body


class ReceiptGate:
    """Checks that a query's consent receipt covers requester, purpose, subjects, items and time.

    A receipt's signature is verified once and remembered (by a digest of the exact signed
    bytes and signature); every call still checks the coordinator's certificate (validity,
    revocation), the time window, revocation of the consent, and coverage.
    """

    def __init__(self, verifier: signing.Verifier, revocations: RevocationView,
                 clock: Callable[[], float] = time.time, cache_size: int = 4096) -> None:
        self.verifier = verifier
        self.revocations = revocations
        self.clock = clock
        self._verified: OrderedDict[bytes, verification_pb2.ConsentBody] = OrderedDict()
        self._cache_size = cache_size

    def _receipt(self, receipt: verification_pb2.SignedConsent) -> verification_pb2.ConsentBody:
        key = hashlib.sha256(receipt.body + b"\x00" + receipt.signature.SerializeToString()).digest()
        body = self._verified.get(key)
        if body is None:
            body = parse_receipt(receipt, self.verifier)
            if idnumber.contains_id_number(body.case_reference):  # registered before the coordinator refused these
                raise Refusal(ErrorCode.CONSENT_INVALID, "consent case reference holds an ID number; register it again")
            self._verified[key] = body
            if len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
            return body
        try:
            self.verifier.anchor.validate_signing_cert(receipt.signature.certificate)
        except CertificateRejected:
            raise Refusal(ErrorCode.CONSENT_INVALID, "receipt signer no longer valid") from None
        return body

    def check(self, query: verification_pb2.QueryBody, checks: list[Check]) -> None:
        if not query.HasField("consent") or not query.consent.body:
            raise Refusal(ErrorCode.CONSENT_MISSING)
        body = self._receipt(query.consent)
        if body.requester != query.requester:
            raise Refusal(ErrorCode.CONSENT_INVALID, "consent was registered by another province")
        if body.purpose != query.purpose:
            raise Refusal(ErrorCode.CONSENT_INVALID, "consent is for another purpose")
        now_ms = int(self.clock() * 1000)
        if not body.not_before_ms <= now_ms <= body.not_after_ms:
            raise Refusal(ErrorCode.CONSENT_EXPIRED)
        covered = set(body.subject_commitments)
        if any(commitment(body.subject_salt, s) not in covered for s in query.subjects):
            raise Refusal(ErrorCode.CONSENT_INVALID, "consent does not cover every subject")
        if body.scopes:
            scopes = set(body.scopes)
            if any(c.attribute.split(".", 1)[0] not in scopes for c in checks):
                raise Refusal(ErrorCode.CONSENT_INVALID, "consent does not cover every data item")
        self.revocations.check(body.consent_id)
