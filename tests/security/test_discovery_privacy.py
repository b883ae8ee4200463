"""Discovery without broadcast (issue 12.1): locators instead of asking every province.

Real clusters (real nodes, stores, signatures, mutual TLS). What a province receives is counted
at its admission gate, which every call to any of its services passes; what the coordinator
receives is recorded at the decoder of every coordinator request (test-only instrumentation
of node.server.base, installed before the servers start).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from node import config as config_mod
from node.coordinator.locators import LOCATORS_FILE
from node.client.client import PeerRefused
from node.crypto import discovery, locator, signing
from node.crypto.tokens import subject_token
from node.domain import idnumber
from node.server import base, locator_publisher
from node.testing import Federation, run_cluster
from node.testing.standards import standards_document
from node.wire.v1 import coordinator_pb2, coordinator_pb2_grpc
from node.store.sqlite.storage import audit_file
from tests.conftest import write_csv

HEDUI = [sys.executable, "-m", "node.cli.main"]
EARNER = idnumber.make("510104", dt.date(1980, 3, 1), 201)
SPOUSE = idnumber.make("510104", dt.date(1982, 6, 2), 202)
OTHER = idnumber.make("320102", dt.date(1990, 5, 6), 203)  # held by 32, never asked about
LATE = idnumber.make("510104", dt.date(1999, 9, 9), 204)  # ingested into 44 while it runs
EPOCH_S = 7 * 24 * 3600  # the default: an epoch boundary falling mid-test (it waits on one epoch's locator) is ~1e-5 likely
COORDINATOR_SERVICES = ("hedui.v1.Coordinator", "hedui.v1.HouseholdRounds")
# 32's own bound (from its population, say) is tighter than the federation's.
CONFIG = {"discovery": {"epoch_s": EPOCH_S, "max_subjects": 1000, "max_subjects_of": {"32": 50}}}
CHECK = "income.wage_monthly<=400000"
PERIOD = "2026-12"


@pytest.fixture(scope="module")
def received() -> Iterator[list[bytes]]:
    """Every request body any coordinator of this module decodes (recorded before it is parsed)."""
    seen: list[bytes] = []
    wrap = base._Gate.wrap

    def recording(self: Any, service: str, name: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        decode = handler.request_deserializer
        if service in COORDINATOR_SERVICES and decode is not None:
            def record(data: bytes) -> Any:
                seen.append(data)
                return decode(data)
            handler = handler._replace(request_deserializer=record)
        return wrap(self, service, name, handler)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(base._Gate, "wrap", recording)
        yield seen


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, received: list[bytes]) -> Iterator[Federation]:
    """51 asks; 44 and 33 hold EARNER and SPOUSE; 32 holds only OTHER, and is never a holder of a question."""
    d = tmp_path_factory.mktemp("discovery")
    data = {
        "44": write_csv(d / "44.csv", [(EARNER, "income.wage_monthly", 250000, "2026-11-30", "hrss")]),
        "33": write_csv(d / "33.csv", [(SPOUSE, "income.wage_monthly", 180000, "2026-11-30", "hrss")]),
        "32": write_csv(d / "32.csv", [(OTHER, "income.wage_monthly", 90000, "2026-11-30", "hrss")]),
    }
    (d / "standards.toml").write_text(standards_document(), encoding="utf-8")
    with run_cluster(["51", "44", "33", "32"], data=data, root=d / "fed", coordinator_extra=CONFIG) as federation:
        federation.publish_standards("51", d / "standards.toml")
        yield federation


class Calls:
    """Counts every call a running node admits (any service, any caller), from now on."""

    def __init__(self, fed: Federation, code: str) -> None:
        self.count = 0
        admission = fed.servers[code].servicer.admission
        enter = admission.enter

        def counting(context: Any, method: str) -> Any:
            self.count += 1
            return enter(context, method)

        admission.enter = counting


def audit_rows(fed: Federation, code: str) -> int:
    with audit_file(fed.root / f"node{code}" / "audit.sqlite") as log:
        return sum(1 for _ in log.entries())


def test_a_non_holder_receives_nothing_about_a_routed_a_batch_or_a_household_query(
        fed: Federation, tmp_path: Path) -> None:
    """32 holds none of the household: a routed verification, a verify-batch and a household test
    reach 44 and 33 and leave 32 without a single call or audit row."""
    calls, holder_calls, rows = Calls(fed, "32"), Calls(fed, "44"), audit_rows(fed, "32")
    consent = fed.grant("51", [EARNER, SPOUSE], "dibao").consent_id
    result = fed.verify("51", [EARNER, SPOUSE], [CHECK], consent_id=consent)
    assert result.routing == {"44": "OK", "33": "OK", "32": "NO_MATCH"}
    households = tmp_path / "households.csv"
    households.write_text(f"household,id_number\nh0,{EARNER}\nh0,{SPOUSE}\n", encoding="utf-8")
    consents, out = tmp_path / "consents.csv", tmp_path / "results.jsonl"
    cfg = fed.configs["51"]
    for run in ([*HEDUI, "consent", "grant-batch", "--config", cfg, "--in", households, "--purpose", "dibao",
                 "--out", consents],
                [*HEDUI, "verify-batch", "--config", cfg, "--in", households, "--consents", consents,
                 "--purpose", "dibao", "--out", out, "--check", CHECK]):
        proc = subprocess.run(list(map(str, run)), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    (record,) = map(json.loads, out.read_text().splitlines())
    assert record["routing"] == {"44": "OK", "33": "OK", "32": "NO_MATCH"}
    decided = fed.household("51", [EARNER, SPOUSE], "510104", consent_id=consent, period=PERIOD)
    assert decided.to_json()["routing"] == {"32": "NO_MATCH", "33": "OK", "44": "OK", "51": "OK"}
    assert holder_calls.count >= 3, "the holder was not asked: the count would prove nothing"
    assert calls.count == 0, "a province holding none of the household was contacted"
    assert audit_rows(fed, "32") == rows


def test_a_locator_claiming_implausibly_much_is_refused(fed: Federation) -> None:
    """The coordinator refuses a locator over its subject bound (the federation's, or the province's own
    tighter one), one whose bytes are all ones (it would
    match everyone), one another province signed, and one for an epoch long past; each with a clear status."""
    m = fed.member("32")
    epoch = discovery.current_epoch(EPOCH_S)

    genuine = locator.build([bytes(32)], 1)[1][0][1]  # a real one-subject filter

    def lodge(count: int, data: bytes = genuine, *, signer: Any = None, at: int = epoch) -> grpc.RpcError:
        body = coordinator_pb2.LocatorBody(province="32", epoch=at, filter_kind=locator.FILTER_KIND,
                                           subject_count=count, shard_bits=locator.shard_bits_for(count), shard=0,
                                           shard_count=count, filter=data,
                                           generation=int(time.time() * 1000)).SerializeToString()
        signed = coordinator_pb2.SignedLocator(body=body, signature=(signer or m.signer).sign(signing.LOCATOR, body))
        with fed.coordinator("32") as c, pytest.raises(grpc.RpcError) as err:
            coordinator_pb2_grpc.CoordinatorStub(c._channel).PublishLocator(signed, timeout=10)
        return err.value

    too_many = lodge(5000)
    assert too_many.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 50 " in (too_many.details() or "")
    over_own = lodge(100)  # under the federation's 1000, over 32's own 50
    assert over_own.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 50 are accepted for province 32" in (over_own.details() or "")
    saturated = lodge(1, genuine[:8] + b"\xff" * (len(genuine) - 8))
    assert saturated.code() == grpc.StatusCode.INVALID_ARGUMENT and "of its bits" in (saturated.details() or "")
    wrong_size = lodge(1, genuine + b"\0" * 64)
    assert wrong_size.code() == grpc.StatusCode.INVALID_ARGUMENT and "filter of 1 subjects" in (wrong_size.details() or "")
    forged = lodge(1, signer=fed.member("44").signer)
    assert forged.code() == grpc.StatusCode.PERMISSION_DENIED
    stale = lodge(1, at=epoch - 5)
    assert stale.code() == grpc.StatusCode.INVALID_ARGUMENT and "epoch" in (stale.details() or "")
    # 32's own locator is untouched: OTHER is still found there.
    consent = fed.grant("51", [OTHER], "dibao").consent_id
    assert fed.verify("51", [OTHER], [CHECK], consent_id=consent).routing["32"] == "OK"


def test_discovery_tokens_of_another_epoch_or_person_are_refused(fed: Federation) -> None:
    """A Discover must present the consent's own members' tokens for the epoch it names: a member's token
    of the next epoch mixed in (which would drop that member's holders from a round) or an outsider's is
    refused CONSENT_INVALID."""
    m = fed.member("51")
    consent = fed.grant("51", [EARNER, SPOUSE], "dibao").consent_id
    epoch = discovery.current_epoch(EPOCH_S)
    earner, spouse, other = (subject_token(m.linkage_key, i) for i in (EARNER, SPOUSE, OTHER))

    def discover(edts: list[bytes], at: int = epoch) -> Any:
        with fed.coordinator("51") as c:
            return c.call("Discover", coordinator_pb2.DiscoverRequest(
                consent_id=consent, request_id=f"mix-{time.monotonic_ns()}", discovery_tokens=edts, epoch=at))

    both = discover([discovery.discovery_token(earner, epoch), discovery.discovery_token(spouse, epoch)])
    assert set(both.holders) == {"44", "33"}
    for edts in ([discovery.discovery_token(earner, epoch), discovery.discovery_token(spouse, epoch + 1)],
                 [discovery.discovery_token(earner, epoch), discovery.discovery_token(other, epoch)]):
        with pytest.raises(PeerRefused) as refused:
            discover(edts)
        assert refused.value.status == "PERMISSION_DENIED" and "does not cover" in str(refused.value)


def test_a_coordinator_that_lost_a_locator_gets_it_again(fed: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    """A coordinator restored without 32's locator (rows gone) is sent it again: 32 asks which of its
    locators are held, sees one missing, lodges it again, and OTHER is found at 32 once more."""
    book = fed.servers["coordinator"].router.locators
    epoch = discovery.current_epoch(EPOCH_S)
    assert book.held("32", epoch) is not None
    monkeypatch.setattr(locator_publisher, "HELD_CHECK_S", 0.0)  # ask at every turn of the loop
    db = sqlite3.connect(config_mod.load(fed.coordinator_config).data_dir / LOCATORS_FILE)
    with db:
        db.execute("DELETE FROM active WHERE province = '32'")
        db.execute("DELETE FROM shards WHERE province = '32'")
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
    db.close()
    assert book.held("32", epoch) is None
    deadline = time.monotonic() + 30
    while book.held("32", epoch) is None:
        assert time.monotonic() < deadline, "32 did not lodge its locator again"
        time.sleep(0.1)
    consent = fed.grant("51", [OTHER], "dibao").consent_id
    assert fed.verify("51", [OTHER], [CHECK], consent_id=consent).routing["32"] == "OK"


def test_an_ingest_by_another_process_reaches_the_coordinators_locator(fed: Federation, tmp_path: Path) -> None:
    """`hedui ingest` into running 44 (another process): 44's loop sees the store change and lodges a
    new locator, so the newly ingested subject is discovered at 44."""
    book = fed.servers["coordinator"].router.locators
    epoch = discovery.current_epoch(EPOCH_S)
    before = book.held("44", epoch)
    path = write_csv(tmp_path / "late.csv", [(LATE, "income.wage_monthly", 70000, "2026-11-30", "hrss")])
    proc = subprocess.run(list(map(str, [*HEDUI, "ingest", "--config", fed.configs["44"], path])),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 30
    while (now := book.held("44", epoch)) is None or now.generation == before.generation:
        assert time.monotonic() < deadline, "44 did not lodge a new locator after the ingest"
        time.sleep(0.05)  # waiting for the node's loop to notice (a condition, not a fixed delay)
    assert now.subject_count == before.subject_count + 1
    consent = fed.grant("51", [LATE], "dibao").consent_id
    assert fed.verify("51", [LATE], [CHECK], consent_id=consent).routing["44"] == "OK"


def test_the_coordinator_never_holds_a_token_and_discovery_survives_an_epoch_change(
        fed: Federation, received: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """Across an epoch change, discovery keeps finding the holders; nothing the coordinator received or
    stored contains a stored subject token, and nothing received in the new epoch (nor anything stored)
    contains a discovery token of the epoch before."""
    m = fed.member("51")
    everyone = [EARNER, SPOUSE, OTHER, LATE]
    tokens = [subject_token(m.linkage_key, n) for n in everyone]
    consent = fed.grant("51", [EARNER, SPOUSE], "dibao").consent_id
    first = discovery.current_epoch(EPOCH_S)
    assert fed.verify("51", [EARNER, SPOUSE], [CHECK], consent_id=consent).routing == \
        {"44": "OK", "33": "OK", "32": "NO_MATCH"}
    start = len(received)
    real = discovery.clock
    monkeypatch.setattr(discovery, "clock", lambda: real() + EPOCH_S)  # the next epoch begins
    assert discovery.current_epoch(EPOCH_S) == first + 1
    assert fed.verify("51", [EARNER, SPOUSE], [CHECK], consent_id=consent).routing == \
        {"44": "OK", "33": "OK", "32": "NO_MATCH"}
    assert len(received) > start, "nothing was recorded: the canary would prove nothing"
    stored = b"".join(p.read_bytes() for p in (fed.root / "coordinator").rglob("*") if p.is_file())
    everything, since = b"".join(received), b"".join(received[start:])
    for token in tokens:
        for blob, where in ((everything, "received"), (stored, "stored")):
            assert token not in blob and token[:16] not in blob and token[16:] not in blob, f"a stored token was {where}"
        old = [discovery.discovery_token(token, e) for e in range(first - 1, first + 1)]
        assert not [e for e in old if e in since or e[:16] in since], "an earlier epoch's discovery token was sent"
        assert not [e for e in old + [discovery.discovery_token(token, first + 1)] if e in stored or e[:16] in stored]


def test_a_sharded_locator_is_found_and_interleaved_uploads_each_complete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With shards of at most 2 subjects (as 2^19 are for a large province), 44's locator arrives in 8 signed
    messages and every subject is found; two generations uploaded interleaved (two workers) both complete,
    the newer one in force."""
    monkeypatch.setattr(locator, "SHARD_TARGET", 2)
    people = [idnumber.make("440305", dt.date(1970 + i, 1, 1 + i), 300 + i) for i in range(12)]
    data = {"44": write_csv(tmp_path / "44.csv", [(p, "income.wage_monthly", 100000 + i, "2026-11-30", "hrss")
                                                  for i, p in enumerate(people)])}
    with run_cluster(["51", "44"], data=data, root=tmp_path / "fed", coordinator_extra=CONFIG) as fed:
        book = fed.servers["coordinator"].router.locators
        epoch = discovery.current_epoch(EPOCH_S)
        held = book.held("44", epoch)
        assert held is not None and held.subject_count == 12 and len(held.shards) == 8
        consent = fed.grant("51", people[:3], "dibao").consent_id
        assert fed.verify("51", people[:3], [CHECK], consent_id=consent).routing == {"44": "OK"}
        m = fed.member("44")
        edts = [discovery.discovery_token(subject_token(m.linkage_key, p), epoch) for p in people]
        bits, shards = locator.build(iter(edts), len(edts))
        first, second = (int(time.time() * 1000) + 10_000 + i for i in range(2))

        def signed(generation: int, index: int) -> coordinator_pb2.SignedLocator:
            count, filt = shards[index]
            body = coordinator_pb2.LocatorBody(province="44", epoch=epoch, filter_kind=locator.FILTER_KIND,
                                               subject_count=12, shard_bits=bits, shard=index, shard_count=count,
                                               filter=filt, generation=generation).SerializeToString()
            return coordinator_pb2.SignedLocator(body=body, signature=m.signer.sign(signing.LOCATOR, body))

        completes = []
        with fed.coordinator("44") as c:
            stub = coordinator_pb2_grpc.CoordinatorStub(c._channel)
            for index in range(len(shards)):
                for generation in (first, second):
                    completes.append(stub.PublishLocator(signed(generation, index), timeout=10).complete)
        assert completes[-2:] == [True, True] and not any(completes[:-2])
        assert book.held("44", epoch).generation == second


def test_a_rotated_node_lodges_its_locators_again_signed_with_its_new_key(fed: Federation) -> None:
    """After `pki issue` + rotation at 33, its locators are lodged again signed by the new key, so
    revoking the old certificate does not leave the coordinator with locators it would refuse."""
    from node.cli.node_cmd import install_member_keys
    from node.crypto.pki import issue_member

    book = fed.servers["coordinator"].router.locators
    epoch = discovery.current_epoch(EPOCH_S)
    before = book.held("33", epoch)
    assert before is not None
    issue_member(fed.pki, "33", loopback=True)
    install_member_keys(fed.pki, "33", fed.member("33").cfg.data_dir, linkage=True)
    assert fed.loop is not None and fed.loop.run(fed.servers["33"].check_keys())
    deadline = time.monotonic() + 30
    while (now := book.held("33", epoch)) is None or now.generation == before.generation:
        assert time.monotonic() < deadline, "33 did not lodge its locator again after the rotation"
        time.sleep(0.1)
