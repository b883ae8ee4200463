"""The security suite: each threat of docs/SECURITY.md against real servers, real TLS, real signatures.

Every test names the behaviour it shows. Servers run on loopback (port 0) with mutual TLS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from node.client.client import PeerRefused
from node.client.query import prepare, sign_query
from node.crypto import pki, signing
from node.crypto.revocation import revoke
from node.domain.idnumber import InvalidIdNumber
from node.domain.regions import province_uri
from node.member import Member
from node.testing import Federation, run_cluster
from node.testing.consents import reissue
from node.wire.v1 import verification_pb2, verification_pb2_grpc
from tests.conftest import SPOUSE, STRANGER, WORKER

CHECKS = ["deposit.balance_total<=2000000", "income.wage_monthly<300000"]
VERIFY = "/hedui.v1.Verification/Verify"


@pytest.fixture(scope="module")
def fed(planted: dict[str, Path]) -> Iterator[Federation]:
    with run_cluster(["32", "44", "51"], data=planted) as federation:
        yield federation


@pytest.fixture(scope="module")
def receipts(fed: Federation) -> dict[str, verification_pb2.SignedConsent]:
    out = {}
    for code in ("32", "51"):
        out[code] = fed.grant(code, [WORKER, SPOUSE, STRANGER], "dibao").receipt
    return out


# ---------------------------------------------------------------- helpers


def pem_pair(cert: Any, key: Any) -> tuple[bytes, bytes]:
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def channel(fed: Federation, target: str, *, cert: bytes | None, key: bytes | None, ca: bytes | None = None,
            options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=ca or (fed.pki / "ca.pem").read_bytes(),
                                         private_key=key, certificate_chain=cert)
    return grpc.secure_channel(fed.addresses[target], creds, options=options or [])


def as_member(fed: Federation, code: str, target: str) -> grpc.Channel:
    m = fed.member(code)
    return channel(fed, target, cert=m.cfg.tls_cert.read_bytes(), key=m.cfg.tls_key.read_bytes())


def body_for(fed: Federation, receipts: dict, code: str = "51", *, ids: list[str] | None = None,
             checks: list[str] | None = None) -> verification_pb2.QueryBody:
    m = fed.member(code)
    prepared = prepare(requester=code, linkage_key=m.linkage_key, ids=ids or [WORKER], purpose="dibao",
                       checks=checks or CHECKS, catalogue=m.catalogue, policy=m.policy)
    return prepared.body(consent=receipts[code])


def call(ch: grpc.Channel, query: verification_pb2.SignedQuery, timeout: float = 5) -> verification_pb2.VerifyResponse:
    return verification_pb2_grpc.VerificationStub(ch).Verify(verification_pb2.VerifyRequest(signed=query), timeout=timeout)


def refused(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value


def ok_call(fed: Federation, receipts: dict, code: str = "51", target: str = "44") -> None:
    with as_member(fed, code, target) as ch:
        call(ch, sign_query(fed.member(code).signer, body_for(fed, receipts, code)))


# ---------------------------------------------------------------- certificates


def test_no_client_certificate_is_refused_at_handshake(fed: Federation, receipts: dict) -> None:
    """A caller without a client certificate never reaches a handler."""
    with channel(fed, "44", cert=None, key=None) as ch:
        err = refused(lambda: call(ch, sign_query(fed.member("51").signer, body_for(fed, receipts))))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(fed: Federation, receipts: dict) -> None:
    """A province certificate issued by a foreign CA fails the handshake."""
    ca, ca_key = pki.make_ca("Impostor CA")
    cert, key = pem_pair(*pki.issue_tls_cert(ca, ca_key, province_uri("51")))
    with channel(fed, "44", cert=cert, key=key) as ch:
        err = refused(lambda: call(ch, sign_query(fed.member("51").signer, body_for(fed, receipts))))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def _federation_ca(fed: Federation) -> tuple[Any, Any]:
    return pki.load_cert(fed.pki / "ca.pem"), pki.load_private_key(fed.pki / "ca.key")


@pytest.mark.parametrize("window", ["expired", "not_yet_valid"])
def test_certificate_outside_its_validity_is_refused(fed: Federation, receipts: dict, window: str) -> None:
    """A federation certificate that expired, or is not valid yet, fails the handshake."""
    ca, ca_key = _federation_ca(fed)
    now = dt.datetime.now(dt.UTC)
    span = (now - dt.timedelta(days=30), now - dt.timedelta(days=1)) if window == "expired" else \
        (now + dt.timedelta(days=1), now + dt.timedelta(days=30))
    cert, key = pem_pair(*pki.issue_tls_cert(ca, ca_key, province_uri("51"), not_before=span[0], not_after=span[1]))
    with channel(fed, "44", cert=cert, key=key) as ch:
        err = refused(lambda: call(ch, sign_query(fed.member("51").signer, body_for(fed, receipts))))
    assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)


def test_server_only_certificate_cannot_act_as_client(fed: Federation, receipts: dict) -> None:
    """A federation certificate without clientAuth is not accepted as a caller's identity."""
    ca, ca_key = _federation_ca(fed)
    cert, key = pem_pair(*pki.issue_tls_cert(ca, ca_key, province_uri("51"), server_only=True))
    with channel(fed, "44", cert=cert, key=key) as ch:
        err = refused(lambda: call(ch, sign_query(fed.member("51").signer, body_for(fed, receipts))))
    assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)


def test_wrong_province_tls_certificate_is_refused(fed: Federation, receipts: dict) -> None:
    """Jiangsu's TLS certificate carrying a query signed by Sichuan is refused."""
    with as_member(fed, "32", "44") as ch:
        err = refused(lambda: call(ch, sign_query(fed.member("51").signer, body_for(fed, receipts))))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


# ---------------------------------------------------------------- signatures


def test_flipped_payload_byte_is_refused(fed: Federation, receipts: dict) -> None:
    """One flipped byte of the signed query body invalidates it."""
    query = sign_query(fed.member("51").signer, body_for(fed, receipts))
    raw = bytearray(query.body)
    raw[len(raw) // 2] ^= 0x40
    query.body = bytes(raw)
    with as_member(fed, "51", "44") as ch:
        err = refused(lambda: call(ch, query))
    assert err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT)


def test_signature_by_other_provinces_key_is_refused(fed: Federation, receipts: dict) -> None:
    """A query claiming Sichuan but signed with Jiangsu's key is refused."""
    query = sign_query(fed.member("32").signer, body_for(fed, receipts))
    with as_member(fed, "51", "44") as ch:
        err = refused(lambda: call(ch, query))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_signature_by_unknown_key_is_refused(fed: Federation, receipts: dict) -> None:
    """A signing certificate from outside the federation CA is refused as unauthenticated."""
    ca, ca_key = pki.make_ca("Impostor CA")
    key = ed25519.Ed25519PrivateKey.generate()
    cert = pki.issue_signing_cert(ca, ca_key, province_uri("51"), key.public_key())
    rogue = signing.Signer(key, cert.public_bytes(serialization.Encoding.DER))
    with as_member(fed, "51", "44") as ch:
        err = refused(lambda: call(ch, sign_query(rogue, body_for(fed, receipts))))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tampered_batch_proof_is_refused(fed: Federation, receipts: dict) -> None:
    """A batch-signed query whose Merkle path was altered does not verify."""
    signer = fed.member("51").signer
    bodies = [body_for(fed, receipts).SerializeToString() for _ in range(3)]
    sigs = signer.sign_many([(signing.QUERY, b) for b in bodies])
    sigs[1].batch.path[0] = bytes(32)
    with as_member(fed, "51", "44") as ch:
        call(ch, verification_pb2.SignedQuery(body=bodies[0], signature=sigs[0]))
        err = refused(lambda: call(ch, verification_pb2.SignedQuery(body=bodies[1], signature=sigs[1])))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------- replay


def test_same_nonce_is_refused(fed: Federation, receipts: dict) -> None:
    """A signed query sent twice is answered once."""
    query = sign_query(fed.member("51").signer, body_for(fed, receipts))
    with as_member(fed, "51", "44") as ch:
        call(ch, query)
        err = refused(lambda: call(ch, query))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("shift_s", [-3600, -301, 301, 86_400])
def test_issue_time_outside_the_clock_window_is_refused(fed: Federation, receipts: dict, shift_s: int) -> None:
    """Queries issued too long ago or in the future are refused."""
    body = body_for(fed, receipts)
    body.issued_at_ms += shift_s * 1000
    with as_member(fed, "51", "44") as ch:
        err = refused(lambda: call(ch, sign_query(fed.member("51").signer, body)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_replay_after_a_restart_is_refused(fed: Federation, receipts: dict) -> None:
    """Seen nonces persist: restarting the node does not reopen the window."""
    query = sign_query(fed.member("51").signer, body_for(fed, receipts))
    with as_member(fed, "51", "44") as ch:
        call(ch, query)
    fed.stop_node("44")
    fed.start_node("44")
    with as_member(fed, "51", "44") as ch:
        err = refused(lambda: call(ch, query))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


# ---------------------------------------------------------------- consent


def test_missing_consent_is_refused(fed: Federation, receipts: dict) -> None:
    """A query without a consent receipt is refused."""
    body = body_for(fed, receipts)
    body.ClearField("consent")
    with as_member(fed, "51", "44") as ch:
        err = refused(lambda: call(ch, sign_query(fed.member("51").signer, body)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "consent" in err.details()


def test_expired_consent_is_refused(fed: Federation, receipts: dict) -> None:
    """A coordinator-signed receipt whose validity (as the requester signed it) ended is refused."""
    coordinator = Member.from_config(fed.coordinator_config)
    now_ms = int(time.time() * 1000)
    expired = {"not_before_ms": now_ms - 86_400_000, "not_after_ms": now_ms - 1000}
    body = body_for(fed, receipts)
    body.consent.CopyFrom(reissue(receipts["51"], coordinator.signer, request_signer=fed.member("51").signer,
                                  request_edits=expired, **expired))
    with as_member(fed, "51", "44") as ch:
        err = refused(lambda: call(ch, sign_query(fed.member("51").signer, body)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "expired" in err.details()


def test_forged_consent_is_refused(fed: Federation, receipts: dict) -> None:
    """A receipt edited after the coordinator signed it (wider scope) is refused."""
    body = body_for(fed, receipts)
    consent = verification_pb2.ConsentBody.FromString(body.consent.body)
    consent.not_after_ms += 10 ** 9
    body.consent.body = consent.SerializeToString()
    with as_member(fed, "51", "44") as ch:
        err = refused(lambda: call(ch, sign_query(fed.member("51").signer, body)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_other_requesters_consent_is_refused(fed: Federation, receipts: dict) -> None:
    """Sichuan's receipt in Jiangsu's query is refused."""
    body = body_for(fed, receipts, "32")
    body.consent.CopyFrom(receipts["51"])
    with as_member(fed, "32", "44") as ch:
        err = refused(lambda: call(ch, sign_query(fed.member("32").signer, body)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_revoked_consent_is_refused(fed: Federation) -> None:
    """Once revoked and synced, the holder refuses the consent."""
    info = fed.grant("51", [WORKER], "dibao")
    fed.revoke("51", info.consent_id)
    fed.loop.run(fed.servers["44"].link.sync_revocations())
    with fed.client("51", to="44") as peer, pytest.raises(PeerRefused) as err:
        peer.verify([WORKER], "dibao", CHECKS, consent=info.receipt)
    assert "revoked" in str(err.value)


def test_item_outside_consent_scope_is_refused(fed: Federation) -> None:
    """A deposit-only consent does not cover an income check."""
    info = fed.grant("51", [WORKER], "dibao", scopes=["deposit"])
    with fed.client("51", to="44") as peer, pytest.raises(PeerRefused):
        peer.verify([WORKER], "dibao", CHECKS, consent=info.receipt)


# ---------------------------------------------------------------- input


@pytest.mark.parametrize("bad", [
    WORKER[:-1] + ("0" if WORKER[-1] != "0" else "1"),  # wrong check character
    WORKER[:17],                                          # too short
    WORKER + "1",                                         # too long
    "99" + WORKER[2:],                                    # unknown province
    WORKER[:6] + "19990231" + WORKER[14:],                # impossible birth date
    WORKER[:6] + "20990101" + WORKER[14:],                # birth in the future
    WORKER[:10] + "ab" + WORKER[12:],                     # letters in the body
    "５１" + WORKER[2:],                                   # full-width digits
    WORKER[:5] + "\x00" + WORKER[6:],                     # control character
    "",
])
def test_bad_id_numbers_are_refused_before_anything_is_sent(fed: Federation, bad: str) -> None:
    """Every kind of malformed ID number is bad input on the caller's side, never echoed."""
    with fed.client("51", to="44") as peer, pytest.raises(InvalidIdNumber) as err:
        peer.verify([bad], "dibao", CHECKS)
    assert (bad not in str(err.value)) or bad == ""


def test_oversized_message_is_refused(fed: Federation) -> None:
    """A request beyond the server's maximum message size is refused without being processed."""
    m = fed.member("51")
    with as_member(fed, "51", "44") as ch:
        raw = ch.unary_unary(VERIFY, request_serializer=None, response_deserializer=None)
        err = refused(lambda: raw(b"\x0a" + b"\xff" * (5 * 1024 * 1024), timeout=10))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _ = m


@pytest.mark.parametrize("n_subjects, n_checks", [(17, 1), (1, 33), (0, 1), (1, 0)])
def test_subject_and_check_counts_are_capped(fed: Federation, receipts: dict, n_subjects: int, n_checks: int) -> None:
    """More than 16 subjects or 32 checks (or none) is refused."""
    body = body_for(fed, receipts)
    del body.subjects[:]
    body.subjects.extend(bytes([i]) * 32 for i in range(n_subjects))
    template = body.checks[0]
    del body.checks[:]
    body.checks.extend([template] * n_checks)
    with as_member(fed, "51", "44") as ch:
        err = refused(lambda: call(ch, sign_query(fed.member("51").signer, body)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("field, value", [
    ("request_id", "x'; DROP TABLE facts;--"),
    ("request_id", "abc\ndef\x00ghij"),
    ("purpose", "dibao' OR '1'='1"),
    ("purpose", "\u202edibao"),
    ("attribute", "deposit.balance_total; DELETE FROM facts"),
    ("attribute", "../../etc/passwd"),
])
def test_injection_and_control_strings_are_refused_without_echo(fed: Federation, receipts: dict, field: str,
                                                                 value: str) -> None:
    """Injection-like and control-character strings are refused and never echoed back."""
    body = body_for(fed, receipts)
    if field == "attribute":
        body.checks[0].attribute = value
    else:
        setattr(body, field, value)
    with as_member(fed, "51", "44") as ch:
        err = refused(lambda: call(ch, sign_query(fed.member("51").signer, body)))
    assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)
    assert value not in (err.details() or "")
    ok_call(fed, receipts)  # and the store is intact


@pytest.mark.parametrize("garbage", [b"\xff\xfe\xfd\xfc", b"\x0a\x05hello", bytes(range(256)), b"\x08" * 64])
def test_garbage_bytes_never_crash_or_echo(fed: Federation, receipts: dict, garbage: bytes) -> None:
    """Undecodable or nonsensical protobuf is refused, not echoed, and the node keeps serving."""
    with as_member(fed, "51", "44") as ch:
        raw = ch.unary_unary(VERIFY, request_serializer=None, response_deserializer=None)
        err = refused(lambda: raw(garbage, timeout=5))
    assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAUTHENTICATED)
    assert garbage.hex() not in (err.details() or "") and "Traceback" not in (err.details() or "")
    ok_call(fed, receipts)


def test_call_without_deadline_is_refused(fed: Federation, receipts: dict) -> None:
    """Every call must carry a deadline."""
    with as_member(fed, "51", "44") as ch:
        stub = verification_pb2_grpc.VerificationStub(ch)
        query = sign_query(fed.member("51").signer, body_for(fed, receipts))
        err = refused(lambda: stub.Verify(verification_pb2.VerifyRequest(signed=query)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "deadline" in err.details()


def test_province_cannot_probe_which_subjects_another_holds(fed: Federation) -> None:
    """No node answers "which of these tokens do you hold" to anyone: the Holds call is gone (discovery uses locators)."""
    with as_member(fed, "51", "44") as ch:
        holds = ch.unary_unary("/hedui.v1.Verification/Holds", request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
        err = refused(lambda: holds(bytes(34), timeout=5))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED


# ---------------------------------------------------------------- revocation of certificates


def test_revoked_certificate_is_refused_before_and_during_a_connection(fed: Federation, receipts: dict) -> None:
    """Revoking Jiangsu refuses its next call on an already open connection, and new ones."""
    ch = as_member(fed, "32", "44")
    call(ch, sign_query(fed.member("32").signer, body_for(fed, receipts, "32")))  # connection is open and works
    report = revoke(fed.pki, member="32")
    coordinator = fed.servers["coordinator"]
    (coordinator.crl.path).write_bytes(report.path.read_bytes())
    coordinator.crl.refresh()
    fed.loop.run(fed.servers["44"].link.sync_certificate_revocations())
    err = refused(lambda: call(ch, sign_query(fed.member("32").signer, body_for(fed, receipts, "32"))))
    ch.close()
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in err.details()
    with as_member(fed, "32", "44") as fresh:
        err = refused(lambda: call(fresh, sign_query(fed.member("32").signer, body_for(fed, receipts, "32"))))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    ok_call(fed, receipts, "51")  # others are unaffected


# ---------------------------------------------------------------- overload


@pytest.fixture()
def tight(planted: dict[str, Path], tmp_path: Path) -> Iterator[Federation]:
    limits = {"limits": {"max_concurrent_rpcs": 3, "rate_per_peer_per_s": 3.0, "rate_burst": 4}}
    with run_cluster(["51", "44"], root=tmp_path, data=planted, config_extra=limits) as federation:
        yield federation


def test_over_the_rate_limit_is_resource_exhausted(tight: Federation) -> None:
    """A peer calling faster than its rate gets RESOURCE_EXHAUSTED, and the node stays up."""
    receipt = tight.grant("51", [WORKER], "dibao").receipt
    codes = []
    with tight.client("51", to="44") as peer:
        for _ in range(8):
            try:
                peer.verify([WORKER], "dibao", CHECKS, consent=receipt)
                codes.append("OK")
            except PeerRefused as exc:
                codes.append(exc.status)
    assert "OK" in codes and "RESOURCE_EXHAUSTED" in codes


class _Hold:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def commit(self, *_: Any) -> Any:  # stands for the node's answer commit (signing and audit)
        await self.release.wait()
        raise RuntimeError("released")


def test_over_the_concurrency_cap_is_resource_exhausted(tight: Federation) -> None:
    """With every slot held by stalled calls, one more call is refused at once."""
    receipt = tight.grant("51", [WORKER], "dibao").receipt
    servicer = tight.servers["44"].servicer
    hold = tight.loop.run(_make_hold())
    answers, servicer.answers = servicer.answers, hold
    m = tight.member("51")
    results: list[str] = []

    def one() -> None:
        try:
            with tight.client("51", to="44", deadline_s=10) as peer:
                peer.verify([WORKER], "dibao", CHECKS, consent=receipt)
            results.append("OK")
        except PeerRefused as exc:
            results.append(exc.status)

    threads = [threading.Thread(target=one) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while results.count("RESOURCE_EXHAUSTED") < 3 and time.monotonic() < deadline:
            time.sleep(0.02)  # observing a bound, not waiting for readiness
    finally:
        tight.loop.loop.call_soon_threadsafe(hold.release.set)
        for t in threads:
            t.join(timeout=15)
        servicer.answers = answers
    assert results.count("RESOURCE_EXHAUSTED") >= 3
    _ = m


async def _make_hold() -> _Hold:
    return _Hold()
