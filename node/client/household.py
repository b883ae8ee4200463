"""The household means test across provinces, requester side: open a round at the coordinator,
ask every holder (this province included) for its masked partial sums, add them up, and decide
on the published standard of the household's region.

If a holder does not answer, the total is never computed from the others of that round (their
masks would not cancel, and a partial sum must not leak): the round is repeated with a fresh
round id over the holders that answered, and the decision names the missing provinces and is
INCOMPLETE.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.client.client import PeerRefused, PeerUnreachable, translate
from node.client.coordinator import CoordinatorClient
from node.client.decision_record import build_record, check_contribution
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
from node.wire.v1 import coordinator_pb2, household_pb2, household_pb2_grpc, verification_pb2

MAX_ROUNDS: Final[int] = 3  # the first round and at most two repeats over the holders that answered


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
        signed_directory = coordinator.call("Directory", coordinator_pb2.DirectoryRequest())
        directory = coordinator.directory()
        standard, signed_standard = _standard(m, signed_directory, region, purpose, period)
        rounds = household_pb2_grpc.HouseholdRoundsStub(coordinator._channel)
        session = _Round(m, rounds, directory, consent, consent_id, purpose, tokens, sorted(standard.measures), deadline)
        routing, holder_set, contributions, totals, as_of = session.run()
    body = household_pb2.HolderSetBody.FromString(holder_set.body)
    missing = tuple(sorted(body.missing))
    decision = evaluate(standard, len(numbers), totals, complete=not missing, region=region, period=period)
    record = build_record(
        signer=m.signer, requester=m.province, consent_id=consent_id, purpose=purpose, region=region, period=period,
        members=len(numbers), measures=sorted(standard.measures), decision=decision.to_json(), routing=routing, missing=missing,
        as_of=as_of, holder_set=holder_set, contributions=contributions, standard=signed_standard,
        decided_at_ms=int(time.time() * 1000),
    )
    return HouseholdResult(decision, routing, missing, as_of, body.round_id, consent_id, record)


def _standard(member: Member, signed_directory: coordinator_pb2.SignedDirectory, region: str, purpose: str,
              period: str) -> tuple[Standard, coordinator_pb2.SignedStandards]:
    """The standard in force for the household, and the signed document it comes from (for the record)."""
    body = coordinator_pb2.DirectoryBody.FromString(signed_directory.body)
    documents, signed_of = {}, {}
    for signed in body.standards:
        try:
            document = verify_standards(signed, member.verifier)
        except Refusal:
            continue
        if document.version >= getattr(documents.get(document.province), "version", -1):
            documents[document.province], signed_of[document.province] = document, signed
    standard = find_in(documents, region, purpose, period)
    if standard is None:
        raise BadInput(f"no published standard for region {region}, purpose {purpose} in {period}: "
                       "the region's province publishes it with `hedui standards publish`")
    return standard, signed_of[region[:2]]


class _Round:
    """One household's rounds: open, seal one query per holder, route, check and add up."""

    def __init__(self, member: Member, stub: Any, directory: Any, consent: verification_pb2.SignedConsent,
                 consent_id: str, purpose: str, tokens: list[bytes], measures: Sequence[str], deadline: float) -> None:
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

    def run(self) -> tuple[dict[str, str], household_pb2.SignedHolderSet, list[household_pb2.SignedContribution],
                           dict[str, int], tuple[str, str]]:
        opened = self.call("OpenRound", household_pb2.OpenRoundRequest(
            consent_id=self.consent_id, round_id=uuid.uuid4().hex, tokens=self.tokens))
        routing = {s.province: status_name(s.status) for s in opened.statuses}
        holder_set = opened.holder_set
        for attempt in range(MAX_ROUNDS):
            answered, failed, outcome = self.ask(holder_set, routing)
            if not failed:
                vectors = [[masks.decode(v) for v in body.masked] for body, _ in answered.values()]
                try:
                    totals = dict(zip(self.measures, masks.unmask(vectors, len(self.measures)), strict=True))
                except masks.MaskError as exc:
                    raise PeerUnreachable("DENIED", str(exc)) from None
                dates = [d for body, _ in answered.values() for d in (body.as_of_min, body.as_of_max) if d]
                as_of = (min(dates, default=""), max(dates, default=""))
                return routing, holder_set, [signed for _, signed in answered.values()], totals, as_of
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
            dict[str, tuple[household_pb2.ContributionBody, household_pb2.SignedContribution]], dict[str, str],
            household_pb2.SignedRoundOutcome | None]:
        """Route one contribution query to every holder: (checked contributions, failed -> reason, the
        coordinator's signed outcome; None when nothing could be routed)."""
        body = household_pb2.HolderSetBody.FromString(holder_set.body)
        reply_key = X25519PrivateKey.generate()  # per round: contributions stay private even if a long-term key leaks
        reply_public = sealing.public_bytes(reply_key.public_key())
        failed: dict[str, str] = {}
        raws: dict[str, bytes] = {}
        for holder in body.holders:
            if holder not in self.directory:
                failed[holder] = "not in the directory"
                continue
            raws[holder] = household_pb2.ContributionQueryBody(
                requester=self.m.province, round_id=body.round_id, nonce=os.urandom(16),
                issued_at_ms=int(time.time() * 1000), purpose=self.purpose, subjects=self.tokens,
                measures=self.measures, consent=self.consent, holder_set=holder_set, audience=holder,
                reply_seal_suite=sealing.SUITE_NAME, reply_seal_key=reply_public,
            ).SerializeToString()
        if failed:
            for holder in failed:
                routing[holder] = "UNAVAILABLE"
            return {}, failed, None
        signatures = self.m.signer.sign_many([(signing.CONTRIBUTION_QUERY, raws[h]) for h in body.holders])
        envelopes = [
            coordinator_pb2.Envelope(province=h, query=sealing.seal(
                household_pb2.SignedContributionQuery(body=raws[h], signature=sig).SerializeToString(),
                kind=sealing.QUERY, recipient=province_uri(h), public_key=self.directory[h].seal_public_key))
            for h, sig in zip(body.holders, signatures, strict=True)
        ]
        reply = self.call("RouteRound", household_pb2.RouteRoundRequest(
            round_id=body.round_id, consent_id=self.consent_id, envelopes=envelopes, holder_set=holder_set))
        answered = {}
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
            checked = check_contribution(signed, self.m.verifier, holder_set=holder_set, requester=self.m.province,
                                         province=province, measures=self.measures,
                                         query_digest=hashlib.sha256(raws[province]).digest())
            if isinstance(checked, str):
                failed[province] = checked
                routing[province] = "INVALID"
                continue
            answered[province] = (checked, signed)
        for holder in body.holders:
            if holder not in answered and holder not in failed:
                failed[holder] = "no answer"
        return answered, failed, reply.outcome if reply.HasField("outcome") else None
