"""The consent ledger on SQLite: `ledger.sqlite` and its head file `ledger.head`, opening, new epochs, restores.

`ledger.head` records the highest entry ever committed (index and hash), fsynced after every
commit. SQLite keeps recent commits in `ledger.sqlite-wal` until a checkpoint; a lost WAL (or
an older copy of the file put back) leaves a shorter chain that verifies from genesis. The
head file is what tells such a ledger from a complete one: the coordinator refuses to open
it and `hedui ledger verify` reports it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from node.store.chainformat import GENESIS, Entry
from node.store.errors import StoreCorrupt, StoreError
from node.store.interfaces import Chain
from node.store.ledger import (
    EPOCH, IDENTITY_KEY, TABLE, Identity, LedgerTruncated, consents, first_identity, read_identity, start_epoch,
)  # fmt: skip
from node.store.sqlite.chain import HashChain

LEDGER_FILE: Final[str] = "ledger.sqlite"
HEAD_FILE: Final[str] = "ledger.head"
_SLOT: Final[int] = 256
_HEAD_FORMAT: Final[str] = "hedui-ledger-head/1"


@dataclass(frozen=True)
class Head:
    """The highest ledger entry committed: its index and hash."""

    index: int
    hash: bytes


class HeadFile:
    """`ledger.head`: two checksummed slots, the older one overwritten, so a torn write loses one commit at most."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> Head | None:
        """The recorded head; None when there is no head file. Raises StoreCorrupt when both slots are damaged."""
        try:
            with open(self.path, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_SH)
                data = f.read(2 * _SLOT)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror}") from None
        heads = [h for h in (_parse_slot(data[i:i + _SLOT]) for i in (0, _SLOT)) if h is not None]
        if not heads:
            raise StoreCorrupt(f"{self.path} is damaged: no readable head")
        return max(heads, key=lambda h: h.index)

    def advance(self, entry: Entry) -> None:
        """Record `entry` as the head unless a later one is already recorded (workers share the file)."""
        self._write(Head(entry.idx, entry.hash), only_forward=True)

    def reset(self, head: Head) -> None:
        """Record `head` even if it is lower: only for a new epoch that deliberately drops entries."""
        self._write(head, only_forward=False)

    def _write(self, head: Head, *, only_forward: bool) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = os.pread(fd, 2 * _SLOT, 0)
            slots = [_parse_slot(data[i:i + _SLOT]) for i in (0, _SLOT)]
            known = [s.index for s in slots if s is not None]
            if only_forward and known and max(known) >= head.index:
                return
            record = _slot(head)
            if only_forward:  # overwrite the older (or damaged) slot: the other keeps the previous head
                older = min((0, 1), key=lambda i: -1 if slots[i] is None else slots[i].index)  # type: ignore[union-attr]
                os.pwrite(fd, record, older * _SLOT)
            else:
                os.pwrite(fd, record + record, 0)
            os.fdatasync(fd)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)


def _slot(head: Head) -> bytes:
    body = {"format": _HEAD_FORMAT, "index": head.index, "hash": head.hash.hex(), "at_ms": time.time_ns() // 1_000_000}
    body["sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    raw = json.dumps(body, sort_keys=True).encode()
    return raw + b" " * (_SLOT - 1 - len(raw)) + b"\n"


def _parse_slot(raw: bytes) -> Head | None:
    try:
        body = json.loads(raw)
        check = body.pop("sha256")
        if body.get("format") != _HEAD_FORMAT or hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest() != check:
            return None
        index, digest = body["index"], bytes.fromhex(body["hash"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return Head(index, digest) if isinstance(index, int) and index >= 0 and len(digest) == len(GENESIS) else None


def truncation(chain: Chain, head: Head | None) -> str | None:
    """Why `chain` lacks the recorded head entry, or None when it holds it (or nothing is recorded)."""
    if head is None or head.index == 0:
        return None
    last = chain.head()[0]
    if last < head.index:
        return (f"the ledger ends at entry {last} but entry {head.index} was committed ({HEAD_FILE}): "
                f"entries {last + 1} to {head.index} are lost (a deleted WAL, or an older copy put back)")
    entry = chain.entry(head.index)
    if entry is None or entry.hash != head.hash:
        return f"entry {head.index} is not the one committed ({HEAD_FILE} records another hash): the ledger was replaced"
    return None


def open_ledger(data_dir: Path) -> HashChain:
    """Open the coordinator's ledger for writing: refuse a truncated one, give a new one its identity."""
    heads = HeadFile(Path(data_dir) / HEAD_FILE)
    chain = HashChain(Path(data_dir) / LEDGER_FILE, table=TABLE, on_commit=heads.advance)
    try:
        problem = truncation(chain, heads.read())
        if problem is not None:
            raise LedgerTruncated(f"{problem}; restore a backup (`hedui restore`) or accept the loss "
                                  "(`hedui ledger new-epoch`)")
        chain.append_next(lambda head: _identity_if_missing(chain, heads, head))
    except BaseException:
        chain.close()
        raise
    return chain


def _identity_if_missing(chain: Chain, heads: HeadFile, head: tuple[int, bytes]) -> list[tuple[str, str, bytes]]:
    """The identity entry of a ledger that has none (runs inside the append transaction)."""
    if read_identity(chain) is not None:
        if heads.read() is None:
            raise LedgerTruncated(f"{heads.path} is missing, so a truncated ledger cannot be ruled out; if no "
                                  "entry was lost, start a new epoch at the current head (`hedui ledger new-epoch`)")
        return []
    # Written before the identity commits: no worker ever sees an identity without a head file.
    heads.reset(Head(*head))
    return [(EPOCH, IDENTITY_KEY, first_identity(head).payload())]


def new_epoch(data_dir: Path, reason: str = "new-epoch", carried: Sequence[str] = ()) -> tuple[Identity, int]:
    """Start a new epoch in the (stopped) coordinator's ledger and reset its head file; (identity, last old entry)."""
    chain = HashChain(Path(data_dir) / LEDGER_FILE, table=TABLE)
    try:
        kept = chain.head()[0]
        identity = start_epoch(chain, reason, carried)
        HeadFile(Path(data_dir) / HEAD_FILE).reset(Head(*chain.head()))
    finally:
        chain.close()
    return identity, kept


@dataclass(frozen=True)
class RestoredLedger:
    """What a restore did to the consent ledger: the epoch it started and what it kept, lost and carried over."""

    kept_index: int  # the backup's last entry: holders refuse consents of earlier epochs after it
    epoch: bytes
    replaced_index: int | None  # the head of the ledger it replaced, when known
    carried: int | None  # revocations re-applied from the replaced ledger (None: none could be read)
    lost: int | None  # consents the replaced ledger held that the restored one lacks (None: unknown)

    def to_json(self) -> dict[str, object]:
        return {"kept_index": self.kept_index, "epoch": self.epoch.hex(), "replaced_index": self.replaced_index,
                "carried_revocations": self.carried, "lost_consents": self.lost}


def restored(data_dir: Path, aside: Path | None) -> RestoredLedger:
    """Start a new epoch in a just-restored ledger, re-applying revocations the replaced ledger (in `aside`) held.

    Revocations are re-applied for every consent the restored ledger holds unrevoked: a
    revocation is never undone by going back to an older copy. The old head file is kept in
    `aside` and replaced by the new head.
    """
    data_dir = Path(data_dir)
    head_path = data_dir / HEAD_FILE
    try:
        previous = HeadFile(head_path).read()
    except StoreError:
        previous = None
    if aside is not None and head_path.is_file():
        (aside / HEAD_FILE).write_bytes(head_path.read_bytes())
    replaced_index = None if previous is None else previous.index
    carried: list[str] | None = None
    lost: int | None = None
    granted, revoked, _ = _read(data_dir / LEDGER_FILE)
    replaced = None if aside is None else aside / LEDGER_FILE
    if replaced is not None and replaced.is_file():
        try:
            old_granted, old_revoked, old_head = _read(replaced)
        except StoreError:
            carried = None
        else:
            replaced_index = max(replaced_index or 0, old_head)
            carried, lost = sorted((old_revoked & granted) - revoked), len(old_granted - granted)
    identity, kept = new_epoch(data_dir, "restored", carried or ())
    return RestoredLedger(kept, identity.epoch, replaced_index, carried if carried is None else len(carried), lost)


def _read(path: Path) -> tuple[set[str], set[str], int]:
    """(granted, revoked, head index) of the ledger file `path`, read-only; leaves no -wal/-shm it created."""
    sidecars = [path.with_name(path.name + s) for s in ("-wal", "-shm")]
    existed = [p.exists() for p in sidecars]
    chain = HashChain.open_readonly(path, TABLE)
    try:
        granted, revoked = consents(chain)
        return granted, revoked, chain.head()[0]
    finally:
        chain.close()
        for sidecar, was in zip(sidecars, existed, strict=True):
            if not was and sidecar.exists() and (sidecar.name.endswith("-shm") or sidecar.stat().st_size == 0):
                sidecar.unlink()
