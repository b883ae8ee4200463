"""The household means test across provinces, requester side: open a round at the coordinator,
ask every holder (this province included) for its masked partial sums, add them up, and decide
on the published standard of the household's region.

If a holder does not answer, the total is never computed from the others of that round (their
masks would not cancel, and a partial sum must not leak): the round is repeated with a fresh
round id over the holders that answered, and the decision names the missing provinces and is
INCOMPLETE. The pieces below the single-household `household_check` (`contribution_query`,
`accept`, `add_up`, `decide`, `StandardsInForce`) serve the batch path (node.client.household_batch) too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.client.client import PeerRefused, PeerUnreachable, translate
from node.client.coordinator import CoordinatorClient
from node.client.decision_record import canonical, check_contribution, record_body, signed_record
from node.client.query import validate_household
from node.client.standards import current_period, find_in
from node.coordinator.router import status_name
from node.coordinator.standards import verify_standards
from node.crypto import masks, sealing, signing
from node.crypto.tokens import subject_token
from node.domain.regions import province_uri
from node.domain.standards import Decision, Standard, evaluate
from node.errors import BadInput, Refusal
from node.member import Member
from node.wire.v1 import common_pb2, coordinator_pb2, household_pb2, household_pb2_grpc, verification_pb2

MAX_ROUNDS: Final[int] = 3  # the first round and at most two repeats over the holders that answered

#: A holder's checked contribution: its body and the signed message kept for the record.
Answered = tuple[household_pb2.ContributionBody, household_pb2.SignedContribution]


@dataclass(frozen=True)
class HouseholdResult:
    """A household decision with how each province took part and the signed record."""

    decision: Decision
    routing: dict[str, str]
    missing: tuple[str, ...]
    as_of: tuple[str, str]
    round_id: str
    consent_id: str
    record: dict[str, Any] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The stable JSON of `household check --json`."""
        return {**self.decision.to_json(), "routing": dict(sorted(self.routing.items())), "missing": list(self.missing),
                "as_of": {"from": self.as_of[0], "to": self.as_of[1]}, "round_id": self.round_id,
                "consent_id": self.consent_id}


@dataclass(frozen=True)
class Pending:
    """A decided household whose record is still to be signed (the batch path signs many at once)."""

    result: HouseholdResult  # its record is the unsigned body

    def signed(self, signature: common_pb2.Signature, crl: bytes = b"") -> HouseholdResult:
        """The result with its signed record, carrying `crl` (DER), the revocation list in force."""
        r = self.result
        return HouseholdResult(r.decision, r.routing, r.missing, r.as_of, r.round_id, r.consent_id,
                               signed_record(r.record, signature, crl=crl))


def household_check(member: Member, ids: Sequence[str], purpose: str, region: str, *, consent: verification_pb2.SignedConsent,
                    period: str | None = None, deadline_s: float | None = None,
                    coordinator: CoordinatorClient | None = None) -> HouseholdResult:
    """Decide one consented household of `ids` in `region` on the standard published for it."""
    m = member
    numbers = validate_household(ids, m.cfg.limits.max_subjects)
    m.policy.purpose(purpose)
    period = period or current_period()
    consent_id = verification_pb2.ConsentBody.FromString(consent.body).consent_id
    tokens = [subject_token(m.linkage_key, n) for n in numbers]
    budget = deadline_s or m.cfg.limits.default_deadline_s
    deadline = time.monotonic() + budget
    with contextlib.ExitStack() as stack:
        if coordinator is None:
            coordinator = stack.enter_context(CoordinatorClient(m, deadline_s=budget))
        signed_directory = coordinator.signed_directory()  # one fetch (cached) for members and standards
        directory = coordinator.directory()
        standard, signed_standard = StandardsInForce(m, signed_directory).find(region, purpose, period)
        rounds = coordinator.service(household_pb2_grpc.HouseholdRoundsStub)  # fails over as the client does
        session = _Round(m, rounds, directory, consent, consent_id, purpose, tokens, sorted(standard.measures), deadline,
                         discovery=coordinator.discovery_tokens(tokens))
        routing, holder_set, answered = session.run()
    pending = decide(m, standard, signed_standard, members=len(numbers), region=region, period=period, purpose=purpose,
                     consent_id=consent_id, routing=routing, holder_set=holder_set, answered=answered)
    return pending.signed(m.signer.sign(signing.HOUSEHOLD_DECISION, canonical(pending.result.record)), m.crl.der)


def decide(member: Member, standard: Standard, signed_standard: coordinator_pb2.SignedStandards, *, members: int,
           region: str, period: str, purpose: str, consent_id: str, routing: dict[str, str],
           holder_set: household_pb2.SignedHolderSet, answered: Mapping[str, Answered],
           standard_b64: str | None = None, holder_set_body: household_pb2.HolderSetBody | None = None) -> Pending:
    """The decision on a complete round's contributions, and its record body (unsigned).
    `holder_set_body` is `holder_set`'s body already parsed."""
    body = holder_set_body if holder_set_body is not None else household_pb2.HolderSetBody.FromString(holder_set.body)
    missing = tuple(sorted(body.missing))
    measures = sorted(standard.measures)
    totals, as_of, contributions = add_up(answered, measures)
    decision = evaluate(standard, members, totals, complete=not missing, region=region, period=period)
    record = record_body(
        requester=member.province, consent_id=consent_id, purpose=purpose, region=region, period=period,
        members=members, measures=measures, decision=decision.to_json(), routing=routing, missing=missing,
        as_of=as_of, holder_set=holder_set, contributions=contributions, standard=signed_standard,
        decided_at_ms=int(time.time() * 1000), standard_b64=standard_b64,
    )
    return Pending(HouseholdResult(decision, routing, missing, as_of, body.round_id, consent_id, record))


def add_up(answered: Mapping[str, Answered], measures: Sequence[str]) -> tuple[
        dict[str, int], tuple[str, str], list[household_pb2.SignedContribution]]:
    """The totals of a round every holder answered, the as-of range, and the signed contributions (by province)."""
    vectors = [[masks.decode(v) for v in answered[p][0].masked] for p in sorted(answered)]
    try:
        totals = dict(zip(measures, masks.unmask(vectors, len(measures)), strict=True))
    except masks.MaskError as exc:
        raise PeerUnreachable("DENIED", str(exc)) from None
    dates = [d for body, _ in answered.values() for d in (body.as_of_min, body.as_of_max) if d]
    return totals, (min(dates, default=""), max(dates, default="")), [answered[p][1] for p in sorted(answered)]


class StandardsInForce:
    """The published standards documents of a signed directory, each kept with its signed form (for records)."""

    def __init__(self, member: Member, signed_directory: coordinator_pb2.SignedDirectory) -> None:
        body = coordinator_pb2.DirectoryBody.FromString(signed_directory.body)
        self.documents: dict[str, Any] = {}
        self.signed_of: dict[str, coordinator_pb2.SignedStandards] = {}
        for signed in body.standards:
            try:
                document = verify_standards(signed, member.verifier)
            except Refusal:
                continue
            if document.version >= getattr(self.documents.get(document.province), "version", -1):
                self.documents[document.province], self.signed_of[document.province] = document, signed

    def find(self, region: str, purpose: str, period: str) -> tuple[Standard, coordinator_pb2.SignedStandards]:
        """The standard in force for the household, and the signed document it comes from; BadInput if none."""
        standard = find_in(self.documents, region, purpose, period)
        if standard is None:
            raise BadInput(f"no published standard for region {region}, purpose {purpose} in {period}: "
                           "the region's province publishes it with `hedui standards publish`")
        return standard, self.signed_of[region[:2]]


def contribution_query(member: Member, holder_set: household_pb2.SignedHolderSet, body: household_pb2.HolderSetBody,
                       holder: str, *, tokens: Sequence[bytes], measures: Sequence[str],
                       consent: verification_pb2.SignedConsent, purpose: str, reply_public: bytes) -> bytes:
    """The serialized query asking `holder` for its masked share of one household's round."""
    return household_pb2.ContributionQueryBody(
        requester=member.province, round_id=body.round_id, nonce=os.urandom(16),
        issued_at_ms=int(time.time() * 1000), purpose=purpose, subjects=tokens,
        measures=measures, consent=consent, holder_set=holder_set, audience=holder,
        reply_seal_suite=sealing.SUITE_NAME, reply_seal_key=reply_public,
    ).SerializeToString()


def contribution_queries(member: Member, holder_set: household_pb2.SignedHolderSet, body: household_pb2.HolderSetBody,
                         holders: Sequence[str], *, tokens: Sequence[bytes], measures: Sequence[str],
                         consent: verification_pb2.SignedConsent, purpose: str, reply_public: bytes) -> list[bytes]:
    """`contribution_query` for each of `holders`: the fields every holder's query shares are encoded once,
    after each holder's own (nonce, time, audience). Concatenated protobuf messages parse as one
    message with the fields of both, so each holder reads exactly the query `contribution_query` makes."""
    shared = household_pb2.ContributionQueryBody(
        requester=member.province, round_id=body.round_id, purpose=purpose, subjects=tokens, measures=measures,
        consent=consent, holder_set=holder_set, reply_seal_suite=sealing.SUITE_NAME, reply_seal_key=reply_public,
    ).SerializeToString()
    now_ms = int(time.time() * 1000)
    return [household_pb2.ContributionQueryBody(nonce=os.urandom(16), issued_at_ms=now_ms, audience=h).SerializeToString()
            + shared for h in holders]


def accept(member: Member, signed: household_pb2.SignedContribution, holder_set: household_pb2.SignedHolderSet,
           province: str, measures: Sequence[str], query: bytes, *, round_id: str | None = None,
           holder_set_digest: bytes | None = None) -> Answered | str:
    """`province`'s checked answer to the query `query` of this round, or what is wrong with it.
    `round_id` and `holder_set_digest` are the holder set's, when the caller has them already."""
    checked = check_contribution(signed, member.verifier, holder_set=holder_set, requester=member.province,
                                 province=province, measures=measures, query_digest=hashlib.sha256(query).digest(),
                                 round_id=round_id, holder_set_digest=holder_set_digest)
    return checked if isinstance(checked, str) else (checked, signed)


class _Round:
    """One household's rounds: open, seal one query per holder, route, check and add up."""

    def __init__(self, member: Member, stub: Any, directory: Any, consent: verification_pb2.SignedConsent,
                 consent_id: str, purpose: str, tokens: list[bytes], measures: Sequence[str], deadline: float, *,
                 discovery: tuple[int, list[bytes]]) -> None:
        self.epoch, self.edts = discovery  # the members' epoch discovery tokens (the coordinator sees only these)
        self.m, self.stub, self.directory = member, stub, directory
        self.consent, self.consent_id, self.purpose = consent, consent_id, purpose
        self.tokens, self.measures, self.deadline = tokens, list(measures), deadline

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0.05:
            raise PeerUnreachable("DEADLINE_EXCEEDED", "the household test did not finish within its deadline")
        return left

    def call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=self.remaining(), wait_for_ready=True)
        except grpc.RpcError as exc:
            raise translate(exc) from None

    def run(self) -> tuple[dict[str, str], household_pb2.SignedHolderSet, dict[str, Answered]]:
        opened = self.call("OpenRound", household_pb2.OpenRoundRequest(
            consent_id=self.consent_id, round_id=uuid.uuid4().hex, discovery_tokens=self.edts, epoch=self.epoch))
        routing = {s.province: status_name(s.status) for s in opened.statuses}
        holder_set = opened.holder_set
        for attempt in range(MAX_ROUNDS):
            answered, failed, outcome = self.ask(holder_set, routing)
            if not failed:
                return routing, holder_set, answered
            if self.m.province in failed:
                raise PeerUnreachable("UNAVAILABLE", "this province's own node did not contribute: "
                                      f"{failed[self.m.province]}")
            # Only holders the coordinator saw fail in transport may be left out of a repeated round;
            # a holder that refused (or sent an invalid contribution) stops the test.
            droppable = set(household_pb2.RoundOutcomeBody.FromString(outcome.body).failed) if outcome else set()
            refused = sorted(set(failed) - droppable)
            if refused:
                raise PeerRefused("DENIED", "; ".join(f"province {p}: {failed[p]}" for p in refused))
            if attempt == MAX_ROUNDS - 1:
                break
            opened = self.call("OpenRound", household_pb2.OpenRoundRequest(
                consent_id=self.consent_id, round_id=uuid.uuid4().hex, previous=holder_set, outcome=outcome,
                exclude=sorted(failed)))
            holder_set = opened.holder_set
        raise PeerUnreachable("UNAVAILABLE", "holders kept failing: " + ", ".join(sorted(failed)))

    def ask(self, holder_set: household_pb2.SignedHolderSet, routing: dict[str, str]) -> tuple[
            dict[str, Answered], dict[str, str], household_pb2.SignedRoundOutcome | None]:
        """Route one contribution query to every holder: (checked contributions, failed -> reason, the
        coordinator's signed outcome; None when nothing could be routed)."""
        body = household_pb2.HolderSetBody.FromString(holder_set.body)
        reply_key = X25519PrivateKey.generate()  # per round: contributions stay private even if a long-term key leaks
        reply_public = sealing.public_bytes(reply_key.public_key())
        failed = {h: "not in the directory" for h in body.holders if h not in self.directory}
        if failed:
            routing.update({h: "UNAVAILABLE" for h in failed})
            return {}, failed, None
        raws = {h: contribution_query(self.m, holder_set, body, h, tokens=self.tokens, measures=self.measures,
                                      consent=self.consent, purpose=self.purpose, reply_public=reply_public)
                for h in body.holders}
        signatures = self.m.signer.sign_many([(signing.CONTRIBUTION_QUERY, raws[h]) for h in body.holders])
        envelopes = [
            coordinator_pb2.Envelope(province=h, query=sealing.seal(
                household_pb2.SignedContributionQuery(body=raws[h], signature=sig).SerializeToString(),
                kind=sealing.QUERY, recipient=province_uri(h), public_key=self.directory[h].seal_public_key))
            for h, sig in zip(body.holders, signatures, strict=True)
        ]
        reply = self.call("RouteRound", household_pb2.RouteRoundRequest(
            round_id=body.round_id, consent_id=self.consent_id, envelopes=envelopes, holder_set=holder_set))
        answered: dict[str, Answered] = {}
        for routed in reply.answers:
            province = routed.province
            routing[province] = status_name(routed.status)
            if routed.status != coordinator_pb2.ROUTE_OK:
                failed[province] = routed.message or routing[province]
                continue
            try:
                raw = sealing.open_sealed(routed.answer, kind=sealing.ANSWER, identity=province_uri(self.m.province),
                                          private_key=reply_key)
                signed = household_pb2.SignedContribution.FromString(raw)
            except Exception:  # noqa: BLE001 - a seal that does not open is a failed holder, not a crash
                failed[province] = "sealed contribution does not open"
                routing[province] = "INVALID"
                continue
            checked = accept(self.m, signed, holder_set, province, self.measures, raws[province])
            if isinstance(checked, str):
                failed[province] = checked
                routing[province] = "INVALID"
                continue
            answered[province] = checked
        for holder in body.holders:
            if holder not in answered and holder not in failed:
                failed[holder] = "no answer"
        return answered, failed, reply.outcome if reply.HasField("outcome") else None
