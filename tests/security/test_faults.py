"""Faults and key lifecycle on a running federation: rotation, audit failure, coordinator restart."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from node.client.client import PeerUnreachable
from node.client.coordinator import CoordinatorClient
from node.crypto.pki import issue_member, load_cert
from node.crypto.tokens import subject_token
from node.testing import Federation, run_cluster
from node.wire.v1 import coordinator_pb2, verification_pb2
from tests.conftest import WORKER

CHECK = ["deposit.balance_total<=2000000"]


@pytest.fixture()
def fed(planted: dict[str, Path], tmp_path: Path) -> Iterator[Federation]:
    with run_cluster(["51", "44"], root=tmp_path, data=planted) as federation:
        yield federation


def served_certificate(fed: Federation, code: str) -> x509.Certificate:
    """The TLS certificate a node presents on a fresh handshake."""
    m = fed.member("51")
    context = ssl.create_default_context(cafile=str(m.cfg.ca_cert))
    context.load_cert_chain(str(m.cfg.tls_cert), str(m.cfg.tls_key))
    context.set_alpn_protocols(["h2"])
    host, port = fed.addresses[code].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_rotation_without_restart(fed: Federation) -> None:
    """After `pki issue` + `node rotate`, the running node presents the new TLS certificate and signs with the new key."""
    from node.cli.node_cmd import install_member_keys

    before_tls = served_certificate(fed, "44").serial_number
    consent = fed.grant("51", [WORKER], "dibao").consent_id
    old_key_id = fed.verify("51", [WORKER], CHECK, consent_id=consent, to="44").answers[0].signed.signature.key_id
    issue_member(fed.pki, "44", loopback=True)
    install_member_keys(fed.pki, "44", fed.member("44").cfg.data_dir, linkage=True)
    new_sign = load_cert(fed.member("44").cfg.sign_cert).serial_number
    fed.loop.run(fed.servers["44"].check_keys())
    assert served_certificate(fed, "44").serial_number != before_tls
    answer = fed.verify("51", [WORKER], CHECK, consent_id=consent, to="44").answers[0]
    assert answer.signature_valid and answer.signed.signature.key_id != old_key_id
    assert x509.load_der_x509_certificate(answer.signed.signature.certificate).serial_number == new_sign


def test_no_answer_when_the_audit_record_cannot_be_written(fed: Federation) -> None:
    """If the audit log cannot be written, the node gives no answer (UNAVAILABLE)."""
    consent = fed.grant("51", [WORKER], "dibao").consent_id
    fed.verify("51", [WORKER], CHECK, consent_id=consent, to="44")
    fed.servers["44"].audit_log.close()  # the disk is gone, as far as the node can tell
    with pytest.raises(PeerUnreachable) as err:
        fed.verify("51", [WORKER], CHECK, consent_id=consent, to="44")
    assert err.value.status == "UNAVAILABLE" and "audit log cannot be written" in str(err.value)
    assert "closed" not in str(err.value)  # internal detail stays inside


def test_call_in_flight_survives_a_coordinator_restart(fed: Federation) -> None:
    """A discovery sent while the coordinator is down waits for it and succeeds once it is back (safe to retry)."""
    m = fed.member("51")
    consent = fed.grant("51", [WORKER], "dibao")
    body = verification_pb2.ConsentBody.FromString(consent.receipt.body)
    with CoordinatorClient(m) as client:
        epoch, edts = client.discovery_tokens([subject_token(m.linkage_key, WORKER)])
    fed.stop_node("coordinator")
    with CoordinatorClient(m, deadline_s=20) as client:
        pending = client.stub.Discover.future(coordinator_pb2.DiscoverRequest(
            consent_id=body.consent_id, request_id="restart-0001", discovery_tokens=edts, epoch=epoch),
            timeout=20, wait_for_ready=True)
        assert not pending.done()  # it is waiting for the coordinator, not failed
        fed.start_coordinator()
        reply = pending.result(timeout=20)
    assert {s.province: s.status for s in reply.statuses} == {"44": coordinator_pb2.ROUTE_OK}
