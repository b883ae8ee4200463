"""The audit log on the `Chain` interface: records in, retention pruning, verification from the anchor.

If a record cannot be written durably, no answer is given (see node.store.audit.auditor).

Retention: `AuditLog.prune` removes the prefix of entries older than ``retention_days``
(default 190, at least `MIN_RETENTION_DAYS`) with `Chain.remove_prefix`: one transaction
appends an ``audit.prune`` entry naming the new anchor (first retained index and its
prev_hash), records the anchor and removes the prefix. `AuditLog.verify` starts from the
anchor (read in the same `Chain.snapshot` as the entries) and requires the latest
``audit.prune`` entry to name it. Prune never removes an entry newer than the cutoff, never
removes the newest entry, and refuses to run on a log that does not verify (it would destroy
the evidence). Export first: pruned entries are gone.
"""

from __future__ import annotations

import json
import struct
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from node import files
from node.errors import BadInput
from node.store.audit.records import (
    _PRUNE_KEYS,
    DAY_MS,
    DEFAULT_RETENTION_DAYS,
    KIND_PRUNE,
    KIND_RECORD,
    MIN_RETENTION_DAYS,
    AuditRecord,
    _canonical,
    _now_ms,
)
from node.store.chainformat import BROKEN, GENESIS, HASH_BYTES, MISMATCH, Entry, prefix
from node.store.chainformat import digest as digest_of
from node.store.chainformat import CHECKPOINT as CHECKPOINT_REASON
from node.store.errors import StoreCorrupt, StoreError
from node.store.interfaces import Chain, ChainSnapshot, PrefixView

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


def _verify_snapshot(table: str, snap: ChainSnapshot, expect: Sequence[tuple[int, bytes]]) -> AuditReport:
    """Walk one snapshot of the chain from its anchor, recomputing hashes; check expected heads on the way."""
    anchor = snap.anchor
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
    start, hash_of = prefix(table), digest_of  # the table's hash prefix once, not per entry
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
    for e in snap.entries():
        idx, kind, key, payload, stored_prev, stored = e.idx, e.kind, e.key, e.payload, e.prev_hash, e.hash
        if idx != prev_idx + 1 or stored_prev != prev_hash:
            return report(idx, BROKEN, key)
        try:
            digest: bytes | None = hash_of(start, idx, e.at_ms, kind.encode(), key.encode(), payload, stored_prev)
        except (AttributeError, TypeError, ValueError, struct.error):
            digest = None  # a field holds a value of the wrong type: tampered
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
    """The audit hash chain (any `Chain` backend), with retention pruning and anchored verification."""

    def __init__(self, chain: Chain, *, retention_days: int = DEFAULT_RETENTION_DAYS) -> None:
        """Take `chain` (the member's audit chain, e.g. `Storage.audit()`); closing the log closes it."""
        self.retention_days = check_retention(retention_days)
        self.chain = chain

    @property
    def location(self) -> str:
        return self.chain.location

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

        Records an ``audit.prune`` entry in the same transaction (`Chain.remove_prefix`). Refuses
        (StoreCorrupt) when the log does not verify. Removes nothing newer than
        ``now - retention_days``.

        The full verification runs on a read snapshot first, so writers (answers waiting
        for their audit record) are blocked only for the removal itself; under the write lock
        the verified head is checked to be unchanged and only entries up to it are removable.
        """
        now = _now_ms() if now_ms is None else int(now_ms)
        cutoff = now - self.retention_days * DAY_MS
        checked = self.verify()
        if not checked.ok:
            raise StoreCorrupt(f"audit log does not verify ({checked.reason}); not pruning")

        def plan(view: PrefixView) -> tuple[int, tuple[str, str, bytes]] | None:
            held = view.entry(checked.head_index) if checked.count else None
            if view.anchor[0] != checked.anchor_index or (checked.count and (held is None or held.hash != checked.head_hash)):
                raise StoreError("audit log changed while it was being checked; prune again")
            if checked.count == 0:
                return None
            first_new = view.first_since(cutoff)
            # Only entries that were verified may go; if all are old the prune entry becomes the anchor.
            keep = min(checked.head_index + 1 if first_new is None else first_new, checked.head_index + 1)
            removed = view.count_before(keep)
            if removed == 0:
                return None
            _, anchor_prev = view.anchor_for(keep)
            payload = _canonical({
                "anchor_idx": keep, "anchor_prev": anchor_prev.hex(), "cutoff_ms": cutoff, "now_ms": now,
                "removed": removed, "retention_days": self.retention_days,
            })  # fmt: skip
            return keep, (KIND_PRUNE, "", payload)

        done = self.chain.remove_prefix(plan)
        return 0 if done is None else done.removed

    # -- reads -----------------------------------------------------------------------------

    def head(self) -> tuple[int, bytes]:
        return self.chain.head()

    def anchor(self) -> tuple[int, bytes]:
        """(first retained index, its prev_hash): (1, GENESIS) until the first prune."""
        return self.chain.anchor()

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
        with self.chain.snapshot() as snap:  # one snapshot for the anchor and the entries
            return _verify_snapshot(self.chain.table, snap, expected)


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


