"""A node's channels to the coordinator's replicas: each call goes to the replica that answered last, and
moves on to the next one, within the call's own time, when that replica cannot be reached."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import grpc
from grpc import aio

from node.wire.v1 import coordinator_pb2_grpc

#: What a replica that is down, cut off or hung answers: another replica may answer instead. Every other
#: status is the coordinator's answer (the same from every replica, which share one store) and is final.
FAILOVER: Final[frozenset[grpc.StatusCode]] = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
#: A replica that came back is reconnected to within this (gRPC's default backoff grows to 120 s).
MAX_RECONNECT_BACKOFF_MS: Final[int] = 2_000


class CoordinatorReplicas:
    """Stubs to every configured coordinator endpoint, in order; `call` fails over between them.

    The replicas serve one federation from one store, so any of them gives the same answers (the
    same ledger, the same signed heads): moving to another one is never a fork. A call that is not
    answered by the current replica (FAILOVER statuses) is sent to the next ones, each attempt
    getting an equal share of the time that is left, so the caller's timeout bounds the whole call;
    the replica that answers becomes the current one for the calls after it.
    """

    def __init__(self, endpoints: Sequence[str], make_channel: Callable[[str, list[tuple[str, Any]]], aio.Channel],
                 log: Any) -> None:
        if not endpoints:
            raise ValueError("at least one coordinator endpoint")
        self.endpoints = tuple(endpoints)
        self.log = log
        self._make_channel = make_channel
        self.current = 0  # index of the replica calls go to first
        self._channels: list[aio.Channel] = []
        self._stubs: list[coordinator_pb2_grpc.CoordinatorStub] = []
        self.dial()

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
        """`method` of the Coordinator service on the current replica, then on the next ones while they fail
        with a FAILOVER status and time is left; raises the last replica's error when none answered."""
        deadline = time.monotonic() + timeout
        count, first = len(self._stubs), self.current
        failed: grpc.RpcError | None = None
        for attempt in range(count):
            index = (first + attempt) % count
            left = deadline - time.monotonic()
            if left <= 0 and failed is not None:
                break
            try:
                reply = await getattr(self._stubs[index], method)(request, timeout=left / (count - attempt))
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code not in FAILOVER or count == 1:
                    raise
                failed = exc
                self.log.warning("coordinator_replica_failed", method=method, endpoint=self.endpoints[index],
                                 status=code.name)
                continue
            if index != self.current:
                self.log.info("coordinator_replica_switched", endpoint=self.endpoints[index],
                              previous=self.endpoints[self.current])
                self.current = index
            return reply
        raise failed  # type: ignore[misc]  # the loop ran at least once, and only a failure ends it here
