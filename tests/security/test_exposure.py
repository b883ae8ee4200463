"""What a server exposes besides the Hedui calls: health and reflection."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from node.crypto.revocation import revoke
from node.testing import Federation, run_cluster



def channel_as(fed: Federation, code: str, target: str) -> grpc.Channel:
    m = fed.member(code).cfg
    creds = grpc.ssl_channel_credentials(m.ca_cert.read_bytes(), m.tls_key.read_bytes(), m.tls_cert.read_bytes())
    return grpc.secure_channel(fed.addresses[target], creds)


def health(ch: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def services(ch: grpc.Channel) -> list[str]:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(iter([request]), timeout=5)
    return [s.name for reply in replies for s in reply.list_services_response.service]


# ---------------------------------------------------------------- health and reflection


def test_health_and_reflection_refuse_a_revoked_certificate(planted: dict[str, Path], tmp_path: Path) -> None:
    """Once Jiangsu's certificate is revoked, health and reflection refuse it on the node and the coordinator,
    as every Hedui call does; a member in good standing still gets both."""
    with run_cluster(["32", "44"], root=tmp_path, data={"44": planted["44"]}) as fed:
        report = revoke(fed.pki, member="32")
        coordinator = fed.servers["coordinator"]
        coordinator.crl.path.write_bytes(report.path.read_bytes())
        coordinator.crl.refresh()
        fed.loop.run(fed.servers["44"].link.sync_certificate_revocations())
        for target in ("44", "coordinator"):
            with channel_as(fed, "32", target) as ch:
                for ask in (health, services):
                    with pytest.raises(grpc.RpcError) as err:
                        ask(ch)
                    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    assert "revoked" in (err.value.details() or "")
        with channel_as(fed, "44", "coordinator") as ch:
            assert health(ch) == health_pb2.HealthCheckResponse.SERVING
            assert "hedui.v1.Coordinator" in services(ch)
