"""gRPC adapter for the HouseholdHolder service: open the sealed query, call the plain service,
audit, sign and seal the masked contribution back to the requester."""

from __future__ import annotations

import hashlib
from typing import Any

from grpc import aio

from node.crypto import sealing, signing
from node.crypto.pki import TrustAnchor, province_of_identity
from node.domain import request_ids
from node.domain.regions import province_uri
from node.errors import ErrorCode, Refusal
from node.inflight import InFlight
from node.server.admission import Admission, check_deadline
from node.server.edge import edge
from node.service.household import HouseholdService
from node.store import audit
from node.wire.v1 import household_pb2, household_pb2_grpc

CONTRIBUTED = "contributed"


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
                    identity = self.admission.admit(context)
                    fields["peer"] = province_of_identity(identity) or "coordinator"
                    if self.link is None:
                        raise Refusal(ErrorCode.UNAVAILABLE, "this node has no coordinator: no round can be checked")
                    signed, peer_province = self.link.open_message(request.query, identity,
                                                                   household_pb2.SignedContributionQuery)
                    raw = signed.body
                    query = self.service.authenticate(signed, peer_province)
                    if query.reply_seal_suite != sealing.SUITE_NAME or not sealing.usable_public_key(query.reply_seal_key):
                        raise Refusal(ErrorCode.MALFORMED, "contribution query names no usable reply key")
                    directory = await self.link.directory()
                    holders = household_pb2.HolderSetBody.FromString(query.holder_set.body).holders
                    if any(h not in directory for h in holders):
                        directory = await self.link.directory(refresh=True)
                    mask_keys = {p: e.mask_public_key for p, e in directory.items()}
                    contribution = self.service.contribute(signed, peer_province, mask_keys)
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
                    outcome_digest=hashlib.sha256(body).hexdigest(),
                    extra={"via": "coordinator"} if identity == self.coordinator_identity else {},
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

    def _refusal_record(self, refusal: Refusal, raw: bytes, identity: str) -> audit.AuditRecord:
        """A refusal's audit record: the (unauthenticated) query's fields only where well formed."""
        try:
            body = household_pb2.ContributionQueryBody.FromString(raw)
        except Exception:  # noqa: BLE001 - nothing usable in the body
            body = household_pb2.ContributionQueryBody()
        return audit.coordinator_event(
            audit.refused(refusal.code), requester=province_of_identity(identity) or ("coordinator" if identity else ""),
            request_id=request_ids.shown(body.round_id), purpose=body.purpose,
        )

    async def _audit(self, record: audit.AuditRecord) -> None:
        if self.auditor is not None:
            await self.auditor.record(record)
