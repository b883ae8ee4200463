"""Witnessed heads: the coordinator's signed chain heads a node keeps, and the check of a chain against them.

A node keeps every signed head the coordinator sends it of its consent ledger (the
``SignedLedgerHead`` of each consent-feed reply) and of its own audit chain (the
``SignedAuditHead`` of each consent-feed reply and ``CheckpointAck``: a node that lodges no
checkpoint witnesses it all the same) in ``<data_dir>/witness/`` — ``ledger-heads.jsonl``
and ``audit-heads.jsonl`` — one JSON line per head, appended and fsync'd:

    {"at": ISO time received, "blob": base64 of the signed message, "epoch": hex, "hash": hex,
     "index": n, "ledger_id": hex}          (audit heads: "epoch" and "ledger_id" are "")

The blob is authoritative (the verifier re-checks its signature); the other fields are for
people and tools. A head commits to every entry at or below its index, so the newest head of
an epoch alone catches any rewrite or truncation up to it; older heads only say *where* a
rewrite happened. Hence the file keeps a head only when it says something new: the first one,
one of another ledger or epoch, one at an index already witnessed with another hash, or one
that went back, at once; a head that merely moved forward at most once per `min_interval_s`
(60 s). When a file passes `max_lines` lines it is compacted (written aside, fsync'd, renamed):
the newest half stays, plus the last head of every (ledger, epoch) and every head that
contradicts another (the evidence is never compacted away).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from node import files
from node.store.chainformat import GENESIS
from node.store.errors import StoreError
from node.store.interfaces import Chain

WITNESS_DIR: Final[str] = "witness"
LEDGER_HEADS: Final[str] = "ledger-heads.jsonl"
AUDIT_HEADS: Final[str] = "audit-heads.jsonl"
MIN_INTERVAL_S: Final[float] = 60.0
MAX_LINES: Final[int] = 4096
_MAX_LINE: Final[int] = 64 * 1024

MISMATCH: Final[str] = ("entry {n} is not the one the coordinator signed as its head ({source}): "
                        "history rewritten at or before entry {n}{after}")
MISSING: Final[str] = ("the chain ends at entry {last} but the coordinator signed a head at entry {n} ({source}): "
                       "{lost} missing (truncated)")
FOREIGN: Final[str] = "the coordinator signed a head of another ledger or epoch than this one holds ({source})"


@dataclass(frozen=True, slots=True)
class Head:
    """One witnessed head: where it came from, the chain position it names, and the signed message."""

    index: int
    hash: bytes
    epoch: bytes = b""
    ledger_id: bytes = b""
    blob: bytes = b""
    at_ms: int = 0
    source: str = ""  # "FILE line N", for messages

    @property
    def expect(self) -> tuple[int, bytes]:
        return self.index, self.hash

    def to_json_line(self) -> str:
        at = datetime.fromtimestamp(self.at_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return json.dumps({"at": at, "blob": base64.b64encode(self.blob).decode(), "epoch": self.epoch.hex(),
                           "hash": self.hash.hex(), "index": self.index, "ledger_id": self.ledger_id.hex()},
                          sort_keys=True)


def parse_line(line: bytes, source: str) -> Head:
    """One witness line as a Head; raises ValueError naming what is wrong."""
    try:
        raw = files.parse_json(line)
        index, digest = raw["index"], bytes.fromhex(raw["hash"])
        epoch, ledger_id = bytes.fromhex(raw["epoch"]), bytes.fromhex(raw["ledger_id"])
        blob = base64.b64decode(raw["blob"], validate=True)
        at = datetime.fromisoformat(raw["at"].replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, UnicodeDecodeError):
        raise ValueError(f"{source}: not a witness line") from None
    if isinstance(index, bool) or not isinstance(index, int) or index < 0 or len(digest) != len(GENESIS):
        raise ValueError(f"{source}: not a witness line")
    return Head(index, digest, epoch, ledger_id, blob, int(at.timestamp() * 1000), source)


class WitnessFile:
    """One append-only file of witnessed heads, thinned and compacted as the module docstring says."""

    def __init__(self, path: Path, *, min_interval_s: float = MIN_INTERVAL_S, max_lines: int = MAX_LINES) -> None:
        self.path = Path(path)
        self.min_interval_s = min_interval_s
        self.max_lines = max_lines
        self._last: Head | None = None
        self._lines: int | None = None
        self._seen: dict[int, bytes] = {}  # (epoch-qualified) index -> hash of heads kept, to spot contradictions

    def offer(self, head: Head) -> bool:
        """Keep `head` if it says something new (see the module docstring); True when it was written."""
        if self._lines is None:
            self._load()
        last = self._last
        if last is not None and (last.ledger_id, last.epoch, last.index, last.hash) == (
                head.ledger_id, head.epoch, head.index, head.hash):
            return False
        if last is not None and not _notable(last, head, self._seen.get(head.index)) and \
                head.at_ms - last.at_ms < self.min_interval_s * 1000:
            return False
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            files.append(self.path, (head.to_json_line() + "\n").encode())
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror}") from None
        self._last, self._lines = head, (self._lines or 0) + 1
        self._seen.setdefault(head.index, head.hash)
        if self._lines > self.max_lines:
            self.compact()
        return True

    def read(self) -> list[Head | ValueError]:
        """Every line of the file: a Head, or the ValueError saying why a line is not one. An unterminated last
        line (a write cut short by a crash) is skipped."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror}") from None
        lines = data.split(b"\n")
        out: list[Head | ValueError] = []
        for n, line in enumerate(lines[:-1], start=1):
            if not line.strip():
                continue
            source = f"{self.path.name} line {n}"
            try:
                out.append(ValueError(f"{source}: line too long") if len(line) > _MAX_LINE else parse_line(line, source))
            except ValueError as exc:
                out.append(exc)
        return out

    def compact(self) -> None:
        """Rewrite the file keeping the newest half, the last head of every epoch and every contradicting head."""
        heads = [h for h in self.read() if isinstance(h, Head)]
        keep = set(range(max(0, len(heads) - self.max_lines // 2), len(heads)))
        last_of: dict[tuple[bytes, bytes], int] = {}
        by_index: dict[tuple[bytes, bytes, int], set[bytes]] = {}
        for pos, h in enumerate(heads):
            last_of[(h.ledger_id, h.epoch)] = pos
            by_index.setdefault((h.ledger_id, h.epoch, h.index), set()).add(h.hash)
        keep |= set(last_of.values())
        keep |= {pos for pos, h in enumerate(heads) if len(by_index[(h.ledger_id, h.epoch, h.index)]) > 1}
        kept = [heads[pos] for pos in sorted(keep)]
        try:
            files.rewrite(self.path, (h.to_json_line() + "\n" for h in kept)).close()
        except OSError as exc:
            raise StoreError(f"cannot compact {self.path}: {exc.strerror}") from None
        self._lines = len(kept)

    def _load(self) -> None:
        heads = [h for h in self.read() if isinstance(h, Head)]
        self._lines = len(heads)
        self._last = heads[-1] if heads else None
        for h in heads:
            self._seen.setdefault(h.index, h.hash)


def locate(directory: Path, name: str) -> Path | None:
    """The witness file `name` in `directory`, or in its `witness/` (a node's data dir); None if neither exists."""
    for path in (Path(directory) / name, Path(directory) / WITNESS_DIR / name):
        if path.is_file():
            return path
    return None


def _notable(last: Head, head: Head, seen_hash: bytes | None) -> bool:
    """Whether `head` is kept at once: another ledger or epoch, a step back, or a known index with another hash."""
    return ((last.ledger_id, last.epoch) != (head.ledger_id, head.epoch) or head.index < last.index
            or (seen_hash is not None and seen_hash != head.hash))


# -- checking a chain against witnessed heads ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checked:
    """How one witnessed head fared: "ok", "mismatch", "missing", "lost" (an earlier epoch, beyond what
    the ledger declares it kept), "pruned" (below the audit log's anchor), "foreign" (another ledger/epoch)."""

    head: Head
    status: str


@dataclass(frozen=True, slots=True)
class WitnessReport:
    """The outcome of checking a chain against witnessed heads; `reason` names the first problem."""

    ok: bool
    first_bad: int | None
    reason: str | None
    checked: tuple[Checked, ...]
    truncated: bool = False  # the first problem is a witnessed entry the chain no longer reaches

    def to_json(self) -> list[dict[str, object]]:
        return [{"source": c.head.source, "index": c.head.index, "hash": c.head.hash.hex(), "status": c.status}
                for c in self.checked]


def check_ledger(chain: Chain, heads: Sequence[Head], *, epoch: bytes = b"", ledger_id: bytes = b"",
                 lineage: Iterable[tuple[bytes, int]] = ()) -> WitnessReport:
    """Check a (verified) consent ledger against witnessed heads.

    A head of the ledger's current epoch must be held with exactly its hash; one of an earlier
    epoch in the lineage likewise up to the last entry the lineage says it kept (beyond that the
    coordinator declared the loss in a signed new epoch: "lost"); one of another ledger or of an
    epoch not in the lineage is "foreign", a failure.
    """
    kept = dict(lineage)
    last = chain.head()[0]

    def status(h: Head) -> str:
        if h.ledger_id != ledger_id or (h.epoch != epoch and h.epoch not in kept):
            return "foreign"
        if h.epoch != epoch and h.index > kept[h.epoch]:
            return "lost"
        if h.index == 0:
            return "ok"
        if h.index > last:
            return "missing"
        entry = chain.entry(h.index)
        return "ok" if entry is not None and entry.hash == h.hash else "mismatch"

    return _report([Checked(h, status(h)) for h in heads], last)


def check_audit(results: Sequence[tuple[Head, str]], last: int) -> WitnessReport:
    """The report for audit heads whose status `AuditLog.verify(expect=...)` found (ok/mismatch/missing/pruned)."""
    return _report([Checked(h, s) for h, s in results], last)


def _report(checked: list[Checked], last: int) -> WitnessReport:
    bad = sorted((c for c in checked if c.status in ("mismatch", "missing", "foreign")),
                 key=lambda c: (c.status == "missing", c.head.index))
    if not bad:
        return WitnessReport(True, None, None, tuple(checked))
    first = bad[0]
    h = first.head
    if first.status == "foreign":
        return WitnessReport(False, h.index, FOREIGN.format(source=h.source), tuple(checked))
    if first.status == "missing":
        top = max(c.head.index for c in checked if c.status == "missing")
        lost = f"entry {top} is" if top == last + 1 else f"entries {last + 1} to {top} are"
        reason = MISSING.format(last=last, n=h.index, lost=lost, source=h.source)
        return WitnessReport(False, h.index, reason, tuple(checked), truncated=True)
    below = [c.head.index for c in checked if c.status == "ok" and c.head.index < h.index]
    after = f", after entry {max(below)} (witnessed and intact)" if below else ""
    return WitnessReport(False, h.index, MISMATCH.format(n=h.index, source=h.source, after=after), tuple(checked))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


__all__ = [
    "AUDIT_HEADS", "LEDGER_HEADS", "MAX_LINES", "MIN_INTERVAL_S", "WITNESS_DIR", "Checked", "Head", "WitnessFile",
    "WitnessReport", "check_audit", "check_ledger", "locate", "now_ms", "parse_line",
]
