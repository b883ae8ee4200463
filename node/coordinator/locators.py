"""The coordinator's locators: each province's signed filter of its subjects' epoch discovery tokens.

Discovery is answered from these alone; no province is asked. A locator is a claim, so it is
checked before it is held: signed by the province it names (the TLS peer), for the current or
the next epoch (or the one just ended, for clocks at a boundary), of a known filter kind, for
at most `[discovery] max_subjects` subjects (or the province's own bound in
`[discovery.max_subjects_of]`), each shard exactly the size its key count fixes.
Shards of one generation are held apart until all arrived (and their counts add up), then
replace the province's locator for that epoch in one transaction; at most MAX_PENDING
unfinished generations are kept beside the one in force. Epochs that ended are
deleted. The locators live in `locators.sqlite` in the data dir, so every coordinator worker
answers from the same ones; each worker keeps the filters it loaded until the set changes.
"""

from __future__ import annotations

import sqlite3
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
from node.wire.v1 import coordinator_pb2

LOCATORS_FILE: Final[str] = "locators.sqlite"
MAX_PENDING: Final[int] = 2  # unfinished generations kept per province and epoch
_SCHEMA: Final[str] = """
CREATE TABLE IF NOT EXISTS shards(
    province TEXT NOT NULL, epoch INTEGER NOT NULL, generation INTEGER NOT NULL, shard INTEGER NOT NULL,
    shard_bits INTEGER NOT NULL, subject_count INTEGER NOT NULL, shard_count INTEGER NOT NULL, filter BLOB NOT NULL,
    PRIMARY KEY (province, epoch, generation, shard)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS active(
    province TEXT NOT NULL, epoch INTEGER NOT NULL, generation INTEGER NOT NULL, subject_count INTEGER NOT NULL,
    PRIMARY KEY (province, epoch)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Held:
    """One province's locator in force for one epoch."""

    generation: int
    subject_count: int
    shard_bits: int
    shards: tuple[locator.Shard, ...]

    def contains(self, edt: bytes) -> bool:
        return self.shards[locator.shard_of(edt, self.shard_bits)].contains(edt)


class LocatorBook:
    """Accepts signed locator shards and answers which provinces' locators match discovery tokens."""

    def __init__(self, data_dir: Path, verifier: signing.Verifier, policy: DiscoveryPolicy) -> None:
        self.verifier = verifier
        self.policy = policy
        self._db = sqlite3.connect(data_dir / LOCATORS_FILE, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._version = -1
        self._held: dict[tuple[str, int], Held] = {}

    def close(self) -> None:
        self._db.close()

    def epochs(self) -> range:
        """The epochs locators are accepted and discovery is answered for."""
        now = discovery.current_epoch(self.policy.epoch_s)
        return range(now - 1, now + 2)

    def publish(self, peer_province: str, signed: coordinator_pb2.SignedLocator) -> bool:
        """Check and keep one shard; True when its generation is complete and now in force."""
        body = self._verified(peer_province, signed)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                complete = self._store(body)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return complete

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

    def _store(self, body: coordinator_pb2.LocatorBody) -> bool:
        db = self._db
        key = (body.province, body.epoch)
        row = db.execute("SELECT generation FROM active WHERE province = ? AND epoch = ?", key).fetchone()
        in_force = row[0] if row is not None else 0
        if body.generation < in_force:
            raise Refusal(ErrorCode.MALFORMED, "locator is older than the one in force")
        if body.generation == in_force:
            return True  # a shard of the set in force, sent again
        db.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (*key, body.generation, body.shard, body.shard_bits, body.subject_count, body.shard_count,
                    body.filter))
        # Generations still arriving side by side (e.g. from a node's several workers) each complete on
        # their own; beyond the newest MAX_PENDING, older unfinished ones are dropped (bounded storage).
        db.execute("DELETE FROM shards WHERE province = ? AND epoch = ? AND generation != ? AND generation NOT IN "
                   "(SELECT DISTINCT generation FROM shards WHERE province = ? AND epoch = ? AND generation != ?"
                   " ORDER BY generation DESC LIMIT ?)", (*key, in_force, *key, in_force, MAX_PENDING))
        shards, total, claims = db.execute(
            "SELECT count(*), sum(shard_count), count(DISTINCT subject_count) FROM shards"
            " WHERE province = ? AND epoch = ? AND generation = ?", (*key, body.generation)).fetchone()
        if shards < 1 << body.shard_bits:
            return False
        if claims != 1 or total != body.subject_count:
            raise Refusal(ErrorCode.MALFORMED, "locator shards do not add up to the subject count they claim")
        db.execute("INSERT OR REPLACE INTO active VALUES (?, ?, ?, ?)", (*key, body.generation, body.subject_count))
        db.execute("DELETE FROM shards WHERE province = ? AND epoch = ? AND generation < ?", (*key, body.generation))
        oldest = self.epochs().start
        db.execute("DELETE FROM shards WHERE epoch < ?", (oldest,))
        db.execute("DELETE FROM active WHERE epoch < ?", (oldest,))
        db.execute("INSERT INTO meta VALUES ('version', 1) ON CONFLICT(key) DO UPDATE SET value = value + 1")
        return True

    def _refresh(self) -> None:
        """Load what changed since this worker last looked (one small read when nothing did), all from one
        read snapshot: another worker completing a generation in between deletes the older one's shards."""
        self._db.execute("BEGIN")
        try:
            self._load()
        finally:
            self._db.execute("COMMIT")

    def _load(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        version = row[0] if row else 0
        if version == self._version:
            return
        held: dict[tuple[str, int], Held] = {}
        for province, epoch, generation, count in self._db.execute("SELECT * FROM active").fetchall():
            old = self._held.get((province, epoch))
            if old is not None and old.generation == generation:
                held[(province, epoch)] = old
                continue
            rows = self._db.execute(
                "SELECT shard_bits, shard_count, filter FROM shards WHERE province = ? AND epoch = ? AND generation = ?"
                " ORDER BY shard", (province, epoch, generation)).fetchall()
            held[(province, epoch)] = Held(generation, count, rows[0][0],
                                           tuple(locator.Shard(f, n) for _, n, f in rows))
        self._held, self._version = held, version

    def held(self, province: str, epoch: int) -> Held | None:
        """The province's locator in force for an epoch."""
        with self._lock:
            self._refresh()
            return self._held.get((province, epoch))

    def matches(self, provinces: Sequence[str], edts: Sequence[bytes],
                epoch: int) -> dict[str, set[int] | None]:
        """Per province, the indexes of `edts` its locator for `epoch` matches (None: it has none)."""
        if epoch not in self.epochs():
            raise Refusal(ErrorCode.MALFORMED, "discovery epoch is not current: derive it from the directory's "
                                               "discovery_epoch_s")
        with self._lock:
            self._refresh()
            out: dict[str, set[int] | None] = {}
            for province in provinces:
                held = self._held.get((province, epoch))
                out[province] = None if held is None else {i for i, e in enumerate(edts) if held.contains(e)}
            return out
