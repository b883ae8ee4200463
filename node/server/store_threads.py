"""Store work off the event loop, for stores whose every call waits on the network (`Storage.threaded`).

On PostgreSQL a nonce write, a probing-budget admission or a fact lookup is a round trip and a
durable commit; run on the event loop, it holds every other call of the process, the consent
feed's polls included (a view not refreshed for 4 s fails closed: SECURITY G40). `StoreThreads`
runs such work on a few threads of its own (well below the pool's MAX_CONNECTIONS per process),
in the caller's context. For SQLite (not threaded: its connections belong to the thread that
opened them, and a local call is cheaper than a thread hop) it calls inline.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

THREADS: Final[int] = 4  # per server process; node.store.postgres.pool.MAX_CONNECTIONS is 16
_T = TypeVar("_T")


class StoreThreads:
    """Runs store work on its threads (threaded stores) or inline on the caller's thread."""

    def __init__(self, threaded: bool, *, threads: int = THREADS, name: str = "hedui-store") -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name) if threaded else None

    @property
    def threaded(self) -> bool:
        return self._executor is not None

    async def run(self, func: Callable[..., _T], *args: object) -> _T:
        """`func(*args)`: on one of the threads, the event loop serving meanwhile; inline when not threaded.
        A caller that goes away does not stop work already started (its nonce, budget and record stay)."""
        if self._executor is None:
            return func(*args)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, contextvars.copy_context().run, func, *args)

    def close(self) -> None:
        """Wait for the work started, then release the threads (idempotent)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
