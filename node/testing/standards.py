"""A published standards document for tests and benchmarks (the format of config/standards/)."""

from __future__ import annotations

from collections.abc import Sequence


def standards_document(*, province: str = "51", region: str = "510100", name_zh: str = "成都市",
                       name_en: str = "Chengdu", purpose: str = "dibao", period_from: str = "2026-01",
                       standard_per_person: int = 90000,
                       rules: Sequence[str] = ("income", "financial_assets"),
                       deductions_12m: Sequence[str] = ("medical_12m", "education_12m"),
                       months_of_standard: int = 24, source: str = "test figures") -> str:
    """One entry's TOML document: income monthly + annual/12 less `deductions_12m`/12 per person
    against `standard_per_person` (fen a month); financial assets at most `months_of_standard`
    months of it per person when "financial_assets" is a rule; vehicles, homes and businesses
    (when listed) allow none, one home and none."""
    quoted = lambda items: "[" + ", ".join(f'"{i}"' for i in items) + "]"  # noqa: E731
    text = f"""province = "{province}"
version = 1
example = true

[[standard]]
region = "{region}"
name_zh = "{name_zh}"
name_en = "{name_en}"
purpose = "{purpose}"
period_from = "{period_from}"
standard_per_person = {standard_per_person}
income_monthly = ["income_monthly"]
income_annual = ["income_annual"]
deductions_12m = {quoted(deductions_12m)}
rules = {quoted(rules)}
allowance = "gap"
source = "{source}"
"""
    limits = {
        "financial_assets": f"months_of_standard = {months_of_standard}",
        "vehicles": "count_max = 0",
        "homes": "max = 1",
        "businesses": "max = 0",
    }
    for rule in rules:
        if rule in limits:
            text += f'\n[standard.{rule}]\n{limits[rule]}\nsource = "{source}"\n'
    return text
