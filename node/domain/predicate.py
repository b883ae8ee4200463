"""Checks: minimal-disclosure predicates such as `deposit.balance_total<=2000000` over one item."""

from __future__ import annotations

import enum
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from node.domain import freetext, idnumber
from node.errors import BadInput

INT64_MIN: Final[int] = -(2**63)
INT64_MAX: Final[int] = 2**63 - 1
_MAX_EXPR: Final[int] = 256
_ATTRIBUTE_RE: Final[re.Pattern[str]] = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
_OPERAND_RE: Final[re.Pattern[str]] = re.compile(r"[+-]?[0-9]+")
# attribute, then the first run of comparison characters, then the rest (the operand).
_SPLIT_RE: Final[re.Pattern[str]] = re.compile(r"\A\s*([^<>=!]*?)\s*([<>=!]+)\s*(.*?)\s*\Z", re.S)


class MalformedCheck(BadInput):
    """A check expression or Check value is not well formed."""


class Comparator(enum.Enum):
    """A comparison operator; the value is its symbol."""

    LT = "<"
    LE = "<="
    EQ = "=="
    NE = "!="
    GE = ">="
    GT = ">"

    @property
    def symbol(self) -> str:
        """The operator as written in expressions."""
        return self.value

    @classmethod
    def from_symbol(cls, symbol: str) -> Comparator:
        """The comparator written `symbol`, or MalformedCheck."""
        try:
            return cls(symbol)
        except ValueError:
            raise MalformedCheck(
                f"unknown comparator {_show(symbol)} (use one of < <= == != >= >)"
            ) from None

    def apply(self, left: int, right: int) -> bool:
        """`left <op> right`."""
        return _FUNCS[self](left, right)


_FUNCS: Final[dict[Comparator, Callable[[int, int], bool]]] = {
    Comparator.LT: operator.lt,
    Comparator.LE: operator.le,
    Comparator.EQ: operator.eq,
    Comparator.NE: operator.ne,
    Comparator.GE: operator.ge,
    Comparator.GT: operator.gt,
}


@dataclass(frozen=True, slots=True)
class Check:
    """`attribute op operand`: a yes/no question about one data item of one subject."""

    attribute: str
    op: Comparator
    operand: int

    def __post_init__(self) -> None:
        if not isinstance(self.attribute, str) or _ATTRIBUTE_RE.fullmatch(self.attribute) is None:
            raise MalformedCheck("check attribute must be a catalogue code like category.name")
        if not isinstance(self.op, Comparator):
            raise MalformedCheck("check operator must be a Comparator")
        if type(self.operand) is not int or not INT64_MIN <= self.operand <= INT64_MAX:
            raise MalformedCheck("check operand must be a 64-bit signed integer")

    def evaluate(self, value: int) -> bool:
        """Whether a subject's value satisfies the check."""
        return _FUNCS[self.op](value, self.operand)

    def __str__(self) -> str:
        return f"{self.attribute}{self.op.value}{self.operand}"


def parse_check(expr: str) -> Check:
    """Parse `attribute op integer`, spaces allowed around the operator, or raise MalformedCheck."""
    if not isinstance(expr, str):
        raise MalformedCheck("check must be text")
    if not expr.strip():
        raise MalformedCheck("check is empty")
    if len(expr) > _MAX_EXPR:
        raise MalformedCheck(f"check is longer than {_MAX_EXPR} characters")
    if idnumber.contains_id_number(expr):  # pasted into the wrong flag: never sent (no item's bound is that large)
        raise MalformedCheck("check must not contain an ID number")
    shown = _show(expr)
    match = _SPLIT_RE.match(expr)
    if match is None:
        raise MalformedCheck(f"check {shown} has no comparator (use one of < <= == != >= >)")
    attribute, symbol, operand = match.groups()
    if not attribute:
        raise MalformedCheck(f"check {shown} has no attribute before the comparator")
    if _ATTRIBUTE_RE.fullmatch(attribute) is None:
        raise MalformedCheck(f"check {shown}: attribute must look like category.name")
    if symbol not in _SYMBOLS:
        raise MalformedCheck(f"check {shown}: unknown comparator (use one of < <= == != >= >)")
    if not operand:
        raise MalformedCheck(f"check {shown} has no operand after the comparator")
    if _OPERAND_RE.fullmatch(operand) is None:
        raise MalformedCheck(
            f"check {shown}: operand must be an integer (no decimals, exponents or spaces)"
        )
    value = int(operand)
    if not INT64_MIN <= value <= INT64_MAX:
        raise MalformedCheck(f"check {shown}: operand does not fit in a 64-bit signed integer")
    return Check(attribute, Comparator(symbol), value)


_SYMBOLS: Final[frozenset[str]] = frozenset(c.value for c in Comparator)
ONE_PER_ITEM: Final[str] = "a query checks each data item at most once"


def repeated_item(attributes: Iterable[str]) -> str | None:
    """The first item code that occurs twice, or None."""
    seen: set[str] = set()
    for attribute in attributes:
        if attribute in seen:
            return attribute
        seen.add(attribute)
    return None


def require_one_per_item(checks: Iterable[Check]) -> None:
    """Raise MalformedCheck when two checks compare the same item.

    Several comparisons of one item in one query would recover its value in a few queries
    (a 32-way search per query); one check per item makes each probe a query of its own.
    """
    repeated = repeated_item(c.attribute for c in checks)
    if repeated is not None:
        raise MalformedCheck(f"{repeated} is checked twice: {ONE_PER_ITEM}")


def _show(text: str) -> str:
    """The user's expression on one bounded line, ID-number-like runs masked (freetext.show)."""
    return freetext.show(text, 80)
