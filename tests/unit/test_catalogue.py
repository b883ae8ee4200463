"""Unit tests of the national standard data-item catalogue."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.domain.catalogue import (
    Aggregate,
    Catalogue,
    CatalogueError,
    ItemType,
    Measure,
    UnknownItem,
    UnknownMeasure,
    load_catalogue,
    shipped,
)
from node.errors import BadInput

REQUIRED = [
    "income.wage_monthly", "social_insurance.contributing", "social_insurance.base_monthly",
    "pension.monthly", "unemployment.benefit_monthly", "provident_fund.balance",
    "tax.income_annual", "vehicle.count", "vehicle.value_total", "real_estate.count",
    "real_estate.area_total", "business.registered_count", "business.capital_total",
    "deposit.balance_total", "securities.value_total", "withdrawal.large_count_12m",
    "expense.medical_12m", "expense.education_12m", "hukou.registered", "marriage.married",
    "disability.certified",
]  # fmt: skip

GOOD_ITEM = """
[[item]]
code = "deposit.balance_total"
name_zh = "存款"
name_en = "Deposits"
type = "money"
unit = "fen"
period = "point in time"
caliber = "All deposits."
aggregate = "sum"
"""


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalogue.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_default_file_loads_with_required_items(catalogue: Catalogue) -> None:
    """The shipped catalogue has at least 24 items including every required code."""
    assert len(catalogue) >= 24
    for code in REQUIRED:
        assert code in catalogue


def test_the_shipped_catalogue_and_policy_are_the_files_in_config() -> None:
    """The package's own copies of the catalogue and the policy are byte for byte config/'s (one copy, no drift)."""
    repo_config = Path(__file__).resolve().parents[2] / "config"
    for name in ("catalogue.toml", "policy.toml"):
        assert shipped(name).read_bytes() == (repo_config / name).read_bytes()
    assert load_catalogue().version  # the default load reads the shipped file, not a path in the checkout


def test_every_item_is_complete(catalogue: Catalogue) -> None:
    """Every item has names, unit matching its type, period, caliber and a category prefix."""
    for item in catalogue:
        assert item.name_zh and item.name_en and item.period and item.caliber
        assert item.unit == item.type.unit
        assert item.code.startswith(item.category + ".")
        if item.type is ItemType.BOOLEAN:
            assert item.aggregate is Aggregate.MAX


def test_get_and_unknown_item(catalogue: Catalogue) -> None:
    """get() returns the item; an unknown code raises UnknownItem, a BadInput."""
    assert catalogue.get("deposit.balance_total").aggregate is Aggregate.SUM
    assert catalogue.get("marriage.married").aggregate is Aggregate.MAX
    with pytest.raises(UnknownItem):
        catalogue.get("deposit.nothing")
    assert issubclass(UnknownItem, BadInput)
    assert "deposit.nothing" not in catalogue
    assert 42 not in catalogue


def test_categories_and_iteration(catalogue: Catalogue) -> None:
    """categories lists each category once, in file order, and iteration yields every item."""
    cats = catalogue.categories
    assert len(cats) == len(set(cats))
    assert {"deposit", "expense", "income", "hukou"} <= set(cats)
    assert [i.code for i in catalogue] == list(catalogue.codes)
    assert {i.code for i in catalogue.in_category("expense")} >= {
        "expense.medical_12m",
        "expense.education_12m",
    }


def test_parse_money_count_area(catalogue: Catalogue) -> None:
    """Money, count and area items accept plain non-negative digits."""
    assert catalogue.get("deposit.balance_total").parse_value("200000000") == 200000000
    assert catalogue.get("vehicle.count").parse_value("0") == 0
    assert catalogue.get("real_estate.area_total").parse_value("8950") == 8950


@pytest.mark.parametrize(
    "text", ["-1", "+1", "1.0", "1e3", "0x10", "", " 1", "1 ", "01", "1_000", "١٢", "NaN"]
)
def test_parse_rejects_non_canonical_numbers(catalogue: Catalogue, text: str) -> None:
    """Signs, decimals, exponents, spaces, leading zeros and non-ASCII digits are rejected."""
    with pytest.raises(BadInput):
        catalogue.get("deposit.balance_total").parse_value(text)


def test_parse_boolean_only_zero_or_one(catalogue: Catalogue) -> None:
    """Boolean items accept only 0 and 1."""
    item = catalogue.get("marriage.married")
    assert item.parse_value("0") == 0 and item.parse_value("1") == 1
    for text in ("2", "true", "-0", "00"):
        with pytest.raises(BadInput, match="0 or 1"):
            item.parse_value(text)


def test_parse_respects_bounds(catalogue: Catalogue) -> None:
    """Values above the item's maximum are rejected (months_12m is at most 12)."""
    assert catalogue.get("social_insurance.months_12m").parse_value("12") == 12
    with pytest.raises(BadInput, match="not above 12"):
        catalogue.get("social_insurance.months_12m").parse_value("13")
    with pytest.raises(BadInput):
        catalogue.get("deposit.balance_total").parse_value("9" * 19)


def test_parse_error_never_echoes_value(catalogue: Catalogue) -> None:
    """The reason of a value error names the item but never the rejected value."""
    with pytest.raises(BadInput) as info:
        catalogue.get("deposit.balance_total").parse_value("123456.78")
    assert "123456" not in str(info.value)
    assert "deposit.balance_total" in str(info.value)


def test_check_value_rejects_bool_and_negative(catalogue: Catalogue) -> None:
    """check_value refuses bools, floats and negatives."""
    item = catalogue.get("vehicle.count")
    assert item.check_value(3) == 3
    for bad in (True, 1.0, -1):
        with pytest.raises(BadInput):
            item.check_value(bad)  # type: ignore[arg-type]


def test_duplicate_code_rejected(tmp_path: Path) -> None:
    """A catalogue file listing a code twice fails to load with a clear error."""
    with pytest.raises(CatalogueError, match="duplicate"):
        load_catalogue(_write(tmp_path, GOOD_ITEM + GOOD_ITEM))


def test_unknown_type_rejected(tmp_path: Path) -> None:
    """An unknown type is rejected, naming the item."""
    text = GOOD_ITEM.replace('type = "money"', 'type = "float"')
    with pytest.raises(CatalogueError, match="unknown type 'float'"):
        load_catalogue(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('unit = "fen"', 'unit = "yuan"', "unit"),
        ('aggregate = "sum"', 'aggregate = "avg"', "aggregate"),
        ('caliber = "All deposits."', "", "lacks"),
        ('code = "deposit.balance_total"', 'code = "Deposit"', "category.name"),
        ('period = "point in time"', 'period = "point in time"\ncolour = "red"', "unknown keys"),
    ],
)
def test_malformed_items_rejected(tmp_path: Path, old: str, new: str, message: str) -> None:
    """Wrong units, aggregates, missing or extra keys and bad codes are rejected."""
    with pytest.raises(CatalogueError, match=message):
        load_catalogue(_write(tmp_path, GOOD_ITEM.replace(old, new)))


def test_boolean_must_aggregate_by_max(tmp_path: Path) -> None:
    """A boolean item with aggregate sum is rejected."""
    text = GOOD_ITEM.replace('type = "money"', 'type = "boolean"').replace("fen", "0/1")
    with pytest.raises(CatalogueError, match="boolean"):
        load_catalogue(_write(tmp_path, text))


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    """A missing file, invalid TOML or a file without items give clear CatalogueErrors."""
    with pytest.raises(CatalogueError, match="not found"):
        load_catalogue(tmp_path / "absent.toml")
    with pytest.raises(CatalogueError, match="not valid TOML"):
        load_catalogue(_write(tmp_path, "[[item]\n"))
    with pytest.raises(CatalogueError, match="no \\[\\[item\\]\\]"):
        load_catalogue(_write(tmp_path, 'version = "x"\n'))


def test_small_custom_catalogue(tmp_path: Path) -> None:
    """A one-item custom catalogue loads with its version and item."""
    catalogue = load_catalogue(_write(tmp_path, 'version = "t1"\n' + GOOD_ITEM))
    assert catalogue.version == "t1"
    assert catalogue.codes == ("deposit.balance_total",)
    assert catalogue.aggregates() == {"deposit.balance_total": "sum"}


GOOD_MEASURE = """
[[measure]]
code = "financial_assets"
name_zh = "金融资产"
name_en = "Financial assets"
unit = "fen"
caliber = "Deposits."
items = ["deposit.balance_total"]
"""

AREA_ITEM = GOOD_ITEM.replace("deposit.balance_total", "real_estate.area_total").replace(
    '"money"', '"area"').replace('"fen"', '"0.01 m²"')


def test_shipped_measures(catalogue: Catalogue) -> None:
    """The shipped catalogue defines the household measures, sorted by code, each over items of its unit."""
    codes = [m.code for m in catalogue.measures]
    assert codes == sorted(codes)
    assert {"income_monthly", "income_annual", "medical_12m", "education_12m", "financial_assets", "vehicle_count",
            "vehicle_value", "homes", "floor_area", "businesses"} <= set(codes)
    income = catalogue.measure("income_monthly")
    assert income.items == ("income.wage_monthly", "pension.monthly", "unemployment.benefit_monthly")
    assert income.unit == "fen" and income.period == "calendar month ending at as-of"
    assert catalogue.measure("floor_area").unit == "0.01 m²"
    for measure in catalogue.measures:
        assert measure.name_zh and measure.name_en and measure.caliber
        assert all(catalogue.get(code).unit == measure.unit for code in measure.items)


def test_measure_value_sums_the_members_items(catalogue: Catalogue) -> None:
    """A member's value of a measure is the sum of its item values; items it lacks count 0."""
    assets = catalogue.measure("financial_assets")
    assert assets.value({"deposit.balance_total": 100, "securities.value_total": 20, "vehicle.count": 7}) == 120
    assert assets.value({}) == 0


def test_unknown_measure(catalogue: Catalogue) -> None:
    """measure() of an unknown code raises UnknownMeasure, a BadInput naming the code."""
    with pytest.raises(UnknownMeasure, match="no_such"):
        catalogue.measure("no_such")
    assert issubclass(UnknownMeasure, BadInput)


def test_custom_catalogue_with_a_measure(tmp_path: Path) -> None:
    """A measure over a catalogue item loads, with its items' period filled in."""
    catalogue = load_catalogue(_write(tmp_path, GOOD_ITEM + GOOD_MEASURE))
    assert catalogue.measures == (Measure("financial_assets", "金融资产", "Financial assets", "fen", "Deposits.",
                                          ("deposit.balance_total",), "point in time"),)


@pytest.mark.parametrize(
    ("extra", "old", "new", "message"),
    [
        ("", 'items = ["deposit.balance_total"]', 'items = ["deposit.nothing"]', "not a catalogue item"),
        (AREA_ITEM, 'items = ["deposit.balance_total"]', 'items = ["deposit.balance_total", "real_estate.area_total"]',
         "is in '0.01 m²'"),
        ("", 'items = ["deposit.balance_total"]', "items = []", "non-empty"),
        ("", 'items = ["deposit.balance_total"]', 'items = ["deposit.balance_total", "deposit.balance_total"]', "repeats"),
        ("", 'items = ["deposit.balance_total"]', 'items = "deposit.balance_total"', "list of item codes"),
        ("", 'code = "financial_assets"', 'code = "financial.assets"', "no dot"),
        ("", 'unit = "fen"', 'unit = "fen"\ncolour = "red"', "unknown keys"),
        ("", 'caliber = "Deposits."', "", "lacks"),
        (GOOD_MEASURE, "", "", "duplicate measure"),
    ],
)
def test_malformed_measures_rejected(tmp_path: Path, extra: str, old: str, new: str, message: str) -> None:
    """Measures over unknown items, mixed units, empty or repeated items, bad codes and keys are rejected."""
    text = GOOD_ITEM + extra + (GOOD_MEASURE.replace(old, new) if old else GOOD_MEASURE)
    with pytest.raises(CatalogueError, match=message):
        load_catalogue(_write(tmp_path, text))


def test_measure_items_must_share_a_period(tmp_path: Path) -> None:
    """A measure adding a point-in-time item to a monthly one is rejected."""
    monthly = GOOD_ITEM.replace("deposit.balance_total", "income.wage_monthly").replace(
        "point in time", "calendar month ending at as-of")
    text = GOOD_ITEM + monthly + GOOD_MEASURE.replace(
        'items = ["deposit.balance_total"]', 'items = ["deposit.balance_total", "income.wage_monthly"]')
    with pytest.raises(CatalogueError, match="one reference period"):
        load_catalogue(_write(tmp_path, text))
