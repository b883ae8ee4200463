"""Web accounts: roles, offices, Argon2id password hashes, lock-out after repeated failures."""

from __future__ import annotations

import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from node.errors import BadInput
from node.web.db import WebDb

MAX_FAILURES: Final[int] = 5  # consecutive wrong passwords before the account locks
LOCK_MS: Final[int] = 15 * 60 * 1000
MIN_PASSWORD: Final[int] = 10
MAX_PASSWORD: Final[int] = 1024
_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_OFFICE_RE: Final = re.compile(r"[0-9]{6}")
_HASHER: Final = PasswordHasher(type=Type.ID)  # Argon2id, argon2-cffi's RFC 9106 low-memory profile
# Verified against when the name is unknown, so a wrong name costs as much time as a wrong password.
_DUMMY: Final[str] = _HASHER.hash(secrets.token_hex(16))


class Role(StrEnum):
    """What an account may do: caseworkers handle cases, supervisors also revoke, auditors read the log."""

    CASEWORKER = "caseworker"
    SUPERVISOR = "supervisor"
    AUDITOR = "auditor"


@dataclass(frozen=True)
class Account:
    """A web account; `id` (w + 12 hex) is what the audit log names, never `name`."""

    id: str
    name: str
    role: Role
    office: str


class LoginRefused(Exception):
    """Wrong name or password, or a locked account (one message for all three)."""

    def __init__(self, account_id: str = "", locked: bool = False) -> None:
        super().__init__("login refused")
        self.account_id, self.locked = account_id, locked


def hash_password(password: str) -> str:
    """An Argon2id hash of `password` (PHC string)."""
    return _HASHER.hash(password)


def check_password(pw_hash: str, password: str) -> bool:
    """Whether `password` matches `pw_hash`, in constant time."""
    try:
        return _HASHER.verify(pw_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class Accounts:
    """The accounts table of the web database."""

    def __init__(self, db: WebDb) -> None:
        self.db = db

    def add(self, name: str, role: str, office: str, password: str) -> Account:
        """Create an account; BadInput for a bad name, role, office or a short password, or a taken name."""
        if not _NAME_RE.fullmatch(name or ""):
            raise BadInput("account name must be 1 to 64 characters of [A-Za-z0-9._-]")
        try:
            chosen = Role(role)
        except ValueError:
            raise BadInput("role must be caseworker, supervisor or auditor") from None
        if not _OFFICE_RE.fullmatch(office or ""):
            raise BadInput("office must be a 6-digit region code (GB/T 2260)")
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise BadInput(f"password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        account = Account("w" + secrets.token_hex(6), name, chosen, office)
        try:
            with self.db.tx() as conn:
                conn.execute("INSERT INTO accounts(id, name, role, office, pw_hash, created_ms) VALUES (?, ?, ?, ?, ?, ?)",
                             (account.id, name, chosen.value, office, hash_password(password), _now_ms()))
        except sqlite3.IntegrityError:
            raise BadInput("an account of that name exists") from None
        return account

    def get(self, account_id: str) -> Account | None:
        row = self.db.one("SELECT id, name, role, office FROM accounts WHERE id = ?", (account_id,))
        return None if row is None else Account(row[0], row[1], Role(row[2]), row[3])

    def authenticate(self, name: str, password: str, *, now_ms: int | None = None) -> Account:
        """The account when `password` is right and it is not locked; else LoginRefused (and count the failure)."""
        now = _now_ms() if now_ms is None else now_ms
        row = self.db.one("SELECT id, pw_hash, failures, locked_until_ms FROM accounts WHERE name = ?", (name,))
        if row is None or len(password) > MAX_PASSWORD:
            check_password(_DUMMY, password[:MAX_PASSWORD])
            raise LoginRefused(row[0] if row else "")
        account_id, pw_hash, _failures, locked_until = row
        ok = check_password(pw_hash, password)
        if locked_until > now:
            raise LoginRefused(account_id, locked=True)
        with self.db.tx() as conn:
            if ok:
                conn.execute("UPDATE accounts SET failures = 0, locked_until_ms = 0 WHERE id = ?", (account_id,))
            else:
                failures = conn.execute("SELECT failures FROM accounts WHERE id = ?", (account_id,)).fetchone()[0] + 1
                locked = now + LOCK_MS if failures >= MAX_FAILURES else 0
                conn.execute("UPDATE accounts SET failures = ?, locked_until_ms = ? WHERE id = ?",
                             (0 if locked else failures, locked, account_id))
        if not ok:
            raise LoginRefused(account_id)
        account = self.get(account_id)
        assert account is not None
        return account


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
