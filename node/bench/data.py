"""Generated bench data: valid ID numbers, fact files, household plans and their planted totals."""

from __future__ import annotations

import csv
import datetime as _dt
import itertools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from node.bench.config import FACT_SPECS


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


def _default_catalogue() -> Any:
    """The federation catalogue a default province config loads."""
    from node.domain.catalogue import load_catalogue

    return load_catalogue(None)


def plan_households(rng: random.Random, n: int, *, members: tuple[int, int], spread: tuple[int, int],
                    provinces: list[str], ids: Iterator[str], prefix: str) -> list[tuple[str, list[str], list[str]]]:
    """`n` households: key, members' ID numbers, and the province holding each member's data.

    A household has members[0]..members[1] members whose data sit in spread[0]..spread[1] distinct
    `provinces` (never more provinces than members), every chosen province holding someone.
    """
    plan = []
    for i in range(n):
        m = rng.randint(*members)
        k = rng.randint(min(spread[0], len(provinces)), min(spread[1], m, len(provinces)))  # 3 provinces: 2 holders
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
