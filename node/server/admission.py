"""Who may start a call: identity from mutual TLS, a deadline, a rate and a share of concurrent calls per peer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from grpc import aio

from node.config import Limits
from node.crypto.errors import CertificateRejected
from node.crypto.pki import CheckedCertificate, TrustAnchor
from node.errors import ErrorCode, Refusal
from node.server.edge import peer_certificate, peer_identity

UNAUTHENTICATED_PEER = ""  # the one share every caller without an accepted certificate draws from


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


class CallPool:
    """Calls in progress of one kind: at most `capacity` in all, and `per_peer` for any one caller.

    A peer in `unshared` (the coordinator, at a node: it relays every province's calls, each
    already held to its share at the coordinator) is bounded by the capacity only.
    """

    def __init__(self, capacity: int, per_peer: int, unshared: frozenset[str] = frozenset()) -> None:
        self.capacity = capacity
        self.per_peer = per_peer
        self.unshared = unshared
        self.total = 0
        self.held: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, peer: str) -> None:
        """Count one more call of `peer`; Refusal(OVERLOADED) when its share or the pool is used up."""
        with self._lock:
            held = self.held.get(peer, 0)
            if held >= self.per_peer and peer not in self.unshared:
                raise Refusal(ErrorCode.OVERLOADED, "this caller's share of concurrent calls is in use")
            if self.total >= self.capacity:
                raise Refusal(ErrorCode.OVERLOADED)
            self.held[peer] = held + 1
            self.total += 1

    def give(self, peer: str) -> None:
        """A call of `peer` ended."""
        with self._lock:
            self.total -= 1
            held = self.held[peer] - 1
            if held:
                self.held[peer] = held
            else:
                del self.held[peer]


@dataclass
class Ticket:
    """One admitted call's place in a pool, given back when the call ends (a context manager)."""

    identity: str | None  # the caller's federation identity; None when its certificate is not accepted
    pool: CallPool
    _peer: str

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *_: object) -> None:
        self.pool.give(self._peer)


class Peer:
    """What the TLS peer of one call is: its checked certificate, or why it is not accepted."""

    __slots__ = ("context", "checked", "rejection")

    def __init__(self, context: aio.ServicerContext, checked: CheckedCertificate | None,
                 rejection: Refusal | None) -> None:
        self.context, self.checked, self.rejection = context, checked, rejection


# The peer of the call being handled, as `Admission.enter` found it. grpc.aio runs every call in
# a task of its own and a task copies the context variables it starts with, so a value set by
# the gate is seen only by the handler of that same call; `admit` also compares the context
# object, so a value can never stand for another call.
_PEER: ContextVar[Peer | None] = ContextVar("hedui_admitted_peer", default=None)


class Admission:
    """The checks every call passes: a place in a pool before its request is read, then the handler's `admit`.

    Calls to `reserved` methods (the feeds that keep nodes in force) have a pool of their own,
    so no amount of other traffic can crowd them out, and use the general pool when it is full.
    The peer's certificate is parsed and validated once per call (in `identify`); `admit`
    re-applies only what can change during a call: revocation and the validity window.
    """

    def __init__(self, anchor: TrustAnchor, limits: Limits, *, reserved: frozenset[str] = frozenset(),
                 relay: str | None = None) -> None:
        self.anchor = anchor
        self.limiter = RateLimiter(limits.rate_per_peer_per_s, limits.rate_burst)
        unshared = frozenset({relay}) if relay else frozenset()
        self.calls = CallPool(limits.max_concurrent_rpcs, limits.max_concurrent_per_peer, unshared)
        self.feeds = CallPool(limits.reserved_feed_rpcs, limits.max_feed_calls_per_peer, unshared)
        self.reserved = reserved

    def identify(self, context: aio.ServicerContext) -> Peer:
        """The call's TLS peer, checked once (see `peer_certificate`), remembered for this call's `admit`."""
        try:
            peer = Peer(context, peer_certificate(context, self.anchor), None)
        except Refusal as refusal:
            peer = Peer(context, None, refusal)
        _PEER.set(peer)
        return peer

    def enter(self, context: aio.ServicerContext, method: str) -> Ticket:
        """A place for a call to `method` ("/service/Method") in its pool; Refusal(OVERLOADED) when full.

        Run before the request message is read, so a caller that opens calls and never sends
        them holds its own share only. A caller whose certificate is not accepted is let
        through in one shared share, for the handler to refuse (and audit) it.
        """
        peer = _PEER.get()
        if peer is None or peer.context is not context:
            peer = self.identify(context)
        identity = peer.checked.identity if peer.checked is not None else None
        share = identity or UNAUTHENTICATED_PEER
        if method in self.reserved:
            try:
                self.feeds.take(share)
                return Ticket(identity, self.feeds, share)
            except Refusal:
                pass  # the reserve (or this caller's part of it) is in use: a feed may use the general pool too
        self.calls.take(share)
        return Ticket(identity, self.calls, share)

    def admit(self, context: aio.ServicerContext) -> str:
        """The caller's federation identity; Refusal when unauthenticated, undeadlined or over its rate."""
        identity = self._identity(context)
        if context.time_remaining() is None:
            raise Refusal(ErrorCode.MALFORMED, "every call must carry a deadline")
        if not self.limiter.allow(identity):
            raise Refusal(ErrorCode.RATE_LIMITED)
        return identity

    def _identity(self, context: aio.ServicerContext) -> str:
        """The identity `identify` found for this very call, revocation and validity checked again; else a full check."""
        peer = _PEER.get()
        if peer is None or peer.context is not context:
            return peer_identity(context, self.anchor)
        if peer.rejection is not None:
            raise peer.rejection
        assert peer.checked is not None
        try:
            return self.anchor.recheck(peer.checked)
        except CertificateRejected as exc:
            raise Refusal(ErrorCode.UNAUTHENTICATED, str(exc)) from None


def check_deadline(context: aio.ServicerContext) -> None:
    """Stop work the caller has stopped waiting for."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise Refusal(ErrorCode.DEADLINE)
