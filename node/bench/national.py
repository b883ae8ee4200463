"""The national federation of the routed, batch and household parts (coordinator + province nodes)."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.bench.config import BenchError, HOUSEHOLD_STANDARDS, MEMBER_FACT_SPECS, REQUESTER, Sizes
from node.bench.data import id_numbers, plan_households, planted_totals, write_facts_csv, write_households


def _odd(routing: dict[str, str], provinces: list[str]) -> dict[str, str]:
    """Routing statuses that mean a failure. NOT_HELD from a province that holds none of the household
    is a locator false positive (about 2^-16 per member and province), answered as it should be."""
    return {p: s for p, s in routing.items()
            if s not in ("OK", "NO_MATCH") and not (s == "NOT_HELD" and p not in provinces)}


@dataclass
class National:
    """A running federation of every province, and the households of the routed and batch parts."""

    fed: Any
    routed: tuple[Path, dict[str, list[str]]] | None
    batch: tuple[Path, dict[str, list[str]]] | None
    stats: dict[str, Any]
    #: household -> its planted measure totals (the household part's oracle), when that part runs.
    household_totals: dict[str, dict[str, int]] | None = None


@contextlib.contextmanager
def national(work: Path, sizes: Sizes, *, routed: bool, batch: bool, household: bool = False,
             store: str = "sqlite") -> Iterator[National]:
    """Coordinator + `sizes.provinces` province nodes in this process (bench_cluster: the coordinator a subprocess), the routed and
    batch households' data ingested where the plan puts it (6 facts per member), nothing about
    them held by the requester. With `household`, the requester publishes HOUSEHOLD_STANDARDS and
    the batch households' planted totals are worked out from the data files."""
    from node.domain.regions import PROVINCES
    from node.bench.cluster import bench_cluster

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
    with bench_cluster([REQUESTER, *others], root=work / "national", data=data, store=store) as fed:
        if household:
            (data_dir / "standards.toml").write_text(HOUSEHOLD_STANDARDS, encoding="utf-8")
            fed.publish_standards(REQUESTER, data_dir / "standards.toml")
        yield National(fed, routed_files, batch_files, {
            "national_provinces": len(others) + 1, "national_subjects": sum(len(v) for v in held.values()),
            "national_facts": facts, "national_setup_s": time.perf_counter() - started,
        }, totals)
