"""An answer's signature and its durable audit record, made together for concurrent calls: one future per call."""

from __future__ import annotations

import asyncio
from typing import Any

from node.crypto.signing import AsyncBatchSigner
from node.inflight import FlushPolicy, InFlight
from node.store.audit import AsyncAuditor, AuditRecord, AuditUnavailable
from node.wire.v1 import common_pb2


class AnswerCommit:
    """Signs answers and writes their audit records in batches; a call gets its signature only once its record is durable.

    Calls in flight submit (domain, body, record); when every one has submitted (or after
    ~2 ms, node.inflight), the batch's records go to the auditor as one submission and its
    bodies to the signer as one submission, side by side. When both are done each call's
    one future is settled: its signature, or the signer's failure, or AuditUnavailable if
    the records could not be written — the same order of checks as signing then awaiting
    the record, so no answer leaves without its audit record.
    """

    def __init__(self, signer: AsyncBatchSigner, auditor: AsyncAuditor | None, in_flight: InFlight | None) -> None:
        self.signer = signer
        self.auditor = auditor
        self._pending: list[tuple[str, bytes, AuditRecord, asyncio.Future[common_pb2.Signature]]] = []
        self._policy = FlushPolicy(self._flush, in_flight)

    def commit(self, domain: str, body: bytes, record: AuditRecord) -> asyncio.Future[common_pb2.Signature]:
        """Queue one answer; the future resolves to its signature once its audit record is committed."""
        future: asyncio.Future[common_pb2.Signature] = asyncio.get_running_loop().create_future()
        self._pending.append((domain, body, record, future))
        self._policy.submitted(len(self._pending))
        return future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        waits: list[asyncio.Future[Any]] = []
        try:
            waits.append(self.signer.submit_many([(domain, body) for domain, body, _, _ in pending]))
            if self.auditor is not None:
                waits.append(self.auditor.submit_many([record for _, _, record, _ in pending]))
        except Exception as exc:  # noqa: BLE001 - the auditor is closed: no answer may leave
            for f in waits:
                f.cancel()
            _fail(pending, exc)
            return
        left = [len(waits)]

        def done(_: asyncio.Future[Any]) -> None:
            left[0] -= 1
            if not left[0]:
                _settle(pending, waits)

        for f in waits:
            f.add_done_callback(done)


def _settle(pending: list[tuple[str, bytes, AuditRecord, asyncio.Future[common_pb2.Signature]]],
            waits: list[asyncio.Future[Any]]) -> None:
    """Each call's signature, or the first failure (signing, then the audit write) for every call."""
    for f in waits:
        if f.cancelled():
            _fail(pending, asyncio.CancelledError())
            return
        if f.exception() is not None:
            _fail(pending, f.exception())  # type: ignore[arg-type]
            return
    for (_, _, _, future), signature in zip(pending, waits[0].result(), strict=True):
        if not future.done():  # a call whose caller went away: its record is written all the same
            future.set_result(signature)


def _fail(pending: list[tuple[str, bytes, AuditRecord, asyncio.Future[common_pb2.Signature]]], exc: BaseException) -> None:
    for _, _, _, future in pending:
        if future.done():
            continue
        if isinstance(exc, AuditUnavailable):  # one instance per call, as the auditor gives them
            error = AuditUnavailable(exc.detail) if exc.detail else AuditUnavailable()
            error.__cause__ = exc.__cause__
            future.set_exception(error)
        else:
            future.set_exception(exc)
