"""What every Hedui gRPC server shares: mTLS port, limits, health, reflection, graceful stop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from node.config import MemberConfig
from node.server import tls


@dataclass
class RunningServer:
    """A started aio server with its bound port and health servicer."""

    server: aio.Server
    port: int
    health: Any

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_server(cfg: MemberConfig, listen: str | None, service_name: str,
                       register: Callable[[aio.Server], None]) -> RunningServer:
    """Create, bind (mutual TLS, dynamic credentials) and start a server; mark it SERVING."""
    server = aio.server(options=tls.server_options(cfg.limits), maximum_concurrent_rpcs=cfg.limits.max_concurrent_rpcs)
    register(server)
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
