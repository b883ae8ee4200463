"""Request ids: the one check applied wherever a peer supplies one, before anything is consumed or logged.

A request id is 8 to 64 characters of ``[A-Za-z0-9._-]`` and holds no resident ID number (the
project's one ID scan, `idnumber.contains_id_number`). A refused one is never repeated: the
refusal message does not echo it, and logs and audit records show `INVALID` in its place.
"""

from __future__ import annotations

import re
from typing import Final, TypeGuard

from node.domain import idnumber
from node.errors import ErrorCode, Refusal

MIN_LENGTH, MAX_LENGTH = 8, 64
PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{8,64}")
#: What logs and audit records carry instead of a refused request id (never a valid one: 7 characters).
INVALID: Final[str] = "invalid"
MESSAGE: Final[str] = "request id must be 8 to 64 characters of [A-Za-z0-9._-] and not hold an ID number"


def is_valid(value: object) -> TypeGuard[str]:
    """Whether `value` is an acceptable request id."""
    return (isinstance(value, str) and MIN_LENGTH <= len(value) <= MAX_LENGTH
            and PATTERN.fullmatch(value) is not None and not idnumber.contains_id_number(value))


def check(value: object) -> str:
    """`value` if it is a valid request id; else Refusal(MALFORMED) with a message that does not repeat it."""
    if not is_valid(value):
        raise Refusal(ErrorCode.MALFORMED, MESSAGE)
    return value


def shown(value: object) -> str:
    """What a log line or an audit record may carry: the id if valid, "" if absent, else `INVALID`."""
    if is_valid(value):
        return value
    return "" if value in ("", None) else INVALID
