"""A holder's share of a household round: check the contribution query and the coordinator's
holder set, sum each measure over the members this province holds, and mask the sums.

The holder never reveals a per-member or per-province figure: what it signs is its partial
sums plus pairwise masks (node.crypto.masks), which only the total of every holder of the round
cancels. A round id is answered once (its masks must never be reused).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from google.protobuf.message import DecodeError

from node.config import Limits
from node.crypto import masks, signing
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.domain import request_ids
from node.domain.catalogue import Catalogue
from node.domain.policy import Policy
from node.errors import ErrorCode, Refusal
from node.service.consent import ReceiptGate
from node.service.signed import coordinator_signed
from node.service.verification import NONCE_MAX, NONCE_MIN, TOKEN_BYTES, ReplayGuard
from node.store.interfaces import Fact, FactStore
from node.wire.v1 import household_pb2

ROUND_PREFIX: Final[bytes] = b"hedui/v1/round\x00"  # replay key of a round id (the nonce store keeps it)
MAX_MEASURES: Final[int] = 32
MAX_HOLDERS: Final[int] = 32


@dataclass(frozen=True)
class Contribution:
    """A checked contribution query and the body this holder will sign."""

    query: household_pb2.ContributionQueryBody
    holder_set: household_pb2.HolderSetBody
    body: household_pb2.ContributionBody
    consent_id: str
    items: tuple[str, ...]


def verify_holder_set(signed: household_pb2.SignedHolderSet, verifier: signing.Verifier) -> household_pb2.HolderSetBody:
    """The coordinator-signed holder set of a round; Refusal when it does not verify or is malformed."""
    body = coordinator_signed(signed.signature, signing.HOLDER_SET, signed.body, household_pb2.HolderSetBody,
                              verifier, "holder set")
    holders = list(body.holders)
    if (holders != sorted(set(holders)) or body.requester not in holders or not 1 <= len(holders) <= MAX_HOLDERS
            or not request_ids.is_valid(body.round_id)):
        raise Refusal(ErrorCode.MALFORMED, "holder set is malformed")
    return body


def holder_set_digest(signed: household_pb2.SignedHolderSet) -> bytes:
    return hashlib.sha256(signed.body).digest()


class HouseholdService:
    """What a province node does with a contribution query; the gRPC servicer only adapts."""

    def __init__(self, *, province: str, store: FactStore, catalogue: Catalogue, policy: Policy,
                 verifier: signing.Verifier, limits: Limits, consent: ReceiptGate | None, replay: ReplayGuard,
                 mask_key: X25519PrivateKey, clock: Callable[[], float] = time.time) -> None:
        self.province = province
        self.store = store
        self.catalogue = catalogue
        self.policy = policy
        self.verifier = verifier
        self.limits = limits
        self.consent = consent
        self.replay = replay
        self.mask_key = mask_key
        self.clock = clock
        self._secrets: dict[tuple[str, bytes], bytes] = {}
        self._items_of: dict[tuple[str, ...], tuple[str, ...]] = {}  # (purpose, *measures) -> items, once allowed

    def authenticate(self, signed: household_pb2.SignedContributionQuery, peer_province: str | None, *,
                     parsed: household_pb2.ContributionQueryBody | None = None) -> household_pb2.ContributionQueryBody:
        """Signature, signer = requester (= TLS peer when called directly), addressed to this province.
        `parsed` is `signed.body` already parsed (a batch reads its bodies once)."""
        try:
            verified = self.verifier.verify(signed.signature, signing.CONTRIBUTION_QUERY, signed.body)
            body = parsed if parsed is not None else household_pb2.ContributionQueryBody.FromString(signed.body)
        except (SignatureInvalid, CertificateRejected):
            raise Refusal(ErrorCode.UNAUTHENTICATED, "contribution query signature does not verify") from None
        except DecodeError:
            raise Refusal(ErrorCode.MALFORMED, "contribution query does not parse") from None
        signer = verified.identity.province
        if signer is None or signer != body.requester or (peer_province is not None and signer != peer_province):
            raise Refusal(ErrorCode.IDENTITY_MISMATCH)
        if body.audience != self.province:
            raise Refusal(ErrorCode.NOT_ADDRESSED_HERE)
        return body

    def measures_of(self, body: household_pb2.ContributionQueryBody) -> tuple[str, ...]:
        """The requested measures (sorted, distinct, known, allowed by the purpose) and their items."""
        codes = list(body.measures)
        known = self._items_of.get((body.purpose, *codes))
        if known is not None:  # a batch asks the same measures for every household
            return known
        if not 1 <= len(codes) <= MAX_MEASURES or codes != sorted(set(codes)):
            raise Refusal(ErrorCode.MALFORMED, "measures must be 1 to 32 distinct codes in sorted order")
        items: list[str] = []
        try:
            purpose = self.policy.purpose(body.purpose)
        except Exception:  # noqa: BLE001 - UnknownPurpose: a public refusal
            raise Refusal(ErrorCode.UNKNOWN_PURPOSE) from None
        for code in codes:
            try:
                measure = self.catalogue.measure(code)
            except Exception:  # noqa: BLE001 - UnknownMeasure
                raise Refusal(ErrorCode.UNKNOWN_ITEM, "unknown household measure") from None
            for item in measure.items:
                if item not in purpose.items:
                    raise Refusal(ErrorCode.NOT_AUTHORISED, f"purpose {body.purpose} may not use {item}")
                items.append(item)
        if len(self._items_of) >= 256:
            self._items_of.clear()
        found = self._items_of[(body.purpose, *codes)] = tuple(dict.fromkeys(items))
        return found

    def check(self, signed: household_pb2.SignedContributionQuery, peer_province: str | None, *,
              authenticated: household_pb2.ContributionQueryBody | None = None) -> Contribution:
        """Everything but the sums: who asks, under which consent and holder set, never twice.
        `authenticated` is the body `authenticate` already returned for `signed` (not checked again)."""
        body = authenticated if authenticated is not None else self.authenticate(signed, peer_province)
        request_ids.check(body.round_id)
        now_ms = int(self.clock() * 1000)
        skew_ms = self.limits.clock_skew_s * 1000
        if abs(now_ms - body.issued_at_ms) > skew_ms:
            raise Refusal(ErrorCode.CLOCK_WINDOW, "contribution query is outside the allowed clock skew")
        if not NONCE_MIN <= len(body.nonce) <= NONCE_MAX:
            raise Refusal(ErrorCode.MALFORMED, "nonce must be 16 to 64 bytes")
        if not 1 <= len(body.subjects) <= self.limits.max_subjects or any(len(s) != TOKEN_BYTES for s in body.subjects):
            raise Refusal(ErrorCode.MALFORMED, f"a household has 1 to {self.limits.max_subjects} subject tokens")
        holder_set = verify_holder_set(body.holder_set, self.verifier)
        if holder_set.round_id != body.round_id or holder_set.requester != body.requester:
            raise Refusal(ErrorCode.MALFORMED, "holder set belongs to another round")
        if self.province not in holder_set.holders:
            raise Refusal(ErrorCode.MALFORMED, "this province is not in the round's holder set")
        if abs(now_ms - holder_set.issued_at_ms) > skew_ms:
            raise Refusal(ErrorCode.CLOCK_WINDOW, "holder set is outside the allowed clock skew")
        others = [h for h in holder_set.holders if h != holder_set.requester]
        if holder_set.missing and others == [self.province]:
            # With a province left out, this province would be the requester's only counterpart:
            # the total less the requester's own share would be this province's share.
            raise Refusal(ErrorCode.NOT_AUTHORISED, "a round with a missing province and no other holder "
                          "would expose this province's share")
        items = self.measures_of(body)
        if self.consent is None:
            raise Refusal(ErrorCode.CONSENT_MISSING, "this node cannot check consents (no coordinator)")
        consent_id = self.consent.check_items(body, items, whole_household=True)
        if consent_id != holder_set.consent_id:
            raise Refusal(ErrorCode.CONSENT_INVALID, "holder set is for another consent")
        if not self.replay.remember(body.requester, ROUND_PREFIX + body.round_id.encode(), body.issued_at_ms):
            raise Refusal(ErrorCode.REPLAYED, "round id already used: masks are never reused")
        empty = household_pb2.ContributionBody()
        return Contribution(body, holder_set, empty, consent_id, items)

    def contribute(self, signed: household_pb2.SignedContributionQuery, peer_province: str | None,
                   mask_keys: Mapping[str, bytes], *,
                   authenticated: household_pb2.ContributionQueryBody | None = None) -> Contribution:
        """Check the query, then this province's masked partial sums of every measure.

        `mask_keys` maps province code -> announced mask public key (from the verified directory).
        """
        checked = self.check(signed, peer_province, authenticated=authenticated)
        facts = self.store.lookup(list(checked.query.subjects), checked.items)
        return self._masked(checked, signed.body, facts, 0, mask_keys)

    def contribute_many(self, queries: Sequence[household_pb2.SignedContributionQuery], peer_province: str | None,
                        mask_keys: Mapping[str, bytes],
                        parsed: Sequence[household_pb2.ContributionQueryBody | None] | None = None,
                        ) -> list[Contribution | Refusal]:
        """`contribute` for many households at once: one nonce transaction for their round ids and one
        store lookup for all their subjects. A refused query refuses only its own household.
        `parsed` holds each query's body already parsed (None where it did not parse)."""
        checked: list[Contribution | Refusal] = []
        bodies = parsed if parsed is not None else [None] * len(queries)
        with self.batch_scope():
            for signed, body in zip(queries, bodies, strict=True):
                try:
                    query = self.authenticate(signed, peer_province, parsed=body)
                    checked.append(self.check(signed, peer_province, authenticated=query))
                except Refusal as refusal:
                    checked.append(refusal)
        accepted = [c for c in checked if isinstance(c, Contribution)]
        tokens = [t for c in accepted for t in c.query.subjects]
        facts = self.store.lookup(tokens, list(dict.fromkeys(i for c in accepted for i in c.items))) if tokens else {}
        out: list[Contribution | Refusal] = []
        offset = 0
        for signed, c in zip(queries, checked, strict=True):
            if isinstance(c, Refusal):
                out.append(c)
                continue
            try:
                out.append(self._masked(c, signed.body, facts, offset, mask_keys))
            except Refusal as refusal:
                out.append(refusal)
            offset += len(c.query.subjects)
        return out

    def batch_scope(self) -> contextlib.AbstractContextManager[None]:
        """Group the replay guard's writes for a batch into one transaction, if it can."""
        scope = getattr(self.replay, "transaction", None)
        return scope() if scope is not None else contextlib.nullcontext()

    def _masked(self, checked: Contribution, query_body: bytes, facts: Mapping[tuple[int, str], Fact], offset: int,
                mask_keys: Mapping[str, bytes]) -> Contribution:
        """The signed-to-be body of a checked query: its partial sums (facts of its subjects, which
        start at `offset` of the lookup) plus the masks towards every other holder."""
        body, holder_set = checked.query, checked.holder_set
        peers = [p for p in holder_set.holders if p != self.province]
        secrets = {p: self._secret(p, mask_keys.get(p, b"")) for p in peers}
        sums, as_of = self._sums(body, facts, offset)
        digest = holder_set_digest(body.holder_set)
        try:
            masked = masks.masked_sums(sums, list(body.measures), own=self.province, secrets=secrets,
                                       round_key=digest.hex(), household=checked.consent_id)
        except masks.MaskError:
            raise Refusal(ErrorCode.MALFORMED, "a partial sum is out of range") from None
        out = household_pb2.ContributionBody(
            responder=self.province, requester=body.requester, round_id=body.round_id, digest_algorithm="sha256",
            query_digest=hashlib.sha256(query_body).digest(), holder_set_digest=digest,
            measures=list(body.measures), masked=[masks.encode(v) for v in masked],
            as_of_min=min(as_of, default=""), as_of_max=max(as_of, default=""), answered_at_ms=int(self.clock() * 1000),
        )
        return Contribution(body, holder_set, out, checked.consent_id, checked.items)

    def _secret(self, peer: str, public: bytes) -> bytes:
        if len(public) != 32:
            raise Refusal(ErrorCode.UNAVAILABLE, f"province {peer} has announced no mask key")
        key = (peer, public)
        secret = self._secrets.get(key)
        if secret is None:
            try:
                secret = masks.pair_secret(self.mask_key, self.province, public, peer)
            except masks.MaskError:
                raise Refusal(ErrorCode.UNAVAILABLE, f"province {peer}'s mask key is unusable") from None
            self._secrets[key] = secret
        return secret

    def _sums(self, body: household_pb2.ContributionQueryBody, facts: Mapping[tuple[int, str], Fact],
              offset: int) -> tuple[list[int], set[str]]:
        """Per measure, the sum over the members held here of their items' values; the as-of dates used."""
        subjects = range(offset, offset + len(body.subjects))
        sums, as_of = [], set()
        for code in body.measures:
            total = 0
            for item in self.catalogue.measure(code).items:
                for i in subjects:
                    fact = facts.get((i, item))
                    if fact is not None:
                        total += fact.value
                        as_of.add(fact.as_of)
            sums.append(total)
        return sums, as_of
