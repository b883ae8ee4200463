"""The only place that knows gRPC status codes: refusals in, public statuses out."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc import aio

from node.crypto.errors import CertificateRejected
from node.crypto.pki import CheckedCertificate, TrustAnchor
from node.errors import ErrorCode, Refusal
from node.store.errors import StoreCorrupt, StoreError

STATUS: Final[dict[ErrorCode, grpc.StatusCode]] = {
    ErrorCode.MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.IDENTITY_MISMATCH: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.NOT_ADDRESSED_HERE: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.CLOCK_WINDOW: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.REPLAYED: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.UNKNOWN_PURPOSE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNKNOWN_ITEM: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.TOO_MANY: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.CONSENT_MISSING: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.CONSENT_INVALID: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.CONSENT_REVOKED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.CONSENT_EXPIRED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.NOT_AUTHORISED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.NOT_HELD: grpc.StatusCode.NOT_FOUND,
    ErrorCode.PROBING_LIMIT: grpc.StatusCode.PERMISSION_DENIED,  # not RESOURCE_EXHAUSTED: never refills, do not retry
    ErrorCode.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}



def public_message(refusal: Refusal) -> str:
    """The one-line message a caller sees: the catalogue text, refined by a public detail."""
    return str(refusal).replace("\n", " ")[:300]


def peer_identity(context: aio.ServicerContext, anchor: TrustAnchor) -> str:
    """The federation identity (URI SAN) of the mutually authenticated TLS peer."""
    return peer_certificate(context, anchor).identity


def peer_certificate(context: aio.ServicerContext, anchor: TrustAnchor) -> CheckedCertificate:
    """The mutually authenticated TLS peer's certificate, checked (Refusal UNAUTHENTICATED when not accepted)."""
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        raise Refusal(ErrorCode.UNAUTHENTICATED, "no client certificate")
    try:
        return anchor.check_tls_peer(pems[0])
    except CertificateRejected as exc:
        raise Refusal(ErrorCode.UNAUTHENTICATED, str(exc)) from None


def peer_certificate_sha256(context: aio.ServicerContext) -> bytes | None:
    """SHA-256 of the DER of the TLS peer's certificate on this call, or None when it has none."""
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return None
    try:
        der = x509.load_pem_x509_certificate(pems[0]).public_bytes(serialization.Encoding.DER)
    except ValueError:
        return None
    return hashlib.sha256(der).digest()


async def refuse(context: aio.ServicerContext, refusal: Refusal, log: Any, method: str = "", metrics: Any = None,
                 on_refusal: Callable[[Refusal], Awaitable[None]] | None = None,
                 fields: dict[str, Any] | None = None) -> NoReturn:
    """End the call with the refusal's public status: logged, counted and (with `on_refusal`) audited first."""
    log.info("refused", reason=refusal.code.name, method=method, **(fields or {}))
    if metrics is not None:
        metrics.refusal(refusal.code.name)
    if on_refusal is not None:
        await on_refusal(refusal)
    await context.abort(STATUS[refusal.code], public_message(refusal))


class edge:  # noqa: N801 - used as `async with edge(...)`, like the function it replaced
    """Run a handler body: refusals become their public status; a store out of reach UNAVAILABLE; anything else
    INTERNAL.

    With `metrics` (a MemberMetrics), the call's latency is recorded by method and status;
    `on_refusal` is awaited before a refusal is returned (the coordinator audits them).
    `fields` (filled in by the handler as it learns them: peer, request id) are logged with it.
    A class, not an @asynccontextmanager: no generator and no extra frames on every call.
    """

    __slots__ = ("context", "log", "method", "metrics", "on_refusal", "fields", "_started")

    def __init__(self, context: aio.ServicerContext, log: Any, method: str = "", metrics: Any = None,
                 on_refusal: Callable[[Refusal], Awaitable[None]] | None = None,
                 fields: dict[str, Any] | None = None) -> None:
        self.context, self.log, self.method, self.metrics = context, log, method, metrics
        self.on_refusal, self.fields = on_refusal, fields
        self._started = 0.0

    async def __aenter__(self) -> None:
        self._started = time.perf_counter()

    async def __aexit__(self, _type: Any, exc: BaseException | None, _tb: Any) -> bool:
        status = "OK"
        try:
            if exc is None:
                return False
            if isinstance(exc, aio.AbortError):
                status = "ABORTED"
            elif isinstance(exc, Refusal):
                status = STATUS[exc.code].name
                await refuse(self.context, exc, self.log, self.method, self.metrics, self.on_refusal, self.fields)
            elif isinstance(exc, StoreError) and not isinstance(exc, StoreCorrupt):
                # the store cannot be reached (a PostgreSQL server down, a pool with no connection): the call may
                # succeed again, so the caller sees UNAVAILABLE, as when a holder cannot be reached; nothing answered
                status = "UNAVAILABLE"
                self.log.error("store_unavailable", error_type=type(exc).__name__, method=self.method,
                               **(self.fields or {}))
                await self.context.abort(grpc.StatusCode.UNAVAILABLE, ErrorCode.UNAVAILABLE.value)
            elif isinstance(exc, Exception):  # the edge must never leak internals
                status = "INTERNAL"
                self.log.error("internal_error", error_type=type(exc).__name__, method=self.method, **(self.fields or {}))
                await self.context.abort(grpc.StatusCode.INTERNAL, ErrorCode.INTERNAL.value)
            return False
        finally:
            if self.metrics is not None:
                self.metrics.call(self.method, status, time.perf_counter() - self._started)
