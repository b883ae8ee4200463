"""Possession locks: a sealed query opens only for a province that holds one of its subjects.

The requester knows its applicants' ID numbers, and so their possession keys
(`tokens.possession_key`); a holder stored each subject's possession key at ingest, when it had
the ID number. Neither a token nor the linkage key alone gives a possession key, so a province
that claims to hold a subject it does not hold cannot unlock the query. Per query:

    context   = recipient || 0x00 || request_id || 0x00 || salt
    kek_i     = HKDF-Expand(possession_key_i, "hedui/v1/possession/wrap" || 0x00 || context, 32)
    wrapped_i = AES-256-GCM(kek_i, nonce 0^12, content_key, aad = token_i)
    query_key = HKDF-Expand(content_key, "hedui/v1/possession/query" || 0x00 || context, 32)
    ciphertext = AES-256-GCM(query_key, nonce 0^12, SignedQuery bytes,
                             aad = "hedui/v1/possession/query" || 0x00 || context || token_0 || ... )
    proof      = HKDF-Expand(content_key, "hedui/v1/possession/proof" || 0x00 || context, 32)
    commitment = SHA-256("hedui/v1/possession/commitment" || 0x00 || proof)

The content key and salt are fresh random per locked query, so every AES key encrypts once.
The requester gives the coordinator the commitment; the holder returns the proof, which shows
the coordinator (blindly) that the holder unlocked the query, and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.crypto.errors import CryptoError
from node.wire.v1 import verification_pb2

SUITE: Final[str] = "hedui-possession-v1:hkdf-sha256:aes-256-gcm"
KEY_BYTES: Final[int] = 32
SALT_BYTES: Final[int] = 16
TOKEN_BYTES: Final[int] = 32
WRAPPED_BYTES: Final[int] = KEY_BYTES + 16
PROOF_BYTES: Final[int] = 32
PROOF_METADATA: Final[str] = "hedui-possession-bin"
"""gRPC trailing metadata in which a holder returns a PossessionProof with every reply, refusals too."""
_NONCE: Final[bytes] = bytes(12)
_WRAP: Final[bytes] = b"hedui/v1/possession/wrap\x00"
_QUERY: Final[bytes] = b"hedui/v1/possession/query\x00"
_PROOF: Final[bytes] = b"hedui/v1/possession/proof\x00"
_COMMITMENT: Final[bytes] = b"hedui/v1/possession/commitment\x00"


class LockError(CryptoError):
    """A locked query is malformed, or its content does not decrypt under the unwrapped key."""


def _expand(prk: bytes, info: bytes) -> bytes:
    """HKDF-Expand-SHA256(prk, info, 32): one HMAC block (RFC 5869; prk is already a uniform key)."""
    return hmac.digest(prk, info + b"\x01", "sha256")


def _context(recipient: str, request_id: str, salt: bytes) -> bytes:
    return recipient.encode() + b"\x00" + request_id.encode() + b"\x00" + salt


def commitment(proof: bytes) -> bytes:
    """What the requester tells the coordinator in advance of `proof`."""
    return hashlib.sha256(_COMMITMENT + proof).digest()


def proves(proof: bytes, expected: bytes) -> bool:
    """Whether `proof` is the one committed to by `expected` (both of the right length)."""
    return len(proof) == PROOF_BYTES and len(expected) == 32 and hmac.compare_digest(commitment(proof), expected)


def lock(signed_query: bytes, *, tokens: Sequence[bytes], keys: Sequence[bytes], recipient: str,
         request_id: str, into: verification_pb2.LockedQuery | None = None,
         ) -> tuple[verification_pb2.LockedQuery, bytes]:
    """Lock a serialized SignedQuery to the possession keys of its subjects; (locked query, commitment).

    `tokens` and `keys` are the query's subjects' tokens and possession keys, in QueryBody order;
    `recipient` is the holder's identity URI. `into` is an empty LockedQuery to fill (e.g. one just
    added to a LockedBatch, so the batch copies no message); by default a new one.
    """
    if not tokens or len(tokens) != len(keys):
        raise LockError("a locked query needs one possession key per subject")
    content_key, salt = os.urandom(KEY_BYTES), os.urandom(SALT_BYTES)
    context = _context(recipient, request_id, salt)
    wrap_info = _WRAP + context + b"\x01"  # HKDF-Expand's one block (`_expand`), built once for every subject
    locked = verification_pb2.LockedQuery() if into is None else into
    locked.suite, locked.request_id, locked.salt = SUITE, request_id, salt
    add = locked.subjects.add
    for token, key in zip(tokens, keys, strict=True):
        add(token=token, wrapped_key=AESGCM(hmac.digest(key, wrap_info, "sha256")).encrypt(_NONCE, content_key, token))
    query_info = _QUERY + context
    locked.ciphertext = AESGCM(_expand(content_key, query_info)).encrypt(_NONCE, signed_query, query_info + b"".join(tokens))
    return locked, commitment(_expand(content_key, _PROOF + context))


@dataclass(frozen=True, slots=True)
class Unlocked:
    """A locked query this holder could unlock: its possession proof, and its content."""

    proof: bytes
    request_id: str
    tokens: tuple[bytes, ...]
    signed_query: bytes | None
    """The serialized SignedQuery; None when the content does not decrypt (a broken lock)."""


def check_shape(locked: verification_pb2.LockedQuery, max_subjects: int) -> None:
    """Raise LockError unless the locked query has the supported suite and well-formed parts."""
    if locked.suite != SUITE:
        raise LockError("unsupported possession lock suite")
    if not 1 <= len(locked.subjects) <= max_subjects or len(locked.salt) != SALT_BYTES:
        raise LockError(f"a locked query has 1 to {max_subjects} subjects and a {SALT_BYTES}-byte salt")
    if any(len(s.token) != TOKEN_BYTES or len(s.wrapped_key) != WRAPPED_BYTES for s in locked.subjects):
        raise LockError("locked subjects carry 32-byte tokens and 48-byte wrapped keys")


def unlock(locked: verification_pb2.LockedQuery, keys: Mapping[bytes, bytes], *, recipient: str,
           max_subjects: int = 16) -> Unlocked | None:
    """Unlock with this holder's possession keys (token -> key); None when no subject's key opens it.

    Raises LockError for a malformed lock. Work is one HMAC and one AES-GCM per held subject
    tried (the first that opens ends the search), then one for the content.
    """
    check_shape(locked, max_subjects)
    return unlock_checked(locked, keys, recipient=recipient)


def unlock_checked(locked: verification_pb2.LockedQuery, keys: Mapping[bytes, bytes], *,
                   recipient: str) -> Unlocked | None:
    """`unlock` of a locked query that already passed `check_shape` (not checked again)."""
    context = _context(recipient, locked.request_id, locked.salt)
    wrap_info = _WRAP + context + b"\x01"  # HKDF-Expand's one block (`_expand`)
    content_key = None
    tokens: list[bytes] = []
    for subject in locked.subjects:
        token = subject.token
        tokens.append(token)
        if content_key is not None:
            continue
        key = keys.get(token)
        if key is None:
            continue
        try:
            content_key = AESGCM(hmac.digest(key, wrap_info, "sha256")).decrypt(_NONCE, subject.wrapped_key, token)
        except InvalidTag:
            continue
    if content_key is None:
        return None
    query_info = _QUERY + context
    try:
        signed_query: bytes | None = AESGCM(_expand(content_key, query_info)).decrypt(
            _NONCE, locked.ciphertext, query_info + b"".join(tokens))
    except InvalidTag:
        signed_query = None
    return Unlocked(_expand(content_key, _PROOF + context), locked.request_id, tuple(tokens), signed_query)
