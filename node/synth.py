"""Synthetic departmental data for demos and tests: households, migrant workers, per-province CSV.

`generate(provinces, households, seed, out)` invents `households` households registered in each
listed province and writes what every province's departments would hold about them:

    out/<code>.csv        id_number,attribute,value,as_of,source   (one file per listed province)
    out/households.csv    household,id_number                      (batch tooling reads this)
    out/members.csv       household,id_number,home,work            (for tests and demos)

The point of the data is the seed's first problem: working-age adults of labour-exporting
provinces (Sichuan, Henan, ...) earn, insure and save in a labour-importing province (Guangdong,
Zhejiang, ...), so their wage, social insurance, tax and main bank account sit in the *work*
province while hukou, marriage, home property and vehicles sit in the *home* province. A
migrant's deposits may appear in both (a small balance at a home bank), so the same attribute
can come from two provinces and two sources.

Values are integers: money in fen, area in hundredths of m², booleans 0/1, counts. Output
depends only on the seed, the *set* of listed provinces, `households` and `as_of` (each home
province draws from its own `random.Random`, never the global one). Everything is invented:
ID numbers are valid GB 11643 numbers but belong to no one. Files of provinces not listed are
neither written nor removed: give each run a fresh `out`.
"""

from __future__ import annotations

import calendar
import csv
import datetime as _dt
import math
import random
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from node import files
from node.domain.idnumber import make as make_id_number
from node.domain.regions import PROVINCES

__all__ = [
    "EXPORTING",
    "FACT_HEADER",
    "HOUSEHOLDS_HEADER",
    "IMPORTING",
    "MEMBERS_HEADER",
    "Member",
    "SynthSummary",
    "generate",
    "read_members",
]

FACT_HEADER: Final[tuple[str, ...]] = ("id_number", "attribute", "value", "as_of", "source")
HOUSEHOLDS_HEADER: Final[tuple[str, ...]] = ("household", "id_number")
MEMBERS_HEADER: Final[tuple[str, ...]] = ("household", "id_number", "home", "work")

#: Labour-exporting provinces (劳务输出): Sichuan, Henan, Anhui, Guizhou, Hunan, Jiangxi,
#: Guangxi, Hubei, Chongqing.
EXPORTING: Final[frozenset[str]] = frozenset({"51", "41", "34", "52", "43", "36", "45", "42", "50"})
#: Labour-importing provinces (劳务输入) with a rough share of the migrants they attract.
IMPORTING: Final[dict[str, int]] = {
    "44": 30, "33": 18, "32": 15, "31": 10, "35": 9, "11": 7, "37": 6, "12": 5,
}

_P_MIGRATE_EXPORTING: Final = 0.36  # per working-age adult; spouses follow, so ~40% overall
_P_MIGRATE_OTHER: Final = 0.06
_P_FOLLOW: Final = 0.6  # a working-age adult follows a household member who already left
_P_POOR_EXPORTING: Final = 0.15
_P_POOR_OTHER: Final = 0.08

_WORK_BANKS: Final = ("bank:ICBC", "bank:CCB", "bank:BOC", "bank:ABC", "bank:BOCOM", "bank:CMB")
_HOME_BANKS: Final = ("bank:ABC", "bank:PSBC", "bank:RCC", "bank:ICBC", "bank:CCB")
_EARLIEST_AS_OF: Final = _dt.date(2023, 1, 1)  # children are born up to 2022
_MAX_HOUSEHOLDS: Final = 999_999  # household ids are <province>-<6 digits>


@dataclass(frozen=True)
class Member:
    """One person of a synthetic household; `home` is the hukou province code."""

    household: str
    id_number: str
    home: str


@dataclass(frozen=True)
class SynthSummary:
    """What `generate` wrote: row counts per province file and how many members migrated."""

    provinces: tuple[str, ...]
    households: int
    members: int
    facts_per_province: dict[str, int]
    migrants: int


def generate(
    provinces: Sequence[str],
    households: int,
    seed: int,
    out: Path,
    *,
    as_of: _dt.date | None = None,
    replace: bool = False,
) -> SynthSummary:
    """Write `households` synthetic households per listed province into `out` (see module doc).

    Files already in `out` are replaced only with `replace=True`; each file appears whole or not at all.
    """
    codes = _check_provinces(provinces)
    if isinstance(households, bool) or not isinstance(households, int):
        raise ValueError("households must be an integer")
    if not 0 <= households <= _MAX_HOUSEHOLDS:
        raise ValueError(f"households must be 0..{_MAX_HOUSEHOLDS} per province")
    today = as_of if as_of is not None else _dt.date.today()
    if today < _EARLIEST_AS_OF:
        raise ValueError(f"as_of must be {_EARLIEST_AS_OF.isoformat()} or later")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    dates = _source_dates(today)
    with ExitStack() as stack:

        def open_csv(name: str) -> IO[str]:
            return stack.enter_context(files.atomic(out / name, replace=replace))

        writers = {code: _FactWriter(open_csv(f"{code}.csv"), dates) for code in codes}
        hh_csv = csv.writer(open_csv("households.csv"), lineterminator="\n")
        mem_csv = csv.writer(open_csv("members.csv"), lineterminator="\n")
        hh_csv.writerow(HOUSEHOLDS_HEADER)
        mem_csv.writerow(MEMBERS_HEADER)

        listed = frozenset(codes)
        members = migrants = 0
        for home in sorted(codes):  # row order independent of the listing order
            rng = random.Random(f"hedui-synth/{seed}/{home}")
            gen = _HouseholdGenerator(rng, home, _destinations(home, listed), today)
            for number in range(1, households + 1):
                people = gen.household(f"{home}-{number:06d}")
                gen.facts(people, writers)
                for p in people:
                    hh_csv.writerow((p.household, p.id_number))
                    mem_csv.writerow((p.household, p.id_number, p.home, p.work))
                    members += 1
                    migrants += p.work != p.home

    return SynthSummary(
        provinces=codes,
        households=households * len(codes),
        members=members,
        facts_per_province={code: w.count for code, w in writers.items()},
        migrants=migrants,
    )


def read_members(out: Path) -> list[Member]:
    """The members listed in `out/members.csv` written by `generate`, in file order."""
    with open(Path(out) / "members.csv", newline="", encoding="utf-8") as f:
        return [
            Member(household=row["household"], id_number=row["id_number"], home=row["home"])
            for row in csv.DictReader(f)
        ]


# --- inputs ------------------------------------------------------------------------------


def _check_provinces(provinces: Sequence[str]) -> tuple[str, ...]:
    if isinstance(provinces, str):
        raise ValueError("provinces must be a sequence of codes such as ['32', '51'], not a string")
    codes = tuple(provinces)
    if not codes:
        raise ValueError("at least one province is needed")
    unknown = [c for c in codes if not isinstance(c, str) or c not in PROVINCES]
    if unknown:
        raise ValueError(f"unknown province code(s): {', '.join(map(repr, unknown))}")
    if len(set(codes)) != len(codes):
        raise ValueError("province codes must not repeat")
    return codes


def _destinations(home: str, listed: frozenset[str]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Where people of `home` may go to work, with weights: listed importers, else any listed."""
    importers = sorted(c for c in listed if c in IMPORTING and c != home)
    if importers:
        return tuple(importers), tuple(IMPORTING[c] for c in importers)
    others = sorted(c for c in listed if c != home)
    return tuple(others), tuple(1 for _ in others)


# --- as-of dates per department -------------------------------------------------------------


def _end_of_month_before(day: _dt.date, months: int = 1) -> _dt.date:
    """The last day of the month `months` months before `day`'s month."""
    index = day.year * 12 + (day.month - 1) - months
    year, month = divmod(index, 12)
    return _dt.date(year, month + 1, calendar.monthrange(year, month + 1)[1])


def _end_of_last_quarter(day: _dt.date) -> _dt.date:
    return _end_of_month_before(day, (day.month - 1) % 3 + 1)


def _source_dates(today: _dt.date) -> dict[str, str]:
    """Each department's data freshness: banks at month end, tax at year end, and so on."""
    month_end = _end_of_month_before(today).isoformat()
    dates = {
        "mps": (today - _dt.timedelta(days=1)).isoformat(),  # hukou, vehicles: daily sync
        "samr": (today - _dt.timedelta(days=1)).isoformat(),
        "civil_affairs": (today - _dt.timedelta(days=7)).isoformat(),
        "hrss": _end_of_month_before(today, 1).isoformat(),
        "housing_fund": _end_of_month_before(today, 2).isoformat(),
        "tax": _dt.date(today.year - 1, 12, 31).isoformat(),
        "natural_resources": _end_of_last_quarter(today).isoformat(),
        "disabled_persons_fed": _end_of_last_quarter(today).isoformat(),
        "health_insurance": month_end,
        "education": _end_of_last_quarter(today).isoformat(),
        "csrc": month_end,
    }
    for bank in (*_WORK_BANKS, *_HOME_BANKS):
        dates[bank] = month_end
    return dates


class _FactWriter:
    """Streams one province's facts as CSV rows and counts them."""

    __slots__ = ("_dates", "_row", "count")

    def __init__(self, f: IO[str], dates: dict[str, str]) -> None:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(FACT_HEADER)
        self._row: Callable[[tuple[str, str, int, str, str]], object] = w.writerow
        self._dates = dates
        self.count = 0

    def fact(self, id_number: str, attribute: str, value: int, source: str) -> None:
        self._row((id_number, attribute, value, self._dates[source], source))
        self.count += 1


# --- households -----------------------------------------------------------------------------


class _Person:
    __slots__ = (
        "household", "id_number", "home", "work", "role", "male", "birth", "age",
        "student", "employed", "married",
    )

    def __init__(
        self, household: str, id_number: str, home: str, role: str, male: bool,
        birth: _dt.date, age: int, married: bool,
    ) -> None:
        self.household = household
        self.id_number = id_number
        self.home = home
        self.work = home
        self.role = role  # head | spouse | child | parent
        self.male = male
        self.birth = birth
        self.age = age
        self.married = married
        self.student = False
        self.employed = False


class _HouseholdGenerator:
    """Draws households of one home province and their departments' facts from one RNG."""

    def __init__(
        self,
        rng: random.Random,
        home: str,
        destinations: tuple[tuple[str, ...], tuple[int, ...]],
        today: _dt.date,
    ) -> None:
        self.rng = rng
        self.home = home
        self.dest_codes, self.dest_weights = destinations
        self.today = today
        exporting = home in EXPORTING
        self.p_migrate = (
            (_P_MIGRATE_EXPORTING if exporting else _P_MIGRATE_OTHER) if self.dest_codes else 0.0
        )
        self.p_poor = _P_POOR_EXPORTING if exporting else _P_POOR_OTHER
        self.p_urban_pension = 0.25 if exporting else 0.5
        self.used: set[str] = set()
        self.poor = False  # of the household last drawn by household(), read by facts()

    # people

    def _birth(self, first_year: int, last_year: int) -> _dt.date:
        start = _dt.date(first_year, 1, 1).toordinal()
        end = min(_dt.date(last_year, 12, 31), self.today).toordinal()
        return _dt.date.fromordinal(self.rng.randint(start, end))

    def _age(self, birth: _dt.date) -> int:
        t = self.today
        return t.year - birth.year - ((t.month, t.day) < (birth.month, birth.day))

    def _county(self) -> str:
        return f"{self.home}01{self.rng.randint(1, 20):02d}"

    def _person(
        self, household: str, county: str, role: str, male: bool,
        years: tuple[int, int], married: bool,
    ) -> _Person:
        birth = self._birth(*years)
        rng = self.rng
        seq = rng.randrange(1, 999, 2) if male else rng.randrange(2, 999, 2)
        number = make_id_number(county, birth, seq)
        tries = 0
        while number in self.used:  # same county, birthday and sequence: take the next one
            tries += 1
            if tries % 500 == 0:  # every sequence of that day taken there: another county
                county = self._county()
            seq = seq + 2 if seq + 2 <= 999 else (1 if male else 2)
            number = make_id_number(county, birth, seq)
        self.used.add(number)
        return _Person(household, number, self.home, role, male, birth, self._age(birth), married)

    def household(self, household: str) -> list[_Person]:
        """One household of 1-5 members with roles, birth dates and work provinces."""
        rng = self.rng
        county = self._county()
        elderly = rng.random() < 0.1
        self.poor = rng.random() < (self.p_poor * 2 if elderly else self.p_poor)
        head_male = rng.random() < 0.75
        if elderly:
            head_years = (1940, 1960)
        else:
            hy = round(rng.triangular(1965, 1999, 1982))
            head_years = (hy, hy)
        head = self._person(household, county, "head", head_male, head_years, married=False)
        people = [head]
        hy = head.birth.year
        head.married = rng.random() < (0.65 if elderly else 0.3 if head.age < 26 else 0.85)
        youngest_parent = hy
        if head.married:
            sy = max(1940, min(hy + rng.randint(-3, 5) * (1 if head_male else -1), 2001))
            spouse_county = county if rng.random() < 0.7 else self._county()
            spouse = self._person(household, spouse_county, "spouse", not head_male, (sy, sy), True)
            people.append(spouse)
            youngest_parent = max(hy, sy)
        if not elderly:
            first, last = max(youngest_parent + 20, 1985), min(hy + 42, 2022)
            children = rng.choices((0, 1, 2, 3), (15, 40, 35, 10))[0] if first <= last else 0
            has_parent = rng.random() < 0.2 and hy - 18 >= 1940
            children = min(children, 5 - len(people) - has_parent)
            for _ in range(children):
                people.append(
                    self._person(household, county, "child", rng.random() < 0.52,
                                 (first, last), married=False)
                )
            if has_parent:
                people.append(
                    self._person(household, county, "parent", rng.random() < 0.4,
                                 (1940, min(1960, hy - 18)), married=rng.random() < 0.2)
                )
        self._occupy(people)
        return people

    def _occupy(self, people: list[_Person]) -> None:
        """Decide who studies, who works, and who works in another province."""
        rng = self.rng
        p_employed = 0.5 if self.poor else 0.9
        left: str | None = None
        for p in people:
            if p.age < 18:
                p.student = p.age >= 3
                continue
            if p.role == "child" and p.age <= 22 and rng.random() < 0.5:
                p.student = True
                continue
            if p.age > 60:
                continue
            if left is not None and rng.random() < _P_FOLLOW:
                p.work = left
            elif rng.random() < self.p_migrate:
                p.work = rng.choices(self.dest_codes, self.dest_weights)[0]
                left = left or p.work
            p.employed = p.work != p.home or rng.random() < p_employed

    # facts

    def facts(self, people: list[_Person], writers: dict[str, _FactWriter]) -> None:
        """Write every fact the departments of the home and work provinces hold on `people`."""
        rng = self.rng
        poor = self.poor
        home = writers[self.home]
        accounts: list[tuple[_Person, _FactWriter, str, bool]] = []  # person, where, bank, main
        for p in people:
            work = writers[p.work]
            adult = p.age >= 18
            home.fact(p.id_number, "hukou.registered", 1, "mps")
            if adult:
                home.fact(p.id_number, "marriage.married", int(p.married), "civil_affairs")
            if rng.random() < (0.08 if poor else 0.03):
                home.fact(p.id_number, "disability.certified", 1, "disabled_persons_fed")

            if p.employed:
                self._job(p, work)
            elif adult and not p.student and p.age <= 60 and rng.random() < 0.3:
                home.fact(p.id_number, "social_insurance.contributing", 0, "hrss")
                if rng.random() < 0.4:
                    benefit = rng.randint(1200, 2000) * 100
                    home.fact(p.id_number, "unemployment.benefit_monthly", benefit, "hrss")
            if p.age >= 60 and not p.employed and rng.random() < 0.92:
                urban = not poor and rng.random() < self.p_urban_pension
                pension = rng.randint(2500, 6000) if urban else rng.randint(150, 400)
                home.fact(p.id_number, "pension.monthly", pension * 100, "hrss")

            if adult:
                main_bank = rng.choice(_WORK_BANKS if p.work != p.home else _HOME_BANKS)
                accounts.append((p, work, main_bank, True))
                if p.work != p.home and rng.random() < 0.3:
                    other = rng.choice([b for b in _HOME_BANKS if b != main_bank])
                    accounts.append((p, home, other, False))
            elif rng.random() < 0.15:
                accounts.append((p, home, rng.choice(_HOME_BANKS), False))

            if p.role in ("head", "spouse") or (adult and p.role == "child"):
                self._property(p, home, work)
            if adult and not poor and rng.random() < 0.04:
                value = round(rng.lognormvariate(math.log(80_000), 1.0)) * 100
                work.fact(p.id_number, "securities.value_total", value, "csrc")

            if rng.random() < (0.25 if poor or p.age >= 60 else 0.08):
                cost = round(rng.triangular(1_000, 150_000, 6_000 if not poor else 20_000))
                home.fact(p.id_number, "expense.medical_12m", cost * 100, "health_insurance")
            if p.student and rng.random() < 0.35:
                cost = rng.randint(2_000, 40_000 if p.age >= 15 else 12_000)
                home.fact(p.id_number, "expense.education_12m", cost * 100, "education")

        self._deposits(accounts)

    def _job(self, p: _Person, work: _FactWriter) -> None:
        rng = self.rng
        if self.poor:
            wage = rng.randint(1_800, 3_000)
        else:
            wage = round(rng.triangular(2_500, 12_000, 4_500 if p.work == p.home else 5_500))
        p_insured = 0.4 if self.poor else 0.6 if p.work != p.home else 0.8
        insured = rng.random() < p_insured
        work.fact(p.id_number, "income.wage_monthly", wage * 100, "hrss" if insured else "tax")
        work.fact(p.id_number, "social_insurance.contributing", int(insured), "hrss")
        if insured:
            base = max(round(wage * rng.uniform(0.6, 1.0)), 3_000)
            work.fact(p.id_number, "social_insurance.base_monthly", base * 100, "hrss")
            if rng.random() < (0.1 if self.poor else 0.2 if p.work != p.home else 0.45):
                balance = rng.randint(3_000, 30_000 if self.poor else 150_000) * 100
                work.fact(p.id_number, "provident_fund.balance", balance, "housing_fund")
        annual = round(wage * 12 * rng.uniform(0.85, 1.15))
        work.fact(p.id_number, "tax.income_annual", annual * 100, "tax")

    def _property(self, p: _Person, home: _FactWriter, work: _FactWriter) -> None:
        rng = self.rng
        poor = self.poor
        head = p.role == "head"
        if head and rng.random() < (0.55 if poor else 0.85):
            count = 2 if not poor and rng.random() < 0.12 else 1
            area = rng.randint(45, 100) if poor else rng.randint(60, 180) * count
            home.fact(p.id_number, "real_estate.count", count, "natural_resources")
            home.fact(p.id_number, "real_estate.area_total", area * 100, "natural_resources")
        if p.work != p.home and not poor and rng.random() < 0.05:
            # a flat bought where the migrant works: real_estate.* in two provinces
            work.fact(p.id_number, "real_estate.count", 1, "natural_resources")
            work.fact(p.id_number, "real_estate.area_total", rng.randint(50, 120) * 100,
                      "natural_resources")
        if rng.random() < (0.03 if poor else 0.4 if head else 0.1):
            count = 2 if not poor and rng.random() < 0.1 else 1
            each = (rng.randint(5_000, 30_000) if poor else rng.randint(30_000, 300_000))
            home.fact(p.id_number, "vehicle.count", count, "mps")
            home.fact(p.id_number, "vehicle.value_total", each * count * 100, "mps")
        if not poor and rng.random() < 0.04:
            count = 2 if rng.random() < 0.2 else 1
            capital = rng.randint(10_000, 1_000_000) * count
            home.fact(p.id_number, "business.registered_count", count, "samr")
            home.fact(p.id_number, "business.capital_total", capital * 100, "samr")

    def _deposits(self, accounts: list[tuple[_Person, _FactWriter, str, bool]]) -> None:
        """Balances per account; a poor household's total stays under 20,000 yuan."""
        rng = self.rng
        if not accounts:
            return
        if self.poor:
            budget = rng.randint(0, 1_999_999)
            weights = [rng.random() + 0.05 for _ in accounts]
            scale = budget / sum(weights)
            balances = [int(w * scale) for w in weights]
        else:
            balances = [
                min(round(rng.lognormvariate(math.log(60_000), 1.1)), 3_000_000) * 100
                if main else rng.randint(200, 8_000) * 100
                for _, _, _, main in accounts
            ]
        for (p, where, bank, main), balance in zip(accounts, balances, strict=True):
            where.fact(p.id_number, "deposit.balance_total", balance, bank)
            if main:
                r = rng.random()
                large = 0 if r < 0.7 else 1 if r < 0.88 else rng.randint(2, 6)
                where.fact(p.id_number, "withdrawal.large_count_12m", large, bank)
