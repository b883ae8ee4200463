"""End-to-end sealing with HPKE (RFC 9180): only the named recipient province can open a seal.

The HPKE `info` binds the kind of message (query or answer) and the recipient's identity, so
a sealed query cannot be replayed as an answer or redirected to another member.
"""

from __future__ import annotations

import hashlib
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from node.crypto.errors import CryptoError
from node.wire.v1 import common_pb2

SUITE_NAME: Final[str] = "hpke:dhkem-x25519-hkdf-sha256:hkdf-sha256:aes-128-gcm"
_SUITES: Final[dict[str, Suite]] = {SUITE_NAME: Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_128_GCM)}

_PROBE_KEY: Final[X25519PrivateKey] = X25519PrivateKey.generate()  # only ever used to test public keys

QUERY: Final[str] = "query"
ANSWER: Final[str] = "answer"


class SealError(CryptoError):
    """A seal could not be opened: wrong recipient, unknown suite, or tampered ciphertext."""


def public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public_key: bytes) -> bytes:
    """SHA-256 of a raw sealing public key."""
    return hashlib.sha256(public_key).digest()


def _info(kind: str, recipient: str) -> bytes:
    return f"hedui/v1/seal/{kind}".encode() + b"\x00" + recipient.encode()


def seal(plaintext: bytes, *, kind: str, recipient: str, public_key: bytes) -> common_pb2.Sealed:
    """Seal `plaintext` to `recipient` (a member identity URI) under its raw X25519 public key."""
    pub = X25519PublicKey.from_public_bytes(public_key)
    ciphertext = _SUITES[SUITE_NAME].encrypt(plaintext, pub, info=_info(kind, recipient))
    return common_pb2.Sealed(suite=SUITE_NAME, recipient=recipient, recipient_key_id=key_id(public_key), ciphertext=ciphertext)


def usable_public_key(public_key: bytes) -> bool:
    """Whether a seal to this raw X25519 public key can be made (32 bytes, not a small-order point).

    Sealing refuses a key whose shared secret is all zero. For a small-order point that holds
    whatever the private scalar (scalars are multiples of the cofactor), so one exchange with a
    fixed key tells, before any answer is decided for a key it could not be sealed to.
    """
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        return False
    try:
        _PROBE_KEY.exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError:
        return False
    return True


def open_sealed(sealed: common_pb2.Sealed, *, kind: str, identity: str, private_key: X25519PrivateKey) -> bytes:
    """Open a seal addressed to `identity`; raise SealError otherwise."""
    suite = _SUITES.get(sealed.suite)
    if suite is None:
        raise SealError("unsupported sealing suite")
    if sealed.recipient != identity:
        raise SealError("sealed for another member")
    if sealed.recipient_key_id != key_id(public_bytes(private_key.public_key())):
        raise SealError("sealed under another key")
    try:
        return suite.decrypt(sealed.ciphertext, private_key, info=_info(kind, identity))
    except Exception:  # noqa: BLE001 - any failure to open is the same public error
        raise SealError("seal does not open") from None
