"""Server identity: clients and the coordinator reach only the member they mean, holding the announced certificate."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc import aio

from node.client.batch import BatchSession
from node.client.client import NOT_IDENTIFIED, PeerUnreachable
from node.client.coordinator import CoordinatorClient
from node.coordinator.directory import ANNOUNCEMENT
from node.crypto import pki
from node.domain.regions import COORDINATOR_TLS_NAME, province_tls_name, province_uri
from node.member import Member
from node.server import tls
from node.testing import Federation, run_cluster
from node.wire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from tests.conftest import WORKER

HEDUI = [sys.executable, "-m", "node.cli.main"]
CHECK = ["real_estate.count<=1"]
LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class Impostor:
    """A real mutual-TLS gRPC server with a genuine federation certificate that counts every call it receives."""

    class _Count(grpc.GenericRpcHandler):
        def __init__(self) -> None:
            self.methods: list[str] = []

        def service(self, handler_call_details: Any) -> None:
            self.methods.append(handler_call_details.method)
            return None  # UNIMPLEMENTED: whatever arrives is only counted

    def __init__(self, fed: Federation, cert_pem: bytes, key_pem: bytes) -> None:
        self.fed = fed
        self.counter = self._Count()
        ca = fed.pki.joinpath("ca.pem").read_bytes()
        self.credentials = grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca,
                                                       require_client_auth=True)
        self.server: Any = None
        self.address = ""

    async def _start(self) -> None:
        self.server = aio.server()
        self.server.add_generic_rpc_handlers((self.counter,))
        port = self.server.add_secure_port("127.0.0.1:0", self.credentials)
        await self.server.start()
        self.address = f"127.0.0.1:{port}"

    def __enter__(self) -> Impostor:
        assert self.fed.loop is not None
        self.fed.loop.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.fed.loop is not None
        self.fed.loop.run(self.server.stop(0))

    @property
    def calls(self) -> list[str]:
        return self.counter.methods


def member_pems(fed: Federation, code: str) -> tuple[bytes, bytes]:
    paths = pki.member_paths(fed.pki, code)
    return paths.tls_cert.read_bytes(), paths.tls_key.read_bytes()


def another_certificate_of(fed: Federation, code: str) -> tuple[bytes, bytes]:
    """A second valid TLS certificate of province `code`, from the federation CA (not the announced one)."""
    ca_cert = pki.load_cert(fed.pki / "ca.pem")
    ca_key = pki.load_private_key(fed.pki / "ca.key")
    cert, key = pki.issue_tls_cert(ca_cert, ca_key, province_uri(code), loopback=True)  # type: ignore[arg-type]
    pem = serialization.Encoding.PEM
    return cert.public_bytes(pem), key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def announce(fed: Federation, code: str, body: bytes | None = None, *, endpoint: str = "") -> None:
    """Announce province `code` (its own signed announcement, over its own TLS certificate)."""
    m = fed.member(code)
    if body is None:
        signed = fed.servers[code].link.announcement(endpoint)
    else:
        signed = coordinator_pb2.SignedAnnouncement(body=body, signature=m.signer.sign(ANNOUNCEMENT, body))
    options = tls.channel_options(m.cfg.limits, server_name=COORDINATOR_TLS_NAME)
    with grpc.secure_channel(fed.addresses["coordinator"], tls.channel_credentials(m.cfg), options=options) as ch:
        coordinator_pb2_grpc.CoordinatorStub(ch).Announce(signed, timeout=5)


def route_to(fed: Federation, requester: str, province: str) -> coordinator_pb2.RoutedAnswer:
    """One routed call from `requester` to `province` (a sealed envelope the router forwards unopened)."""
    consent = fed.grant(requester, [WORKER]).consent_id
    envelope = coordinator_pb2.Envelope(
        province=province, possession_commitments=[b"\x01" * 32],
        query=common_pb2.Sealed(suite="hpke", recipient=province_uri(province), recipient_key_id=b"\x02" * 32,
                                ciphertext=b"\x03" * 64))
    with fed.coordinator(requester) as c:
        reply = c.call("Route", coordinator_pb2.RouteRequest(consent_id=consent, request_id=uuid.uuid4().hex,
                                                             envelopes=[envelope]))
    (answer,) = reply.answers
    return answer


@pytest.fixture(scope="module")
def fed(planted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with run_cluster(["32", "44", "51"], root=tmp_path_factory.mktemp("identity"), data=planted) as federation:
        # One endpoint per province, the last announced: these tests move Sichuan's endpoint (with a TTL its
        # real endpoint would stay listed beside the impostor's, as a replica's does).
        federation.servers["coordinator"].router.directory.ttl_ms = 0
        yield federation


@pytest.fixture
def sc_restored(fed: Federation) -> Iterator[None]:
    """Whatever a test announces for Sichuan, its real announcement is restored afterwards."""
    yield
    announce(fed, "51", endpoint=fed.addresses["51"])


def test_a_direct_client_refuses_another_provinces_certificate_at_sichuans_endpoint(fed: Federation,
                                                                                     sc_restored: None) -> None:
    """Guangdong's valid certificate behind Sichuan's announced endpoint: the direct client refuses it at the
    handshake, and the impostor receives no call."""
    with Impostor(fed, *member_pems(fed, "44")) as impostor:
        announce(fed, "51", endpoint=impostor.address)
        for province in (None, "51"):  # found in the directory by endpoint, or named
            with fed.client("32", to=impostor.address, province=province, deadline_s=3) as peer:
                with pytest.raises(PeerUnreachable) as refused:
                    peer.verify([WORKER], "dibao", CHECK)
            assert NOT_IDENTIFIED in str(refused.value)
        assert impostor.calls == []


def test_the_router_refuses_another_provinces_certificate_at_sichuans_endpoint(fed: Federation,
                                                                               sc_restored: None) -> None:
    """The coordinator's routed call to Sichuan, answered by a server with Guangdong's certificate, reports
    Sichuan UNAVAILABLE with a public reason, and nothing reaches the impostor."""
    with Impostor(fed, *member_pems(fed, "44")) as impostor:
        announce(fed, "51", endpoint=impostor.address)
        answer = route_to(fed, "32", "51")
        assert impostor.calls == []
    assert answer.status == coordinator_pb2.ROUTE_UNAVAILABLE
    assert "did not present its announced certificate" in answer.message


def test_a_valid_certificate_other_than_the_announced_one_is_refused(fed: Federation, sc_restored: None) -> None:
    """A second genuine Sichuan certificate (not the one Sichuan announced) is refused by the direct client and
    by the router: the announcement pins its own certificate."""
    with Impostor(fed, *another_certificate_of(fed, "51")) as impostor:
        announce(fed, "51", endpoint=impostor.address)
        with fed.client("32", to=impostor.address, deadline_s=3) as peer, pytest.raises(PeerUnreachable) as refused:
            peer.verify([WORKER], "dibao", CHECK)
        answer = route_to(fed, "32", "51")
        assert impostor.calls == []
    assert NOT_IDENTIFIED in str(refused.value)
    assert answer.status == coordinator_pb2.ROUTE_UNAVAILABLE


def test_an_announcement_of_a_certificate_the_caller_does_not_hold_is_refused(fed: Federation,
                                                                              sc_restored: None) -> None:
    """The coordinator refuses an announcement whose TLS fingerprint is not the certificate the announcing call
    came with, so an announced fingerprint is always one the province really serves."""
    other = x509.load_pem_x509_certificate(another_certificate_of(fed, "51")[0])
    body = coordinator_pb2.AnnouncementBody.FromString(fed.servers["51"].link.announcement(fed.addresses["51"]).body)
    body.tls_cert_sha256 = hashlib.sha256(other.public_bytes(serialization.Encoding.DER)).digest()
    body.tls_name = pki.certificate_tls_name(other)
    with pytest.raises(grpc.RpcError) as refused:
        announce(fed, "51", body.SerializeToString())
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not the one this call came with" in (refused.value.details() or "")


def test_clients_refuse_a_coordinator_endpoint_serving_a_province_certificate(fed: Federation) -> None:
    """A server with Guangdong's valid certificate at the coordinator's address is refused by the synchronous
    and the batch coordinator clients: every handshake fails, so no call is ever sent."""
    with Impostor(fed, *member_pems(fed, "44")) as impostor:
        m = fed.member("32")
        fooled = Member(dataclasses.replace(m.cfg, coordinator=impostor.address))
        with CoordinatorClient(fooled, deadline_s=2) as client, pytest.raises(PeerUnreachable):
            client.directory()  # waits for a coordinator that answers under its name, until the deadline

        async def batch_directory() -> None:
            session = BatchSession(fooled, deadline_s=2)
            try:
                await session.directory()
            finally:
                await session.close()

        assert fed.loop is not None
        with pytest.raises(PeerUnreachable):
            fed.loop.run(batch_directory())
        assert impostor.calls == []


def test_the_router_still_reaches_the_real_province(fed: Federation) -> None:
    """With Sichuan's own announcement in place, a routed verification still gets Sichuan's signed answer."""
    consent = fed.grant("32", [WORKER]).consent_id
    result = fed.verify("32", [WORKER], CHECK, consent_id=consent)
    assert result.routing["51"] == "OK"
    assert "51" in [a.province for a in result.answers if a.signature_valid]
    direct = fed.verify("32", [WORKER], CHECK, consent_id=consent, to="51")  # pinned to the announced certificate
    assert [a.province for a in direct.answers if a.signature_valid] == ["51"]


# ------------------------------------------------------------------------------- pki issue


def tls_names(cert_path: Path) -> set[str]:
    san = pki.load_cert(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))}


def hedui(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEDUI, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_pki_issue_names_only_the_hosts_given_and_loopback_only_when_asked(tmp_path: Path) -> None:
    """`hedui pki issue` puts the member's federation names and the --host names in the TLS certificate, localhost
    and the loopback addresses only with --loopback, and refuses a --host in the federation's own namespace."""
    assert hedui("pki", "init", "--pki", tmp_path).returncode == 0
    assert hedui("pki", "issue", "--pki", tmp_path, "--province", "44", "--host", "node44.example").returncode == 0
    names = tls_names(pki.member_paths(tmp_path, "44").tls_cert)
    assert not names & LOOPBACK
    assert {"node44.example", province_tls_name("44")} <= names
    assert hedui("pki", "issue", "--pki", tmp_path, "--coordinator").returncode == 0
    assert tls_names(pki.member_paths(tmp_path, "coordinator").tls_cert) == {COORDINATOR_TLS_NAME}
    assert hedui("pki", "issue", "--pki", tmp_path, "--province", "51", "--loopback").returncode == 0
    assert LOOPBACK <= tls_names(pki.member_paths(tmp_path, "51").tls_cert)
    refused = hedui("pki", "issue", "--pki", tmp_path, "--province", "32", "--host", province_tls_name("51"))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "reserved" in refused.stderr


def test_the_router_stops_at_a_revoked_announced_tls_certificate(planted: dict[str, Path], tmp_path: Path) -> None:
    """Once the TLS certificate Sichuan announced is revoked (by serial, its signing certificate still valid),
    the coordinator no longer routes to Sichuan."""
    from node.crypto.revocation import revoke

    with run_cluster(["32", "51"], root=tmp_path, data={"51": planted["51"]}) as fed:
        assert route_to(fed, "32", "51").message != "province not in the directory"
        serial = pki.load_cert(fed.member("51").cfg.tls_cert).serial_number
        report = revoke(fed.pki, member=None, serials=[serial])
        coordinator = fed.servers["coordinator"]
        coordinator.crl.path.write_bytes(report.path.read_bytes())
        coordinator.crl.refresh()
        answer = route_to(fed, "32", "51")
    assert answer.status == coordinator_pb2.ROUTE_UNAVAILABLE
    assert answer.message == "province not in the directory"
