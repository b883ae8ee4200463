"""gRPC adapter for the Verification service: convert, call the plain service, convert back."""

from __future__ import annotations

from collections import Counter
from typing import Any

from grpc import aio

from node.crypto import signing
from node.crypto.pki import TrustAnchor, province_of_identity
from node.errors import ErrorCode, Refusal
from node.server.admission import Admission, check_deadline
from node.server.edge import edge
from node.service.verification import VerificationService
from node.wire.v1 import common_pb2, verification_pb2, verification_pb2_grpc


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
    ) -> None:
        self.metrics = metrics
        self.service = service
        self.signer = signer
        self.anchor = anchor
        self.admission = admission
        self.log = log
        self.unsealer = unsealer
        self.coordinator_identity = coordinator_identity

    async def Verify(self, request: verification_pb2.VerifyRequest, context: aio.ServicerContext) -> verification_pb2.VerifyResponse:
        log = self.log
        async with edge(context, log, "Verify", self.metrics):
            identity = self.admission.admit(context)
            sealed = request.WhichOneof("query") == "sealed"
            requester: str | None
            if sealed:
                if self.unsealer is None:
                    raise Refusal(ErrorCode.MALFORMED, "sealed queries are not accepted here")
                signed_query, requester = self.unsealer.open_query(request.sealed, identity)
            elif request.WhichOneof("query") == "signed":
                if identity == self.coordinator_identity:
                    raise Refusal(ErrorCode.MALFORMED, "relayed queries must be sealed")
                signed_query = request.signed
                requester = province_of_identity(identity)
                if requester is None:
                    raise Refusal(ErrorCode.NOT_AUTHORISED)
            else:
                raise Refusal(ErrorCode.MALFORMED, "request carries no query")
            decided = self.service.decide(signed_query, requester)
            check_deadline(context)
            requester = decided.query.requester
            log = log.bind(peer=requester, request_id=decided.query.request_id, relayed=identity == self.coordinator_identity)
            body = decided.answer.SerializeToString()
            answer = verification_pb2.SignedAnswer(body=body, signature=await self.signer.sign(signing.ANSWER, body))
            outcomes = Counter(common_pb2.Outcome.Name(r.outcome) for r in decided.answer.results)
            log.debug("answered", purpose=decided.query.purpose, items=list(decided.items), outcomes=dict(outcomes))
            if self.metrics is not None:
                self.metrics.outcomes(outcomes)
            if sealed:
                return verification_pb2.VerifyResponse(sealed=self.unsealer.seal_answer(answer, decided.query))
            return verification_pb2.VerifyResponse(signed=answer)

    async def Holds(self, request: verification_pb2.HoldsRequest, context: aio.ServicerContext) -> verification_pb2.HoldsResponse:
        async with edge(context, self.log, "Holds", self.metrics):
            identity = self.admission.admit(context)
            if identity != self.coordinator_identity:
                raise Refusal(ErrorCode.NOT_AUTHORISED, "only the coordinator may ask which subjects are held")
            held = self.service.holds(list(request.tokens))
            return verification_pb2.HoldsResponse(held=held)
