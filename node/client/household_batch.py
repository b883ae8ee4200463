"""The household means test for many households at once (`hedui household check-batch`).

A chunk of households costs one OpenRoundBatch (one discovery for all of them, one signed
holder set each), one batch signature over all their contribution queries, one sealed
ContributeBatch per holding province inside one RouteRoundBatch, and one batch signature over
their decision records. Each household keeps its own round, contributions and record, so every
result line verifies alone. Households whose round lost a holder get a repeated round, batched
too, over the holders that answered them (never a sum with a holder missing), and are
INCOMPLETE naming the missing province. As for one household (node.client.household), only a
holder the coordinator saw fail in transport (unreachable, out of time) is left out of a
repeated round; a holder that refused a household, or answered it invalidly, leaves that
household undecided (a line with "error", retried by a re-run).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.client.batch import ITEM_STATUS, BatchSession, chunked, pipeline
from node.client.decision_record import canonical
from node.client.household import (MAX_ROUNDS, Answered, HouseholdResult, Pending, StandardsInForce, accept,
                                   contribution_queries, decide)
from node.client.query import validate_household
from node.client.standards import current_period
from node.coordinator.router import status_name
from node.crypto import sealing, signing
from node.coordinator.directory import verify_directory
from node.crypto import discovery
from node.crypto.tokens import subject_token
from node.domain.regions import province_uri
from node.domain.standards import Standard
from node.errors import BadInput, HeduiError
from node.member import Member
from node.wire.v1 import coordinator_pb2, household_pb2, household_pb2_grpc, verification_pb2

#: Route statuses of a holder's whole batch that the coordinator saw as failures in transport.
TRANSPORT_FAILURES: Final[frozenset[str]] = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})


@dataclass(frozen=True)
class BatchHousehold:
    """One household to decide: its key (as in the input file), members' ID numbers, region and consent receipt."""

    key: str
    ids: Sequence[str]
    region: str
    consent: verification_pb2.SignedConsent


@dataclass
class _State:
    """Where one household of a chunk stands across its rounds."""

    household: BatchHousehold
    consent_id: str
    tokens: list[bytes]
    standard: Standard | None = None
    signed_standard: coordinator_pb2.SignedStandards | None = None
    routing: dict[str, str] = field(default_factory=dict)
    holder_set: household_pb2.SignedHolderSet | None = None
    body: household_pb2.HolderSetBody | None = None
    holder_set_digest: bytes = b""  # SHA-256 of holder_set.body (what each contribution is bound to)
    answered: dict[str, Answered] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # holder -> why: failed in transport (may be left out)
    refused: dict[str, str] = field(default_factory=dict)  # holder -> why: refused or invalid (stops the household)
    done: bool = False
    error: str = ""
    outcome: household_pb2.SignedRoundOutcome | None = None  # the coordinator's signed outcome of the last routing

    measures: list[str] = field(default_factory=list)  # sorted measure codes of its standard

    def line(self) -> dict[str, Any]:
        """The result line of a household that could not be decided (a re-run retries it)."""
        return {"household": self.household.key, "consent_id": self.consent_id, "members": len(self.tokens),
                "region": self.household.region, "error": self.error, "routing": dict(sorted(self.routing.items()))}


def result_line(key: str, result: HouseholdResult) -> dict[str, Any]:
    """A decided household's line: `household check --json` plus the household key and its signed record."""
    return {"household": key, **result.to_json(), "record": result.record}


class HouseholdBatchSession(BatchSession):
    """An async session with the coordinator for household rounds in batches (one purpose and period)."""

    def __init__(self, member: Member, purpose: str, *, period: str | None = None, deadline_s: float = 30.0) -> None:
        super().__init__(member, deadline_s=deadline_s)
        member.policy.purpose(purpose)
        self.purpose = purpose
        self.period = period or current_period()
        # the rounds service over the session's connections, in their turn (a coordinator's --workers share them)
        self._rounds = self.pickers(household_pb2_grpc.HouseholdRoundsStub)
        self._standards: StandardsInForce | None = None
        self._epoch_s = 0  # the coordinator's discovery epoch length, read with the standards
        self._standard_b64: dict[int, str] = {}

    async def standards(self) -> StandardsInForce:
        """The standards published in the federation directory (fetched once per session)."""
        if self._standards is None:
            signed = await self.call("Directory", coordinator_pb2.DirectoryRequest())
            self._standards = StandardsInForce(self.member, signed)
            self._epoch_s = verify_directory(signed, self.member.verifier).discovery_epoch_s
            if self._epoch_s < 1:
                raise BadInput("the coordinator publishes no discovery epoch (it predates locator discovery)")
        return self._standards

    async def check(self, chunk: Sequence[BatchHousehold]) -> list[dict[str, Any]]:
        """Decide a chunk of households; one JSON-ready line per household, in order."""
        m = self.member
        standards = await self.standards()
        states = []
        for h in chunk:
            state = _State(h, verification_pb2.ConsentBody.FromString(h.consent.body).consent_id, [])
            try:
                numbers = validate_household(h.ids, m.cfg.limits.max_subjects)
                state.tokens = [subject_token(m.linkage_key, n) for n in numbers]
                state.standard, state.signed_standard = standards.find(h.region, self.purpose, self.period)
                state.measures = sorted(state.standard.measures)
            except HeduiError as exc:
                state.error = str(exc)
            states.append(state)
        await self._open([s for s in states if not s.error], repeat=False)
        for attempt in range(MAX_ROUNDS):
            active = [s for s in states if s.holder_set is not None and not s.done and not s.error]
            if not active:
                break
            await self._ask(active)
            again = []
            for s in active:
                if s.error:  # the coordinator did not route its round
                    continue
                if s.refused:
                    s.error = "; ".join(f"province {p}: {why}" for p, why in sorted(s.refused.items()))
                elif not s.failed:
                    s.done = True
                elif m.province in s.failed:
                    s.error = f"this province's own node did not contribute: {s.failed[m.province]}"
                elif attempt == MAX_ROUNDS - 1:
                    s.error = "holders kept failing: " + ", ".join(sorted(s.failed))
                else:
                    again.append(s)
            await self._open(again, repeat=True)
        return await self._decide(states)

    async def _open(self, states: list[_State], *, repeat: bool) -> None:
        """One OpenRoundBatch: fresh rounds (one discovery for all), or repeats without each one's failed holders."""
        if not states:
            return
        epoch = 0 if repeat else discovery.current_epoch(self._epoch_s)  # one epoch for the whole batch
        households = [household_pb2.OpenRoundRequest(consent_id=s.consent_id, round_id=uuid.uuid4().hex,
                                                     previous=s.holder_set, outcome=s.outcome, exclude=sorted(s.failed))
                      if repeat else
                      household_pb2.OpenRoundRequest(consent_id=s.consent_id, round_id=uuid.uuid4().hex, epoch=epoch,
                                                     discovery_tokens=[discovery.discovery_token(t, epoch) for t in s.tokens])
                      for s in states]
        try:
            reply = await self.call("OpenRoundBatch", household_pb2.OpenRoundBatchRequest(
                request_id=uuid.uuid4().hex, households=households), stubs=self._rounds)
        except HeduiError as exc:
            for s in states:
                s.error = f"the coordinator did not open the round: {exc}"
            return
        contacted = {st.province: status_name(st.status) for st in reply.statuses}
        for s, opened in zip(states, reply.households, strict=True):
            if opened.error_code:
                s.error = f"refused by the coordinator: {opened.error}"
                continue
            s.holder_set = opened.holder_set
            s.body = household_pb2.HolderSetBody.FromString(opened.holder_set.body)
            s.holder_set_digest = hashlib.sha256(opened.holder_set.body).digest()
            if not repeat:  # a province that held someone of the batch but no one of this household
                s.routing = {p: "NO_MATCH" if st == "OK" else st for p, st in contacted.items()}

    async def _ask(self, states: list[_State]) -> None:
        """One RouteRoundBatch: every holder of every round gets one sealed batch of its queries."""
        m = self.member
        directory = await self.directory()
        reply_key = X25519PrivateKey.generate()  # per call: contributions stay private even if a long-term key leaks
        reply_public = sealing.public_bytes(reply_key.public_key())
        asked: list[_State] = []
        per_holder: dict[str, list[tuple[int, bytes]]] = {}
        for s in states:
            assert s.body is not None and s.holder_set is not None
            s.answered, s.failed = {}, {}
            s.refused = {h: "not in the directory" for h in s.body.holders if h not in directory}
            if s.refused:
                s.routing.update({h: "UNAVAILABLE" for h in s.refused})
                continue
            asked.append(s)
            raws = contribution_queries(m, s.holder_set, s.body, s.body.holders, tokens=s.tokens, measures=s.measures,
                                        consent=s.household.consent, purpose=self.purpose, reply_public=reply_public)
            for h, raw in zip(s.body.holders, raws, strict=True):
                per_holder.setdefault(h, []).append((len(asked) - 1, raw))
        if not asked:
            return
        flat = [raw for items in per_holder.values() for _, raw in items]
        signatures = iter(await self.signer.sign_many([(signing.CONTRIBUTION_QUERY, raw) for raw in flat]))
        envelopes = []
        for h, items in per_holder.items():
            batch = household_pb2.ContributionQueryBatch()
            for _, raw in items:  # added in place: each query copied into the batch once
                batch.queries.add(body=raw, signature=next(signatures))
            envelopes.append(household_pb2.RoundBatchEnvelope(
                province=h, rounds=[i for i, _ in items], queries=sealing.seal(
                    batch.SerializeToString(), kind=sealing.QUERY, recipient=province_uri(h),
                    public_key=directory[h].seal_public_key)))
        request = household_pb2.RouteRoundBatchRequest(
            request_id=uuid.uuid4().hex, envelopes=envelopes,
            rounds=[household_pb2.HouseholdRound(consent_id=s.consent_id, holder_set=s.holder_set) for s in asked])
        if request.ByteSize() > self.max_request_bytes and len(asked) > 1:
            # Too large for one message (gRPC refuses it whole): each half of the rounds on its own, with a
            # fresh reply key; nothing of this request was sent, so no round id is spent.
            half = len(asked) // 2
            await self._ask(asked[:half])
            await self._ask(asked[half:])
            return
        try:
            reply = await self.call("RouteRoundBatch", request, stubs=self._rounds)
        except HeduiError as exc:
            for s in asked:
                s.error = f"the coordinator did not route the round: {exc}"
            return
        for s, outcome in zip(asked, reply.outcomes, strict=False):
            s.outcome = outcome
        routed = {a.province: a for a in reply.answers}
        for holder, items in per_holder.items():
            self._take(holder, items, asked, routed.get(holder), reply_key)

    def _take(self, holder: str, items: list[tuple[int, bytes]], asked: list[_State],
              routed: coordinator_pb2.RoutedAnswer | None, reply_key: X25519PrivateKey) -> None:
        """Record what `holder` answered for each of its households: a checked contribution or why not."""
        status = status_name(routed.status) if routed is not None else "UNAVAILABLE"
        reason = (routed.message if routed is not None else "") or status
        by_index: dict[int, household_pb2.ContributionItem] = {}
        if routed is not None and routed.status == coordinator_pb2.ROUTE_OK:
            try:
                raw = sealing.open_sealed(routed.answer, kind=sealing.ANSWER, identity=province_uri(self.member.province),
                                          private_key=reply_key)
                by_index = {item.index: item for item in household_pb2.ContributionBatch.FromString(raw).items}
            except Exception:  # noqa: BLE001 - a seal that does not open is this holder's failure
                status, reason = "INVALID", "sealed contributions do not open"
        for position, (i, query) in enumerate(items):
            s = asked[i]
            item = by_index.get(position)
            if status in TRANSPORT_FAILURES:  # seen by the coordinator: the holder may be left out
                s.routing[holder], s.failed[holder] = status, reason
            elif status != "OK" or item is None:
                s.routing[holder] = status if status != "OK" else "INVALID"
                s.refused[holder] = reason if status != "OK" else "no answer"
            elif item.error_code:
                s.routing[holder] = ITEM_STATUS.get(item.error_code, "DENIED")
                s.refused[holder] = item.error or item.error_code
            else:
                assert s.holder_set is not None and s.body is not None
                checked = accept(self.member, item.contribution, s.holder_set, holder, s.measures, query,
                                 round_id=s.body.round_id, holder_set_digest=s.holder_set_digest)
                if isinstance(checked, str):
                    s.routing[holder], s.refused[holder] = "INVALID", checked
                else:
                    s.routing[holder], s.answered[holder] = "OK", checked

    async def _decide(self, states: list[_State]) -> list[dict[str, Any]]:
        """Every decided household's record signed under one batch signature; the lines in order."""
        pending: dict[int, Pending] = {}
        for i, s in enumerate(states):
            if not s.done or s.error:
                continue
            assert s.standard is not None and s.signed_standard is not None and s.holder_set is not None
            try:
                pending[i] = decide(self.member, s.standard, s.signed_standard, members=len(s.tokens),
                                    region=s.household.region, period=self.period, purpose=self.purpose,
                                    consent_id=s.consent_id, routing=s.routing, holder_set=s.holder_set,
                                    answered=s.answered, standard_b64=self._b64_of(s.signed_standard),
                                    holder_set_body=s.body)
            except HeduiError as exc:  # contributions that do not add up: that household's failure
                s.error = str(exc)
        signatures = await self.signer.sign_many([(signing.HOUSEHOLD_DECISION, canonical(p.result.record))
                                                  for p in pending.values()]) if pending else []
        signed = {i: p.signed(sig, self.member.crl.der) for (i, p), sig in zip(pending.items(), signatures, strict=True)}
        return [result_line(s.household.key, signed[i]) if i in signed else s.line() for i, s in enumerate(states)]

    def _b64_of(self, signed: coordinator_pb2.SignedStandards) -> str:
        """A standards document's base64 form, encoded once per session (every record of its region carries it)."""
        key = id(signed)
        if key not in self._standard_b64:
            self._standard_b64[key] = base64.b64encode(signed.SerializeToString()).decode()
        return self._standard_b64[key]


def household_check_batch(member: Member, households: Sequence[BatchHousehold], purpose: str, *,
                          period: str | None = None, chunk: int = 128, in_flight: int = 4,
                          deadline_s: float = 30.0) -> list[dict[str, Any]]:
    """Decide many consented households (chunks of `chunk`, `in_flight` at a time); one line per
    household in input order: `result_line` for a decided household, else one with "error"."""

    async def run() -> list[dict[str, Any]]:
        session = HouseholdBatchSession(member, purpose, period=period, deadline_s=deadline_s)
        try:
            return [line async for lines in pipeline(chunked(households, chunk), session.check, in_flight)
                    for line in lines]
        finally:
            await session.close()

    return asyncio.run(run())
