"""Unit tests of resident ID number validation (GB 11643-1999)."""

from __future__ import annotations

import datetime as dt

import pytest

from node.domain import idnumber
from node.domain.idnumber import InvalidIdNumber, check_character, make, validate
from node.errors import BadInput

TODAY = dt.date(2024, 6, 30)
VALID = "11010519491231002X"  # the standard's own example


def _with_check(first17: str) -> str:
    return first17 + check_character(first17)


def test_standard_example_is_valid() -> None:
    """The GB 11643 example number with check character X validates unchanged."""
    assert validate(VALID, today=TODAY) == VALID


def test_lower_case_x_is_normalised() -> None:
    """A lower-case check character x is accepted and normalised to upper-case X."""
    assert validate(VALID.lower(), today=TODAY) == VALID


def test_surrounding_whitespace_is_stripped() -> None:
    """Leading and trailing whitespace is removed before validation."""
    assert validate(f"  {VALID}\n", today=TODAY) == VALID


def test_made_numbers_validate() -> None:
    """Numbers built by make() for many provinces and sequences are valid."""
    for region in ("110105", "440305", "510107", "650102"):
        for seq in (1, 2, 999):
            number = make(region, dt.date(1985, 2, 28), seq)
            assert validate(number, today=TODAY) == number


def test_digit_check_character() -> None:
    """A number whose check character is a digit validates."""
    number = _with_check("44030519850228123")
    assert number[-1] != "X"
    assert validate(number, today=TODAY) == number


def test_wrong_checksum_rejected() -> None:
    """Changing the check character makes the number invalid."""
    wrong = VALID[:17] + "1"
    with pytest.raises(InvalidIdNumber, match="check character"):
        validate(wrong, today=TODAY)


def test_transposed_digits_rejected() -> None:
    """Swapping two different digits of the body breaks the checksum."""
    body = "44030519850228123"
    good = _with_check(body)
    swapped = body[:14] + body[15] + body[14] + body[16:] + good[17]
    with pytest.raises(InvalidIdNumber):
        validate(swapped, today=TODAY)


@pytest.mark.parametrize("raw", ["", "1101051949123100", VALID + "1", VALID[:15]])
def test_bad_length_rejected(raw: str) -> None:
    """Numbers that are not 18 characters long are rejected."""
    with pytest.raises(InvalidIdNumber, match="18 characters"):
        validate(raw, today=TODAY)


def test_letters_in_body_rejected() -> None:
    """Letters anywhere but the last position are rejected."""
    with pytest.raises(InvalidIdNumber, match="17 digits"):
        validate("1101051949123A002X", today=TODAY)


def test_bad_check_letter_rejected() -> None:
    """A check character other than a digit or X is rejected."""
    with pytest.raises(InvalidIdNumber, match="digit or X"):
        validate(VALID[:17] + "Y", today=TODAY)


@pytest.mark.parametrize("province", ["99", "00"])
def test_unknown_province_rejected(province: str) -> None:
    """A region code whose first two digits name no province (99, 00) is rejected."""
    number = _with_check(province + "010519491231002")
    with pytest.raises(InvalidIdNumber, match="province"):
        validate(number, today=TODAY)


def test_impossible_birth_date_rejected() -> None:
    """A birth date that is not a calendar date (19900230) is rejected."""
    number = _with_check("11010519900230002")
    with pytest.raises(InvalidIdNumber, match="calendar date"):
        validate(number, today=TODAY)


def test_future_birth_rejected() -> None:
    """A birth date after today is rejected."""
    number = make("110105", dt.date(2024, 7, 1), 11)
    with pytest.raises(InvalidIdNumber, match="out of range"):
        validate(number, today=TODAY)


def test_birth_before_1900_rejected() -> None:
    """A birth date before 1900 is rejected."""
    number = _with_check("11010518991231002")
    with pytest.raises(InvalidIdNumber, match="out of range"):
        validate(number, today=TODAY)


def test_sequence_000_rejected() -> None:
    """The sequence code 000 is never issued and is rejected."""
    number = _with_check("11010519491231000")
    with pytest.raises(InvalidIdNumber, match="000"):
        validate(number, today=TODAY)


def test_errors_are_bad_input_and_never_echo_the_number() -> None:
    """Validation errors are BadInput and their messages never contain the number."""
    bad = [VALID[:17] + "1", _with_check("99010519491231002"), _with_check("11010519491231000")]
    for raw in bad:
        with pytest.raises(BadInput) as info:
            validate(raw, today=TODAY)
        assert raw not in str(info.value)
        assert raw[:14] not in str(info.value)


def test_non_text_rejected() -> None:
    """A value that is not a string is rejected rather than crashing."""
    with pytest.raises(InvalidIdNumber):
        validate(110105194912310020, today=TODAY)  # type: ignore[arg-type]


def test_is_valid_and_mask() -> None:
    """is_valid mirrors validate and mask hides the middle fifteen characters."""
    assert idnumber.is_valid(VALID)
    assert not idnumber.is_valid(VALID[:17] + "1")
    assert idnumber.mask(VALID) == "11" + "*" * 15 + "X"
