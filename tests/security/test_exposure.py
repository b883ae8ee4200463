"""What a server exposes besides the Hedui calls: health and reflection, dialled endpoints, the metrics port."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from node.crypto.pki import member_paths
from node.crypto.revocation import revoke
from node.testing import Federation, run_cluster
from node.wire.v1 import coordinator_pb2, coordinator_pb2_grpc
from tests.conftest import STRANGER, WORKER

HEDUI = [sys.executable, "-m", "node.cli.main"]
CHECK = ["deposit.balance_total<=2000000"]


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


# ---------------------------------------------------------------- announced endpoints


@pytest.fixture(scope="module")
def fed(planted: dict[str, Path]) -> Iterator[Federation]:
    with run_cluster(["32", "44"], data={"44": planted["44"]}) as federation:
        yield federation


@pytest.fixture()
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    """A unix socket that counts as dialled if anything connects to it."""
    path = tmp_path / "trap.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(8)
    sock.setblocking(False)
    yield sock, path
    sock.close()


def dialled(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
    except BlockingIOError:
        return False
    return True


def announce(fed: Federation, code: str, endpoint: str) -> None:
    signed = fed.servers[code].link.announcement(endpoint)
    with channel_as(fed, code, "coordinator") as ch:
        coordinator_pb2_grpc.CoordinatorStub(ch).Announce(signed, timeout=5)


def discover(fed: Federation) -> None:
    """A discovery by Guangdong, which asks every other province in the directory (Jiangsu included)."""
    consent = fed.grant("44", [STRANGER]).consent_id
    fed.verify("44", [STRANGER], CHECK, consent_id=consent, deadline_s=3)


@pytest.mark.parametrize("endpoint", ["unix:{trap}", "unix://{trap}", "unix-abstract:hedui", "dns:///127.0.0.1:1",
                                      "vsock:2:7444", "ipv4:127.0.0.1:7444", "127.0.0.1:0", "127.0.0.1:65536",
                                      "127.0.0.1", "[::1:7444", "node 32:7444", "127.0.0.1:+80"])
def test_an_endpoint_that_is_not_host_port_is_refused_at_announce(fed: Federation, listener: tuple[socket.socket, Path],
                                                                  endpoint: str) -> None:
    """An announcement whose endpoint is a gRPC transport or not HOST:PORT is refused, and nothing dials it."""
    sock, trap = listener
    with pytest.raises(grpc.RpcError) as err:
        announce(fed, "32", endpoint.format(trap=trap))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "HOST:PORT" in (err.value.details() or "")
    discover(fed)
    assert not dialled(sock)
    assert fed.servers["coordinator"].router.directory.entries()["32"].endpoint == fed.addresses["32"]


def test_a_stored_unix_endpoint_is_never_dialled(fed: Federation, listener: tuple[socket.socket, Path]) -> None:
    """A signed announcement of a unix socket put straight into directory.json is skipped, never dialled."""
    sock, trap = listener
    directory = fed.servers["coordinator"].router.directory
    stored = json.loads(directory.path.read_text())
    bad = fed.servers["32"].link.announcement(f"unix:{trap}").SerializeToString().hex()
    try:
        directory.path.write_text(json.dumps({"members": [m for m in stored["members"]
                                                          if _province_of(m) != "32"] + [bad]}))
        discover(fed)
        assert not dialled(sock)
    finally:
        announce(fed, "32", fed.addresses["32"])


def test_a_host_named_like_a_transport_is_resolved_as_a_name(fed: Federation, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """"unix:7444" is a valid HOST:PORT: the coordinator looks up a host called "unix", never a socket file "7444"."""
    monkeypatch.chdir(tmp_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind("7444")
    sock.listen(8)
    sock.setblocking(False)
    try:
        announce(fed, "32", "unix:7444")
        discover(fed)
        assert not dialled(sock)
    finally:
        sock.close()
        announce(fed, "32", fed.addresses["32"])


def _province_of(hex_announcement: str) -> str:
    signed = coordinator_pb2.SignedAnnouncement.FromString(bytes.fromhex(hex_announcement))
    return coordinator_pb2.AnnouncementBody.FromString(signed.body).province


# ---------------------------------------------------------------- metrics port


def test_metrics_on_a_non_loopback_address_without_tls_are_refused(fed: Federation) -> None:
    """`--metrics 0.0.0.0:PORT` without TLS or the explicit opt-in stops the start with one line and exit 2."""
    done = subprocess.run([*HEDUI, "node", "serve", "--config", str(fed.configs["44"]), "--metrics", "0.0.0.0:0"],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "allow_plain_remote" in done.stderr and "Traceback" not in done.stderr


def test_metrics_on_a_non_loopback_address_need_an_explicit_opt_in(planted: dict[str, Path], tmp_path: Path) -> None:
    """With `[metrics] allow_plain_remote = true` plain-HTTP metrics may listen on every address."""
    extra = {"metrics": {"listen": "0.0.0.0:0", "allow_plain_remote": True}}
    with run_cluster(["44"], root=tmp_path, config_extra=extra) as fed:
        port = fed.servers["44"].metrics_port
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).status == 200


def test_metrics_are_served_over_tls_with_client_certificates(planted: dict[str, Path], tmp_path: Path) -> None:
    """With [metrics] tls_cert, tls_key and tls_client_ca, the port speaks only HTTPS and only to a scraper
    holding a federation certificate."""
    pki = member_paths(tmp_path / "pki", "44")
    extra = {"metrics": {"listen": "127.0.0.1:0", "tls_cert": str(pki.tls_cert), "tls_key": str(pki.tls_key),
                         "tls_client_ca": str(pki.ca_cert)}}
    with run_cluster(["51", "44"], root=tmp_path, data=planted, config_extra=extra) as fed:
        consent = fed.grant("51", [WORKER]).consent_id
        fed.verify("51", [WORKER], CHECK, consent_id=consent, to="44")
        url = f"https://localhost:{fed.servers['44'].metrics_port}/metrics"
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError, ssl.SSLError)):
            urllib.request.urlopen(url.replace("https:", "http:"), timeout=5)
        anonymous = ssl.create_default_context(cafile=str(pki.ca_cert))
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError, ssl.SSLError)):
            urllib.request.urlopen(url, timeout=5, context=anonymous).read()
        scraper = ssl.create_default_context(cafile=str(pki.ca_cert))
        scraper.load_cert_chain(str(member_paths(tmp_path / "pki", "51").tls_cert),
                                str(member_paths(tmp_path / "pki", "51").tls_key))
        text = urllib.request.urlopen(url, timeout=5, context=scraper).read().decode()
    assert 'hedui_outcomes_total{member="urn:hedui:province:44"' in text
