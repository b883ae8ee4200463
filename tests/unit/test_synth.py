"""Tests for node.synth: synthetic households and per-province departmental CSV."""

from __future__ import annotations

import csv
import datetime as dt
from collections import Counter
from pathlib import Path

import pytest

from node.domain.idnumber import validate
from node.synth import (
    FACT_HEADER,
    HOUSEHOLDS_HEADER,
    MEMBERS_HEADER,
    SynthSummary,
    generate,
    read_members,
)

AS_OF = dt.date(2025, 6, 15)
CATALOGUE = frozenset({
    "income.wage_monthly", "social_insurance.contributing", "social_insurance.base_monthly",
    "pension.monthly", "unemployment.benefit_monthly", "provident_fund.balance",
    "tax.income_annual", "vehicle.count", "vehicle.value_total", "real_estate.count",
    "real_estate.area_total", "business.registered_count", "business.capital_total",
    "deposit.balance_total", "securities.value_total", "withdrawal.large_count_12m",
    "expense.medical_12m", "expense.education_12m", "hukou.registered", "marriage.married",
    "disability.certified",
})
BOOLEANS = frozenset({
    "hukou.registered", "marriage.married", "disability.certified",
    "social_insurance.contributing",
})


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthSummary]:
    """Sichuan (exporting) and Jiangsu (importing), 200 households each."""
    out = tmp_path_factory.mktemp("pair")
    return out, generate(["32", "51"], 200, 11, out, as_of=AS_OF)


def _facts(out: Path, code: str) -> list[dict[str, str]]:
    return _rows(out / f"{code}.csv")[1]


def _all_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    """The same seed writes byte-identical files and another seed writes different data."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(["32", "51"], 50, 5, a, as_of=AS_OF)
    generate(["32", "51"], 50, 5, b, as_of=AS_OF)
    generate(["32", "51"], 50, 6, c, as_of=AS_OF)
    assert _all_files(a) == _all_files(b)
    assert _all_files(a).keys() == _all_files(c).keys()
    assert _all_files(a)["members.csv"] != _all_files(c)["members.csv"]
    assert _all_files(a)["51.csv"] != _all_files(c)["51.csv"]


def test_order_of_provinces_does_not_change_the_data(tmp_path: Path) -> None:
    """Listing the same provinces in another order writes the same files."""
    generate(["32", "51"], 30, 5, tmp_path / "a", as_of=AS_OF)
    generate(["51", "32"], 30, 5, tmp_path / "b", as_of=AS_OF)
    a, b = _all_files(tmp_path / "a"), _all_files(tmp_path / "b")
    assert a == b


def test_id_numbers_valid_unique_and_issued_at_home(pair: tuple[Path, SynthSummary]) -> None:
    """Every member has a valid, unique ID number whose region is the hukou province."""
    out, _ = pair
    members = read_members(out)
    numbers = [m.id_number for m in members]
    assert len(numbers) == len(set(numbers))
    for m in members:
        assert validate(m.id_number, today=AS_OF) == m.id_number
        assert m.id_number[:2] == m.home == m.household[:2]
        assert m.id_number[2:4] == "01" and 1 <= int(m.id_number[4:6]) <= 20


def test_facts_only_about_known_members(pair: tuple[Path, SynthSummary]) -> None:
    """Every fact row names a generated member and a catalogue attribute."""
    out, _ = pair
    known = {m.id_number for m in read_members(out)}
    for code in ("32", "51"):
        for row in _facts(out, code):
            assert row["id_number"] in known
            assert row["attribute"] in CATALOGUE


def test_every_csv_has_the_exact_header(pair: tuple[Path, SynthSummary]) -> None:
    """Province files, households.csv and members.csv start with their exact header line."""
    out, _ = pair
    for code in ("32", "51"):
        assert (out / f"{code}.csv").read_text(encoding="utf-8").split("\n", 1)[0] == (
            "id_number,attribute,value,as_of,source"
        )
        assert tuple(_rows(out / f"{code}.csv")[0]) == FACT_HEADER
    assert (out / "households.csv").read_text().split("\n", 1)[0] == "household,id_number"
    assert (out / "members.csv").read_text().split("\n", 1)[0] == "household,id_number,home,work"
    assert tuple(_rows(out / "households.csv")[0]) == HOUSEHOLDS_HEADER
    assert tuple(_rows(out / "members.csv")[0]) == MEMBERS_HEADER


def test_households_csv_matches_members_csv(pair: tuple[Path, SynthSummary]) -> None:
    """households.csv lists exactly the (household, id_number) pairs of members.csv."""
    out, summary = pair
    _, hh = _rows(out / "households.csv")
    _, mem = _rows(out / "members.csv")
    assert [(r["household"], r["id_number"]) for r in hh] == [
        (r["household"], r["id_number"]) for r in mem
    ]
    assert len(hh) == summary.members


def test_migrants_work_in_the_listed_importing_province(pair: tuple[Path, SynthSummary]) -> None:
    """Sichuan migrants to Jiangsu appear in 32.csv with wage, insurance and tax facts."""
    out, summary = pair
    assert summary.migrants > 0
    members = _rows(out / "members.csv")[1]
    to_jiangsu = {r["id_number"] for r in members if r["home"] == "51" and r["work"] == "32"}
    assert to_jiangsu
    held = {(r["id_number"], r["attribute"]) for r in _facts(out, "32")}
    for number in to_jiangsu:
        assert (number, "income.wage_monthly") in held
        assert (number, "social_insurance.contributing") in held
        assert (number, "tax.income_annual") in held
    at_home = {(r["id_number"], r["attribute"]) for r in _facts(out, "51")}
    for number in to_jiangsu:
        assert (number, "hukou.registered") in at_home
        assert (number, "income.wage_monthly") not in at_home
    assert summary.migrants == sum(r["home"] != r["work"] for r in members)


def test_migration_rate_is_plausible(tmp_path: Path) -> None:
    """Roughly 30-50% of Sichuan's working-age adults work in Jiangsu, far fewer go the other way."""
    generate(["32", "51"], 1000, 3, tmp_path, as_of=AS_OF)
    members = _rows(tmp_path / "members.csv")[1]

    def working_age(number: str) -> bool:
        born = dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
        return 18 <= (AS_OF - born).days // 365.25 <= 60

    def rate(home: str) -> float:
        adults = [r for r in members if r["home"] == home and working_age(r["id_number"])]
        return sum(r["work"] != home for r in adults) / len(adults)

    assert 0.30 <= rate("51") <= 0.50
    assert 0.02 <= rate("32") <= 0.12


def test_same_attribute_may_come_from_two_provinces(pair: tuple[Path, SynthSummary]) -> None:
    """Some migrants hold deposits both where they work and at home, from different banks."""
    out, _ = pair
    work = {r["id_number"]: r["source"] for r in _facts(out, "32")
            if r["attribute"] == "deposit.balance_total"}
    home = {r["id_number"]: r["source"] for r in _facts(out, "51")
            if r["attribute"] == "deposit.balance_total"}
    both = work.keys() & home.keys()
    assert both
    assert all(work[n] != home[n] for n in both)


def test_no_attribute_twice_for_a_person_in_one_province(pair: tuple[Path, SynthSummary]) -> None:
    """Within one province file a person has each attribute at most once."""
    out, _ = pair
    for code in ("32", "51"):
        keys = Counter((r["id_number"], r["attribute"]) for r in _facts(out, code))
        assert max(keys.values()) == 1


def test_non_listed_province_never_gets_a_file(tmp_path: Path) -> None:
    """Only the listed provinces get a CSV, even when their people would migrate elsewhere."""
    summary = generate(["51", "13"], 100, 2, tmp_path, as_of=AS_OF)
    assert {p.name for p in tmp_path.iterdir()} == {
        "51.csv", "13.csv", "households.csv", "members.csv",
    }
    works = {r["work"] for r in _rows(tmp_path / "members.csv")[1]}
    assert works <= {"51", "13"}
    assert summary.migrants > 0  # no importer listed: Sichuan's migrants go to Hebei


def test_single_province_nobody_migrates(tmp_path: Path) -> None:
    """With one listed province every member works at home."""
    summary = generate(["51"], 100, 2, tmp_path, as_of=AS_OF)
    assert summary.migrants == 0
    assert all(r["work"] == r["home"] == "51" for r in _rows(tmp_path / "members.csv")[1])


def test_values_are_non_negative_integers_and_booleans_0_1(
    pair: tuple[Path, SynthSummary],
) -> None:
    """Every value is a non-negative integer written in digits; boolean items are 0 or 1."""
    out, _ = pair
    for code in ("32", "51"):
        for row in _facts(out, code):
            assert row["value"].isdigit() and row["value"] == str(int(row["value"]))
            if row["attribute"] in BOOLEANS:
                assert row["value"] in ("0", "1")
            if row["attribute"] == "income.wage_monthly":
                assert 150_000 <= int(row["value"]) <= 1_200_000


def test_as_of_dates_are_shortly_before_as_of(pair: tuple[Path, SynthSummary]) -> None:
    """Every as_of is an ISO date before the requested date and within about 18 months."""
    out, _ = pair
    for code in ("32", "51"):
        for d in {row["as_of"] for row in _facts(out, code)}:
            day = dt.date.fromisoformat(d)
            assert AS_OF - dt.timedelta(days=550) <= day < AS_OF


def test_households_have_1_to_5_members(pair: tuple[Path, SynthSummary]) -> None:
    """Each household has between one and five members and 200 households per province."""
    out, summary = pair
    sizes = Counter(r["household"] for r in _rows(out / "households.csv")[1])
    assert all(1 <= n <= 5 for n in sizes.values())
    assert len(sizes) == summary.households == 400
    assert {h[:2] for h in sizes} == {"32", "51"}


def test_some_households_are_poor(pair: tuple[Path, SynthSummary]) -> None:
    """Some households hold under 20,000 yuan in total deposits and most hold more."""
    out, _ = pair
    household = {r["id_number"]: r["household"] for r in _rows(out / "members.csv")[1]}
    totals: Counter[str] = Counter({h: 0 for h in household.values()})
    for code in ("32", "51"):
        for row in _facts(out, code):
            if row["attribute"] == "deposit.balance_total":
                totals[household[row["id_number"]]] += int(row["value"])
    poor = sum(v < 2_000_000 for v in totals.values())
    assert 0 < poor < len(totals) / 2


def test_summary_counts_match_the_files(pair: tuple[Path, SynthSummary]) -> None:
    """The summary's facts per province equal the data rows of each province file."""
    out, summary = pair
    assert summary.provinces == ("32", "51")
    for code in ("32", "51"):
        assert summary.facts_per_province[code] == len(_facts(out, code))


@pytest.mark.parametrize(
    "provinces", [["99"], ["32", "32"], [], "32", ["3"], [32]],
)
def test_bad_provinces_raise_value_error(tmp_path: Path, provinces: object) -> None:
    """Unknown, repeated or missing province codes raise ValueError and write nothing."""
    with pytest.raises(ValueError):
        generate(provinces, 10, 1, tmp_path / "out", as_of=AS_OF)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_bad_household_count_or_date_raises(tmp_path: Path) -> None:
    """A negative household count or an as_of before children could be born raises ValueError."""
    with pytest.raises(ValueError):
        generate(["32"], -1, 1, tmp_path, as_of=AS_OF)
    with pytest.raises(ValueError):
        generate(["32"], 1, 1, tmp_path, as_of=dt.date(2020, 1, 1))


def test_spouses_are_married_and_of_opposite_sex(pair: tuple[Path, SynthSummary]) -> None:
    """When a household's first two members are both married they have opposite-sex sequences."""
    out, _ = pair
    married = {r["id_number"] for code in ("32", "51") for r in _facts(out, code)
               if r["attribute"] == "marriage.married" and r["value"] == "1"}
    by_household: dict[str, list[str]] = {}
    for m in read_members(out):
        by_household.setdefault(m.household, []).append(m.id_number)
    couples = [ids[:2] for ids in by_household.values()
               if len(ids) >= 2 and ids[0] in married and ids[1] in married]
    assert len(couples) > len(by_household) / 2
    for head, spouse in couples:
        assert int(head[16]) % 2 != int(spouse[16]) % 2
