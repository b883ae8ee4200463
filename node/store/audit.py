"""The tamper-evident audit log: who asked what, under which consent, and what was decided.

Every verification a node answers or refuses, and every consent, routing and discovery
decision of the coordinator, becomes one `AuditRecord` in a hash chain (`HashChain`, table
``audit``) in ``<data_dir>/audit.sqlite``. If a record cannot be written durably, no answer is
given: `AsyncAuditor.record` raises `AuditUnavailable` (a `Refusal` with code UNAVAILABLE).

The record contract
-------------------
A record holds only: the time, the request id, the requester (province code, "coordinator" or
a member identity), the purpose, the consent id, the data item codes touched and how many
checks the query made on each, the SHA-256 of the answer body the node signed (empty for
refusals), the decision, and a small map of public statuses (e.g. per-province routing
status). It NEVER holds an ID number, a subject token, a data value, an operand, an outcome,
a key or a certificate. Every field is checked against a narrow pattern on construction, and
any string containing a valid resident ID number is refused; a peer-supplied request id that
is not valid (`node.domain.request_ids`) is recorded as "invalid", never as it was sent.
`AuditRecord.to_json` emits exactly `RECORD_KEYS`; records written before ``checks`` existed
(`LEGACY_RECORD_KEYS`) still parse, with no counts. A record of a batch (one decision for many
households, e.g. a holder's contributions to many household rounds or its answers to one
`VerifyBatch`) adds ``batch``: per household the request id, consent id and outcome digest its own record would have carried
(`BatchEntry`), so one record per batch loses nothing a record per household would hold.

Checkpoints
-----------
A node signs its chain head as a `Checkpoint` (canonical JSON ``{"at_ms", "head", "index",
"member", "prev_digest", "prev_index"}``, domain ``hedui/v1/audit-checkpoint``; ``prev_*`` name
the checkpoint it extends: its index and the SHA-256 of its body), keeps a copy in
``<data_dir>/audit-checkpoints.jsonl`` and lodges it with the coordinator
(`CheckpointStore`, which appends it to the coordinator's own chain). The node's operator
can rewrite the node's history and recompute every hash (and re-sign local checkpoints with
the node's key), but cannot change what the coordinator holds: verifying against the
coordinator's latest checkpoint (``hedui audit verify --checkpoint FILE``) catches any rewrite
of entries up to that checkpoint's index. The coordinator refuses (and records) a checkpoint
that does not extend the one it holds for the member: another previous checkpoint, a lower
index, or the same index with another head. The checkpoints a member lodged thus form one
signed sequence the coordinator can neither reorder nor thin out without it showing.

Retention
---------
`AuditLog.prune` removes the prefix of entries older than ``retention_days`` (default 190,
at least `MIN_RETENTION_DAYS`) in one transaction: it appends an ``audit.prune`` entry naming
the new anchor (first retained index and its prev_hash), stores the anchor in ``audit_meta``,
drops the no-delete guard, deletes the prefix and re-creates the guard (SQLite DDL is
transactional). `AuditLog.verify` starts from the anchor and requires the latest
``audit.prune`` entry to name it. Prune never removes an entry newer than the cutoff, never
removes the newest entry, and refuses to run on a log that does not verify (it would destroy
the evidence). Export first: pruned entries are gone.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import hashlib
import json
import re
import sqlite3
import struct
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from google.protobuf.message import DecodeError

from node import files
from node.crypto import signing
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.domain import idnumber, request_ids
from node.errors import BadInput, ErrorCode, HeduiError, Refusal
from node.inflight import InFlight
from node.store.chain import BROKEN, CHECKPOINT as CHECKPOINT_REASON, GENESIS, HASH_BYTES, MISMATCH
from node.store.chain import _GUARDS  # the exact guard DDL, so prune re-creates it identically
from node.store.chain import Entry, HashChain, entry_hash
from node.store.errors import StoreCorrupt, StoreError
from node.wire.v1 import coordinator_pb2, verification_pb2

if TYPE_CHECKING:
    from node.service.verification import Decided

TABLE: Final[str] = "audit"
META_TABLE: Final[str] = "audit_meta"
AUDIT_DB: Final[str] = "audit.sqlite"
CHECKPOINT_FILE: Final[str] = "audit-checkpoints.jsonl"

KIND_RECORD: Final[str] = "audit.record"
KIND_PRUNE: Final[str] = "audit.prune"
KIND_CHECKPOINT: Final[str] = "audit.checkpoint"
KIND_CHECKPOINT_CONFLICT: Final[str] = "audit.checkpoint.conflict"

ANSWERED: Final[str] = "answered"
CONSENT_GRANT: Final[str] = "consent.grant"
CONSENT_REVOKE: Final[str] = "consent.revoke"
ROUTE: Final[str] = "route"
DISCOVER: Final[str] = "discover"

DEFAULT_RETENTION_DAYS: Final[int] = 190
MIN_RETENTION_DAYS: Final[int] = 183  # six months
DAY_MS: Final[int] = 86_400_000
MAX_BATCH: Final[int] = 1024
_BUSY_TIMEOUT_S: Final[float] = 30.0
_MAX_CHECKPOINT_BYTES: Final[int] = 64 * 1024
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1

#: The only keys an audit record's JSON ever has.
RECORD_KEYS: Final[frozenset[str]] = frozenset({
    "at_ms", "request_id", "requester", "purpose", "consent_id", "items", "checks", "outcome_digest",
    "decision", "extra",
})  # fmt: skip
#: The keys of records written before checks were counted per item (they still parse and verify).
LEGACY_RECORD_KEYS: Final[frozenset[str]] = RECORD_KEYS - {"checks"}
#: The keys of a batch record: every record key plus the per-household entries.
BATCH_RECORD_KEYS: Final[frozenset[str]] = RECORD_KEYS | {"batch"}
BATCH_ENTRY_KEYS: Final[frozenset[str]] = frozenset({"request_id", "consent_id", "outcome_digest"})
MAX_BATCH_ENTRIES: Final[int] = 1024
#: The keys of a checkpoint body; `LEGACY_CHECKPOINT_KEYS` those lodged before checkpoints were linked.
CHECKPOINT_KEYS: Final[frozenset[str]] = frozenset({"member", "index", "head", "at_ms", "prev_index", "prev_digest"})
LEGACY_CHECKPOINT_KEYS: Final[frozenset[str]] = frozenset({"member", "index", "head", "at_ms"})
#: The `prev` of a member's first linked checkpoint: it extends nothing.
NO_PREVIOUS: Final[tuple[int, bytes]] = (0, GENESIS)
_PRUNE_KEYS: Final[frozenset[str]] = frozenset({
    "anchor_idx", "anchor_prev", "cutoff_ms", "now_ms", "removed", "retention_days",
})  # fmt: skip

_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{0,128}")
_PURPOSE_RE: Final = re.compile(r"[A-Za-z0-9._-]{0,64}")
_ITEM_RE: Final = re.compile(r"[a-z][a-z0-9_.]{0,63}")
_DIGEST_RE: Final = re.compile(r"(?:[0-9a-f]{64})?")
_DECISION_RE: Final = re.compile(r"[a-z][a-z0-9_.]{0,31}(?::[A-Z][A-Z0-9_]{0,31})?")
_EXTRA_KEY_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,32}")
_EXTRA_VALUE_RE: Final = re.compile(r"[A-Za-z0-9._:-]{0,32}")
_MAX_ITEMS: Final[int] = 64
_MAX_CHECK_COUNT: Final[int] = 2**31 - 1
_MAX_EXTRA: Final[int] = 64


# -- records ---------------------------------------------------------------------------------


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


#: Field values already scanned and found to hold no ID number (a batch's entries share their request
#: id, requester and often consent ids: each distinct value is scanned once). Never holds a value
#: that failed the scan; emptied when full.
_SCANNED_CLEAN: set[str] = set()
_SCANNED_MAX: Final[int] = 8192


def _check(name: str, value: object, pattern: re.Pattern[str], *, scan: bool = True) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"audit record field {name} is not of the allowed form")
    if scan and value not in _SCANNED_CLEAN:
        if idnumber.contains_id_number(value):
            raise ValueError(f"audit record field {name} must not contain an ID number")
        if len(_SCANNED_CLEAN) >= _SCANNED_MAX:
            _SCANNED_CLEAN.clear()
        _SCANNED_CLEAN.add(value)
    return value


def refused(code: ErrorCode) -> str:
    """The decision string of a refusal: "refused:<ERRORCODE NAME>"."""
    return f"refused:{code.name}"


@dataclass(frozen=True, slots=True)
class BatchEntry:
    """One household of a batch record: what that household's own record would carry beside the shared fields."""

    request_id: str
    consent_id: str = ""
    outcome_digest: str = ""

    def __post_init__(self) -> None:
        _check("batch request_id", self.request_id, _ID_RE)
        _check("batch consent_id", self.consent_id, _ID_RE)
        _check("batch outcome_digest", self.outcome_digest, _DIGEST_RE, scan=False)

    def to_dict(self) -> dict[str, str]:
        return {"request_id": self.request_id, "consent_id": self.consent_id, "outcome_digest": self.outcome_digest}


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited decision. See the module docstring for what it may (never) contain."""

    at_ms: int
    request_id: str
    requester: str
    decision: str
    purpose: str = ""
    consent_id: str = ""
    items: tuple[str, ...] = ()
    outcome_digest: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)
    #: item code -> how many checks of the query compared it (empty: not counted, e.g. older records).
    checks: Mapping[str, int] = field(default_factory=dict)
    #: A batch record's households (empty for a record of one request).
    batch: tuple[BatchEntry, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.at_ms, bool) or not isinstance(self.at_ms, int) or not _I64_MIN <= self.at_ms <= _I64_MAX:
            raise ValueError("audit record at_ms must be a 64-bit integer")
        _check("request_id", self.request_id, _ID_RE)
        _check("requester", self.requester, _ID_RE)
        _check("consent_id", self.consent_id, _ID_RE)
        _check("purpose", self.purpose, _PURPOSE_RE)
        # A SHA-256 in hex cannot carry an ID number, but may by chance contain a digit run that
        # passes the checksum: it is not scanned (that would refuse about one answer in 10,000).
        _check("outcome_digest", self.outcome_digest, _DIGEST_RE, scan=False)
        _check("decision", self.decision, _DECISION_RE)
        if isinstance(self.items, str) or len(self.items) > _MAX_ITEMS:
            raise ValueError(f"audit record items must be a sequence of at most {_MAX_ITEMS} item codes")
        items = tuple(sorted({_check("items", i, _ITEM_RE) for i in self.items}))
        if not isinstance(self.extra, Mapping) or len(self.extra) > _MAX_EXTRA:
            raise ValueError(f"audit record extra must be a mapping of at most {_MAX_EXTRA} entries")
        extra = {_check("extra key", k, _EXTRA_KEY_RE): _check("extra value", v, _EXTRA_VALUE_RE)
                 for k, v in sorted(self.extra.items())}
        if not isinstance(self.checks, Mapping) or len(self.checks) > _MAX_ITEMS:
            raise ValueError(f"audit record checks must be a mapping of at most {_MAX_ITEMS} item codes")
        checks = {_check("checks key", k, _ITEM_RE): _count(v) for k, v in sorted(self.checks.items())}
        if checks and set(checks) != set(items):
            raise ValueError("audit record checks must count every item and nothing else")
        if isinstance(self.batch, str | bytes) or len(self.batch) > MAX_BATCH_ENTRIES or \
                not all(isinstance(e, BatchEntry) for e in self.batch):
            raise ValueError(f"audit record batch must be at most {MAX_BATCH_ENTRIES} BatchEntry values")
        object.__setattr__(self, "batch", tuple(self.batch))
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "extra", extra)
        object.__setattr__(self, "checks", checks)

    @property
    def key(self) -> str:
        """The chain key: the request id, else the consent id."""
        return self.request_id or self.consent_id

    def to_dict(self) -> dict[str, Any]:
        out = {
            "at_ms": self.at_ms, "request_id": self.request_id, "requester": self.requester,
            "purpose": self.purpose, "consent_id": self.consent_id, "items": list(self.items),
            "checks": dict(self.checks), "outcome_digest": self.outcome_digest, "decision": self.decision,
            "extra": dict(self.extra),
        }  # fmt: skip
        if self.batch:  # a record of one request keeps exactly RECORD_KEYS
            out["batch"] = [e.to_dict() for e in self.batch]
        return out

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys, compact, ASCII): the chain payload."""
        return _canonical(self.to_dict())

    @classmethod
    def from_json(cls, payload: bytes) -> AuditRecord:
        """Parse a payload written by `to_json` (or before checks were counted); ValueError if it is not one."""
        try:
            raw = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise ValueError("audit payload is not JSON") from None
        if not isinstance(raw, dict) or set(raw) not in (RECORD_KEYS, LEGACY_RECORD_KEYS, BATCH_RECORD_KEYS):
            raise ValueError("audit payload does not have exactly the record keys")
        checks = raw.get("checks", {})
        if not isinstance(raw["items"], list) or not isinstance(raw["extra"], dict) or not isinstance(checks, dict):
            raise ValueError("audit payload items/checks/extra have the wrong type")
        entries = raw.get("batch", [])
        if not isinstance(entries, list) or ("batch" in raw and not entries) or \
                not all(isinstance(e, dict) and set(e) == BATCH_ENTRY_KEYS for e in entries):
            raise ValueError("audit payload batch entries have the wrong form")
        return cls(
            at_ms=raw["at_ms"], request_id=raw["request_id"], requester=raw["requester"],
            decision=raw["decision"], purpose=raw["purpose"], consent_id=raw["consent_id"],
            items=tuple(raw["items"]), outcome_digest=raw["outcome_digest"], extra=raw["extra"], checks=checks,
            batch=tuple(BatchEntry(**e) for e in entries),
        )  # fmt: skip


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_CHECK_COUNT:
        raise ValueError("audit record check counts must be positive integers")
    return value


def _consent_id(query: verification_pb2.QueryBody) -> str:
    if not query.HasField("consent") or not query.consent.body:
        return ""
    try:
        return verification_pb2.ConsentBody.FromString(query.consent.body).consent_id
    except DecodeError:
        return ""


def _clean(value: str, pattern: re.Pattern[str]) -> str:
    """`value` if it is of the allowed form (and holds no ID number), else ""."""
    try:
        return _check("", value, pattern)
    except ValueError:
        return ""


def answered(decided: Decided, answer_body: bytes, *, relayed: bool = False,
             at_ms: int | None = None) -> AuditRecord:
    """The record of an answer: `answer_body` is the serialized AnswerBody the node signs; `extra`
    says `via: coordinator` when relayed and `probes: N` when it used N of a probing budget."""
    query = decided.query
    return AuditRecord(
        at_ms=_now_ms() if at_ms is None else at_ms,
        request_id=query.request_id,
        requester=query.requester,
        decision=ANSWERED,
        purpose=query.purpose,
        consent_id=_consent_id(query),
        items=decided.items,
        checks=Counter(decided.items),
        outcome_digest=hashlib.sha256(answer_body).hexdigest(),
        extra={**({"via": "coordinator"} if relayed else {}), **({"probes": str(decided.probes)} if decided.probes else {})},
    )


def answered_batch(answers: Sequence[tuple[Decided, bytes]], *, relayed: bool = False,
                   at_ms: int | None = None) -> list[AuditRecord]:
    """The records of a batch's answers (decided, serialized AnswerBody): one per (requester, purpose,
    checks, probes) they share, each naming its queries (`batch_entry`: request id, consent id, answer
    digest), so each carries what `answered` would have for every one of them."""
    groups: dict[tuple[str, str, tuple[str, ...], int], list[BatchEntry]] = {}
    first: dict[tuple[str, str, tuple[str, ...], int], str] = {}
    for decided, body in answers:
        query = decided.query
        key = (query.requester, query.purpose, decided.items, decided.probes)
        first.setdefault(key, query.request_id)
        groups.setdefault(key, []).append(BatchEntry(query.request_id, decided.consent_id or _consent_id(query),
                                                     hashlib.sha256(body).hexdigest()))
    at = _now_ms() if at_ms is None else at_ms
    return [AuditRecord(at_ms=at, request_id=first[key], requester=requester, decision=ANSWERED, purpose=purpose,
                        items=items, checks=Counter(items), batch=tuple(entries[i:i + MAX_BATCH_ENTRIES]),
                        extra={**({"via": "coordinator"} if relayed else {}), **({"probes": str(probes)} if probes else {})})
            for key, entries in groups.items() for requester, purpose, items, probes in (key,)
            for i in range(0, len(entries), MAX_BATCH_ENTRIES)]


def per_query(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """An audit payload (or export row) as one dict per query it records: a batch record's entries
    each with the record's shared fields, any other record as itself."""
    entries = row.get("batch")
    if not entries:
        return [dict(row)]
    shared = {k: v for k, v in row.items() if k != "batch"}
    return [{**shared, **entry} for entry in entries]


def refusal(code: ErrorCode, *, query: verification_pb2.QueryBody | bytes | None = None,
            requester: str = "", relayed: bool = False, at_ms: int | None = None,
            request_id: str = "") -> AuditRecord:
    """The record of a refused query (or of a whole call: no `query`, the call's `request_id`).

    `query` may be the raw (unauthenticated) QueryBody bytes: its fields are taken only when
    they have the allowed form (a request id that is not valid is recorded as "invalid"), and
    `requester` (the authenticated caller, when known) wins over the requester the body claims.
    """
    body = verification_pb2.QueryBody()
    if isinstance(query, bytes):
        try:
            body.ParseFromString(query)
        except DecodeError:
            body = verification_pb2.QueryBody()
    elif query is not None:
        body = query
    counted = Counter(c.attribute for c in body.checks if _clean(c.attribute, _ITEM_RE))
    checks = dict(sorted(counted.items())[:_MAX_ITEMS])
    extra = {"via": "coordinator"} if relayed else {}
    if not requester and body.requester:
        extra["requester"] = "claimed"
    return AuditRecord(
        at_ms=_now_ms() if at_ms is None else at_ms,
        request_id=request_ids.shown(body.request_id or request_id),
        requester=_clean(requester or body.requester, _ID_RE),
        decision=refused(code),
        purpose=_clean(body.purpose, _PURPOSE_RE),
        consent_id=_clean(_consent_id(body), _ID_RE),
        items=tuple(checks),
        checks=checks,
        extra=extra,
    )


def coordinator_event(decision: str, *, requester: str, request_id: str = "", consent_id: str = "",
                      purpose: str = "", items: Iterable[str] = (), statuses: Mapping[str, str] | None = None,
                      at_ms: int | None = None, batch: Sequence[BatchEntry] = ()) -> AuditRecord:
    """A coordinator decision: consent.grant / consent.revoke / route / discover, or refused(code).

    `statuses` maps province code -> public status name (e.g. {"44": "OK", "51": "UNREACHABLE"}).
    The peer-supplied `consent_id`, `purpose` and `items` are kept only when well formed (else
    recorded empty) and a request id only when valid (else recorded "invalid"), so a malformed
    request is still audited; `decision`, `requester` and `statuses` come from the coordinator
    itself and must be well formed. `batch` (from `batch_entry`) names the households of a
    decision taken for many at once.
    """
    return AuditRecord(
        at_ms=_now_ms() if at_ms is None else at_ms, request_id=request_ids.shown(request_id), requester=requester,
        decision=decision, purpose=_clean(purpose, _PURPOSE_RE), consent_id=_clean(consent_id, _ID_RE),
        items=tuple(i for i in items if _clean(i, _ITEM_RE))[:_MAX_ITEMS], extra=dict(statuses or {}), batch=batch,
    )  # fmt: skip


def web_event(decision: str, *, province: str, account: str, request_id: str = "", case_id: str = "",
              consent_id: str = "", purpose: str = "", statuses: Mapping[str, str] | None = None,
              at_ms: int | None = None) -> AuditRecord:
    """An action in the caseworkers' web application (`hedui web`): who (the account's identifier,
    never a name or an ID number) did `decision` as `province`, on which case, under which consent.

    `account` and `case_id` go into `extra` ("account", "case"); `statuses` (public status names,
    e.g. per-province routing) beside them. Every field keeps the record contract's forms.
    """
    extra = {**(statuses or {}), "account": account}
    if case_id:
        extra["case"] = case_id
    return AuditRecord(
        at_ms=_now_ms() if at_ms is None else at_ms, request_id=request_ids.shown(request_id), requester=province,
        decision=decision, purpose=_clean(purpose, _PURPOSE_RE), consent_id=_clean(consent_id, _ID_RE), extra=extra,
    )  # fmt: skip


def batched(households: Iterable[tuple[str, str, Sequence[str], BatchEntry | None]], *, request_id: str,
            requester: str, extra: Mapping[str, str] | None = None, at_ms: int | None = None) -> list[AuditRecord]:
    """The records of a batch: one per (decision, purpose, items) its households share, each naming
    its households (`batch_entry`), so nothing a record per household would carry is lost. An
    entry None stands for the call itself (a decision with no household named)."""
    groups: dict[tuple[str, str, tuple[str, ...]], list[BatchEntry]] = {}
    for decision, purpose, items, entry in households:
        group = groups.setdefault((decision, purpose, tuple(sorted(set(items)))), [])
        if entry is not None:
            group.append(entry)
    at = _now_ms() if at_ms is None else at_ms
    return [AuditRecord(at_ms=at, request_id=request_ids.shown(request_id), requester=requester, decision=decision,
                        purpose=_clean(purpose, _PURPOSE_RE), items=items, extra=dict(extra or {}),
                        batch=tuple(entries[i:i + MAX_BATCH_ENTRIES]))
            for (decision, purpose, items), entries in groups.items()
            for i in range(0, max(1, len(entries)), MAX_BATCH_ENTRIES)]


def batch_entry(request_id: str, consent_id: str = "", outcome_digest: str = "") -> BatchEntry:
    """A batch record's household: a request id only when valid ("invalid" else), a consent id only when
    well formed (else empty); `outcome_digest` is this node's own SHA-256 hex (or empty)."""
    return BatchEntry(request_ids.shown(request_id), _clean(consent_id, _ID_RE), outcome_digest)


# -- the log ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckpointResult:
    """How one expected head fared: ok, mismatch, missing (beyond the head), pruned, unchecked."""

    index: int
    head: bytes
    status: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The outcome of `AuditLog.verify`; `first_bad`/`reason`/`bad_key` name the first problem."""

    ok: bool
    count: int
    first_bad: int | None
    reason: str | None
    bad_key: str | None
    anchor_index: int
    head_index: int
    head_hash: bytes
    checkpoints: tuple[CheckpointResult, ...] = ()

    def __bool__(self) -> bool:
        return self.ok


PRUNE_UNRECORDED: Final[str] = "entry {n}: history before it was removed without a recorded prune"
META_BAD: Final[str] = "audit_meta anchor is malformed"


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_S,
                                   isolation_level=None)
        else:
            conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open audit log {path}: {exc}") from None
    return conn


def _read_anchor(conn: sqlite3.Connection) -> tuple[int, bytes] | None:
    """(first retained idx, its prev_hash); (1, GENESIS) if never pruned; None if malformed."""
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (META_TABLE,)
    ).fetchone()
    if has_meta is None:
        return 1, GENESIS
    row = conn.execute(f"SELECT value FROM {META_TABLE} WHERE name = 'anchor'").fetchone()
    if row is None:
        return 1, GENESIS
    try:
        raw = json.loads(row[0])
        idx, prev = raw["idx"], bytes.fromhex(raw["prev"])
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(idx, int) or idx < 1 or len(prev) != HASH_BYTES or (idx == 1 and prev != GENESIS):
        return None
    return idx, prev


def _prune_anchor(payload: Any) -> tuple[int, bytes] | None:
    try:
        raw = json.loads(payload)
        if not isinstance(raw, dict) or set(raw) != _PRUNE_KEYS:
            return None
        return int(raw["anchor_idx"]), bytes.fromhex(raw["anchor_prev"])
    except (ValueError, TypeError, UnicodeDecodeError):
        return None


def _key_name(key: object) -> str:
    return str(key)[:128]


def _verify_conn(conn: sqlite3.Connection, expect: Sequence[tuple[int, bytes]]) -> AuditReport:
    """Stream the chain from its anchor, recomputing hashes; check expected heads on the way.

    Runs inside the caller's transaction (one snapshot of meta and rows).
    """
    anchor = _read_anchor(conn)
    if anchor is None:
        return AuditReport(False, 0, None, META_BAD, None, 0, 0, GENESIS,
                           tuple(CheckpointResult(i, h, "unchecked") for i, h in expect))
    anchor_idx, anchor_prev = anchor
    status = ["unchecked"] * len(expect)
    want: dict[int, list[int]] = {}
    for pos, (idx, digest) in enumerate(expect):
        if idx == anchor_idx - 1:  # the head just before the anchor: its hash is the anchor's prev
            status[pos] = "ok" if digest == anchor_prev else "mismatch"
        elif idx < anchor_idx:
            status[pos] = "pruned"
        else:
            want.setdefault(idx, []).append(pos)
    prev_idx, prev_hash = anchor_idx - 1, anchor_prev
    last_prune: tuple[int, bytes] | None = None
    count = 0

    def report(n: int | None, template: str | None, key: object = None) -> AuditReport:
        return AuditReport(
            ok=n is None and template is None and "mismatch" not in status, count=count, first_bad=n,
            reason=None if template is None else template.format(n=n), bad_key=None if key is None else _key_name(key),
            anchor_index=anchor_idx, head_index=prev_idx, head_hash=prev_hash,
            checkpoints=tuple(CheckpointResult(i, h, s) for (i, h), s in zip(expect, status, strict=True)),
        )  # fmt: skip

    first_mismatch = next((expect[p][0] for p, s in enumerate(status) if s == "mismatch"), None)
    if first_mismatch is not None:
        return report(first_mismatch, CHECKPOINT_REASON)
    rows = conn.execute(f"SELECT idx, at_ms, kind, key, payload, prev_hash, hash FROM {TABLE} ORDER BY idx")
    for idx, at_ms, kind, key, payload, stored_prev, stored in rows:
        if idx != prev_idx + 1 or stored_prev != prev_hash:
            return report(idx, BROKEN, key)
        try:
            digest: bytes | None = entry_hash(TABLE, idx, at_ms, kind, key, payload, stored_prev)
        except (AttributeError, TypeError, ValueError, struct.error):
            digest = None  # a column holds a value of the wrong type: tampered
        if digest != stored:
            return report(idx, MISMATCH, key)
        for pos in want.pop(idx, ()):
            if expect[pos][1] != stored:
                status[pos] = "mismatch"
                return report(idx, CHECKPOINT_REASON, key)
            status[pos] = "ok"
        if kind == KIND_PRUNE:
            last_prune = _prune_anchor(payload)
        prev_idx, prev_hash = idx, stored
        count += 1
    if want:
        for positions in want.values():
            for pos in positions:
                status[pos] = "missing"
        return report(min(want), CHECKPOINT_REASON)
    if anchor_idx > 1 and last_prune != (anchor_idx, anchor_prev):
        return report(anchor_idx, PRUNE_UNRECORDED)
    if anchor_idx > 1 and count == 0:
        return report(anchor_idx, BROKEN)
    return report(None, None)


class AuditLog:
    """The audit hash chain in one SQLite file, with retention pruning and anchored verification."""

    def __init__(self, path: Path, *, retention_days: int = DEFAULT_RETENTION_DAYS) -> None:
        self.path = Path(path)
        self.retention_days = check_retention(retention_days)
        self.chain = HashChain(self.path, table=TABLE)
        try:
            conn = _connect(self.path, readonly=False)
            try:
                conn.execute(f"CREATE TABLE IF NOT EXISTS {META_TABLE}(name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            finally:
                conn.close()
        except (sqlite3.Error, StoreError) as exc:
            self.chain.close()
            raise StoreError(f"cannot open audit log {self.path}: {exc}") from None

    @classmethod
    def open_readonly(cls, path: Path, *, retention_days: int = DEFAULT_RETENTION_DAYS) -> AuditLog:
        """Open an existing audit log read-only (for verify and export)."""
        self = cls.__new__(cls)
        self.path = Path(path)
        self.retention_days = check_retention(retention_days)
        self.chain = HashChain.open_readonly(self.path, TABLE)
        return self

    @classmethod
    def for_member(cls, data_dir: Path, config_path: Path | None = None) -> AuditLog:
        """`<data_dir>/audit.sqlite` with the retention configured in `config_path` ([audit])."""
        days = retention_days(config_path) if config_path is not None else DEFAULT_RETENTION_DAYS
        return cls(Path(data_dir) / AUDIT_DB, retention_days=days)

    def close(self) -> None:
        self.chain.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- writes ----------------------------------------------------------------------------

    def record(self, rec: AuditRecord, *, at_ms: int | None = None) -> Entry:
        """Write one record durably (committed, fsynced) and return its entry."""
        return self.record_many([rec], at_ms=at_ms)[0]

    def record_many(self, records: Sequence[AuditRecord], *, at_ms: int | None = None) -> list[Entry]:
        """Write several records in one transaction (all or none); they share the entry at_ms."""
        items = []
        for rec in records:
            if not isinstance(rec, AuditRecord):
                raise TypeError("record_many takes AuditRecord values")
            items.append((KIND_RECORD, rec.key, rec.to_json()))
        return self.chain.append_many(items, at_ms=at_ms)

    def prune(self, now_ms: int | None = None) -> int:
        """Remove the prefix of entries older than the retention; return how many were removed.

        Records an ``audit.prune`` entry in the same transaction. Refuses (StoreCorrupt) when
        the log does not verify. Removes nothing newer than ``now - retention_days``.

        The full verification runs on a read snapshot first, so writers (answers waiting
        for their audit record) are blocked only for the delete itself; under the write lock
        the verified head is checked to be unchanged and only entries up to it are removable.
        """
        now = _now_ms() if now_ms is None else int(now_ms)
        cutoff = now - self.retention_days * DAY_MS
        checked = self.verify()
        if not checked.ok:
            raise StoreCorrupt(f"audit log does not verify ({checked.reason}); not pruning")
        conn = _connect(self.path, readonly=False)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed = self._prune_locked(conn, checked, now, cutoff)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            if removed:
                try:  # do not leave the removed content in the WAL file either
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass
            return removed
        except sqlite3.Error as exc:
            raise StoreError(f"pruning audit log {self.path} failed: {exc}") from None
        finally:
            conn.close()

    def _prune_locked(self, conn: sqlite3.Connection, checked: AuditReport, now: int, cutoff: int) -> int:
        anchor = _read_anchor(conn)
        row = conn.execute(f"SELECT hash FROM {TABLE} WHERE idx = ?", (checked.head_index,)).fetchone()
        if (anchor is None or anchor[0] != checked.anchor_index
                or (checked.count and (row is None or row[0] != checked.head_hash))):
            raise StoreError("audit log changed while it was being checked; prune again")
        if checked.count == 0:
            return 0
        head_idx, head_hash = self._head_of(conn)
        keep = conn.execute(f"SELECT min(idx) FROM {TABLE} WHERE at_ms >= ?", (cutoff,)).fetchone()[0]
        # Only entries that were verified may go; if all are old the prune entry becomes the anchor.
        keep = min(checked.head_index + 1 if keep is None else keep, checked.head_index + 1)
        removed = int(conn.execute(f"SELECT count(*) FROM {TABLE} WHERE idx < ?", (keep,)).fetchone()[0])
        if removed == 0:
            return 0
        if keep == head_idx + 1:
            anchor_prev = head_hash
        else:
            anchor_prev = conn.execute(f"SELECT prev_hash FROM {TABLE} WHERE idx = ?", (keep,)).fetchone()[0]
        payload = _canonical({
            "anchor_idx": keep, "anchor_prev": anchor_prev.hex(), "cutoff_ms": cutoff, "now_ms": now,
            "removed": removed, "retention_days": self.retention_days,
        })  # fmt: skip
        at_ms, idx = _now_ms(), head_idx + 1
        digest = entry_hash(TABLE, idx, at_ms, KIND_PRUNE, "", payload, head_hash)
        conn.execute(f"INSERT INTO {TABLE}(idx, at_ms, kind, key, payload, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (idx, at_ms, KIND_PRUNE, "", payload, head_hash, digest))
        conn.execute(f"INSERT OR REPLACE INTO {META_TABLE}(name, value) VALUES ('anchor', ?)",
                     (json.dumps({"idx": keep, "prev": anchor_prev.hex()}),))
        conn.execute(f"DROP TRIGGER IF EXISTS {TABLE}_no_delete")
        conn.execute(f"DELETE FROM {TABLE} WHERE idx < ?", (keep,))
        conn.execute(_GUARDS["no_delete"].format(t=TABLE))
        return removed

    @staticmethod
    def _head_of(conn: sqlite3.Connection) -> tuple[int, bytes]:
        row = conn.execute(f"SELECT idx, hash FROM {TABLE} ORDER BY idx DESC LIMIT 1").fetchone()
        return (0, GENESIS) if row is None else (row[0], row[1])

    # -- reads -----------------------------------------------------------------------------

    def head(self) -> tuple[int, bytes]:
        return self.chain.head()

    def anchor(self) -> tuple[int, bytes]:
        """(first retained index, its prev_hash): (1, GENESIS) until the first prune."""
        conn = _connect(self.path, readonly=True)
        try:
            anchor = _read_anchor(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"reading audit log {self.path} failed: {exc}") from None
        finally:
            conn.close()
        if anchor is None:
            raise StoreCorrupt(META_BAD)
        return anchor

    def entries(self, *, since_ms: int | None = None, after: int = 0) -> Iterator[Entry]:
        return self.chain.entries(after=after, since_ms=since_ms)

    def missing_guards(self) -> tuple[str, ...]:
        return self.chain.missing_guards()

    def verify(self, expect: Iterable[tuple[int, bytes]] = ()) -> AuditReport:
        """Recompute every hash from the anchor; check each expected (index, head) on the way.

        An expected head older than the anchor is reported "pruned" and is not a failure.
        """
        expected = [(int(i), bytes(h)) for i, h in expect]
        for idx, digest in expected:
            if idx < 0 or len(digest) != HASH_BYTES:
                raise ValueError("expected heads must be (index >= 0, 32-byte hash)")
        conn = _connect(self.path, readonly=True)
        try:
            conn.execute("BEGIN")  # one snapshot for the anchor and the rows
            return _verify_conn(conn, expected)
        except sqlite3.Error as exc:
            raise StoreError(f"reading audit log {self.path} failed: {exc}") from None
        finally:
            conn.close()


def check_retention(days: object) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or days < MIN_RETENTION_DAYS:
        raise BadInput(f"audit retention_days must be an integer >= {MIN_RETENTION_DAYS} (six months)")
    return days


def retention_days(config_path: Path) -> int:
    """`[audit] retention_days` of a member config file (default 190)."""
    try:
        raw = files.parse_toml(Path(config_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"config file not found: {config_path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"cannot read config file {config_path}: {exc}") from None
    section = raw.get("audit", {})
    if not isinstance(section, dict):
        raise BadInput("config [audit] must be a table")
    return check_retention(section.get("retention_days", DEFAULT_RETENTION_DAYS))


def export_row(entry: Entry) -> dict[str, Any]:
    """One entry as a flat JSON-able dict: idx, at (ISO UTC), hash, kind and the payload fields."""
    row: dict[str, Any] = {
        "idx": entry.idx, "at": iso_utc(entry.at_ms), "hash": entry.hash.hex(), "kind": entry.kind,
    }  # fmt: skip
    try:
        payload = json.loads(entry.payload)
    except (ValueError, UnicodeDecodeError):
        payload = None
    if isinstance(payload, dict):
        for k, v in payload.items():
            row.setdefault(k, v)
    else:
        row["payload_error"] = "payload is not a JSON object"
    return row


def iso_utc(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- asynchronous, coalescing writes ---------------------------------------------------------


class AuditUnavailable(Refusal):
    """The audit record could not be written durably, so no answer may be given."""

    def __init__(self, detail: str = "audit log cannot be written") -> None:
        super().__init__(ErrorCode.UNAVAILABLE, detail)


class AsyncAuditor:
    """Group commit for the event loop: records submitted in one loop turn share one transaction.

    The first submitter schedules a flush with `loop.call_soon`; the batch is written by one
    worker thread (fsync off the event loop). While a batch is being written, new records
    queue up and go in the next batch, so under load each fsync carries everything that
    arrived during the previous one. `await record(rec)` returns the entry only once it is
    committed, and raises `AuditUnavailable` if the write failed. Each submission — one record
    or many (`submit_many`) — waits on one future, never one per record.
    """

    def __init__(self, log: AuditLog, *, max_batch: int = MAX_BATCH, in_flight: InFlight | None = None) -> None:
        self.log = log
        self.in_flight = in_flight
        self.max_batch = max_batch
        self.transactions = 0  # batches written (each one transaction, one commit fsync)
        self.records = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")
        # Submissions: their records, the one future they wait on, and whether it carries one entry or a list.
        self._pending: list[tuple[Sequence[AuditRecord], asyncio.Future[Any], bool]] = []
        self._waiting = 0  # records in `_pending`
        self._now = False  # a submission asked not to wait for the calls in flight
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._inflight = False
        self._closed = False
        self._idle: list[asyncio.Future[None]] = []

    async def record(self, rec: AuditRecord) -> Entry:
        """Write `rec` (batched with concurrent submissions); return its committed entry."""
        return await self.submit(rec)  # a cancelled caller cancels only its wait: the write still happens

    def submit(self, rec: AuditRecord) -> asyncio.Future[Entry]:
        """Queue `rec`; the future resolves once it is committed (AuditUnavailable if the write fails).

        With `in_flight` given, the write waits (at most ~2 ms) until every call in flight has
        submitted its record, so concurrent calls share one transaction and one fsync.
        """
        return self._submit((rec,), True, now=False)

    def submit_many(self, records: Sequence[AuditRecord]) -> asyncio.Future[list[Entry]]:
        """Queue `records` (written in order, in one transaction with whatever else waits) without waiting
        for the calls in flight; one future resolves with their entries once committed."""
        if not records:
            future: asyncio.Future[list[Entry]] = asyncio.get_running_loop().create_future()
            future.set_result([])
            return future
        return self._submit(records, False, now=True)

    def _submit(self, records: Sequence[AuditRecord], single: bool, *, now: bool) -> asyncio.Future[Any]:
        if self._closed:
            raise AuditUnavailable("audit log is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((records, future, single))
        self._waiting += len(records)
        self._now = self._now or now
        if self._scheduled:
            self._nudge(loop)
        else:
            self._schedule(loop)
        return future

    def _everyone(self) -> bool:
        return self._now or self.in_flight is None or self._waiting >= self.in_flight.n

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._scheduled or self._inflight or not self._pending:
            return
        self._scheduled = True
        if self._everyone():
            loop.call_soon(self._flush, loop)
        else:
            self._timer = loop.call_later(0.002, self._flush, loop)

    def _nudge(self, loop: asyncio.AbstractEventLoop) -> None:
        """A record arrived while a flush is held back: flush now if everyone has submitted."""
        timer = self._timer
        if timer is not None and self._everyone():
            timer.cancel()
            self._timer = None
            loop.call_soon(self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        self._timer = None
        if self._inflight or not self._pending:
            return
        taken, size = 0, 0  # whole submissions, up to max_batch records (at least one submission)
        for records, _, _ in self._pending:
            if taken and size + len(records) > self.max_batch:
                break
            taken += 1
            size += len(records)
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        self._waiting -= size
        self._now = self._now and bool(self._pending)
        self._inflight = True
        records = [r for group, _, _ in batch for r in group]
        try:
            job = self._executor.submit(self.log.record_many, records)
        except RuntimeError as exc:  # executor shut down
            self._inflight = False
            self._fail(batch, exc)
            return
        # Straight back to the loop from the writer thread: no asyncio wrapper future (and its extra loop turn).
        job.add_done_callback(lambda f: _call_back(loop, self._done, loop, batch, f))

    def _done(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Sequence[AuditRecord], asyncio.Future[Any], bool]],
              job: concurrent.futures.Future[list[Entry]]) -> None:
        self._inflight = False
        exc = job.exception() if not job.cancelled() else asyncio.CancelledError()
        if exc is not None:
            self._fail(batch, exc)
        else:
            entries = job.result()
            self.transactions += 1
            self.records += len(entries)
            at = 0
            for group, future, single in batch:
                n = len(group)
                if not future.done():
                    future.set_result(entries[at] if single else entries[at : at + n])
                at += n
        if self._pending and not self._scheduled:
            self._schedule(loop)
        elif not self._pending:
            idle, self._idle = self._idle, []
            for waiter in idle:
                if not waiter.done():
                    waiter.set_result(None)

    @staticmethod
    def _fail(batch: list[tuple[Sequence[AuditRecord], asyncio.Future[Any], bool]], exc: BaseException) -> None:
        for _, future, _ in batch:
            if not future.done():
                error = AuditUnavailable()  # the public message; the cause stays in __cause__ for logs
                error.__cause__ = exc
                future.set_exception(error)

    async def aclose(self) -> None:
        """Wait for queued records to be written, then stop the worker thread."""
        self._closed = True
        if self._pending or self._inflight or self._scheduled:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            await waiter
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        """Stop accepting records and stop the worker (does not close the AuditLog)."""
        self._closed = True
        self._executor.shutdown(wait=True)


def _call_back(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """Run `callback(*args)` on `loop` from another thread (nothing to do once the loop is closed)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


# -- checkpoints -----------------------------------------------------------------------------


class CheckpointInvalid(HeduiError):
    """A checkpoint is malformed, not validly signed, or not the expected member's."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A member's statement "my audit chain had `index` entries ending in `head` at `at_ms`, extending `prev`".

    `prev` is (index, SHA-256 of the body) of the checkpoint this one extends (`NO_PREVIOUS` for
    the first); None only in a legacy checkpoint lodged before checkpoints were linked.
    """

    member: str
    index: int
    head: bytes
    at_ms: int
    prev: tuple[int, bytes] | None = None

    @property
    def expect_head(self) -> tuple[int, bytes]:
        return self.index, self.head

    @property
    def link(self) -> tuple[int, bytes]:
        """What the next checkpoint names as its previous one: (this index, SHA-256 of this body)."""
        return self.index, hashlib.sha256(self.body()).digest()

    def body(self) -> bytes:
        fields: dict[str, Any] = {"member": self.member, "index": self.index, "head": self.head.hex(), "at_ms": self.at_ms}
        if self.prev is not None:
            fields.update(prev_index=self.prev[0], prev_digest=self.prev[1].hex())
        return _canonical(fields)

    @classmethod
    def parse(cls, body: bytes) -> Checkpoint:
        try:
            raw = files.parse_json(body)
        except (ValueError, UnicodeDecodeError):
            raise CheckpointInvalid("checkpoint body is not JSON") from None
        if not isinstance(raw, dict) or set(raw) not in (CHECKPOINT_KEYS, LEGACY_CHECKPOINT_KEYS):
            raise CheckpointInvalid("checkpoint body does not have exactly member, index, head, at_ms, prev_index, "
                                    "prev_digest")
        member, index, head, at_ms = raw["member"], raw["index"], raw["head"], raw["at_ms"]
        if not isinstance(member, str) or not _ID_RE.fullmatch(member) or not member:
            raise CheckpointInvalid("checkpoint member is malformed")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise CheckpointInvalid("checkpoint index is malformed")
        if isinstance(at_ms, bool) or not isinstance(at_ms, int) or not 0 <= at_ms <= _I64_MAX:
            raise CheckpointInvalid("checkpoint time is malformed")
        try:
            head_b = bytes.fromhex(head) if isinstance(head, str) else b""
        except ValueError:
            head_b = b""
        if len(head_b) != HASH_BYTES or (index == 0 and head_b != GENESIS):
            raise CheckpointInvalid("checkpoint head is malformed")
        checkpoint = cls(member, index, head_b, at_ms, _parse_prev(raw) if "prev_index" in raw else None)
        if checkpoint.body() != body:
            raise CheckpointInvalid("checkpoint body is not in canonical form")
        return checkpoint


def _parse_prev(raw: dict[str, Any]) -> tuple[int, bytes]:
    index, digest = raw["prev_index"], raw["prev_digest"]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= _I64_MAX:
        raise CheckpointInvalid("checkpoint prev_index is malformed")
    try:
        digest_b = bytes.fromhex(digest) if isinstance(digest, str) else b""
    except ValueError:
        digest_b = b""
    if len(digest_b) != HASH_BYTES or (digest_b == GENESIS and index != 0):
        raise CheckpointInvalid("checkpoint prev_digest is malformed")
    return index, digest_b


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint with its signature, as sent to the coordinator (`AuditCheckpoint`)."""

    checkpoint: Checkpoint
    message: coordinator_pb2.AuditCheckpoint

    @property
    def blob(self) -> bytes:
        return self.message.SerializeToString(deterministic=True)

    def to_json_line(self) -> str:
        """One line of audit-checkpoints.jsonl; the `blob` is authoritative, the rest is for humans."""
        cp = self.checkpoint
        return json.dumps({"member": cp.member, "index": cp.index, "head": cp.head.hex(), "at": iso_utc(cp.at_ms),
                           "blob": base64.b64encode(self.blob).decode()}, sort_keys=True)


def make_checkpoint(log: AuditLog | HashChain, signer: signing.Signer, member_identity: str, *,
                    prev: tuple[int, bytes] = NO_PREVIOUS, at_ms: int | None = None) -> SignedCheckpoint:
    """Sign the current head of `log` as `member_identity`, extending the checkpoint `prev` names (its `link`)."""
    index, head = log.head()
    return sign_checkpoint(Checkpoint(member_identity, index, head, _now_ms() if at_ms is None else at_ms, prev), signer)


def sign_checkpoint(checkpoint: Checkpoint, signer: signing.Signer) -> SignedCheckpoint:
    """Sign `checkpoint` (its member must be the signer's identity for anyone to accept it)."""
    body = checkpoint.body()
    Checkpoint.parse(body)  # the member identity must be of the allowed form
    message = coordinator_pb2.AuditCheckpoint(body=body, signature=signer.sign(signing.CHECKPOINT, body))
    return SignedCheckpoint(checkpoint, message)


def _message(blob: bytes | coordinator_pb2.AuditCheckpoint) -> coordinator_pb2.AuditCheckpoint:
    if isinstance(blob, coordinator_pb2.AuditCheckpoint):
        return blob
    if not isinstance(blob, bytes) or len(blob) > _MAX_CHECKPOINT_BYTES:
        raise CheckpointInvalid("checkpoint must be at most 64 KiB of bytes")
    message = coordinator_pb2.AuditCheckpoint()
    try:
        message.ParseFromString(blob)
    except DecodeError:
        raise CheckpointInvalid("checkpoint does not parse") from None
    return message


def verify_checkpoint(blob: bytes | coordinator_pb2.AuditCheckpoint, verifier: signing.Verifier, *,
                      member: str | None = None, at_signing_time: bool = False) -> Checkpoint:
    """Check a signed checkpoint; return it. Raises CheckpointInvalid.

    The signer's certificate must name the checkpoint's member (and `member`, when given).
    `at_signing_time` checks the certificate as of the checkpoint's time (for offline audits of
    old checkpoints); by default it must be valid now.
    """
    message = _message(blob)
    checkpoint = Checkpoint.parse(message.body)
    at = datetime.fromtimestamp(checkpoint.at_ms / 1000, UTC) if at_signing_time else None
    try:
        verified = verifier.verify(message.signature, signing.CHECKPOINT, message.body, at=at)
    except (SignatureInvalid, CertificateRejected) as exc:
        raise CheckpointInvalid(f"checkpoint signature not accepted: {exc}") from None
    if verified.identity.identity != checkpoint.member:
        raise CheckpointInvalid("checkpoint is signed by another member than it names")
    if member is not None and checkpoint.member != member:
        raise CheckpointInvalid(f"checkpoint is {checkpoint.member}'s, not {member}'s")
    return checkpoint


def signed_from_blob(blob: bytes | coordinator_pb2.AuditCheckpoint, verifier: signing.Verifier, **kw: Any) -> SignedCheckpoint:
    message = _message(blob)
    return SignedCheckpoint(verify_checkpoint(message, verifier, **kw), message)


def read_checkpoint_blobs(path: Path) -> list[tuple[int, bytes | None, str | None]]:
    """(line number, blob or None, problem or None) for each checkpoint in a file.

    The file is either JSON lines (as audit-checkpoints.jsonl or `hedui audit export-checkpoint`
    write them) or one serialized AuditCheckpoint. An unterminated last line (a write cut short
    by a crash) is skipped.
    """
    data = Path(path).read_bytes()
    if not data.lstrip().startswith(b"{"):
        return [(1, data, None)]
    out: list[tuple[int, bytes | None, str | None]] = []
    lines = data.split(b"\n")
    complete = lines[:-1] if not data.endswith(b"\n") else lines
    for n, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            raw = files.parse_json(line)
            out.append((n, base64.b64decode(raw["blob"], validate=True), None))
        except (ValueError, KeyError, TypeError, binascii.Error):
            out.append((n, None, "not a checkpoint line"))
    return out


class CheckpointFile:
    """The node's own append-only copy of the checkpoints it signed (audit-checkpoints.jsonl)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, signed: SignedCheckpoint) -> None:
        """Append one line and fsync it."""
        line = (signed.to_json_line() + "\n").encode()
        try:
            files.append(self.path, line)  # 0600, a planted symlink refused
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror}") from None

    def read(self) -> list[tuple[int, bytes | None, str | None]]:
        if not self.path.exists():
            return []
        return read_checkpoint_blobs(self.path)

    def last_link(self) -> tuple[int, bytes]:
        """The `link` of the last readable checkpoint in the file (`NO_PREVIOUS` if none): what the next extends."""
        for _, blob, _ in reversed(self.read()):
            if blob is None:
                continue
            try:
                return Checkpoint.parse(_message(blob).body).link
            except CheckpointInvalid:
                continue
        return NO_PREVIOUS


class NodeCheckpointer:
    """Makes, keeps and lodges the node's checkpoints; call `run_once` periodically."""

    def __init__(self, log: AuditLog, signer: signing.Signer, identity: str, file: CheckpointFile) -> None:
        self.log = log
        self.signer = signer
        self.identity = identity
        self.file = file
        self._pending: SignedCheckpoint | None = None
        self._lodged: tuple[int, bytes] | None = None
        self._prev: tuple[int, bytes] | None = None  # the link of the checkpoint the coordinator holds; None: ask
        #: (index lodged before, index the coordinator now holds) when it holds less than this node lodged
        self.went_back: tuple[int, int] | None = None

    def held(self, message: coordinator_pb2.AuditCheckpoint) -> None:
        """Take `message` (LatestCheckpoint's answer; empty: none held) as the checkpoint to extend."""
        before = self._lodged
        if not message.body:
            self._lodged, self._prev = None, NO_PREVIOUS
        else:
            checkpoint = Checkpoint.parse(message.body)
            if checkpoint.member != self.identity:
                raise CheckpointInvalid("the coordinator answered with another member's checkpoint")
            self._lodged, self._prev = checkpoint.expect_head, checkpoint.link
        now = 0 if self._lodged is None else self._lodged[0]
        if before is not None and now < before[0]:
            self.went_back = (before[0], now)

    def make(self) -> SignedCheckpoint | None:
        """A new checkpoint kept in the local file if the head moved since the last lodged one."""
        assert self._prev is not None, "held() first"
        head = self.log.head()
        if head == self._lodged:
            return None
        pending = self._pending
        if pending is None or pending.checkpoint.expect_head != head or pending.checkpoint.prev != self._prev:
            signed = make_checkpoint(self.log, self.signer, self.identity, prev=self._prev)
            self.file.append(signed)
            self._pending = signed
        return self._pending

    async def run_once(self, submit: Callable[[coordinator_pb2.AuditCheckpoint], Awaitable[Any]],
                       latest: Callable[[], Awaitable[coordinator_pb2.AuditCheckpoint]]) -> SignedCheckpoint | None:
        """Make a checkpoint extending the one held (asking `latest()` when unknown) and `await submit(message)`.

        Errors propagate (retry later); after one, the held checkpoint is asked for again (an
        acknowledgement may have been lost, or the coordinator holds another one).
        """
        if self._prev is None:
            self.held(await latest())
        signed = await asyncio.get_running_loop().run_in_executor(None, self.make)
        if signed is None:
            return None
        try:
            await submit(signed.message)
        except BaseException:
            self._prev = None
            raise
        self._lodged, self._prev, self._pending = signed.checkpoint.expect_head, signed.checkpoint.link, None
        return signed


def extension_problem(held: Checkpoint | None, new: Checkpoint) -> str | None:
    """Why `new` does not extend `held` (the member's latest checkpoint, None if none), or None when it does."""
    want = NO_PREVIOUS if held is None else held.link
    if new.prev != want:
        where = "none" if held is None else f"the one at index {held.index}"
        named = "none" if new.prev == NO_PREVIOUS else f"another at index {new.prev[0] if new.prev else '?'}"
        return (f"it names {named} as its previous checkpoint where the coordinator holds {where} "
                "(audit history forked or checkpoints withheld)")
    if held is not None and new.index < held.index:
        return f"index {new.index} is below the held index {held.index} (audit history truncated)"
    if held is not None and new.index == held.index and new.head != held.head:
        return f"index {new.index} is held with another head (audit history rewritten)"
    return None


class CheckpointStore:
    """The coordinator side: checkpoints lodged by members, kept in the coordinator's own chain."""

    def __init__(self, chain: HashChain, verifier: signing.Verifier, *, clock: Callable[[], float] = time.time,
                 clock_skew_s: int = 300) -> None:
        self.chain = chain
        self.verifier = verifier
        self.clock = clock
        self.clock_skew_ms = clock_skew_s * 1000
        self._lock = threading.Lock()

    def receive(self, message: bytes | coordinator_pb2.AuditCheckpoint, peer_identity: str) -> Entry:
        """Verify and keep a checkpoint lodged by `peer_identity` (its TLS identity).

        Returns the chain entry holding it (an identical resubmission returns the earlier one).
        A checkpoint that does not extend the one held (it names another previous checkpoint, or
        goes backwards, or has the held index with another head) is recorded as
        ``audit.checkpoint.conflict`` and refused: the member's history was rewritten, cut or forked.
        """
        try:
            signed = signed_from_blob(message, self.verifier)
        except CheckpointInvalid as exc:
            raise Refusal(ErrorCode.UNAUTHENTICATED, str(exc)) from None
        checkpoint = signed.checkpoint
        if checkpoint.member != peer_identity:
            raise Refusal(ErrorCode.IDENTITY_MISMATCH, "checkpoint names another member than the caller")
        if checkpoint.at_ms > self.clock() * 1000 + self.clock_skew_ms:
            raise Refusal(ErrorCode.CLOCK_WINDOW, "checkpoint is dated in the future")
        if checkpoint.prev is None:
            raise Refusal(ErrorCode.MALFORMED, "checkpoint names no previous checkpoint (prev_index, prev_digest)")
        with self._lock:
            held = self._latest_entry(checkpoint.member)
            previous = None if held is None else Checkpoint.parse(_message(held.payload).body)
            if held is not None and previous is not None and previous.expect_head == checkpoint.expect_head:
                return held
            problem = extension_problem(previous, checkpoint)
            if problem is not None:
                earlier = self._held_with_head(checkpoint)
                if earlier is not None:  # a late duplicate of one already held
                    return earlier
                self.chain.append(KIND_CHECKPOINT_CONFLICT, checkpoint.member, signed.blob)
                raise Refusal(ErrorCode.MALFORMED, f"checkpoint does not extend the one held: {problem}")
            return self.chain.append(KIND_CHECKPOINT, checkpoint.member, signed.blob)

    def _held_with_head(self, checkpoint: Checkpoint) -> Entry | None:
        """An earlier held checkpoint of the same member with the same index and head, if any."""
        for entry in self.chain.entries(key=checkpoint.member):
            if entry.kind == KIND_CHECKPOINT:
                held = Checkpoint.parse(_message(entry.payload).body)
                if held.expect_head == checkpoint.expect_head:
                    return entry
        return None

    def _latest_entry(self, member: str) -> Entry | None:
        entry = self.chain.latest(member)
        if entry is None or entry.kind == KIND_CHECKPOINT:
            return entry
        found = None
        for e in self.chain.entries(key=member):
            if e.kind == KIND_CHECKPOINT:
                found = e
        return found

    def latest_signed(self, member: str) -> SignedCheckpoint | None:
        """The latest checkpoint held for `member`, with its signature (for LatestCheckpoint)."""
        entry = self._latest_entry(member)
        if entry is None:
            return None
        message = _message(entry.payload)
        return SignedCheckpoint(Checkpoint.parse(message.body), message)

    def all_signed(self, member: str) -> list[SignedCheckpoint]:
        """Every checkpoint held for `member`, oldest first: a rewrite below any of them is caught."""
        held = []
        for entry in self.chain.entries(key=member):
            if entry.kind == KIND_CHECKPOINT:
                message = _message(entry.payload)
                held.append(SignedCheckpoint(Checkpoint.parse(message.body), message))
        return held

    def latest(self, member: str) -> Checkpoint | None:
        signed = self.latest_signed(member)
        return None if signed is None else signed.checkpoint


__all__ = [
    "ANSWERED", "AUDIT_DB", "CHECKPOINT_FILE", "CONSENT_GRANT", "CONSENT_REVOKE", "DEFAULT_RETENTION_DAYS",
    "DISCOVER", "KIND_CHECKPOINT", "KIND_CHECKPOINT_CONFLICT", "KIND_PRUNE", "KIND_RECORD",
    "LEGACY_RECORD_KEYS", "MIN_RETENTION_DAYS", "RECORD_KEYS", "ROUTE", "AsyncAuditor", "AuditLog", "AuditRecord", "AuditReport",
    "AuditUnavailable", "Checkpoint", "CheckpointFile", "CheckpointInvalid", "CheckpointResult",
    "CheckpointStore", "LEGACY_CHECKPOINT_KEYS", "NO_PREVIOUS", "NodeCheckpointer", "SignedCheckpoint", "answered",
    "coordinator_event", "export_row", "extension_problem", "make_checkpoint", "sign_checkpoint", "read_checkpoint_blobs", "refusal", "refused", "retention_days",
    "verify_checkpoint",
]
