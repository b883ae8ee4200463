"""Audit records: who asked what, under which consent, and what was decided — and nothing more.

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
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from google.protobuf.message import DecodeError

from node.domain import idnumber, request_ids
from node.errors import ErrorCode
from node.store.chainformat import GENESIS, Entry
from node.wire.v1 import verification_pb2

if TYPE_CHECKING:
    from node.service.verification import Decided

# The constants of the audit package (its other modules and the CLIs import them from node.store.audit).
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
