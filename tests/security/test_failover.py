"""Failover between a member's endpoints: the router moves on only when nothing was sent, and never past the deadline."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from node.domain.regions import province_uri
from node.testing import Federation, run_cluster
from node.wire.v1 import common_pb2, coordinator_pb2
from tests.conftest import WORKER
from tests.security.test_server_identity import announce, member_pems

FIRST = "127.0.0.1:1"  # sorts before every other 127.0.0.1 endpoint: the one tried first
MARGIN_S = 1.0  # allowance past the caller's deadline for the reply to come back (a bound, not a speed)


class Replica:
    """A real mutual-TLS gRPC server holding Sichuan's announced certificate that counts the calls it gets;
    `stall` ones are never answered (until it stops)."""

    class _Handler(grpc.GenericRpcHandler):
        def __init__(self, stall: bool, release: asyncio.Event) -> None:
            self.methods: list[str] = []
            self.stall, self.release = stall, release

        def service(self, details: Any) -> Any:
            self.methods.append(details.method)
            if not self.stall:
                return None  # UNIMPLEMENTED: counted only

            async def hold(request: bytes, context: Any) -> bytes:
                await self.release.wait()
                return b""
            return grpc.unary_unary_rpc_method_handler(hold)

    def __init__(self, fed: Federation, listen: str, *, stall: bool = False) -> None:
        assert fed.loop is not None
        self.fed, self.listen, self.stall = fed, listen, stall
        self.address = fed.loop.run(self._start())

    async def _start(self) -> str:
        cert, key = member_pems(self.fed, "51")
        credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=self.fed.pki.joinpath("ca.pem").read_bytes(),
                                                  require_client_auth=True)
        self.release = asyncio.Event()
        self.handler = self._Handler(self.stall, self.release)
        self.server = aio.server()
        self.server.add_generic_rpc_handlers((self.handler,))
        port = self.server.add_secure_port(self.listen, credentials)
        await self.server.start()
        return f"127.0.0.1:{port}"

    def close(self) -> None:
        assert self.fed.loop is not None

        async def stop() -> None:
            self.release.set()
            await self.server.stop(0)
        self.fed.loop.run(stop())


class Silent:
    """A TCP listener that accepts connections and never says a word (a TLS handshake to it hangs); counts them."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_server((host, port))
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def route(fed: Federation, province: str, timeout: float = 10.0) -> tuple[coordinator_pb2.RoutedAnswer, float]:
    """One routed call from 32 to `province` (a sealed envelope forwarded unopened) and the seconds it took."""
    consent = fed.grant("32", [WORKER]).consent_id
    envelope = coordinator_pb2.Envelope(
        province=province, possession_commitments=[b"\x01" * 32],
        query=common_pb2.Sealed(suite="hpke", recipient=province_uri(province), recipient_key_id=b"\x02" * 32,
                                ciphertext=b"\x03" * 64))
    with fed.coordinator("32") as c:
        started = time.monotonic()
        reply = c.call("Route", coordinator_pb2.RouteRequest(consent_id=consent, request_id=uuid.uuid4().hex,
                                                             envelopes=[envelope]), timeout=timeout)
        elapsed = time.monotonic() - started
    (answer,) = reply.answers
    return answer, elapsed


_LINKS: dict[int, Any] = {}  # id(federation) -> its stopped Sichuan node's coordinator link (it still signs)


@pytest.fixture
def fed(planted: dict[str, Path], tmp_path: Path) -> Iterator[Federation]:
    """A federation whose Sichuan node is stopped: its listed endpoint refuses connections."""
    with run_cluster(["32", "51"], root=tmp_path, data={"51": planted["51"]}) as federation:
        _LINKS[id(federation)] = federation.servers["51"].link
        federation.stop_node("51")
        yield federation
        _LINKS.pop(id(federation))


def announce_replica(fed: Federation, endpoint: str) -> None:
    """Sichuan's own announcement of `endpoint`, as a replica serving there sends it."""
    announce(fed, "51", _LINKS[id(fed)].announcement(endpoint).body)


def test_the_router_passes_over_an_endpoint_that_refuses_and_reaches_the_next(fed: Federation) -> None:
    """With Sichuan's first endpoint refusing connections (and its old one too), the routed call reaches the
    replica that listens, once; the refusing endpoint goes to the back of the order."""
    replica = Replica(fed, "127.0.0.1:0")
    try:
        announce_replica(fed, replica.address)
        announce_replica(fed, FIRST)  # nothing listens at port 1: connection refused
        endpoints = fed.servers["coordinator"].router.directory.entries()["51"].endpoints
        assert endpoints[0] == FIRST and replica.address in endpoints and len(endpoints) == 3
        answer, _ = route(fed, "51")
        assert replica.handler.methods == ["/hedui.v1.Verification/Verify"]
        # the replica's refusal (UNIMPLEMENTED, no possession proof) judged as its reply: NOT_HELD, not a transport failure
        assert answer.status == coordinator_pb2.ROUTE_NOT_HELD
        order = fed.servers["coordinator"].router._order.order(endpoints)
        assert order[-1] == FIRST or order[-2] == FIRST
        assert order[0] == replica.address
    finally:
        replica.close()


def test_a_call_that_was_sent_is_never_sent_again_to_another_endpoint(fed: Federation) -> None:
    """The first endpoint accepts the call and never answers: the router reports DEADLINE_EXCEEDED within the
    caller's deadline and sends nothing to the replica behind it (the call may have been processed)."""
    stalling = Replica(fed, FIRST, stall=True)
    replica = Replica(fed, "127.0.0.1:0")
    try:
        announce_replica(fed, replica.address)
        announce_replica(fed, FIRST)
        answer, elapsed = route(fed, "51", timeout=2.0)
        assert stalling.handler.methods == ["/hedui.v1.Verification/Verify"]
        assert replica.handler.methods == []
        assert answer.status == coordinator_pb2.ROUTE_DEADLINE_EXCEEDED
        assert elapsed <= 2.0 + MARGIN_S
    finally:
        stalling.close()
        replica.close()


def test_endpoints_that_never_connect_share_the_deadline_and_the_holder_is_unavailable(fed: Federation) -> None:
    """Two endpoints whose TLS handshakes hang: each is tried within its share of the caller's deadline, and
    Sichuan is reported UNAVAILABLE before the deadline passes."""
    first, second = Silent("127.0.0.1", 1), Silent("127.0.0.1", 0)
    try:
        announce_replica(fed, second.address)
        announce_replica(fed, first.address)
        answer, elapsed = route(fed, "51", timeout=3.0)
        assert answer.status == coordinator_pb2.ROUTE_UNAVAILABLE and answer.message == "province unavailable"
        assert first.accepted and second.accepted  # both were tried
        assert elapsed <= 3.0 + MARGIN_S
    finally:
        first.close()
        second.close()


def test_a_direct_client_fails_over_from_a_refusing_endpoint_to_the_provinces_replica(fed: Federation) -> None:
    """`hedui verify --to` an endpoint of Sichuan that refuses connections: the client tries Sichuan's other
    listed endpoint and gets its signed answer (the certificate pinned as for the endpoint named)."""
    fed.start_node("51")
    announce_replica(fed, FIRST)
    consent = fed.grant("32", [WORKER])
    receipt = fed.receipt("32", consent.consent_id)
    with fed.client("32", to=FIRST) as peer:
        assert peer.endpoints[0] == FIRST and fed.addresses["51"] in peer.endpoints  # (and the stopped node's)
        result = peer.verify([WORKER], "dibao", ["real_estate.count<=1"], consent=receipt)
    assert [a.province for a in result.answers if a.signature_valid] == ["51"]


def test_batches_and_household_rounds_fail_over_as_single_routes_do(tmp_path: Path) -> None:
    """Guangdong's first endpoint refuses connections: `verify-batch` (RouteBatch) and the household means test
    (RouteRound) still get Guangdong's answers, from its endpoint that listens."""
    from node.client.batch import BatchSession, Household, parse_checks
    from node.testing.standards import standards_document
    from tests.integration.test_household import EARNER, PERIOD, _csv

    data = {"44": _csv(tmp_path / "44.csv", [(EARNER, "income.wage_monthly", 250000)]),
            "51": _csv(tmp_path / "51.csv", [(EARNER, "hukou.registered", 1)])}
    (tmp_path / "standards.toml").write_text(standards_document(), encoding="utf-8")
    with run_cluster(["51", "44"], data=data, root=tmp_path / "fed") as fed:
        fed.publish_standards("51", tmp_path / "standards.toml")
        announce(fed, "44", fed.servers["44"].link.announcement(FIRST).body)
        assert fed.servers["coordinator"].router.directory.entries()["44"].endpoints[0] == FIRST
        consent = fed.grant("51", [EARNER])
        household = fed.household("51", [EARNER], "510104", consent_id=consent.consent_id, period=PERIOD).to_json()
        assert household["routing"]["44"] == "OK" and household["missing"] == []
        assert household["totals"]["income_monthly"] == 250000
        member = fed.member("51")
        receipt = fed.receipt("51", consent.consent_id)

        async def batch() -> list[dict[str, Any]]:
            session = BatchSession(member, deadline_s=10)
            try:
                return await session.verify([(Household("h1", [EARNER]), receipt)], "dibao",
                                            parse_checks(["income.wage_monthly<=300000"], member, "dibao"))
            finally:
                await session.close()

        (record,) = asyncio.run(batch())
        assert record["routing"]["44"] == "OK", record
