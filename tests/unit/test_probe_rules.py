"""Which checks cost probing budget (node.domain.probing) and the holder's limit before standards are known."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from node import config as config_mod
from node.domain.catalogue import load_catalogue
from node.domain.policy import load_policy
from node.domain.predicate import parse_check
from node.domain.probing import budgeted, cut, informative, published_operands
from node.domain.standards import Standard, parse_standards
from node.errors import ErrorCode, Refusal
from node.service.probing import ProbeLimit, PublishedValues, months_around
from node.store.probes import ProbeLedger

CATALOGUE = load_catalogue()
DOCUMENT = """
province = "51"
version = 1
[[standard]]
region = "510100"
name_zh = "测试市"
name_en = "Test city"
purpose = "dibao"
period_from = "2024-01"
standard_per_person = 91000
income_monthly = ["income_monthly"]
income_annual = ["income_annual"]
rules = ["income", "financial_assets", "vehicles", "homes", "floor_area", "businesses"]
source = "test"
[standard.financial_assets]
per_person = 3000000
source = "test"
[standard.vehicles]
count_max = 0
value_max = 5000000
source = "test"
[standard.homes]
max = 1
exception_max = 2
exception_area_per_person_max = 3500
source = "test"
[standard.floor_area]
per_person_max = 4000
source = "test"
[standard.businesses]
max = 0
source = "test"
"""


def _standards() -> tuple[Standard, ...]:
    return parse_standards(DOCUMENT, CATALOGUE, load_policy()).standards


def test_cut_is_where_a_check_splits_the_values() -> None:
    """`x<=T`, `x>T`, `x<T+1` and `x>=T+1` are one cut; equality is a point of its own."""
    assert {cut(parse_check(e)) for e in ("a.b<=7", "a.b>7", "a.b<8", "a.b>=8")} == {"le:7"}
    assert cut(parse_check("a.b==7")) == cut(parse_check("a.b!=7")) == "eq:7"


def test_checks_fixed_by_the_range_are_not_informative() -> None:
    """A check whose answer is the same for every value from 0 to the item's maximum tells nothing."""
    assert not informative(parse_check("a.b>=0"), 12) and not informative(parse_check("a.b<=12"), 12)
    assert not informative(parse_check("a.b>12"), 12) and not informative(parse_check("a.b==13"), 12)
    assert informative(parse_check("a.b>=12"), 12) and informative(parse_check("a.b<=11"), 12)


def test_each_figure_frees_only_the_items_its_rule_compares_in_their_unit() -> None:
    """Income items get the standard (12 times it if yearly), assets the asset limits, counts and areas theirs."""
    free = published_operands(_standards(), CATALOGUE)
    assert free["income.wage_monthly"] == free["pension.monthly"] == frozenset({91000})
    assert free["subsidy.agricultural_annual"] == frozenset({12 * 91000})
    assert free["deposit.balance_total"] == free["securities.value_total"] == frozenset({3000000})
    assert free["vehicle.count"] == frozenset({0}) and free["vehicle.value_total"] == frozenset({5000000})
    assert free["real_estate.count"] == frozenset({1, 2})
    assert free["real_estate.area_total"] == frozenset({3500, 4000})
    assert free["business.registered_count"] == frozenset({0})
    assert "tax.income_annual" not in free and "hukou.household_size" not in free


def test_budgeted_checks_are_the_informative_ones_off_the_published_values() -> None:
    """0, 1 and published figures are free; a moving threshold, or a figure on the wrong item, is budgeted."""
    free = published_operands(_standards(), CATALOGUE)
    checks = [parse_check(e) for e in ("income.wage_monthly<91000", "deposit.balance_total<=91000", "vehicle.count>2",
                                       "social_insurance.months_12m>=6", "hukou.registered==1", "pension.monthly>0")]
    assert budgeted(checks, CATALOGUE, free) == {"deposit.balance_total": "le:91000", "vehicle.count": "le:2",
                                                 "social_insurance.months_12m": "le:5"}


def test_standards_in_force_around_now_free_operands() -> None:
    """Only the requester's own entries for the purpose, in force from last month to next, are used."""
    published = PublishedValues(CATALOGUE)
    doc = parse_standards(DOCUMENT.replace('"2024-01"', '"2030-01"'), CATALOGUE, load_policy())
    published.update({"51": doc})
    now = dt.datetime(2029, 12, 15, tzinfo=dt.UTC).timestamp()
    assert months_around(now) == ("2029-11", "2029-12", "2030-01")
    assert published.operands("51", "dibao", now)["income.wage_monthly"] == frozenset({91000})
    assert published.operands("51", "dibao", now - 40 * 86400) == {}
    assert published.operands("51", "tekun", now) == {} and published.operands("44", "dibao", now) == {}


def test_budgeted_checks_wait_until_standards_are_known(tmp_path: Path) -> None:
    """Before a directory is read a budgeted check is refused UNAVAILABLE (retryable), using nothing; free ones pass."""
    ledger = ProbeLedger(tmp_path / "probes.sqlite", key=b"k" * 32)
    published = PublishedValues(CATALOGUE)
    limit = ProbeLimit(ledger, published, CATALOGUE, budget=1)
    try:
        assert limit.admit("51", "c-1", "dibao", [parse_check("income.wage_monthly>=0")]) == 0
        with pytest.raises(Refusal) as refused:
            limit.admit("51", "c-1", "dibao", [parse_check("income.wage_monthly<=5")])
        assert refused.value.code is ErrorCode.UNAVAILABLE
        published.update({})
        assert limit.admit("51", "c-1", "dibao", [parse_check("income.wage_monthly<=5")]) == 1
        with pytest.raises(Refusal) as refused:
            limit.admit("51", "c-1", "dibao", [parse_check("income.wage_monthly<=6")])
        assert refused.value.code is ErrorCode.PROBING_LIMIT and "income.wage_monthly" in str(refused.value)
        assert ledger.uses("51", "c-1", "income.wage_monthly") == 1
    finally:
        ledger.close()


def test_probe_budget_is_configurable(tmp_path: Path) -> None:
    """`[limits] probe_checks_per_consent_item` defaults to 3 and takes a positive integer."""
    assert config_mod.Limits().probe_checks_per_consent_item == 3
    assert config_mod._limits({"probe_checks_per_consent_item": 5}).probe_checks_per_consent_item == 5
    with pytest.raises(config_mod.ConfigError, match="positive integer"):
        config_mod._limits({"probe_checks_per_consent_item": 0})
