"""Unit tests of possession keys and possession locks (node.crypto.possession)."""

from __future__ import annotations

import os

import pytest

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from node.crypto import possession
from node.crypto.tokens import possession_key, subject_token

LINKAGE = bytes(range(32))
A, B = "510104198503141233", "51010419901102246X"
HOLDER = "urn:hedui:province:44"
REQUEST = "3f2a9c0e5b7d4e1f8a6b2c9d0e1f2a3b"


def _lock(signed: bytes = b"signed query bytes") -> tuple[object, bytes]:
    tokens = [subject_token(LINKAGE, n) for n in (A, B)]
    keys = [possession_key(LINKAGE, n) for n in (A, B)]
    return possession.lock(signed, tokens=tokens, keys=keys, recipient=HOLDER, request_id=REQUEST)


def test_possession_key_vectors_differ_from_the_tokens() -> None:
    """The possession key of the PROTOCOL.md §5 test IDs, under linkage key 00..1f, is not their token."""
    assert possession_key(LINKAGE, A).hex() == "3540e0882cc145d63c430539808f618c734ab15937efe3ed7f7c175613eb1b92"
    assert possession_key(LINKAGE, B).hex() == "eb7d8eee3cf7cb4a9b2ee550d838c85a28bd596032842bc5da3925df8c74c283"
    assert possession_key(LINKAGE, A) != subject_token(LINKAGE, A)


def test_key_schedule_is_rfc5869_expand() -> None:
    """Every derived key is HKDF-Expand-SHA256 with L = 32 (one HMAC block)."""
    prk, info = os.urandom(32), b"hedui/v1/possession/wrap\x00context"
    assert possession._expand(prk, info) == HKDFExpand(hashes.SHA256(), 32, info).derive(prk)


def test_a_holder_of_any_one_subject_unlocks_and_proves() -> None:
    """The key of one subject is enough; the proof matches the requester's commitment."""
    locked, commitment = _lock()
    token_b = subject_token(LINKAGE, B)
    opened = possession.unlock(locked, {token_b: possession_key(LINKAGE, B)}, recipient=HOLDER)
    assert opened is not None and opened.signed_query == b"signed query bytes"
    assert opened.request_id == REQUEST and opened.tokens[1] == token_b
    assert possession.proves(opened.proof, commitment)
    assert not possession.proves(os.urandom(32), commitment)


def test_no_key_wrong_key_or_wrong_recipient_does_not_unlock() -> None:
    """Tokens, the linkage key, or the right keys at another province unlock nothing."""
    locked, _ = _lock()
    tokens = [s.token for s in locked.subjects]
    assert possession.unlock(locked, {}, recipient=HOLDER) is None
    assert possession.unlock(locked, {t: t for t in tokens}, recipient=HOLDER) is None
    assert possession.unlock(locked, {t: LINKAGE for t in tokens}, recipient=HOLDER) is None
    keys = {subject_token(LINKAGE, n): possession_key(LINKAGE, n) for n in (A, B)}
    assert possession.unlock(locked, keys, recipient="urn:hedui:province:33") is None


def test_tampered_content_unlocks_the_key_but_not_the_query() -> None:
    """A flipped ciphertext byte still proves possession (the key unwraps) but yields no query."""
    locked, commitment = _lock()
    locked.ciphertext = bytes([locked.ciphertext[0] ^ 1]) + locked.ciphertext[1:]
    opened = possession.unlock(locked, {subject_token(LINKAGE, A): possession_key(LINKAGE, A)}, recipient=HOLDER)
    assert opened is not None and opened.signed_query is None and possession.proves(opened.proof, commitment)


def test_malformed_locks_are_refused() -> None:
    """An unknown suite or a short token is a LockError, not a silent failure."""
    locked, _ = _lock()
    locked.suite = "rot13"
    with pytest.raises(possession.LockError):
        possession.unlock(locked, {}, recipient=HOLDER)
    locked, _ = _lock()
    locked.subjects[0].token = b"short"
    with pytest.raises(possession.LockError):
        possession.check_shape(locked, 16)
