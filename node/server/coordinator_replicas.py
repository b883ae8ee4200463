"""Calling the coordinator's replicas: each call goes to the replica that answered last, and moves on to the
next one, within the call's own time, when that replica cannot be reached (one rule, sync and aio callers).

The rule (docs/PROTOCOL.md §10.1): a replica that could not be *connected to* within its share of the
time is passed over (nothing was sent to it). A call that was sent and failed with UNAVAILABLE or
DEADLINE_EXCEEDED is sent again to the next replica only when `RESEND` names its method (reads, idempotent
writes, and registrations whose signed nonce the replicas share, so a resend registers at most once);
any other failure, and any failure of another method once sent, is the call's outcome.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import grpc
from grpc import aio

from node.server import failover
from node.wire.v1 import coordinator_pb2_grpc

#: What a replica that is down, cut off or hung answers: another replica may answer instead. Every other
#: status is the coordinator's answer (the same from every replica, which share one store) and is final.
FAILOVER: Final[frozenset[grpc.StatusCode]] = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
#: A replica that came back is reconnected to within this (gRPC's default backoff grows to 120 s).
MAX_RECONNECT_BACKOFF_MS: Final[int] = 2_000
#: Methods whose request may go to another replica after one that may have processed it failed (§10.1).
RESEND: Final[frozenset[str]] = frozenset({
    # reads: no effect at the coordinator but an audit line
    "GetConsent", "Directory", "ConsentUpdates", "HeldLocators", "Revocations", "LatestCheckpoint",
    "Discover", "DiscoverBatch",
    # idempotent: one revocation entry per consent (the answer is its state); the same signed bytes again
    "RevokeConsent", "Announce", "PublishLocator", "SubmitCheckpoint",
    # signed nonces in the shared nonce store: a resend is registered, or refused as a replay (never twice)
    "RegisterConsent", "RegisterConsentBatch",
})
# Never resent once sent: Route, RouteBatch, RouteRound, RouteRoundBatch (forwarded to holders, whose
# nonce stores would refuse the same signed queries: a lost answer would become a refusal), OpenRound,
# OpenRoundBatch (the round id is spent in the shared nonce store), PublishStandards (a resend of the
# version just published is refused as "not above the version in force").

#: A replica not connected within this is passed over however long the call may take: gRPC's own connection
#: attempt ends after 5 s with failover.RECONNECT_OPTIONS, so waiting longer only waits for its back-off.
CONNECT_S: Final[float] = 5.0

R = TypeVar("R")


class ReplicaOrder:
    """Where a call starts: the replica that answered last (then the others, in the configured order)."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        if not endpoints:
            raise ValueError("at least one coordinator endpoint")
        self.endpoints = tuple(endpoints)
        self.current = 0
        self._lock = threading.Lock()

    def attempts(self) -> list[int]:
        first, count = self.current, len(self.endpoints)
        return [(first + k) % count for k in range(count)]

    def answered(self, index: int, log: Any = None) -> None:
        with self._lock:
            previous, self.current = self.current, index
        if previous != index and log is not None:
            log.info("coordinator_replica_switched", endpoint=self.endpoints[index], previous=self.endpoints[previous])


_SHARED: dict[tuple[str, ...], ReplicaOrder] = {}
_SHARED_LOCK = threading.Lock()


def shared_order(endpoints: Sequence[str]) -> ReplicaOrder:
    """The process's one order for this list of replicas: a client made after another starts where it ended."""
    with _SHARED_LOCK:
        return _SHARED.setdefault(tuple(endpoints), ReplicaOrder(endpoints))


@dataclass(frozen=True)
class Attempt:
    """One replica tried: its index, the time its connection may take, whether it is the last one."""

    index: int
    connect_s: float
    last: bool


class Walk:
    """One call's way through the replicas within `timeout` (an equal share of what is left per replica)."""

    def __init__(self, order: ReplicaOrder, method: str, timeout: float, log: Any = None) -> None:
        self.order, self.method, self.log = order, method, log
        self.deadline = time.monotonic() + timeout
        self._todo = order.attempts()
        #: The endpoints a request was sent to that failed without an answer (it may have been processed there).
        self.unanswered: list[str] = []
        self.tried: list[str] = []  # every endpoint attempted, in order

    def next(self) -> Attempt | None:
        if not self._todo:
            return None
        index = self._todo.pop(0)
        self.tried.append(self.order.endpoints[index])
        share = failover.attempt_timeout(self.deadline, len(self._todo) + 1, time.monotonic())
        return Attempt(index, min(CONNECT_S, share), not self._todo)

    def call_timeout(self, attempt: Attempt) -> float:
        """The sent call's time: its share when it may be resent elsewhere, else all that is left."""
        now = time.monotonic()
        if attempt.last or self.method not in RESEND:
            return max(0.001, self.deadline - now)
        return max(0.001, failover.attempt_timeout(self.deadline, len(self._todo) + 1, now))

    def passed_over(self, attempt: Attempt) -> None:
        self._warn(attempt, "not connected")

    def failed(self, attempt: Attempt, exc: grpc.RpcError) -> None:
        """Raise `exc` when it is the call's outcome; else note it and let the next replica be tried."""
        code = exc.code() if hasattr(exc, "code") else None
        if code in FAILOVER:
            self.unanswered.append(self.order.endpoints[attempt.index])
        if code not in FAILOVER or attempt.last or self.method not in RESEND:
            raise exc
        self._warn(attempt, code.name)

    def answered(self, attempt: Attempt, reply: R) -> R:
        self.order.answered(attempt.index, self.log)
        return reply

    def _warn(self, attempt: Attempt, why: str) -> None:
        if self.log is not None:
            self.log.warning("coordinator_replica_failed", method=self.method,
                             endpoint=self.order.endpoints[attempt.index], status=why)


async def call_async(walk: Walk, connect: Callable[[int, float], Awaitable[bool]],
                     invoke: Callable[[int, float], Awaitable[R]]) -> R:
    """The walk with aio I/O: `connect(index, seconds)` says whether that replica is connected (nothing sent),
    `invoke(index, seconds)` makes the call there. The last replica is called without the connection check."""
    while (attempt := walk.next()) is not None:
        if attempt.last or await connect(attempt.index, attempt.connect_s):
            try:
                return walk.answered(attempt, await invoke(attempt.index, walk.call_timeout(attempt)))
            except grpc.RpcError as exc:
                walk.failed(attempt, exc)
        else:
            walk.passed_over(attempt)
    raise AssertionError("the last replica's attempt answers or raises")


def call_blocking(walk: Walk, connect: Callable[[int, float], bool], invoke: Callable[[int, float], R]) -> R:
    """`call_async` with blocking I/O: the same coroutine, which never suspends, run to its end here."""
    async def connect_now(index: int, seconds: float) -> bool:
        return connect(index, seconds)

    async def invoke_now(index: int, seconds: float) -> R:
        return invoke(index, seconds)

    steps = call_async(walk, connect_now, invoke_now)
    try:
        steps.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    steps.close()
    raise RuntimeError("a blocking coordinator call suspended")


class CoordinatorReplicas:
    """A node's aio stubs to every configured coordinator endpoint, in order; `call` fails over between them.

    The replicas serve one federation from one store, so any of them gives the same answers (the
    same ledger, the same signed heads): moving to another one is never a fork.
    """

    def __init__(self, endpoints: Sequence[str], make_channel: Callable[[str, list[tuple[str, Any]]], aio.Channel],
                 log: Any) -> None:
        self.order = ReplicaOrder(endpoints)  # the node's own: its link's calls only
        self.endpoints = self.order.endpoints
        self.log = log
        self._make_channel = make_channel
        self._channels: list[aio.Channel] = []
        self._stubs: list[coordinator_pb2_grpc.CoordinatorStub] = []
        self.dial()

    @property
    def current(self) -> int:
        """Index of the replica calls go to first."""
        return self.order.current

    def dial(self) -> list[aio.Channel]:
        """(Re)open a channel to every endpoint; return the channels they replace (the caller closes them)."""
        old = self._channels
        options = [("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS)]
        self._channels = [self._make_channel(e, options) for e in self.endpoints]
        self._stubs = [coordinator_pb2_grpc.CoordinatorStub(c) for c in self._channels]
        return old

    @property
    def channels(self) -> list[aio.Channel]:
        return list(self._channels)

    async def call(self, method: str, request: Any, timeout: float) -> Any:
        """`method` of the Coordinator service by the rule above; raises the last replica's error when none answered."""
        channels, stubs = self._channels, self._stubs

        async def connect(index: int, seconds: float) -> bool:
            return await failover.connected(channels[index], seconds)

        async def invoke(index: int, seconds: float) -> Any:
            return await getattr(stubs[index], method)(request, timeout=seconds)

        return await call_async(Walk(self.order, method, timeout, self.log), connect, invoke)
