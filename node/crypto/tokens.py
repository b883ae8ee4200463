"""Subject tokens and possession keys: what a person becomes inside the federation.

A token is HMAC-SHA256 over a domain-separated, normalised ID number, keyed with the
federation linkage key that only provinces hold. Stores, wires and audit rows carry tokens,
never ID numbers; the coordinator cannot turn a token back into a person. A possession key is
the same HMAC under another domain label: it is derived from the ID number, never from the
token, so only a province that was given the ID number (the requester, or a holder at
ingest) has it; it locks sealed queries to real holders (node.crypto.possession).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence
from itertools import repeat
from pathlib import Path
from typing import Final

TOKEN_ALGORITHM: Final[str] = "hmac-sha256"
TOKEN_LENGTH: Final[int] = 32
LINKAGE_KEY_LENGTH: Final[int] = 32
_SUBJECT_PREFIX: Final[bytes] = b"hedui/v1/subject\x00"
_POSSESSION_PREFIX: Final[bytes] = b"hedui/v1/possession\x00"

try:  # what hmac.digest calls for a named OpenSSL digest, without its Python frame (same bytes)
    from _hashlib import hmac_digest as _hmac_digest
except ImportError:  # a Python built without OpenSSL's hashlib
    _hmac_digest = hmac.digest


def subject_token(linkage_key: bytes, id_number: str) -> bytes:
    """The 32-byte subject token of a validated, normalised ID number."""
    return _hmac_digest(linkage_key, _SUBJECT_PREFIX + id_number.encode("ascii"), "sha256")


def possession_key(linkage_key: bytes, id_number: str) -> bytes:
    """The 32-byte possession key of a validated, normalised ID number (not computable from its token)."""
    return _hmac_digest(linkage_key, _POSSESSION_PREFIX + id_number.encode("ascii"), "sha256")


def subject_tokens(linkage_key: bytes, id_numbers: Sequence[str]) -> list[bytes]:
    """subject_token() of each validated, normalised ID number, in order (one C-level pass)."""
    return _digests(linkage_key, _SUBJECT_PREFIX, id_numbers)


def possession_keys(linkage_key: bytes, id_numbers: Sequence[str]) -> list[bytes]:
    """possession_key() of each validated, normalised ID number, in order (one C-level pass)."""
    return _digests(linkage_key, _POSSESSION_PREFIX, id_numbers)


def _digests(linkage_key: bytes, prefix: bytes, id_numbers: Sequence[str]) -> list[bytes]:
    messages = [prefix + number.encode("ascii") for number in id_numbers]
    n = len(messages)
    return list(map(_hmac_digest, repeat(linkage_key, n), messages, repeat("sha256", n)))


def new_linkage_key() -> bytes:
    """A fresh random federation linkage key."""
    return os.urandom(LINKAGE_KEY_LENGTH)


def load_linkage_key(path: Path) -> bytes:
    """Read a linkage key file (hex text, one line)."""
    key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    if len(key) != LINKAGE_KEY_LENGTH:
        raise ValueError(f"linkage key in {path} must be {LINKAGE_KEY_LENGTH} bytes")
    return key


def token_hex(token: bytes) -> str:
    """Short display form of a token for logs: the first 8 bytes in hex (still pseudonymous)."""
    return token[:8].hex()
