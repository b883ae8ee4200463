"""One province must not stop the federation: per-peer admission, reserved feeds, bounded waits, no self-routes.

The hostile province (32) stalls its own node: in the shared federation its node never
finishes signing an answer (it accepts genuine queries, then hangs); for the bound on waits
its node runs as a `hedui node serve` subprocess that is SIGSTOPped (the kernel still accepts
its TCP connections; nothing answers). Calls are held open the way any member can hold them:
genuine routes to its own stalled node, and streams that send their headers and never their
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.client.query import prepare, sign_query
from node.crypto import pki, sealing
from node.domain.regions import province_uri
from node.testing import Federation, LoopThread, run_cluster
from node.wire.v1 import coordinator_pb2, coordinator_pb2_grpc, verification_pb2
from tests.conftest import STRANGER, WORKER

CHECK = ["deposit.balance_total<=2000000"]
ROUTE = "/hedui.v1.Coordinator/Route"
VERIFY = "/hedui.v1.Verification/Verify"
HELD = 640  # more than the 512 concurrent calls a server accepts by default


@contextlib.contextmanager
def stalled_node(fed: Federation, code: str) -> Iterator[subprocess.Popen[bytes]]:
    """Province `code`'s node as a subprocess, announced to the coordinator, then frozen with SIGSTOP."""
    fed.stop_node(code)
    port_file = fed.root / f"node{code}.port"
    proc = subprocess.Popen([sys.executable, "-m", "node.cli.main", "--log-level", "error", "node", "serve",
                             "--config", str(fed.configs[code]), "--port-file", str(port_file)])
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():  # readiness: the node announced itself, then wrote its port
            assert proc.poll() is None and time.monotonic() < deadline, "the node subprocess did not start"
            time.sleep(0.05)
        fed.addresses[code] = f"127.0.0.1:{port_file.read_text().strip()}"
        os.kill(proc.pid, signal.SIGSTOP)
        yield proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=30)


def credentials(fed: Federation, code: str) -> grpc.ChannelCredentials:
    m = fed.member(code).cfg
    return grpc.ssl_channel_credentials(m.ca_cert.read_bytes(), m.tls_key.read_bytes(), m.tls_cert.read_bytes())


async def _never() -> AsyncIterator[bytes]:
    await asyncio.Event().wait()
    yield b""  # pragma: no cover - never reached


class Flood:
    """Calls held open by one member on its own event loop: `held` streams that never send their request."""

    def __init__(self, fed: Federation, code: str, target: str) -> None:
        self.loop = LoopThread()
        self.fed, self.code, self.target = fed, code, target
        self.calls: list[Any] = []
        self.channels: list[aio.Channel] = []

    async def _channel(self) -> aio.Channel:
        # Each channel its own connection: a server's per-connection stream limit does not cap the flood.
        channel = aio.secure_channel(self.target, credentials(self.fed, self.code),
                                     options=[("grpc.use_local_subchannel_pool", 1)])
        self.channels.append(channel)
        return channel

    def hold(self, method: str, n: int, per_channel: int = 80) -> None:
        async def start() -> None:
            for i in range(0, n, per_channel):
                channel = await self._channel()
                call = channel.stream_unary(method)
                self.calls.extend(call(_never(), timeout=120) for _ in range(min(per_channel, n - i)))
        self.loop.run(start())

    def send(self, method: str, request: bytes, n: int) -> None:
        """`n` ordinary calls with long deadlines, left running."""
        async def start() -> None:
            call = (await self._channel()).unary_unary(method)
            self.calls.extend(call(request, timeout=120) for _ in range(n))
        self.loop.run(start())

    def probe(self, method: str, request: bytes) -> grpc.StatusCode:
        async def once() -> grpc.StatusCode:
            try:
                await (await self._channel()).unary_unary(method)(request, timeout=5)
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK
        return self.loop.run(once())

    def wait_until_full(self, method: str, request: bytes) -> None:
        """Until the flooding member itself is refused for capacity: the flood is in place."""
        deadline = time.monotonic() + 30
        while self.probe(method, request) != grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert time.monotonic() < deadline, "the flood never filled the member's capacity"

    def close(self) -> None:
        async def stop() -> None:
            for call in self.calls:
                call.cancel()
            for channel in self.channels:
                await channel.close()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:  # the calls' request feeders, waiting on requests that never come
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self.loop.run(stop())
        self.loop.close()


def self_route(fed: Federation, code: str, consent_id: str) -> bytes:
    """A genuine Route of province `code` to its own node: signed, sealed to its own key, under its own consent."""
    m = fed.member(code)
    prepared = prepare(requester=code, linkage_key=m.linkage_key, ids=[STRANGER], purpose="dibao", checks=CHECK,
                       catalogue=m.catalogue, policy=m.policy)
    body = prepared.body(audience=code, consent=fed.receipt(code, consent_id), reply_suite=sealing.SUITE_NAME,
                         reply_key=sealing.public_bytes(X25519PrivateKey.generate().public_key()))
    seal_public = sealing.public_bytes(pki.load_seal_keys(m.cfg.seal_key, m.cfg.seal_pub)[1])
    sealed = sealing.seal(sign_query(m.signer, body).SerializeToString(), kind=sealing.QUERY,
                          recipient=province_uri(code), public_key=seal_public)
    return coordinator_pb2.RouteRequest(consent_id=consent_id, request_id=body.request_id,
                                        envelopes=[coordinator_pb2.Envelope(province=code, query=sealed)]
                                        ).SerializeToString()


class _Stall:
    """A signer that never finishes: the node accepts a genuine query, then hangs."""

    async def commit(self, *_: Any) -> Any:  # stands for the node's answer commit (signing and audit)
        await asyncio.Event().wait()


def consent_updates(fed: Federation, code: str) -> coordinator_pb2.ConsentUpdatesResponse:
    with grpc.secure_channel(fed.addresses["coordinator"], credentials(fed, code)) as channel:
        return coordinator_pb2_grpc.CoordinatorStub(channel).ConsentUpdates(
            coordinator_pb2.ConsentUpdatesRequest(after_index=0), timeout=5)


def synced_since(fed: Federation, code: str, since: float) -> bool:
    """Whether province `code`'s node confirmed consent state with the coordinator after `since` (monotonic)."""
    deadline = time.monotonic() + 5  # the feed polls every second
    while time.monotonic() < deadline:
        synced_at = fed.servers[code].revocations.synced_at
        if synced_at is not None and synced_at > since:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def fed(planted: dict[str, Path]) -> Iterator[Federation]:
    with run_cluster(["32", "44", "51"], data=planted) as federation:
        servicer = federation.servers["32"].servicer
        answers, servicer.answers = servicer.answers, _Stall()
        try:
            yield federation
        finally:
            servicer.answers = answers


@pytest.fixture(scope="module")
def consents(fed: Federation) -> dict[str, str]:
    return {"32": fed.grant("32", [STRANGER]).consent_id, "51": fed.grant("51", [WORKER]).consent_id}


def test_a_self_addressed_route_is_refused_and_audited(fed: Federation, consents: dict[str, str]) -> None:
    """A Route or RouteBatch carrying an envelope for the caller's own province is refused with a public
    message, and audited."""
    route = coordinator_pb2.RouteRequest.FromString(self_route(fed, "32", consents["32"]))
    batch = coordinator_pb2.RouteBatchRequest(consent_ids=[consents["32"]], request_id=route.request_id,
                                              envelopes=route.envelopes)
    with grpc.secure_channel(fed.addresses["coordinator"], credentials(fed, "32")) as channel:
        for method, request in ((ROUTE, route), ("/hedui.v1.Coordinator/RouteBatch", batch)):
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_unary(method)(request.SerializeToString(), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details() == "malformed request: an envelope is addressed to the requester itself"
    exported = subprocess.run([sys.executable, "-m", "node.cli.main", "audit", "export", "--config",
                               str(fed.coordinator_config)], capture_output=True, text=True, timeout=60)
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert any(r["decision"] == "refused:MALFORMED" and r["requester"] == "32" and r["consent_id"] == consents["32"]
               for r in rows)


def test_a_flood_of_held_routes_from_one_province_stops_nobody_else(fed: Federation, consents: dict[str, str]) -> None:
    """A province holding hundreds of long-deadline Routes open (its own node stalled) gets only its own share:
    the others' consent feeds keep flowing and their routed and direct verifications are answered."""
    flood = Flood(fed, "32", fed.addresses["coordinator"])
    try:
        probe = self_route(fed, "32", consents["32"])  # built first: once the flood is in, 32 cannot fetch receipts
        for _ in range(100):  # each waited on the stalled node for 2 minutes, on the original code
            flood.send(ROUTE, self_route(fed, "32", consents["32"]), 1)
        flood.hold(ROUTE, HELD)
        flood.wait_until_full(ROUTE, probe)
        in_place = time.monotonic()
        assert consent_updates(fed, "44").head_index > 0
        assert synced_since(fed, "44", in_place) and synced_since(fed, "51", in_place)
        routed = fed.verify("51", [WORKER], CHECK, consent_id=consents["51"])
        direct = fed.verify("51", [WORKER], CHECK, consent_id=consents["51"], to="44")
    finally:
        flood.close()
    assert routed.routing == {"32": "NO_MATCH", "44": "OK"}
    assert [a.province for a in routed.answers] == ["44"] and routed.answers[0].signature_valid
    assert direct.answers[0].province == "44" and direct.answers[0].signature_valid


def test_a_flood_of_held_calls_on_a_node_stops_nobody_else(fed: Federation, consents: dict[str, str]) -> None:
    """A province holding hundreds of calls open on another province's node leaves that node answering
    others directly and through the coordinator."""
    flood = Flood(fed, "32", fed.addresses["44"])
    try:
        flood.hold(VERIFY, HELD)
        flood.wait_until_full(VERIFY, verification_pb2.VerifyRequest().SerializeToString())
        direct = fed.verify("51", [WORKER], CHECK, consent_id=consents["51"], to="44")
        routed = fed.verify("51", [WORKER], CHECK, consent_id=consents["51"])
    finally:
        flood.close()
    assert direct.answers[0].province == "44" and direct.answers[0].signature_valid
    assert routed.routing == {"32": "NO_MATCH", "44": "OK"}
    assert [a.province for a in routed.answers] == ["44"]


def test_a_wait_on_a_stalled_province_ends_within_the_configured_bound(planted: dict[str, Path]) -> None:
    """With `max_province_wait_s = 1`, a routed verification with a 20 s deadline reports the stalled province
    (frozen: its TLS handshake never completes, so nothing is sent) UNAVAILABLE long before its own deadline."""
    bound = {"limits": {"max_province_wait_s": 1.0}}
    # 32 holds WORKER (its locator says so), so the route reaches it: discovery no longer contacts a province.
    with run_cluster(["32", "51"], data={"32": planted["44"]}, coordinator_extra=bound) as federation, \
            stalled_node(federation, "32"):
        consent = federation.grant("51", [WORKER]).consent_id
        started = time.monotonic()
        result = federation.verify("51", [WORKER], CHECK, consent_id=consent, deadline_s=20)
        elapsed = time.monotonic() - started
    assert result.routing == {"32": "UNAVAILABLE"}  # no connection within the bound (PROTOCOL §10.1)
    assert elapsed < 10  # the caller's deadline less the router's margin would be 18 s


def test_the_feeds_keep_flowing_when_the_general_pool_is_full(planted: dict[str, Path]) -> None:
    """With every general slot of the coordinator held, other calls are refused for capacity but the nodes'
    consent and revocation feeds still get through, on the reserve."""
    small = {"limits": {"max_concurrent_rpcs": 48}}  # less than one province's share: 32 alone fills it
    with run_cluster(["32", "44"], data={"44": planted["44"]}, coordinator_extra=small) as federation:
        flood = Flood(federation, "32", federation.addresses["coordinator"])
        try:
            flood.hold(ROUTE, 200)
            flood.wait_until_full(ROUTE, coordinator_pb2.RouteRequest().SerializeToString())
            in_place = time.monotonic()
            with grpc.secure_channel(federation.addresses["coordinator"], credentials(federation, "44")) as channel:
                stub = coordinator_pb2_grpc.CoordinatorStub(channel)
                with pytest.raises(grpc.RpcError) as err:
                    stub.GetConsent(coordinator_pb2.GetConsentRequest(consent_id="x"), timeout=5)
                revocations = stub.Revocations(coordinator_pb2.RevocationsRequest(), timeout=5)
            updates = consent_updates(federation, "44")
            synced = synced_since(federation, "44", in_place)
        finally:
            flood.close()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.details() == "server is at its concurrency limit"
    assert isinstance(revocations, coordinator_pb2.RevocationList) and updates.as_of_ms > 0 and synced
