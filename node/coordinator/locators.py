"""The coordinator's locators: each province's signed filter of its subjects' epoch discovery tokens.

Discovery is answered from these alone; no province is asked. A locator is a claim, so it is
checked before it is held: signed by the province it names (the TLS peer), for the current or
the next epoch (or the one just ended, for clocks at a boundary), of a known filter kind, for
at most `[discovery] max_subjects` subjects (or the province's own bound in
`[discovery.max_subjects_of]`), each shard exactly the size its key count fixes.
Shards of one generation are held apart until all arrived (and their counts add up), then
replace the province's locator for that epoch in one transaction; at most MAX_PENDING
unfinished generations are kept beside the one in force. Epochs that ended are
deleted. The locators live in the member's storage (`Storage.locators()`: locators.sqlite in the data
dir, or tables on PostgreSQL), so every coordinator process and replica answers from the same ones;
each keeps the filters it loaded until the set changes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from google.protobuf.message import DecodeError

from node.config import DiscoveryPolicy
from node.crypto import discovery, locator, signing
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.errors import ErrorCode, Refusal
from node.store.interfaces import LocatorStore
from node.store.sqlite.locators import LOCATORS_FILE, SqliteLocators
from node.wire.v1 import coordinator_pb2

__all__ = ["LOCATORS_FILE", "MAX_PENDING", "Held", "LocatorBook"]
MAX_PENDING: Final[int] = 2  # unfinished generations kept per province and epoch


@dataclass(frozen=True, slots=True)
class Held:
    """One province's locator in force for one epoch."""

    generation: int
    subject_count: int
    shard_bits: int
    shards: tuple[locator.Shard, ...]
    false_match_rate: float  # the chance it matches an edt of someone it does not hold (shards equally likely)

    def contains(self, edt: bytes) -> bool:
        return self.shards[locator.shard_of(edt, self.shard_bits)].contains(edt)


class LocatorBook:
    """Accepts signed locator shards and answers which provinces' locators match discovery tokens."""

    def __init__(self, rows: Path | LocatorStore, verifier: signing.Verifier, policy: DiscoveryPolicy) -> None:
        self.verifier = verifier
        self.policy = policy
        # a Path is a data dir (its locators.sqlite): what callers gave before storage held the locators
        self._rows: LocatorStore = SqliteLocators(rows / LOCATORS_FILE) if isinstance(rows, Path) else rows
        self._lock = threading.Lock()
        self._version = -1
        self._held: dict[tuple[str, int], Held] = {}

    def close(self) -> None:
        self._rows.close()

    def epochs(self) -> range:
        """The epochs locators are accepted and discovery is answered for."""
        now = discovery.current_epoch(self.policy.epoch_s)
        return range(now - 1, now + 2)

    def publish(self, peer_province: str, signed: coordinator_pb2.SignedLocator) -> bool:
        """Check and keep one shard; True when its generation is complete and now in force."""
        body = self._verified(peer_province, signed)
        with self._lock:
            outcome = self._rows.put_shard(body.province, body.epoch, body.generation, body.shard, body.shard_bits,
                                           body.subject_count, body.shard_count, body.filter,
                                           oldest_epoch=self.epochs().start, max_pending=MAX_PENDING)
        if outcome == "older":
            raise Refusal(ErrorCode.MALFORMED, "locator is older than the one in force")
        if outcome == "mismatch":
            raise Refusal(ErrorCode.MALFORMED, "locator shards do not add up to the subject count they claim")
        return outcome in ("in_force", "complete")

    def _verified(self, peer_province: str, signed: coordinator_pb2.SignedLocator) -> coordinator_pb2.LocatorBody:
        try:
            verified = self.verifier.verify(signed.signature, signing.LOCATOR, signed.body)
            body = coordinator_pb2.LocatorBody.FromString(signed.body)
        except (SignatureInvalid, CertificateRejected, DecodeError):
            raise Refusal(ErrorCode.UNAUTHENTICATED, "locator does not verify") from None
        if verified.identity.province != peer_province or body.province != peer_province:
            raise Refusal(ErrorCode.IDENTITY_MISMATCH)
        if body.filter_kind != locator.FILTER_KIND:
            raise Refusal(ErrorCode.MALFORMED, f"locator filter kind must be {locator.FILTER_KIND}")
        if body.epoch not in self.epochs():
            raise Refusal(ErrorCode.MALFORMED, "locator is not for the current or the next discovery epoch")
        limit = self.policy.subject_limit(body.province)
        if body.subject_count > limit:
            raise Refusal(ErrorCode.TOO_MANY, f"locator claims {body.subject_count} subjects; "
                                              f"at most {limit} are accepted for province {body.province}")
        if body.shard_bits != locator.shard_bits_for(body.subject_count) or body.shard >= 1 << body.shard_bits \
                or body.shard_count > body.subject_count or body.generation <= 0:
            raise Refusal(ErrorCode.MALFORMED, "locator shard does not fit its subject count")
        try:
            locator.Shard(body.filter, body.shard_count)
        except locator.FilterRejected as exc:
            raise Refusal(ErrorCode.MALFORMED, f"locator refused: {exc}") from None
        return body

    def _refresh(self) -> None:
        """Load what changed since this process last looked (one small read when nothing did), all from one
        read snapshot: another process completing a generation in between deletes the older one's shards."""
        found = self._rows.read(self._version, {k: h.generation for k, h in self._held.items()})
        if found is None:
            return
        version, sets = found
        held: dict[tuple[str, int], Held] = {}
        for s in sets:
            key = (s.province, s.epoch)
            if s.shards is None:
                held[key] = self._held[key]
                continue
            shards = tuple(locator.Shard(f, n) for _, n, f in s.shards)
            held[key] = Held(s.generation, s.subject_count, s.shards[0][0], shards,
                             sum(shard.false_positive_rate for shard in shards) / len(shards))
        self._held, self._version = held, version

    def held(self, province: str, epoch: int) -> Held | None:
        """The province's locator in force for an epoch."""
        with self._lock:
            self._refresh()
            return self._held.get((province, epoch))

    def matches(self, provinces: Sequence[str], edts: Sequence[bytes], epoch: int,
                rates: dict[str, float] | None = None) -> dict[str, set[int] | None]:
        """Per province, the indexes of `edts` its locator for `epoch` matches (None: it has none); into
        `rates`, per province with a locator, its `Held.false_match_rate` (what the claim checks expect)."""
        if epoch not in self.epochs():
            raise Refusal(ErrorCode.MALFORMED, "discovery epoch is not current: derive it from the directory's "
                                               "discovery_epoch_s")
        with self._lock:
            self._refresh()
            out: dict[str, set[int] | None] = {}
            for province in provinces:
                held = self._held.get((province, epoch))
                out[province] = None if held is None else {i for i, e in enumerate(edts) if held.contains(e)}
                if held is not None and rates is not None:
                    rates[province] = held.false_match_rate
            return out
