"""The per-leaf work of a verification batch done once where it may be, with every leaf still checked."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from node.client.query import check_answer
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.crypto import merkle, pki, possession, signing
from node.domain import idnumber
from node.service import consent as consent_mod
from node.store import audit
from node.testing import Federation, run_cluster
from node.wire.v1 import verification_pb2
from tests.conftest import SPOUSE, WORKER
from tests.security.test_batch_columns import Batch, stub


@pytest.fixture(scope="module")
def fed(planted: dict[str, Path]) -> Iterator[Federation]:
    with run_cluster(["32", "44", "51"], data=planted) as federation:
        yield federation


def _reference_fold(leaf: bytes, index: int, count: int, path: list[bytes]) -> bytes | None:
    """The recursive audit-path fold merkle.root_from_path used before (RFC 6962 shape)."""
    if count == 1:
        return leaf if not path else None
    if not path:
        return None
    k = 1
    while k << 1 < count:
        k <<= 1
    if index < k:
        sub = _reference_fold(leaf, index, k, path[:-1])
        return None if sub is None else merkle._node(sub, path[-1])
    sub = _reference_fold(leaf, index - k, count - k, path[:-1])
    return None if sub is None else merkle._node(path[-1], sub)


def test_audit_paths_fold_to_the_same_root_and_wrong_shapes_are_refused() -> None:
    """Every leaf's path of trees of 1..70 leaves folds to the root, as the recursive fold did; short, long or tampered paths do not."""
    for count in range(1, 71):
        leaves = [merkle.leaf_hash(os.urandom(16), b"leaf %d" % i) for i in range(count)]
        root, paths = merkle.root_and_paths(leaves)
        for i, (leaf, path) in enumerate(zip(leaves, paths, strict=True)):
            assert merkle.root_from_path(leaf, i, count, path) == root == _reference_fold(leaf, i, count, list(path))
            assert merkle.root_from_path(leaf, i, count, [*path, root]) is None
            if path:
                assert merkle.root_from_path(leaf, i, count, path[:-1]) is None
                assert merkle.root_from_path(leaf, i, count, [path[0][::-1], *path[1:]]) != root
            if count > 1:
                assert merkle.root_from_path(leaf, (i + 1) % count, count, path) in (None, _reference_fold(
                    leaf, (i + 1) % count, count, list(path)))
                assert merkle.root_from_path(leaf, (i + 1) % count, count, path) != root
        assert merkle.root_from_path(leaves[0], count, count, paths[0]) is None
        assert merkle.root_from_path(leaves[0], -1, count, paths[0]) is None


def _count_calls(monkeypatch: pytest.MonkeyPatch, anchor: pki.TrustAnchor, name: str) -> list[Any]:
    calls: list[Any] = []
    original = getattr(anchor, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(anchor, name, counted)
    return calls


def test_a_batchs_query_certificate_is_checked_once_and_revocation_applies_to_every_leaf(
        fed: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    """Six leaves signed under one certificate cost one parse of that certificate at the holder; once it is revoked every leaf is refused."""
    consent = fed.grant("51", [WORKER, SPOUSE], "dibao")
    anchor = fed.servers["44"]._member.verifier.anchor
    anchor._signing_cache = pki._BoundedCache(pki.CACHE_SIZE)  # forget certificates checked by earlier tests
    parsed = _count_calls(monkeypatch, anchor, "_check_signing")
    channel, verification = stub(fed)
    with channel:
        batch = Batch(fed, [[WORKER], [WORKER, SPOUSE], [WORKER], [WORKER], [SPOUSE, WORKER], [WORKER]], consent)
        items = batch.items(verification.VerifyBatch(batch.request(), timeout=10))
        assert [i.error_code or "OK" for i in items] == ["OK"] * 6
        certificates = {c[0] for c in parsed}
        member_signer = fed.member("51").signer.certificate_der
        assert member_signer in certificates
        assert len(parsed) == len(certificates)  # the requester's and the coordinator's: each once
        serial = anchor.validate_signing_cert(member_signer).serial
        revoked = anchor.revoked_serials
        anchor.revoked_serials = revoked | {serial}
        try:
            again = Batch(fed, [[WORKER], [SPOUSE, WORKER], [WORKER, SPOUSE]], consent)
            with pytest.raises(grpc.RpcError) as refused:
                verification.VerifyBatch(again.request(), timeout=10)
        finally:
            anchor.revoked_serials = revoked
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # every leaf refused, so the whole batch is
    assert len(parsed) == len(certificates)


def test_answers_of_a_batch_check_the_holders_certificate_once_and_every_answer(
        fed: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    """The requester checks the holder's signing certificate once for a batch's answers; a tampered answer still fails alone."""
    consent = fed.grant("51", [WORKER, SPOUSE], "dibao")
    channel, verification = stub(fed)
    with channel:
        batch = Batch(fed, [[WORKER], [WORKER, SPOUSE], [WORKER], [SPOUSE, WORKER]], consent)
        items = batch.items(verification.VerifyBatch(batch.request(), timeout=10))
    verifier = signing.Verifier(pki.TrustAnchor.load(fed.pki / "ca.pem"))
    parsed = _count_calls(monkeypatch, verifier.anchor, "_check_signing")
    checked = []
    for i, item in enumerate(items):
        query = verification_pb2.QueryBody.FromString(batch.raw[i])
        answer = item.answer
        if i == 2:
            answer = verification_pb2.SignedAnswer.FromString(answer.SerializeToString())
            answer.signature.batch.salt = bytes(16)
        checked.append(check_answer(answer, query, batch.raw[i], verifier, expect_province="44", rows=False))
    assert [a.signature_valid for a in checked] == [True, True, False, True]
    assert len(parsed) == 1


def test_a_batch_record_scans_its_shared_request_id_once(fed: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    """A holder scans the request id a five-household batch shares for ID numbers once at admission and once for its audit record, not per household."""
    consent = fed.grant("51", [WORKER, SPOUSE], "dibao")
    scanned: list[str] = []
    original = idnumber.contains_id_number

    def counted(text: str) -> bool:
        scanned.append(text)
        return original(text)

    monkeypatch.setattr(idnumber, "contains_id_number", counted)
    channel, verification = stub(fed)
    with channel:
        batch = Batch(fed, [[WORKER], [WORKER, SPOUSE], [WORKER], [SPOUSE, WORKER], [WORKER]], consent)
        items = batch.items(verification.VerifyBatch(batch.request(), timeout=10))
    assert [i.error_code or "OK" for i in items] == ["OK"] * 5
    assert scanned.count(batch.request_id) == 2  # once when the queries are admitted, once for the audit record


def test_an_id_number_in_a_batch_entry_is_refused_every_time() -> None:
    """A batch entry naming an ID number is refused however often it is made: only values that passed the scan are remembered."""
    value = "r-" + WORKER
    for _ in range(3):
        with pytest.raises(ValueError, match="must not contain an ID number"):
            audit.BatchEntry(value)
        with pytest.raises(ValueError, match="must not contain an ID number"):
            audit.BatchEntry("r-ok", consent_id=value)
    assert value not in audit._SCANNED_CLEAN


#: A query refused for its receipt: alone in a batch with answers, or the whole batch's status.
_CONSENT_INVALID = {"CONSENT_INVALID", "PERMISSION_DENIED: consent receipt not valid for this query: "
                                       "no query of the batch could be answered"}


def _codes(verification: Any, batch: Batch) -> list[str]:
    """Each query's error code ("OK" when answered); a batch refused whole gives its status for every query."""
    try:
        return [i.error_code or "OK" for i in batch.items(verification.VerifyBatch(batch.request(), timeout=10))]
    except grpc.RpcError as exc:
        return [f"{exc.code().name}: {exc.details()}"] * len(batch.signed)


def test_remembered_receipts_are_still_checked_in_full(fed: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's receipts seen before skip signature verification only: a revoked coordinator certificate and a receipt with another signature are refused."""
    consent = fed.grant("51", [WORKER, SPOUSE], "dibao")
    anchor = fed.servers["44"]._member.verifier.anchor
    channel, verification = stub(fed)
    with channel:
        households = [[WORKER], [WORKER, SPOUSE], [SPOUSE, WORKER]]
        assert _codes(verification, Batch(fed, households, consent)) == ["OK"] * 3
        verified: list[Any] = []
        original = consent_mod.parse_receipt
        monkeypatch.setattr(consent_mod, "parse_receipt", lambda *a: verified.append(a) or original(*a))
        assert _codes(verification, Batch(fed, households, consent)) == ["OK"] * 3
        assert verified == []  # remembered: no signature verified again
        receipt = fed.receipt("51", consent.consent_id)
        serial = anchor.validate_signing_cert(receipt.signature.certificate).serial
        revoked = anchor.revoked_serials
        anchor.revoked_serials = revoked | {serial}
        try:
            assert set(_codes(verification, Batch(fed, households, consent))) <= _CONSENT_INVALID
        finally:
            anchor.revoked_serials = revoked
        forged = verification_pb2.SignedConsent.FromString(receipt.SerializeToString())
        forged.signature.value = bytes(64)
        monkeypatch.setattr(fed, "receipt", lambda *a: forged)
        assert set(_codes(verification, Batch(fed, households, consent))) <= _CONSENT_INVALID
        assert len(verified) == 3  # not taken for the remembered receipt: verified, and refused, for each query


def _reference_lock(signed_query: bytes, tokens: list[bytes], keys: list[bytes], recipient: str, request_id: str,
                    content_key: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """A locked query and its commitment computed from the formulas in node.crypto.possession's docstring."""
    def expand(prk: bytes, label: bytes) -> bytes:
        return hmac.digest(prk, label + b"\x00" + context + b"\x01", "sha256")

    context = recipient.encode() + b"\x00" + request_id.encode() + b"\x00" + salt
    subjects = [verification_pb2.LockedSubject(token=t, wrapped_key=AESGCM(expand(k, b"hedui/v1/possession/wrap")).encrypt(
        bytes(12), content_key, t)) for t, k in zip(tokens, keys, strict=True)]
    aad = b"hedui/v1/possession/query\x00" + context + b"".join(tokens)
    ciphertext = AESGCM(expand(content_key, b"hedui/v1/possession/query")).encrypt(bytes(12), signed_query, aad)
    locked = verification_pb2.LockedQuery(suite=possession.SUITE, request_id=request_id, salt=salt, subjects=subjects,
                                          ciphertext=ciphertext)
    proof = expand(content_key, b"hedui/v1/possession/proof")
    return locked.SerializeToString(), hashlib.sha256(b"hedui/v1/possession/commitment\x00" + proof).digest()


def test_possession_locks_are_the_same_bytes_and_open_only_for_a_holder(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock built in place in a batch is byte for byte the lock of the documented formulas; it opens with one held key and not without."""
    tokens = [os.urandom(32) for _ in range(3)]
    keys = [os.urandom(32) for _ in range(3)]
    recipient, request_id, query = "hedui://province/44", "r-0123456789", os.urandom(900)
    randomness = [os.urandom(32), os.urandom(16)]
    monkeypatch.setattr(possession.os, "urandom", lambda n: randomness[0] if n == 32 else randomness[1])
    batch = verification_pb2.LockedBatch()
    locked, commitment = possession.lock(query, tokens=tokens, keys=keys, recipient=recipient, request_id=request_id,
                                         into=batch.queries.add())
    expected = _reference_lock(query, tokens, keys, recipient, request_id, *randomness)
    assert (batch.queries[0].SerializeToString(), commitment) == expected
    alone, again = possession.lock(query, tokens=tokens, keys=keys, recipient=recipient, request_id=request_id)
    assert (alone.SerializeToString(), again) == expected
    opened = possession.unlock(alone, {tokens[1]: keys[1]}, recipient=recipient)
    assert opened is not None and opened.signed_query == query and opened.tokens == tuple(tokens)
    assert possession.commitment(opened.proof) == commitment
    assert possession.unlock(alone, {tokens[1]: keys[0]}, recipient=recipient) is None
    assert possession.unlock(alone, {}, recipient=recipient) is None
    assert possession.unlock(alone, {tokens[0]: keys[0]}, recipient="hedui://province/32") is None
