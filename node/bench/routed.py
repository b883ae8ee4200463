"""The routed part: routed_verify through the coordinator (sequential p50/p99, throughput from threads)."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from pathlib import Path
from typing import Any

from node.bench.config import BenchError, CHECKS, REQUESTER, Sizes, _DECIDED
from node.bench.harness import Failures, _Failed, _drive_threads, _emit, _measure_rounds, _pct, phase_stats, run_child
from node.bench.national import National, _odd
from node.bench.rpc import grant_households


def check_routed(result: Any, members: int, provinces: list[str], n_checks: int) -> None:
    """A routed answer is right when exactly the holding provinces answered, every answer's
    signature holds, every other province said NO_MATCH, and every member x check was decided."""
    got = sorted(a.province for a in result.answers)
    if got != provinces:
        raise BenchError(f"routed answers from {got}, expected {provinces}; routing {result.routing}")
    decided = 0
    for a in result.answers:
        if not a.signature_valid or a.problem is not None:
            raise BenchError(f"routed answer of {a.province}: valid={a.signature_valid} problem={a.problem!r}")
        decided += sum(r.outcome in _DECIDED for r in a.results)
    if decided != members * n_checks:
        raise BenchError(f"routed verification decided {decided} results, expected {members * n_checks}")
    odd = _odd(result.routing, provinces)
    if odd:
        raise BenchError(f"routing statuses {odd}")


def _connect_cost(member: Any, tries: int = 15) -> float:
    """Median extra time of the first RPC on a new coordinator channel (TCP + TLS handshake):
    a Directory call on a fresh channel less a second one on the same channel."""
    from node.client.coordinator import CoordinatorClient
    from node.wire.v1 import coordinator_pb2

    extra = []
    for _ in range(tries):
        with CoordinatorClient(member) as c:
            t0 = time.perf_counter()
            c.call("Directory", coordinator_pb2.DirectoryRequest())
            t1 = time.perf_counter()
            c.call("Directory", coordinator_pb2.DirectoryRequest())
            t2 = time.perf_counter()
        extra.append((t1 - t0) - (t2 - t1))
    return statistics.median(extra)


def _time_coordinator_steps(steps: dict[str, list[float]]) -> None:
    """Record how long routed_verify's steps take: each coordinator RPC (the first on its new
    channel, Discover, includes connecting), and Directory with its verification."""
    from node.client.coordinator import CoordinatorClient

    call, directory = CoordinatorClient.call, CoordinatorClient.directory

    def timed_call(self: Any, method: str, request: Any, *, timeout: float | None = None) -> Any:
        t0 = time.perf_counter()
        try:
            return call(self, method, request, timeout=timeout)
        finally:
            steps.setdefault(f"rpc_{method}", []).append(time.perf_counter() - t0)

    def timed_directory(self: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return directory(self)
        finally:
            steps.setdefault("directory_fetch_and_verify", []).append(time.perf_counter() - t0)

    CoordinatorClient.call = timed_call  # type: ignore[method-assign]
    CoordinatorClient.directory = timed_directory  # type: ignore[method-assign]


def routed_client_main(spec: dict[str, Any]) -> None:
    """Routed load: `routed_verify` as a provincial platform runs it (one long-lived coordinator
    connection and cached directory; Discover and a sealed Route per call) over the households of spec["households"],
    sequentially and from spec["concurrency"] threads; consents granted first, untimed."""
    from node import logs
    from node.client.batch import read_households
    from node.client.routed import routed_verify
    from node.errors import HeduiError
    from node.member import Member

    logs.configure("warning", json=True)
    member = Member.from_config(spec["config"])
    households, rejects = read_households(Path(spec["households"]), max_members=member.cfg.limits.max_subjects)
    if rejects or not households:
        raise BenchError(f"{len(rejects)} household rows rejected")
    expect: dict[str, list[str]] = spec["expect"]
    purpose, checks = spec["purpose"], spec["checks"]
    t0 = time.perf_counter()
    receipts = asyncio.run(grant_households(member, households, purpose))
    _emit({"event": "info", "routed_grant_households": len(households), "routed_grant_s": time.perf_counter() - t0})
    items = [(h, receipts[h.key]) for h in households]
    turn = itertools.count()
    failures = Failures()
    strict = True
    from node.client.coordinator import CoordinatorClient

    coordinator = CoordinatorClient(member, deadline_s=30.0)  # one connection and directory, as a platform keeps

    def call() -> None:
        """One routed verification; a refused or wrong one is a failure (raised while `strict`),
        and the drivers only time the ones that return."""
        h, receipt = items[next(turn) % len(items)]
        try:
            result = routed_verify(member, h.ids, purpose, checks, consent=receipt, deadline_s=30.0,
                                   coordinator=coordinator)
            check_routed(result, len(h.ids), expect[h.key], len(checks))
        except (BenchError, HeduiError) as exc:
            if strict:
                raise
            failures.add(f"{type(exc).__name__}: {exc}")
            raise _Failed from None

    call()  # a broken setup fails here, plainly
    strict = False
    _emit({"event": "info", "routed_members": sum(len(h.ids) for h in households),
           "routed_holders": sum(len(expect[h.key]) for h in households)})
    _emit({"event": "info", "routed_connect_ms": _connect_cost(member) * 1e3})
    steps: dict[str, list[float]] = {}
    _time_coordinator_steps(steps)
    _measure_rounds(spec, lambda phase, seconds: _drive_threads(call, phase["concurrency"], seconds), failures, steps)
    _emit({"event": "done"})


def bench_routed(nat: National, sizes: Sizes, hooks: dict[str, Any]) -> dict[str, Any]:
    """routed_verify from a child process: sequential p50/p99, and throughput from threads."""
    assert nat.routed is not None
    path, expect = nat.routed
    c = sizes.routed_concurrency
    spec = {
        "mode": "routed", "config": str(nat.fed.configs[REQUESTER]), "households": str(path), "expect": expect,
        "purpose": "dibao", "checks": list(CHECKS), "seconds": sizes.routed_seconds, "warmup": sizes.part_warmup,
        "rounds": sizes.rounds, "first_warmup": 0.0 if sizes.rounds == 1 else 2 * sizes.part_warmup,
        "phases": [{"name": "routed_seq", "concurrency": 1}, {"name": "routed_c", "concurrency": c}],
    }
    results, info = run_child(spec, **hooks)
    out = {**phase_stats(results, "routed_seq", "routed_seq"), **phase_stats(results, "routed_c", f"routed_c{c}")}
    out.update({k: v for k, v in info.items() if k.startswith("routed_")})
    out["routed_concurrency"] = c
    out["routed_failed"] = out["routed_seq_failed"] + out[f"routed_c{c}_failed"]
    out["routed_households"] = len(expect)
    seq_steps: dict[str, list[float]] = {}
    for r in results.values():
        if r["name"] == "routed_seq":
            for step, values in r.get("steps_ms", {}).items():
                seq_steps.setdefault(step, []).extend(values)
    # Median of each step of a sequential routed verification; the rest of the p50 is local work
    # (tokens, signing, sealing, opening and checking answers) and channel set-up.
    out["routed_seq_step_p50_ms"] = {k: _pct(v, 50) for k, v in sorted(seq_steps.items())}
    out["routed_p50_ms"] = out["routed_seq_p50_ms"]
    out["routed_p99_ms"] = out["routed_seq_p99_ms"]
    out["routed_per_s"] = max(out[f"routed_c{c}_per_s"], out["routed_seq_per_s"])
    return out
