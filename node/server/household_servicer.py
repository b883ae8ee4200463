"""gRPC adapter for the HouseholdHolder service: open the sealed query, call the plain service,
audit, sign and seal the masked contribution back to the requester. A batch (ContributeBatch)
is one sealed message of many households' queries: one store lookup, one nonce transaction,
one audit record and one batch signature, each household's contribution verifiable alone."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from typing import Any, Final

from google.protobuf.message import DecodeError
from grpc import aio

from node.crypto import sealing, signing
from node.crypto.pki import TrustAnchor, province_of_identity
from node.domain import request_ids
from node.domain.regions import province_uri
from node.errors import ErrorCode, Refusal
from node.inflight import InFlight
from node.server.admission import Admission, check_deadline
from node.server.edge import edge, public_message
from node.service.household import Contribution, HouseholdService
from node.store import audit
from node.wire.v1 import household_pb2, household_pb2_grpc

CONTRIBUTED = "contributed"
MAX_BATCH: Final[int] = 512  # contribution queries per ContributeBatch
#: Refusals a later attempt may overcome: when every query of a batch was refused, the batch is
#: refused with one of these (so the requester retries) before any other code.
_TEMPORARY: Final[tuple[ErrorCode, ...]] = (ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE)


class HouseholdHolderServicer(household_pb2_grpc.HouseholdHolderServicer):
    """Thin servicer: identity from TLS, the round's mask keys from the verified directory."""

    def __init__(self, service: HouseholdService, signer: signing.AsyncBatchSigner, anchor: TrustAnchor,
                 admission: Admission, log: Any, *, link: Any, coordinator_identity: str,
                 metrics: Any = None, auditor: audit.AsyncAuditor | None = None, in_flight: InFlight | None = None) -> None:
        self.service = service
        self.signer = signer
        self.anchor = anchor
        self.admission = admission
        self.log = log
        self.link = link
        self.coordinator_identity = coordinator_identity
        self.metrics = metrics
        self.auditor = auditor
        self.in_flight = in_flight or InFlight()

    async def Contribute(self, request: household_pb2.ContributeRequest,
                         context: aio.ServicerContext) -> household_pb2.ContributeResponse:
        with self.in_flight.track():
            fields: dict[str, Any] = {}
            async with edge(context, self.log, "Contribute", self.metrics, fields=fields):
                identity = ""
                raw = b""
                try:
                    identity = self._admit(context, fields)
                    signed, peer_province = self.link.open_message(request.query, identity,
                                                                   household_pb2.SignedContributionQuery)
                    raw = signed.body
                    query = self.service.authenticate(signed, peer_province)
                    if query.reply_seal_suite != sealing.SUITE_NAME or not sealing.usable_public_key(query.reply_seal_key):
                        raise Refusal(ErrorCode.MALFORMED, "contribution query names no usable reply key")
                    holders = household_pb2.HolderSetBody.FromString(query.holder_set.body).holders
                    contribution = self.service.contribute(signed, peer_province, await self._mask_keys(holders),
                                                           authenticated=query)
                    fields.update(peer=query.requester, request_id=query.round_id)
                    check_deadline(context)
                except Refusal as refusal:
                    await self._audit(self._refusal_record(refusal, raw, identity))
                    raise
                body = contribution.body.SerializeToString()
                record = audit.AuditRecord(
                    at_ms=contribution.body.answered_at_ms, request_id=contribution.query.round_id,
                    requester=contribution.query.requester, decision=CONTRIBUTED, purpose=contribution.query.purpose,
                    consent_id=contribution.consent_id, items=tuple(sorted(contribution.items)),
                    outcome_digest=hashlib.sha256(body).hexdigest(), extra=self._via(identity),
                )
                recorded = self.auditor.submit(record) if self.auditor is not None else None
                signature = await self.signer.sign(signing.CONTRIBUTION, body)
                if recorded is not None:
                    await recorded  # no contribution leaves without its durable audit record
                signed_out = household_pb2.SignedContribution(body=body, signature=signature)
                sealed = sealing.seal(signed_out.SerializeToString(), kind=sealing.ANSWER,
                                      recipient=province_uri(contribution.query.requester),
                                      public_key=contribution.query.reply_seal_key)
                self.log.debug("contributed", peer=contribution.query.requester, request_id=contribution.query.round_id,
                               measures=list(contribution.query.measures))
                return household_pb2.ContributeResponse(contribution=sealed)

    async def ContributeBatch(self, request: household_pb2.ContributeBatchRequest,
                              context: aio.ServicerContext) -> household_pb2.ContributeBatchResponse:
        with self.in_flight.track():
            fields: dict[str, Any] = {"request_id": request_ids.shown(request.request_id)}
            async with edge(context, self.log, "ContributeBatch", self.metrics, fields=fields):
                identity = ""
                requester = purpose = ""
                queries: list[household_pb2.SignedContributionQuery] = []
                results: list[Contribution | Refusal] = []
                try:
                    identity = self._admit(context, fields)
                    batch, peer_province = self.link.open_message(request.queries, identity,
                                                                  household_pb2.ContributionQueryBatch)
                    queries = list(batch.queries)
                    if not 1 <= len(queries) <= MAX_BATCH:
                        raise Refusal(ErrorCode.TOO_MANY, f"1 to {MAX_BATCH} contribution queries per batch")
                    requester, purpose, reply_key, holders, parsed = _one_reply_key(queries)
                    results = self.service.contribute_many(queries, peer_province, await self._mask_keys(holders),
                                                           parsed)
                    done = [(i, c) for i, c in enumerate(results) if isinstance(c, Contribution)]
                    if done:  # at least one query authenticated: the batch's one requester is who signed it
                        fields["peer"] = requester
                    else:
                        codes = [r.code for r in results if isinstance(r, Refusal)]
                        code = next((c for c in _TEMPORARY if c in codes), codes[0])
                        raise Refusal(code, "no household of the batch could be contributed to")
                    check_deadline(context)
                except Refusal as refusal:  # the whole batch: its households' own refusals, else the call's
                    refused = self._refusals(queries, results, purpose)
                    for record in audit.batched(refused or [(audit.refused(refusal.code), purpose, (), None)],
                                                request_id=request.request_id, requester=self._caller(identity),
                                                extra=self._via(identity)):
                        await self._audit(record)
                    raise
                bodies = [c.body.SerializeToString() for _, c in done]
                records = audit.batched(
                    [(CONTRIBUTED, c.query.purpose, c.items, audit.batch_entry(c.query.round_id, c.consent_id,
                                                                               hashlib.sha256(b).hexdigest()))
                     for (_, c), b in zip(done, bodies, strict=True)] + self._refusals(queries, results, purpose),
                    request_id=request.request_id, requester=requester, extra=self._via(identity))
                recorded = [self.auditor.submit(r) for r in records] if self.auditor is not None else []
                signatures = await self.signer.sign_many([(signing.CONTRIBUTION, b) for b in bodies])
                await asyncio.gather(*recorded)  # no contribution leaves without its durable audit record
                signed = {i: (b, s) for (i, _), b, s in zip(done, bodies, signatures, strict=True)}
                reply = household_pb2.ContributionBatch()
                for i, r in enumerate(results):  # in index order, each item built in place (copied once)
                    if isinstance(r, Refusal):
                        reply.items.add(index=i, error_code=r.code.name, error=public_message(r))
                    else:
                        item = reply.items.add(index=i)
                        item.contribution.body, signature = signed[i]
                        item.contribution.signature.CopyFrom(signature)
                sealed = sealing.seal(reply.SerializeToString(), kind=sealing.ANSWER, recipient=province_uri(requester),
                                      public_key=reply_key)
                self.log.debug("contributed_batch", peer=requester, households=len(queries), contributed=len(done))
                return household_pb2.ContributeBatchResponse(contributions=sealed)

    @staticmethod
    def _refusals(queries: list[household_pb2.SignedContributionQuery], results: list[Contribution | Refusal],
                  purpose: str) -> list[tuple[str, str, tuple[str, ...], audit.BatchEntry]]:
        """The batch households refused, for `audit.batched` (round id only where it is valid)."""
        return [(audit.refused(r.code), purpose, (), audit.batch_entry(_round_id_of(queries[i])))
                for i, r in enumerate(results) if isinstance(r, Refusal)]

    def _admit(self, context: aio.ServicerContext, fields: dict[str, Any]) -> str:
        identity = self.admission.admit(context)
        fields["peer"] = province_of_identity(identity) or "coordinator"
        if self.link is None:
            raise Refusal(ErrorCode.UNAVAILABLE, "this node has no coordinator: no round can be checked")
        return identity

    async def _mask_keys(self, holders: Iterable[str]) -> dict[str, bytes]:
        """province -> announced mask public key, from the verified directory (fetched again if a holder is new)."""
        directory = await self.link.directory()
        if any(h not in directory for h in holders):
            directory = await self.link.directory(refresh=True)
        return {p: e.mask_public_key for p, e in directory.items()}

    def _via(self, identity: str) -> dict[str, str]:
        return {"via": "coordinator"} if identity == self.coordinator_identity else {}

    @staticmethod
    def _caller(identity: str) -> str:
        return province_of_identity(identity) or ("coordinator" if identity else "")

    def _refusal_record(self, refusal: Refusal, raw: bytes, identity: str) -> audit.AuditRecord:
        """A refusal's audit record: the (unauthenticated) query's fields only where well formed."""
        try:
            body = household_pb2.ContributionQueryBody.FromString(raw)
        except Exception:  # noqa: BLE001 - nothing usable in the body
            body = household_pb2.ContributionQueryBody()
        return audit.coordinator_event(audit.refused(refusal.code), requester=self._caller(identity),
                                       request_id=request_ids.shown(body.round_id), purpose=body.purpose)

    async def _audit(self, record: audit.AuditRecord) -> None:
        if self.auditor is not None:
            await self.auditor.record(record)


def _one_reply_key(queries: list[household_pb2.SignedContributionQuery]) -> tuple[
        str, str, bytes, set[str], list[household_pb2.ContributionQueryBody | None]]:
    """The batch's one requester, purpose and usable reply key, every province its holder sets name,
    and each query's parsed body (None where it does not parse; parsed once for the whole call).

    Read from the (not yet authenticated) bodies: a batch naming several, or no usable key, is
    refused whole before anything is decided; each query is still authenticated on its own.
    """
    names: set[tuple[str, str, str, bytes]] = set()
    holders: set[str] = set()
    parsed: list[household_pb2.ContributionQueryBody | None] = []
    for signed in queries:
        try:
            body = household_pb2.ContributionQueryBody.FromString(signed.body)
        except DecodeError:
            parsed.append(None)
            continue  # refused on its own by the service
        parsed.append(body)
        try:
            holders.update(household_pb2.HolderSetBody.FromString(body.holder_set.body).holders)
        except DecodeError:
            continue  # refused on its own by the service (its holder set does not verify)
        names.add((body.requester, body.purpose, body.reply_seal_suite, body.reply_seal_key))
    if len(names) != 1:
        raise Refusal(ErrorCode.MALFORMED, "a contribution batch has one requester, one purpose and one reply key")
    ((requester, purpose, suite, key),) = names
    if suite != sealing.SUITE_NAME or not sealing.usable_public_key(key):
        raise Refusal(ErrorCode.MALFORMED, "contribution query names no usable reply key")
    return requester, purpose, key, holders, parsed


def _round_id_of(signed: household_pb2.SignedContributionQuery) -> str:
    try:
        return household_pb2.ContributionQueryBody.FromString(signed.body).round_id
    except DecodeError:
        return ""
