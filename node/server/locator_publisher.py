"""A node's locator: the signed filter of its subjects' discovery tokens it lodges with the coordinator.

For the current and the next discovery epoch, the node builds a sharded Bloom filter
(node.crypto.locator) over the epoch discovery tokens of every subject it holds, signs each
shard and sends it (PublishLocator). It does so at start, when an epoch begins (the next one is
then built ahead of time), and after every change to the store: an ingest by `hedui data
ingest` in another process is seen through the store's data version (node.store.interfaces.ChangeWatch),
read by the coordinator-link loop every second; and again when the coordinator, asked every
HELD_CHECK_S, no longer holds what it lodged. Stored tokens never leave the node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from node.crypto import discovery, locator, signing
from node.server.lead import Lead
from node.store.interfaces import FactStore
from node.wire.v1 import coordinator_pb2

LOCK_FILE = "locator.lock"
#: How often the publisher asks which of its locators the coordinator holds (a restored coordinator lost them).
HELD_CHECK_S = 300.0


def build_shards(store: FactStore, epoch: int) -> tuple[int, int, list[tuple[int, bytes]]]:
    """(subject count, shard bits, shards) of the store's locator for one epoch (CPU-bound: run in a thread;
    the tokens are streamed, only 16 bytes per subject are held while the filters are built)."""
    count = store.held_count()
    edts = (discovery.discovery_token(t, epoch) for t in store.held_tokens())
    bits, shards = locator.build(edts, count)
    built = sum(n for n, _ in shards)
    if locator.shard_bits_for(built) != bits:  # the store grew past a shard boundary meanwhile: again
        return build_shards(store, epoch)
    return built, bits, shards


class LocatorPublisher:
    """Keeps the coordinator's locators of this province current for this and the next epoch."""

    def __init__(self, province: str, store: FactStore, signer: Any, log: Any, *, lock_dir: Path,
                 epoch_s: Callable[[], Awaitable[int]],
                 send: Callable[[coordinator_pb2.SignedLocator], Awaitable[Any]],
                 held: Callable[[], Awaitable[coordinator_pb2.HeldLocatorsResponse]] | None = None,
                 lead: Any | None = None) -> None:
        self.province = province
        self.store = store
        self.signer = signer
        self.log = log
        self._epoch_s = epoch_s
        self._send = send
        self._held = held
        self._held_checked = time.monotonic()  # what start() publishes needs no check
        self._generations: dict[int, int] = {}  # epoch -> generation this process last lodged
        self._watch = store.change_watch()
        # One publisher per node, however many `--workers` processes share the store (node.server.lead):
        # the lock is in the node's data_dir, wherever its store lives.
        # With `lead` (a Storage.lease) the role is the storage's: one publisher across every replica host.
        self._lead = Lead(Path(lock_dir) / LOCK_FILE) if lead is None else lead
        self._published: dict[int, int] = {}  # epoch -> store data version it was built from
        self._generation = 0
        self._lock = asyncio.Lock()
        self.build: Callable[[FactStore, int], tuple[int, int, list[tuple[int, bytes]]]] = build_shards

    def close(self) -> None:
        self._watch.close()
        self._lead.release()

    async def republish(self) -> list[int]:
        """Build and send both epochs' locators again, whether due or not."""
        self.resign()
        return await self.run_once()

    def resign(self) -> None:
        """Make every epoch due again (e.g. after a key rotation: the next run lodges them signed anew)."""
        self._published.clear()

    async def run_once(self) -> list[int]:
        """Publish what is due (epochs new or whose store changed); the epochs published."""
        async with self._lock:
            if not self._lead.held():
                return []
            epoch_s = await self._epoch_s()
            if epoch_s < 1:
                return []  # a coordinator without locator discovery
            version = self._watch.version()
            now = discovery.current_epoch(epoch_s)
            self._published = {e: v for e, v in self._published.items() if e >= now}
            await self._forget_lost()
            done = []
            for epoch in (now, now + 1):
                if self._published.get(epoch) == version:
                    continue
                await self._publish(epoch)
                self._published[epoch] = version
                done.append(epoch)
            return done

    async def _forget_lost(self) -> None:
        """Every HELD_CHECK_S: epochs whose locator the coordinator holds older than ours, or not at all,
        are due again (a coordinator restored from a backup, or on a new data dir, lost them)."""
        if self._held is None or time.monotonic() - self._held_checked < HELD_CHECK_S:
            return
        self._held_checked = time.monotonic()
        held = {h.epoch: h.generation for h in (await self._held()).locators}
        for epoch in list(self._published):
            if held.get(epoch, 0) < self._generations.get(epoch, 0):
                self.log.warning("locator_lost_by_coordinator", epoch=epoch)
                del self._published[epoch]

    async def _publish(self, epoch: int) -> None:
        count, bits, shards = await asyncio.to_thread(self.build, self.store, epoch)
        self._generation = max(int(time.time() * 1000), self._generation + 1)
        bodies = [coordinator_pb2.LocatorBody(
            province=self.province, epoch=epoch, filter_kind=locator.FILTER_KIND, subject_count=count,
            shard_bits=bits, shard=i, shard_count=n, filter=data, generation=self._generation).SerializeToString()
            for i, (n, data) in enumerate(shards)]
        # One batch signature over every shard, made in a worker thread: a token key's sign may wait on the device.
        signatures = await asyncio.to_thread(self.signer.sign_many, [(signing.LOCATOR, body) for body in bodies])
        for body, signature in zip(bodies, signatures, strict=True):
            await self._send(coordinator_pb2.SignedLocator(body=body, signature=signature))
        self._generations[epoch] = self._generation
        self.log.info("locator_published", epoch=epoch, subjects=count, shards=len(shards))
