"""The consent ledger: registrations and revocations as entries of a hash chain, and their state."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, TypeVar

from google.protobuf.message import DecodeError

from node.crypto import discovery, signing
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.domain import freetext, request_ids
from node.domain.catalogue import Catalogue
from node.domain.policy import Policy
from node.errors import ErrorCode, Refusal
from node.service.consent_request import UNBOUND, receipt_body
from node.store import ledger
from node.store.interfaces import Chain, Entry
from node.store.errors import StoreCorrupt, StoreError
from node.wire.v1 import common_pb2, coordinator_pb2, verification_pb2

GRANT: Final[str] = ledger.GRANT
REVOKE: Final[str] = ledger.REVOKE
CONSENT_REQUEST_DOMAIN: Final[str] = signing.CONSENT_REQUEST
MAX_VALIDITY_MS: Final[int] = 366 * 24 * 3600 * 1000
REVOKE_REASONS: Final[frozenset[str]] = frozenset({"applicant_withdrew", "case_closed", "registered_in_error", "other"})


# Registrations run on these few threads, not asyncio's default executor (up to 32): each holds one store
# connection while it appends, so they stay well below a PostgreSQL pool's size (node.store.postgres.pool).
_WORKERS: Final[ThreadPoolExecutor] = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hedui-consents")
_T = TypeVar("_T")


async def _in_worker(func: Callable[..., _T], *args: object) -> _T:
    """`func(*args)` on one of _WORKERS, in the caller's context (as asyncio.to_thread)."""
    return await asyncio.get_running_loop().run_in_executor(_WORKERS, contextvars.copy_context().run, func, *args)


@dataclass(frozen=True)
class Resent:
    """A registration whose very signed request the ledger already holds (sent again, or twice): what it registered."""

    status: coordinator_pb2.ConsentStatus


@dataclass(frozen=True)
class _Scan:
    """What `ConsentRegistry._scan` found among ledger entries: grants by signed request, first revocations by
    consent id, and the last entry read."""

    found: dict[bytes, _Consent]
    revoked: dict[str, int]
    last: int


@dataclass
class _Consent:
    receipt: verification_pb2.SignedConsent
    body: verification_pb2.ConsentBody
    ledger_index: int
    revoked_at_ms: int = 0


class ConsentRegistry:
    """Validates, records and answers for consents; every state change is a ledger entry."""

    def __init__(self, chain: Chain, *, signer: signing.Signer, verifier: signing.Verifier,
                 catalogue: Catalogue, policy: Policy,
                 clock: Callable[[], float] = time.time, clock_skew_s: int = 300) -> None:
        self.chain = chain
        self.signer = signer
        self.verifier = verifier
        self.catalogue = catalogue
        self.policy = policy
        self.clock = clock
        self.clock_skew_ms = clock_skew_s * 1000
        self._lock = threading.Lock()
        self._consents: dict[str, _Consent] = {}
        self._revocations: list[tuple[int, str]] = []
        self._by_request: dict[bytes, str] = {}  # SHA-256 of a signed request body -> the consent it registered
        self._seen = 0  # moved only after its entry is applied: `_held` reads it from worker threads
        identity = ledger.read_identity(chain)
        if identity is None:
            raise StoreCorrupt(f"{chain.location} has no ledger identity (open it with Storage.ledger())")
        self.identity = identity
        self._signed_head: tuple[tuple[int, bytes], common_pb2.Signature, bytes] | None = None
        self._catch_up()

    def _catch_up(self) -> None:
        """Apply ledger entries written since we last looked (other workers share the ledger).

        Run on the event loop's thread only: worker threads (registrations, revocations) append, never apply."""
        if self.chain.head()[0] <= self._seen:
            return
        for entry in self.chain.entries(after=self._seen):
            if entry.kind == GRANT and entry.key not in self._consents:  # this process's own: indexed by register_many
                consent = self._consents[entry.key] = _granted(entry)
                self._by_request[_digest(consent.body.request)] = entry.key
            elif entry.kind == REVOKE and entry.key in self._consents and not self._consents[entry.key].revoked_at_ms:
                self._consents[entry.key].revoked_at_ms = entry.at_ms
                self._revocations.append((entry.idx, entry.key))
            elif entry.kind == ledger.EPOCH:
                self.identity = ledger.Identity.from_entry(entry)
            self._seen = entry.idx  # after the entry is indexed: every entry up to `_seen` is in `_by_request`

    def register(self, peer_province: str, request: coordinator_pb2.RegisterConsentRequest) -> coordinator_pb2.ConsentStatus:
        """Record a consent signed by the requesting province; return the coordinator's receipt (the one the
        ledger already holds when this very request was registered before)."""
        (result,) = self.register_many(peer_province, [request])
        if isinstance(result, Refusal):
            raise result
        return result.status if isinstance(result, Resent) else result

    def register_many(self, peer_province: str, requests: Sequence[coordinator_pb2.RegisterConsentRequest]
                      ) -> list[coordinator_pb2.ConsentStatus | Resent | Refusal]:
        """Record many consents in one ledger transaction, with one (batch) signature over the receipts.

        Idempotent by the ledger: a request whose very signed body the ledger holds as a grant (sent again after
        a replica failed, racing its twin at another worker or replica, or twice in this batch) appends nothing
        and is answered `Resent`, decided inside the append's transaction. Blocking (signature checks, signing,
        fsync): async callers run it in a thread (`register_many_async`)."""
        return self._register(peer_province, requests)[0]

    async def register_many_async(self, peer_province: str, requests: Sequence[coordinator_pb2.RegisterConsentRequest]
                                  ) -> list[coordinator_pb2.ConsentStatus | Resent | Refusal]:
        """`register_many` in a worker thread (the event loop keeps answering other calls meanwhile), then, on the
        loop, the registry brought up to the ledger, so the next registration's `_held` reads little."""
        results, appended = await _in_worker(self._register, peer_province, requests)
        if appended and appended[0].idx == self._seen + 1:  # nothing lies between: `_register` indexed them itself
            self._seen = appended[-1].idx
        elif appended or any(isinstance(r, Resent) for r in results):  # another worker's or replica's entries
            with contextlib.suppress(StoreError, DecodeError):  # the grants are committed: answer and audit them;
                self._catch_up()  # the next call that needs the registry reads the ledger again
        return results

    async def register_async(self, peer_province: str, request: coordinator_pb2.RegisterConsentRequest
                             ) -> coordinator_pb2.ConsentStatus | Resent:
        """`register` in a worker thread (a request the ledger already holds: `Resent`)."""
        (result,) = await self.register_many_async(peer_province, [request])
        if isinstance(result, Refusal):
            raise result
        return result

    def _register(self, peer_province: str, requests: Sequence[coordinator_pb2.RegisterConsentRequest]
                  ) -> tuple[list[coordinator_pb2.ConsentStatus | Resent | Refusal], list[Entry]]:
        """`register_many`'s answers, and the ledger entries it appended."""
        results: list[coordinator_pb2.ConsentStatus | Resent | Refusal | None] = [None] * len(requests)
        accepted: list[tuple[int, coordinator_pb2.RegisterConsentRequest, coordinator_pb2.ConsentRequestBody]] = []
        for position, request in enumerate(requests):
            try:
                accepted.append((position, request, self._accept(peer_province, request)))
            except Refusal as refusal:
                results[position] = refusal
        entries: list[Entry] = []
        if accepted:
            now_ms = int(self.clock() * 1000)
            # The receipt carries the requester's signed request unmodified: holders check it matches.
            bodies = [receipt_body(request.body, request.signature, req, "c-" + secrets.token_hex(12), now_ms)
                      for _, request, req in accepted]
            fresh: list[tuple[int, verification_pb2.ConsentBody]] = []  # (position, receipt body) to append
            held: dict[int, _Consent | int | Refusal] = {}  # position -> the ledger's consent, or the position of its twin
            receipts: list[verification_pb2.SignedConsent] = []
            wanted = {request.body for _, request, _ in accepted}
            # Read what this registry has not indexed yet before taking the write lock (a standby replica may be
            # far behind): inside it, `_held` reads only the entries appended since.
            early = self._scan(wanted, self._seen)

            def build(head: tuple[int, bytes]) -> list[tuple[str, str, bytes]]:
                # Inside the ledger transaction (the chain's write lock, across workers and replicas): what the
                # ledger holds is decided here, and the receipt names its own entry.
                fresh.clear()
                held.clear()
                found = self._held(wanted, early)
                first: dict[bytes, int] = {}  # request body -> position of its first occurrence appended now
                for (position, request, _), body in zip(accepted, bodies, strict=True):
                    if request.body in found:
                        consent = found[request.body]
                        held[position] = consent if consent.body.requester == peer_province else Refusal(ErrorCode.REPLAYED)
                    elif request.body in first:
                        held[position] = first[request.body]
                    else:
                        first[request.body] = position
                        fresh.append((position, body))
                if not fresh:
                    return []
                for offset, (_, body) in enumerate(fresh, start=1):
                    body.ledger_index, body.ledger_epoch = head[0] + offset, self.identity.epoch
                raws = [b.SerializeToString() for _, b in fresh]
                signatures = self.signer.sign_many([(signing.CONSENT, raw) for raw in raws])
                receipts[:] = [verification_pb2.SignedConsent(body=raw, signature=sig)
                               for raw, sig in zip(raws, signatures, strict=True)]
                return [(GRANT, b.consent_id, r.SerializeToString()) for (_, b), r in zip(fresh, receipts, strict=True)]

            # The chain serialises appenders itself (its write lock; BEGIN IMMEDIATE across workers), so
            # self._lock is not held over the signing and the durable commit: a caller on the event loop
            # (ConsentUpdates, check_active) waits at most for the dictionary update below.
            entries = self.chain.append_next(build, at_ms=now_ms)
            statuses: dict[int, coordinator_pb2.ConsentStatus] = {}
            with self._lock:
                for (position, body), receipt, entry in zip(fresh, receipts, entries, strict=True):
                    # _catch_up on the loop may have read the committed entry first: keep its object.
                    consent = self._consents.setdefault(body.consent_id, _Consent(receipt, body, entry.idx))
                    self._by_request[_digest(body.request)] = body.consent_id
                    statuses[position] = self._status(consent)
            for position, what in held.items():  # a twin earlier in this batch, or what the ledger held before
                results[position] = (Resent(statuses[what]) if isinstance(what, int) else
                                     what if isinstance(what, Refusal) else Resent(self._status(what)))
            for position, status in statuses.items():
                results[position] = status
        return [r for r in results if r is not None], entries

    def _scan(self, requests: set[bytes], after: int) -> _Scan:
        """The grants of these signed request bodies and the first revocations among the ledger entries after
        `after` (no registry state touched: worker threads never apply entries)."""
        found: dict[bytes, _Consent] = {}
        revoked: dict[str, int] = {}  # consent id -> when the ledger's first revocation of it was recorded
        last = after
        for entry in self.chain.entries(after=after):
            last = entry.idx
            if entry.kind == GRANT:
                consent = self._consents.get(entry.key) or _granted(entry)
                if consent.body.request in requests:
                    found.setdefault(consent.body.request, consent)
            elif entry.kind == REVOKE:
                revoked.setdefault(entry.key, entry.at_ms)
        return _Scan(found, revoked, last)

    def _held(self, requests: set[bytes], early: _Scan) -> dict[bytes, _Consent]:
        """The consents the ledger holds for these signed request bodies, with their revocations, as of the open
        append transaction: call it inside `append_next`'s build only (its reads see every replica's commits).

        Entries up to `_seen` are indexed in `_by_request` (`_catch_up` moves `_seen` after indexing, and this
        process's own appends are indexed before `register_many_async` moves it); `early` scanned the entries
        after the `_seen` of before the lock (outside it, `_register`); only those after both are read here."""
        seen = self._seen  # first: every entry up to it is indexed
        late = self._scan(requests, max(seen, early.last))
        found = {**late.found, **early.found}  # the first grant of a request is the earlier one
        revoked = {**late.revoked, **early.revoked}
        with self._lock:
            for request in requests - found.keys():
                consent = self._consents.get(self._by_request.get(_digest(request), ""))
                if consent is not None and consent.body.request == request:
                    found[request] = consent
        held: dict[bytes, _Consent] = {}
        for request, c in found.items():
            # A revocation among the entries the loop applied since the early scan is on the registry's object.
            known = self._consents.get(c.body.consent_id)
            revoked_at = (known.revoked_at_ms if known is not None else 0) or c.revoked_at_ms
            held[request] = _Consent(c.receipt, c.body, c.ledger_index, revoked_at or revoked.get(c.body.consent_id, 0))
        return held

    def _accept(self, peer_province: str, request: coordinator_pb2.RegisterConsentRequest) -> coordinator_pb2.ConsentRequestBody:
        try:
            verified = self.verifier.verify(request.signature, CONSENT_REQUEST_DOMAIN, request.body)
        except (SignatureInvalid, CertificateRejected) as exc:
            raise Refusal(ErrorCode.UNAUTHENTICATED, str(exc)) from None
        if verified.identity.province != peer_province:
            raise Refusal(ErrorCode.IDENTITY_MISMATCH)
        try:
            req = coordinator_pb2.ConsentRequestBody.FromString(request.body)
        except DecodeError:
            raise Refusal(ErrorCode.MALFORMED, "consent request does not parse") from None
        self._validate(req, peer_province)
        return req

    def _validate(self, req: coordinator_pb2.ConsentRequestBody, peer_province: str) -> None:
        if req.requester != peer_province:
            raise Refusal(ErrorCode.IDENTITY_MISMATCH)
        request_ids.check(req.request_id)
        if not 16 <= len(req.nonce) <= 64:
            raise Refusal(ErrorCode.MALFORMED, "nonce must be 16 to 64 bytes")
        now_ms = int(self.clock() * 1000)
        if abs(now_ms - req.issued_at_ms) > self.clock_skew_ms:
            raise Refusal(ErrorCode.CLOCK_WINDOW)
        if req.purpose not in self.policy.purposes:
            raise Refusal(ErrorCode.UNKNOWN_PURPOSE)
        if len(req.subject_salt) != 16:
            raise Refusal(ErrorCode.MALFORMED, "subject salt must be 16 bytes")
        n = len(req.subject_commitments)
        if not 1 <= n <= 16 or any(len(c) != 32 for c in req.subject_commitments) or len(set(req.subject_commitments)) != n:
            raise Refusal(ErrorCode.MALFORMED, "1 to 16 distinct 32-byte subject commitments")
        d = req.discovery_commitments  # node.crypto.discovery: checked at each Discover
        if len(d) > n * discovery.MAX_CONSENT_EPOCHS or len(d) % n or any(len(c) != 32 for c in d):
            raise Refusal(ErrorCode.MALFORMED, "discovery commitments: 32 bytes each, one per subject and epoch, "
                                               f"at most {discovery.MAX_CONSENT_EPOCHS} epochs")
        if d and req.discovery_first_epoch < 1:
            raise Refusal(ErrorCode.MALFORMED, "discovery commitments need the epoch of their first block")
        unknown = set(req.scopes) - set(self.catalogue.categories)
        if unknown:
            raise Refusal(ErrorCode.UNKNOWN_ITEM, "unknown scope category")
        if not req.not_before_ms < req.not_after_ms or req.not_after_ms - req.not_before_ms > MAX_VALIDITY_MS:
            raise Refusal(ErrorCode.MALFORMED, "validity window must be positive and at most 366 days")
        if req.not_after_ms < now_ms:
            raise Refusal(ErrorCode.CONSENT_EXPIRED)
        try:
            freetext.case_reference(req.case_reference)  # kept in the ledger: never an ID number
        except freetext.FreeTextRefused as exc:
            raise Refusal(ErrorCode.MALFORMED, str(exc)) from None
        if req.evidence_digest and (req.evidence_algorithm != "sha256" or len(req.evidence_digest) != 32):
            raise Refusal(ErrorCode.MALFORMED, "evidence digest must be a SHA-256")
        # No nonce store: the ledger itself refuses to hold one signed request twice (`_held`, inside the append).

    def _get(self, peer_province: str, consent_id: str) -> _Consent:
        self._catch_up()
        consent = self._consents.get(consent_id)
        if consent is None or consent.body.requester != peer_province:
            # The same answer for "absent" and "someone else's": no probing of other provinces' consents.
            raise Refusal(ErrorCode.CONSENT_INVALID, "no such consent for this province")
        return consent

    def revoke(self, peer_province: str, consent_id: str, reason: str) -> coordinator_pb2.ConsentStatus:
        """Revoke a consent registered by the same province (idempotent). Blocking: the loop uses `revoke_async`."""
        consent = self._revocable(peer_province, consent_id, reason)
        if not consent.revoked_at_ms:
            self._append_revocation(consent_id, reason)
            self._catch_up()
        return self._status(consent)

    async def revoke_async(self, peer_province: str, consent_id: str, reason: str, *,
                           on_appended: Callable[[], None] | None = None) -> coordinator_pb2.ConsentStatus:
        """`revoke` with its ledger append in a worker thread: the loop is not held while the append waits
        for the chain's write lock (a grant batch's signing and commit), and feeds and checks keep answering.

        Only the append leaves the loop. The registry's state is changed on the loop alone, by `_catch_up`
        reading the ledger (as for another replica's revocation), and before this returns: once the revocation
        is acknowledged every later check of this process sees it; the ledger orders it with grants and with
        other replicas' revocations of the same consent (the first revocation entry counts)."""
        consent = self._revocable(peer_province, consent_id, reason)
        if not consent.revoked_at_ms:
            await _in_worker(self._append_revocation, consent_id, reason)
            if on_appended is not None:
                on_appended()  # before the catch-up's store read: a committed revocation is audited even if it fails
            self._catch_up()
        return self._status(self._consents[consent_id])

    def _revocable(self, peer_province: str, consent_id: str, reason: str) -> _Consent:
        """The peer's consent named `consent_id` (caught up with the ledger); Refusal for a bad reason or another's consent."""
        if reason not in REVOKE_REASONS:
            raise Refusal(ErrorCode.MALFORMED, f"reason must be one of {', '.join(sorted(REVOKE_REASONS))}")
        return self._get(peer_province, consent_id)

    def _append_revocation(self, consent_id: str, reason: str) -> None:
        """Append the consent's revocation unless the ledger already holds one; touches no registry state."""
        def build(head: tuple[int, bytes]) -> list[tuple[str, str, bytes]]:
            # Inside the ledger transaction: another replica or call may have revoked it since we caught up.
            latest = self.chain.latest(consent_id)
            return [] if latest is not None and latest.kind == REVOKE else [(REVOKE, consent_id, reason.encode())]

        # The state comes from the ledger (the caller's _catch_up), as at every other replica: the first
        # revocation entry counts, and the feed lists revocations in ledger order.
        self.chain.append_next(build, at_ms=int(self.clock() * 1000))

    def status(self, peer_province: str, consent_id: str) -> coordinator_pb2.ConsentStatus:
        return self._status(self._get(peer_province, consent_id))

    def check_active(self, requester: str, consent_id: str) -> verification_pb2.ConsentBody:
        """The consent body if `consent_id` is the requester's, unrevoked, bound to its signed request and current; else Refusal."""
        self._catch_up()
        consent = self._consents.get(consent_id)
        if consent is None or consent.body.requester != requester:
            raise Refusal(ErrorCode.CONSENT_MISSING)
        if consent.revoked_at_ms:
            raise Refusal(ErrorCode.CONSENT_REVOKED)
        if not consent.body.request:  # registered before receipts carried the request: holders refuse it too
            raise Refusal(ErrorCode.CONSENT_INVALID, UNBOUND)
        now_ms = int(self.clock() * 1000)
        if not consent.body.not_before_ms <= now_ms <= consent.body.not_after_ms:
            raise Refusal(ErrorCode.CONSENT_EXPIRED)
        return consent.body

    def updates(self, after_index: int, epoch: bytes = b"") -> coordinator_pb2.ConsentUpdatesResponse:
        """Revocations recorded after `after_index` of `epoch` (empty: the current one), and the signed ledger head."""
        # Head first, then catch up to at least it: another coordinator worker may append in between,
        # and a head beyond what we read would make the node skip that entry for good.
        head, head_hash = self.chain.head()
        self._catch_up()
        identity = self.identity
        after = after_index
        if epoch and epoch != identity.epoch:  # counted in an earlier epoch: from what the ledger kept of it
            after = min(after_index, dict(identity.lineage).get(epoch, 0))
        with self._lock:
            changes = [(i, c) for i, c in self._revocations if after < i <= head]
        at = self.chain.entry(after_index) if 0 < after_index <= head else None
        return coordinator_pb2.ConsentUpdatesResponse(
            updates=[coordinator_pb2.ConsentUpdate(ledger_index=i, consent_id=c, state=coordinator_pb2.REVOKED)
                     for i, c in changes],
            head_index=head, as_of_ms=int(self.clock() * 1000), head=self._sign_head(head, head_hash),
            after_hash=b"" if at is None else at.hash,
        )

    def _sign_head(self, index: int, digest: bytes) -> coordinator_pb2.SignedLedgerHead:
        """The signed LedgerHeadBody for this head (re-signed only when the head moved)."""
        cached = self._signed_head
        if cached is None or cached[0] != (index, digest):
            identity = self.identity
            body = coordinator_pb2.LedgerHeadBody(
                ledger_id=identity.ledger_id, epoch=identity.epoch, head_index=index, head_hash=digest,
                lineage=[coordinator_pb2.EpochLimit(epoch=e, last_index=n) for e, n in identity.lineage],
            ).SerializeToString()
            cached = self._signed_head = ((index, digest), self.signer.sign(signing.REVOCATIONS, body), body)
        return coordinator_pb2.SignedLedgerHead(body=cached[2], signature=cached[1])

    @staticmethod
    def _status(consent: _Consent) -> coordinator_pb2.ConsentStatus:
        return coordinator_pb2.ConsentStatus(
            receipt=consent.receipt,
            state=coordinator_pb2.REVOKED if consent.revoked_at_ms else coordinator_pb2.ACTIVE,
            revoked_at_ms=consent.revoked_at_ms, ledger_index=consent.ledger_index,
        )


def _granted(entry: Entry) -> _Consent:
    """The consent a GRANT entry of the ledger records."""
    receipt = verification_pb2.SignedConsent.FromString(entry.payload)
    return _Consent(receipt, verification_pb2.ConsentBody.FromString(receipt.body), entry.idx)


def _digest(request_body: bytes) -> bytes:
    """The key of a signed consent request in the registry's request index."""
    return hashlib.sha256(request_body).digest()
