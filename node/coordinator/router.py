"""Blind routing: find holders from their locators, forward sealed queries, collect sealed answers.

Discovery contacts no province (node.coordinator.locators). The router never opens a seal. One dead or slow province never fails a request: every
province contacted gets a status of its own, within a deadline derived from the caller's and
never longer than `[limits] max_province_wait_s`, however long the caller is prepared to wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import grpc
from grpc import aio

from node.config import MemberConfig
from node.coordinator import claims
from node.coordinator.claims import ClaimBook
from node.coordinator.directory import Directory, server_name
from node.coordinator.locators import LocatorBook
from node.crypto import possession
from node.domain.regions import province_uri
from node.errors import ErrorCode, Refusal
from node.server import failover, tls
from node.server.channel_pool import ChannelPool
from node.wire.v1 import coordinator_pb2, household_pb2_grpc, verification_pb2, verification_pb2_grpc

MARGIN_S: Final[float] = 0.1
MIN_PER_PROVINCE_S: Final[float] = 0.05
MAX_LOCKED: Final[int] = 512  # locked queries per batch envelope
MAX_DISCOVERY_TOKENS: Final[int] = 512 * 16  # discovery tokens in one batch discovery: 512 households of 16
_NOT_HELD: Final[str] = "province showed no possession of a subject it claimed"
_IMPLAUSIBLE: Final[str] = "province's held claims were contradicted too often: not routed to"
_NOT_IDENTIFIED: Final[str] = "province's server did not present its announced certificate: nothing sent"
_NO_LOCATOR: Final[str] = "province has no locator for this discovery epoch"
_NOT_LISTED: Final[str] = "province not in the directory"
_UNREACHABLE: Final[str] = "province unavailable"
T = TypeVar("T")
_Stubs = tuple[verification_pb2_grpc.VerificationStub, household_pb2_grpc.HouseholdHolderStub]


def status_name(status: int) -> str:
    """"OK", "NO_MATCH", ... for a RouteStatus value."""
    return coordinator_pb2.RouteStatus.Name(status).removeprefix("ROUTE_")


#: Route statuses that say nothing about whether a province holds data (it could not be asked).
ROUTE_FAILURES: Final[frozenset[int]] = frozenset({
    coordinator_pb2.ROUTE_UNAVAILABLE, coordinator_pb2.ROUTE_DEADLINE_EXCEEDED, coordinator_pb2.ROUTE_DENIED})


def status_of(error: grpc.RpcError) -> tuple[int, str]:
    """The RouteStatus and public message of a province's failed call."""
    return _status_of(error)


def _status_of(error: grpc.RpcError) -> tuple[int, str]:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    raw = (error.details() if hasattr(error, "details") else "") or ""
    details = (raw or code.name.lower()).splitlines()[0][:200]
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return coordinator_pb2.ROUTE_DEADLINE_EXCEEDED, "deadline exceeded"
    if code == grpc.StatusCode.UNAVAILABLE and tls.identity_refused(raw):  # refused in the handshake
        return coordinator_pb2.ROUTE_UNAVAILABLE, _NOT_IDENTIFIED
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
                grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return coordinator_pb2.ROUTE_UNAVAILABLE, "province unavailable"
    return coordinator_pb2.ROUTE_DENIED, details


def per_province_timeout(remaining: float | None, default: float) -> float:
    """The deadline given to each province: the caller's remaining time less a margin for the reply
    (10 %, at least MARGIN_S), so a stalled province is reported before the caller gives up."""
    budget = default if remaining is None else remaining
    return max(MIN_PER_PROVINCE_S, budget - max(MARGIN_S, 0.1 * budget))


class Router:
    """Channels to every province in the directory; discovery from the locators, and the routed fan-out."""

    def __init__(self, cfg: MemberConfig, directory: Directory, claims: ClaimBook | None = None,
                 locators: LocatorBook | None = None) -> None:
        self.cfg = cfg
        self.locators = locators
        self.directory = directory
        self.claims = claims
        self._credentials = tls.channel_credentials(cfg)
        # province -> (TLS name, endpoint -> pool): `[limits] connections_per_peer` connections per endpoint,
        # calls in turn, so a node's --workers share them; a new certificate redials, a dropped endpoint is closed
        self._channels: dict[str, tuple[str, dict[str, ChannelPool[_Stubs]]]] = {}
        self._order = failover.EndpointOrder()  # a province's endpoints in turn, those failing lately last

    def _bounded(self, timeout: float) -> float:
        """How long to wait on one province: never beyond the configured bound."""
        return min(timeout, self.cfg.limits.max_province_wait_s)

    def _pools(self, province: str) -> list[tuple[str, ChannelPool[_Stubs]]] | None:
        """The province's endpoints with their connections, in the order to try them; None when it is not listed."""
        entry = self.directory.entries().get(province)
        if entry is None:
            return None
        name = server_name(entry)
        known = self._channels.get(province)
        if known is None or known[0] != name:  # another certificate: every connection is dialled again
            if known is not None:
                self._close_later(known[1].values())
            known = (name, {})
            self._channels[province] = known
        pools = known[1]
        gone = [e for e in pools if e not in entry.endpoints]
        self._close_later(pools.pop(e) for e in gone)
        for endpoint in entry.endpoints:
            if endpoint not in pools:
                # An announced HOST:PORT (checked by verify_announcement) is always resolved as a name or
                # address: never read as a gRPC target scheme ("unix:", "vsock:", ...). Every handshake requires
                # the announced certificate's own name (or the province's), so nothing reaches another server.
                pools[endpoint] = ChannelPool(
                    f"dns:///{endpoint}", self._credentials,
                    [*tls.channel_options(self.cfg.limits, server_name=name), *failover.RECONNECT_OPTIONS],
                    self.cfg.limits.connections_per_peer, _make_stubs)
        return [(e, pools[e]) for e in self._order.order(entry.endpoints)]

    @staticmethod
    def _close_later(pools: Iterable[ChannelPool[_Stubs]]) -> None:
        for pool in pools:
            asyncio.get_running_loop().create_task(pool.close())

    async def dial(self, province: str, timeout: float) -> Dialled:
        """Stubs over a connection to the first of the province's endpoints that connects (each gets its
        share of `timeout`, node.server.failover), and the time left for the call.

        Only an endpoint that could not be connected to is passed over: nothing was sent to it. When
        none connects and time is left, the stubs of the last one tried are returned all the same: a
        call on them fails at once with its connection's error (nothing is sent) unless it has just
        connected, and that call is then the one send.
        """
        pools = self._pools(province)
        if pools is None:
            return Dialled(None, 0.0, _NOT_LISTED)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: _Stubs | None = None
        for k, (endpoint, pool) in enumerate(pools):
            stubs, ok = await pool.connected_stub(failover.attempt_timeout(deadline, len(pools) - k, loop.time()))
            if ok:
                self._order.succeeded(endpoint)
                return Dialled(stubs, max(0.001, deadline - loop.time()), "")  # never past the deadline
            self._order.failed(endpoint)
            last = stubs
        remaining = deadline - loop.time()
        if remaining < failover.MIN_ATTEMPT_S:
            return Dialled(None, 0.0, _UNREACHABLE)
        return Dialled(last, remaining, "")

    def _stubs(self, province: str) -> _Stubs | None:
        pools = self._pools(province)
        return None if pools is None else pools[0][1].stub()

    def _stub(self, province: str) -> verification_pb2_grpc.VerificationStub | None:
        stubs = self._stubs(province)
        return None if stubs is None else stubs[0]

    def household_stub(self, province: str) -> household_pb2_grpc.HouseholdHolderStub | None:
        """The province's HouseholdHolder service on its first endpoint, on the next of its connections
        (as its Verification service); `dial` fails over between endpoints."""
        stubs = self._stubs(province)
        return None if stubs is None else stubs[1]

    def connections(self, province: str) -> int:
        """How many connections the router keeps to `province`, over all its endpoints (0 before its first call)."""
        known = self._channels.get(province)
        return 0 if known is None else sum(len(pool) for pool in known[1].values())

    def bounded(self, timeout: float) -> float:
        """How long to wait on one province: never beyond `[limits] max_province_wait_s`."""
        return self._bounded(timeout)

    async def close(self) -> None:
        for _, pools in self._channels.values():
            for pool in pools.values():
                await pool.close()
        self._channels.clear()

    async def _each(self, provinces: Sequence[str], call: Callable[[str], Awaitable[T]]) -> list[T]:
        return list(await asyncio.gather(*(call(p) for p in provinces)))

    def holds(self, requester: str, edts: Sequence[bytes], epoch: int, *,
              judged: bool = True) -> tuple[dict[str, set[int]], list[coordinator_pb2.ProvinceStatus]]:
        """Which other provinces' locators match which of the discovery tokens (indexes per province).

        Answered from the locators alone: no province is contacted, so none learns of the query.
        A province without a locator for the epoch is UNAVAILABLE (it may hold data; it cannot be
        told); one no longer routed to (node.coordinator.claims) is IMPLAUSIBLE. When the matches
        lead to `judged` (locked, routed) queries, the false matches each locator is expected to
        give are added to the claim checks, which then do not take them for false claims.
        """
        if self.locators is None:
            raise Refusal(ErrorCode.UNAVAILABLE, "this coordinator holds no locators")
        provinces = sorted(p for p in self.directory.entries() if p != requester)
        refused = {p for p in provinces if self.claims is not None and self.claims.refuses(p, requester)}
        rates: dict[str, float] = {}
        found = self.locators.matches([p for p in provinces if p not in refused], edts, epoch, rates)
        if judged and self.claims is not None and rates:
            distinct = len(set(edts))
            for province, rate in rates.items():
                self.claims.discovered(province, requester, distinct * rate)
        held: dict[str, set[int]] = {}
        statuses: list[coordinator_pb2.ProvinceStatus] = []
        for province in provinces:
            indexes = found.get(province)
            if province in refused:
                statuses.append(coordinator_pb2.ProvinceStatus(province=province, status=coordinator_pb2.ROUTE_IMPLAUSIBLE,
                                                               message=_IMPLAUSIBLE))
            elif indexes is None:
                statuses.append(coordinator_pb2.ProvinceStatus(province=province, status=coordinator_pb2.ROUTE_UNAVAILABLE,
                                                               message=_NO_LOCATOR))
            elif indexes:
                held[province] = indexes
                statuses.append(coordinator_pb2.ProvinceStatus(province=province, status=coordinator_pb2.ROUTE_OK))
            else:
                statuses.append(coordinator_pb2.ProvinceStatus(province=province, status=coordinator_pb2.ROUTE_NO_MATCH))
        return held, statuses

    def holders_of(self, requester: str, households: Sequence[Sequence[bytes] | None], epoch: int, *,
                   judged: bool = True) -> tuple[list[set[str]], list[coordinator_pb2.ProvinceStatus]]:
        """Per household (None: not asked), the other provinces whose locators match any of its
        discovery tokens, from one `holds` over every household's tokens."""
        tokens: list[bytes] = []
        owner: list[int] = []
        for i, household in enumerate(households):
            if household is not None:
                tokens.extend(household)
                owner.extend([i] * len(household))
        if len(tokens) > MAX_DISCOVERY_TOKENS:
            raise Refusal(ErrorCode.TOO_MANY, f"at most {MAX_DISCOVERY_TOKENS} subjects per discovery batch")
        found: list[set[str]] = [set() for _ in households]
        if not tokens:
            return found, []
        held, statuses = self.holds(requester, tokens, epoch, judged=judged)
        for province, indexes in held.items():
            for index in indexes:
                found[owner[index]].add(province)
        return found, statuses

    def discover(self, requester: str, request: coordinator_pb2.DiscoverRequest) -> coordinator_pb2.DiscoverResponse:
        """Which other provinces' locators match any of one household's discovery tokens."""
        held, statuses = self.holds(requester, request.discovery_tokens, request.epoch)
        return coordinator_pb2.DiscoverResponse(holders=sorted(held), statuses=statuses,
                                                directory_digest=self.directory.digest())

    async def route(self, request: Any, timeout: float, requester: str = "", *, batch: bool = False) -> Any:
        """Forward each sealed query (or query batch) to its province; return every sealed answer unmodified.

        An envelope addressed to the requester itself is refused: a province asks its own node
        directly, and a self-addressed route would only let it hold the coordinator's calls.
        Each reply is judged against the envelope's possession commitments (node.coordinator.claims):
        a holder that shows no proof gets NOT_HELD and nothing is forwarded.
        """
        seen: set[str] = set()
        for envelope in request.envelopes:
            if envelope.province == requester:
                raise Refusal(ErrorCode.MALFORMED, "an envelope is addressed to the requester itself")
            if envelope.province in seen or envelope.query.recipient != province_uri(envelope.province):
                raise Refusal(ErrorCode.MALFORMED, "one envelope per province, sealed to that province")
            commitments = envelope.possession_commitments
            if not (1 <= len(commitments) <= MAX_LOCKED if batch else len(commitments) == 1) or \
                    any(len(c) != 32 for c in commitments):
                raise Refusal(ErrorCode.MALFORMED, "each envelope carries one 32-byte possession commitment per query")
            seen.add(envelope.province)
        timeout = self._bounded(timeout)

        async def forward(envelope: Any) -> coordinator_pb2.RoutedAnswer:
            province = envelope.province
            if self.claims is not None and self.claims.refuses(province, requester):
                return coordinator_pb2.RoutedAnswer(province=province, status=coordinator_pb2.ROUTE_IMPLAUSIBLE,
                                                    message=_IMPLAUSIBLE)
            dialled = await self.dial(province, timeout)
            if dialled.stubs is None:
                return coordinator_pb2.RoutedAnswer(province=province, status=coordinator_pb2.ROUTE_UNAVAILABLE,
                                                    message=dialled.reason)
            stub, left = dialled.stubs[0], dialled.remaining
            commitments = list(envelope.possession_commitments)
            try:
                if batch:
                    reply = await stub.VerifyBatch(verification_pb2.VerifyBatchRequest(sealed=envelope.query), timeout=left)
                    verdicts = claims.judge_answer(commitments, reply.possession_proofs)
                else:
                    reply = await stub.Verify(verification_pb2.VerifyRequest(sealed=envelope.query), timeout=left)
                    verdicts = claims.judge_answer(commitments, [reply.possession_proof])
            except grpc.RpcError as exc:
                status, message = _status_of(exc)
                verdicts = claims.judge_refusal(commitments, _trailing_proof(exc),
                                                transport=status != coordinator_pb2.ROUTE_DENIED)
                self._record(province, requester, verdicts, request)
                if verdicts and not any(verdicts):
                    return coordinator_pb2.RoutedAnswer(province=province, status=coordinator_pb2.ROUTE_NOT_HELD,
                                                        message=_NOT_HELD)
                return coordinator_pb2.RoutedAnswer(province=province, status=status, message=message)
            self._record(province, requester, verdicts, request)
            if not any(verdicts):  # it could not unlock anything: whatever it sent is not an answer
                return coordinator_pb2.RoutedAnswer(province=province, status=coordinator_pb2.ROUTE_NOT_HELD,
                                                    message=_NOT_HELD)
            if not batch and reply.WhichOneof("answer") != "sealed":
                return coordinator_pb2.RoutedAnswer(province=province, status=coordinator_pb2.ROUTE_DENIED,
                                                    message="holder did not seal its answer")
            return coordinator_pb2.RoutedAnswer(province=province, status=coordinator_pb2.ROUTE_OK, answer=reply.sealed)

        answers = await self._each(list(request.envelopes), forward)
        if batch:
            return coordinator_pb2.RouteBatchResponse(answers=answers)
        return coordinator_pb2.RouteResponse(answers=answers)

    def _record(self, province: str, requester: str, verdicts: list[bool], request: Any) -> None:
        if self.claims is not None:
            self.claims.record(province, requester, verdicts, request_id=request.request_id)


@dataclass(frozen=True)
class Dialled:
    """A province dialled: stubs to call it on (None: none reached in time, `reason` says why) and the time left."""

    stubs: _Stubs | None
    remaining: float
    reason: str


def _make_stubs(channel: aio.Channel) -> _Stubs:
    return verification_pb2_grpc.VerificationStub(channel), household_pb2_grpc.HouseholdHolderStub(channel)


def _trailing_proof(error: grpc.RpcError) -> verification_pb2.PossessionProof | None:
    """The holder's possession proof from a refusal's trailing metadata, if it sent one."""
    try:
        for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
            if key == possession.PROOF_METADATA and isinstance(value, bytes):
                return verification_pb2.PossessionProof.FromString(value)
    except Exception:  # noqa: BLE001 - no or undecodable metadata: no proof
        return None
    return None
