"""Resident ID numbers (GB 11643-1999): validation, check character, scanning text, and generation for tests.

An ID number is 18 characters: a 6-digit region code (its first two digits are a province),
an 8-digit birth date, a 3-digit sequence (odd for men) and a check character computed with
ISO 7064 MOD 11-2. Error messages never repeat the number itself. `contains_id_number` is the
one scan every layer uses on text it stores, sends or logs; `redact` masks ID-number-like runs
of digits in text shown to people.
"""

from __future__ import annotations

import datetime as _dt
import re
import unicodedata
from operator import mul
from typing import Final

from node.domain.regions import is_province
from node.errors import BadInput

_WEIGHTS: Final[tuple[int, ...]] = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK: Final[str] = "10X98765432"
_DIGIT_BIAS: Final[int] = ord("0") * sum(_WEIGHTS)  # what the ASCII codes add over the digits' values
_DIGITS: Final[frozenset[str]] = frozenset("0123456789")
_EARLIEST_BIRTH: Final[_dt.date] = _dt.date(1900, 1, 1)
# 17 digits (any script), maybe grouped by single spaces or hyphens: the cheap test, in C.
_RUN_17: Final = re.compile(r"\d(?:[ \t-]?\d){16}")
_GROUPING: Final = re.compile(r"(?<=[0-9])[ \t-](?=[0-9Xx])")
_WINDOW: Final = re.compile(r"(?=([0-9]{17}[0-9Xx]))")
# What `redact` masks: a run of 15 or more digits (with a check character), or 17 grouped ones.
_ID_LIKE: Final = re.compile(r"(?<!\d)(?:\d{15,}[XxＸｘ]?|\d(?:[ \t-]?\d){16}(?:[ \t-]?[\dXxＸｘ])?)")
REDACTED: Final[str] = "[ID-number-like value removed]"


class InvalidIdNumber(BadInput):
    """An ID number failed validation; the message says why without repeating the number."""


def check_character(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character for the first 17 digits."""
    if len(first17) == 17 and first17.isascii() and first17.isdigit():  # ASCII digits: sum their bytes
        return _CHECK[(sum(map(mul, first17.encode("ascii"), _WEIGHTS)) - _DIGIT_BIAS) % 11]
    total = sum(int(c) * w for c, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK[total % 11]


def validate(raw: str, *, today: _dt.date | None = None) -> str:
    """Return the normalised ID number (upper-case `X`) or raise InvalidIdNumber with the reason."""
    if not isinstance(raw, str):
        raise InvalidIdNumber("ID number must be text")
    number = raw.strip().upper()
    if len(number) != 18:
        raise InvalidIdNumber(f"ID number must have 18 characters, got {len(number)}")
    body = number[:17]
    if not _DIGITS.issuperset(body):
        raise InvalidIdNumber("ID number must have 17 digits before the check character")
    last = number[17]
    if last not in _DIGITS and last != "X":
        raise InvalidIdNumber("ID number check character must be a digit or X")
    if not is_province(number[:2]):
        raise InvalidIdNumber("ID number region code names no known province")
    try:
        birth = _dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        raise InvalidIdNumber("ID number birth date is not a calendar date") from None
    if birth < _EARLIEST_BIRTH or birth > (today or _dt.date.today()):
        raise InvalidIdNumber("ID number birth date is out of range")
    if number[14:17] == "000":
        raise InvalidIdNumber("ID number sequence code must not be 000")
    if check_character(body) != last:
        raise InvalidIdNumber("ID number check character does not match (GB 11643)")
    return number


def is_valid(raw: str) -> bool:
    """True when `raw` is a valid ID number."""
    try:
        validate(raw)
    except InvalidIdNumber:
        return False
    return True


def contains_id_number(text: str) -> bool:
    """True when `text` holds a valid ID number anywhere: full-width digits and 6-8-4 style groupings count."""
    if len(text) < 18 or _RUN_17.search(text) is None:  # the common case, in C
        return False
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)  # full-width digits and X, ideographic spaces
    if _GROUPING.search(text) is not None:
        text = _GROUPING.sub("", text)
    return any(is_valid(m.group(1)) for m in _WINDOW.finditer(text))


def redact(text: str) -> str:
    """`text` with every ID-number-like run of digits (valid or not) replaced by a marker."""
    if len(text) < 15:
        return text
    return _ID_LIKE.sub(REDACTED, text)


def make(region: str, birth: _dt.date, sequence: int) -> str:
    """Build a valid ID number from a 6-digit region code, birth date and sequence (1..999)."""
    if len(region) != 6 or not _DIGITS.issuperset(region):
        raise ValueError("region must be 6 digits")
    if not 1 <= sequence <= 999:
        raise ValueError("sequence must be 1..999")
    body = f"{region}{birth:%Y%m%d}{sequence:03d}"
    return body + check_character(body)


def province_of(number: str) -> str:
    """The two-digit province code of a (validated) ID number: where it was first issued."""
    return number[:2]


def mask(number: str) -> str:
    """A display form that hides all but the province and the check character (for humans only)."""
    return f"{number[:2]}{'*' * 15}{number[17:]}" if len(number) == 18 else "*" * len(number)
