"""Audit checkpoints: a member's signed chain head, kept locally, lodged with the coordinator, checked offline.

A node signs its chain head as a `Checkpoint` (canonical JSON ``{"at_ms", "head", "index",
"member", "prev_digest", "prev_index"}``, domain ``hedui/v1/audit-checkpoint``; ``prev_*`` name
the checkpoint it extends: its index and the SHA-256 of its body), keeps a copy in its
`CheckpointStorage` (SQLite backend: ``<data_dir>/audit-checkpoints.jsonl``) and lodges it
with the coordinator (`CheckpointStore`, which appends it to the coordinator's own chain).
The node's operator can rewrite the node's history and recompute every hash (and re-sign
local checkpoints with the node's key), but cannot change what the coordinator holds:
verifying against the coordinator's latest checkpoint (``hedui audit verify --checkpoint
FILE``) catches any rewrite of entries up to that checkpoint's index. The coordinator refuses
(and records) a checkpoint that does not extend the one it holds for the member: another
previous checkpoint, a lower index, or the same index with another head. The checkpoints a
member lodged thus form one signed sequence the coordinator can neither reorder nor thin out
without it showing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from google.protobuf.message import DecodeError

from node import files
from node.crypto import signing
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.errors import ErrorCode, HeduiError, Refusal
from node.store.audit.log import AuditLog
from node.store.audit.records import (
    _I64_MAX,
    _ID_RE,
    CHECKPOINT_KEYS,
    KIND_CHECKPOINT,
    KIND_CHECKPOINT_CONFLICT,
    LEGACY_CHECKPOINT_KEYS,
    NO_PREVIOUS,
    _canonical,
    _now_ms,
    iso_utc,
)
from node.store.chainformat import GENESIS, HASH_BYTES, Entry
from node.store.interfaces import Chain, CheckpointStorage
from node.wire.v1 import coordinator_pb2

_MAX_CHECKPOINT_BYTES: Final[int] = 64 * 1024

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


def make_checkpoint(log: AuditLog | Chain, signer: signing.Signer, member_identity: str, *,
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


def last_link(rows: Sequence[tuple[int, bytes | None, str | None]]) -> tuple[int, bytes]:
    """The `link` of the last readable checkpoint of a book's rows (`NO_PREVIOUS` if none): what the next extends."""
    for _, blob, _ in reversed(rows):
        if blob is None:
            continue
        try:
            return Checkpoint.parse(_message(blob).body).link
        except CheckpointInvalid:
            continue
    return NO_PREVIOUS


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


class NodeCheckpointer:
    """Makes, keeps and lodges the node's checkpoints; call `run_once` periodically."""

    def __init__(self, log: AuditLog, signer: signing.Signer, identity: str, file: CheckpointStorage) -> None:
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

    def __init__(self, chain: Chain, verifier: signing.Verifier, *, clock: Callable[[], float] = time.time,
                 clock_skew_s: int = 300) -> None:
        self.chain = chain
        self.verifier = verifier
        self.clock = clock
        self.clock_skew_ms = clock_skew_s * 1000

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
        outcome: list[Entry | str] = []  # what build decided: the entry already held, or why it conflicts

        def build(head: tuple[int, bytes]) -> list[tuple[str, str, bytes]]:
            decided = self._decide(checkpoint)
            outcome[:] = [decided]
            if isinstance(decided, Entry):
                return []
            kind = KIND_CHECKPOINT if decided == "" else KIND_CHECKPOINT_CONFLICT
            return [(kind, checkpoint.member, signed.blob)]

        # The check and the append in one transaction under the chain's write lock (every process and host):
        # two replicas lodging two different checkpoints at once cannot both find the same one held.
        appended = self.chain.append_next(build)
        decided = outcome[0]
        if isinstance(decided, Entry):
            return decided
        if decided:
            raise Refusal(ErrorCode.MALFORMED, f"checkpoint does not extend the one held: {decided}")
        return appended[0]

    def _decide(self, checkpoint: Checkpoint) -> Entry | str:
        """Inside the locked append: the entry holding `checkpoint` already, else "" (it extends the one held)
        or why it does not."""
        held = self._latest_entry(checkpoint.member)
        previous = None if held is None else Checkpoint.parse(_message(held.payload).body)
        if held is not None and previous is not None and previous.expect_head == checkpoint.expect_head:
            return held
        problem = extension_problem(previous, checkpoint)
        if problem is None:
            return ""
        earlier = self._held_with_head(checkpoint)  # a late duplicate of one already held
        return problem if earlier is None else earlier

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
