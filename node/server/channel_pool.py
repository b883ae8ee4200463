"""Several connections to one server, calls spread over them in turn, so `--workers N` (SO_REUSEPORT) share the load.

The kernel balances connections over a server's worker processes, not calls: over one channel
every call reaches one worker. Each channel of a pool has its own subchannel pool
(`grpc.use_local_subchannel_pool`), hence its own TCP connection and TLS handshake (made on
first use), and the pool hands its channels out round robin.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc
from grpc import aio

from node.server.failover import connected

S = TypeVar("S")
T = TypeVar("T")
#: The most connections one client opens to one server (a bound on a mistyped setting).
MAX_CONNECTIONS = 64


def pool_options(options: Sequence[tuple[str, Any]], index: int) -> list[tuple[str, Any]]:
    """`options` for the pool's `index`-th channel: a subchannel of its own (never shared with
    another channel to the same target), marked by index so no two channels' arguments coincide."""
    return [*options, ("grpc.use_local_subchannel_pool", 1), ("hedui.pool_channel", index)]


class ChannelPool(Generic[S]):
    """`size` secure aio channels to `target`, each with its stub; `stub()` and `channel()` take them in turn."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials, options: Sequence[tuple[str, Any]],
                 size: int, make_stub: Callable[[aio.Channel], S]) -> None:
        count = max(1, min(MAX_CONNECTIONS, size))
        self.channels = [aio.secure_channel(target, credentials, options=pool_options(options, i)) for i in range(count)]
        self._stubs = [make_stub(c) for c in self.channels]
        self._turn = itertools.cycle(range(count))
        self._warming = count > 1

    def _warm(self) -> None:
        """On first use, the other channels start connecting in the background (their handshakes
        off the path of the calls that will use them)."""
        self._warming = False
        for channel in self.channels[1:]:
            channel.get_state(try_to_connect=True)

    def __len__(self) -> int:
        return len(self.channels)

    def _next(self) -> int:
        if self._warming:
            self._warm()
        return next(self._turn)

    def take(self) -> tuple[aio.Channel, S]:
        """The next channel and its stub, round robin."""
        i = self._next()
        return self.channels[i], self._stubs[i]

    def picker(self, make_stub: Callable[[aio.Channel], T]) -> Callable[[], T]:
        """Stubs of another service over the same channels, handed out in the pool's one turn."""
        stubs = [make_stub(c) for c in self.channels]
        return lambda: stubs[self._next()]

    def stub(self) -> S:
        """The next channel's stub."""
        return self.take()[1]

    async def connected_stub(self, timeout: float) -> tuple[S, bool]:
        """The next channel's stub, and whether it is connected (another channel's that is connected already,
        if the next one is not); False when it could not connect within `timeout` (nothing was sent)."""
        i = self._next()
        if self.channels[i].get_state() != grpc.ChannelConnectivity.READY:
            ready = [j for j, c in enumerate(self.channels) if c.get_state() == grpc.ChannelConnectivity.READY]
            if ready:
                return self._stubs[ready[0]], True
        return self._stubs[i], await connected(self.channels[i], timeout)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
