"""Coordinator + three nodes on loopback: consent-gated, blind, failure-tolerant routing."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.client.client import PeerRefused
from node.domain import idnumber
from node.errors import BadInput
from node.testing import Federation, capture_logs, run_cluster
from tests.conftest import write_csv

# A Sichuan (51) household: the husband works and saves in Guangdong (44), the wife in Zhejiang (33).
HUSBAND = idnumber.make("511702", dt.date(1985, 4, 9), 219)
WIFE = idnumber.make("511702", dt.date(1987, 8, 21), 228)
CHILD = idnumber.make("511702", dt.date(2012, 1, 5), 233)
HUSBAND_DEPOSIT = 987654321  # 9,876,543.21 yuan: the canary value
WIFE_WAGE = 312345
CHECKS = ["deposit.balance_total<=2000000", "income.wage_monthly<=400000"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("routing-data")
    return {
        "44": write_csv(d / "44.csv", [
            (HUSBAND, "deposit.balance_total", HUSBAND_DEPOSIT, "2026-10-31", "bank:CMB"),
            (HUSBAND, "income.wage_monthly", 812300, "2026-10-31", "hrss"),
        ]),
        "33": write_csv(d / "33.csv", [
            (WIFE, "deposit.balance_total", 180000, "2026-10-31", "bank:ABC"),
            (WIFE, "income.wage_monthly", WIFE_WAGE, "2026-10-31", "hrss"),
        ]),
        "51": write_csv(d / "51.csv", [
            (HUSBAND, "hukou.registered", 1, "2026-11-20", "mps"),
            (WIFE, "hukou.registered", 1, "2026-11-20", "mps"),
            (CHILD, "hukou.registered", 1, "2026-11-20", "mps"),
        ]),
    }


@pytest.fixture(scope="module")
def log_sink() -> Iterator[io.StringIO]:
    """Everything every server in this module logs, as JSON lines."""
    with capture_logs() as sink:
        yield sink


@pytest.fixture(scope="module")
def fed(data: dict[str, Path], log_sink: io.StringIO) -> Iterator[Federation]:
    with run_cluster(["51", "44", "33"], data=data) as federation:
        yield federation


@pytest.fixture()
def consent(fed: Federation) -> str:
    return fed.grant("51", [HUSBAND, WIFE, CHILD], "dibao").consent_id


def test_household_spread_over_two_provinces_is_verified_through_the_coordinator(fed: Federation, consent: str) -> None:
    """Sichuan verifies a household whose members' income and savings sit in Guangdong and Zhejiang."""
    result = fed.verify("51", [HUSBAND, WIFE, CHILD], CHECKS, consent_id=consent)
    assert result.routing == {"44": "OK", "33": "OK"}
    by_province = {a.province: a for a in result.answers}
    assert set(by_province) == {"33", "44"} and all(a.signature_valid for a in result.answers)
    outcomes = {(a.province, r.subject, r.check): r.outcome for a in result.answers for r in a.results}
    assert outcomes[("44", 0, CHECKS[0])] == "NOT_SATISFIED"
    assert outcomes[("44", 0, CHECKS[1])] == "NOT_SATISFIED"
    assert outcomes[("33", 1, CHECKS[0])] == "SATISFIED"
    assert outcomes[("33", 1, CHECKS[1])] == "SATISFIED"
    assert outcomes[("44", 1, CHECKS[0])] == outcomes[("33", 0, CHECKS[0])] == "NO_RECORD"
    assert outcomes[("44", 2, CHECKS[0])] == outcomes[("33", 2, CHECKS[1])] == "NO_RECORD"


def test_routed_query_without_consent_is_refused(fed: Federation) -> None:
    """No consent id: the client refuses to route; an unknown consent id is refused by the coordinator."""
    from node.client.routed import routed_verify
    from node.wire.v1 import verification_pb2

    with pytest.raises(BadInput):
        routed_verify(fed.member("51"), [HUSBAND], "dibao", CHECKS, consent=None)
    forged = verification_pb2.SignedConsent(body=verification_pb2.ConsentBody(consent_id="c-doesnotexist").SerializeToString())
    with pytest.raises(PeerRefused) as err:
        routed_verify(fed.member("51"), [HUSBAND], "dibao", CHECKS, consent=forged)
    assert err.value.status == "PERMISSION_DENIED"


def test_another_provinces_consent_is_refused(fed: Federation, consent: str) -> None:
    """Guangdong cannot ride on Sichuan's consent, neither routed nor directly."""
    from node.client.routed import routed_verify

    receipt = fed.receipt("51", consent)
    with pytest.raises(PeerRefused):
        routed_verify(fed.member("44"), [WIFE], "dibao", CHECKS, consent=receipt)
    with fed.client("44", to="33") as peer, pytest.raises(PeerRefused) as err:
        peer.verify([WIFE], "dibao", CHECKS, consent=receipt)
    assert "another province" in str(err.value)


def test_subject_outside_consent_is_refused(fed: Federation) -> None:
    """A consent for the husband alone does not let Sichuan ask about the wife."""
    consent_id = fed.grant("51", [HUSBAND], "dibao").consent_id
    with fed.client("51", to="33") as peer, pytest.raises(PeerRefused) as err:
        peer.verify([WIFE], "dibao", CHECKS, consent=fed.receipt("51", consent_id))
    assert "every subject" in str(err.value)


def test_purpose_outside_consent_is_refused(fed: Federation, consent: str) -> None:
    """A dibao consent does not authorise a medical-assistance query."""
    with fed.client("51", to="44") as peer, pytest.raises(PeerRefused) as err:
        peer.verify([HUSBAND], "medical", CHECKS, consent=fed.receipt("51", consent))
    assert "another purpose" in str(err.value)


def test_item_outside_consent_scope_is_denied_on_every_path(fed: Federation) -> None:
    """A consent scoped to deposits refuses an income check: directly refused, routed DENIED."""
    consent_id = fed.grant("51", [HUSBAND, WIFE], "dibao", scopes=["deposit"]).consent_id
    ok = fed.verify("51", [HUSBAND, WIFE], CHECKS[:1], consent_id=consent_id)
    assert ok.routing == {"44": "OK", "33": "OK"}
    routed = fed.verify("51", [HUSBAND, WIFE], CHECKS, consent_id=consent_id)
    assert routed.routing == {"44": "DENIED", "33": "DENIED"} and routed.answers == []
    with fed.client("51", to="44") as peer, pytest.raises(PeerRefused) as err:
        peer.verify([HUSBAND], "dibao", CHECKS, consent=fed.receipt("51", consent_id))
    assert "every data item" in str(err.value)


def test_revocation_is_in_force_on_every_path_within_five_seconds(fed: Federation) -> None:
    """After revocation the coordinator refuses at once and every holder refuses within 5 s."""
    consent_id = fed.grant("51", [HUSBAND, WIFE], "dibao").consent_id
    receipt = fed.receipt("51", consent_id)
    assert fed.verify("51", [HUSBAND], CHECKS, consent_id=consent_id).routing["44"] == "OK"
    fed.revoke("51", consent_id)
    revoked_at = time.monotonic()
    with pytest.raises(PeerRefused):
        fed.verify("51", [HUSBAND], CHECKS, consent_id=consent_id)
    refused = []
    with fed.client("51", to="44") as peer:
        while time.monotonic() - revoked_at < 5.0 and not refused:
            try:
                peer.verify([HUSBAND], "dibao", CHECKS, consent=receipt)
                time.sleep(0.1)  # probing a time bound, not waiting for readiness
            except PeerRefused as exc:
                refused.append(str(exc))
    assert refused and "revoked" in refused[0]
    assert time.monotonic() - revoked_at < 5.0


def test_killed_node_shows_unavailable_while_others_answer(fed: Federation, consent: str) -> None:
    """With Zhejiang's node down, Guangdong still answers and Zhejiang is reported UNAVAILABLE."""
    fed.stop_node("33")
    try:
        result = fed.verify("51", [HUSBAND, WIFE], CHECKS, consent_id=consent, deadline_s=5)
    finally:
        fed.start_node("33")
    assert result.routing == {"44": "OK", "33": "UNAVAILABLE"}
    assert [a.province for a in result.answers] == ["44"]


class _Stall:
    """A signer that never finishes: the node accepts the call and then hangs."""

    async def commit(self, *_: Any) -> Any:  # stands for the node's answer commit (signing and audit)
        await asyncio.sleep(3600)


def test_stalled_node_shows_deadline_exceeded_within_the_deadline(fed: Federation, consent: str) -> None:
    """A node that hangs is reported DEADLINE_EXCEEDED and the reply still arrives within the deadline: the
    client's own gRPC deadline would fail the call (DEADLINE_EXCEEDED raised) had the reply come later.

    The coordinator gives each province the caller's remaining time less 10 % (router.per_province_timeout),
    so the reply has 10 % of the deadline to come back: at 5 s that is 0.5 s, which a pause of the loaded
    test process does not use up (at 2 s the 0.2 s left only 0.12-0.15 s measured slack)."""
    servicer = fed.servers["33"].servicer
    answers, servicer.answers = servicer.answers, _Stall()
    try:
        result = fed.verify("51", [HUSBAND, WIFE], CHECKS, consent_id=consent, deadline_s=5.0)
    finally:
        servicer.answers = answers
    assert result.routing == {"44": "OK", "33": "DEADLINE_EXCEEDED"}
    assert [a.province for a in result.answers] == ["44"]


def test_ledger_verifier_catches_an_edited_row(fed: Federation) -> None:
    """Editing a consent in the ledger with the sqlite3 tool is caught by `hedui ledger verify`."""
    fed.grant("51", [CHILD], "education")
    cfg = fed.coordinator_config
    verify = [sys.executable, "-m", "node.cli.main", "ledger", "verify", "--config", str(cfg)]
    assert subprocess.run(verify, capture_output=True, timeout=60).returncode == 0
    ledger = fed.root / "coordinator" / "ledger.sqlite"
    with sqlite3.connect(ledger) as db:
        db.execute("DROP TRIGGER ledger_no_update")
        db.execute("UPDATE ledger SET at_ms = at_ms + 1 WHERE idx = 2")
    proc = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "entry 2" in proc.stdout


def test_coordinator_never_sees_ids_values_or_questions(fed: Federation, log_sink: io.StringIO) -> None:
    """Canary: no ID number, data value or check ever appears in what the coordinator stored, logged or received."""
    coordinator = fed.servers["coordinator"].servicer
    received: list[bytes] = []
    patched: list[tuple[Any, str, Any]] = []

    def spy(owner: Any, name: str, *, is_async: bool) -> None:
        original = getattr(owner, name)
        patched.append((owner, name, original))

        def record(args: tuple[Any, ...], reply: Any) -> Any:
            received.extend(a.SerializeToString() for a in args if hasattr(a, "SerializeToString"))
            received.append(reply.SerializeToString())
            return reply

        async def async_wrapper(*args: Any) -> Any:
            return record(args, await original(*args))

        setattr(owner, name, async_wrapper if is_async else (lambda *args: record(args, original(*args))))

    spy(coordinator.consents, "register", is_async=False)
    spy(coordinator.router, "discover", is_async=False)
    spy(coordinator.router, "route", is_async=True)
    try:
        consent_id = fed.grant("51", [HUSBAND, WIFE, CHILD], "dibao").consent_id
        for checks in (CHECKS, ["income.wage_monthly==312345", "deposit.balance_total>=987654321"]):
            result = fed.verify("51", [HUSBAND, WIFE, CHILD], checks, consent_id=consent_id)
            assert result.routing == {"44": "OK", "33": "OK"}
    finally:
        for owner, name, original in patched:
            setattr(owner, name, original)
    assert len(received) >= 6
    stored = b"".join(p.read_bytes() for p in (fed.root / "coordinator").rglob("*") if p.is_file())
    logged = log_sink.getvalue().encode()
    coordinator_lines = b"\n".join(line for line in logged.splitlines() if b'"coordinator"' in line)
    assert coordinator_lines, "the coordinator logged nothing: the canary would prove nothing"
    canaries = _encodings(HUSBAND) | _encodings(WIFE) | _encodings(CHILD)
    canaries |= _number_encodings(HUSBAND_DEPOSIT) | _number_encodings(WIFE_WAGE) | _number_encodings(312345)
    canaries |= {b"deposit.balance_total", b"income.wage_monthly", b"NOT_SATISFIED", b"SATISFIED"}
    for name, blob in (("received", b"".join(received)), ("stored", stored), ("logged", coordinator_lines)):
        leaked = [c for c in canaries if c in blob]
        assert not leaked, f"coordinator {name} data contains {leaked}"
    # The holders' own logs carry no ID number or value either.
    assert not [c for c in _encodings(HUSBAND) | {str(HUSBAND_DEPOSIT).encode()} if c in logged]


def _encodings(id_number: str) -> set[bytes]:
    return {id_number.encode(), id_number.encode("utf-16-le"), id_number[:17].encode(), id_number[6:14].encode() + id_number[14:17].encode()}


def _number_encodings(value: int) -> set[bytes]:
    zigzag = (value << 1) ^ (value >> 63)
    out = {str(value).encode(), value.to_bytes(8, "big"), value.to_bytes(8, "little"), _varint(value), _varint(zigzag)}
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_discovery_is_limited_to_the_consented_household(fed: Federation, consent: str) -> None:
    """A province cannot use a consent to find where someone outside that household holds data."""
    from node.client.coordinator import CoordinatorClient
    from node.crypto.tokens import subject_token
    from node.wire.v1 import coordinator_pb2

    outsider = idnumber.make("440305", dt.date(1979, 3, 3), 555)
    m = fed.member("51")
    with CoordinatorClient(m) as c, pytest.raises(PeerRefused) as err:
        epoch, edts = c.discovery_tokens([subject_token(m.linkage_key, outsider)])
        c.call("Discover", coordinator_pb2.DiscoverRequest(consent_id=consent, request_id="probe-0001",
                                                           discovery_tokens=edts, epoch=epoch))
    assert "every subject" in str(err.value)
