"""Unit tests of check expressions (minimal-disclosure predicates)."""

from __future__ import annotations

import pytest

from node.domain.predicate import Check, Comparator, MalformedCheck, parse_check
from node.errors import BadInput


def test_comparator_symbols() -> None:
    """Each comparator carries its expression symbol."""
    assert [c.symbol for c in Comparator] == ["<", "<=", "==", "!=", ">=", ">"]
    assert Comparator.from_symbol(">=") is Comparator.GE


@pytest.mark.parametrize(
    ("op", "results"),
    [
        (Comparator.LT, (True, False, False)),
        (Comparator.LE, (True, True, False)),
        (Comparator.EQ, (False, True, False)),
        (Comparator.NE, (True, False, True)),
        (Comparator.GE, (False, True, True)),
        (Comparator.GT, (False, False, True)),
    ],
)
def test_evaluate(op: Comparator, results: tuple[bool, bool, bool]) -> None:
    """evaluate compares value (left) with operand (right) for every comparator."""
    check = Check("deposit.balance_total", op, 100)
    assert (check.evaluate(99), check.evaluate(100), check.evaluate(101)) == results


def test_str_round_trips() -> None:
    """str(Check) is the compact expression and parses back to an equal Check."""
    check = Check("deposit.balance_total", Comparator.LE, 2000000)
    assert str(check) == "deposit.balance_total<=2000000"
    assert parse_check(str(check)) == check


@pytest.mark.parametrize(
    "expr",
    ["deposit.balance_total<=2000000", "  deposit.balance_total <= 2000000 ",
     "deposit.balance_total\t<=\t2000000", "deposit.balance_total<=+2000000"],
)  # fmt: skip
def test_parse_accepts_spaces_and_plus(expr: str) -> None:
    """Spaces around the comparator and a leading + on the operand are accepted."""
    assert parse_check(expr) == Check("deposit.balance_total", Comparator.LE, 2000000)


def test_parse_negative_and_limits() -> None:
    """Negative operands and both ends of the 64-bit range parse."""
    assert parse_check("a.b>-5").operand == -5
    assert parse_check("a.b>=-9223372036854775808").operand == -(2**63)
    assert parse_check("a.b<=9223372036854775807").operand == 2**63 - 1


@pytest.mark.parametrize(
    "expr",
    ["", "   ", "a.b", "a.b<=", "<=5", "a.b=5", "a.b=<5", "a.b<>5", "a.b<=1.5", "a.b<=1e3",
     "a.b<=1_000", "a.b<=0x10", "a.b<=5x", "a.b<=5<6", "ab<=5", "A.B<=5", "a b<=5", "a.b<=１２",
     "a.b<=9223372036854775808", "a.b>=-9223372036854775809", "a.b<=" + "9" * 300],
)  # fmt: skip
def test_parse_rejects_malformed(expr: str) -> None:
    """Empty, junk, floats, exponents, bad comparators and 64-bit overflow are rejected."""
    with pytest.raises(MalformedCheck):
        parse_check(expr)


def test_messages_are_one_line_and_bad_input() -> None:
    """Errors are BadInput with one-line messages even for multi-line input."""
    with pytest.raises(BadInput) as info:
        parse_check("a.b<=5\nrm -rf /")
    assert "\n" not in str(info.value)
    assert isinstance(info.value, MalformedCheck)


def test_check_constructor_validates() -> None:
    """Check refuses a malformed attribute, a non-Comparator op and a non-integer operand."""
    with pytest.raises(MalformedCheck):
        Check("balance", Comparator.LE, 1)
    with pytest.raises(MalformedCheck):
        Check("a.b", "<=", 1)  # type: ignore[arg-type]
    with pytest.raises(MalformedCheck):
        Check("a.b", Comparator.LE, 1.5)  # type: ignore[arg-type]
    with pytest.raises(MalformedCheck):
        Check("a.b", Comparator.LE, 2**63)
