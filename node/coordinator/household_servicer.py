"""gRPC adapter for the HouseholdRounds service: open a round (discovery + a signed holder set),
then forward each sealed contribution query to its holder and every sealed reply back unopened.
The batch calls do the same for many households: one discovery, one signature over all the
holder sets, one sealed message per holder, one audit record per decision."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc
from grpc import aio

from node.coordinator.router import ROUTE_FAILURES, status_name, status_of
from node.coordinator.rounds import MAX_ENVELOPES, MAX_ROUND_BATCH, RoundBook
from node.domain import request_ids
from node.domain.regions import province_uri
from node.errors import ErrorCode, Refusal
from node.server.edge import edge, public_message
from node.store import audit
from node.wire.v1 import common_pb2, coordinator_pb2, household_pb2

ROUND_OPEN: Final[str] = "round.open"
ROUND_ROUTE: Final[str] = "round.route"
#: Failures a repeated round may leave out: the holder could not be reached in time. A holder that
#: refused (DENIED) cannot be dropped, or a requester could force any holder out of a round.
ROUND_FAILURES: Final[frozenset[int]] = frozenset({coordinator_pb2.ROUTE_UNAVAILABLE,
                                                    coordinator_pb2.ROUTE_DEADLINE_EXCEEDED})


class HouseholdRoundsServicer:
    """Shares the coordinator servicer's admission, consent checks, router, audit and metrics."""

    def __init__(self, coordinator: Any, rounds: RoundBook) -> None:
        self.c = coordinator  # the CoordinatorServicer
        self.rounds = rounds

    async def OpenRound(self, request: household_pb2.OpenRoundRequest, context: aio.ServicerContext) -> Any:
        c = self.c
        async with edge(context, c.log, "OpenRound", c.metrics, c._refusal_hook("OpenRound", request, context)):
            province = c._province(context)
            request_ids.check(request.round_id)
            statuses: list[coordinator_pb2.ProvinceStatus] = []
            if request.HasField("previous"):
                c.consents.check_active(province, request.consent_id)
                signed = self.rounds.repeat(province, request.consent_id, request.round_id, request.previous,
                                            request.outcome, request.exclude)
            else:
                c._check_discovery(province, request.consent_id, request.discovery_tokens, request.epoch)
                consent = c.consents.check_active(province, request.consent_id)
                if len(set(request.discovery_tokens)) != len(consent.subject_commitments):
                    raise Refusal(ErrorCode.MALFORMED, "a round covers every member of the consented household")
                held, statuses = c.router.holds(province, list(request.discovery_tokens), request.epoch,
                                                judged=False)  # contribution queries are not claim-checked (G24)
                unknown = {s.province for s in statuses if s.status in ROUTE_FAILURES}
                signed = self.rounds.open(province, request.consent_id, request.round_id, held, missing=unknown)
            body = household_pb2.HolderSetBody.FromString(signed.body)
            shown = {s.province: status_name(s.status) for s in statuses} | {p: "HOLDER" for p in body.holders}
            await c._audit(audit.coordinator_event(ROUND_OPEN, requester=province, request_id=request.round_id,
                                                   consent_id=request.consent_id, statuses=shown))
            c.log.info("round_opened", requester=province, consent_id=request.consent_id, request_id=request.round_id,
                       holders=list(body.holders), missing=list(body.missing))
            return household_pb2.OpenRoundResponse(holder_set=signed, statuses=statuses)

    async def OpenRoundBatch(self, request: household_pb2.OpenRoundBatchRequest, context: aio.ServicerContext) -> Any:
        c = self.c
        async with edge(context, c.log, "OpenRoundBatch", c.metrics, c._refusal_hook("OpenRoundBatch", request, context)):
            province = c._province(context)
            request_ids.check(request.request_id)
            households = list(request.households)
            if not 1 <= len(households) <= MAX_ROUND_BATCH:
                raise Refusal(ErrorCode.TOO_MANY, f"1 to {MAX_ROUND_BATCH} households per batch")
            refused: dict[int, Refusal] = {}
            asked: list[list[bytes] | None] = []
            fresh = [h.epoch for h in households if not h.HasField("previous")]
            epoch = fresh[0] if fresh else 0
            for i, h in enumerate(households):
                asked.append(None)
                try:
                    request_ids.check(h.round_id)
                    consent = c.consents.check_active(province, h.consent_id)
                    if not h.HasField("previous"):
                        if h.epoch != epoch:
                            raise Refusal(ErrorCode.MALFORMED, "every household of a batch names one discovery epoch")
                        c._check_discovery(province, h.consent_id, h.discovery_tokens, h.epoch)
                        if len(set(h.discovery_tokens)) != len(consent.subject_commitments):
                            raise Refusal(ErrorCode.MALFORMED, "a round covers every member of the consented household")
                        asked[i] = list(h.discovery_tokens)
                except Refusal as refusal:
                    refused[i] = refusal
            holders, statuses = c.router.holders_of(province, asked, epoch, judged=False)  # not claim-checked (G24)
            unknown = {s.province for s in statuses if s.status in ROUTE_FAILURES}
            bodies: dict[int, bytes] = {}
            with self.rounds.transaction():  # every round id of the batch remembered in one transaction
                for i, h in enumerate(households):
                    if i in refused:
                        continue
                    try:
                        bodies[i] = (self.rounds.repeat_body(province, h.consent_id, h.round_id, h.previous, h.outcome,
                                                             h.exclude)
                                     if h.HasField("previous") else
                                     self.rounds.body(province, h.consent_id, h.round_id, holders[i], missing=unknown))
                    except Refusal as refusal:
                        refused[i] = refusal
            signed = dict(zip(bodies, self.rounds.sign(list(bodies.values())), strict=True))
            shown = {s.province: status_name(s.status) for s in statuses}
            if bodies:  # the holder set digest binds each household's entry to the holders it names
                await c._audit(audit.coordinator_event(
                    ROUND_OPEN, requester=province, request_id=request.request_id, statuses=shown,
                    batch=[audit.batch_entry(households[i].round_id, households[i].consent_id,
                                             hashlib.sha256(b).hexdigest()) for i, b in bodies.items()]))
            await self._audit_refusals(province, request.request_id, households, refused)
            for st in statuses:
                c.metrics.fanout(st.province, status_name(st.status))
            c.log.info("rounds_opened", requester=province, request_id=request.request_id, households=len(households),
                       refused=len(refused), statuses=shown)
            return household_pb2.OpenRoundBatchResponse(statuses=statuses, households=[
                household_pb2.OpenedRound(holder_set=signed[i]) if i in signed else
                household_pb2.OpenedRound(error_code=refused[i].code.name, error=public_message(refused[i]))
                for i in range(len(households))])

    async def _audit_refusals(self, province: str, request_id: str, households: list[Any],
                              refused: dict[int, Refusal]) -> None:
        """One refusal record per refusal code, naming the households it refused."""
        for record in audit.batched(((audit.refused(r.code), "", (), audit.batch_entry(households[i].round_id,
                                                                                       households[i].consent_id))
                                     for i, r in refused.items()),
                                    request_id=request_id, requester=province, extra={"call": "OpenRoundBatch"}):
            await self.c._audit(record)

    async def RouteRound(self, request: household_pb2.RouteRoundRequest, context: aio.ServicerContext) -> Any:
        c = self.c
        async with edge(context, c.log, "RouteRound", c.metrics, c._refusal_hook("RouteRound", request, context)):
            province = c._province(context)
            request_ids.check(request.round_id)
            c.consents.check_active(province, request.consent_id)
            body = self.rounds.check(request.holder_set, province, request.consent_id)
            if body.round_id != request.round_id:
                raise Refusal(ErrorCode.MALFORMED, "holder set belongs to another round")
            addressed = sorted(e.province for e in request.envelopes)
            if addressed != list(body.holders) or any(e.query.recipient != province_uri(e.province)
                                                      for e in request.envelopes):
                raise Refusal(ErrorCode.MALFORMED, "one envelope per holder of the round, sealed to that holder")
            timeout = c.router.bounded(c._timeout(context))

            def contribute(e: coordinator_pb2.Envelope) -> Callable[[Any], Awaitable[common_pb2.Sealed]]:
                async def send(stub: Any, left: float) -> common_pb2.Sealed:
                    reply = await stub.Contribute(household_pb2.ContributeRequest(query=e.query), timeout=left)
                    return reply.contribution
                return send

            answers = await asyncio.gather(*(self._forward(e.province, contribute(e), timeout) for e in request.envelopes))
            shown = await self._routed(province, request.round_id, answers, consent_id=request.consent_id)
            c.log.info("round_routed", requester=province, consent_id=request.consent_id, request_id=request.round_id,
                       statuses=shown)
            failed = [a.province for a in answers if a.status in ROUND_FAILURES]
            return household_pb2.RouteRoundResponse(answers=answers, outcome=self.rounds.outcome(request.holder_set, failed))

    async def RouteRoundBatch(self, request: household_pb2.RouteRoundBatchRequest, context: aio.ServicerContext) -> Any:
        c = self.c
        async with edge(context, c.log, "RouteRoundBatch", c.metrics, c._refusal_hook("RouteRoundBatch", request, context)):
            province = c._province(context)
            request_ids.check(request.request_id)
            rounds, envelopes = list(request.rounds), list(request.envelopes)
            if not 1 <= len(rounds) <= MAX_ROUND_BATCH or not 1 <= len(envelopes) <= MAX_ENVELOPES:
                raise Refusal(ErrorCode.TOO_MANY, f"1 to {MAX_ROUND_BATCH} rounds and 1 to {MAX_ENVELOPES} envelopes")
            expected: set[tuple[str, int]] = set()
            round_ids: list[str] = []
            for i, r in enumerate(rounds):  # every round this coordinator's, fresh, under an active consent
                c.consents.check_active(province, r.consent_id)
                body = self.rounds.check(r.holder_set, province, r.consent_id)
                round_ids.append(body.round_id)
                expected.update((h, i) for h in body.holders)
            if len(set(round_ids)) != len(round_ids):
                raise Refusal(ErrorCode.MALFORMED, "a round appears twice in the batch")
            carried: set[tuple[str, int]] = set()
            seen: set[str] = set()
            for e in envelopes:
                pairs = {(e.province, i) for i in e.rounds}
                if e.queries.recipient != province_uri(e.province) or len(pairs) != len(e.rounds) or e.province in seen:
                    raise Refusal(ErrorCode.MALFORMED, "one envelope per holder, sealed to it, each round once")
                seen.add(e.province)
                carried |= pairs
            if carried != expected:
                raise Refusal(ErrorCode.MALFORMED, "the envelopes must carry one query per holder of every round")
            timeout = c.router.bounded(c._timeout(context))

            def contribute(e: household_pb2.RoundBatchEnvelope) -> Callable[[Any], Awaitable[common_pb2.Sealed]]:
                async def send(stub: Any, left: float) -> common_pb2.Sealed:
                    reply = await stub.ContributeBatch(household_pb2.ContributeBatchRequest(
                        request_id=request.request_id, queries=e.queries), timeout=left)
                    return reply.contributions
                return send

            answers = await asyncio.gather(*(self._forward(e.province, contribute(e), timeout) for e in envelopes))
            shown = await self._routed(province, request.request_id, answers, batch=[
                audit.batch_entry(rid, r.consent_id) for rid, r in zip(round_ids, rounds, strict=True)])
            c.log.info("rounds_routed", requester=province, request_id=request.request_id, households=len(rounds),
                       statuses=shown)
            failed: list[set[str]] = [set() for _ in rounds]
            for e, a in zip(envelopes, answers, strict=True):
                if a.status in ROUND_FAILURES:
                    for i in e.rounds:
                        failed[i].add(e.province)
            outcomes = self.rounds.outcomes([(r.holder_set, f) for r, f in zip(rounds, failed, strict=True)])
            return household_pb2.RouteRoundBatchResponse(answers=answers, outcomes=outcomes)

    async def _routed(self, province: str, request_id: str, answers: list[coordinator_pb2.RoutedAnswer], *,
                      consent_id: str = "", batch: list[audit.BatchEntry] | None = None) -> dict[str, str]:
        """Audit and count what the holders answered; the statuses shown."""
        shown = {a.province: status_name(a.status) for a in answers}
        await self.c._audit(audit.coordinator_event(ROUND_ROUTE, requester=province, request_id=request_id,
                                                    consent_id=consent_id, statuses=shown, batch=batch or ()))
        for answer in answers:
            self.c.metrics.fanout(answer.province, status_name(answer.status))
        return shown

    async def _forward(self, province: str, send: Callable[[Any, float], Awaitable[common_pb2.Sealed]],
                       timeout: float) -> coordinator_pb2.RoutedAnswer:
        """Call `province`'s HouseholdHolder with `send` (on the first of its endpoints that connects, with the
        time left); its sealed reply, or the status of its failure."""
        dialled = await self.c.router.dial(province, timeout)
        if dialled.stubs is None:
            return coordinator_pb2.RoutedAnswer(province=province, status=coordinator_pb2.ROUTE_UNAVAILABLE,
                                                message=dialled.reason)
        try:
            sealed = await send(dialled.stubs[1], dialled.remaining)
        except grpc.RpcError as exc:
            status, message = status_of(exc)
            return coordinator_pb2.RoutedAnswer(province=province, status=status, message=message)
        return coordinator_pb2.RoutedAnswer(province=province, status=coordinator_pb2.ROUTE_OK, answer=sealed)
