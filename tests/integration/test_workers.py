"""`--workers N`: several node processes on one port share the store, nonces and audit log."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import grpc

from node.testing import run_cluster
from tests.conftest import WORKER

HEDUI = [sys.executable, "-m", "node.cli.main"]


def test_two_workers_serve_one_port_and_stop_together(planted: dict[str, Path], tmp_path: Path) -> None:
    """Two worker processes answer on one port, refuse replays across each other, and stop on SIGTERM."""
    with run_cluster(["51", "44"], root=tmp_path, data=planted) as fed:
        receipt = fed.grant("51", [WORKER], "dibao").receipt
        fed.stop_node("44")
        proc = subprocess.Popen([*HEDUI, "node", "serve", "--config", str(fed.configs["44"]), "--listen", "127.0.0.1:0",
                                 "--workers", "2"], stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        serving, port = 0, None
        for line in proc.stderr:
            event = json.loads(line)
            if event.get("event") == "workers_started":
                port = event["port"]
            serving += event.get("event") == "serving"
            if serving == 2:
                break
        assert port and serving == 2
        address = f"127.0.0.1:{port}"
        with fed.client("51", to=address) as peer:
            results = [peer.verify([WORKER], "dibao", ["deposit.balance_total<=2000000"], consent=receipt)
                       for _ in range(20)]
        assert all(r.answers[0].signature_valid for r in results)
        # One signed query on several fresh connections (spread over both workers): answered once.
        from node.client.query import prepare, sign_query
        from node.server import tls
        from node.wire.v1 import verification_pb2, verification_pb2_grpc

        m = fed.member("51")
        query = sign_query(m.signer, prepare(requester="51", linkage_key=m.linkage_key, ids=[WORKER], purpose="dibao",
                                             checks=["deposit.balance_total<=2000000"], catalogue=m.catalogue,
                                             policy=m.policy).body(consent=receipt))
        codes = []
        for i in range(6):
            with grpc.secure_channel(address, tls.channel_credentials(m.cfg), options=[("grpc.channel_id", i)]) as ch:
                try:
                    verification_pb2_grpc.VerificationStub(ch).Verify(verification_pb2.VerifyRequest(signed=query), timeout=5)
                    codes.append("OK")
                except grpc.RpcError as exc:
                    codes.append(exc.code().name)
        assert codes.count("OK") == 1 and codes.count("ALREADY_EXISTS") == 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        report = subprocess.run([*HEDUI, "audit", "verify", "--config", str(fed.configs["44"]), "--json"],
                                capture_output=True, text=True, timeout=60)
        assert report.returncode == 0 and json.loads(report.stdout)["entries"] >= 20


def _serve_workers(config: Path, workers: int, *, role: str = "node", listen: str = "127.0.0.1:0",
                   level: str = "debug") -> tuple[subprocess.Popen[str], list[dict[str, object]]]:
    """`hedui {node|coordinator} serve --workers N`; returns it once every worker serves, and the
    list its log lines keep being appended to (read by a thread)."""
    import threading

    proc = subprocess.Popen([*HEDUI, "--log-level", level, role, "serve", "--config", str(config),
                             "--listen", listen, "--workers", str(workers)], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    events: list[dict[str, object]] = []
    serving = threading.Semaphore(0)

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:  # a CLI error is one plain line
                event = {"line": line.rstrip()}
            events.append(event)
            if event.get("event") == "serving":
                serving.release()

    threading.Thread(target=read, daemon=True).start()
    for _ in range(workers):
        if not serving.acquire(timeout=60):
            proc.kill()
            raise AssertionError(f"not every worker serves after 60 s (exit code {proc.wait()}); its stderr: {events}")
    return proc, events


def test_routed_traffic_reaches_both_workers_of_a_node(planted: dict[str, Path], tmp_path: Path) -> None:
    """The coordinator keeps several connections to a province and calls over them in turn, so both
    workers of a `--workers 2` node answer routed queries (counted by the worker pid in their log lines)."""
    extra = {"limits": {"connections_per_peer": 16}}
    with run_cluster(["51", "44"], root=tmp_path, data=planted, coordinator_extra=extra) as fed:
        consent = fed.grant("51", [WORKER], "dibao")
        fed.stop_node("44")
        proc, events = _serve_workers(fed.configs["44"], 2)
        try:
            workers = {e["worker"] for e in events if e.get("event") == "serving"}
            assert len(workers) == 2
            results = [fed.verify("51", [WORKER], ["deposit.balance_total<=2000000"], consent_id=consent.consent_id)
                       for _ in range(32)]
            assert all(r.routing.get("44") == "OK" and r.answers and r.answers[0].signature_valid for r in results)
            router = fed.servers["coordinator"].router
            # 16 per endpoint: the one 44 served at before this restart stays listed until its announcement goes stale
            assert router.connections("44") == 16 * len(router.directory.entries()["44"].endpoints)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        answered = [e for e in events if e.get("event") == "answered" and e.get("relayed")]
        by_worker = {w: sum(1 for e in answered if e["worker"] == w) for w in workers}
        assert sum(by_worker.values()) >= 32 and all(n > 0 for n in by_worker.values()), by_worker


def test_batch_client_calls_reach_both_workers_of_a_coordinator(planted: dict[str, Path], tmp_path: Path) -> None:
    """BatchSession keeps several connections to its coordinator and calls over them in turn, so both
    workers of a `hedui coordinator serve --workers 2` register its consent batches."""
    import asyncio

    from node.client.batch import BatchSession, Household
    from node.config import load

    extra = {"limits": {"connections_per_peer": 16}}
    with run_cluster(["51", "44"], root=tmp_path, data=planted, config_extra=extra) as fed:
        fed.stop_node("coordinator")
        proc, events = _serve_workers(fed.coordinator_config, 2, role="coordinator",
                                      listen=f"127.0.0.1:{fed.coordinator_port}", level="info")
        try:
            member = fed.member("51")
            assert load(fed.configs["51"]).limits.connections_per_peer == 16

            async def grant() -> list[str]:
                session = BatchSession(member)
                try:
                    errors = []
                    for i in range(32):
                        for _, receipt, error in await session.grant([Household(f"h{i}", [WORKER])], "dibao", 30):
                            errors.append(error if receipt is None else "")
                    return errors
                finally:
                    await session.close()

            assert asyncio.run(grant()) == [""] * 32
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        registered = [e for e in events if e.get("event") == "consents_registered"]
        workers = {e["worker"] for e in events if e.get("event") == "serving"}
        assert len(workers) == 2 and len(registered) == 32
        assert all(any(e["worker"] == w for e in registered) for w in workers), registered
