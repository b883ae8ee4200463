"""The rpc part: a bare mTLS echo beside direct Verify (servers here, load generator in the child)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.domain.regions import province_tls_name
from node.bench.config import BenchError, CHECKS, ECHO_METHOD, ECHO_SERVICE, PROVIDER, REQUESTER, Sizes, _ANSWERED, _DECIDED
from node.bench.data import id_numbers, write_facts_csv
from node.bench.harness import _cpu_seconds, _drive, _emit, _pct, run_child


async def start_echo_server(cfg: Any) -> tuple[Any, int]:
    """A bare grpc.aio echo server of a node's flavour: the same server options, concurrency cap
    and dynamic mutual-TLS credentials (node.server.tls) as node.server.base.start_server.

    One generic unary handler with identity (de)serializers: bytes in, bytes out. The request's
    first 4 bytes give the response size; the response is that many bytes of the request.
    """
    import grpc
    from grpc import aio

    from node.server import tls

    async def echo(request: bytes, context: Any) -> bytes:
        n = int.from_bytes(request[:4], "big")
        return request[4 : 4 + n]

    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE,
        {"Echo": grpc.unary_unary_rpc_method_handler(echo, request_deserializer=None, response_serializer=None)},
    )
    server = aio.server(options=tls.server_options(cfg.limits),
                        maximum_concurrent_rpcs=getattr(cfg.limits, "max_concurrent_rpcs", None))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(cfg))
    if port == 0:
        raise BenchError("the echo server cannot listen")
    await server.start()
    return server, port


async def grant_households(member: Any, households: list[Any], purpose: str, *, days: int = 30) -> dict[str, Any]:
    """One consent per household through BatchSession.grant (256 per message); key -> receipt."""
    from node.client.batch import BatchSession, chunked

    session = BatchSession(member)
    receipts: dict[str, Any] = {}
    try:
        for chunk in chunked(households, 256):
            for h, receipt, error in await session.grant(chunk, purpose, days):
                if receipt is None:
                    raise BenchError(f"consent for household {h.key} refused: {error}")
                receipts[h.key] = receipt
    finally:
        await session.close()
    return receipts


def _spread_channels() -> Callable[[], None]:
    """Make every channel opened from now on its own TCP connection (a local subchannel pool),
    instead of sharing one with another channel of the same target; returns the undo."""
    from node.server import tls

    original = tls.channel_options

    def options(limits: Any, **kw: Any) -> Any:
        return [*original(limits, **kw), ("grpc.use_local_subchannel_pool", 1)]

    tls.channel_options = options  # type: ignore[assignment]

    def undo() -> None:
        tls.channel_options = original  # type: ignore[assignment]

    return undo


async def client_main(spec: dict[str, Any]) -> None:
    """The load generator: warm up, then measure each phase of `spec`, printing JSON events.

    Verify goes to one subject with the receipt of `spec`, or, when `spec["grant_ids"]` lists ID
    numbers, to each of them in turn with a consent per subject granted here first (untimed).
    A phase's `channels` > 1 spreads its calls over that many connections (each its own channel).
    Without `echo_target`, only Verify phases can run.
    """
    from grpc import aio

    from node import logs
    from node.client.batch import Household
    from node.client.client import AsyncPeerClient
    from node.client.query import prepare, sign_query
    from node.crypto.signing import AsyncBatchSigner
    from node.member import Member
    from node.server import tls
    from node.wire.v1 import verification_pb2

    logs.configure("warning", json=True)
    member = Member.from_config(spec["config"])

    def prepared_for(number: str) -> Any:
        return prepare(requester=member.province, linkage_key=member.linkage_key, ids=[number],
                       purpose=spec["purpose"], checks=spec["checks"], catalogue=member.catalogue,
                       policy=member.policy, max_subjects=member.cfg.limits.max_subjects,
                       max_checks=member.cfg.limits.max_checks)

    if spec.get("grant_ids"):
        households = [Household(f"s{i}", [n]) for i, n in enumerate(spec["grant_ids"])]
        t0 = time.perf_counter()
        receipts = await grant_households(member, households, spec["purpose"])
        _emit({"event": "info", "pool_subjects": len(households), "pool_grant_s": time.perf_counter() - t0})
        entries = [(prepared_for(h.ids[0]), receipts[h.key]) for h in households]
    else:
        receipt = verification_pb2.SignedConsent.FromString(base64.b64decode(spec["receipt"]))
        entries = [(prepared_for(spec["subject"]), receipt)]
    n_checks = len(spec["checks"])
    min_decided = int(spec.get("min_decided", n_checks))  # the rest NO_RECORD (subjects with fewer facts)
    signer = AsyncBatchSigner(member.signer)
    n_channels = max(int(phase.get("channels", 1)) for phase in spec["phases"])
    undo = _spread_channels() if n_channels > 1 else None
    try:
        provider = province_tls_name(PROVIDER)  # the Verify target and the echo server both serve as PROVIDER
        peers = [AsyncPeerClient(member, spec["verify_target"], signer=signer, server_name=provider)
                 for _ in range(n_channels)]
    finally:
        if undo is not None:
            undo()
    echo_channel = echo_stub = None
    if spec.get("echo_target"):
        echo_channel = aio.secure_channel(spec["echo_target"], tls.channel_credentials(member.cfg),
                                          options=tls.channel_options(member.cfg.limits,
                                                                      server_name=province_tls_name(PROVIDER)))
        echo_stub = echo_channel.unary_unary(ECHO_METHOD)  # no (de)serializers: bytes in, bytes out
        await echo_channel.channel_ready()
    for peer in peers:
        await peer.wait_ready()
    turn = itertools.count()

    def verify_over(channels: int) -> Callable[[], Awaitable[None]]:
        async def verify() -> None:
            i = next(turn)
            prepared, receipt = entries[i % len(entries)]
            result = await peers[i % channels].send(prepared, consent=receipt, timeout=30.0)
            (answer,) = result.answers
            if not answer.signature_valid or answer.problem is not None or len(answer.results) != n_checks:
                raise BenchError(f"bad answer: valid={answer.signature_valid} problem={answer.problem!r} "
                                 f"results={len(answer.results)}")
            outcomes = [r.outcome for r in answer.results]
            if sum(o in _DECIDED for o in outcomes) < min_decided or any(o not in _ANSWERED for o in outcomes):
                raise BenchError(f"unexpected outcomes {outcomes}")

        return verify


    # One call to learn the real message sizes; the echo carries the same.
    prepared, receipt = entries[0]
    result = await peers[0].send(prepared, consent=receipt, timeout=30.0)
    response_size = verification_pb2.VerifyResponse(signed=result.answers[0].signed).ByteSize()
    request_size = verification_pb2.VerifyRequest(
        signed=sign_query(member.signer, prepared.body(consent=receipt))).ByteSize()
    payload = response_size.to_bytes(4, "big") + os.urandom(max(request_size, response_size + 4) - 4)

    async def echo() -> None:
        assert echo_stub is not None
        reply = await echo_stub(payload, timeout=30.0)
        if len(reply) != response_size:
            raise BenchError(f"echo answered {len(reply)} bytes, expected {response_size}")

    _emit({"event": "sizes", "request_bytes": len(payload), "verify_request_bytes": request_size,
           "response_bytes": response_size})
    def call_of(phase: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        return echo if phase["kind"] == "echo" else verify_over(int(phase.get("channels", 1)))

    for phase in spec["phases"]:  # a first warm-up of every kind of load
        await _drive(call_of(phase), phase["concurrency"], spec["first_warmup"])
    # Rounds interleave the phases, so a noisy neighbour slows echo and Verify alike.
    for round_no in range(spec["rounds"]):
        for phase in spec["phases"]:
            call, concurrency = call_of(phase), phase["concurrency"]
            key = f"{phase['name']}/{round_no}"
            await _drive(call, concurrency, spec["warmup"])
            r0, t0 = _cpu_seconds(), time.perf_counter()
            _emit({"event": "start", "phase": key})
            count, elapsed, latencies = await _drive(call, concurrency, spec["seconds"])
            _emit({"event": "end", "phase": key})
            cpu = (_cpu_seconds() - r0) / (time.perf_counter() - t0)
            _emit({"event": "result", "phase": key, "name": phase["name"], "round": round_no, "calls": count,
                   "seconds": elapsed, "per_s": count / elapsed, "latencies_ms": [x * 1e3 for x in latencies],
                   "client_cpu": cpu})
    if echo_channel is not None:
        await echo_channel.close()
    for peer in peers:
        await peer.close()
    _emit({"event": "done"})


@dataclass
class RpcSetup:
    """What the client process needs: addresses, its config, the receipt, subject and checks."""

    verify_target: str
    echo_target: str
    config: Path
    receipt: bytes
    subject: str
    purpose: str = "dibao"


def run_load(setup: RpcSetup, sizes: Sizes, phases: list[dict[str, Any]], *,
             on_start: Callable[[str], None] | None = None,
             on_end: Callable[[str], None] | None = None,
             server_cpu: Callable[[], float] | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Run the load generator in a child process; per phase its numbers and the serving processes' CPU."""
    spec = {
        "verify_target": setup.verify_target, "echo_target": setup.echo_target,
        "config": str(setup.config), "receipt": base64.b64encode(setup.receipt).decode(),
        "subject": setup.subject, "purpose": setup.purpose, "checks": list(CHECKS),
        "seconds": sizes.seconds, "warmup": sizes.warmup, "rounds": sizes.rounds, "phases": phases,
        "first_warmup": 0.0 if sizes.rounds == 1 else 2 * sizes.warmup,
    }
    return run_child(spec, on_start=on_start, on_end=on_end, **({} if server_cpu is None else {"server_cpu": server_cpu}))


@contextlib.contextmanager
def federation(work: Path, sizes: Sizes) -> Iterator[tuple[Any, RpcSetup, Any]]:
    """Coordinator + two provinces (the provider's store filled), consent granted, echo server up."""
    from node import config as config_mod
    from node.bench.cluster import bench_cluster

    data = work / "data"
    data.mkdir()
    ids = id_numbers(sizes.verify_subjects, region="440106")
    write_facts_csv(data / f"{PROVIDER}.csv", ids, facts_per_subject=5)
    subject = ids[len(ids) // 2]
    with bench_cluster([PROVIDER, REQUESTER], root=work / "fed", data={PROVIDER: data / f"{PROVIDER}.csv"}) as fed:
        receipt = fed.grant(REQUESTER, [subject], "dibao").receipt
        # One synchronous call end to end first: a broken setup fails here, plainly.
        result = fed.verify(REQUESTER, [subject], list(CHECKS), consent_id=_consent_id(receipt), to=PROVIDER)
        (answer,) = result.answers
        if not answer.signature_valid or len(answer.results) != len(CHECKS):
            raise BenchError(f"sanity Verify failed: {answer.problem}")
        assert fed.loop is not None
        echo, echo_port = fed.loop.run(start_echo_server(config_mod.load(fed.configs[PROVIDER])))
        try:
            yield fed, RpcSetup(
                verify_target=fed.addresses[PROVIDER], echo_target=f"127.0.0.1:{echo_port}",
                config=fed.configs[REQUESTER], receipt=receipt.SerializeToString(), subject=subject,
            ), echo
        finally:
            fed.loop.run(echo.stop(0))


def _consent_id(receipt: Any) -> str:
    from node.wire.v1 import verification_pb2

    return verification_pb2.ConsentBody.FromString(receipt.body).consent_id


def rpc_phases(concurrency: int) -> list[dict[str, Any]]:
    return [
        {"name": "echo_seq", "kind": "echo", "concurrency": 1},
        {"name": "verify_seq", "kind": "verify", "concurrency": 1},
        {"name": "echo_c", "kind": "echo", "concurrency": concurrency},
        {"name": "verify_c", "kind": "verify", "concurrency": concurrency},
    ]


def summarise(results: dict[str, dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """Per phase over its rounds: median calls/s, pooled latency percentiles, mean CPU; ratios."""
    c = concurrency
    keys = {"echo_seq": "echo_seq", "verify_seq": "verify_seq", "echo_c": f"echo_c{c}", "verify_c": f"verify_c{c}"}
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in results.values():
        by_name.setdefault(r["name"], []).append(r)
    out: dict[str, Any] = {}
    rates: dict[str, list[float]] = {}
    for name, key in keys.items():
        rounds = sorted(by_name[name], key=lambda r: r["round"])
        rates[name] = [r["per_s"] for r in rounds]
        latencies = [x for r in rounds for x in r["latencies_ms"]]
        out[f"{key}_per_s"] = statistics.median(rates[name])
        out[f"{key}_rounds_per_s"] = rates[name]
        out[f"{key}_calls"] = sum(r["calls"] for r in rounds)
        out[f"{key}_p50_ms"] = _pct(latencies, 50)
        out[f"{key}_p99_ms"] = _pct(latencies, 99)
        out[f"{key}_server_cpu"] = statistics.fmean(r["server_cpu"] for r in rounds)
        out[f"{key}_client_cpu"] = statistics.fmean(r["client_cpu"] for r in rounds)
        out[f"{key}_other_cpu"] = statistics.fmean(r["other_cpu"] for r in rounds)
    out["verify_ratio_seq"] = out["verify_seq_per_s"] / out["echo_seq_per_s"]
    ratio = out[f"verify_c{c}_per_s"] / out[f"echo_c{c}_per_s"]
    out[f"verify_ratio_c{c}"] = ratio
    # Echo and Verify of a round run back to back, so a round's ratio sees the same neighbours.
    out["verify_ratio_c32_rounds"] = [v / e for v, e in zip(rates["verify_c"], rates["echo_c"], strict=True)]
    out["verify_ratio_c32_paired_median"] = statistics.median(out["verify_ratio_c32_rounds"])
    if c != 32:  # the contract's key names stay fixed; "concurrency" says what was run
        out.update({"echo_c32_per_s": out[f"echo_c{c}_per_s"], "verify_c32_per_s": out[f"verify_c{c}_per_s"],
                    "verify_ratio_c32": ratio})
    # Server CPU per successful call (this process, every thread), the cost the goal is about.
    for key in keys.values():
        out[f"{key}_server_cpu_us_per_call"] = out[f"{key}_server_cpu"] / out[f"{key}_per_s"] * 1e6
    return out
