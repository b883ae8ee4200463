"""Unit tests of published standards documents and the household means test they decide."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import tomli_w

from node.domain.catalogue import Catalogue, load_catalogue, shipped
from node.domain.policy import Policy, load_policy
from node.domain.standards import (
    ELIGIBLE,
    INCOMPLETE,
    NOT_ELIGIBLE,
    RULES,
    Standard,
    StandardsDocument,
    StandardsError,
    canonical_bytes,
    evaluate,
    fallback_regions,
    from_canonical,
    parse_standards,
)
from node.errors import BadInput

ALL_RULES = list(RULES)


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


@pytest.fixture(scope="module")
def policy(catalogue: Catalogue) -> Policy:
    return load_policy(catalogue=catalogue)


def _entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "region": "440100", "name_zh": "广州市", "name_en": "Guangzhou", "purpose": "dibao",
        "period_from": "2024-01", "standard_per_person": 90000,
        "income_monthly": ["income_monthly"], "income_annual": ["income_annual"],
        "deductions_12m": ["medical_12m", "education_12m"], "rules": ALL_RULES, "source": "test figure",
        "financial_assets": {"months_of_standard": 24, "source": "test"},
        "vehicles": {"count_max": 0, "value_max": 3000000, "source": "test"},
        "homes": {"max": 1, "exception_max": 2, "exception_area_per_person_max": 2000, "source": "test"},
        "floor_area": {"per_person_max": 4000, "source": "test"},
        "businesses": {"max": 0, "source": "test"},
    }  # fmt: skip
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


def _doc(*entries: dict[str, Any], **top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"province": "44", "version": 3, "example": True, "standard": list(entries) or [_entry()]}
    doc.update(top)
    return {k: v for k, v in doc.items() if v is not None}


def _parse(doc: dict[str, Any], catalogue: Catalogue, policy: Policy) -> StandardsDocument:
    return parse_standards(tomli_w.dumps(doc), catalogue, policy)


@pytest.fixture
def standard(catalogue: Catalogue, policy: Policy) -> Standard:
    return _parse(_doc(), catalogue, policy).standards[0]


def _totals(**values: int) -> dict[str, int]:
    base = {"income_monthly": 0, "income_annual": 0, "medical_12m": 0, "education_12m": 0, "financial_assets": 0,
            "vehicle_count": 0, "vehicle_value": 0, "homes": 0, "floor_area": 0, "businesses": 0}
    base.update(values)
    return base


# -- the means test ----------------------------------------------------------------------------


def test_issue_example_household_is_not_eligible_though_each_wage_passes(standard: Standard) -> None:
    """Wages of 2,500 and 1,800 yuan and a pension of 1,200 yuan: each member is under the household
    limit of 2,700 yuan, yet the household of three is NOT_ELIGIBLE at a standard of 900 yuan."""
    wages, pension = [250000, 180000], 120000
    household_limit = 3 * standard.standard_per_person
    assert all(wage <= household_limit for wage in wages) and pension <= household_limit
    decision = evaluate(standard, 3, _totals(income_monthly=sum(wages) + pension), complete=True)
    assert decision.verdict == NOT_ELIGIBLE
    assert decision.income_per_person == 550000 // 3
    assert decision.rules["income"] is False and decision.allowance == 0
    assert all(decision.rules[r] for r in RULES[1:])


def test_eligible_household_gets_the_gap_times_members(standard: Standard) -> None:
    """A household of three with 1,800 yuan a month gets (900 − 600) × 3 = 900 yuan."""
    decision = evaluate(standard, 3, _totals(income_monthly=180000), complete=True)
    assert decision.verdict == ELIGIBLE
    assert decision.income_per_person == 60000 and decision.allowance == 90000
    assert decision.rules == dict.fromkeys(RULES, True)


def test_deductions_move_a_household_across_the_line(standard: Standard) -> None:
    """Medical and education spending over 12 months, deducted at a twelfth a month, make a household eligible."""
    income = _totals(income_monthly=200000)  # 1,000 yuan a person for two
    before = evaluate(standard, 2, income, complete=True)
    assert before.verdict == NOT_ELIGIBLE and before.income_per_person == 100000
    after = evaluate(standard, 2, {**income, "medical_12m": 600000, "education_12m": 600000}, complete=True)
    assert after.verdict == ELIGIBLE
    assert after.income_per_person == (12 * 200000 - 1200000) // 24 == 50000
    assert after.allowance == (90000 - 50000) * 2


def test_income_arithmetic_is_exact_and_never_negative(standard: Standard) -> None:
    """Yearly income counts a twelfth a month, the quotient is floored, and deductions beyond income give 0."""
    decision = evaluate(standard, 3, _totals(income_monthly=100, income_annual=7), complete=True)
    assert decision.income_per_person == (12 * 100 + 7) // 36
    decision = evaluate(standard, 1, _totals(income_monthly=1000, medical_12m=10**9), complete=True)
    assert decision.income_per_person == 0 and decision.allowance == 90000


def test_income_at_the_standard_is_not_below_it(standard: Standard) -> None:
    """Income per person equal to the standard fails the income rule (it must be below)."""
    assert evaluate(standard, 2, _totals(income_monthly=180000), complete=True).rules["income"] is False
    assert evaluate(standard, 2, _totals(income_monthly=179999), complete=True).rules["income"] is True


@pytest.mark.parametrize(
    ("rule", "passing", "failing"),
    [
        ("financial_assets", {"financial_assets": 2 * 24 * 90000}, {"financial_assets": 2 * 24 * 90000 + 1}),
        ("vehicles", {"vehicle_count": 3, "vehicle_value": 3000000}, {"vehicle_count": 1, "vehicle_value": 3000001}),
        ("homes", {"homes": 1, "floor_area": 10**6}, {"homes": 2, "floor_area": 4001}),
        ("homes", {"homes": 2, "floor_area": 4000}, {"homes": 3, "floor_area": 0}),
        ("floor_area", {"floor_area": 8000}, {"floor_area": 8001}),
        ("businesses", {"businesses": 0}, {"businesses": 1}),
    ],
)
def test_each_asset_rule_at_its_limit(standard: Standard, rule: str, passing: dict[str, int], failing: dict[str, int]) -> None:
    """Each asset rule holds at its limit for a household of two and fails one unit beyond it."""
    ok = evaluate(standard, 2, _totals(**passing), complete=True)
    bad = evaluate(standard, 2, _totals(**failing), complete=True)
    assert ok.rules[rule] is True
    assert bad.rules[rule] is False and bad.verdict == NOT_ELIGIBLE
    assert all(v for r, v in bad.rules.items() if r != rule)


def test_vehicle_value_exception_needs_a_value_max(catalogue: Catalogue, policy: Policy) -> None:
    """Without value_max any vehicle beyond count_max fails, whatever it is worth."""
    doc = _parse(_doc(_entry(vehicles={"count_max": 0, "source": "t"})), catalogue, policy)
    decision = evaluate(doc.standards[0], 1, _totals(vehicle_count=1, vehicle_value=0), complete=True)
    assert decision.rules["vehicles"] is False


def test_financial_assets_as_a_fen_amount(catalogue: Catalogue, policy: Policy) -> None:
    """A per-person fen limit applies as written, times the members."""
    doc = _parse(_doc(_entry(financial_assets={"per_person": 1000000, "source": "t"})), catalogue, policy)
    assert evaluate(doc.standards[0], 3, _totals(financial_assets=3000000), complete=True).rules["financial_assets"]
    assert not evaluate(doc.standards[0], 3, _totals(financial_assets=3000001), complete=True).rules["financial_assets"]


def test_only_the_deciding_rules_are_computed(catalogue: Catalogue, policy: Policy) -> None:
    """A standard deciding on income alone reports only the income rule and needs only income measures."""
    entry = _entry(rules=["income"], financial_assets=None, vehicles=None, homes=None, floor_area=None, businesses=None)
    standard = _parse(_doc(entry), catalogue, policy).standards[0]
    assert standard.measures == ("education_12m", "income_annual", "income_monthly", "medical_12m")
    totals = {"income_monthly": 0, "income_annual": 0, "medical_12m": 0, "education_12m": 0}
    decision = evaluate(standard, 1, totals, complete=True)
    assert decision.rules == {"income": True} and decision.verdict == ELIGIBLE


def test_incomplete_household_still_shows_its_rules(standard: Standard) -> None:
    """With a holder missing the verdict is INCOMPLETE, no allowance, but the rules are computed on what came."""
    decision = evaluate(standard, 3, _totals(income_monthly=180000), complete=False)
    assert decision.verdict == INCOMPLETE and decision.allowance == 0
    assert decision.rules["income"] is True


def test_no_allowance_when_the_standard_pays_none(catalogue: Catalogue, policy: Policy) -> None:
    """A standard with allowance = "none" (e.g. dibao_edge) decides eligibility but pays no gap."""
    doc = _parse(_doc(_entry(purpose="dibao_edge", allowance="none")), catalogue, policy)
    decision = evaluate(doc.standards[0], 3, _totals(), complete=True)
    assert decision.verdict == ELIGIBLE and decision.allowance == 0


def test_decision_json_keys(standard: Standard) -> None:
    """to_json has exactly the contract's keys, with the household's region and period."""
    decision = evaluate(standard, 3, _totals(income_monthly=180000), complete=True, region="440106", period="2024-05")
    out = decision.to_json()
    assert set(out) == {"verdict", "members", "region", "period", "purpose", "standard_per_person", "income_per_person",
                        "allowance", "totals", "rules"}
    assert out["region"] == "440106" and out["period"] == "2024-05" and out["totals"]["income_monthly"] == 180000
    json.dumps(out)


@pytest.mark.parametrize(
    ("members", "totals", "kw", "message"),
    [
        (0, {}, {}, "at least one member"),
        (2, {"income_monthly": 1}, {}, "lack measure"),
        (2, {"vehicle_count": -1}, {}, "non-negative"),
        (2, {"homes": True}, {}, "non-negative integer"),
        (2, {}, {"region": "510100"}, "does not apply"),
        (2, {}, {"period": "2023-12"}, "not in force"),
        (2, {}, {"period": "2024-13"}, "YYYY-MM"),
    ],
)
def test_evaluate_rejects_bad_input(standard: Standard, members: int, totals: dict[str, Any], kw: dict[str, str],
                                    message: str) -> None:
    """Bad members, missing or negative totals, a region or month the standard does not cover are BadInput."""
    base = _totals()
    base.update(totals)
    if "lack" in message:
        del base["financial_assets"]
    with pytest.raises(BadInput, match=message):
        evaluate(standard, members, base, complete=True, **kw)


# -- finding the standard in force ------------------------------------------------------------------


def _finder(catalogue: Catalogue, policy: Policy) -> StandardsDocument:
    entries = [
        _entry(region="510000", name_zh="四川省", period_from="2020-01", standard_per_person=50000),
        _entry(region="510100", name_zh="成都市", period_from="2023-01", period_to="2023-12", standard_per_person=91000),
        _entry(region="510100", name_zh="成都市", period_from="2024-01", standard_per_person=95000),
        _entry(region="510181", name_zh="都江堰市", period_from="2023-01", period_to="2023-12", standard_per_person=86000),
        _entry(region="510181", name_zh="都江堰市", purpose="dibao_edge", period_from="2023-01", standard_per_person=1),
    ]
    return _parse(_doc(*entries, province="51"), catalogue, policy)


def test_county_falls_back_to_city_then_province(catalogue: Catalogue, policy: Policy) -> None:
    """A county without an entry in force uses its city's, and a city without one its province's."""
    doc = _finder(catalogue, policy)
    assert doc.find("510181", "dibao", "2023-06").standard_per_person == 86000  # its own
    assert doc.find("510104", "dibao", "2023-06").standard_per_person == 91000  # a district: the city's
    assert doc.find("510181", "dibao", "2024-06").standard_per_person == 95000  # own entry ended: the city's
    assert doc.find("513401", "dibao", "2023-06").standard_per_person == 50000  # another city: the province's
    assert fallback_regions("510181") == ("510181", "510100", "510000")
    assert fallback_regions("510000") == ("510000",)


def test_period_selection(catalogue: Catalogue, policy: Policy) -> None:
    """The entry whose months cover the period is chosen; none before the first entry begins."""
    doc = _finder(catalogue, policy)
    assert doc.find("510100", "dibao", "2023-12").standard_per_person == 91000
    assert doc.find("510100", "dibao", "2024-01").standard_per_person == 95000
    assert doc.find("510100", "dibao", "2019-12") is None
    assert doc.find("510181", "tekun", "2023-06") is None
    assert [s.region for s in doc.in_force("2023-06")] == ["510000", "510100", "510181", "510181"]
    with pytest.raises(BadInput):
        doc.find("51018", "dibao", "2023-06")


# -- validation -----------------------------------------------------------------------------------


def _without(key: str) -> dict[str, Any]:
    entry = _entry()
    del entry[key]
    return entry


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_doc(colour="red"), "unknown keys \\['colour'\\]"),
        (_doc(province="99"), "province must be"),
        (_doc(province=44), "province must be"),
        (_doc(version="3"), "version must be a positive integer"),
        (_doc(version=0), "version must be a positive integer"),
        (_doc(example="yes"), "example must be true or false"),
        (_doc(standard=[]), "1 to 512"),
        (_doc(version=None), "lacks \\['version'\\]"),
        (_doc(_entry(colour="red")), "standard #1 \\(region 440100, dibao\\): unknown keys"),
        (_doc(_without("source")), "standard #1 .* lacks \\['source'\\]"),
        (_doc(_entry(source=" ")), "source must be a non-empty string"),
        (_doc(_entry(notes="two\nlines")), "one line"),
        (_doc(_entry(region="4401")), "region must be a 6-digit"),
        (_doc(_entry(region="510100")), "not in the publisher's province 44"),
        (_doc(_entry(purpose="holiday")), "unknown purpose 'holiday'"),
        (_doc(_entry(period_from="2024-1")), "period_from must be a month"),
        (_doc(_entry(period_to="2023-12")), "period_to is before period_from"),
        (_doc(_entry(standard_per_person=900.0)), "standard_per_person must be an integer"),
        (_doc(_entry(standard_per_person=0)), "standard_per_person must be an integer in 1"),
        (_doc(_entry(income_monthly=["wages"])), "'wages' is not a household measure"),
        (_doc(_entry(income_monthly=["income.wage_monthly"])), "is not a measure code"),
        (_doc(_entry(income_monthly="income_monthly")), "must be a list of measure codes"),
        (_doc(_entry(income_monthly=["vehicle_count"])), "is in '1', not 'fen'"),
        (_doc(_entry(income_monthly=["financial_assets"])), "covers 'point in time'"),
        (_doc(_entry(income_monthly=["income_annual"], income_annual=[])), "covers '12 months to as-of'"),
        (_doc(_entry(deductions_12m=["income_annual"])), "appears twice"),
        (_doc(_entry(deductions_12m=["medical_12m", "medical_12m"])), "lists a measure twice"),
        (_doc(_entry(income_monthly=[], income_annual=[])), "rule income needs"),
        (_doc(_entry(rules=["homes"], income_monthly=[], income_annual=[], financial_assets=None, vehicles=None,
                     floor_area=None, businesses=None)), "deductions_12m without income"),
        (_doc(_entry(rules=[])), "non-empty list of rule names"),
        (_doc(_entry(rules=["income", "pets"])), "unknown rule 'pets'"),
        (_doc(_entry(rules=["income", "income"])), "listed twice"),
        (_doc(_entry(rules=["income", "homes"])), "\\[standard.financial_assets\\] must be given exactly when"),
        (_doc(_entry(businesses=None)), "\\[standard.businesses\\] must be given exactly when"),
        (_doc(_entry(allowance="half")), "allowance must be"),
        (_doc(_entry(financial_assets={"per_person": 1, "months_of_standard": 2, "source": "t"})), "exactly one of"),
        (_doc(_entry(financial_assets={"source": "t"})), "exactly one of"),
        (_doc(_entry(financial_assets={"months_of_standard": 24})), "\\[standard.financial_assets\\]: source"),
        (_doc(_entry(financial_assets=5)), "is not a table"),
        (_doc(_entry(vehicles={"count_max": -1, "source": "t"})), "count_max must be an integer"),
        (_doc(_entry(vehicles={"count_max": 0, "colour": 1, "source": "t"})), "unknown keys \\['colour'\\]"),
        (_doc(_entry(homes={"max": 1, "exception_max": 2, "source": "t"})), "go together"),
        (_doc(_entry(homes={"max": 2, "exception_max": 2, "exception_area_per_person_max": 1, "source": "t"})),
         "exception_max must be above max"),
        (_doc(_entry(floor_area={"per_person_max": 1.5, "source": "t"})), "per_person_max must be an integer"),
        (_doc(_entry(), _entry(period_from="2025-01")), "standard #2 \\(region 440100, dibao\\) overlaps standard #1"),
        (_doc(_entry(purpose="education")), "purpose education may not check business.registered_count, an item of measure 'businesses'"),
        (_doc(_entry(period_to="2024-06"), _entry(period_from="2024-06")), "overlaps"),
    ],
)
def test_validation_errors(doc: dict[str, Any], message: str, catalogue: Catalogue, policy: Policy) -> None:
    """Unknown keys, wrong types, unknown measures and purposes, mismatched limits and overlapping periods
    are refused with one line naming the entry."""
    with pytest.raises(StandardsError, match=message) as info:
        _parse(doc, catalogue, policy)
    assert "\n" not in str(info.value)


def test_adjacent_periods_and_other_purposes_do_not_overlap(catalogue: Catalogue, policy: Policy) -> None:
    """Back-to-back periods of one region, and the same months for another purpose or region, are accepted."""
    doc = _doc(_entry(period_to="2024-06"), _entry(period_from="2024-07"), _entry(purpose="dibao_edge"),
               _entry(region="440106"))
    assert len(_parse(doc, catalogue, policy).standards) == 4


def test_not_toml_and_not_utf8(catalogue: Catalogue, policy: Policy) -> None:
    """A file that is not TOML or not UTF-8 is refused in one line naming the source."""
    with pytest.raises(StandardsError, match="my.toml: not valid TOML"):
        parse_standards("[[standard]\n", catalogue, policy, source="my.toml")
    with pytest.raises(StandardsError, match="not UTF-8"):
        parse_standards(b"\xff\xfe", catalogue, policy)


# -- canonical form ---------------------------------------------------------------------------------


def test_canonical_round_trip(catalogue: Catalogue, policy: Policy) -> None:
    """The signed form reads back to an equal document, is deterministic, and survives a reordered source."""
    doc = _finder(catalogue, policy)
    data = canonical_bytes(doc)
    assert from_canonical(data, catalogue, policy) == doc
    assert from_canonical(data) == doc  # structure alone, without a catalogue
    shuffled = _doc(*reversed(_doc()["standard"]), province="44")
    shuffled["standard"][0]["rules"] = list(reversed(ALL_RULES))
    assert canonical_bytes(_parse(shuffled, catalogue, policy)) == canonical_bytes(_parse(_doc(), catalogue, policy))
    parsed = json.loads(data)
    assert parsed["province"] == "51" and parsed["version"] == 3 and parsed["example"] is True
    assert b" " not in data.replace(b"test figure", b"") and data == data.strip()


def test_non_canonical_or_tampered_forms_are_refused(catalogue: Catalogue, policy: Policy) -> None:
    """Whitespace, reordered keys, bad JSON or an invalid entry in a signed form are refused."""
    data = canonical_bytes(_parse(_doc(), catalogue, policy))
    obj = json.loads(data)
    with pytest.raises(StandardsError, match="canonical"):
        from_canonical(json.dumps(obj, ensure_ascii=False).encode())
    with pytest.raises(StandardsError, match="not JSON"):
        from_canonical(data[:-1])
    broken = copy.deepcopy(obj)
    broken["standard"][0]["standard_per_person"] = -5
    with pytest.raises(StandardsError, match="standard_per_person"):
        from_canonical(json.dumps(broken, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    with pytest.raises(StandardsError, match="exceeds"):
        from_canonical(b" " * (200 * 1024))


# -- the shipped examples ---------------------------------------------------------------------------


def _shipped_documents() -> list[Any]:
    return sorted((f for f in shipped("standards").iterdir() if f.name.endswith(".toml")), key=lambda f: f.name)


def test_every_shipped_example_parses(catalogue: Catalogue, policy: Policy) -> None:
    """Every document in config/standards/ (as shipped in the package) parses against the shipped catalogue
    and policy, is marked as an example, is published by the province its name gives, and sources every figure."""
    files = _shipped_documents()
    assert {f.name[:2] for f in files} >= {"51", "44", "33", "32", "41"}
    for file in files:
        doc = parse_standards(file.read_bytes(), catalogue, policy, source=file.name)
        assert doc.example is True and doc.province == file.name[:2]
        assert from_canonical(canonical_bytes(doc), catalogue, policy) == doc
        for standard in doc.standards:
            assert standard.source.strip()
            for rule in RULES[1:]:
                limit = getattr(standard, rule)
                assert limit is None or limit.source.strip()


def test_shipped_examples_decide(catalogue: Catalogue, policy: Policy) -> None:
    """The Chengdu example gives Dujiangyan its own 2023 standard and the city's single 2026 one."""
    doc = parse_standards(shipped("standards/51-sichuan.toml").read_bytes(), catalogue, policy)
    assert doc.find("510181", "dibao", "2023-03").standard_per_person == 86000
    assert doc.find("510104", "dibao", "2023-03").standard_per_person == 91000
    assert doc.find("510181", "dibao", "2026-03").standard_per_person == 112000
    assert doc.find("510181", "dibao", "2024-03") is None  # no 2024 figure was found


VECTOR_TOML = """province = "44"
version = 1

[[standard]]
region = "440100"
name_zh = "广州市"
name_en = "Guangzhou"
purpose = "dibao"
period_from = "2024-01"
standard_per_person = 90000
income_monthly = ["income_monthly"]
rules = ["income", "financial_assets"]
source = "test vector"

[standard.financial_assets]
months_of_standard = 24
source = "test vector"
"""


def test_protocol_test_vector(catalogue: Catalogue, policy: Policy) -> None:
    """The canonical form and the decisions of docs/PROTOCOL.md §20's test vector are what the code produces."""
    import hashlib

    doc = parse_standards(VECTOR_TOML, catalogue, policy)
    data = canonical_bytes(doc)
    assert data.startswith(b'{"example":false,"province":"44","standard":[{"allowance":"gap","deductions_12m":[],')
    assert len(data) == 414
    assert hashlib.sha256(data).hexdigest() == "c508a3bfa9f0a14ff475665a298d6c0774d005955636cb6cbaa397cc24357f79"
    standard = doc.standards[0]
    cases = [({"income_monthly": 550000, "financial_assets": 0}, NOT_ELIGIBLE, 183333, 0),
             ({"income_monthly": 180000, "financial_assets": 6480000}, ELIGIBLE, 60000, 90000),
             ({"income_monthly": 180000, "financial_assets": 6480001}, NOT_ELIGIBLE, 60000, 0)]
    for totals, verdict, income, allowance in cases:
        decision = evaluate(standard, 3, totals, complete=True)
        assert (decision.verdict, decision.income_per_person, decision.allowance) == (verdict, income, allowance)
