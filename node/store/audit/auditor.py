"""Asynchronous, coalescing audit writes for the event loop: no answer without its committed record."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from node.errors import ErrorCode, Refusal
from node.inflight import InFlight
from node.store.audit.log import AuditLog
from node.store.audit.records import MAX_BATCH, AuditRecord
from node.store.chainformat import Entry

class AuditUnavailable(Refusal):
    """The audit record could not be written durably, so no answer may be given."""

    def __init__(self, detail: str = "audit log cannot be written") -> None:
        super().__init__(ErrorCode.UNAVAILABLE, detail)


class AsyncAuditor:
    """Group commit for the event loop: records submitted in one loop turn share one transaction.

    The first submitter schedules a flush with `loop.call_soon`; the batch is written by one
    worker thread (fsync off the event loop). While a batch is being written, new records
    queue up and go in the next batch, so under load each fsync carries everything that
    arrived during the previous one. `await record(rec)` returns the entry only once it is
    committed, and raises `AuditUnavailable` if the write failed. Each submission — one record
    or many (`submit_many`) — waits on one future, never one per record.
    """

    def __init__(self, log: AuditLog, *, max_batch: int = MAX_BATCH, in_flight: InFlight | None = None) -> None:
        self.log = log
        self.in_flight = in_flight
        self.max_batch = max_batch
        self.transactions = 0  # batches written (each one transaction, one commit fsync)
        self.records = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")
        # Submissions: their records, the one future they wait on, and whether it carries one entry or a list.
        self._pending: list[tuple[Sequence[AuditRecord], asyncio.Future[Any], bool]] = []
        self._waiting = 0  # records in `_pending`
        self._now = False  # a submission asked not to wait for the calls in flight
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._inflight = False
        self._closed = False
        self._idle: list[asyncio.Future[None]] = []

    async def record(self, rec: AuditRecord) -> Entry:
        """Write `rec` (batched with concurrent submissions); return its committed entry."""
        return await self.submit(rec)  # a cancelled caller cancels only its wait: the write still happens

    def submit(self, rec: AuditRecord) -> asyncio.Future[Entry]:
        """Queue `rec`; the future resolves once it is committed (AuditUnavailable if the write fails).

        With `in_flight` given, the write waits (at most ~2 ms) until every call in flight has
        submitted its record, so concurrent calls share one transaction and one fsync.
        """
        return self._submit((rec,), True, now=False)

    def submit_many(self, records: Sequence[AuditRecord]) -> asyncio.Future[list[Entry]]:
        """Queue `records` (written in order, in one transaction with whatever else waits) without waiting
        for the calls in flight; one future resolves with their entries once committed."""
        if not records:
            future: asyncio.Future[list[Entry]] = asyncio.get_running_loop().create_future()
            future.set_result([])
            return future
        return self._submit(records, False, now=True)

    def _submit(self, records: Sequence[AuditRecord], single: bool, *, now: bool) -> asyncio.Future[Any]:
        if self._closed:
            raise AuditUnavailable("audit log is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((records, future, single))
        self._waiting += len(records)
        self._now = self._now or now
        if self._scheduled:
            self._nudge(loop)
        else:
            self._schedule(loop)
        return future

    def _everyone(self) -> bool:
        return self._now or self.in_flight is None or self._waiting >= self.in_flight.n

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._scheduled or self._inflight or not self._pending:
            return
        self._scheduled = True
        if self._everyone():
            loop.call_soon(self._flush, loop)
        else:
            self._timer = loop.call_later(0.002, self._flush, loop)

    def _nudge(self, loop: asyncio.AbstractEventLoop) -> None:
        """A record arrived while a flush is held back: flush now if everyone has submitted."""
        timer = self._timer
        if timer is not None and self._everyone():
            timer.cancel()
            self._timer = None
            loop.call_soon(self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        self._timer = None
        if self._inflight or not self._pending:
            return
        taken, size = 0, 0  # whole submissions, up to max_batch records (at least one submission)
        for records, _, _ in self._pending:
            if taken and size + len(records) > self.max_batch:
                break
            taken += 1
            size += len(records)
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        self._waiting -= size
        self._now = self._now and bool(self._pending)
        self._inflight = True
        records = [r for group, _, _ in batch for r in group]
        try:
            job = self._executor.submit(self.log.record_many, records)
        except RuntimeError as exc:  # executor shut down
            self._inflight = False
            self._fail(batch, exc)
            return
        # Straight back to the loop from the writer thread: no asyncio wrapper future (and its extra loop turn).
        job.add_done_callback(lambda f: _call_back(loop, self._done, loop, batch, f))

    def _done(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Sequence[AuditRecord], asyncio.Future[Any], bool]],
              job: concurrent.futures.Future[list[Entry]]) -> None:
        self._inflight = False
        exc = job.exception() if not job.cancelled() else asyncio.CancelledError()
        if exc is not None:
            self._fail(batch, exc)
        else:
            entries = job.result()
            self.transactions += 1
            self.records += len(entries)
            at = 0
            for group, future, single in batch:
                n = len(group)
                if not future.done():
                    future.set_result(entries[at] if single else entries[at : at + n])
                at += n
        if self._pending and not self._scheduled:
            self._schedule(loop)
        elif not self._pending:
            idle, self._idle = self._idle, []
            for waiter in idle:
                if not waiter.done():
                    waiter.set_result(None)

    @staticmethod
    def _fail(batch: list[tuple[Sequence[AuditRecord], asyncio.Future[Any], bool]], exc: BaseException) -> None:
        for _, future, _ in batch:
            if not future.done():
                error = AuditUnavailable()  # the public message; the cause stays in __cause__ for logs
                error.__cause__ = exc
                future.set_exception(error)

    async def aclose(self) -> None:
        """Wait for queued records to be written, then stop the worker thread."""
        self._closed = True
        if self._pending or self._inflight or self._scheduled:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            await waiter
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        """Stop accepting records and stop the worker (does not close the AuditLog)."""
        self._closed = True
        self._executor.shutdown(wait=True)


def _call_back(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """Run `callback(*args)` on `loop` from another thread (nothing to do once the loop is closed)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)
