"""The holder's consent gate: receipts, revocation view, expiry and coverage, without a network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.crypto import pki, signing
from node.crypto.tokens import subject_token
from node.domain.predicate import parse_check
from node.errors import ErrorCode, Refusal
from node.member import Member
from node.service.consent import LedgerHead, ReceiptGate, RevocationView, commitment
from node.testing.cluster import build_federation
from node.testing.consents import issue, sign_request
from node.wire.v1 import verification_pb2

KEY = os.urandom(32)
A, B = subject_token(KEY, "a" * 18), subject_token(KEY, "b" * 18)
NOW = 1_800_000_000.0
EPOCH = b"e" * 16
HEAD = LedgerHead(ledger_id=b"l" * 16, epoch=EPOCH, index=5, hash=b"h" * 32)


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> dict[str, signing.Signer | signing.Verifier]:
    root = tmp_path_factory.mktemp("gate")
    fed = build_federation(root, ["51"])
    coordinator = Member.from_config(fed.coordinator_config)  # type: ignore[arg-type]
    return {"coordinator": coordinator.signer, "province": fed.member("51").signer,
            "verifier": signing.Verifier(pki.TrustAnchor.load(fed.pki / "ca.pem"))}


def receipt(members: dict, signer: str = "coordinator", **over: object) -> verification_pb2.SignedConsent:
    """The receipt `members[signer]` signs for a request signed by province 51 (`over` sets the request's fields)."""
    salt = b"s" * 16
    fields: dict[str, object] = dict(requester="51", request_id="r-0001", nonce=b"n" * 16, purpose="dibao",
                                     subject_salt=salt, subject_commitments=[commitment(salt, A)],
                                     not_before_ms=int(NOW * 1000) - 1000, not_after_ms=int(NOW * 1000) + 86_400_000)
    fields.update(over)
    raw, signature = sign_request(members["province"], **fields)
    return issue(members[signer], raw, signature, consent_id="c-1", ledger_epoch=EPOCH, ledger_index=1)


def query(consent: verification_pb2.SignedConsent | None, subjects: list[bytes] | None = None,
          purpose: str = "dibao") -> verification_pb2.QueryBody:
    q = verification_pb2.QueryBody(requester="51", purpose=purpose, subjects=subjects or [A])
    if consent is not None:
        q.consent.CopyFrom(consent)
    return q


def gate(members: dict, *, synced: bool = True, clock: float = NOW) -> ReceiptGate:
    view = RevocationView(clock=lambda: 100.0)
    if synced:
        view.apply([], HEAD)
    return ReceiptGate(members["verifier"], view, clock=lambda: clock)


CHECKS = [parse_check("deposit.balance_total<=1")]


def refusal(g: ReceiptGate, q: verification_pb2.QueryBody, checks=CHECKS) -> ErrorCode:
    with pytest.raises(Refusal) as err:
        g.check(q, checks)
    return err.value.code


def test_valid_receipt_passes(members: dict) -> None:
    """A coordinator-signed, current receipt covering subject, purpose and item lets the query through."""
    gate(members).check(query(receipt(members)), CHECKS)


def test_missing_receipt_is_refused(members: dict) -> None:
    """No receipt at all: CONSENT_MISSING."""
    assert refusal(gate(members), query(None)) is ErrorCode.CONSENT_MISSING


def test_receipt_signed_by_a_province_is_refused(members: dict) -> None:
    """A province cannot mint its own consent receipts."""
    assert refusal(gate(members), query(receipt(members, "province"))) is ErrorCode.CONSENT_INVALID


def test_expired_and_future_receipts_are_refused(members: dict) -> None:
    """Outside its validity window a receipt is CONSENT_EXPIRED."""
    r = receipt(members)
    assert refusal(gate(members, clock=NOW + 2 * 86_400), query(r)) is ErrorCode.CONSENT_EXPIRED
    assert refusal(gate(members, clock=NOW - 3600), query(r)) is ErrorCode.CONSENT_EXPIRED


def test_uncovered_subject_purpose_and_scope_are_refused(members: dict) -> None:
    """Another subject, another purpose, or an item outside the scopes is CONSENT_INVALID."""
    r = receipt(members)
    assert refusal(gate(members), query(r, subjects=[A, B])) is ErrorCode.CONSENT_INVALID
    assert refusal(gate(members), query(r, purpose="medical")) is ErrorCode.CONSENT_INVALID
    scoped = receipt(members, scopes=["income"])
    assert refusal(gate(members), query(scoped)) is ErrorCode.CONSENT_INVALID


def test_revoked_consent_is_refused(members: dict) -> None:
    """A consent the view learnt is revoked is CONSENT_REVOKED."""
    g = gate(members)
    g.revocations.apply([(5, "c-1", True)], HEAD)
    assert refusal(g, query(receipt(members))) is ErrorCode.CONSENT_REVOKED


def test_stale_revocation_view_fails_closed(members: dict) -> None:
    """Without a recent sync with the coordinator no consent is trusted."""
    assert refusal(gate(members, synced=False), query(receipt(members))) is ErrorCode.UNAVAILABLE
    now = [100.0]
    view = RevocationView(max_staleness_s=4.0, clock=lambda: now[0])
    view.apply([], HEAD)
    g = ReceiptGate(members["verifier"], view, clock=lambda: NOW)
    g.check(query(receipt(members)), CHECKS)
    now[0] += 4.5
    assert refusal(g, query(receipt(members))) is ErrorCode.UNAVAILABLE
    _ = Path
