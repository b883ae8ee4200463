"""Performance bench: the stack against its own limit, on this machine, in one run.

    python -m node.bench [--quick] [--seconds S] [--warmup W] [--concurrency C] [--only PARTS] [--profile OUT]

One run measures, on this machine (`--only` picks parts, comma-separated):

1. `rpc`: a bare gRPC echo (bytes in, bytes out) on a separate grpc.aio server built like a
   node's (same server options, same dynamic mutual-TLS credentials of a real province config),
   sequentially and with C calls in flight on one aio channel; and `Verify` against a real
   province node of an in-process federation (coordinator and two provinces, data ingested):
   one subject, five checks, a valid consent receipt, fresh nonce and signature per call, the
   answer's signature checked by the client; sequential and C in flight (C asyncio tasks on one
   channel sharing one AsyncBatchSigner). The echo is the stack's own limit: the same gRPC,
   TLS, process model and message sizes with no Hedui work at all;
2. `store`: ingest of a generated CSV into a fresh store (facts/s), and point lookups
   (1 token x 5 attributes, random tokens) on a store of 1,000,000 subjects;
3. `rss`: resident memory of one `hedui node serve` process (a subprocess) serving that
   1,000,000-subject store, after sequential and C-in-flight Verify of random subjects;
4. `workers`: Verify C in flight against `hedui node serve --workers 1` and `--workers 2` on the
   same store (one channel, as the stack's clients use, and several connections);
5. `routed`: `routed_verify` through the coordinator of a 31-province federation (households of
   1-3 members whose data sit in 1-2 provinces other than the requester's), sequentially (p50,
   p99) and from several threads (throughput), against the direct Verify p50 of part 1;
6. `batch`: BatchSession (DiscoverBatch + sealed RouteBatch, chunks pipelined as
   `hedui verify-batch` does) over households of 3 members spread over 2-3 provinces, 6 checks,
   in the 31-province federation; consents are granted in batch first, untimed;
7. `household`: the household means test of `hedui household check-batch` (HouseholdBatchSession:
   OpenRoundBatch + RouteRoundBatch, masked contributions summed, the decision records signed,
   each result line serialized) over the same households, on a published standard of their
   region, in the same federation; reported beside the per-person batch of the same run.

Servers run in this process (parts 1, 5, 6, 7) or as `hedui node serve` subprocesses (3, 4); the
load generator always runs in a child process (`python -m node.bench --client`, spec on stdin),
so client and servers do not share a GIL. Only successful, checked calls count: any failed call,
bad signature, missing or unexpected answer aborts the bench with a non-zero exit. A readable
table goes to stdout, then as the last line one JSON object with every number, the machine and
the commit, and a `goals` object (goal, value, met, shortfall) for each goal:
verify_ratio_c32 >= 0.8, routed_over_direct_p50 <= 3, batch_households_per_s >= 2000,
household_households_per_s >= 2000, node_rss_mb_1m < 300.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import csv
import datetime as _dt
import itertools
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from node.domain.regions import province_tls_name
from node.testing.standards import standards_document

VERIFY_RATIO_C32_GOAL: Final[float] = 0.8
ROUTED_OVER_DIRECT_P50_GOAL: Final[float] = 3.0  # routed p50 at most 3x the direct Verify p50
BATCH_GOAL: Final[float] = 2000.0  # households per second through BatchSession
HOUSEHOLD_GOAL: Final[float] = 2000.0  # households per second through check-batch's HouseholdBatchSession
NODE_RSS_MB_1M_GOAL: Final[float] = 300.0  # one node process serving 1,000,000 subjects, below
PARTS: Final[tuple[str, ...]] = ("rpc", "store", "rss", "workers", "routed", "batch", "household")
PROVIDER: Final[str] = "44"  # the node answering Verify
REQUESTER: Final[str] = "51"  # the province asking (and the client's TLS identity)
ECHO_SERVICE: Final[str] = "hedui.bench.Echo"
ECHO_METHOD: Final[str] = f"/{ECHO_SERVICE}/Echo"

#: The five checks of every Verify, and the facts every generated subject has for them.
CHECKS: Final[tuple[str, ...]] = (
    "income.wage_monthly<300000",
    "social_insurance.contributing==1",
    "deposit.balance_total<=2000000",
    "tax.income_annual<=3600000",
    "real_estate.count<=1",
)
#: (attribute, source, low, high) of the generated facts, in the order written per subject.
FACT_SPECS: Final[tuple[tuple[str, str, int, int], ...]] = (
    ("income.wage_monthly", "hrss", 180_000, 1_500_000),
    ("deposit.balance_total", "bank:ICBC", 0, 50_000_000),
    ("social_insurance.contributing", "hrss", 0, 1),
    ("tax.income_annual", "tax", 2_000_000, 18_000_000),
    ("real_estate.count", "natural_resources", 0, 3),
)
LOOKUP_ATTRIBUTES: Final[tuple[str, ...]] = tuple(spec[0] for spec in FACT_SPECS)
#: The six checks of a batch household, and the facts each member has for them (in one province).
BATCH_CHECKS: Final[tuple[str, ...]] = (*CHECKS, "vehicle.count<=1")
MEMBER_FACT_SPECS: Final[tuple[tuple[str, str, int, int], ...]] = (*FACT_SPECS, ("vehicle.count", "mps", 0, 2))
#: The region of the household part's households, and the standard its province (the requester) publishes.
HOUSEHOLD_REGION: Final[str] = "510104"
HOUSEHOLD_STANDARDS: Final[str] = standards_document(
    province=REQUESTER, period_from="2020-01", standard_per_person=91000,
    deductions_12m=("education_12m", "medical_12m"), rules=("income", "financial_assets", "vehicles", "homes", "businesses"),
    source="bench figures (the rules of config/standards/51-sichuan.toml for Chengdu)")


@dataclass(frozen=True)
class Sizes:
    """How big each part of the run is."""

    seconds: float  # measured per phase per round
    warmup: float
    rounds: int
    concurrency: int
    verify_subjects: int  # filler subjects in the serving node's store
    ingest_subjects: int  # x5 facts each
    lookup_subjects: int  # x2-3 facts each
    provinces: int = 31  # of the national federation (routed, batch)
    routed_households: int = 512  # households of 1-3 members, cycled through
    routed_concurrency: int = 8  # threads calling routed_verify in the throughput phase
    batch_households: int = 4096  # per timed pass; 3 members each
    batch_rounds: int = 2  # timed passes over every household (median reported)
    batch_chunk: int = 128  # households per message, as `hedui verify-batch` (default 128)
    batch_in_flight: int = 4  # messages in flight, as `hedui verify-batch` (default 4)
    household_rounds: int = 2  # timed check-batch passes over every batch household (median reported)
    node_pool: int = 256  # random subjects of the node's store that Verify cycles through
    node_seconds: float = 2.0  # per phase per round against a node subprocess
    node_rounds: int = 2
    quick: bool = False
    routed_seconds: float = 2.0  # per routed phase per round
    part_warmup: float = 0.5  # warm-up before each phase of the node and routed parts

    @classmethod
    def choose(cls, args: argparse.Namespace) -> Sizes:
        quick = args.quick
        seconds = args.seconds if args.seconds is not None else (1.0 if quick else 2.0)
        return cls(
            seconds=seconds,
            warmup=args.warmup if args.warmup is not None else (0.3 if quick else 0.5),
            rounds=args.rounds or (1 if quick else 3),
            concurrency=args.concurrency,
            verify_subjects=1_000 if quick else 20_000,
            ingest_subjects=args.ingest_subjects or (10_000 if quick else 240_000),
            lookup_subjects=args.lookup_subjects or (20_000 if quick else 1_000_000),
            provinces=args.provinces,
            routed_households=64 if quick else 512,
            routed_concurrency=args.routed_concurrency,
            batch_households=args.batch_households or (256 if quick else 4096),
            batch_rounds=1 if quick else 2,
            batch_chunk=args.batch_chunk,
            batch_in_flight=args.batch_in_flight,
            household_rounds=1 if quick else 2,
            node_pool=64 if quick else 256,
            node_seconds=min(seconds, 0.4) if quick else seconds,
            node_rounds=args.rounds or (1 if quick else 2),
            quick=bool(quick),
            routed_seconds=min(seconds, 0.5) if quick else seconds,
            part_warmup=0.15 if quick else (args.warmup if args.warmup is not None else 0.5),
        )


class BenchError(RuntimeError):
    """The bench could not measure what it set out to (a failed call, a bad answer...)."""


# --- machine --------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU count, CPU model, Python and library versions of this machine."""
    import grpc
    from google.protobuf.internal import api_implementation

    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        nproc = os.cpu_count() or 0
    return {
        "nproc": nproc,
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "grpcio": grpc.__version__,
        "protobuf": api_implementation.Type(),
        "platform": platform.platform(),
    }


def code_version() -> dict[str, Any]:
    """The package version, and the git commit measured with whether its tree had uncommitted changes
    (None when the package is installed rather than run from a checkout)."""
    from node import __version__

    root = Path(__file__).resolve().parent  # git looks upward from the package for a checkout
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"version": __version__, "commit": None, "dirty": None}
    return {"version": __version__, "commit": commit, "dirty": bool(dirty)}


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB."""
    current = peak = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return current, peak


def _cpu_seconds() -> float:
    """User + system CPU time of this process (every thread) so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat (0, 0 elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    ticks = [int(f) for f in fields] + [0] * 8
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq) / hz, steal / hz


# --- generated data -------------------------------------------------------------------------

_WEIGHTS: Final[tuple[int, ...]] = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS: Final[str] = "10X98765432"
_FIRST_BIRTH: Final[_dt.date] = _dt.date(1950, 1, 1)
_BIRTH_DAYS: Final[int] = 18_000  # 1950-01-01 .. mid 1999


def id_numbers(n: int, *, region: str = "440106", start: int = 0) -> list[str]:
    """`n` distinct valid ID numbers (GB 11643) of `region`, the `start`-th onwards, fast.

    Number i is born on day i mod 18,000 after 1950-01-01 with sequence i div 18,000 + 1, so
    up to 17,982,000 distinct numbers per region. The check character comes from precomputed
    partial weighted sums instead of summing 17 digits per number.
    """
    if start < 0 or n < 0 or start + n > _BIRTH_DAYS * 999:
        raise ValueError("too many ID numbers for one region")

    def partial(digits: str, offset: int) -> int:
        return sum(int(c) * w for c, w in zip(digits, _WEIGHTS[offset:], strict=False))

    region_sum = partial(region, 0)
    days: list[tuple[str, int]] = []
    first = _FIRST_BIRTH.toordinal()
    for d in range(_BIRTH_DAYS):
        ymd = _dt.date.fromordinal(first + d).strftime("%Y%m%d")
        days.append((region + ymd, region_sum + partial(ymd, 6)))
    seqs = [(f"{s:03d}", partial(f"{s:03d}", 14)) for s in range(1000)]
    out: list[str] = []
    append = out.append
    for i in range(start, start + n):
        prefix, psum = days[i % _BIRTH_DAYS]
        seq, ssum = seqs[i // _BIRTH_DAYS + 1]
        append(prefix + seq + _CHECK_CHARS[(psum + ssum) % 11])
    return out


def write_facts_csv(path: Path, ids: list[str], *, facts_per_subject: float, seed: int = 7,
                    as_of: str | None = None,
                    specs: tuple[tuple[str, str, int, int], ...] = FACT_SPECS) -> int:
    """Write a fact CSV for `ids`: the first k of `specs` per subject; returns the fact count.

    `facts_per_subject` may be fractional (2.5 = alternately 2 and 3 facts per subject).
    """
    rng = random.Random(seed)
    as_of = as_of or (_dt.date.today() - _dt.timedelta(days=30)).isoformat()
    whole = int(facts_per_subject)
    extra = facts_per_subject - whole
    if not 1 <= whole <= len(specs) or (extra and whole + 1 > len(specs)):
        raise ValueError(f"1 to {len(specs)} facts per subject")
    tails = [f",{as_of},{source}\n" for _, source, _, _ in specs]
    attrs = [f",{attribute}," for attribute, _, _, _ in specs]
    bounds = [(low, high) for _, _, low, high in specs]
    randint = rng.randint
    count = 0
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write("id_number,attribute,value,as_of,source\n")
        chunk: list[str] = []
        acc = 0.0
        for number in ids:
            k = whole
            acc += extra
            if acc >= 1.0:
                acc -= 1.0
                k += 1
            for j in range(k):
                low, high = bounds[j]
                chunk.append(number + attrs[j] + str(randint(low, high)) + tails[j])
            count += k
            if len(chunk) >= 65_536:
                fh.write("".join(chunk))
                chunk.clear()
        fh.write("".join(chunk))
    return count


# --- ingest and lookups ---------------------------------------------------------------------


def _default_catalogue() -> Any:
    """The federation catalogue a default province config loads."""
    from node.domain.catalogue import load_catalogue

    return load_catalogue(None)


def bench_ingest(work: Path, n_subjects: int, linkage_key: bytes, catalogue: Any) -> dict[str, Any]:
    """Time ingest_file of a generated 5-facts-per-subject CSV into a fresh store."""
    from node.store.ingest import ingest_file
    from node.store.store import Store

    csv_path = work / "ingest.csv"
    facts = write_facts_csv(csv_path, id_numbers(n_subjects, region="440304"), facts_per_subject=5)
    with Store.open(work / "ingest-store") as store:
        started = time.perf_counter()
        report = ingest_file(store, csv_path, linkage_key=linkage_key, catalogue=catalogue)
        seconds = time.perf_counter() - started
    if report.facts_written != facts or report.subjects != n_subjects:
        raise BenchError(f"ingest wrote {report.facts_written} facts for {report.subjects} subjects, "
                         f"expected {facts} for {n_subjects}")
    csv_path.unlink()
    return {"ingest_facts": facts, "ingest_subjects": n_subjects, "ingest_seconds": seconds,
            "ingest_facts_per_s": facts / seconds}


def build_lookup_store(work: Path, n_subjects: int, linkage_key: bytes, catalogue: Any,
                       data_dir: Path | None = None) -> tuple[Path, list[str], dict[str, Any]]:
    """A store of `n_subjects` subjects with 2-3 facts each (one ingest) in `data_dir` (default
    work/lookup-store); returns dir, IDs, stats."""
    from node.store.ingest import ingest_file
    from node.store.store import Store

    started = time.perf_counter()
    ids = id_numbers(n_subjects, region="440103")
    csv_path = work / "lookup.csv"
    facts = write_facts_csv(csv_path, ids, facts_per_subject=2.5, seed=11)
    generated = time.perf_counter()
    data_dir = data_dir or work / "lookup-store"
    with Store.open(data_dir) as store:
        report = ingest_file(store, csv_path, linkage_key=linkage_key, catalogue=catalogue)
        counts = store.counts()
    csv_path.unlink()
    if counts["subjects"] != n_subjects:
        raise BenchError(f"lookup store holds {counts['subjects']} subjects, expected {n_subjects}")
    done = time.perf_counter()
    return data_dir, ids, {
        "lookup_store_subjects": n_subjects,
        "lookup_store_facts": facts,
        "lookup_store_build_s": done - started,
        "lookup_store_csv_s": generated - started,
        "lookup_store_ingest_facts_per_s": facts / report.seconds,
        "lookup_store_mb": sum(p.stat().st_size for p in data_dir.glob("store.sqlite*")) / 2**20,
    }


def bench_lookups(data_dir: Path, ids: list[str], linkage_key: bytes, *, seconds: float,
                  warmup: float, pool: int = 100_000, seed: int = 3) -> dict[str, Any]:
    """Store.lookup of one random token x 5 attributes, one at a time, for `seconds`."""
    from node.crypto.tokens import subject_token
    from node.store.store import Store

    rng = random.Random(seed)
    tokens = [subject_token(linkage_key, n) for n in rng.choices(ids, k=min(pool, len(ids) * 4))]
    attrs = list(LOOKUP_ATTRIBUTES)
    with Store.open(data_dir) as store:
        lookup = store.lookup
        i, n_tokens = 0, len(tokens)
        deadline = time.perf_counter() + warmup
        while time.perf_counter() < deadline:
            lookup([tokens[i % n_tokens]], attrs)
            i += 1
        latencies: list[float] = []
        hits = 0
        perf = time.perf_counter
        started = perf()
        deadline = started + seconds
        while True:
            t0 = perf()
            if t0 >= deadline:
                break
            found = lookup([tokens[i % n_tokens]], attrs)
            latencies.append(perf() - t0)
            hits += len(found)
            i += 1
        elapsed = perf() - started
    if not latencies or hits < 2 * len(latencies):
        raise BenchError(f"lookups found {hits} facts in {len(latencies)} lookups (expected 2-3 each)")
    return {"lookups": len(latencies), "lookups_per_s": len(latencies) / elapsed,
            "lookup_p50_us": _pct(latencies, 50) * 1e6, "lookup_p99_us": _pct(latencies, 99) * 1e6,
            "lookup_facts_per_lookup": hits / len(latencies)}


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


# --- servers (this process) -----------------------------------------------------------------


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


# --- load generator (child process) ---------------------------------------------------------


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def _drive(call: Callable[[], Awaitable[None]], concurrency: int, seconds: float) -> tuple[int, float, list[float]]:
    """Run `concurrency` tasks calling `call` back to back until `seconds` have passed.

    Returns (successful calls, elapsed seconds until the last call finished, latencies).
    Any exception propagates (and fails the bench).
    """
    perf = time.perf_counter
    latencies: list[float] = []
    deadline = perf() + seconds

    async def worker() -> None:
        while perf() < deadline:
            t0 = perf()
            await call()
            latencies.append(perf() - t0)

    started = perf()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), perf() - started, latencies


_DECIDED: Final[frozenset[str]] = frozenset({"SATISFIED", "NOT_SATISFIED"})
_ANSWERED: Final[frozenset[str]] = frozenset({*_DECIDED, "NO_RECORD"})


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


class _Failed(Exception):
    """A call that failed and was counted as such: not timed, not fatal."""


def _drive_threads(call: Callable[[], None], concurrency: int, seconds: float) -> tuple[int, float, list[float]]:
    """`_drive` for a synchronous `call`: `concurrency` threads calling it back to back."""
    import threading

    perf = time.perf_counter
    latencies: list[float] = []
    errors: list[BaseException] = []
    deadline = perf() + seconds

    def worker() -> None:
        try:
            while perf() < deadline and not errors:
                t0 = perf()
                try:
                    call()
                except _Failed:
                    continue
                latencies.append(perf() - t0)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the driving thread
            errors.append(exc)

    started = perf()
    if concurrency == 1:
        worker()
    else:
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return len(latencies), perf() - started, latencies




def _odd(routing: dict[str, str], provinces: list[str]) -> dict[str, str]:
    """Routing statuses that mean a failure. NOT_HELD from a province that holds none of the household
    is a locator false positive (about 2^-16 per member and province), answered as it should be."""
    return {p: s for p, s in routing.items()
            if s not in ("OK", "NO_MATCH") and not (s == "NOT_HELD" and p not in provinces)}


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


@dataclass
class Failures:
    """Calls (or households) whose answer was refused or wrong: not counted, but reported."""

    count: int = 0
    examples: list[str] | None = None

    def add(self, reason: str) -> None:
        self.count += 1
        self.examples = self.examples or []
        if len(self.examples) < 3:
            self.examples.append(reason[:400])

    def take(self) -> tuple[int, list[str]]:
        count, examples = self.count, self.examples or []
        self.count, self.examples = 0, None
        return count, examples


#: More failed than this share of a phase's calls aborts the bench (the numbers would mean little).
MAX_FAILED_SHARE: Final[float] = 0.05


def _result_event(key: str, name: str, round_no: int, count: int, elapsed: float, latencies: list[float],
                  cpu: float, failures: Failures) -> dict[str, Any]:
    failed, examples = failures.take()
    if failed > MAX_FAILED_SHARE * max(1, count + failed):
        raise BenchError(f"{failed} of {count + failed} in {key} failed, e.g. {examples[0]}")
    return {"event": "result", "phase": key, "name": name, "round": round_no, "calls": count,
            "seconds": elapsed, "per_s": count / elapsed if elapsed else 0.0,
            "latencies_ms": [x * 1e3 for x in latencies], "client_cpu": cpu,
            "failed": failed, "failure_examples": examples}


def _measure_rounds(spec: dict[str, Any], drive: Callable[[dict[str, Any], float], tuple[int, float, list[float]]],
                    failures: Failures, steps: dict[str, list[float]] | None = None) -> None:
    """First warm-up, then rounds of every phase (warm-up, start, measure, end, result events).

    `steps` (step name -> durations, filled by the calls) is emptied before each measured phase
    and its medians (ms) go into the phase's result as "steps_ms"."""
    for phase in spec["phases"]:
        drive(phase, spec["first_warmup"])
    for round_no in range(spec["rounds"]):
        for phase in spec["phases"]:
            key = f"{phase['name']}/{round_no}"
            drive(phase, spec["warmup"])
            failures.take()
            if steps is not None:
                steps.clear()
            r0, t0 = _cpu_seconds(), time.perf_counter()
            _emit({"event": "start", "phase": key})
            count, elapsed, latencies = drive(phase, spec["seconds"])
            _emit({"event": "end", "phase": key})
            cpu = (_cpu_seconds() - r0) / (time.perf_counter() - t0)
            event = _result_event(key, phase["name"], round_no, count, elapsed, latencies, cpu, failures)
            if steps:
                event["steps_ms"] = {k: [x * 1e3 for x in v] for k, v in steps.items()}
            _emit(event)


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


def _client_entry() -> int:
    spec = json.loads(sys.stdin.read())
    mode = spec.get("mode", "rpc")
    if mode == "routed":
        routed_client_main(spec)
    elif mode == "batch":
        asyncio.run(batch_client_main(spec))
    elif mode == "household":
        asyncio.run(household_client_main(spec))
    else:
        asyncio.run(client_main(spec))
    return 0


# --- orchestration (this process) -----------------------------------------------------------


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
             on_end: Callable[[str], None] | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Run the load generator in a child process; per phase its numbers and this process's CPU."""
    spec = {
        "verify_target": setup.verify_target, "echo_target": setup.echo_target,
        "config": str(setup.config), "receipt": base64.b64encode(setup.receipt).decode(),
        "subject": setup.subject, "purpose": setup.purpose, "checks": list(CHECKS),
        "seconds": sizes.seconds, "warmup": sizes.warmup, "rounds": sizes.rounds, "phases": phases,
        "first_warmup": 0.0 if sizes.rounds == 1 else 2 * sizes.warmup,
    }
    return run_child(spec, on_start=on_start, on_end=on_end)


def run_child(spec: dict[str, Any], *, on_start: Callable[[str], None] | None = None,
              on_end: Callable[[str], None] | None = None,
              server_cpu: Callable[[], float] = _cpu_seconds) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Run `python -m node.bench --client` on `spec`; per phase its numbers and the servers' CPU
    (`server_cpu`: CPU seconds of the serving processes so far; default this process).

    Returns (results by phase/round, the child's "sizes" and "info" events merged)."""
    results: dict[str, dict[str, Any]] = {}
    info: dict[str, Any] = {}
    marks: dict[str, tuple[float, ...]] = {}
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.bench", "--client"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=errors, text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(spec))
        proc.stdin.close()
        done = False
        for line in proc.stdout:
            event = json.loads(line)
            kind = event["event"]
            if kind == "start":
                if on_start:
                    on_start(event["phase"])
                marks[event["phase"]] = (server_cpu(), *_machine_cpu(), time.perf_counter())
            elif kind == "end":
                cpu0, busy0, steal0, t0 = marks[event["phase"]]
                busy1, steal1 = _machine_cpu()
                wall = time.perf_counter() - t0
                marks[event["phase"]] = ((server_cpu() - cpu0) / wall, (busy1 - busy0) / wall,
                                         (steal1 - steal0) / wall, wall)
                if on_end:
                    on_end(event["phase"])
            elif kind == "result":
                server, busy, steal, _wall = marks[event["phase"]]
                event["server_cpu"] = server
                # CPU used by anything but the bench's processes (other jobs, the hypervisor).
                event["other_cpu"] = max(0.0, busy - server - event["client_cpu"]) + steal
                results[event["phase"]] = event
            elif kind in ("sizes", "info"):
                info.update({k: v for k, v in event.items() if k != "event"})
            elif kind == "done":
                done = True
        code = proc.wait()
        if code != 0 or not done:
            errors.seek(0)
            tail = errors.read()[-4000:]
            raise BenchError(f"load generator ({spec.get('mode', 'rpc')}) failed (exit {code}):\n{tail}")
    return results, info


@contextlib.contextmanager
def federation(work: Path, sizes: Sizes) -> Iterator[tuple[Any, RpcSetup, Any]]:
    """Coordinator + two provinces (the provider's store filled), consent granted, echo server up."""
    from node import config as config_mod
    from node.testing.cluster import run_cluster

    data = work / "data"
    data.mkdir()
    ids = id_numbers(sizes.verify_subjects, region="440106")
    write_facts_csv(data / f"{PROVIDER}.csv", ids, facts_per_subject=5)
    subject = ids[len(ids) // 2]
    with run_cluster([PROVIDER, REQUESTER], root=work / "fed", data={PROVIDER: data / f"{PROVIDER}.csv"}) as fed:
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


def phase_stats(results: dict[str, dict[str, Any]], name: str, key: str) -> dict[str, Any]:
    """One phase over its rounds: median rate, pooled latency percentiles, mean CPU shares."""
    rounds = sorted((r for r in results.values() if r["name"] == name), key=lambda r: r["round"])
    if not rounds:
        raise BenchError(f"no results for phase {name}")
    latencies = [x for r in rounds for x in r["latencies_ms"]]
    rate = statistics.median(r["per_s"] for r in rounds)
    server = statistics.fmean(r["server_cpu"] for r in rounds)
    return {
        f"{key}_per_s": rate,
        f"{key}_rounds_per_s": [r["per_s"] for r in rounds],
        f"{key}_calls": sum(r["calls"] for r in rounds),
        f"{key}_p50_ms": _pct(latencies, 50),
        f"{key}_p99_ms": _pct(latencies, 99),
        f"{key}_server_cpu": server,
        f"{key}_client_cpu": statistics.fmean(r["client_cpu"] for r in rounds),
        f"{key}_other_cpu": statistics.fmean(r["other_cpu"] for r in rounds),
        f"{key}_server_cpu_us_per_call": server / rate * 1e6 if rate else None,
        f"{key}_failed": sum(r.get("failed", 0) for r in rounds),
        f"{key}_failure_examples": [e for r in rounds for e in r.get("failure_examples", [])][:3],
    }


# --- national federation: routed and batch verification -------------------------------------


@dataclass
class National:
    """A running federation of every province, and the households of the routed and batch parts."""

    fed: Any
    routed: tuple[Path, dict[str, list[str]]] | None
    batch: tuple[Path, dict[str, list[str]]] | None
    stats: dict[str, Any]
    #: household -> its planted measure totals (the household part's oracle), when that part runs.
    household_totals: dict[str, dict[str, int]] | None = None


def plan_households(rng: random.Random, n: int, *, members: tuple[int, int], spread: tuple[int, int],
                    provinces: list[str], ids: Iterator[str], prefix: str) -> list[tuple[str, list[str], list[str]]]:
    """`n` households: key, members' ID numbers, and the province holding each member's data.

    A household has members[0]..members[1] members whose data sit in spread[0]..spread[1] distinct
    `provinces` (never more provinces than members), every chosen province holding someone.
    """
    plan = []
    for i in range(n):
        m = rng.randint(*members)
        k = rng.randint(spread[0], min(spread[1], m))
        chosen = rng.sample(provinces, k)
        where = chosen + [rng.choice(chosen) for _ in range(m - k)]
        rng.shuffle(where)
        plan.append((f"{prefix}{i:06d}", [next(ids) for _ in range(m)], where))
    return plan


def write_households(path: Path, plan: list[tuple[str, list[str], list[str]]]) -> dict[str, list[str]]:
    """A `household,id_number` CSV (what verify-batch reads); household -> holding provinces."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write("household,id_number\n")
        fh.writelines(f"{key},{n}\n" for key, numbers, _ in plan for n in numbers)
    return {key: sorted(set(where)) for key, _, where in plan}


@contextlib.contextmanager
def national(work: Path, sizes: Sizes, *, routed: bool, batch: bool, household: bool = False) -> Iterator[National]:
    """Coordinator + `sizes.provinces` province nodes in this process (run_cluster), the routed and
    batch households' data ingested where the plan puts it (6 facts per member), nothing about
    them held by the requester. With `household`, the requester publishes HOUSEHOLD_STANDARDS and
    the batch households' planted totals are worked out from the data files."""
    from node.domain.regions import PROVINCES
    from node.testing.cluster import run_cluster

    codes = sorted(PROVINCES)
    if not 3 <= sizes.provinces <= len(codes):
        raise BenchError(f"--provinces must be 3 to {len(codes)}")
    others = [c for c in codes if c != REQUESTER][: sizes.provinces - 1]
    rng = random.Random(17)
    n_members = 3 * (sizes.routed_households * routed + sizes.batch_households * batch)
    ids = iter(id_numbers(n_members, region="510104"))
    routed_plan = plan_households(rng, sizes.routed_households, members=(1, 3), spread=(1, 2), provinces=others,
                                  ids=ids, prefix="r") if routed else []
    batch_plan = plan_households(rng, sizes.batch_households, members=(3, 3), spread=(2, 3), provinces=others,
                                 ids=ids, prefix="b") if batch else []
    held: dict[str, list[str]] = {c: [] for c in others}
    for _, numbers, where in routed_plan + batch_plan:
        for n, c in zip(numbers, where, strict=True):
            held[c].append(n)
    data_dir = work / "national-data"
    data_dir.mkdir()
    data: dict[str, Path] = {}
    facts = 0
    for c, numbers in held.items():
        if numbers:
            data[c] = data_dir / f"{c}.csv"
            facts += write_facts_csv(data[c], numbers, facts_per_subject=len(MEMBER_FACT_SPECS), seed=int(c),
                                     specs=MEMBER_FACT_SPECS)
    routed_files = (data_dir / "routed.csv", write_households(data_dir / "routed.csv", routed_plan)) if routed else None
    batch_files = (data_dir / "batch.csv", write_households(data_dir / "batch.csv", batch_plan)) if batch else None
    totals = planted_totals(data, batch_plan) if household else None
    started = time.perf_counter()
    with run_cluster([REQUESTER, *others], root=work / "national", data=data) as fed:
        if household:
            (data_dir / "standards.toml").write_text(HOUSEHOLD_STANDARDS, encoding="utf-8")
            fed.publish_standards(REQUESTER, data_dir / "standards.toml")
        yield National(fed, routed_files, batch_files, {
            "national_provinces": len(others) + 1, "national_subjects": sum(len(v) for v in held.values()),
            "national_facts": facts, "national_setup_s": time.perf_counter() - started,
        }, totals)


def planted_totals(data: dict[str, Path], plan: list[tuple[str, list[str], list[str]]]) -> dict[str, dict[str, int]]:
    """Per household of `plan`, each catalogue measure's total over its members, from the fact files."""
    catalogue = _default_catalogue()
    measure_of = {item: m.code for m in catalogue.measures for item in m.items}
    per_person: dict[str, dict[str, int]] = {}
    for path in data.values():
        with path.open(encoding="utf-8", newline="") as fh:
            for number, attribute, value, *_ in itertools.islice(csv.reader(fh), 1, None):
                if attribute in measure_of:
                    code = measure_of[attribute]
                    per_person.setdefault(number, {})[code] = per_person.get(number, {}).get(code, 0) + int(value)
    out: dict[str, dict[str, int]] = {}
    for key, numbers, _ in plan:
        sums: dict[str, int] = {}
        for n in numbers:
            for code, value in per_person.get(n, {}).items():
                sums[code] = sums.get(code, 0) + value
        out[key] = sums
    return out


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


# --- one node as a subprocess: memory on 1,000,000 subjects, --workers ----------------------


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of process `pid` in MiB, from /proc/PID/status."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_children(pid: int) -> list[int]:
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text(encoding="ascii").split()]
    return children


@dataclass
class NodeProcess:
    """A `hedui node serve` subprocess: its address and the PIDs of its serving processes."""

    proc: subprocess.Popen[bytes]
    address: str
    pids: list[int]
    startup_s: float

    def cpu(self) -> float:
        return sum(proc_cpu(pid) for pid in self.pids)


@contextlib.contextmanager
def node_process(config: Path, workers: int, log_path: Path, *, timeout: float = 300.0) -> Iterator[NodeProcess]:
    """`hedui node serve --config CONFIG [--workers N]` on a free port, until every worker logged
    "serving" (store opened and checked, coordinator announced, consent state synced); SIGTERM on exit."""
    import signal

    port = _free_port()
    cmd = [sys.executable, "-m", "node.cli.main", "node", "serve", "--config", str(config),
           "--listen", f"127.0.0.1:{port}"]
    if workers != 1:
        cmd += ["--workers", str(workers)]
    started = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        pids: list[int] = []
        try:
            while True:
                serving = 0
                with contextlib.suppress(OSError):
                    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
                        with contextlib.suppress(ValueError):
                            event = json.loads(line)
                            serving += event.get("event") == "serving" and event.get("component") == "node"
                pids = [proc.pid] if workers == 1 else proc_children(proc.pid)
                if serving >= workers and len(pids) == workers:
                    break
                if proc.poll() is not None or time.perf_counter() - started > timeout:
                    tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
                    raise BenchError(f"node serve --workers {workers} did not start (exit {proc.poll()}):\n{tail}")
                time.sleep(0.1)
            yield NodeProcess(proc, f"127.0.0.1:{port}", pids, time.perf_counter() - started)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    for pid in pids:
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
                    proc.kill()
                    proc.wait()


@contextlib.contextmanager
def node_federation(work: Path) -> Iterator[Any]:
    """Keys and configs of the provider and the requester (build_federation); the coordinator runs
    here once `start()`ed; the provider's node is started as a subprocess by the callers."""
    from node.testing.cluster import build_federation

    fed = build_federation(work / "nodefed", [PROVIDER, REQUESTER])
    try:
        yield fed
    finally:
        if fed.loop is not None:
            for code in list(fed.servers):
                fed.stop_node(code)
            fed.loop.close()
            fed.loop = None


def bench_node(fed: Any, ids: list[str], sizes: Sizes, parts: set[str], work: Path,
               hooks: dict[str, Any]) -> dict[str, Any]:
    """Verify of random subjects against `hedui node serve` on the provider's store (1,000,000
    subjects by default): RSS of the node process afterwards, and --workers 1 vs 2."""
    from node.testing.cluster import LoopThread

    if fed.loop is None:
        fed.loop = LoopThread()
        fed.start_coordinator()  # points both configs at it
    c = sizes.concurrency
    pool = random.Random(5).sample(ids, min(sizes.node_pool, len(ids)))
    conns = 8
    # Lookup-store subjects have the first 2 or 3 of FACT_SPECS: 2 of the 5 checks at least are decided.
    base = {"mode": "rpc", "echo_target": None, "config": str(fed.configs[REQUESTER]), "grant_ids": pool, "min_decided": 2,
            "purpose": "dibao", "checks": list(CHECKS), "seconds": sizes.node_seconds, "warmup": sizes.part_warmup,
            "rounds": sizes.node_rounds, "first_warmup": 0.0 if sizes.node_rounds == 1 else 2 * sizes.part_warmup}
    out: dict[str, Any] = {"node_store_subjects": len(ids), "node_pool_subjects": len(pool), "node_conns": conns}

    def run_against(node: NodeProcess, phases: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, list[float]]]:
        """The child against `node`; per phase name, each worker's share of the node's CPU."""
        shares: dict[str, list[list[float]]] = {}
        marks: dict[str, list[float]] = {}

        def on_start(phase: str) -> None:
            marks[phase] = [proc_cpu(pid) for pid in node.pids]
            if hooks.get("on_start"):
                hooks["on_start"](phase)

        def on_end(phase: str) -> None:
            used = [proc_cpu(pid) - t for pid, t in zip(node.pids, marks[phase], strict=True)]
            total = sum(used) or 1.0
            shares.setdefault(phase.split("/")[0], []).append([u / total for u in used])
            if hooks.get("on_end"):
                hooks["on_end"](phase)

        results, info = run_child({**base, "verify_target": node.address, "phases": phases},
                                  on_start=on_start, on_end=on_end, server_cpu=node.cpu)
        mean_shares = {name: [statistics.fmean(col) for col in zip(*rows, strict=True)] for name, rows in shares.items()}
        return {"results": results, "info": info}, mean_shares

    w1_phases = [
        {"name": "verify_seq", "kind": "verify", "concurrency": 1},
        {"name": "verify_c", "kind": "verify", "concurrency": c},
        {"name": "verify_c_conns", "kind": "verify", "concurrency": c, "channels": conns},
    ]
    if "workers" not in parts:
        w1_phases = w1_phases[:2]
    elif sizes.quick:  # keep --quick short: no sequential phase, no one-channel comparison
        w1_phases = w1_phases[1:]
    config = fed.configs[PROVIDER]
    with node_process(config, 1, work / "node-w1.log") as node:
        got, _shares = run_against(node, w1_phases)
        status = proc_status(node.pids[0])
        out["node_startup_s"] = node.startup_s
    results = got["results"]
    if any(p["name"] == "verify_seq" for p in w1_phases):
        out.update(phase_stats(results, "verify_seq", "node_verify_seq"))
    out.update(phase_stats(results, "verify_c", f"node_verify_c{c}"))
    out["node_rss_mb_1m"] = status.get("VmRSS")
    out["node_peak_rss_mb_1m"] = status.get("VmHWM")
    out["node_rss_after_verifies"] = sum(r["calls"] for r in results.values())
    out["node_pool_grant_s"] = got["info"].get("pool_grant_s")
    if "workers" in parts:
        out.update(phase_stats(results, "verify_c_conns", f"node_w1_verify_c{c}_conns"))
        w2_phases = [
            {"name": "verify_c", "kind": "verify", "concurrency": c},
            {"name": "verify_c_conns", "kind": "verify", "concurrency": c, "channels": conns},
        ][1 if sizes.quick else 0:]
        with node_process(config, 2, work / "node-w2.log") as node:
            got2, shares2 = run_against(node, w2_phases)
            out["workers2_rss_mb"] = [proc_status(pid).get("VmRSS") for pid in node.pids]
        r2 = got2["results"]
        w1_one = phase_stats(results, "verify_c", "x")
        w1_conns = phase_stats(results, "verify_c_conns", "x")
        w2_one = phase_stats(r2, "verify_c", "x") if not sizes.quick else {"x_per_s": None}
        w2_conns = phase_stats(r2, "verify_c_conns", "x")
        out.update({
            "verify_c32_workers1_per_s": w1_conns["x_per_s"],
            "verify_c32_workers2_per_s": w2_conns["x_per_s"],
            "workers_speedup": w2_conns["x_per_s"] / w1_conns["x_per_s"],
            "verify_c32_workers1_1conn_per_s": w1_one["x_per_s"],
            "verify_c32_workers2_1conn_per_s": w2_one["x_per_s"],
            "workers_speedup_1conn": w2_one["x_per_s"] / w1_one["x_per_s"] if w2_one["x_per_s"] else None,
            "workers2_cpu_share": shares2.get("verify_c_conns"),
            "workers2_cpu_share_1conn": shares2.get("verify_c"),
            "workers1_server_cpu": w1_conns["x_server_cpu"],
            "workers2_server_cpu": w2_conns["x_server_cpu"],
            "workers1_client_cpu": w1_conns["x_client_cpu"],
            "workers2_client_cpu": w2_conns["x_client_cpu"],
            "workers1_other_cpu": w1_conns["x_other_cpu"],
            "workers2_other_cpu": w2_conns["x_other_cpu"],
            "workers1_rounds_per_s": w1_conns["x_rounds_per_s"],
            "workers2_rounds_per_s": w2_conns["x_rounds_per_s"],
        })
    return out


# --- goals ------------------------------------------------------------------------------------


def goals(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each goal: its bound, the measured value, met, and shortfall (how far from the bound, in
    the value's unit; 0 when met) and factor (how many times better the value must get)."""
    specs = (  # name, value key, bound, at least (True) or at most (False), strict
        ("verify_ratio_c32", "verify_ratio_c32", VERIFY_RATIO_C32_GOAL, True, False),
        ("routed_over_direct_p50", "routed_over_direct_p50", ROUTED_OVER_DIRECT_P50_GOAL, False, False),
        ("batch_households_per_s", "batch_households_per_s", BATCH_GOAL, True, False),
        ("household_households_per_s", "household_households_per_s", HOUSEHOLD_GOAL, True, False),
        ("node_rss_mb_1m", "node_rss_mb_1m", NODE_RSS_MB_1M_GOAL, False, True),
    )
    result: dict[str, dict[str, Any]] = {}
    for name, key, bound, at_least, strict in specs:
        value = out.get(key)
        if value is None:
            result[name] = {"goal": bound, "value": None, "met": None, "shortfall": None, "factor": None,
                            "rule": (">=" if at_least else "<" if strict else "<=")}
            continue
        if at_least:
            met = value >= bound
            shortfall = max(0.0, bound - value)
            factor = bound / value if value > 0 else None
        else:
            met = value < bound if strict else value <= bound
            shortfall = max(0.0, value - bound)
            factor = value / bound
        result[name] = {"goal": bound, "value": value, "met": met, "shortfall": shortfall,
                        "factor": max(1.0, factor) if factor is not None else None,
                        "rule": (">=" if at_least else "<" if strict else "<=")}
    return result


def _profiler_hooks(args: argparse.Namespace, loop: Any, state: dict[str, Any]) -> dict[str, Any]:
    """on_start/on_end that cProfile `loop`'s thread during the phases named by --profile-phase."""
    if not args.profile:
        return {}
    prefix = args.profile_phase + "/"

    def on_start(phase: str) -> None:
        if phase.startswith(prefix) and loop is not None:
            import cProfile

            state["profiler"] = state.get("profiler") or cProfile.Profile()
            loop.run(_on_loop(state["profiler"].enable))

    def on_end(phase: str) -> None:
        if phase.startswith(prefix) and state.get("profiler") is not None and loop is not None:
            loop.run(_on_loop(state["profiler"].disable))

    return {"on_start": on_start, "on_end": on_end}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole bench (the parts of --only); returns the JSON summary."""
    from node import logs

    logs.configure("warning", json=True)
    sizes = Sizes.choose(args)
    parts: set[str] = set(args.only)
    started = time.perf_counter()
    out: dict[str, Any] = {"quick": bool(args.quick), "seconds_per_phase": sizes.seconds,
                           "warmup_s": sizes.warmup, "rounds": sizes.rounds, "concurrency": sizes.concurrency,
                           "parts": [p for p in PARTS if p in parts]}
    part_s: dict[str, float] = {}
    c = sizes.concurrency
    profile: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hedui-bench-", dir=args.tmp) as tmp:
        work = Path(tmp)
        if "rpc" in parts:
            t0 = time.perf_counter()
            with federation(work, sizes) as (fed, setup, _echo):
                results, msg_sizes = run_load(setup, sizes, rpc_phases(c), **_profiler_hooks(args, fed.loop, profile))
                rss, peak = _rss_mb()
            out.update(summarise(results, c))
            ratio = out["verify_ratio_c32"]
            out["verify_ratio_c32_goal"] = VERIFY_RATIO_C32_GOAL
            out["met"] = ratio >= VERIFY_RATIO_C32_GOAL
            out["shortfall"] = max(0.0, VERIFY_RATIO_C32_GOAL - ratio)
            out["verify_c32_needed_per_s"] = VERIFY_RATIO_C32_GOAL * out["echo_c32_per_s"]
            out["request_bytes"] = msg_sizes.get("request_bytes")
            out["response_bytes"] = msg_sizes.get("response_bytes")
            out["node_rss_mb"] = rss
            out["node_peak_rss_mb"] = peak
            out["node_process"] = "coordinator + 2 province nodes + echo server (one process, one loop)"
            out["direct_p50_ms"] = out["verify_seq_p50_ms"]
            part_s["rpc"] = time.perf_counter() - t0
        if parts & {"store", "rss", "workers"}:
            with node_federation(work) as nfed:
                member = nfed.member(PROVIDER)
                catalogue = member.catalogue
                if "store" in parts:
                    from node.crypto.tokens import new_linkage_key

                    t0 = time.perf_counter()
                    out.update(bench_ingest(work, sizes.ingest_subjects, new_linkage_key(), catalogue))
                    part_s["ingest"] = time.perf_counter() - t0
                # The lookup store is the provider node's own store, under the federation's linkage
                # key, so the node subprocess of the rss and workers parts serves the same subjects.
                t0 = time.perf_counter()
                data_dir, ids, stats = build_lookup_store(work, sizes.lookup_subjects, member.linkage_key, catalogue,
                                                          data_dir=member.cfg.data_dir)
                out.update(stats)
                part_s["lookup_store"] = time.perf_counter() - t0
                if "store" in parts:
                    t0 = time.perf_counter()
                    out.update(bench_lookups(data_dir, ids, member.linkage_key, seconds=sizes.seconds * sizes.rounds,
                                             warmup=sizes.warmup))
                    part_s["lookups"] = time.perf_counter() - t0
                if parts & {"rss", "workers"}:
                    t0 = time.perf_counter()
                    out.update(bench_node(nfed, ids, sizes, parts, work, {}))
                    part_s["node"] = time.perf_counter() - t0
                del ids
        if parts & {"routed", "batch", "household"}:
            t0 = time.perf_counter()
            with national(work, sizes, routed="routed" in parts, batch=bool(parts & {"batch", "household"}),
                          household="household" in parts) as nat:
                out.update(nat.stats)
                hooks = _profiler_hooks(args, nat.fed.loop, profile)
                if nat.routed is not None:
                    t1 = time.perf_counter()
                    out.update(bench_routed(nat, sizes, hooks))
                    part_s["routed"] = time.perf_counter() - t1
                if "batch" in parts:
                    t1 = time.perf_counter()
                    out.update(bench_batch(nat, sizes, hooks))
                    part_s["batch"] = time.perf_counter() - t1
                if "household" in parts:
                    t1 = time.perf_counter()
                    out.update(bench_household(nat, sizes, hooks))
                    part_s["household"] = time.perf_counter() - t1
                rss, peak = _rss_mb()
                out["national_server_rss_mb"] = rss
                out["national_process"] = f"coordinator + {nat.stats['national_provinces']} province nodes (one process, one loop)"
            part_s["national"] = time.perf_counter() - t0
    if profile.get("profiler") is not None:
        profile["profiler"].dump_stats(args.profile)
    if out.get("routed_p50_ms") is not None and out.get("direct_p50_ms"):
        out["routed_over_direct_p50"] = out["routed_p50_ms"] / out["direct_p50_ms"]
    out["goals"] = goals(out)
    if out.get("household_households_per_s") and out.get("batch_households_per_s"):
        out["household_over_batch"] = out["household_households_per_s"] / out["batch_households_per_s"]
    for name, key in (("routed_over_direct_p50", "routed_over_direct_p50"), ("batch", "batch_households_per_s"),
                      ("household", "household_households_per_s"),
                      ("node_rss_mb_1m", "node_rss_mb_1m"), ("verify_ratio_c32", "verify_ratio_c32")):
        g = out["goals"][key]
        out[f"{name}_goal"] = g["goal"]
        out[f"{name}_met"] = g["met"]
        out[f"{name}_shortfall"] = g["shortfall"]
    out["goals_met"] = sum(1 for g in out["goals"].values() if g["met"])
    out["goals_measured"] = sum(1 for g in out["goals"].values() if g["met"] is not None)
    out["part_s"] = part_s
    out["total_s"] = time.perf_counter() - started
    out["machine"] = machine_info()
    out["code"] = code_version()
    return out


async def _on_loop(fn: Callable[[], None]) -> None:
    fn()


# --- report ---------------------------------------------------------------------------------


def table(out: dict[str, Any]) -> str:
    """The summary as a readable table."""
    c = out.get("concurrency", 32)
    lines = []
    m = out.get("machine", {})
    lines.append(f"Hedui bench - {m.get('nproc')} CPU {m.get('cpu_model')}, Python {m.get('python')}, "
                 f"grpcio {m.get('grpcio')}, protobuf {m.get('protobuf')}; "
                 f"commit {out.get('code', {}).get('commit')}{'+dirty' if out.get('code', {}).get('dirty') else ''}"
                 + (" [quick]" if out.get("quick") else ""))
    if "verify_seq_per_s" in out:
        lines.append(f"RPC: {out['rounds']} x {out['seconds_per_phase']:g} s per phase (median of rounds), "
                     f"{out['warmup_s']:g} s warm-up each; "
                     f"request {out['request_bytes']} B, response {out['response_bytes']} B")
        lines.append(f"{'phase':<14}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'server CPU':>12}{'us/call':>9}"
                     f"{'client CPU':>12}{'other CPU':>11}")
        for key in ("echo_seq", "verify_seq", f"echo_c{c}", f"verify_c{c}"):
            lines.append(f"{key:<14}{out[f'{key}_per_s']:>10.0f}{out[f'{key}_p50_ms']:>9.2f}{out[f'{key}_p99_ms']:>9.2f}"
                         f"{out[f'{key}_server_cpu'] * 100:>11.0f}%{out[f'{key}_server_cpu_us_per_call']:>9.0f}"
                         f"{out[f'{key}_client_cpu'] * 100:>11.0f}%{out[f'{key}_other_cpu'] * 100:>10.0f}%")
        rounds = ", ".join(f"{r:.2f}" for r in out["verify_ratio_c32_rounds"])
        lines.append(f"verify/echo sequential {out['verify_ratio_seq']:.2f}; c{c} {out[f'verify_ratio_c{c}']:.2f} "
                     f"[rounds {rounds}] "
                     f"(goal {out['verify_ratio_c32_goal']:.2f}: {'met' if out['met'] else 'NOT met'}, "
                     f"needs {out['verify_c32_needed_per_s']:.0f}/s)")
        lines.append(f"server process RSS {out['node_rss_mb']:.0f} MiB (peak {out['node_peak_rss_mb']:.0f} MiB)")
    if "ingest_facts_per_s" in out:
        lines.append(f"ingest: {out['ingest_facts']:,} facts / {out['ingest_subjects']:,} subjects in "
                     f"{out['ingest_seconds']:.1f} s = {out['ingest_facts_per_s']:,.0f} facts/s")
        lines.append(f"lookup store: {out['lookup_store_subjects']:,} subjects, {out['lookup_store_facts']:,} facts, "
                     f"{out['lookup_store_mb']:.0f} MiB, built in {out['lookup_store_build_s']:.1f} s "
                     f"({out['lookup_store_ingest_facts_per_s']:,.0f} facts/s ingest)")
        lines.append(f"lookups (1 token x 5 attributes): {out['lookups_per_s']:,.0f}/s, "
                     f"p50 {out['lookup_p50_us']:.0f} us, p99 {out['lookup_p99_us']:.0f} us")
    if "node_rss_mb_1m" in out:
        lines.append(f"node process (hedui node serve, {out['node_store_subjects']:,} subjects; Verify of "
                     f"{out['node_pool_subjects']} random subjects, started in {out['node_startup_s']:.1f} s):")
        lines.append(_phase_header())
        for key in ("node_verify_seq", f"node_verify_c{c}"):
            if f"{key}_per_s" in out:
                lines.append(_phase_line(out, key))
        lines.append(f"node RSS {out['node_rss_mb_1m']:.0f} MiB (peak {out['node_peak_rss_mb_1m']:.0f} MiB) after "
                     f"{out['node_rss_after_verifies']:,} Verify calls")
    if "workers_speedup" in out:
        share = "/".join(f"{x * 100:.0f}%" for x in out["workers2_cpu_share"] or [])
        share1 = "/".join(f"{x * 100:.0f}%" for x in out["workers2_cpu_share_1conn"] or [])
        lines.append(f"--workers: Verify c{c} over {out['node_conns']} connections: workers 1 "
                     f"{out['verify_c32_workers1_per_s']:.0f}/s, workers 2 {out['verify_c32_workers2_per_s']:.0f}/s "
                     f"= {out['workers_speedup']:.2f}x (node CPU {out['workers1_server_cpu'] * 100:.0f}% vs "
                     f"{out['workers2_server_cpu'] * 100:.0f}%, split {share}; client CPU "
                     f"{out['workers1_client_cpu'] * 100:.0f}% vs {out['workers2_client_cpu'] * 100:.0f}%)")
        if out.get("workers_speedup_1conn") is not None:
            lines.append(f"           over one channel: workers 1 {out['verify_c32_workers1_1conn_per_s']:.0f}/s, workers 2 "
                         f"{out['verify_c32_workers2_1conn_per_s']:.0f}/s = {out['workers_speedup_1conn']:.2f}x "
                         f"(split {share1})")
    if "routed_p50_ms" in out:
        rc = out["routed_concurrency"]
        lines.append(f"routed (routed_verify through the coordinator, {out['national_provinces']} provinces in one process; "
                     f"{out['routed_households']} households of 1-3 members, data in 1-2 other provinces):")
        lines.append(_phase_header())
        for key in ("routed_seq", f"routed_c{rc}"):
            lines.append(_phase_line(out, key))
        if out.get("routed_failed"):
            lines.append(f"  ! {out['routed_failed']} routed verifications refused or wrong (not counted), e.g. "
                         f"{(out['routed_seq_failure_examples'] + out[f'routed_c{rc}_failure_examples'])[0][:300]}")
        if out.get("routed_seq_step_p50_ms"):
            lines.append("  sequential step p50: " + ", ".join(
                f"{k.removeprefix('rpc_')} {v:.1f} ms" for k, v in out["routed_seq_step_p50_ms"].items())
                + f" (one long-lived coordinator connection; a new connection would cost "
                f"{out['routed_connect_ms']:.1f} ms)")
        if out.get("routed_over_direct_p50") is not None:
            lines.append(f"routed p50 {out['routed_p50_ms']:.2f} ms / direct Verify p50 {out['direct_p50_ms']:.2f} ms = "
                         f"{out['routed_over_direct_p50']:.2f}x")
    if "batch_households_per_s" in out:
        rounds = ", ".join(f"{r:.0f}" for r in out["batch_rounds_per_s"])
        lines.append(f"batch (BatchSession, {out['national_provinces']} provinces in one process; "
                     f"{out['batch_households']:,} households x 3 members over 2-3 provinces, {out['batch_checks']} checks; "
                     f"chunks of {out['batch_chunk']}, {out['batch_in_flight']} in flight):")
        lines.append(f"  {out['batch_households_per_s']:,.0f} households/s [passes {rounds}], chunk p50 "
                     f"{out['batch_chunk_p50_ms']:.0f} ms p99 {out['batch_chunk_p99_ms']:.0f} ms; server CPU "
                     f"{out['batch_server_cpu'] * 100:.0f}% ({out['batch_server_cpu_us_per_household']:.0f} us/household), "
                     f"client CPU {out['batch_client_cpu'] * 100:.0f}% ({out['batch_client_cpu_us_per_household']:.0f} "
                     f"us/household), other {out['batch_other_cpu'] * 100:.0f}%; consents granted at "
                     f"{out['batch_grant_per_s']:,.0f}/s (untimed)")
    if out.get("batch_failed_households"):
        lines.append(f"  ! {out['batch_failed_households']} households incomplete or wrong (not counted), e.g. "
                     f"{out['batch_failure_examples'][0][:300]}")
    if "household_households_per_s" in out:
        rounds = ", ".join(f"{r:.0f}" for r in out["household_rounds_per_s"])
        lines.append(f"household (check-batch's HouseholdBatchSession, same federation and households, each decided on "
                     f"a published standard; {out['household_holders_per_household']:.1f} holders per household with "
                     f"the requester; chunks of {out['household_chunk']}, {out['household_in_flight']} in flight):")
        beside = (f"; per-person batch of this run {out['batch_households_per_s']:,.0f}/s "
                  f"({out['household_over_batch']:.2f}x)" if out.get("household_over_batch") else "")
        lines.append(f"  {out['household_households_per_s']:,.0f} households/s [passes {rounds}]{beside}; chunk p50 "
                     f"{out['household_chunk_p50_ms']:.0f} ms p99 {out['household_chunk_p99_ms']:.0f} ms; server CPU "
                     f"{out['household_server_cpu'] * 100:.0f}% ({out['household_server_cpu_us_per_household']:.0f} "
                     f"us/household), client CPU {out['household_client_cpu'] * 100:.0f}% "
                     f"({out['household_client_cpu_us_per_household']:.0f} us/household), other "
                     f"{out['household_other_cpu'] * 100:.0f}%; {out.get('household_line_bytes', 0):,.0f} bytes per "
                     f"result line")
    if out.get("household_failed_households"):
        lines.append(f"  ! {out['household_failed_households']} households undecided or wrong (not counted), e.g. "
                     f"{out['household_failure_examples'][0][:300]}")
    if out.get("goals"):
        lines.append("goals:")
        for name, g in out["goals"].items():
            if g["met"] is None:
                lines.append(f"  {name:<24} {g['rule']} {g['goal']:g}: not measured")
                continue
            verdict = "met" if g["met"] else f"NOT met, short by {g['shortfall']:.3g} ({g['factor']:.2f}x)"
            lines.append(f"  {name:<24} {g['value']:>10.3g} {g['rule']} {g['goal']:g}: {verdict}")
    lines.append(f"total {out['total_s']:.1f} s ("
                 + ", ".join(f"{k} {v:.0f} s" for k, v in out.get("part_s", {}).items()) + ")")
    return "\n".join(lines)


def _phase_header() -> str:
    return (f"{'phase':<22}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'server CPU':>12}{'us/call':>9}"
            f"{'client CPU':>12}{'other CPU':>11}")


def _phase_line(out: dict[str, Any], key: str) -> str:
    per_call = out.get(f"{key}_server_cpu_us_per_call") or 0.0
    return (f"{key:<22}{out[f'{key}_per_s']:>10.0f}{out[f'{key}_p50_ms']:>9.2f}{out[f'{key}_p99_ms']:>9.2f}"
            f"{out[f'{key}_server_cpu'] * 100:>11.0f}%{per_call:>9.0f}"
            f"{out[f'{key}_client_cpu'] * 100:>11.0f}%{out[f'{key}_other_cpu'] * 100:>10.0f}%")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m node.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and short phases (for tests)")
    p.add_argument("--seconds", type=float, help="measured seconds per phase and round (default 2; quick 1)")
    p.add_argument("--warmup", type=float, help="warm-up seconds before each phase (default 0.5; quick 0.3)")
    p.add_argument("--rounds", type=int, help="rounds of interleaved phases; medians are reported (default 3; quick 1)")
    p.add_argument("--concurrency", type=int, default=32, help="calls in flight in the concurrent phases")
    p.add_argument("--ingest-subjects", type=int, help="subjects in the ingest file, 5 facts each")
    p.add_argument("--lookup-subjects", type=int, help="subjects in the lookup store (default 1,000,000)")
    p.add_argument("--only", type=_parts, default=list(PARTS), metavar="PART[,PART...]",
                   help=f"run only these parts: {', '.join(PARTS)} or all (default all)")
    p.add_argument("--provinces", type=int, default=31, help="provinces of the routed/batch federation (default 31)")
    p.add_argument("--routed-concurrency", type=int, default=8, help="threads of the routed throughput phase (default 8)")
    p.add_argument("--batch-households", type=int, help="households per batch pass (default 4096; quick 256)")
    p.add_argument("--batch-chunk", type=int, default=128, help="households per batch message (default 128, as verify-batch)")
    p.add_argument("--batch-in-flight", type=int, default=4, help="batch messages in flight (default 4, as verify-batch)")
    p.add_argument("--profile", metavar="OUT", help="cProfile the in-process servers' loop during --profile-phase")
    p.add_argument("--profile-phase", default="verify_c", choices=("verify_c", "verify_seq", "echo_c", "routed_seq",
                                                                      "routed_c", "batch", "household"),
                   help="the phase --profile covers (default verify_c)")
    p.add_argument("--tmp", help="directory for the temporary stores (default: system temp)")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.concurrency, args.routed_concurrency, args.batch_chunk, args.batch_in_flight) < 1:
        p.error("--concurrency, --routed-concurrency, --batch-chunk and --batch-in-flight must be at least 1")
    return args


def _parts(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if "all" in names:
        return list(PARTS)
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"parts are {', '.join(PARTS)} or all, not {', '.join(unknown) or value!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no INFO lines from gRPC core as 33 servers stop
    args = parse_args(argv)
    if args.client:
        return _client_entry()
    try:
        out = run(args)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    print(table(out))
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
