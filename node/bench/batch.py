"""The batch and household parts: BatchSession and the household means test over whole passes."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from node.bench.config import BATCH_CHECKS, BenchError, HOUSEHOLD_REGION, REQUESTER, Sizes, _DECIDED
from node.bench.harness import Failures, _cpu_seconds, _emit, _result_event, phase_stats, run_child
from node.bench.national import National, _odd
from node.bench.rpc import grant_households


def check_batch_record(record: dict[str, Any], provinces: list[str], n_checks: int) -> None:
    """check_routed for one household record of BatchSession.verify."""
    from node.client.batch import complete

    if "error" in record or not complete(record):
        odd = {p: s for p, s in record.get("routing", {}).items() if s not in ("OK", "NO_MATCH")}
        raise BenchError(f"household {record['household']} incomplete: {record.get('error') or odd or record['routing']}")
    got = sorted(a["province"] for a in record["answers"])
    if got != provinces:
        raise BenchError(f"household {record['household']} answered by {got}, expected {provinces}; "
                         f"routing {record['routing']}")
    if not all(a["signature_valid"] for a in record["answers"]):
        raise BenchError(f"household {record['household']}: an answer's signature does not hold")
    decided = sum(r["outcome"] in _DECIDED for a in record["answers"] for r in a["results"])
    if decided != record["members"] * n_checks:
        raise BenchError(f"household {record['household']}: {decided} results decided, "
                         f"expected {record['members'] * n_checks}")
    odd = _odd(record["routing"], provinces)
    if odd:
        raise BenchError(f"household {record['household']}: routing statuses {odd}")


def check_household_line(line: dict[str, Any], provinces: list[str], totals: dict[str, int]) -> None:
    """A check-batch line is right when the household was decided (not INCOMPLETE) by exactly the
    holding provinces and the requester, every other province said NO_MATCH, the totals are the
    planted ones, and the line carries its signed record."""
    if "error" in line or line["verdict"] not in ("ELIGIBLE", "NOT_ELIGIBLE") or line["missing"]:
        raise BenchError(f"household {line['household']} not decided: {line.get('error') or line['routing']}")
    ok = sorted(p for p, st in line["routing"].items() if st == "OK")
    if not {*provinces, REQUESTER} <= set(ok):  # more: a locator false positive, in the round with 0
        raise BenchError(f"household {line['household']} summed over {ok}, expected {provinces} and {REQUESTER}")
    odd = _odd(line["routing"], [*provinces, REQUESTER])
    if odd:
        raise BenchError(f"household {line['household']}: routing statuses {odd}")
    wrong = {m: v for m, v in line["totals"].items() if v != totals.get(m, 0)}
    if wrong:
        raise BenchError(f"household {line['household']}: totals {wrong} differ from the planted {totals}")
    if not line["record"]["signature"] or len(line["record"]["body"]["contributions"]) != len(ok):
        raise BenchError(f"household {line['household']}: the record lacks its signature or a contribution")


async def batch_client_main(spec: dict[str, Any]) -> None:
    """Batch load: consents for every household through BatchSession.grant (untimed), then
    rounds of one pass over every household through BatchSession.verify, `chunk` households per
    message and `in_flight` messages pipelined (node.client.batch.pipeline), as verify-batch does."""
    from node.client.batch import BatchSession, parse_checks

    member, ready = await _granted(spec, "batch")
    expect: dict[str, list[str]] = spec["expect"]
    purpose = spec["purpose"]
    checks = parse_checks(spec["checks"], member, purpose)
    session = BatchSession(member)
    try:
        await _timed_passes(spec, "batch", ready, lambda part: session.verify(part, purpose, checks),
                            lambda record: check_batch_record(record, expect[record["household"]], len(checks)))
    finally:
        await session.close()
    _emit({"event": "done"})


async def household_client_main(spec: dict[str, Any]) -> None:
    """Household load: consents granted (untimed), then rounds of one pass over every household through
    HouseholdBatchSession.check, as `hedui household check-batch` runs it (chunks pipelined, every
    result line serialized as the CLI writes it); each line checked against the planted totals."""
    from node.client.household_batch import BatchHousehold, HouseholdBatchSession

    member, ready = await _granted(spec, "household")
    expect: dict[str, list[str]] = spec["expect"]
    totals: dict[str, dict[str, int]] = spec["totals"]
    households = [BatchHousehold(h.key, h.ids, spec["region"], receipt) for h, receipt in ready]
    session = HouseholdBatchSession(member, spec["purpose"])
    written = [0, 0]  # lines, bytes

    def check(line: dict[str, Any]) -> None:
        written[0] += 1
        written[1] += len(json.dumps(line, separators=(",", ":"))) + 1
        check_household_line(line, expect[line["household"]], totals[line["household"]])

    try:
        await _timed_passes(spec, "household", households, session.check, check)
    finally:
        await session.close()
    _emit({"event": "info", "household_line_bytes": written[1] / max(1, written[0])})
    _emit({"event": "done"})


async def _granted(spec: dict[str, Any], name: str) -> tuple[Any, list[tuple[Any, Any]]]:
    """The member, and every household of spec["households"] with its consent receipt (granted in batch, untimed)."""
    from node import logs
    from node.client.batch import read_households
    from node.member import Member

    logs.configure("warning", json=True)
    member = Member.from_config(spec["config"])
    households, rejects = read_households(Path(spec["households"]), max_members=member.cfg.limits.max_subjects)
    if rejects or not households:
        raise BenchError(f"{len(rejects)} household rows rejected")
    t0 = time.perf_counter()
    receipts = await grant_households(member, households, spec["purpose"])
    grant_s = time.perf_counter() - t0
    _emit({"event": "info", f"{name}_grant_households": len(households), f"{name}_grant_s": grant_s,
           f"{name}_grant_per_s": len(households) / grant_s})
    return member, [(h, receipts[h.key]) for h in households]


async def _timed_passes(spec: dict[str, Any], name: str, ready: list[Any], work: Callable[[Any], Awaitable[list[Any]]],
                        check: Callable[[Any], None]) -> None:
    """A warm-up pass over a few chunks, then spec["rounds"] timed passes over `ready`: `chunk` households
    per call of `work`, `in_flight` calls pipelined; only households `check` accepts are counted."""
    from node.client.batch import chunked, pipeline

    chunk, in_flight = spec["chunk"], spec["in_flight"]
    chunk_latencies: list[float] = []
    failures = Failures()

    async def timed(part: Any) -> list[Any]:
        started = time.perf_counter()
        records = await work(part)
        chunk_latencies.append(time.perf_counter() - started)
        return records

    async def one_pass(items: list[Any]) -> int:
        done = 0
        async for records in pipeline(chunked(items, chunk), timed, in_flight):
            for record in records:
                try:
                    check(record)
                    done += 1
                except BenchError as exc:
                    failures.add(str(exc))
        return done

    await one_pass(ready[: chunk * in_flight * 2])  # warm-up: channels, directory, caches
    for round_no in range(spec["rounds"]):
        key = f"{name}/{round_no}"
        chunk_latencies.clear()
        failures.take()
        r0, t0 = _cpu_seconds(), time.perf_counter()
        _emit({"event": "start", "phase": key})
        count = await one_pass(ready)
        elapsed = time.perf_counter() - t0
        _emit({"event": "end", "phase": key})
        cpu = (_cpu_seconds() - r0) / (time.perf_counter() - t0)
        _emit(_result_event(key, name, round_no, count, elapsed, chunk_latencies, cpu, failures))


def bench_batch(nat: National, sizes: Sizes, hooks: dict[str, Any]) -> dict[str, Any]:
    """BatchSession from a child process: households per second over whole passes."""
    assert nat.batch is not None
    path, expect = nat.batch
    spec = {
        "mode": "batch", "config": str(nat.fed.configs[REQUESTER]), "households": str(path), "expect": expect,
        "purpose": "dibao", "checks": list(BATCH_CHECKS), "rounds": sizes.batch_rounds,
        "chunk": sizes.batch_chunk, "in_flight": sizes.batch_in_flight,
    }
    results, info = run_child(spec, **hooks)
    out = pass_figures("batch", results, info, sizes)
    out.update({"batch_members": 3 * len(expect), "batch_checks": len(BATCH_CHECKS), "batch_households": len(expect),
                "batch_holders_per_household": statistics.fmean(len(v) for v in expect.values())})
    return out


def pass_figures(name: str, results: dict[str, dict[str, Any]], info: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    """The figures of a part timed in whole passes over households (batch, household), keys prefixed by `name`."""
    stats = phase_stats(results, name, name)
    out = {
        f"{name}_households_per_s": stats[f"{name}_per_s"],
        f"{name}_rounds_per_s": stats[f"{name}_rounds_per_s"],
        f"{name}_chunk": sizes.batch_chunk,
        f"{name}_in_flight": sizes.batch_in_flight,
        f"{name}_chunk_p50_ms": stats[f"{name}_p50_ms"],
        f"{name}_chunk_p99_ms": stats[f"{name}_p99_ms"],
        f"{name}_server_cpu": stats[f"{name}_server_cpu"],
        f"{name}_client_cpu": stats[f"{name}_client_cpu"],
        f"{name}_other_cpu": stats[f"{name}_other_cpu"],
        f"{name}_server_cpu_us_per_household": stats[f"{name}_server_cpu_us_per_call"],
        f"{name}_client_cpu_us_per_household": stats[f"{name}_client_cpu"] / stats[f"{name}_per_s"] * 1e6,
        f"{name}_failed_households": stats[f"{name}_failed"],
        f"{name}_failure_examples": stats[f"{name}_failure_examples"],
    }
    out.update({k: v for k, v in info.items() if k.startswith(f"{name}_")})
    return out


def bench_household(nat: National, sizes: Sizes, hooks: dict[str, Any]) -> dict[str, Any]:
    """check-batch's HouseholdBatchSession from a child process: households per second over whole passes."""
    assert nat.batch is not None and nat.household_totals is not None
    path, expect = nat.batch
    spec = {
        "mode": "household", "config": str(nat.fed.configs[REQUESTER]), "households": str(path), "expect": expect,
        "totals": nat.household_totals, "region": HOUSEHOLD_REGION, "purpose": "dibao",
        "rounds": sizes.household_rounds, "chunk": sizes.batch_chunk, "in_flight": sizes.batch_in_flight,
    }
    results, info = run_child(spec, **hooks)
    out = pass_figures("household", results, info, sizes)
    out.update({"household_households": len(expect),
                "household_holders_per_household": statistics.fmean(len(v) + 1 for v in expect.values())})
    return out
