"""Who may start a call: identity from mutual TLS, a deadline on every call, a rate limit per peer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from grpc import aio

from node.config import Limits
from node.crypto.pki import TrustAnchor
from node.errors import ErrorCode, Refusal
from node.server.edge import peer_identity


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per peer identity: `rate` calls a second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def allow(self, peer: str) -> bool:
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(peer)
            if bucket is None:
                bucket = self._buckets[peer] = _Bucket(float(self.burst), now)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            if bucket.tokens < 1.0:
                return False
            bucket.tokens -= 1.0
            return True


class Admission:
    """The checks every Hedui handler runs first."""

    def __init__(self, anchor: TrustAnchor, limits: Limits) -> None:
        self.anchor = anchor
        self.limiter = RateLimiter(limits.rate_per_peer_per_s, limits.rate_burst)

    def admit(self, context: aio.ServicerContext) -> str:
        """The caller's federation identity; Refusal when unauthenticated, undeadlined or over its rate."""
        identity = peer_identity(context, self.anchor)
        if context.time_remaining() is None:
            raise Refusal(ErrorCode.MALFORMED, "every call must carry a deadline")
        if not self.limiter.allow(identity):
            raise Refusal(ErrorCode.RATE_LIMITED)
        return identity


def check_deadline(context: aio.ServicerContext) -> None:
    """Stop work the caller has stopped waiting for."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise Refusal(ErrorCode.DEADLINE)
