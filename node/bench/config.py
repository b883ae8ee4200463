"""What the bench measures and against which goals: goals, parts, checks, generated facts, run sizes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Final

from node.testing.standards import standards_document


VERIFY_RATIO_C32_GOAL: Final[float] = 0.8


ROUTED_OVER_DIRECT_P50_GOAL: Final[float] = 3.0  # routed p50 at most 3x the direct Verify p50


BATCH_GOAL: Final[float] = 2000.0  # households per second through BatchSession


HOUSEHOLD_GOAL: Final[float] = 2000.0  # households per second through check-batch's HouseholdBatchSession


NODE_RSS_MB_1M_GOAL: Final[float] = 300.0  # one node process serving 1,000,000 subjects, below


INGEST_GOAL: Final[float] = 250_000.0  # facts per second into a fresh store (`hedui ingest` of a generated CSV)


#: The stores a full run measures the routed and batch parts on (issue 14: PostgreSQL beside SQLite).
DEFAULT_STORES: Final[list[str]] = ["sqlite", "postgresql"]
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


_DECIDED: Final[frozenset[str]] = frozenset({"SATISFIED", "NOT_SATISFIED"})


_ANSWERED: Final[frozenset[str]] = frozenset({*_DECIDED, "NO_RECORD"})


#: More failed than this share of a phase's calls aborts the bench (the numbers would mean little).
MAX_FAILED_SHARE: Final[float] = 0.05
