"""ChannelPool: calls of every service a client uses over the pool's connections go round in one turn."""

from __future__ import annotations

import asyncio

import grpc

from node.server.channel_pool import ChannelPool


def test_a_picker_shares_the_pools_turn_over_its_channels() -> None:
    """Stubs of a second service (the household rounds beside the coordinator's) come from the pool's channels,
    and taking either kind moves the one turn, so every connection carries calls of both."""

    async def run() -> tuple[list[int], list[int]]:
        pool = ChannelPool("127.0.0.1:1", grpc.local_channel_credentials(), [], 3, lambda c: ("main", c))
        try:
            other = pool.picker(lambda c: ("other", c))
            index = {id(c): i for i, c in enumerate(pool.channels)}
            picked = [index[id(other()[1])] for _ in range(4)]
            mixed = [index[id(pool.stub()[1])], index[id(other()[1])], index[id(pool.take()[0])]]
            return picked, mixed
        finally:
            await pool.close()

    picked, mixed = asyncio.run(run())
    assert picked == [0, 1, 2, 0]
    assert mixed == [1, 2, 0]
