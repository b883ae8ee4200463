"""The Verify hot path does each check once per call (or once per signed root), and never fewer checks.

Real parts only: a coordinator and two nodes on loopback with mutual TLS, real SQLite stores,
real signatures. What is counted is calls into the real trust anchor and Ed25519
verifications of the real Verifier objects (wrapped on the instance, still doing the work).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from node.client.client import AsyncPeerClient, PeerRefused, PeerUnreachable
from node.crypto import pki
from node.crypto.errors import CertificateRejected
from node.domain.regions import province_tls_name
from node.testing import Federation, run_cluster
from tests.conftest import WORKER

CHECKS = ["deposit.balance_total<=2000000", "income.wage_monthly<=300000"]


@pytest.fixture(scope="module")
def fed(planted: dict[str, Any]) -> Iterator[Federation]:
    with run_cluster(["44", "51"], data=planted) as f:
        yield f


@pytest.fixture(scope="module")
def consent_id(fed: Federation) -> str:
    return fed.grant("51", [WORKER], "dibao").consent_id


def _outermost_calls(obj: Any, names: tuple[str, ...]) -> list[int]:
    """Count, on `obj`, calls to any of `names` that are not made from inside another of them."""
    count, depth = [0], [0]
    for name in names:
        original = getattr(obj, name)

        def counting(*args: Any, _original: Any = original, **kw: Any) -> Any:
            if depth[0] == 0:
                count[0] += 1
            depth[0] += 1
            try:
                return _original(*args, **kw)
            finally:
                depth[0] -= 1

        setattr(obj, name, counting)
    return count


def _restore(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        obj.__dict__.pop(name, None)


def test_one_certificate_check_per_verify_call(fed: Federation, consent_id: str) -> None:
    """A direct Verify validates the caller's TLS certificate once (admission), not again in the handler."""
    anchor = fed.servers["44"].servicer.admission.anchor
    names = ("validate_tls_peer_cert", "check_tls_peer")
    with fed.client("51", to="44") as peer:
        receipt = fed.receipt("51", consent_id)
        peer.verify([WORKER], "dibao", CHECKS, consent=receipt)  # warm: the channel is up
        count = _outermost_calls(anchor, tuple(n for n in names if hasattr(anchor, n)))
        try:
            result = peer.verify([WORKER], "dibao", CHECKS, consent=receipt)
        finally:
            _restore(anchor, names)
    assert result.answers[0].signature_valid
    assert count[0] == 1


def test_revocation_applies_to_a_call_on_a_live_connection(fed: Federation, consent_id: str) -> None:
    """A caller whose TLS certificate is revoked while its connection stays open is refused on the next call."""
    anchor = fed.servers["44"].servicer.admission.anchor
    serial = pki.load_cert(fed.member("51").cfg.tls_cert).serial_number
    before = anchor.revoked_serials
    with fed.client("51", to="44") as peer:
        receipt = fed.receipt("51", consent_id)
        assert peer.verify([WORKER], "dibao", CHECKS, consent=receipt).answers[0].signature_valid
        anchor.revoked_serials = before | {serial}
        try:
            with pytest.raises(PeerRefused, match="UNAUTHENTICATED"):
                peer.verify([WORKER], "dibao", CHECKS, consent=receipt)
        finally:
            anchor.revoked_serials = before
        assert peer.verify([WORKER], "dibao", CHECKS, consent=receipt).answers[0].signature_valid


def test_a_cached_tls_certificate_is_checked_against_its_validity_window(fed: Federation) -> None:
    """A TLS peer certificate accepted (and cached) before is refused once past its notAfter or before its notBefore."""
    anchor = fed.servers["44"].servicer.admission.anchor
    pem = fed.member("51").cfg.tls_cert.read_bytes()
    cert = pki.load_cert(fed.member("51").cfg.tls_cert)
    assert anchor.validate_tls_peer_cert(pem) == "urn:hedui:province:51"
    with pytest.raises(CertificateRejected, match="expired"):
        anchor.validate_tls_peer_cert(pem, at=cert.not_valid_after_utc + dt.timedelta(seconds=1))
    with pytest.raises(CertificateRejected, match="not yet valid"):
        anchor.validate_tls_peer_cert(pem, at=cert.not_valid_before_utc - dt.timedelta(seconds=1))
    assert anchor.validate_tls_peer_cert(pem) == "urn:hedui:province:51"


def _count_verifications(verifier: Any) -> list[int]:
    """Count Ed25519 verifications the real `verifier` performs (its `_check`), still performing them."""
    count = [0]
    check = verifier._check

    def counting(*args: Any) -> None:
        count[0] += 1
        check(*args)

    verifier._check = counting
    return count


def test_signatures_are_checked_once_per_batch_root_on_both_sides(fed: Federation, consent_id: str) -> None:
    """32 concurrent Verify calls: the node checks each query root once, the client each answer root once."""
    requester = fed.member("51")
    service = fed.servers["44"].servicer.service
    receipt = fed.receipt("51", consent_id)

    async def run() -> tuple[list[Any], list[bytes], int, int]:
        peer = AsyncPeerClient(requester, fed.addresses["44"], server_name=province_tls_name("44"))
        try:
            await peer.wait_ready()
            prepared = peer_prepare(requester)
            await peer.send(prepared, consent=receipt)  # warm: the receipt and certificates are checked and cached
            server, client = _count_verifications(service.verifier), _count_verifications(requester.verifier)
            try:
                results = await asyncio.gather(*(peer.send(prepared, consent=receipt) for _ in range(32)))
            finally:
                del service.verifier._check, requester.verifier._check
            return [a for r in results for a in r.answers], [r.query_body for r in results], server[0], client[0]
        finally:
            await peer.close()

    answers, _queries, server_checks, client_checks = asyncio.run(run())
    assert len(answers) == 32 and all(a.signature_valid and a.problem is None for a in answers)
    answer_roots = {a.signed.signature.value for a in answers}
    assert client_checks == len(answer_roots) < 32
    assert 1 <= server_checks < 32


def peer_prepare(member: Any) -> Any:
    from node.client.query import prepare

    return prepare(requester=member.province, linkage_key=member.linkage_key, ids=[WORKER], purpose="dibao",
                   checks=CHECKS, catalogue=member.catalogue, policy=member.policy,
                   max_subjects=member.cfg.limits.max_subjects, max_checks=member.cfg.limits.max_checks)


async def _concurrent_sends(fed: Federation, consent_id: str, n: int) -> list[Any]:
    requester = fed.member("51")
    receipt = fed.receipt("51", consent_id)
    peer = AsyncPeerClient(requester, fed.addresses["44"], server_name=province_tls_name("44"))
    try:
        await peer.wait_ready()
        prepared = peer_prepare(requester)
        return list(await asyncio.gather(*(peer.send(prepared, consent=receipt) for _ in range(n)),
                                         return_exceptions=True))
    finally:
        await peer.close()


def test_concurrent_answers_each_have_their_audit_record(fed: Federation, consent_id: str) -> None:
    """32 concurrent Verify calls signed and audited together: 32 answers, 32 audit records, fewer transactions."""
    auditor = fed.servers["44"].auditor
    records, transactions = auditor.records, auditor.transactions
    results = asyncio.run(_concurrent_sends(fed, consent_id, 32))
    assert all(not isinstance(r, BaseException) and r.answers[0].signature_valid for r in results)
    assert auditor.records - records == 32
    assert 1 <= auditor.transactions - transactions < 32


def test_no_concurrent_answer_leaves_when_the_audit_log_fails(fed: Federation, consent_id: str) -> None:
    """With the audit log unwritable, every one of 32 concurrent Verify calls is refused UNAVAILABLE, none answered."""
    asyncio.run(_concurrent_sends(fed, consent_id, 1))
    fed.servers["44"].audit_log.close()  # the disk is gone, as far as the node can tell (last test of the module)
    results = asyncio.run(_concurrent_sends(fed, consent_id, 32))
    assert all(isinstance(r, PeerUnreachable) and r.status == "UNAVAILABLE" for r in results)
    assert all("audit log cannot be written" in str(r) for r in results)
