"""Trying a member's endpoints in turn within one deadline, and only where a retry cannot repeat a call.

The rule (docs/PROTOCOL.md §10.1): a call moves on to the next endpoint only when the endpoint
could not be *connected to* (connection refused, no route, TLS handshake refused, no
connection within the attempt's share of the time): then no request was sent, so no server
can have processed it. A call that was sent on a connection and then failed (UNAVAILABLE,
DEADLINE_EXCEEDED, a reset) may have been processed; it is never sent again (a signed query
re-sent to a replica sharing the nonce store would be refused as a replay anyway) and its
failure is reported. A failed endpoint goes to the back of the order for `PENALTY_S`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

import grpc
from grpc import aio

#: How long an endpoint that could not be connected to is tried after the member's others.
PENALTY_S: Final[float] = 30.0
#: The least time one connection attempt is given (a shorter share is not worth starting).
MIN_ATTEMPT_S: Final[float] = 0.05
#: Reconnection back-off for channels that fail over: 0.5 s growing to 2 s (gRPC's default grows to 120 s, so
#: a healed endpoint would stay unused for minutes). gRPC also takes its "min reconnect back-off" as the least
#: time one connection attempt may take: 5 s, for slow links (a caller's attempt share ends waiting sooner).
RECONNECT_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    ("grpc.initial_reconnect_backoff_ms", 500), ("grpc.min_reconnect_backoff_ms", 5000),
    ("grpc.max_reconnect_backoff_ms", 2000))


class EndpointOrder:
    """The order to try endpoints in: as listed (a stable order), those that failed lately moved to the back."""

    def __init__(self, *, penalty_s: float = PENALTY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.penalty_s = penalty_s
        self.clock = clock
        self._failed: dict[str, float] = {}  # endpoint -> until when it goes last
        self._lock = threading.Lock()

    def order(self, endpoints: Sequence[str]) -> list[str]:
        """`endpoints`, the ones under penalty last (each group keeps the listed order)."""
        now = self.clock()
        with self._lock:
            late = {e for e in endpoints if self._failed.get(e, 0.0) > now}
        return [e for e in endpoints if e not in late] + [e for e in endpoints if e in late]

    def failed(self, endpoint: str) -> None:
        with self._lock:
            self._failed[endpoint] = self.clock() + self.penalty_s

    def succeeded(self, endpoint: str) -> None:
        with self._lock:
            self._failed.pop(endpoint, None)


def attempt_timeout(deadline: float, left: int, now: float) -> float:
    """The time one connection attempt gets: an equal share of what remains of `deadline` among the
    `left` endpoints still to try (all of it for the last), never past the deadline."""
    remaining = max(0.0, deadline - now)
    return remaining if left <= 1 else min(remaining, max(MIN_ATTEMPT_S, remaining / left))


async def connected(channel: aio.Channel, timeout: float) -> bool:
    """Whether `channel` is (or gets) connected within `timeout`; False as soon as its connection
    attempt fails (refused, unreachable, handshake refused) or the time is up. Nothing is sent."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            return False
        left = end - loop.time()
        if left <= 0:
            return False
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), left)
        except TimeoutError:
            return False
        state = channel.get_state(try_to_connect=True)
    return True


def connected_blocking(channel: grpc.Channel, timeout: float) -> bool:
    """`connected` for a synchronous channel: True once READY, False when its attempt fails or `timeout` passes."""
    done = threading.Event()
    final: list[grpc.ChannelConnectivity] = []

    def seen(state: grpc.ChannelConnectivity) -> None:
        if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                     grpc.ChannelConnectivity.SHUTDOWN):
            final.append(state)
            done.set()

    channel.subscribe(seen, try_to_connect=True)
    try:
        done.wait(timeout)
    finally:
        channel.unsubscribe(seen)
    return final[:1] == [grpc.ChannelConnectivity.READY]


def close_when_unwatched(channel: grpc.Channel) -> None:
    """Close a synchronous channel `connected_blocking` watched once gRPC's watcher thread has let go of it
    (it polls for up to 0.2 s after the last unsubscription and fails loudly on a channel closed under it)."""
    timer = threading.Timer(0.5, channel.close)
    timer.daemon = True
    timer.start()
