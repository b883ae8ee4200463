"""Which person-level checks cost probing budget: published standard values, uninformative operands, cuts.

A check `item op T` tells the requester on which side of one cut the subject's value lies. It
is *free* when T is a figure a published standard compares that item with (the standard per
person for monthly income items, the financial-asset limit for financial items, ...), when T
is 0 or 1, or when the check's answer is fixed by the item's range (nothing is learnt). Any
other check is *budgeted*: its cut is what the holder counts, so `x<=T`, `x>T`, `x<T+1` and
`x>=T+1` are one use (they split the values in the same place) and asking again is free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from node.domain.catalogue import Catalogue, UnknownMeasure
from node.domain.predicate import Check, Comparator
from node.domain.standards import Standard

#: Operands that are free on every item (a record's existence, "none", "any").
FREE_CONSTANTS: Final[frozenset[int]] = frozenset({0, 1})
_CUT_AT: Final[dict[Comparator, int]] = {  # x <= operand + shift splits the values as the check does
    Comparator.LE: 0, Comparator.GT: 0, Comparator.LT: -1, Comparator.GE: -1,
}  # fmt: skip


def cut(check: Check) -> str:
    """Where the check splits the item's values: "le:C" (x ≤ C or not) or "eq:P" (x = P or not)."""
    shift = _CUT_AT.get(check.op)
    if shift is None:
        return f"eq:{check.operand}"
    return f"le:{check.operand + shift}"


def informative(check: Check, maximum: int) -> bool:
    """False when the answer is the same for every value the item can take (0 ... `maximum`)."""
    shift = _CUT_AT.get(check.op)
    if shift is None:
        return 0 <= check.operand <= maximum
    return 0 <= check.operand + shift < maximum


def is_free(check: Check, maximum: int, published: frozenset[int]) -> bool:
    """A check that costs no budget: at a published value, at 0 or 1, or fixed by the item's range."""
    return check.operand in published or check.operand in FREE_CONSTANTS or not informative(check, maximum)


def published_operands(standards: Iterable[Standard], catalogue: Catalogue) -> dict[str, frozenset[int]]:
    """item code -> the figures the given standards compare that item with, in the item's own unit.

    Each figure goes only to the items of the measures its rule reads, and only when the item
    is in the rule's unit (fen, count, 0.01 m²): the standard per person to monthly income
    items, twelve times it to yearly income items, the financial-asset limit per person to
    financial-asset items, the vehicle count and value limits, the home counts and floor-area
    limits per person, the business count limit.
    """
    values: dict[str, set[int]] = {}
    for standard in standards:
        for measures, unit, figures in _figures(standard):
            for code in measures:
                try:
                    items = catalogue.measure(code).items
                except UnknownMeasure:  # a measure this node's catalogue does not know: nothing to free
                    continue
                for item in items:
                    if item in catalogue and catalogue.get(item).unit == unit:
                        values.setdefault(item, set()).update(f for f in figures if f is not None)
    return {item: frozenset(v) for item, v in values.items()}


def _figures(s: Standard) -> list[tuple[tuple[str, ...], str, tuple[int | None, ...]]]:
    """(measures, unit, figures) triples of one standard: which figures apply to which measures' items."""
    out: list[tuple[tuple[str, ...], str, tuple[int | None, ...]]] = []
    if "income" in s.rules:
        out.append((s.income_monthly, "fen", (s.standard_per_person,)))
        out.append((s.income_annual, "fen", (12 * s.standard_per_person,)))
    if s.financial_assets is not None:
        out.append((("financial_assets",), "fen", (s.financial_assets.limit_per_person(s.standard_per_person),)))
    if s.vehicles is not None:
        out.append((("vehicle_count",), "1", (s.vehicles.count_max,)))
        out.append((("vehicle_value",), "fen", (s.vehicles.value_max,)))
    if s.homes is not None:
        out.append((("homes",), "1", (s.homes.max, s.homes.exception_max)))
        out.append((("floor_area",), "0.01 m²", (s.homes.exception_area_per_person_max,)))
    if s.floor_area is not None:
        out.append((("floor_area",), "0.01 m²", (s.floor_area.per_person_max,)))
    if s.businesses is not None:
        out.append((("businesses",), "1", (s.businesses.max,)))
    return out


def budgeted(checks: Iterable[Check], catalogue: Catalogue, published: Mapping[str, frozenset[int]]) -> dict[str, str]:
    """item -> cut of each check that costs budget (one check per item per query, so one cut per item)."""
    return {c.attribute: cut(c) for c in checks
            if not is_free(c, catalogue.get(c.attribute).maximum, published.get(c.attribute, frozenset()))}
