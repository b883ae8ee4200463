"""Consent on the holder's side: a query is answered only under a valid, unrevoked receipt."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf.message import DecodeError

from node.crypto import signing
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.domain import idnumber
from node.domain.predicate import Check
from node.domain.regions import COORDINATOR_URI
from node.errors import ErrorCode, Refusal
from node.service.consent_request import bound_request, recheck_requester
from node.wire.v1 import coordinator_pb2, verification_pb2

_COMMIT_PREFIX: Final[bytes] = b"hedui/v1/consent-subject\x00"
SALT_BYTES: Final[int] = 16


def commitment(salt: bytes, token: bytes) -> bytes:
    """Salted commitment to a subject token: the coordinator stores these, never tokens."""
    return hashlib.sha256(_COMMIT_PREFIX + salt + token).digest()


@dataclass(frozen=True)
class LedgerHead:
    """The coordinator's signed statement of its ledger: which ledger and epoch, how far it goes."""

    ledger_id: bytes
    epoch: bytes
    index: int
    hash: bytes
    lineage: tuple[tuple[bytes, int], ...] = ()  # earlier epochs and the last of their entries still held


@dataclass(frozen=True)
class LedgerChange:
    """The ledger a node follows started a new epoch or went back (`kind`), and what the node now refuses.

    `kind`: "new_epoch" (nothing the node saw is lost), "restored" (a new epoch that kept only
    entries up to `kept_index` of the node's epoch), "rolled_back" (the same epoch, now shorter
    than or different from what the node saw) or "replaced" (another ledger, or an epoch that
    does not descend from the node's). Receipts of the node's epoch above `kept_index` are refused.
    """

    kind: str
    seen_index: int
    head_index: int
    kept_index: int

    @property
    def alert(self) -> bool:
        """True when consents the node saw registered are no longer in the ledger."""
        return self.kind != "new_epoch"


def _lower(limit: int | None, bound: int) -> int:
    return bound if limit is None else min(limit, bound)


@dataclass
class RevocationView:
    """What a node knows of revoked consents and of the ledger, refreshed from the coordinator.

    Fail closed: when the view has not been refreshed within `max_staleness_s`, no consent is
    trusted, so a revocation is in force on every path within that bound. A revocation is
    never undone. `limits` maps each ledger epoch to the last of its entries the coordinator's
    ledger still holds (None: the current epoch, open-ended); it only ever goes down, so a
    ledger that went back (a restore, a lost WAL, an older copy) never makes a node honour a
    receipt the ledger lost.
    """

    max_staleness_s: float = 4.0
    clock: Callable[[], float] = time.monotonic
    revoked: set[str] = field(default_factory=set)
    ledger: LedgerHead | None = None
    limits: dict[bytes, int | None] = field(default_factory=dict)
    cursor: int = 0  # after_index of the next request, in the current epoch
    synced_at: float | None = None

    @property
    def head_index(self) -> int:
        return 0 if self.ledger is None else self.ledger.index

    def request(self) -> tuple[int, bytes]:
        """(after_index, epoch) to ask the coordinator for."""
        return self.cursor, b"" if self.ledger is None else self.ledger.epoch

    def apply(self, updates: Iterable[tuple[int, str, bool]], head: LedgerHead,
              after_hash: bytes | None = None) -> LedgerChange | None:
        """Record (ledger index, consent id, revoked?) changes and the ledger's head.

        The reply must answer the last `request()` (callers sync one at a time). `after_hash`
        is the hash the coordinator gives for the entry at the requested cursor (empty: it has
        none; None: not checked). Returns how the ledger changed epoch or went back, if it did.
        """
        change = self._follow(head, after_hash)
        self.revoked.update(consent_id for _, consent_id, revoked in updates if revoked)
        self.ledger = head
        # After a same-epoch rollback the entries after the cut may be new ones: read them all again.
        self.cursor = 0 if change is not None and change.kind == "rolled_back" else head.index
        self.synced_at = self.clock()
        return change

    def _follow(self, head: LedgerHead, after_hash: bytes | None) -> LedgerChange | None:
        prev = self.ledger
        if prev is None:
            self.limits = {**dict(head.lineage), head.epoch: None}
            return None
        # When we asked from our last head and the ledger reaches it, after_hash must be the hash we saw there.
        diverged = (after_hash is not None and self.cursor == prev.index > 0 and head.index >= prev.index
                    and after_hash != prev.hash)
        if head.ledger_id == prev.ledger_id and head.epoch == prev.epoch:
            if head.index >= prev.index and not diverged:
                return None
            # Shorter: keep what is left. Different at our head: history rewritten somewhere before it.
            kept = 0 if diverged else head.index
            self.limits[head.epoch] = _lower(self.limits.get(head.epoch), kept)
            return LedgerChange("rolled_back", prev.index, head.index, kept)
        return self._new_epoch(prev, head, diverged)

    def _new_epoch(self, prev: LedgerHead, head: LedgerHead, diverged: bool) -> LedgerChange:
        """Follow the ledger into another epoch: earlier epochs keep at most what its lineage says."""
        lineage = dict(head.lineage) if head.ledger_id == prev.ledger_id else {}
        kept = lineage.get(prev.epoch, 0)
        if diverged and kept >= prev.index:
            kept = 0  # the lineage claims our head, but the entry there is another one
        limits: dict[bytes, int | None] = {e: n for e, n in head.lineage if e not in self.limits}
        for epoch, limit in self.limits.items():
            if epoch == head.epoch:
                limits[epoch] = limit  # an epoch we knew as earlier is current again: it keeps its bound
            else:
                limits[epoch] = _lower(limit, lineage.get(epoch, 0))
        limits[prev.epoch] = _lower(limits[prev.epoch], kept)
        limits.setdefault(head.epoch, None)
        self.limits = limits
        kind = "replaced" if kept == 0 else "restored" if kept < prev.index else "new_epoch"
        return LedgerChange(kind, prev.index, head.index, kept)

    def check(self, consent_id: str, epoch: bytes = b"", index: int = 0) -> None:
        """Refuse a consent the view cannot vouch for: stale view, revoked, or not in the ledger any more."""
        if self.synced_at is None or self.clock() - self.synced_at > self.max_staleness_s:
            raise Refusal(ErrorCode.UNAVAILABLE, "consent state could not be confirmed with the coordinator")
        if consent_id in self.revoked:
            raise Refusal(ErrorCode.CONSENT_REVOKED)
        if epoch not in self.limits:  # perhaps an epoch newer than our last sync
            raise Refusal(ErrorCode.UNAVAILABLE, "consent is from a ledger epoch this node has not seen yet")
        limit = self.limits[epoch]
        if (epoch and index < 1) or (limit is not None and (limit == 0 or index > limit)):
            raise Refusal(ErrorCode.CONSENT_INVALID, "consent is no longer in the coordinator's ledger "
                                                     "(it went back to an earlier state): register it again")


def parse_ledger_head(signed: coordinator_pb2.SignedLedgerHead, verifier: signing.Verifier) -> LedgerHead:
    """Verify the coordinator's signed ledger head and return it."""
    if not signed.body:
        raise Refusal(ErrorCode.UNAVAILABLE, "coordinator sent no ledger head")
    from node.service.signed import coordinator_signed

    body = coordinator_signed(signed.signature, signing.REVOCATIONS, signed.body, coordinator_pb2.LedgerHeadBody,
                              verifier, "ledger head")
    return LedgerHead(body.ledger_id, body.epoch, body.head_index, body.head_hash,
                      tuple((e.epoch, e.last_index) for e in body.lineage))


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

    A receipt's signatures (the coordinator's, and the requester's on the request it carries,
    `consent_request.bound_request`) are verified once and remembered (keyed by the receipt's own
    serialization, i.e. the exact signed bytes and signature: a dict lookup, no digest); every
    call still checks both certificates (validity, a dict lookup once checked,
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
        key = receipt.SerializeToString()  # body and signature exactly: equal bytes parse to an equal receipt
        body = self._verified.get(key)
        if body is None:
            body = parse_receipt(receipt, self.verifier)
            if idnumber.contains_id_number(body.case_reference):  # registered before the coordinator refused these
                raise Refusal(ErrorCode.CONSENT_INVALID, "consent case reference holds an ID number; register it again")
            bound_request(body, self.verifier)  # the requester signed exactly this: not the coordinator's word alone
            self._verified[key] = body
            if len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
            return body
        try:
            self.verifier.anchor.validate_signing_cert(receipt.signature.certificate)
        except CertificateRejected:
            raise Refusal(ErrorCode.CONSENT_INVALID, "receipt signer no longer valid") from None
        recheck_requester(body, self.verifier)
        return body

    def check(self, query: verification_pb2.QueryBody, checks: list[Check]) -> str:
        """Check a verification query's receipt against its checks; return the consent id."""
        return self.check_items(query, [c.attribute for c in checks])

    def check_items(self, query: Any, items: Iterable[str], *, whole_household: bool = False) -> str:
        """Check a query's receipt against the data `items` it reads; return the consent id.

        `query` is any query body with `consent`, `requester`, `purpose` and `subjects` (a
        verification query or a household contribution query). With `whole_household`, the
        subjects must be every member the consent covers, each once (a household round is never
        about a part of the household).
        """
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
        if whole_household and len(set(query.subjects)) != len(covered):
            raise Refusal(ErrorCode.CONSENT_INVALID, "a household round covers every member of the consent, each once")
        if body.scopes:
            scopes = set(body.scopes)
            if any(item.split(".", 1)[0] not in scopes for item in items):
                raise Refusal(ErrorCode.CONSENT_INVALID, "consent does not cover every data item")
        self.revocations.check(body.consent_id, body.ledger_epoch, body.ledger_index)
        return body.consent_id
