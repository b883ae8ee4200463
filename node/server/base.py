"""What every Hedui gRPC server shares: mTLS port, limits, health, reflection, graceful stop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from node.config import MemberConfig
from node.errors import ErrorCode
from node.server import tls


class _Malformed:
    """Stands for a request whose bytes did not decode."""


_MALFORMED = _Malformed()


def _safe_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A unary handler whose undecodable requests get INVALID_ARGUMENT, never a parser message or a trace."""
    decode = handler.request_deserializer
    behavior = handler.unary_unary

    def deserialize(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception:  # noqa: BLE001 - any decoding failure is the same public refusal
            return _MALFORMED

    async def guarded(request: Any, context: aio.ServicerContext) -> Any:
        if request is _MALFORMED:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, ErrorCode.MALFORMED.value)
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(guarded, request_deserializer=deserialize,
                                               response_serializer=handler.response_serializer)


class _SafeRegistrar:
    """Passed to generated `add_*Servicer_to_server` functions: wraps every method handler."""

    def __init__(self, server: aio.Server) -> None:
        self._server = server
        self._wrapped: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: the same handlers arrive through add_registered_method_handlers."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        wrapped = {name: _safe_handler(h) for name, h in handlers.items()}
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
                       register: Callable[[aio.Server], None], reuse_port: bool = False) -> RunningServer:
    """Create, bind (mutual TLS, dynamic credentials) and start a server; mark it SERVING."""
    server = aio.server(options=tls.server_options(cfg.limits, reuse_port=reuse_port),
                        maximum_concurrent_rpcs=cfg.limits.max_concurrent_rpcs)
    register(_SafeRegistrar(server))  # type: ignore[arg-type]
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((service_name, "grpc.health.v1.Health", reflection.SERVICE_NAME), server)
    address = listen or cfg.listen
    port = server.add_secure_port(address, tls.server_credentials(cfg))
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in (service_name, ""):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, health)
