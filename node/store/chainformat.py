"""What every hash chain shares whatever stores it: the entry, the version-1 hash encoding, verification.

Hash encoding (version 1), every integer big-endian:

  SHA-256( b"hedui/v1/chain\\x00" || u32 len(table) || table
           || u64 idx || i64 at_ms
           || u32 len(kind) || kind || u32 len(key) || key || u32 len(payload) || payload
           || prev_hash )

kind, key and table are UTF-8. The table name is length-prefixed like every other
variable-length field, so no two (table, entry) pairs share an encoding. A backend stores the
seven fields of `Entry` as they are; any backend's entries verify with `verify_rows`.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

HASH_BYTES: Final[int] = 32
GENESIS: Final[bytes] = bytes(HASH_BYTES)
DOMAIN: Final[bytes] = b"hedui/v1/chain\x00"
MAX_LEN: Final[int] = 0xFFFF_FFFF
I64_MIN: Final[int] = -(2**63)
I64_MAX: Final[int] = 2**63 - 1
TABLE_RE: Final[re.Pattern[str]] = re.compile(r"[a-z][a-z0-9_]{0,62}")
_U32: Final[struct.Struct] = struct.Struct(">I")
_HEAD: Final[struct.Struct] = struct.Struct(">QqI")  # idx, at_ms, len(kind)

BROKEN: Final[str] = "entry {n}: chain broken (missing or reordered entries before it)"
MISMATCH: Final[str] = "entry {n}: content does not match its hash"
CHECKPOINT: Final[str] = "entry {n} missing or changed since checkpoint"

#: One item to append after `encode_item`: (kind, key, payload, kind as UTF-8, key as UTF-8).
Encoded = tuple[str, str, bytes, bytes, bytes]


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a chain; `hash` commits to every other field and to the table name."""

    idx: int
    at_ms: int
    kind: str
    key: str
    payload: bytes
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of `Chain.verify`.

    `count` is the number of entries that verified before the first bad one (all of them when
    `ok`); `head_hash` is the hash of the last entry that verified (GENESIS if none).
    `first_bad` and `reason` name the first problem; both are None when `ok`.
    """

    ok: bool
    count: int
    first_bad: int | None
    reason: str | None
    head_hash: bytes

    def __bool__(self) -> bool:
        """True exactly when the chain verified, so `if chain.verify():` means what it says."""
        return self.ok


def prefix(table: str) -> bytes:
    """The fixed start of every hash input of `table`."""
    name = table.encode()
    return DOMAIN + _U32.pack(len(name)) + name


def entry_hash(
    table: str, idx: int, at_ms: int, kind: str, key: str, payload: bytes, prev_hash: bytes
) -> bytes:
    """The SHA-256 of one entry in the version-1 encoding (see the module docstring)."""
    return digest(prefix(table), idx, at_ms, kind.encode(), key.encode(), payload, prev_hash)


def digest(
    start: bytes, idx: int, at_ms: int, kind: bytes, key: bytes, payload: bytes, prev: bytes
) -> bytes:
    """The entry hash from the table's `prefix` and the UTF-8 kind and key."""
    return hashlib.sha256(
        b"".join(
            (
                start,
                _HEAD.pack(idx, at_ms, len(kind)),
                kind,
                _U32.pack(len(key)),
                key,
                _U32.pack(len(payload)),
                payload,
                prev,
            )
        )
    ).digest()


def check_table(table: str) -> str:
    """`table` if it is a lowercase SQL identifier (it is both SQL text and hashed); else ValueError."""
    if not isinstance(table, str) or not TABLE_RE.fullmatch(table):
        raise ValueError("table name must match [a-z][a-z0-9_]{0,62}")
    if table.startswith("sqlite"):
        raise ValueError("table names starting with 'sqlite' are reserved")
    if table.startswith("pg_"):
        raise ValueError("table names starting with 'pg_' are reserved")
    return table


def check_at_ms(at_ms: object) -> int:
    """`at_ms` if it is a signed 64-bit integer; else ValueError."""
    if isinstance(at_ms, bool) or not isinstance(at_ms, int) or not I64_MIN <= at_ms <= I64_MAX:
        raise ValueError("at_ms must be a signed 64-bit integer")
    return at_ms


def encode_item(kind: str, key: str, payload: bytes) -> Encoded:
    """Check one (kind, key, payload) and return it with kind and key as UTF-8 bytes."""
    if not isinstance(kind, str) or not kind:
        raise ValueError("kind must be a non-empty string")
    if not isinstance(key, str):
        raise TypeError("key must be a string")
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError("payload must be bytes")
    payload = bytes(payload)
    kind_b, key_b = kind.encode(), key.encode()  # lone surrogates raise UnicodeEncodeError
    if max(len(kind_b), len(key_b), len(payload)) > MAX_LEN:
        raise ValueError("kind, key and payload must each be under 4 GiB")
    return kind, key, payload, kind_b, key_b


def link(table_prefix: bytes, head: tuple[int, bytes], items: Iterable[Encoded], at_ms: int) -> list[Entry]:
    """Entries for `items`, numbered and hashed on from `head` (index, hash)."""
    idx, prev = head
    out: list[Entry] = []
    for kind, key, payload, kind_b, key_b in items:
        idx += 1
        h = digest(table_prefix, idx, at_ms, kind_b, key_b, payload, prev)
        out.append(Entry(idx, at_ms, kind, key, payload, prev, h))
        prev = h
    return out


def check_expect_head(expect_head: tuple[int, bytes] | None) -> tuple[int, bytes]:
    """`expect_head` checked ((0, GENESIS) for None); ValueError if it is not (index >= 0, 32-byte hash)."""
    if expect_head is None:
        return 0, GENESIS
    idx, want = expect_head
    if not isinstance(idx, int) or idx < 0 or not isinstance(want, bytes):
        raise ValueError("expect_head must be (index >= 0, hash bytes)")
    if len(want) != HASH_BYTES or (idx == 0 and want != GENESIS):
        raise ValueError("expect_head hash must be 32 bytes (all zero for index 0)")
    return idx, want


def verify_rows(
    table_prefix: bytes, rows: Iterable[tuple[Any, ...]], want_idx: int, want_hash: bytes
) -> VerifyReport:
    """Walk (idx, at_ms, kind, key, payload, prev_hash, hash) rows in idx order from genesis,
    recomputing each hash; stop at the first problem."""
    # One tight loop with local names: this runs once per entry of a possibly large chain.
    sha256, head, u32 = hashlib.sha256, _HEAD.pack, _U32.pack
    prev_idx, prev_hash = 0, GENESIS

    def bad(n: int, template: str) -> VerifyReport:
        return VerifyReport(False, prev_idx, n, template.format(n=n), prev_hash)

    for idx, at_ms, kind, key, payload, stored_prev, stored in rows:
        if idx != prev_idx + 1 or stored_prev != prev_hash:
            return bad(idx, BROKEN)
        try:
            kind_b, key_b = kind.encode(), key.encode()
            computed: bytes | None = sha256(
                b"".join(
                    (
                        table_prefix,
                        head(idx, at_ms, len(kind_b)),
                        kind_b,
                        u32(len(key_b)),
                        key_b,
                        u32(len(payload)),
                        payload,
                        stored_prev,
                    )
                )
            ).digest()
        except (AttributeError, TypeError, ValueError, struct.error):
            computed = None  # a column was given a value of the wrong type: tampered
        if computed != stored:
            return bad(idx, MISMATCH)
        if idx == want_idx and stored != want_hash:
            return bad(idx, CHECKPOINT)
        prev_idx, prev_hash = idx, stored
    if prev_idx < want_idx:
        return bad(want_idx, CHECKPOINT)
    return VerifyReport(True, prev_idx, None, None, prev_hash)
