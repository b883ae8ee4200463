"""Cases: the household, region, purpose and declared figures a caseworker registers, their
validation (GB 11643 check characters among them), and the cases table."""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from node.domain import idnumber
from node.domain.standards import fallback_regions
from node.errors import BadInput
from node.web.db import WebDb

MAX_MEMBERS: Final[int] = 8
MAX_TEXT: Final[int] = 200
MAX_YUAN: Final[int] = 10**10  # ten billion yuan: more is a typing error
DAY_MS: Final[int] = 86_400_000
_YUAN_RE: Final = re.compile(r"([0-9]{1,11})(?:\.([0-9]{1,2}))?")


class Status(StrEnum):
    """A case's state, changed only by `Cases` methods: open → checked → closed, or revoked."""

    OPEN = "open"
    CHECKED = "checked"
    REVOKED = "revoked"
    CLOSED = "closed"


@dataclass(frozen=True)
class MemberInput:
    """One household member as typed: the ID number and the declared figures (fen; None when not declared)."""

    id_number: str
    wage: int | None = None
    deposit: int | None = None


@dataclass(frozen=True)
class CaseInput:
    """A new case's fields, validated."""

    region: str
    purpose: str
    applicant: str
    notes: str
    members: tuple[MemberInput, ...]
    consent_days: int


@dataclass
class FormErrors(Exception):
    """Every problem of a submitted case form: (field, message) pairs, shown next to the form."""

    problems: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(f"{f}: {m}" for f, m in self.problems)


def yuan_to_fen(text: str) -> int | None:
    """'1,234.5' yuan -> 123450 fen; '' -> None; ValueError when it is not an amount."""
    text = text.strip().replace(",", "")
    if not text:
        return None
    m = _YUAN_RE.fullmatch(text)
    if m is None or int(m.group(1)) > MAX_YUAN:
        raise ValueError("not an amount in yuan (digits, at most two decimals)")
    return int(m.group(1)) * 100 + int((m.group(2) or "0").ljust(2, "0"))


def _free_text(name: str, value: str, problems: list[tuple[str, str]]) -> str:
    value = value.strip()
    if len(value) > MAX_TEXT:
        problems.append((name, f"at most {MAX_TEXT} characters"))
    elif idnumber.contains_id_number(value):
        problems.append((name, "must not contain an ID number (enter members' numbers in the members' fields)"))
    return value


def parse_case(fields: dict[str, str], *, province: str, purposes: tuple[str, ...]) -> CaseInput:
    """Validate a submitted case form; FormErrors naming every bad field (never echoing an ID number)."""
    problems: list[tuple[str, str]] = []
    region = fields.get("region", "").strip()
    try:
        fallback_regions(region)
        if region[:2] != province:
            problems.append(("region", f"the household's region must be in this province ({province})"))
    except BadInput:
        problems.append(("region", "region must be a 6-digit GB/T 2260 code"))
    purpose = fields.get("purpose", "")
    if purpose not in purposes:
        problems.append(("purpose", "choose a purpose from the list"))
    applicant = _free_text("applicant", fields.get("applicant", ""), problems)
    notes = _free_text("notes", fields.get("notes", ""), problems)
    members: list[MemberInput] = []
    seen: set[str] = set()
    for n in range(1, MAX_MEMBERS + 1):
        raw = fields.get(f"id_{n}", "").strip()
        wage, deposit = fields.get(f"wage_{n}", ""), fields.get(f"deposit_{n}", "")
        if not raw:
            if wage.strip() or deposit.strip():
                problems.append((f"id_{n}", f"member {n}: declared figures without an ID number"))
            continue
        try:
            number = idnumber.validate(raw)
        except idnumber.InvalidIdNumber as exc:
            problems.append((f"id_{n}", f"member {n}: {exc}"))
            continue
        if number in seen:
            problems.append((f"id_{n}", f"member {n}: the same ID number twice"))
        seen.add(number)
        figures = []
        for label, value in (("wage", wage), ("deposit", deposit)):
            try:
                figures.append(yuan_to_fen(value))
            except ValueError as exc:
                problems.append((f"{label}_{n}", f"member {n}: {exc}"))
                figures.append(None)
        members.append(MemberInput(number, figures[0], figures[1]))
    if not members and not any(f.startswith("id_") for f, _ in problems):
        problems.append(("id_1", "a household has at least one member"))
    try:
        days = int(fields.get("consent_days", "30") or "30")
        if not 1 <= days <= 366:
            raise ValueError
    except ValueError:
        problems.append(("consent_days", "consent days must be 1 to 366"))
        days = 30
    if problems:
        raise FormErrors(problems)
    return CaseInput(region, purpose, applicant, notes, tuple(members), days)


@dataclass(frozen=True)
class Case:
    """A stored case; `members` hold the ID numbers (this province's own applicants), shown masked only."""

    id: str
    office: str
    created_by: str
    created_ms: int
    updated_ms: int
    status: Status
    region: str
    purpose: str
    applicant: str
    notes: str
    members: tuple[MemberInput, ...]
    consent_id: str
    consent_expires_ms: int
    evidence_sha256: str
    evidence_file: str
    result: dict[str, Any] | None
    record: str
    checked_ms: int

    def days_open(self, now_ms: int | None = None) -> int:
        return ((now_ms or _now_ms()) - self.created_ms) // DAY_MS


_COLUMNS: Final[str] = ("id, office, created_by, created_ms, updated_ms, status, region, purpose, applicant, notes, members, "
                        "consent_id, consent_expires_ms, evidence_sha256, evidence_file, result, record, checked_ms")


def new_case_id() -> str:
    return "c" + secrets.token_hex(5)


class Cases:
    """The cases table."""

    def __init__(self, db: WebDb) -> None:
        self.db = db

    def add(self, case_id: str, office: str, account_id: str, data: CaseInput, *, consent_id: str,
            consent_expires_ms: int, evidence_sha256: str, evidence_file: str) -> Case:
        now = _now_ms()
        members = json.dumps([[m.id_number, m.wage, m.deposit] for m in data.members])
        with self.db.tx() as conn:
            conn.execute(f"INSERT INTO cases({_COLUMNS}) VALUES ({', '.join('?' * 18)})",
                         (case_id, office, account_id, now, now, Status.OPEN.value, data.region, data.purpose,
                          data.applicant, data.notes, members, consent_id, consent_expires_ms, evidence_sha256,
                          evidence_file, "", "", 0))
        case = self.get(case_id)
        assert case is not None
        return case

    def get(self, case_id: str) -> Case | None:
        row = self.db.one(f"SELECT {_COLUMNS} FROM cases WHERE id = ?", (case_id,))
        return None if row is None else _case(row)

    def list(self, office: str | None = None, limit: int = 500) -> list[Case]:
        if office is None:
            rows = self.db.all(f"SELECT {_COLUMNS} FROM cases ORDER BY created_ms DESC LIMIT ?", (limit,))
        else:
            rows = self.db.all(f"SELECT {_COLUMNS} FROM cases WHERE office = ? ORDER BY created_ms DESC LIMIT ?",
                               (office, limit))
        return [_case(r) for r in rows]

    def set_result(self, case_id: str, result: dict[str, Any], record: str) -> None:
        now = _now_ms()
        with self.db.tx() as conn:
            conn.execute("UPDATE cases SET result = ?, record = ?, checked_ms = ?, updated_ms = ?, status = ? "
                         "WHERE id = ? AND status IN ('open', 'checked')",
                         (json.dumps(result, ensure_ascii=False), record, now, now, Status.CHECKED.value, case_id))

    def set_status(self, case_id: str, status: Status) -> None:
        with self.db.tx() as conn:
            conn.execute("UPDATE cases SET status = ?, updated_ms = ? WHERE id = ?", (status.value, _now_ms(), case_id))


def _case(row: tuple[Any, ...]) -> Case:
    values = list(row)
    values[5] = Status(values[5])
    values[10] = tuple(MemberInput(*m) for m in json.loads(values[10]))
    values[15] = json.loads(values[15]) if values[15] else None
    return Case(*values)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
