"""Calling a peer node: a synchronous client for platforms and the CLI, an async one for fan-out."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from node.client.query import PreparedQuery, VerifyResult, check_answer, prepare, sign_query
from node.crypto import signing
from node.domain.predicate import Check
from node.errors import HeduiError
from node.member import Member
from node.server import failover, tls
from node.wire.v1 import verification_pb2, verification_pb2_grpc

_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
NOT_IDENTIFIED = "the server's TLS certificate is not that of the member meant (nothing was sent)"


class PeerRefused(HeduiError):
    """The peer refused the request (CLI exit 3). The message is the peer's public reason."""

    def __init__(self, status: str, message: str) -> None:
        self.status = status
        super().__init__(f"refused by peer ({status}): {message}")


class PeerUnreachable(HeduiError):
    """The peer could not be reached or did not answer in time (CLI exit 4)."""

    def __init__(self, status: str, message: str) -> None:
        self.status = status
        super().__init__(f"peer unreachable ({status}): {message}")


def translate(error: grpc.RpcError) -> HeduiError:
    """A gRPC error as a typed Hedui error with a one-line message."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or ""
    if code == grpc.StatusCode.UNAVAILABLE and tls.identity_refused(details):
        return PeerUnreachable(code.name, NOT_IDENTIFIED)
    details = details.splitlines()[0] if details else code.name.lower()
    if code in _UNREACHABLE:
        return PeerUnreachable(code.name, details)
    return PeerRefused(code.name, details)


class PeerClient:
    """Synchronous client for one peer node, over mutual TLS.

    `verify()` validates the input locally (bad ID numbers never leave the machine), turns ID
    numbers into subject tokens, signs the query, and checks the signed answer it gets back.
    The server must present the certificate of `province` (by default the province the
    federation directory lists at `target`), the announced one when the directory has it
    (node.client.identity); `server_name` gives that name directly.
    """

    def __init__(self, member: Member, target: str, *, province: str | None = None, server_name: str | None = None,
                 deadline_s: float | None = None) -> None:
        self.member = member
        self.target = target
        self.deadline_s = deadline_s or member.cfg.limits.default_deadline_s
        #: Where to call, in order: `target`, then the province's other listed endpoints (its replicas).
        self.endpoints: tuple[str, ...] = (target,)
        if server_name is None:
            from node.client.identity import peer_target

            self.province, server_name, self.endpoints = peer_target(member, target, province)
        else:
            self.province = province
        self._options = tls.channel_options(member.cfg.limits, server_name=server_name)
        self._channels: dict[str, grpc.Channel] = {}
        self._order = failover.EndpointOrder()
        self._watched: set[str] = set()  # endpoints whose connectivity was watched (closed once unwatched)
        self._channel = self._channel_to(target)
        self._stub = verification_pb2_grpc.VerificationStub(self._channel)

    def _channel_to(self, endpoint: str) -> grpc.Channel:
        if endpoint not in self._channels:
            options = self._options if len(self.endpoints) == 1 else [*self._options, *failover.RECONNECT_OPTIONS]
            self._channels[endpoint] = grpc.secure_channel(endpoint, tls.channel_credentials(self.member.cfg),
                                                           options=options)
        return self._channels[endpoint]

    def _dial(self, deadline: float) -> verification_pb2_grpc.VerificationStub:
        """The stub to call: on the first endpoint that connects in its share of the time (node.server.failover);
        the last one tried is called as is (a member with one endpoint is called as it always was)."""
        order = self._order.order(self.endpoints)
        for k, endpoint in enumerate(order[:-1]):
            channel = self._channel_to(endpoint)
            self._watched.add(endpoint)
            if failover.connected_blocking(channel, failover.attempt_timeout(deadline, len(order) - k, time.monotonic())):
                self._order.succeeded(endpoint)
                return verification_pb2_grpc.VerificationStub(channel)
            self._order.failed(endpoint)  # nothing was sent to it
        return verification_pb2_grpc.VerificationStub(self._channel_to(order[-1]))

    @classmethod
    def from_config(cls, config_path: Path | str, target: str, **kw: Any) -> PeerClient:
        return cls(Member.from_config(config_path), target, **kw)

    def __enter__(self) -> PeerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for endpoint, channel in self._channels.items():
            if endpoint in self._watched:
                failover.close_when_unwatched(channel)
            else:
                channel.close()

    def prepare(self, ids: Sequence[str], purpose: str, checks: Sequence[str | Check]) -> PreparedQuery:
        m = self.member
        return prepare(
            requester=m.province, linkage_key=m.linkage_key, ids=ids, purpose=purpose, checks=checks,
            catalogue=m.catalogue, policy=m.policy,
            max_subjects=m.cfg.limits.max_subjects, max_checks=m.cfg.limits.max_checks,
        )

    def verify(
        self,
        ids: Sequence[str],
        purpose: str,
        checks: Sequence[str | Check],
        *,
        consent: verification_pb2.SignedConsent | None = None,
        audience: str = "",
    ) -> VerifyResult:
        """Ask the peer; raises BadInput, PeerRefused or PeerUnreachable."""
        prepared = self.prepare(ids, purpose, checks)
        return self.send(prepared, consent=consent, audience=audience)

    def send(self, prepared: PreparedQuery, *, consent: verification_pb2.SignedConsent | None = None,
             audience: str = "") -> VerifyResult:
        body = prepared.body(audience=audience, consent=consent)
        signed = sign_query(self.member.signer, body)
        deadline = time.monotonic() + self.deadline_s
        stub = self._stub if len(self.endpoints) == 1 else self._dial(deadline)
        try:
            response = stub.Verify(verification_pb2.VerifyRequest(signed=signed),
                                   timeout=max(0.001, deadline - time.monotonic()))
        except grpc.RpcError as exc:
            raise translate(exc) from None
        answer = check_answer(response.signed, body, signed.body, self.member.verifier,
                              expect_province=audience or self.province).with_query(signed.body, signed.signature)
        return VerifyResult(request_id=body.request_id, answers=[answer], query_body=signed.body)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel is connected (readiness, never a sleep)."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)


class AsyncPeerClient:
    """Async client for one peer; many concurrent calls share batched query signatures."""

    def __init__(self, member: Member, target: str, *, server_name: str, signer: Any = None) -> None:
        from node.crypto.signing import AsyncBatchSigner
        from node.inflight import InFlight

        self.member = member
        self.in_flight = InFlight()  # concurrent sends share one batch signature
        self._signer = signer or AsyncBatchSigner(member.signer, in_flight=self.in_flight)
        if self._signer.in_flight is None:  # a shared signer learns how many of our calls are in flight
            self._signer.in_flight = self.in_flight
        self._channel = aio.secure_channel(  # the server must carry `server_name` (tls.channel_options)
            target, tls.channel_credentials(member.cfg), options=tls.channel_options(member.cfg.limits, server_name=server_name)
        )
        self._stub = verification_pb2_grpc.VerificationStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def wait_ready(self) -> None:
        await self._channel.channel_ready()

    async def send(self, prepared: PreparedQuery, *, consent: verification_pb2.SignedConsent | None = None,
                   audience: str = "", timeout: float = 10.0, check: bool = True) -> VerifyResult:
        with self.in_flight.track():
            return await self._send(prepared, consent=consent, audience=audience, timeout=timeout, check=check)

    async def _send(self, prepared: PreparedQuery, *, consent: verification_pb2.SignedConsent | None,
                    audience: str, timeout: float, check: bool) -> VerifyResult:
        body = prepared.body(audience=audience, consent=consent)
        raw = body.SerializeToString()
        signed = verification_pb2.SignedQuery(body=raw, signature=await self._signer.sign(signing.QUERY, raw))
        try:
            response = await self._stub.Verify(verification_pb2.VerifyRequest(signed=signed), timeout=timeout)
        except grpc.RpcError as exc:
            raise translate(exc) from None
        answers = [check_answer(response.signed, body, raw, self.member.verifier, expect_province=audience or None)] if check else []
        return VerifyResult(request_id=body.request_id, answers=answers, query_body=raw)
