"""What every Hedui gRPC server shares: mTLS port, admission before any request is read, health, reflection, stop."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from node.config import MemberConfig
from node.errors import ErrorCode, Refusal
from node.server import tls
from node.server.admission import Admission
from node.server.edge import refuse


class _Malformed:
    """Stands for a request whose bytes did not decode."""


_MALFORMED = _Malformed()
BACKSTOP_FACTOR = 2  # gRPC's own cap, a memory backstop: admission (node.server.admission) decides


def _safe_decoder(decode: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return decode(data) if decode is not None else data
        except Exception:  # noqa: BLE001 - any decoding failure is the same public refusal
            return _MALFORMED
    return deserialize


@dataclass(frozen=True)
class _Gate:
    """What every handler of a server passes before its request is read."""

    admission: Admission
    log: Any
    metrics: Any
    check_identity: bool  # True for services that do not check the peer themselves (health, reflection)

    def wrap(self, service: str, name: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler as a request-streaming one (the same on the wire), so admission runs before any
        message is read; undecodable unary requests get INVALID_ARGUMENT, never a parser message."""
        method = f"/{service}/{name}"
        behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        unary_request, streaming_response = not handler.request_streaming, handler.response_streaming

        async def run(requests: Any, context: aio.ServicerContext) -> Any:
            try:
                peer = self.admission.identify(context)  # the one certificate check of this call
                if self.check_identity and peer.rejection is not None:
                    raise peer.rejection
                ticket = self.admission.enter(context, method)
            except Refusal as refusal:
                await refuse(context, refusal, self.log, method, self.metrics)
            with ticket:
                if unary_request:
                    requests = await context.read()
                    if requests is _MALFORMED or requests is aio.EOF:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, ErrorCode.MALFORMED.value)
                result = behavior(requests, context)
                if not streaming_response:
                    return await result
                if inspect.isasyncgen(result):
                    async for response in result:
                        await context.write(response)
                else:
                    await result
                return None

        decode = _safe_decoder(handler.request_deserializer) if unary_request else handler.request_deserializer
        make = grpc.stream_stream_rpc_method_handler if streaming_response else grpc.stream_unary_rpc_method_handler
        return make(run, request_deserializer=decode, response_serializer=handler.response_serializer)


class _Registrar:
    """Passed to generated `add_*Servicer_to_server` functions: puts every method handler behind the gate."""

    def __init__(self, server: aio.Server, gate: _Gate) -> None:
        self._server = server
        self._gate = gate

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: the same handlers arrive through add_registered_method_handlers."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        wrapped = {name: self._gate.wrap(service, name, h) for name, h in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        self._server.add_registered_method_handlers(service, wrapped)


@dataclass
class RunningServer:
    """A started aio server with its bound port and health servicer."""

    server: aio.Server
    port: int
    health: Any

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_server(cfg: MemberConfig, listen: str | None, service_name: str, *,
                       register: Callable[[aio.Server], None], admission: Admission, log: Any, metrics: Any = None,
                       reuse_port: bool = False) -> RunningServer:
    """Create, bind (mutual TLS, dynamic credentials) and start a server; mark it SERVING.

    Every method, health and reflection included, is behind `admission` (a place in a pool per
    caller, before the request is read); health and reflection also refuse a certificate the
    federation does not accept (revoked, wrong usage), as the Hedui handlers do.
    """
    limits = cfg.limits
    server = aio.server(options=tls.server_options(limits, reuse_port=reuse_port),
                        maximum_concurrent_rpcs=BACKSTOP_FACTOR * (limits.max_concurrent_rpcs + limits.reserved_feed_rpcs))
    register(_Registrar(server, _Gate(admission, log, metrics, check_identity=False)))  # type: ignore[arg-type]
    checked = _Registrar(server, _Gate(admission, log, metrics, check_identity=True))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, checked)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer((service_name, "grpc.health.v1.Health", reflection.SERVICE_NAME)), checked)
    address = listen or cfg.listen
    port = server.add_secure_port(address, tls.server_credentials(cfg))
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in (service_name, ""):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, health)
