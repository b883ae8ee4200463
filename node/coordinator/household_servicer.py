"""gRPC adapter for the HouseholdRounds service: open a round (discovery + a signed holder set),
then forward each sealed contribution query to its holder and every sealed reply back unopened."""

from __future__ import annotations

import asyncio
from typing import Any, Final

import grpc
from grpc import aio

from node.coordinator.router import ROUTE_FAILURES, status_name, status_of
from node.coordinator.rounds import RoundBook
from node.domain import request_ids
from node.domain.regions import province_uri
from node.errors import ErrorCode, Refusal
from node.server.edge import edge
from node.store import audit
from node.wire.v1 import coordinator_pb2, household_pb2

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
                c._check_discovery(province, request.consent_id, request.tokens)
                consent = c.consents.check_active(province, request.consent_id)
                if len(set(request.tokens)) != len(consent.subject_commitments):
                    raise Refusal(ErrorCode.MALFORMED, "a round covers every member of the consented household")
                held, statuses = await c.router.holds(province, list(request.tokens), request.round_id, c._timeout(context))
                unknown = {s.province for s in statuses if s.status in ROUTE_FAILURES}
                signed = self.rounds.open(province, request.consent_id, request.round_id, held, missing=unknown)
            body = household_pb2.HolderSetBody.FromString(signed.body)
            shown = {s.province: status_name(s.status) for s in statuses} | {p: "HOLDER" for p in body.holders}
            await c._audit(audit.coordinator_event(ROUND_OPEN, requester=province, request_id=request.round_id,
                                                   consent_id=request.consent_id, statuses=shown))
            c.log.info("round_opened", requester=province, consent_id=request.consent_id, request_id=request.round_id,
                       holders=list(body.holders), missing=list(body.missing))
            return household_pb2.OpenRoundResponse(holder_set=signed, statuses=statuses)

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
            answers = await asyncio.gather(*(self._forward(e, timeout) for e in request.envelopes))
            shown = {a.province: status_name(a.status) for a in answers}
            await c._audit(audit.coordinator_event(ROUND_ROUTE, requester=province, request_id=request.round_id,
                                                   consent_id=request.consent_id, statuses=shown))
            for answer in answers:
                c.metrics.fanout(answer.province, status_name(answer.status))
            c.log.info("round_routed", requester=province, consent_id=request.consent_id, request_id=request.round_id,
                       statuses=shown)
            failed = [a.province for a in answers if a.status in ROUND_FAILURES]
            return household_pb2.RouteRoundResponse(answers=answers, outcome=self.rounds.outcome(request.holder_set, failed))

    async def _forward(self, envelope: coordinator_pb2.Envelope, timeout: float) -> coordinator_pb2.RoutedAnswer:
        province = envelope.province
        stub = self.c.router.household_stub(province)
        if stub is None:
            return coordinator_pb2.RoutedAnswer(province=province, status=coordinator_pb2.ROUTE_UNAVAILABLE,
                                                message="province not in the directory")
        try:
            reply = await stub.Contribute(household_pb2.ContributeRequest(query=envelope.query), timeout=timeout)
        except grpc.RpcError as exc:
            status, message = status_of(exc)
            return coordinator_pb2.RoutedAnswer(province=province, status=status, message=message)
        return coordinator_pb2.RoutedAnswer(province=province, status=coordinator_pb2.ROUTE_OK, answer=reply.contribution)
