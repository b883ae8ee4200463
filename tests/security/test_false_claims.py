"""A province that claims to hold everyone: it must never read a question, and must stop being asked.

The hostile member is a real node (real store, keys, mutual TLS) whose locator claims subjects
it does not hold (it computes their discovery tokens with the linkage key every province has):
the attack of issue 9 item 3, in its issue 12 form. It keeps every sealed call it is sent and
opens what it can with its own keys, so the tests assert on what it could decrypt.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node import config
from node.client import routed
from node.config import ClaimPolicy
from node.coordinator import claims
from node.crypto import discovery, locator, possession, sealing
from node.crypto.tokens import possession_key, subject_token
from node.domain import idnumber
from node.errors import ErrorCode, Refusal
from node.server.node_server import NodeServer
from node.store import audit
from node.store.sqlite.facts import Store
from node.testing import Federation, capture_logs, run_cluster
from node.testing.cluster import LoopThread, build_federation, set_coordinator
from node.wire.v1 import common_pb2, coordinator_pb2, verification_pb2
from tests.conftest import write_csv

HUSBAND = idnumber.make("511702", dt.date(1985, 4, 9), 219)
WIFE = idnumber.make("511702", dt.date(1987, 8, 21), 228)
DEPOSIT = 987654321
CASE = "SC-CANARY-2026-0042"
CHECKS = ["deposit.balance_total<=2000000", "income.wage_monthly<=400000"]
# The default policy's alpha (1e-9), for the tests of the false-positive bound itself.
BOUNDED = {"claims": {"min_sample": 3, "max_contradiction_rate": 0.5, "window": 10, "min_requesters": 2}}
# For the tests of the other mechanics (proofs, framing, min_requesters), which judge a handful of queries
# and expect min_sample to decide: at alpha 1e-3 the bound of a few discoveries is at most 3 for any
# locator fill up to a false-match rate of 3 %, so min_sample decides. At 1e-9 the bound of 3 discoveries
# is 4 once a small locator's rate passes about 3e-4 per edt, which a test's few subjects reach by chance.
CLAIMS = {"claims": {**BOUNDED["claims"], "false_positive_alpha": 1e-3}}
HEDUI = [sys.executable, "-m", "node.cli.main"]


class ClaimsEverything(NodeServer):
    """A hostile province: its locator claims HUSBAND and WIFE besides what it holds; it keeps every
    sealed query it is sent."""

    async def start(self, listen: str | None = None) -> int:
        port = await super().start(listen)
        self.sealed: list[common_pb2.Sealed] = []
        key = self.link.member.linkage_key
        claimed = [subject_token(key, n) for n in (HUSBAND, WIFE)]

        def build(store: Store, epoch: int) -> tuple[int, int, list[tuple[int, bytes]]]:
            edts = [discovery.discovery_token(t, epoch) for t in [*store.held_tokens(), *claimed]]
            bits, shards = locator.build(edts, len(edts))
            return len(edts), bits, shards

        def keep(open_fn: Any) -> Any:
            def wrapper(sealed: common_pb2.Sealed, peer: str) -> Any:
                self.sealed.append(sealed)
                return open_fn(sealed, peer)
            return wrapper

        self.link.open_query = keep(self.link.open_query)
        self.link.open_batch = keep(self.link.open_batch)
        self.link.locators.build = build
        await self.link.locators.republish()
        return port

    @property
    def calls(self) -> int:
        """Sealed calls the coordinator sent it."""
        return len(self.sealed)

    def readable(self) -> list[bytes]:
        """Everything the hostile province can decrypt of what it was sent, with its own keys."""
        return [sealing.open_sealed(s, kind=sealing.QUERY, identity=self.cfg.identity, private_key=self.link._seal_key)
                for s in self.sealed]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("claims-data")
    return {
        "44": write_csv(d / "44.csv", [(HUSBAND, "deposit.balance_total", DEPOSIT, "2026-10-31", "bank:CMB"),
                                       (HUSBAND, "income.wage_monthly", 812300, "2026-10-31", "hrss")]),
        "33": write_csv(d / "33.csv", [(idnumber.make("330102", dt.date(1970, 1, 2), 11), "vehicle.count", 1,
                                        "2026-10-31", "mps")]),
    }


@pytest.fixture()
def log_sink() -> Iterator[io.StringIO]:
    with capture_logs() as sink:
        yield sink


def hostile_cluster(data: dict[str, Path], provinces: list[str], policy: dict[str, Any] = CLAIMS) -> Any:
    """A federation whose province 33 claims to hold every subject."""
    fed_cm = run_cluster(provinces, data=data, coordinator_extra=policy)

    class _Cluster:
        def __enter__(self) -> Federation:
            fed = fed_cm.__enter__()
            fed.stop_node("33")
            fed.start_node("33", ClaimsEverything)
            return fed

        def __exit__(self, *exc: Any) -> Any:
            return fed_cm.__exit__(*exc)

    return _Cluster()


def canaries(fed: Federation, requester: str) -> set[bytes]:
    """Bytes that would show the question: purpose, items, operands, case reference, requester's certificate."""
    m = fed.member(requester)
    out = {b"dibao", b"deposit.balance_total", b"income.wage_monthly", CASE.encode(), m.signer.certificate_der,
           f"urn:hedui:province:{requester}".encode()}
    for operand in (2000000, 400000):  # Check.operand: field 3, sint64 (zigzag varint)
        out.add(b"\x18" + _varint(operand << 1))
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            return bytes(out)


def verify(fed: Federation, requester: str, consent_id: str, ids: list[str] | None = None) -> Any:
    return fed.verify(requester, ids or [HUSBAND, WIFE], CHECKS, consent_id=consent_id)


def test_a_false_held_claim_never_exposes_the_question(data: dict[str, Path]) -> None:
    """The hostile province receives the sealed query but can decrypt neither purpose, checks, operands,
    case reference nor requester; the honest holder answers as before."""
    with hostile_cluster(data, ["51", "44", "33"]) as fed:
        consent = fed.grant("51", [HUSBAND, WIFE], "dibao", case_reference=CASE).consent_id
        result = verify(fed, "51", consent)
        hostile: ClaimsEverything = fed.servers["33"]
        assert hostile.sealed, "the hostile province was not sent the query: the test would prove nothing"
        assert result.routing == {"44": "OK", "33": "NOT_HELD"}
        (answer,) = result.answers
        assert answer.province == "44" and answer.signature_valid
        assert {(r.subject, r.check): r.outcome for r in answer.results}[(0, CHECKS[0])] == "NOT_SATISFIED"
        m = fed.member("33")
        for plaintext in hostile.readable():
            leaked = [c for c in canaries(fed, "51") if c in plaintext]
            assert not leaked, f"the hostile province can read {leaked}"
            locked = verification_pb2.LockedQuery.FromString(plaintext)
            # Every key it has or can compute from what it holds and was sent does not unlock it.
            with Store.open(m.cfg.data_dir) as store:
                own = store.possession_keys([s.token for s in locked.subjects])
            guesses = [m.linkage_key, *(s.token for s in locked.subjects),
                       *(subject_token(m.linkage_key, s.token.hex()) for s in locked.subjects)]
            for key in [*own.values(), *guesses]:
                keys = {s.token: key for s in locked.subjects}
                assert possession.unlock(locked, keys, recipient=m.cfg.identity) is None
        # The requester's possession keys do unlock it (the lock is real, not random bytes).
        r = fed.member("51")
        keys = {subject_token(r.linkage_key, n): possession_key(r.linkage_key, n) for n in (HUSBAND, WIFE)}
        opened = possession.unlock(verification_pb2.LockedQuery.FromString(hostile.readable()[0]), keys,
                                   recipient=m.cfg.identity)
        assert opened is not None and CASE.encode() in (opened.signed_query or b"")


def test_contradicted_claims_stop_routing_and_raise_an_alert(data: dict[str, Path], log_sink: io.StringIO) -> None:
    """After enough routed queries it could not unlock, the coordinator no longer asks or routes to the
    hostile province for that requester, logs an alert, audits it and exports it as a metric."""
    with hostile_cluster(data, ["51", "44", "33"]) as fed:
        consent = fed.grant("51", [HUSBAND, WIFE], "dibao").consent_id
        statuses = [verify(fed, "51", consent).routing["33"] for _ in range(4)]
        assert statuses == ["NOT_HELD", "NOT_HELD", "NOT_HELD", "IMPLAUSIBLE"]
        hostile: ClaimsEverything = fed.servers["33"]
        asked = hostile.calls
        result = verify(fed, "51", consent)
        assert result.routing == {"44": "OK", "33": "IMPLAUSIBLE"}
        assert hostile.calls == asked, "a province found implausible was still sent the query"
        assert [a.province for a in result.answers] == ["44"] and result.answers[0].signature_valid
        alerts = [json.loads(line) for line in log_sink.getvalue().splitlines() if '"claims_implausible"' in line]
        assert [(a["holder"], a["requester"], a["scope"], a["level"]) for a in alerts] == [("33", "51", "requester", "error")]
        coordinator = fed.servers["coordinator"]
        records = [audit.AuditRecord.from_json(e.payload) for e in coordinator.audit_log.entries()]
        flagged = [r for r in records if r.decision == "claims.implausible"]
        assert [(r.requester, r.extra["holder"], r.extra["scope"]) for r in flagged] == [("51", "33", "requester")]
        from node.server import metrics
        gauge = metrics.REGISTRY.get_sample_value("hedui_claims_implausible_requesters",
                                                  {"member": "urn:hedui:coordinator", "province": "33"})
        assert gauge == 1


def test_a_holder_that_answers_anything_but_a_proof_is_still_contradicted(data: dict[str, Path]) -> None:
    """A hostile province that pretends to have opened the query (refusing it as if on consent grounds)
    shows no possession proof, so its claim counts as contradicted all the same."""
    with hostile_cluster(data, ["51", "44", "33"]) as fed:
        hostile: ClaimsEverything = fed.servers["33"]

        def pretend(locked: Any) -> Any:
            raise Refusal(ErrorCode.CONSENT_INVALID, "consent does not cover every data item")

        hostile.servicer.unlocker.unlock = pretend
        consent = fed.grant("51", [HUSBAND, WIFE], "dibao").consent_id
        assert [verify(fed, "51", consent).routing["33"] for _ in range(4)] == \
            ["NOT_HELD", "NOT_HELD", "NOT_HELD", "IMPLAUSIBLE"]


def test_an_honest_holder_refusing_for_its_own_reasons_is_not_contradicted(data: dict[str, Path]) -> None:
    """An honest holder that unlocked the query and then refused it (an item outside the consent's scope)
    proves possession with its refusal: it keeps being routed to, and its refusal reaches the requester."""
    with hostile_cluster(data, ["51", "44", "33"]) as fed:
        consent = fed.grant("51", [HUSBAND, WIFE], "dibao", scopes=["income"]).consent_id
        for _ in range(5):
            assert verify(fed, "51", consent).routing["44"] == "DENIED"
        assert verify(fed, "51", fed.grant("51", [HUSBAND, WIFE], "dibao").consent_id).routing["44"] == "OK"


def test_a_requester_with_bad_commitments_cannot_cut_a_holder_off_for_others(
        data: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A requester that sends bogus possession commitments makes an honest holder look contradicted only
    towards itself: the holder still answers every other requester."""
    with run_cluster(["51", "44", "32"], data={"44": data["44"]}, coordinator_extra=CLAIMS) as fed:
        framing = fed.grant("32", [HUSBAND, WIFE], "dibao").consent_id
        honest = fed.grant("51", [HUSBAND, WIFE], "dibao").consent_id
        original = routed.locked_envelope

        def bogus(*args: Any, **kw: Any) -> Any:
            envelope = original(*args, **kw)
            envelope.possession_commitments[:] = [bytes(32)]
            return envelope

        monkeypatch.setattr(routed, "locked_envelope", bogus)
        assert [verify(fed, "32", framing).routing["44"] for _ in range(4)] == \
            ["NOT_HELD", "NOT_HELD", "NOT_HELD", "IMPLAUSIBLE"]
        monkeypatch.setattr(routed, "locked_envelope", original)
        result = verify(fed, "51", honest)
        assert result.routing["44"] == "OK" and result.answers[0].signature_valid


def test_a_province_implausible_to_enough_requesters_is_routed_to_by_nobody(data: dict[str, Path]) -> None:
    """Once `min_requesters` requesters found its claims contradicted, the hostile province is no longer
    asked in anyone's discovery, not even by a requester that never routed to it."""
    with hostile_cluster(data, ["51", "44", "33", "32"]) as fed:
        for requester in ("51", "32"):
            consent = fed.grant(requester, [HUSBAND, WIFE], "dibao").consent_id
            for _ in range(3):
                verify(fed, requester, consent)
        hostile: ClaimsEverything = fed.servers["33"]
        asked = hostile.calls
        third = fed.grant("44", [WIFE], "dibao").consent_id
        assert verify(fed, "44", third, [WIFE]).routing["33"] == "IMPLAUSIBLE"
        assert hostile.calls == asked


def test_batch_queries_to_a_false_holder_stay_locked_and_are_counted(data: dict[str, Path], tmp_path: Path) -> None:
    """verify-batch: the hostile province gets locked queries it cannot open (NOT_HELD), every one counted,
    then is no longer routed to; the honest holder's answers are unchanged."""
    with hostile_cluster(data, ["51", "44", "33"]) as fed:
        households = tmp_path / "households.csv"
        households.write_text("household,id_number\n" + "".join(f"h{i},{n}\n" for i, n in enumerate([HUSBAND, WIFE])))
        consents, out = tmp_path / "consents.csv", tmp_path / "results.jsonl"
        cfg = fed.configs["51"]
        run = [*HEDUI, "consent", "grant-batch", "--config", cfg, "--in", households, "--purpose", "dibao",
               "--out", consents]
        assert subprocess.run(list(map(str, run)), capture_output=True, timeout=120).returncode == 0
        batch = [*HEDUI, "verify-batch", "--config", cfg, "--in", households, "--consents", consents, "--purpose",
                 "dibao", "--out", out, "--check", CHECKS[0]]
        proc = subprocess.run(list(map(str, batch)), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        records = {r["household"]: r for r in map(json.loads, out.read_text().splitlines())}
        assert {h: r["routing"] for h, r in records.items()} == {"h0": {"44": "OK", "33": "NOT_HELD"},
                                                                 "h1": {"44": "NO_MATCH", "33": "NOT_HELD"}}
        assert records["h0"]["answers"][0]["results"][0]["outcome"] == "NOT_SATISFIED"
        hostile: ClaimsEverything = fed.servers["33"]
        m = fed.member("33")
        for plaintext in hostile.readable():
            assert not [c for c in canaries(fed, "51") if c in plaintext]
            for locked in verification_pb2.LockedBatch.FromString(plaintext).queries:
                assert possession.unlock(locked, {s.token: m.linkage_key for s in locked.subjects},
                                         recipient=m.cfg.identity) is None
        consent = fed.grant("51", [HUSBAND], "dibao").consent_id
        assert verify(fed, "51", consent, [HUSBAND]).routing["33"] == "NOT_HELD"  # 3rd contradicted claim
        assert verify(fed, "51", consent, [HUSBAND]).routing["33"] == "IMPLAUSIBLE"


def _false_positives(fed: Federation, requester: str, holder: str, count: int) -> list[str]:
    """`count` ID numbers `holder` does not hold whose discovery tokens its locator (as the coordinator holds
    it) matches all the same: its false positives, found by trying ID numbers in turn (~2^16 per match)."""
    book = fed.servers["coordinator"].router.locators
    epoch = discovery.current_epoch(book.policy.epoch_s)
    held = book.held(holder, epoch)
    others = [h for p in fed.configs if p not in (requester, holder) and (h := book.held(p, epoch)) is not None]
    key, found, day = fed.member(requester).linkage_key, [], dt.date(1950, 1, 1)
    while len(found) < count:
        for seq in range(1, 1000):
            number = idnumber.make("511702", day, seq)
            edt = discovery.discovery_token(subject_token(key, number), epoch)
            if held.contains(edt) and not any(o.contains(edt) for o in others):
                found.append(number)
        day += dt.timedelta(days=1)
    return found[:count]


def _discover_many(fed: Federation, requester: str, households: int) -> int:
    """Discover `households` consented households of 16 members (DiscoverBatch calls of at most 512): the
    requester's discovery volume. Returns how many discovery tokens it sent."""
    sent = 0
    with fed.coordinator(requester) as c:
        for start in range(0, households, 512):
            asked = []
            for h in range(start, min(households, start + 512)):
                ids = [idnumber.make("511702", dt.date(2001, 1, 1) + dt.timedelta(days=h), seq) for seq in range(1, 17)]
                consent = c.grant(ids, "dibao").consent_id
                epoch, edts = c.discovery_tokens([subject_token(c.member.linkage_key, n) for n in ids])
                asked.append(coordinator_pb2.HouseholdDiscovery(consent_id=consent, discovery_tokens=edts))
                sent += len(edts)
            reply = c.call("DiscoverBatch", coordinator_pb2.DiscoverBatchRequest(request_id=uuid.uuid4().hex,
                                                                                 households=asked, epoch=epoch))
            assert not [h.error for h in reply.households if h.error_code]
    return sent


def _households_explaining(rate: float, alpha: float, contradictions: int) -> int:
    """How many households of 16 a requester must discover for false positives at `rate` to explain more than
    `contradictions` contradictions (the rate of a real locator varies with its fill: computed, not assumed)."""
    households = next((h for h in range(1, 8193) if claims.false_positive_bound(16 * h * rate, alpha) > contradictions),
                      None)
    assert households is not None, f"a locator false-positive rate of {rate:g} is too small for this test"
    return households


def test_false_positives_of_a_province_holding_nothing_never_stop_routing_to_it(
        data: dict[str, Path], tmp_path: Path, log_sink: io.StringIO) -> None:
    """Province 33 holds none of 51's applicants, so its locator's false positives are all it is routed by 51
    (each NOT_HELD); judged against 51's discovery volume they are expected, so 33 is never excluded, and when
    it later holds one of 51's applicants that query is answered (B27)."""
    residents = write_csv(tmp_path / "33.csv", [(idnumber.make("330102", dt.date(1970, 1, 1) + dt.timedelta(days=i), 11),
                                                 "vehicle.count", 1, "2026-10-31", "mps") for i in range(300)])
    alpha, sample = ClaimPolicy().false_positive_alpha, BOUNDED["claims"]["min_sample"]
    with run_cluster(["51", "44", "33"], data={"44": data["44"], "33": residents}, coordinator_extra=BOUNDED) as fed:
        coordinator = fed.servers["coordinator"]
        book, judge = coordinator.router.locators, coordinator.router.claims
        epoch = discovery.current_epoch(book.policy.epoch_s)
        rate = book.held("33", epoch).false_match_rate  # of 300 subjects: near the design's 2^-16
        # Without discovery volume, min_sample contradictions from false positives alone would exclude 33.
        assert claims.false_positive_bound(sample * rate, alpha) <= sample
        # 51's volume: enough households of 16 that false positives explain one contradiction more than sent.
        households = _households_explaining(rate, alpha, sample + 1)
        sent = _discover_many(fed, "51", households)
        assert judge.expected("33", "51") == pytest.approx(sent * rate)
        strangers = _false_positives(fed, "51", "33", sample)
        for number in strangers:
            consent = fed.grant("51", [number], "dibao").consent_id
            assert fed.verify("51", [number], CHECKS, consent_id=consent).routing == {"44": "NO_MATCH",
                                                                                         "33": "NOT_HELD"}
        contradicted = [json.loads(line) for line in log_sink.getvalue().splitlines() if '"claim_contradicted"' in line]
        assert [(c["holder"], c["requester"]) for c in contradicted] == [("33", "51")] * len(strangers)
        assert not judge.refuses("33", "51")
        before = book.held("33", epoch).generation
        fed.ingest("33", write_csv(tmp_path / "late.csv", [(WIFE, "income.wage_monthly", 300000, "2026-10-31", "hrss")]))
        deadline = time.monotonic() + 30
        while (now := book.held("33", epoch)) is None or now.generation == before:
            assert time.monotonic() < deadline, "33 did not lodge a new locator after the ingest"
            time.sleep(0.05)  # waiting for the node's loop to notice (a condition, not a fixed delay)
        consent = fed.grant("51", [WIFE], "dibao").consent_id
        result = fed.verify("51", [WIFE], CHECKS, consent_id=consent)
        assert result.routing == {"44": "NO_MATCH", "33": "OK"}
        assert [a.province for a in result.answers] == ["33"] and result.answers[0].signature_valid
        assert '"claims_implausible"' not in log_sink.getvalue()


def test_a_false_claimer_is_still_caught_when_the_requester_discovers_much(data: dict[str, Path]) -> None:
    """After many discoveries by 51, the hostile province's locator is expected to give a few false positives:
    its contradictions are excluded as soon as they exceed what those explain, no later."""
    alpha, sample = ClaimPolicy().false_positive_alpha, BOUNDED["claims"]["min_sample"]
    with hostile_cluster(data, ["51", "44", "33"], BOUNDED) as fed:
        coordinator = fed.servers["coordinator"]
        judge = coordinator.router.claims
        epoch = discovery.current_epoch(coordinator.router.locators.policy.epoch_s)
        rate = coordinator.router.locators.held("33", epoch).false_match_rate
        households = _households_explaining(rate, alpha, sample + 1)
        _discover_many(fed, "51", households)
        consent = fed.grant("51", [HUSBAND, WIFE], "dibao").consent_id
        statuses = []
        while not statuses or statuses[-1] == "NOT_HELD":
            assert len(statuses) < 20, "the false claimer was never excluded"
            statuses.append(verify(fed, "51", consent).routing["33"])
        contradicted = len(statuses) - 1
        assert statuses[-1] == "IMPLAUSIBLE"
        assert contradicted == claims.false_positive_bound(judge.expected("33", "51"), alpha) > sample


_SCHEMA_1 = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE subjects(id INTEGER PRIMARY KEY, token BLOB NOT NULL UNIQUE CHECK (length(token) = 32));
CREATE TABLE facts(subject_id INTEGER NOT NULL REFERENCES subjects(id), attribute TEXT NOT NULL,
    as_of TEXT NOT NULL, source TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (subject_id, attribute, as_of, source)) WITHOUT ROWID;
CREATE TABLE attributes(code TEXT PRIMARY KEY, aggregate TEXT NOT NULL CHECK (aggregate IN ('sum', 'max'))) WITHOUT ROWID;
INSERT INTO meta(key, value) VALUES ('schema_version', '1');
"""


def test_a_store_from_before_possession_keys_must_be_reingested_before_serving(
        data: dict[str, Path], tmp_path: Path) -> None:
    """A schema-1 store (tokens but no possession keys) is upgraded in place, the node refuses to serve it
    with one line asking for a re-ingest, and serves once the same files were ingested again."""
    fed = build_federation(tmp_path, ["44"])
    set_coordinator(fed.configs["44"], "127.0.0.1:9")  # configured as deployed
    m = fed.member("44")
    path = m.cfg.data_dir / "store.sqlite"
    for leftover in m.cfg.data_dir.glob("store.sqlite*"):
        leftover.unlink()
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA_1)
        db.execute("INSERT INTO subjects(id, token) VALUES (1, ?)", (subject_token(m.linkage_key, HUSBAND),))
        db.execute("INSERT INTO facts VALUES (1, 'deposit.balance_total', '2026-10-31', 'bank:CMB', ?)", (DEPOSIT,))
    serve = [*HEDUI, "node", "serve", "--config", str(fed.configs["44"]), "--listen", "127.0.0.1:0"]
    proc = subprocess.run(serve, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "1 subjects have no possession key" in lines[0] and "ingest" in lines[0]
    assert HUSBAND not in proc.stderr
    ingest = subprocess.run([*HEDUI, "ingest", "--config", str(fed.configs["44"]), "--json", str(data["44"])],
                            capture_output=True, text=True, timeout=60)
    assert ingest.returncode == 0, ingest.stderr
    assert json.loads(ingest.stdout)[0]["possession_keys_added"] == 1
    with Store.open(m.cfg.data_dir) as store:
        assert store.missing_possession() == 0
        token = subject_token(m.linkage_key, HUSBAND)
        assert store.possession_keys([token]) == {token: possession_key(m.linkage_key, HUSBAND)}
        assert store.counts() == {"subjects": 1, "facts": 2}
    loop = LoopThread()
    try:
        server = NodeServer(config.load(fed.configs["44"]))
        assert loop.run(server.start("127.0.0.1:0")) > 0
        loop.run(server.stop(0))
    finally:
        loop.close()
