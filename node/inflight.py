"""Calls in flight, and when work submitted by them should be flushed as one batch.

Batching (one signature, one audit transaction for many calls) only pays when the batch
waits for the calls that are about to submit. The rule: flush as soon as every call in
flight has submitted; otherwise wait at most `max_wait_s` for the rest. A lone sequential
call therefore never waits, while 32 concurrent calls share one flush.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

DEFAULT_MAX_WAIT_S: Final[float] = 0.002


class InFlight:
    """A counter of calls currently being handled (or sent), for one event loop.

    `with in_flight.track():` counts a call for the duration of the block (the counter is its
    own context manager: no generator per call; nesting and concurrent blocks just add up).
    """

    def __init__(self) -> None:
        self.n = 0

    def track(self) -> InFlight:
        return self

    def __enter__(self) -> None:
        self.n += 1

    def __exit__(self, *_: object) -> None:
        self.n -= 1


class FlushPolicy:
    """Schedules `flush` on the loop: next turn when everyone in flight submitted, else after a short wait."""

    def __init__(self, flush: Callable[[], None], in_flight: InFlight | None, max_wait_s: float = DEFAULT_MAX_WAIT_S):
        self._flush = flush
        self.in_flight = in_flight
        self.max_wait_s = max_wait_s
        self._soon = False
        self._timer: Any = None

    def submitted(self, pending: int) -> None:
        """Call after adding work; `pending` is how many submissions wait for the next flush."""
        loop = asyncio.get_running_loop()
        everyone = self.in_flight is None or pending >= self.in_flight.n
        if everyone:
            if not self._soon:
                self._soon = True
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                loop.call_soon(self._run)
        elif self._timer is None and not self._soon:
            self._timer = loop.call_later(self.max_wait_s, self._run)

    def _run(self) -> None:
        self._soon = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush()
