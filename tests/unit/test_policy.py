"""Unit tests of the purpose policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.domain.catalogue import Catalogue, load_catalogue
from node.domain.policy import Policy, PolicyError, UnknownPurpose, load_policy
from node.errors import BadInput

PURPOSES = ["dibao", "tekun", "dibao_edge", "medical", "education", "housing", "employment",
            "temporary"]  # fmt: skip


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


@pytest.fixture(scope="module")
def policy(catalogue: Catalogue) -> Policy:
    return load_policy(catalogue=catalogue)


def _write(tmp_path: Path, items: str, code: str = "medical") -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(
        f'[purpose.{code}]\nname_zh = "医疗救助"\nname_en = "Medical"\nitems = {items}\n',
        encoding="utf-8",
    )
    return path


def test_default_policy_has_all_purposes(policy: Policy) -> None:
    """The shipped policy defines the eight assistance purposes with names."""
    assert list(policy.purposes) == PURPOSES
    assert policy.purpose("dibao").name_zh == "最低生活保障"
    assert all(p.name_en for p in policy.purposes.values())


def test_dibao_checks_full_means_test(policy: Policy, catalogue: Catalogue) -> None:
    """dibao may check every catalogue item."""
    assert policy.items_for("dibao") == frozenset(catalogue.codes)


def test_education_excludes_financial_assets(policy: Policy) -> None:
    """education may check income and education expense but not securities or deposits."""
    assert policy.allows("education", "income.wage_monthly")
    assert policy.allows("education", "expense.education_12m")
    assert not policy.allows("education", "securities.value_total")
    assert not policy.allows("education", "deposit.balance_total")
    assert not policy.allows("education", "expense.medical_12m")


def test_medical_checks_medical_burden(policy: Policy) -> None:
    """medical may check medical expense, income and deposits but not education expense."""
    for code in ("expense.medical_12m", "income.wage_monthly", "deposit.balance_total"):
        assert policy.allows("medical", code)
    assert not policy.allows("medical", "expense.education_12m")


def test_category_wildcard_expands(policy: Policy, catalogue: Catalogue) -> None:
    """A category entry such as deposit.* covers every item of that category."""
    assert "deposit.*" in policy.purpose("temporary").entries
    for item in catalogue.in_category("deposit"):
        assert policy.allows("temporary", item.code)


def test_unknown_item_is_not_allowed(policy: Policy) -> None:
    """An item code the catalogue lacks is simply not allowed."""
    assert not policy.allows("dibao", "deposit.offshore")


def test_unknown_purpose_raises(policy: Policy) -> None:
    """An unknown purpose raises UnknownPurpose, which is BadInput."""
    with pytest.raises(UnknownPurpose, match="lottery"):
        policy.allows("lottery", "income.wage_monthly")
    assert issubclass(UnknownPurpose, BadInput)


def test_policy_rejects_unknown_item(tmp_path: Path, catalogue: Catalogue) -> None:
    """A policy naming an item the catalogue lacks fails to load."""
    with pytest.raises(PolicyError, match="not a catalogue item"):
        load_policy(_write(tmp_path, '["income.lottery"]'), catalogue)


def test_policy_rejects_unknown_category(tmp_path: Path, catalogue: Catalogue) -> None:
    """A category wildcard naming no catalogue category fails to load."""
    with pytest.raises(PolicyError, match="no catalogue category"):
        load_policy(_write(tmp_path, '["crypto.*"]'), catalogue)


def test_policy_rejects_duplicates_and_empty(tmp_path: Path, catalogue: Catalogue) -> None:
    """Listing an entry twice or listing nothing fails to load."""
    with pytest.raises(PolicyError, match="twice"):
        load_policy(_write(tmp_path, '["deposit.*", "deposit.*"]'), catalogue)
    with pytest.raises(PolicyError, match="non-empty"):
        load_policy(_write(tmp_path, "[]"), catalogue)


def test_policy_rejects_bad_purpose_code(tmp_path: Path, catalogue: Catalogue) -> None:
    """A purpose code with upper-case letters fails to load."""
    with pytest.raises(PolicyError, match="lower-case"):
        load_policy(_write(tmp_path, '["deposit.*"]', code="Medical"), catalogue)


def test_policy_file_not_found(tmp_path: Path, catalogue: Catalogue) -> None:
    """A missing policy file gives a PolicyError naming the file."""
    with pytest.raises(PolicyError, match="not found"):
        load_policy(tmp_path / "nope.toml", catalogue)
