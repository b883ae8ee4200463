"""The household means test across provinces (issue 10): secure sums over real nodes, decisions
on published standards, signed decision records checked offline."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from node.client.decision_record import verify_record
from node.client.household import household_check
from node.crypto import masks
from node.domain import idnumber
from node.domain.catalogue import load_catalogue
from node.errors import ErrorCode, Refusal
from node.server.node_server import NodeServer
from node.synth import generate
from node.testing import Federation, capture_logs, run_cluster
from node.testing.standards import standards_document
from node.wire.v1 import household_pb2, household_pb2_grpc
from node.store.sqlite.storage import audit_file
from tests.oracle import province_values

HEDUI = [sys.executable, "-m", "node.cli.main"]
PERIOD = "2026-12"
# The household of three: wages of 2,500 and 1,800 yuan and a pension of 1,200 yuan,
# each in another province; the standard is 900 yuan a person (household limit 2,700).
EARNER = idnumber.make("510104", dt.date(1980, 3, 1), 101)
SPOUSE = idnumber.make("510104", dt.date(1982, 6, 2), 102)
GRANNY = idnumber.make("510104", dt.date(1948, 9, 3), 103)
# A household of two whose large medical spending decides it.
PATIENT = idnumber.make("510104", dt.date(1975, 1, 4), 104)
CARER = idnumber.make("510104", dt.date(1977, 2, 5), 105)

STANDARDS = standards_document()  # Chengdu: 900 yuan a person, income and financial assets (24 months)


def _csv(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    lines = ["id_number,attribute,value,as_of,source"] + [f"{i},{a},{v},2026-11-30,test" for i, a, v in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def log_sink() -> Iterator[io.StringIO]:
    with capture_logs() as sink:
        yield sink


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, log_sink: io.StringIO) -> Iterator[Federation]:
    """51 (the requester, holding its own records), 44, 33 and 32 hold parts of two households."""
    d = tmp_path_factory.mktemp("household")
    data = {
        "44": _csv(d / "44.csv", [(EARNER, "income.wage_monthly", 250000), (EARNER, "deposit.balance_total", 300000),
                                  (PATIENT, "income.wage_monthly", 200000)]),
        "33": _csv(d / "33.csv", [(SPOUSE, "income.wage_monthly", 180000)]),
        "32": _csv(d / "32.csv", [(GRANNY, "pension.monthly", 120000), (CARER, "income.wage_monthly", 50000)]),
        "51": _csv(d / "51.csv", [(EARNER, "hukou.registered", 1), (GRANNY, "deposit.balance_total", 40000),
                                  (PATIENT, "expense.medical_12m", 2400000)]),
    }
    (d / "standards.toml").write_text(STANDARDS, encoding="utf-8")
    with run_cluster(["51", "44", "33", "32"], data=data, root=d / "fed") as federation:
        federation.publish_standards("51", d / "standards.toml")
        yield federation


@pytest.fixture(scope="module")
def three(fed: Federation) -> Any:
    return fed.grant("51", [EARNER, SPOUSE, GRANNY], "dibao")


def test_three_members_each_under_the_limit_are_not_eligible_together(fed: Federation, three: Any) -> None:
    """Every member's wage passes `<= 2,700 yuan` on its own, yet the household's 5,500 yuan is over the standard."""
    per_member = fed.verify("51", [EARNER, SPOUSE, GRANNY], ["income.wage_monthly<=270000"], consent_id=three.consent_id)
    outcomes = {r.outcome for a in per_member.answers for r in a.results if r.outcome != "NO_RECORD"}
    assert outcomes == {"SATISFIED"}
    result = fed.household("51", [EARNER, SPOUSE, GRANNY], "510104", consent_id=three.consent_id, period=PERIOD)
    data = result.to_json()
    assert data["verdict"] == "NOT_ELIGIBLE" and data["members"] == 3 and data["region"] == "510104"
    assert data["totals"]["income_monthly"] == 550000  # 2,500 + 1,800 + 1,200 yuan
    assert data["income_per_person"] == 550000 // 3 and data["standard_per_person"] == 90000
    assert data["rules"] == {"income": False, "financial_assets": True} and data["allowance"] == 0
    assert data["routing"] == {"32": "OK", "33": "OK", "44": "OK", "51": "OK"} and data["missing"] == []


def test_deductions_move_a_household_across_the_line(fed: Federation) -> None:
    """2,500 yuan a month for two is over a 900-yuan standard, but 24,000 yuan of medical spending makes it eligible."""
    consent = fed.grant("51", [PATIENT, CARER], "dibao")
    data = fed.household("51", [PATIENT, CARER], "510104", consent_id=consent.consent_id, period=PERIOD).to_json()
    # (12 × 250,000 − 2,400,000) / (12 × 2) = 25,000 fen a person; gap 65,000 × 2.
    assert data["totals"]["income_monthly"] == 250000 and data["totals"]["medical_12m"] == 2400000
    assert data["income_per_person"] == 25000
    assert data["verdict"] == "ELIGIBLE" and data["allowance"] == (90000 - 25000) * 2


def test_no_message_the_requester_receives_carries_an_unmasked_share(fed: Federation, three: Any) -> None:
    """Each holder's signed contribution differs from its true partial sums; only the sum of all of them is the total."""
    result = fed.household("51", [EARNER, SPOUSE, GRANNY], "510104", consent_id=three.consent_id, period=PERIOD)
    body = result.record["body"]
    true = {"44": {"income_monthly": 250000, "financial_assets": 300000},
            "33": {"income_monthly": 180000}, "32": {"income_monthly": 120000}, "51": {"financial_assets": 40000}}
    vectors = []
    for raw in body["contributions"]:
        contribution = household_pb2.ContributionBody.FromString(
            household_pb2.SignedContribution.FromString(base64.b64decode(raw)).body)
        values = [masks.decode(v) for v in contribution.masked]
        vectors.append(values)
        for measure, value in zip(contribution.measures, values, strict=True):
            assert value != true.get(contribution.responder, {}).get(measure, 0), (contribution.responder, measure)
            assert value >= 1 << 64  # indistinguishable from a random 128-bit number, never a fen amount
    totals = dict(zip(body["measures"], masks.unmask(vectors, len(body["measures"])), strict=True))
    assert totals == result.decision.totals


def test_planted_values_and_id_numbers_reach_no_log_audit_row_or_coordinator_file(
        fed: Federation, three: Any, log_sink: io.StringIO) -> None:
    """The ID numbers and the partial and total figures of a round appear in no log line, audit row or coordinator file."""
    fed.household("51", [EARNER, SPOUSE, GRANNY], "510104", consent_id=three.consent_id, period=PERIOD)
    needles = [EARNER, SPOUSE, GRANNY, "250000", "180000", "120000", "550000"]
    logged = log_sink.getvalue()
    assert '"round_routed"' in logged, "the coordinator logged no round: the canary proves nothing"
    assert not [n for n in needles if n in logged]

    for who in ("coordinator", "51", "44", "33", "32"):
        cfg_dir = fed.root / ("coordinator" if who == "coordinator" else f"node{who}")
        with audit_file(next(cfg_dir.rglob("audit.sqlite"))) as log:
            text = json.dumps([e.payload.decode() for e in log.entries()])
        assert not [n for n in needles if n in text], who
        assert "contributed" in text or who == "coordinator"
    for path in (fed.root / "coordinator").rglob("*"):
        if path.is_file() and "keys" not in path.parts:
            blob = path.read_bytes()
            assert not [n for n in needles if n.encode() in blob], path


def test_a_dead_holder_gives_incomplete_naming_it_and_a_rerun_completes(fed: Federation, three: Any) -> None:
    """With 33 down the round is repeated without it (never summed from the first) and INCOMPLETE; after 33 is back it completes."""
    fed.stop_node("33")
    try:
        result = fed.household("51", [EARNER, SPOUSE, GRANNY], "510104", consent_id=three.consent_id, period=PERIOD)
    finally:
        fed.start_node("33")
    data = result.to_json()
    assert data["verdict"] == "INCOMPLETE" and data["missing"] == ["33"]
    assert data["routing"]["33"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    assert data["totals"]["income_monthly"] == 250000 + 120000  # the others' shares, summed in a fresh round
    assert verify_record(result.record, fed.member("44").verifier).valid
    again = fed.household("51", [EARNER, SPOUSE, GRANNY], "510104", consent_id=three.consent_id, period=PERIOD)
    assert again.to_json()["verdict"] == "NOT_ELIGIBLE" and again.missing == ()


class _NoContributions(NodeServer):
    """A province node that answers discovery but fails every contribution (a holder dying mid-round)."""

    async def start(self, listen: str | None = None) -> int:
        port = await super().start(listen)

        def fail(*_: Any, **__: Any) -> Any:
            raise Refusal(ErrorCode.UNAVAILABLE, "store went away")

        self.household_servicer.service.contribute = fail
        return port


def test_a_holder_failing_mid_round_is_left_out_of_a_fresh_round_never_summed_from_the_first(
        fed: Federation, three: Any) -> None:
    """33 is a holder but does not answer Contribute: a second round over the others is signed, INCOMPLETE names 33, and it verifies."""
    fed.stop_node("33")
    fed.start_node("33", server_class=_NoContributions)
    try:
        result = fed.household("51", [EARNER, SPOUSE, GRANNY], "510104", consent_id=three.consent_id, period=PERIOD)
    finally:
        fed.stop_node("33")
        fed.start_node("33")
    holder_set = household_pb2.HolderSetBody.FromString(household_pb2.SignedHolderSet.FromString(
        base64.b64decode(result.record["body"]["holder_set"])).body)
    assert holder_set.previous_round_id and list(holder_set.missing) == ["33"] and "33" not in holder_set.holders
    assert result.to_json()["verdict"] == "INCOMPLETE" and result.missing == ("33",)
    assert result.decision.totals["income_monthly"] == 250000 + 120000
    assert verify_record(result.record, fed.member("44").verifier).valid


def test_a_reused_round_id_is_refused_by_the_coordinator_and_by_holders(fed: Federation, three: Any) -> None:
    """OpenRound refuses a round id it has signed before, so masks never repeat."""
    from node.crypto.tokens import subject_token

    member = fed.member("51")
    tokens = [subject_token(member.linkage_key, n) for n in (EARNER, SPOUSE, GRANNY)]
    round_id = uuid.uuid4().hex
    with fed.coordinator("51") as coordinator:
        stub = household_pb2_grpc.HouseholdRoundsStub(coordinator._channel)
        request = household_pb2.OpenRoundRequest(consent_id=three.consent_id, round_id=round_id,
                                                 **_discovery(coordinator, tokens))
        stub.OpenRound(request, timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            stub.OpenRound(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "round id already used" in (err.value.details() or "")


def test_a_tampered_contribution_or_decision_fails_verification(fed: Federation, three: Any, tmp_path: Path) -> None:
    """`household verify` passes the saved record, and fails it after a masked value or the verdict is changed."""
    result = fed.household("51", [EARNER, SPOUSE, GRANNY], "510104", consent_id=three.consent_id, period=PERIOD)
    verifier = fed.member("32").verifier
    assert verify_record(result.record, verifier).valid
    tampered = json.loads(json.dumps(result.record))
    signed = household_pb2.SignedContribution.FromString(base64.b64decode(tampered["body"]["contributions"][0]))
    body = household_pb2.ContributionBody.FromString(signed.body)
    body.masked[0] = masks.encode((masks.decode(body.masked[0]) + 100) % masks.MODULUS)
    signed.body = body.SerializeToString()
    tampered["body"]["contributions"][0] = base64.b64encode(signed.SerializeToString()).decode()
    check = verify_record(tampered, verifier)
    assert not check.valid and any("signature" in p for p in check.problems)
    relabelled = json.loads(json.dumps(result.record))
    relabelled["body"]["decision"]["verdict"] = "ELIGIBLE"
    assert not verify_record(relabelled, verifier).valid
    good, bad = tmp_path / "record.json", tmp_path / "tampered.json"
    good.write_text(json.dumps(result.record))
    bad.write_text(json.dumps(relabelled))
    pki = next(fed.root.rglob("ca.pem")).parent
    assert subprocess.run([*HEDUI, "household", "verify", "--pki", pki, good], capture_output=True).returncode == 0
    proc = subprocess.run([*HEDUI, "household", "verify", "--pki", pki, bad], capture_output=True, text=True)
    assert proc.returncode == 1 and "INVALID" in proc.stdout


def test_household_check_cli_prints_the_json_contract_and_saves_a_record(fed: Federation, three: Any,
                                                                         tmp_path: Path) -> None:
    """`hedui household check --json --save` prints the stable keys and writes a record that verifies (0600)."""
    record = tmp_path / "decision.json"
    proc = subprocess.run([*HEDUI, "household", "check", "--config", fed.configs["51"], "--consent", three.consent_id,
                           "--id", EARNER, "--id", SPOUSE, "--id", GRANNY, "--purpose", "dibao", "--region", "510104",
                           "--period", PERIOD, "--json", "--save", record], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for key in ("verdict", "members", "region", "standard_per_person", "income_per_person", "allowance", "totals",
                "rules", "routing"):
        assert key in data
    assert data["verdict"] == "NOT_ELIGIBLE" and record.stat().st_mode & 0o777 == 0o600
    pki = next(fed.root.rglob("ca.pem")).parent
    assert subprocess.run([*HEDUI, "household", "verify", "--pki", pki, record], capture_output=True).returncode == 0
    bad = subprocess.run([*HEDUI, "household", "check", "--config", fed.configs["51"], "--consent", three.consent_id,
                          "--id", EARNER, "--purpose", "dibao", "--region", "51x104"], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "region" in bad.stderr


# ---------------------------------------------------------------- the oracle


def _expected(values: dict[str, dict[tuple[str, str], int]], members: list[str]) -> dict[str, int]:
    """Household totals of every measure, straight from the departmental CSVs (all provinces, all members)."""
    catalogue = load_catalogue()
    totals: dict[str, int] = {}
    for measure in catalogue.measures:
        totals[measure.code] = sum(v.get((m, item), 0) for v in values.values() for m in members for item in measure.items)
    return totals


def _verdict(totals: dict[str, int], n: int) -> tuple[str, int]:
    """The test standard by hand: income after deductions per person < 900 yuan, financial assets <= 24 months a person."""
    income = 12 * totals["income_monthly"] + totals["income_annual"] - totals["medical_12m"] - totals["education_12m"]
    per_person = max(0, income // (12 * n))
    eligible = per_person < 90000 and totals["financial_assets"] <= n * 24 * 90000
    return ("ELIGIBLE" if eligible else "NOT_ELIGIBLE"), ((90000 - per_person) * n if eligible else 0)


@pytest.mark.slow
def test_household_totals_and_verdicts_match_the_oracle(tmp_path: Path) -> None:
    """Over 4 provinces (the requester's own data included), every synthetic household's totals and verdict match the CSVs."""
    provinces = ["51", "44", "33", "32"]
    generate(provinces, households=200, seed=10, out=tmp_path / "data")
    values = province_values(tmp_path / "data", provinces)
    households: dict[str, list[str]] = defaultdict(list)
    with open(tmp_path / "data" / "members.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["home"] == "51":
                households[row["household"]].append(row["id_number"])
    (tmp_path / "standards.toml").write_text(STANDARDS, encoding="utf-8")
    data = {p: tmp_path / "data" / f"{p}.csv" for p in provinces}
    checked = verdicts = 0
    seen: set[str] = set()
    with run_cluster(provinces, data=data, root=tmp_path / "fed") as fed:
        fed.publish_standards("51", tmp_path / "standards.toml")
        member = fed.member("51")
        with fed.coordinator("51") as coordinator:
            for key, ids in sorted(households.items()):
                consent = coordinator.grant(ids, "dibao")
                result = household_check(member, ids, "dibao", "510100", consent=consent.receipt, period=PERIOD,
                                         coordinator=coordinator)
                expected = _expected(values, ids)
                assert result.decision.totals == {m: expected[m] for m in result.decision.totals}, key
                assert (result.decision.verdict, result.decision.allowance) == _verdict(expected, len(ids)), key
                assert result.missing == ()
                checked += 1
                verdicts += result.decision.verdict == "ELIGIBLE"
                seen.update(p for p, s in result.routing.items() if s == "OK")
    assert checked == 200 and 0 < verdicts < checked  # both verdicts occur: the oracle decides something
    assert seen == set(provinces)


def test_a_holder_refuses_a_second_contribution_to_the_same_round(fed: Federation, three: Any) -> None:
    """Routing one holder set twice (fresh queries, same round id): every holder refuses the second time, and audits it."""
    import time

    from node.client.household import _Round
    from node.crypto.tokens import subject_token

    member = fed.member("51")
    tokens = [subject_token(member.linkage_key, n) for n in (EARNER, SPOUSE, GRANNY)]
    with fed.coordinator("51") as coordinator:
        stub = household_pb2_grpc.HouseholdRoundsStub(coordinator._channel)
        session = _Round(member, stub, coordinator.directory(), fed.receipt("51", three.consent_id), three.consent_id,
                         "dibao", tokens, ["income_monthly"], time.monotonic() + 30,
                         discovery=coordinator.discovery_tokens(tokens))
        opened = session.call("OpenRound", household_pb2.OpenRoundRequest(
            consent_id=three.consent_id, round_id=uuid.uuid4().hex, **_discovery(coordinator, tokens)))
        first, failed, _ = session.ask(opened.holder_set, {})
        assert not failed and sorted(first) == ["32", "33", "44", "51"]
        second, refused, _ = session.ask(opened.holder_set, {})
    assert not second and sorted(refused) == ["32", "33", "44", "51"]
    assert all("round id already used" in reason for reason in refused.values()), refused

    with audit_file(fed.root / "node44" / "audit.sqlite") as log:
        decisions = [json.loads(e.payload)["decision"] for e in log.entries()]
    assert "refused:REPLAYED" in decisions


# ---------------------------------------------------------------- a requester that deviates (SECURITY.md G25)


def _session(fed: Federation, consent: Any, ids: list[str], coordinator: Any) -> Any:
    import time

    from node.client.household import _Round
    from node.crypto.tokens import subject_token

    member = fed.member("51")
    tokens = [subject_token(member.linkage_key, n) for n in ids]
    stub = household_pb2_grpc.HouseholdRoundsStub(coordinator._channel)
    return _Round(member, stub, coordinator.directory(), fed.receipt("51", consent.consent_id), consent.consent_id,
                  "dibao", tokens, ["income_monthly"], time.monotonic() + 30,
                  discovery=coordinator.discovery_tokens(tokens))


def _discovery(coordinator: Any, tokens: list[bytes]) -> dict[str, Any]:
    """OpenRoundRequest's discovery fields for these members in the current epoch."""
    epoch, edts = coordinator.discovery_tokens(tokens)
    return {"discovery_tokens": edts, "epoch": epoch}


def test_a_repeated_round_cannot_leave_out_a_holder_that_answered(fed: Federation, three: Any) -> None:
    """Only holders the coordinator saw fail (its signed outcome) can be dropped: dropping 44 after it answered is refused."""
    with fed.coordinator("51") as coordinator:
        session = _session(fed, three, [EARNER, SPOUSE, GRANNY], coordinator)
        opened = session.call("OpenRound", household_pb2.OpenRoundRequest(
            consent_id=three.consent_id, round_id=uuid.uuid4().hex, **_discovery(coordinator, session.tokens)))
        answered, failed, outcome = session.ask(opened.holder_set, {})
        assert not failed and outcome is not None
        assert list(household_pb2.RoundOutcomeBody.FromString(outcome.body).failed) == []
        stub = household_pb2_grpc.HouseholdRoundsStub(coordinator._channel)
        for exclude, signed_outcome in ((["44"], outcome), (["44"], household_pb2.SignedRoundOutcome())):
            with pytest.raises(grpc.RpcError) as err:
                stub.OpenRound(household_pb2.OpenRoundRequest(
                    consent_id=three.consent_id, round_id=uuid.uuid4().hex, previous=opened.holder_set,
                    outcome=signed_outcome, exclude=exclude), timeout=10)
            assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED)


def test_a_round_over_part_of_the_household_is_refused(fed: Federation, three: Any) -> None:
    """The coordinator opens no round for one member of a three-member consent, and holders refuse a query about a part."""
    with fed.coordinator("51") as coordinator:
        session = _session(fed, three, [EARNER, SPOUSE, GRANNY], coordinator)
        with pytest.raises(Exception, match="every member"):
            session.call("OpenRound", household_pb2.OpenRoundRequest(
                consent_id=three.consent_id, round_id=uuid.uuid4().hex, **_discovery(coordinator, session.tokens[:1])))
        opened = session.call("OpenRound", household_pb2.OpenRoundRequest(
            consent_id=three.consent_id, round_id=uuid.uuid4().hex, **_discovery(coordinator, session.tokens)))
        session.tokens = session.tokens[:1]  # ask the holders about EARNER alone
        answered, failed, _ = session.ask(opened.holder_set, {})
    assert not answered and failed and all("every member" in reason for reason in failed.values()), failed


def test_a_holder_left_alone_with_the_requester_after_a_failure_refuses(fed: Federation) -> None:
    """33 fails mid-round; the repeat would leave 32 as the requester's only counterpart, so 32 refuses and nothing is decided."""
    from node.client.client import PeerRefused

    consent = fed.grant("51", [SPOUSE, CARER], "dibao")  # held by 33 (SPOUSE) and 32 (CARER)
    fed.stop_node("33")
    fed.start_node("33", server_class=_NoContributions)
    try:
        with pytest.raises(PeerRefused, match="would expose this province's share"):
            fed.household("51", [SPOUSE, CARER], "510104", consent_id=consent.consent_id, period=PERIOD)
    finally:
        fed.stop_node("33")
        fed.start_node("33")
