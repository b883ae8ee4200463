"""Free text that Hedui stores or sends, and user input it shows back: one set of rules.

Case references, ingest sources, household keys of batch files and config strings are typed by
people, so an ID number can end up in them; they are refused when they hold one
(`idnumber.contains_id_number`), with a message that names the field and never the value.
Values echoed in error messages go through `show`, which masks anything ID-number-like.
"""

from __future__ import annotations

import re
from typing import Final

from node.domain import idnumber
from node.errors import BadInput

CASE_REFERENCE_MAX: Final[int] = 64
HOUSEHOLD_KEY_MAX: Final[int] = 64
_CASE_RE: Final = re.compile(r"[A-Za-z0-9._/-]*")


class FreeTextRefused(BadInput):
    """A free-text field is refused; the message names the field, never its value."""


def problem(name: str, value: object, *, max_len: int) -> str | None:
    """Why `value` may not be stored or sent as the free-text field `name`, or None when it may."""
    if not isinstance(value, str):
        return f"{name} must be text"
    if len(value) > max_len:
        return f"{name} is longer than {max_len} characters"
    if not value.isprintable():
        return f"{name} contains control or non-printable characters"
    if idnumber.contains_id_number(value):
        return f"{name} must not contain an ID number"
    return None


def require(name: str, value: object, *, max_len: int) -> str:
    """`value` when it may be stored or sent as the free-text field `name`; else FreeTextRefused."""
    reason = problem(name, value, max_len=max_len)
    if reason is not None:
        raise FreeTextRefused(reason)
    assert isinstance(value, str)
    return value


def case_reference(value: object) -> str:
    """A consent's case reference: up to 64 characters of [A-Za-z0-9._/-], and no ID number in it."""
    text = require("case reference", value, max_len=CASE_REFERENCE_MAX)
    if not _CASE_RE.fullmatch(text):
        raise FreeTextRefused(f"case reference must be up to {CASE_REFERENCE_MAX} characters of [A-Za-z0-9._/-]")
    return text


def show(value: object, limit: int = 70) -> str:
    """A user-supplied value for an error message: one bounded line, ID-number-like runs masked."""
    text = repr(idnumber.redact(value) if isinstance(value, str) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
