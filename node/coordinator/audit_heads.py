"""The coordinator's signed heads: its audit head (sent with every CheckpointAck and consent-feed reply), and
re-checking witnessed ones."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf.message import DecodeError

from node.crypto import signing
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.domain.regions import COORDINATOR_URI
from node.errors import BadInput
from node.service.signed import coordinator_signed
from node.store import witness
from node.store.audit import AuditLog
from node.store.errors import StoreError
from node.wire.v1 import coordinator_pb2


@dataclass(frozen=True)
class AuditHead:
    """A verified head of the coordinator's audit chain."""

    index: int
    hash: bytes
    at_ms: int
    anchor_index: int


def sign_audit_head(log: AuditLog, signer: signing.Signer, head: tuple[int, bytes] | None = None,
                    ) -> coordinator_pb2.SignedAuditHead:
    """Sign the audit chain's current (committed) head, or `head` when the caller just read it."""
    index, digest = log.head() if head is None else head
    body = coordinator_pb2.AuditHeadBody(head_index=index, head_hash=digest, at_ms=time.time_ns() // 1_000_000,
                                         anchor_index=log.anchor()[0]).SerializeToString(deterministic=True)
    return coordinator_pb2.SignedAuditHead(body=body, signature=signer.sign(signing.AUDIT_HEAD, body))


class AuditHeadSigner:
    """The audit chain's signed head at constant cost: re-signed only when the head moved.

    Every node polls the consent feed every second and each reply carries this head, so a poll
    costs one read of the head; the key is used once per move (a prune moves the head too: it
    records an entry). A slow (token) key signs off the event loop, one signing at a time.
    """

    def __init__(self, log: AuditLog, signer: signing.Signer) -> None:
        self.log = log
        self.signer = signer
        self._cached: tuple[tuple[int, bytes], coordinator_pb2.SignedAuditHead] | None = None
        self._lock = asyncio.Lock()
        self.signings = 0  # how many times the key was used (for tests and metrics)

    async def signed(self) -> coordinator_pb2.SignedAuditHead:
        """The signed current head (a copy: callers may merge it into their reply)."""
        head = self.log.head()
        async with self._lock:  # concurrent polls after a move wait for one signature
            if self._cached is None or self._cached[0] != head:
                if self.signer.blocking:
                    signed = await asyncio.to_thread(sign_audit_head, self.log, self.signer, head)
                else:
                    signed = sign_audit_head(self.log, self.signer, head)
                self._cached, self.signings = (head, signed), self.signings + 1
            out = coordinator_pb2.SignedAuditHead()
            out.CopyFrom(self._cached[1])
            return out


def parse_audit_head(signed: coordinator_pb2.SignedAuditHead, verifier: signing.Verifier) -> AuditHead:
    """Verify a signed audit head as the coordinator's; Refusal(UNAUTHENTICATED) when it is not."""
    body = coordinator_signed(signed.signature, signing.AUDIT_HEAD, signed.body, coordinator_pb2.AuditHeadBody,
                              verifier, "audit head")
    return AuditHead(body.head_index, body.head_hash, body.at_ms, body.anchor_index)


def witnessed(directory: Path, name: str, verifier: signing.Verifier) -> list[witness.Head | str]:
    """The heads in witness file `name` of `directory`, each re-verified as the coordinator's signature.

    A head's index and hash are taken from its signed body, never from the line's other fields.
    A line that does not verify is returned as "SOURCE: why" (it proves nothing either way).
    Certificates are checked as of the head's time (its own, or when the node received it).
    """
    path = witness.locate(directory, name)
    out: list[witness.Head | str] = []
    for item in [] if path is None else witness.WitnessFile(path).read():
        if isinstance(item, ValueError):
            out.append(str(item))
            continue
        try:
            out.append(_verified(item, name, verifier))
        except (SignatureInvalid, CertificateRejected, DecodeError, ValueError) as exc:
            out.append(f"{item.source}: the coordinator's signature does not verify ({exc})")
    return out


def _verified(line: witness.Head, name: str, verifier: signing.Verifier) -> witness.Head:
    if name == witness.AUDIT_HEADS:
        signed = coordinator_pb2.SignedAuditHead.FromString(line.blob)
        body = coordinator_pb2.AuditHeadBody.FromString(signed.body)
        at_ms, domain, fields = body.at_ms, signing.AUDIT_HEAD, (body.head_index, body.head_hash, b"", b"")
    else:
        ledger = coordinator_pb2.SignedLedgerHead.FromString(line.blob)
        lbody = coordinator_pb2.LedgerHeadBody.FromString(ledger.body)
        signed, at_ms, domain = ledger, line.at_ms, signing.REVOCATIONS  # type: ignore[assignment]
        fields = (lbody.head_index, lbody.head_hash, lbody.epoch, lbody.ledger_id)
    at = datetime.fromtimestamp(at_ms / 1000, UTC)
    if verifier.verify(signed.signature, domain, signed.body, at=at).identity.identity != COORDINATOR_URI:
        raise ValueError("not signed by the coordinator")
    index, digest, epoch, ledger_id = fields
    if len(digest) != 32:
        raise ValueError("malformed head hash")
    return witness.Head(index, digest, epoch, ledger_id, line.blob, line.at_ms, line.source)


def load_witnesses(directories: list[Path], name: str, verifier: signing.Verifier) -> tuple[list[witness.Head], list[str]]:
    """(verified heads, problems) of witness file `name` in each of `directories`; BadInput if one has none."""
    heads: list[witness.Head] = []
    problems: list[str] = []
    for directory in directories:
        path = witness.locate(directory, name)
        if path is None:
            raise BadInput(f"no {name} in {directory} or {Path(directory) / witness.WITNESS_DIR}")
        try:
            items = witnessed(directory, name, verifier)
        except StoreError as exc:
            raise BadInput(str(exc)) from None
        for item in items:
            if isinstance(item, str):
                problems.append(f"{path.parent}/{item}")
            else:
                heads.append(dataclasses.replace(item, source=f"{path.parent}/{item.source}"))
    return heads, problems
