"""Message signatures: domain-separated Ed25519, single or batched under one Merkle root.

to_be_signed = DOMAIN || 0x00 || body. A batch signs the Merkle root of many such messages
once (algorithm "ed25519-batch-sha256"); each message keeps its own proof and verifies alone.
Verifiers remember roots they have already checked, so a batch costs one public-key
operation on each side however many messages it carries.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node.crypto import merkle
from node.inflight import FlushPolicy, InFlight
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.crypto.pki import SigningIdentity, TrustAnchor
from node.wire.v1 import common_pb2

ED25519: Final[str] = "ed25519"
ED25519_BATCH: Final[str] = "ed25519-batch-sha256"
ALGORITHMS: Final[frozenset[str]] = frozenset({ED25519, ED25519_BATCH})

# Signing domains: a signature made for one kind of message never verifies as another.
QUERY: Final[str] = "hedui/v1/query"
ANSWER: Final[str] = "hedui/v1/answer"
CONSENT: Final[str] = "hedui/v1/consent"
CONSENT_REQUEST: Final[str] = "hedui/v1/consent-request"
DIRECTORY: Final[str] = "hedui/v1/directory"
CHECKPOINT: Final[str] = "hedui/v1/audit-checkpoint"
REVOCATIONS: Final[str] = "hedui/v1/revocations"
AUDIT_HEAD: Final[str] = "hedui/v1/audit-head"
STANDARDS: Final[str] = "hedui/v1/standards"
HOLDER_SET: Final[str] = "hedui/v1/holder-set"
ROUND_OUTCOME: Final[str] = "hedui/v1/round-outcome"
CONTRIBUTION_QUERY: Final[str] = "hedui/v1/contribution-query"
CONTRIBUTION: Final[str] = "hedui/v1/contribution"
HOUSEHOLD_DECISION: Final[str] = "hedui/v1/household-decision"
LOCATOR: Final[str] = "hedui/v1/locator"
_BATCH_ROOT: Final[str] = "hedui/v1/batch-root"

_SALT_BYTES: Final[int] = 16
_MAX_BATCH: Final[int] = 256
_MAX_PATH: Final[int] = 16


def to_be_signed(domain: str, body: bytes) -> bytes:
    """The exact bytes a signature covers."""
    return domain.encode("ascii") + b"\x00" + body


def _root_message(root: bytes, count: int) -> bytes:
    return to_be_signed(_BATCH_ROOT, count.to_bytes(4, "big") + root)


def digest(body: bytes) -> bytes:
    """SHA-256 digest used to bind an answer to its query."""
    return hashlib.sha256(body).digest()


class SigningKey(Protocol):
    """Where an Ed25519 signature is made: a key file in memory or a PKCS#11 token.

    cryptography's Ed25519PrivateKey has exactly this interface, so a file key is used as it is
    (no wrapper on the hot path); node.crypto.token_key.Pkcs11SigningKey signs inside a token.
    A key whose sign may wait (a token, a network HSM) also says ``blocking = True``: callers on an
    event loop then sign in a worker thread (see `is_blocking`); a key without the attribute is fast.
    """

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> Ed25519PublicKey: ...


def is_blocking(key: SigningKey) -> bool:
    """Whether `key` says its sign may wait on a device (then it is kept off the event loop)."""
    return bool(getattr(key, "blocking", False))


class Signer:
    """Signs with one member's Ed25519 key and names its certificate in every signature."""

    def __init__(self, key: SigningKey, certificate_der: bytes) -> None:
        self._key = key
        self.certificate_der = certificate_der
        self.key_id = hashlib.sha256(certificate_der).digest()

    @property
    def blocking(self) -> bool:
        """Whether signing may wait on a device: async callers sign through `asyncio.to_thread` then."""
        return is_blocking(self._key)

    def matches_certificate(self) -> bool:
        """True when the private key belongs to the certificate (a key pair caught mid-copy does not)."""
        from cryptography import x509

        return x509.load_der_x509_certificate(self.certificate_der).public_key() == self._key.public_key()

    def sign(self, domain: str, body: bytes) -> common_pb2.Signature:
        """One plain signature over one message."""
        return common_pb2.Signature(
            algorithm=ED25519,
            key_id=self.key_id,
            certificate=self.certificate_der,
            value=self._key.sign(to_be_signed(domain, body)),
        )

    def sign_many(self, items: Sequence[tuple[str, bytes]]) -> list[common_pb2.Signature]:
        """Sign several messages with one key operation (a single message is signed plainly)."""
        if len(items) == 1:
            return [self.sign(*items[0])]
        out: list[common_pb2.Signature] = []
        for start in range(0, len(items), _MAX_BATCH):
            out.extend(self._sign_batch(items[start : start + _MAX_BATCH]))
        return out

    def _sign_batch(self, items: Sequence[tuple[str, bytes]]) -> list[common_pb2.Signature]:
        salts = [os.urandom(_SALT_BYTES) for _ in items]
        leaves = [merkle.leaf_hash(s, to_be_signed(d, b)) for s, (d, b) in zip(salts, items, strict=True)]
        count = len(leaves)
        root, paths = merkle.root_and_paths(leaves)
        value = self._key.sign(_root_message(root, count))
        return [
            common_pb2.Signature(
                algorithm=ED25519_BATCH,
                key_id=self.key_id,
                certificate=self.certificate_der,
                value=value,
                batch=common_pb2.BatchProof(salt=salt, leaf_index=i, leaf_count=count, path=path),
            )
            for i, (salt, path) in enumerate(zip(salts, paths, strict=True))
        ]


# One submission: its messages, the one future it waits on, and whether that future carries a
# single signature (`sign`) or the list of them (`sign_many`, `submit_many`).
_Submission = tuple[Sequence[tuple[str, bytes]], "asyncio.Future[Any]", bool]


class AsyncBatchSigner:
    """Coalesces signatures requested by concurrent calls into one batch signature.

    A lone request is signed on the next loop turn, so a sequential caller pays no latency;
    with `in_flight` given, concurrent calls wait (at most ~2 ms) for each other and share
    one Ed25519 sign (see node.inflight). A blocking key (a PKCS#11 token) signs in a worker
    thread, one batch at a time: the loop keeps serving, and what is asked meanwhile is
    signed together as the next batch. A file key signs inline (microseconds). Each
    submission — one message or many — waits on one future, never one per message.
    """

    def __init__(self, signer: Signer, *, in_flight: InFlight | None = None) -> None:
        self.signer = signer
        self._pending: list[_Submission] = []
        self._messages = 0  # messages in `_pending`
        self._policy = FlushPolicy(self._flush, in_flight)
        self._signing: asyncio.Task[None] | None = None  # the batch a blocking key is signing in a thread

    @property
    def in_flight(self) -> InFlight | None:
        return self._policy.in_flight

    @in_flight.setter
    def in_flight(self, value: InFlight | None) -> None:
        self._policy.in_flight = value

    async def sign(self, domain: str, body: bytes) -> common_pb2.Signature:
        future: asyncio.Future[common_pb2.Signature] = asyncio.get_running_loop().create_future()
        self._pending.append((((domain, body),), future, True))
        self._messages += 1
        self._policy.submitted(self._messages)
        return await future

    async def sign_many(self, items: Sequence[tuple[str, bytes]]) -> list[common_pb2.Signature]:
        """Several signatures, coalesced with whatever else is being signed."""
        if not items:
            return []
        return await self.submit_many(items)

    def submit_many(self, items: Sequence[tuple[str, bytes]]) -> asyncio.Future[list[common_pb2.Signature]]:
        """Queue several messages for the next batch (signed on the next loop turn: a batch caller never
        waits for others); one future resolves with their signatures in order."""
        future: asyncio.Future[list[common_pb2.Signature]] = asyncio.get_running_loop().create_future()
        if not items:
            future.set_result([])
            return future
        self._pending.append((items, future, False))
        self._messages += len(items)
        self._policy.submitted(self._messages + 10**9)
        return future

    def _flush(self) -> None:
        if self._signing is not None:
            return  # a blocking sign is running: what waits goes in the next batch, when it ends
        pending, self._pending, self._messages = self._pending, [], 0
        if not pending:
            return
        messages = [m for items, _, _ in pending for m in items]
        if self.signer.blocking:
            self._signing = asyncio.get_running_loop().create_task(self._sign_in_thread(pending, messages))
            return
        try:
            signatures = self.signer.sign_many(messages)
        except Exception as exc:  # pragma: no cover - key failure: fail every waiter
            _settle(pending, exc)
            return
        _settle(pending, signatures)

    async def _sign_in_thread(self, pending: list[_Submission], messages: list[tuple[str, bytes]]) -> None:
        try:
            signatures = await asyncio.to_thread(self.signer.sign_many, messages)
        except Exception as exc:  # noqa: BLE001 - key failure: fail every waiter
            _settle(pending, exc)
        else:
            _settle(pending, signatures)
        finally:
            self._signing = None
            if self._pending:
                self._flush()


def _settle(pending: list[_Submission], outcome: list[common_pb2.Signature] | Exception) -> None:
    """Resolve each submission with its signature(s), or every one with the key's failure."""
    at = 0
    for items, future, single in pending:
        n = len(items)
        if not future.done():
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome[at] if single else outcome[at : at + n])
        at += n


@dataclass(frozen=True)
class Verified:
    """Who signed a message that verified."""

    identity: SigningIdentity
    algorithm: str


class Verifier:
    """Checks signatures against the federation trust anchor; caches verified batch roots."""

    def __init__(self, anchor: TrustAnchor, *, root_cache_size: int = 4096) -> None:
        self.anchor = anchor
        self._roots: OrderedDict[bytes, None] = OrderedDict()
        self._roots_lock = threading.Lock()
        self._root_cache_size = root_cache_size

    def verify(
        self, signature: common_pb2.Signature, domain: str, body: bytes, *, at: datetime | None = None
    ) -> Verified:
        """Return the signer's identity, or raise SignatureInvalid / CertificateRejected."""
        if signature.algorithm not in ALGORITHMS:
            raise SignatureInvalid("unsupported signature algorithm")
        if self.anchor.signing_fingerprint(signature.certificate) != signature.key_id:
            raise SignatureInvalid("signature key id does not match its certificate")
        identity = self.anchor.validate_signing_cert(signature.certificate, at=at)
        message = to_be_signed(domain, body)
        if signature.algorithm == ED25519:
            self._check(identity, signature.value, message)
            return Verified(identity, ED25519)
        proof = signature.batch
        if len(proof.salt) != _SALT_BYTES or len(proof.path) > _MAX_PATH or proof.leaf_count > _MAX_BATCH:
            raise SignatureInvalid("malformed batch proof")
        root = merkle.root_from_path(merkle.leaf_hash(proof.salt, message), proof.leaf_index, proof.leaf_count, proof.path)
        if root is None:
            raise SignatureInvalid("malformed batch proof")
        cache_key = signature.key_id + root + proof.leaf_count.to_bytes(4, "big") + signature.value
        with self._roots_lock:
            if cache_key in self._roots:
                self._roots.move_to_end(cache_key)
                return Verified(identity, ED25519_BATCH)
        self._check(identity, signature.value, _root_message(root, proof.leaf_count))
        with self._roots_lock:
            self._roots[cache_key] = None
            if len(self._roots) > self._root_cache_size:
                self._roots.popitem(last=False)
        return Verified(identity, ED25519_BATCH)

    @staticmethod
    def _check(identity: SigningIdentity, value: bytes, message: bytes) -> None:
        try:
            identity.public_key.verify(value, message)
        except InvalidSignature:
            raise SignatureInvalid("signature does not verify") from None


__all__ = [
    "ALGORITHMS", "ANSWER", "AUDIT_HEAD", "CHECKPOINT", "CONSENT", "CONSENT_REQUEST", "DIRECTORY", "ED25519", "ED25519_BATCH",
    "QUERY", "REVOCATIONS", "STANDARDS", "AsyncBatchSigner", "CertificateRejected", "SignatureInvalid",
    "Signer", "SigningKey", "Verified", "Verifier", "digest", "to_be_signed",
]
