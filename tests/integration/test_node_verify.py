"""Two real nodes on loopback with mutual TLS: signed, minimal-disclosure verification."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from node.client.client import PeerRefused, PeerUnreachable
from node.client.query import sign_query
from node.crypto import pki, signing
from node.domain.idnumber import InvalidIdNumber
from node.domain.regions import province_uri
from node.member import Member
from node.testing import Federation, run_cluster
from node.wire.v1 import verification_pb2, verification_pb2_grpc
from tests.conftest import CANARY_DEPOSIT, SPOUSE, STRANGER, WORKER

CHECKS = ["deposit.balance_total<=2000000", "income.wage_monthly<300000", "social_insurance.contributing==1"]


HOUSEHOLD = [WORKER, SPOUSE, STRANGER]


@pytest.fixture(scope="module")
def fed(planted: dict[str, Path]) -> Iterator[Federation]:
    with run_cluster(["32", "44", "51"], data=planted) as federation:
        yield federation


@pytest.fixture(scope="module")
def consents(fed: Federation) -> dict[str, verification_pb2.SignedConsent]:
    """Receipts of consents registered by 51 and 44 for the household, by requester and purpose."""
    out = {}
    for code in ("51", "44", "32"):
        for purpose in ("dibao", "education"):
            info = fed.grant(code, HOUSEHOLD, purpose)
            out[f"{code}:{purpose}"] = info.receipt
    return out


def _outcomes(result, province: str) -> list[tuple[int, str, str, str | None]]:
    (answer,) = [a for a in result.answers if a.province == province]
    return [(r.subject, r.check, r.outcome, r.as_of) for r in answer.results]


def test_correct_query_is_answered_with_outcomes_only(fed: Federation, consents: dict) -> None:
    """A province asks another about a household and gets a signed outcome per subject and check."""
    with fed.client("51", to="44") as peer:
        result = peer.verify([WORKER, STRANGER], "dibao", CHECKS, consent=consents["51:dibao"])
    (answer,) = result.answers
    assert answer.province == "44" and answer.signature_valid and answer.problem is None
    assert _outcomes(result, "44") == [
        (0, "deposit.balance_total<=2000000", "NOT_SATISFIED", "2026-10-31"),
        (0, "income.wage_monthly<300000", "NOT_SATISFIED", "2026-10-31"),
        (0, "social_insurance.contributing==1", "SATISFIED", "2026-10-31"),
        (1, "deposit.balance_total<=2000000", "NO_RECORD", None),
        (1, "income.wage_monthly<300000", "NO_RECORD", None),
        (1, "social_insurance.contributing==1", "NO_RECORD", None),
    ]
    assert str(CANARY_DEPOSIT).encode() not in answer.signed.SerializeToString()


def test_answer_signature_verifies_offline_and_binds_the_query(fed: Federation, consents: dict) -> None:
    """The answer verifies against the CA alone and names the digest of the query it answers."""
    with fed.client("51", to="44") as peer:
        result = peer.verify([WORKER], "dibao", CHECKS[:1], consent=consents["51:dibao"])
    signed = result.answers[0].signed
    body = verification_pb2.AnswerBody.FromString(signed.body)
    assert body.query_digest == signing.digest(result.query_body)
    offline = signing.Verifier(pki.TrustAnchor.load(fed.pki / "ca.pem"))
    assert offline.verify(signed.signature, signing.ANSWER, signed.body).identity.province == "44"
    tampered = bytearray(signed.body)
    tampered[-1] ^= 1
    with pytest.raises(signing.SignatureInvalid):
        offline.verify(signed.signature, signing.ANSWER, bytes(tampered))


def test_check_outside_purpose_is_denied(fed: Federation, consents: dict) -> None:
    """Education assistance may not look at securities: that check is DENIED, the rest answered."""
    with fed.client("51", to="44") as peer:
        result = peer.verify([WORKER], "education", ["securities.value_total<=100", "income.wage_monthly>=1"],
                             consent=consents["51:education"])
    assert [r.outcome for r in result.answers[0].results] == ["DENIED", "SATISFIED"]
    assert result.answers[0].results[0].as_of is None


def test_household_members_are_answered_by_the_province_holding_them(fed: Federation, consents: dict) -> None:
    """Sichuan holds the spouse's deposit; the answer says so with the data's as-of date."""
    with fed.client("44", to="51") as peer:
        result = peer.verify([WORKER, SPOUSE], "dibao", ["deposit.balance_total<=2000000", "hukou.registered==1"],
                             consent=consents["44:dibao"])
    assert _outcomes(result, "51") == [
        (0, "deposit.balance_total<=2000000", "NO_RECORD", None),
        (0, "hukou.registered==1", "SATISFIED", "2026-11-20"),
        (1, "deposit.balance_total<=2000000", "SATISFIED", "2026-10-31"),
        (1, "hukou.registered==1", "SATISFIED", "2026-11-20"),
    ]


def _channel(fed: Federation, target: str, *, cert: bytes | None, key: bytes | None, ca: bytes | None = None) -> grpc.Channel:
    ca = ca or (fed.pki / "ca.pem").read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(fed.addresses[target], creds)


_RECEIPTS: dict[str, verification_pb2.SignedConsent] = {}


@pytest.fixture(autouse=True, scope="module")
def _share_receipts(consents: dict) -> None:
    _RECEIPTS.update(consents)


def _signed_query(member: Member, *, requester: str | None = None, signer: signing.Signer | None = None) -> verification_pb2.SignedQuery:
    from node.client.query import prepare

    requester = requester or member.province
    prepared = prepare(requester=requester, linkage_key=member.linkage_key, ids=[WORKER],
                       purpose="dibao", checks=CHECKS, catalogue=member.catalogue, policy=member.policy)
    return sign_query(signer or member.signer, prepared.body(consent=_RECEIPTS[f"{requester}:dibao"]))


def _call(channel: grpc.Channel, query: verification_pb2.SignedQuery) -> verification_pb2.VerifyResponse:
    stub = verification_pb2_grpc.VerificationStub(channel)
    return stub.Verify(verification_pb2.VerifyRequest(signed=query), timeout=5)


def test_client_without_certificate_is_refused_at_handshake(fed: Federation) -> None:
    """A caller with no client certificate never gets past the TLS handshake."""
    with _channel(fed, "44", cert=None, key=None) as channel, pytest.raises(grpc.RpcError) as err:
        _call(channel, _signed_query(fed.member("51")))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(fed: Federation, tmp_path: Path) -> None:
    """A well-formed province certificate issued by a foreign CA is refused at the handshake."""
    other_ca, other_key = pki.make_ca("Not the federation")
    cert, key = pki.issue_tls_cert(other_ca, other_key, province_uri("51"))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with _channel(fed, "44", cert=pem, key=key_pem) as channel, pytest.raises(grpc.RpcError) as err:
        _call(channel, _signed_query(fed.member("51")))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_query_signed_as_another_province_is_refused(fed: Federation) -> None:
    """Province 32's TLS certificate carrying a query signed by 51's key is refused."""
    m32, m51 = fed.member("32"), fed.member("51")
    channel = _channel(fed, "44", cert=m32.cfg.tls_cert.read_bytes(), key=m32.cfg.tls_key.read_bytes())
    with channel, pytest.raises(grpc.RpcError) as err:
        _call(channel, _signed_query(m51))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "same member" in err.value.details()


def test_requester_field_must_match_the_tls_peer(fed: Federation) -> None:
    """A query claiming to come from 51 but signed and sent by 32 is refused."""
    m32 = fed.member("32")
    channel = _channel(fed, "44", cert=m32.cfg.tls_cert.read_bytes(), key=m32.cfg.tls_key.read_bytes())
    with channel, pytest.raises(grpc.RpcError) as err:
        _call(channel, _signed_query(m32, requester="51"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_tampered_signature_is_refused(fed: Federation) -> None:
    """Flipping one byte of the signature makes the node refuse the query as unauthenticated."""
    m51 = fed.member("51")
    query = _signed_query(m51)
    value = bytearray(query.signature.value)
    value[0] ^= 0x01
    query.signature.value = bytes(value)
    channel = _channel(fed, "44", cert=m51.cfg.tls_cert.read_bytes(), key=m51.cfg.tls_key.read_bytes())
    with channel, pytest.raises(grpc.RpcError) as err:
        _call(channel, query)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tampered_body_is_refused(fed: Federation) -> None:
    """Changing a signed byte of the query body invalidates its signature."""
    m51 = fed.member("51")
    query = _signed_query(m51)
    body = verification_pb2.QueryBody.FromString(query.body)
    body.checks[0].operand += 1
    query.body = body.SerializeToString()
    channel = _channel(fed, "44", cert=m51.cfg.tls_cert.read_bytes(), key=m51.cfg.tls_key.read_bytes())
    with channel, pytest.raises(grpc.RpcError) as err:
        _call(channel, query)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_bad_id_number_is_refused_before_any_lookup(fed: Federation) -> None:
    """A wrong check character is caught on the caller's side: nothing is sent to the peer."""
    bad = WORKER[:-1] + ("0" if WORKER[-1] != "0" else "1")
    with fed.client("51", to="44") as peer:
        sent: list[object] = []
        peer._stub = type("Recorder", (), {"Verify": lambda self, *a, **k: sent.append(a)})()
        with pytest.raises(InvalidIdNumber) as err:
            peer.verify([bad], "dibao", CHECKS)
    assert sent == []
    assert bad not in str(err.value) and "check character" in str(err.value)


def test_malformed_subject_token_is_refused_by_the_node(fed: Federation) -> None:
    """A subject that is not a 32-byte token is refused before the store is consulted."""
    m51 = fed.member("51")
    body = verification_pb2.QueryBody.FromString(_signed_query(m51).body)
    body.subjects[0] = WORKER.encode()
    query = sign_query(m51.signer, body)
    channel = _channel(fed, "44", cert=m51.cfg.tls_cert.read_bytes(), key=m51.cfg.tls_key.read_bytes())
    with channel, pytest.raises(grpc.RpcError) as err:
        _call(channel, query)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert WORKER not in err.value.details()


def test_replayed_query_is_refused(fed: Federation) -> None:
    """The same signed query sent twice is answered once."""
    m51 = fed.member("51")
    query = _signed_query(m51)
    channel = _channel(fed, "44", cert=m51.cfg.tls_cert.read_bytes(), key=m51.cfg.tls_key.read_bytes())
    with channel:
        _call(channel, query)
        with pytest.raises(grpc.RpcError) as err:
            _call(channel, query)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_stale_query_is_refused(fed: Federation) -> None:
    """A query issued an hour ago is outside the clock window."""
    m51 = fed.member("51")
    body = verification_pb2.QueryBody.FromString(_signed_query(m51).body)
    body.issued_at_ms -= 3600 * 1000
    channel = _channel(fed, "44", cert=m51.cfg.tls_cert.read_bytes(), key=m51.cfg.tls_key.read_bytes())
    with channel, pytest.raises(grpc.RpcError) as err:
        _call(channel, sign_query(m51.signer, body))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_unreachable_peer_raises_peer_unreachable(fed: Federation, consents: dict) -> None:
    """Calling an address where no node listens is reported as unreachable, not refused."""
    with fed.client("51", to="127.0.0.1:1", province="44", deadline_s=2) as peer, pytest.raises(PeerUnreachable):
        peer.verify([WORKER], "dibao", CHECKS, consent=consents["51:dibao"])


def test_unknown_item_is_refused_by_the_client(fed: Federation) -> None:
    """An item outside the catalogue is bad input on the caller's side."""
    from node.errors import BadInput

    with fed.client("51", to="44") as peer, pytest.raises(BadInput):
        peer.verify([WORKER], "dibao", ["salary.secret<=1"])


def test_query_without_consent_is_refused(fed: Federation) -> None:
    """A correctly signed query that carries no consent receipt is refused by the holder."""
    with fed.client("51", to="44") as peer, pytest.raises(PeerRefused) as err:
        peer.verify([WORKER], "dibao", CHECKS)
    assert err.value.status == "PERMISSION_DENIED" and "consent" in str(err.value)
