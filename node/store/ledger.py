"""The consent ledger's identity (ledger id, epoch, lineage), on any `Chain` backend.

A ledger is a hash chain (node.store.interfaces.Chain, table ``ledger``; opened with
`Storage.ledger()`). Entry kinds: `consent.grant`, `consent.revoke`, the audit checkpoints
of node.store.audit, and `ledger.epoch` (key `@ledger`): the ledger's identity, appended
when the ledger is created, when an older ledger is upgraded, and when a new epoch starts
(`hedui restore`, `hedui ledger new-epoch`). Its payload names the ledger id (fixed at
creation), the epoch (random, new each time) and the lineage: each earlier epoch with the last
of its entries this ledger still holds. Receipts name their epoch and index, so a holder can
refuse one the ledger lost. (The SQLite ledger's file and head file: node.store.sqlite.ledger.)
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from node.store.chainformat import Entry
from node.store.errors import StoreCorrupt
from node.store.interfaces import Chain

TABLE: Final[str] = "ledger"
GRANT: Final[str] = "consent.grant"
REVOKE: Final[str] = "consent.revoke"
EPOCH: Final[str] = "ledger.epoch"
IDENTITY_KEY: Final[str] = "@ledger"
LEGACY_EPOCH: Final[bytes] = b""  # receipts issued before ledgers had epochs
CARRIED_OVER: Final[bytes] = b"carried_over"  # payload of a revocation re-applied by a restore
_ID_BYTES: Final[int] = 16


class LedgerTruncated(StoreCorrupt):
    """The ledger lacks an entry that was once committed (or cannot show it has them all)."""


@dataclass(frozen=True)
class Identity:
    """Which ledger and epoch this is, and which entries of earlier epochs it still holds."""

    ledger_id: bytes
    epoch: bytes
    lineage: tuple[tuple[bytes, int], ...]  # (earlier epoch, last index of it held), oldest first
    index: int  # of the ledger.epoch entry
    reason: str

    def payload(self) -> bytes:
        return json.dumps({"ledger_id": self.ledger_id.hex(), "epoch": self.epoch.hex(), "reason": self.reason,
                           "lineage": [[e.hex(), n] for e, n in self.lineage]}, sort_keys=True).encode()

    @classmethod
    def from_entry(cls, entry: Entry) -> Identity:
        try:
            data = json.loads(entry.payload)
            return cls(bytes.fromhex(data["ledger_id"]), bytes.fromhex(data["epoch"]),
                       tuple((bytes.fromhex(e), int(n)) for e, n in data["lineage"]), entry.idx, str(data["reason"]))
        except (ValueError, KeyError, TypeError):
            raise StoreCorrupt(f"ledger entry {entry.idx}: unreadable ledger identity") from None


def read_identity(chain: Chain) -> Identity | None:
    """The ledger's current identity (its last ledger.epoch entry); None for a ledger that has none."""
    entry = chain.latest(IDENTITY_KEY)
    return None if entry is None else Identity.from_entry(entry)


def first_identity(head: tuple[int, bytes]) -> Identity:
    """The identity a ledger without one gets at `head`: "created" when empty, else "upgraded" (its entries
    so far form the legacy epoch)."""
    lineage = ((LEGACY_EPOCH, head[0]),) if head[0] else ()
    return Identity(secrets.token_bytes(_ID_BYTES), secrets.token_bytes(_ID_BYTES), lineage, head[0] + 1,
                    "upgraded" if head[0] else "created")


def start_epoch(chain: Chain, reason: str, carried: Sequence[str] = ()) -> Identity:
    """Start a new epoch at the chain's head (re-applying `carried` revocations in it); return its identity."""
    started: list[Identity] = []

    def build(head: tuple[int, bytes]) -> list[tuple[str, str, bytes]]:
        current = read_identity(chain)
        lineage = () if current is None else (*current.lineage, (current.epoch, head[0]))
        ledger_id = secrets.token_bytes(_ID_BYTES) if current is None else current.ledger_id
        started.append(Identity(ledger_id, secrets.token_bytes(_ID_BYTES), lineage, head[0] + 1, reason))
        return [(EPOCH, IDENTITY_KEY, started[0].payload()), *((REVOKE, c, CARRIED_OVER) for c in carried)]

    chain.append_next(build)
    return started[0]


def consents(chain: Chain) -> tuple[set[str], set[str]]:
    """(granted, revoked) consent ids of a ledger."""
    granted: set[str] = set()
    revoked: set[str] = set()
    for entry in chain.entries():
        if entry.kind == GRANT:
            granted.add(entry.key)
        elif entry.kind == REVOKE:
            revoked.add(entry.key)
    return granted, revoked
