"""gRPC adapter for the Verification service: convert, call the plain service, convert back."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from grpc import aio

from node.crypto import signing
from node.crypto.pki import TrustAnchor, province_of_identity
from node.crypto.possession import PROOF_METADATA, Unlocked
from node.domain import request_ids
from node.errors import ErrorCode, HeduiError, Refusal
from node.inflight import InFlight
from node.server.admission import Admission, check_deadline
from node.server.answer_commit import AnswerCommit
from node.server.edge import edge, public_message
from node.server.store_threads import StoreThreads
from node.service import packed
from node.service.possession import Unlocker, signed_query as locked_content
from node.service.verification import Admitted, Decided, VerificationService, require_usable_reply_key
from node.store import audit
from node.wire.v1 import common_pb2, verification_pb2, verification_pb2_grpc


MAX_BATCH = 512
_T = TypeVar("_T")


def _rechecked(service: VerificationService, admitted: Admitted | Refusal, outcome: Decided | Refusal) -> Decided | Refusal:
    """A decided query whose consent the loop still vouches for (VerificationService.recheck), else its refusal."""
    if isinstance(outcome, Decided) and isinstance(admitted, Admitted):
        try:
            service.recheck(admitted)
        except Refusal as refusal:
            return refusal
    return outcome


async def _settle_abandoned(future: asyncio.Future[_T], abandoned: Callable[[_T | Refusal], Awaitable[None]]) -> None:
    """Wait for store work whose caller went away and audit its outcome (a failure of the work itself is not
    audited, as for a call that waited)."""
    try:
        outcome: _T | Refusal = await future
    except Refusal as refusal:
        outcome = refusal
    except Exception:  # noqa: BLE001 - a store failure: nothing was decided
        return
    with contextlib.suppress(Exception):  # an audit failure: nobody is left to refuse (the auditor logs it)
        await abandoned(outcome)


def _prove(context: aio.ServicerContext, index: int, proof: bytes) -> None:
    """Attach the possession proof of an unlocked query to every reply of this call, refusals too."""
    context.set_trailing_metadata(
        ((PROOF_METADATA, verification_pb2.PossessionProof(index=index, proof=proof).SerializeToString()),))


def _request_id_of(query: verification_pb2.SignedQuery) -> str:
    """The request id of a (possibly unauthenticated) query, for logs: only if it is valid, else "invalid"."""
    try:
        request_id = verification_pb2.QueryBody.FromString(query.body).request_id
    except Exception:  # noqa: BLE001 - undecodable body: nothing to log
        return ""
    return request_ids.shown(request_id)


class VerificationServicer(verification_pb2_grpc.VerificationServicer):
    """Thin servicer: identity from TLS, decisions from VerificationService, batched signing."""

    def __init__(
        self,
        service: VerificationService,
        signer: signing.AsyncBatchSigner,
        anchor: TrustAnchor,
        admission: Admission,
        log: Any,
        *,
        unsealer: Any = None,
        coordinator_identity: str | None = None,
        metrics: Any = None,
        auditor: audit.AsyncAuditor | None = None,
        in_flight: InFlight | None = None,
        unlocker: Unlocker | None = None,
        store_threads: StoreThreads | None = None,
    ) -> None:
        self.unlocker = unlocker
        # The stores' part of a decision (VerificationService.answer) runs here: off the loop on PostgreSQL.
        self._threads = store_threads or StoreThreads(threaded=False)
        self._abandoned: set[asyncio.Task[None]] = set()  # audits of calls whose caller left during store work
        self.metrics = metrics
        self.auditor = auditor
        self.in_flight = in_flight or InFlight()
        self.service = service
        self.signer = signer
        self.anchor = anchor
        self.admission = admission
        self.log = log
        self.unsealer = unsealer
        self.coordinator_identity = coordinator_identity
        self.answers = AnswerCommit(signer, auditor, self.in_flight)

    async def Verify(self, request: verification_pb2.VerifyRequest, context: aio.ServicerContext) -> verification_pb2.VerifyResponse:
        with self.in_flight.track():
            return await self._verify(request, context)

    async def _verify(self, request: verification_pb2.VerifyRequest, context: aio.ServicerContext) -> verification_pb2.VerifyResponse:
        log = self.log
        fields: dict[str, Any] = {}
        async with edge(context, log, "Verify", self.metrics, fields=fields):
            identity = ""
            requester: str | None = None
            signed_query: verification_pb2.SignedQuery | None = None
            unlocked: Unlocked | None = None
            lock_request_id = ""
            sealed = request.WhichOneof("query") == "sealed"
            try:
                identity = self.admission.admit(context)
                fields["peer"] = province_of_identity(identity) or "coordinator"
                if sealed:
                    if self.unsealer is None or self.unlocker is None:
                        raise Refusal(ErrorCode.MALFORMED, "sealed queries are not accepted here")
                    locked, requester = self.unsealer.open_query(request.sealed, identity)
                    lock_request_id = locked.request_id
                    unlocked = self.unlocker.unlock(locked)  # NOT_HELD: this node holds no subject of it
                    _prove(context, 0, unlocked.proof)
                    signed_query = locked_content(unlocked)
                elif request.WhichOneof("query") == "signed":
                    if identity == self.coordinator_identity:
                        raise Refusal(ErrorCode.MALFORMED, "relayed queries must be sealed")
                    signed_query = request.signed
                    requester = province_of_identity(identity)
                    if requester is None:
                        raise Refusal(ErrorCode.NOT_AUTHORISED)
                else:
                    raise Refusal(ErrorCode.MALFORMED, "request carries no query")
                if sealed:
                    require_usable_reply_key([signed_query.body])  # refused (and audited) before anything is decided
                admitted = self.service.admit(signed_query, requester, lock=unlocked)
                relayed = identity == self.coordinator_identity

                async def abandoned(outcome: Decided | Refusal) -> None:  # the nonce is spent: audit as if answered
                    if isinstance(outcome, Refusal):
                        await self._audit_refusal(outcome, signed_query, requester, identity,
                                                  lock_request_id=lock_request_id)
                    else:
                        raw = outcome.answer.SerializeToString()
                        await self.answers.commit(signing.ANSWER, raw, audit.answered(outcome, raw, relayed=relayed))

                decided = await self._off_loop(lambda: self.service.answer(admitted), abandoned)
                if self._threads.threaded:
                    self.service.recheck(admitted)
                fields.update(peer=decided.query.requester, request_id=decided.query.request_id)
                check_deadline(context)
            except Refusal as refusal:
                if signed_query is not None and "request_id" not in fields:
                    fields["request_id"] = _request_id_of(signed_query)
                elif lock_request_id and request_ids.is_valid(lock_request_id):
                    fields.setdefault("request_id", lock_request_id)
                await self._audit_refusal(refusal, signed_query, requester, identity, lock_request_id=lock_request_id)
                raise
            body = decided.answer.SerializeToString()
            # The answer leaves only once its audit record is durable (AuditUnavailable otherwise):
            # signed and recorded with the other calls in flight, one future for this call.
            signature = await self.answers.commit(signing.ANSWER, body, audit.answered(decided, body, relayed=relayed))
            answer = verification_pb2.SignedAnswer(body=body, signature=signature)
            log.debug("answered", peer=decided.query.requester, request_id=decided.query.request_id, relayed=relayed,
                      purpose=decided.query.purpose, items=decided.items)  # a no-op below debug: nothing formatted
            if self.metrics is not None:
                self.metrics.answered(decided.answer.results)
            if sealed:
                assert unlocked is not None
                return verification_pb2.VerifyResponse(sealed=self.unsealer.seal_answer(answer, decided.query),
                                                       possession_proof=unlocked.proof)
            return verification_pb2.VerifyResponse(signed=answer)

    def _refusal_hook(self, context: aio.ServicerContext, request_id: str = "") -> Any:
        """Audits a refusal of a whole call (VerifyBatch; a batch's items are audited one by one)."""
        async def record(refusal: Refusal) -> None:
            try:
                identity = self.anchor.validate_tls_peer_cert(context.auth_context()["x509_pem_cert"][0])
                requester = "coordinator" if identity == self.coordinator_identity else province_of_identity(identity)
            except (HeduiError, KeyError, IndexError):
                requester = None
            await self._audit(audit.refusal(refusal.code, query=None, requester=requester or "", request_id=request_id))
        return record

    async def _audit(self, record: audit.AuditRecord) -> None:
        if self.auditor is not None:
            await self.auditor.record(record)

    async def _audit_refusal(self, refusal: Refusal, signed_query: verification_pb2.SignedQuery | None,
                             requester: str | None, identity: str, *, lock_request_id: str = "") -> None:
        query: bytes | verification_pb2.QueryBody | None = None
        if signed_query is not None:
            query = signed_query.body
        elif lock_request_id:  # a query this node could not unlock: only its request id is known
            query = verification_pb2.QueryBody(request_id=lock_request_id)
        try:
            record = audit.refusal(refusal.code, query=query,
                                   requester=requester or (province_of_identity(identity) or ""),
                                   relayed=identity == self.coordinator_identity)
        except ValueError:  # a field the auditor will not store (e.g. looks like an ID number): record without it
            record = audit.refusal(refusal.code, query=None, requester=requester or "")
        await self._audit(record)

    async def VerifyBatch(self, request: verification_pb2.VerifyBatchRequest,
                          context: aio.ServicerContext) -> verification_pb2.VerifyBatchResponse:
        async with edge(context, self.log, "VerifyBatch", self.metrics, self._refusal_hook(context)):
            identity = self.admission.admit(context)
            if self.unsealer is None or self.unlocker is None:
                raise Refusal(ErrorCode.MALFORMED, "sealed queries are not accepted here")
            batch, requester = self.unsealer.open_batch(request.sealed, identity)
            if not 1 <= len(batch.queries) <= MAX_BATCH:
                raise Refusal(ErrorCode.TOO_MANY, f"1 to {MAX_BATCH} queries per batch")
            opened = self.unlocker.unlock_many(list(batch.queries))
            proofs = [o.proof if isinstance(o, Unlocked) else b"" for o in opened]
            first_open = next((i for i, o in enumerate(opened) if isinstance(o, Unlocked)), None)
            if first_open is None:  # no query of the batch is about a subject held here
                codes = [o.code for o in opened if isinstance(o, Refusal)]
                raise Refusal(ErrorCode.NOT_HELD if ErrorCode.NOT_HELD in codes else codes[0],
                              "no query of the batch could be unlocked")
            _prove(context, first_open, proofs[first_open])
            # One requester and a usable reply key, or the whole batch is refused before any query is decided.
            contents = {i: locked_content(o) for i, o in enumerate(opened) if isinstance(o, Unlocked)}
            require_usable_reply_key(q.body for q in contents.values())
            queries = [(contents[i], o) for i, o in enumerate(opened) if isinstance(o, Unlocked)]
            admitted = self.service.admit_batch(queries, requester)

            def answer() -> list[Decided | Refusal]:
                with self.service.batch_scope():  # one nonce write and one probing transaction for the whole batch
                    return self.service.answer_batch(admitted)

            def sort(results: list[Decided | Refusal]) -> tuple[list[verification_pb2.BatchItem],
                                                                   list[tuple[int, Decided]], list[audit.AuditRecord]]:
                return self._sort_batch(batch, opened, contents, iter(results), requester)

            async def abandoned(results: list[Decided | Refusal] | Refusal) -> None:  # nonces spent: audit them
                if isinstance(results, Refusal):
                    return  # answer_batch refuses per query; nothing was decided as a whole
                _, done, records = sort(results)
                if done:
                    records += audit.answered_batch([(d, d.answer.SerializeToString()) for _, d in done],
                                                    relayed=requester is None)
                await asyncio.gather(*(self._audit(r) for r in records))

            outcomes = await self._off_loop(answer, abandoned)
            if self._threads.threaded:
                outcomes = [_rechecked(self.service, a, o) for a, o in zip(admitted, outcomes, strict=True)]
            items, decided, refusals = sort(outcomes)
            try:
                if not decided:
                    # Nothing to seal an answer to: refuse the batch with its items' reason, so a
                    # temporary one (e.g. consent state unconfirmed) stays retryable for the caller.
                    codes = [ErrorCode[item.error_code] for item in items]
                    code = next((c for c in (ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE) if c in codes), codes[0])
                    raise Refusal(code, "no query of the batch could be answered")
                check_deadline(context)
            except Refusal as refusal:  # decided queries are refused too: each is audited as refused
                late = [self._refusal_record(refusal, d.query, requester) for _, d in decided]
                await asyncio.gather(*(self._audit(r) for r in refusals + late))
                raise
            first = decided[0][1].query
            bodies = [d.answer.SerializeToString() for _, d in decided]
            # One record for the batch's answers (per requester, purpose, checks and probes), naming each query.
            records = refusals + audit.answered_batch([(d, b) for (_, d), b in zip(decided, bodies, strict=True)],
                                                      relayed=requester is None)
            signatures, *_ = await asyncio.gather(self.signer.sign_many([(signing.ANSWER, b) for b in bodies]),
                                                  *(self._audit(r) for r in records))
            counts: Counter[int] = Counter()
            for (index, d), body, signature in zip(decided, bodies, signatures, strict=True):
                items.append(verification_pb2.BatchItem(index=index, answer=verification_pb2.SignedAnswer(body=body, signature=signature)))
                if self.metrics is not None:
                    counts.update(packed.outcome_counts(d.answer))
            items.sort(key=lambda item: item.index)
            self.log.debug("answered_batch", peer=first.requester, queries=len(batch.queries), answered=len(decided))
            if self.metrics is not None:
                self.metrics.outcomes({common_pb2.Outcome.Name(k): v for k, v in counts.items()})
            return verification_pb2.VerifyBatchResponse(
                sealed=self.unsealer.seal_answer(verification_pb2.AnswerBatch(items=items), first),
                possession_proofs=proofs)

    def _sort_batch(self, batch: verification_pb2.LockedBatch, opened: list[Unlocked | Refusal],
                    contents: dict[int, verification_pb2.SignedQuery], outcomes: Iterator[Decided | Refusal],
                    requester: str | None) -> tuple[list[verification_pb2.BatchItem], list[tuple[int, Decided]],
                                                    list[audit.AuditRecord]]:
        """A batch's refused items (unlock and decision refusals, in order) with their audit records, and its
        decided queries by index; `outcomes` are answer_batch's, one per unlocked query."""
        items: list[verification_pb2.BatchItem] = []
        decided: list[tuple[int, Decided]] = []
        refusals: list[audit.AuditRecord] = []
        for index, (locked, unlocked) in enumerate(zip(batch.queries, opened, strict=True)):
            outcome = unlocked if isinstance(unlocked, Refusal) else next(outcomes)
            if isinstance(outcome, Decided):
                decided.append((index, outcome))
                continue
            query = contents.get(index)
            items.append(verification_pb2.BatchItem(index=index, error_code=outcome.code.name,
                                                    error=public_message(outcome)))
            body = query if query is not None else verification_pb2.QueryBody(request_id=locked.request_id)
            refusals.append(self._refusal_record(outcome, body, requester))
        return items, decided, refusals

    async def _off_loop(self, work: Callable[[], _T], abandoned: Callable[[_T | Refusal], Awaitable[None]]) -> _T:
        """`work()`: on a store thread for threaded stores (the loop serving meanwhile), else inline. Its nonce and
        budget are spent once it starts, so when the caller goes away (cancelled: a deadline, a reset) while
        it runs, it is still finished and `abandoned(outcome)` audits it then, as the call would have."""
        if not self._threads.threaded:
            return work()
        future = asyncio.ensure_future(self._threads.run(work))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            task = asyncio.get_running_loop().create_task(_settle_abandoned(future, abandoned))
            self._abandoned.add(task)
            task.add_done_callback(self._abandoned.discard)
            raise

    @staticmethod
    def _refusal_record(refusal: Refusal, query: verification_pb2.SignedQuery | verification_pb2.QueryBody,
                        requester: str | None) -> audit.AuditRecord:
        body = query.body if isinstance(query, verification_pb2.SignedQuery) else query
        try:
            return audit.refusal(refusal.code, query=body, requester=requester or "", relayed=requester is None)
        except ValueError:  # a field the auditor will not store: record without the query's fields
            return audit.refusal(refusal.code, query=None, requester=requester or "")
