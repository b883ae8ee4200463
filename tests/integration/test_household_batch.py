"""`hedui household check-batch` (issue 10): batch household rounds over real nodes, checked against
single-household checks and the CSV oracle; resume, rejects, a holder down or failing mid-batch,
`household verify` on a results file, and one audit record per holder batch."""

from __future__ import annotations

import base64
import csv
import json
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.errors import ErrorCode, Refusal
from node.server.node_server import NodeServer
from node.store import audit
from node.synth import generate
from node.testing import Federation, run_cluster
from node.wire.v1 import household_pb2
from tests.integration.test_batch import hedui, record_sizes
from tests.integration.test_household import PERIOD, STANDARDS, _expected, _verdict
from tests.oracle import province_values

PROVINCES = ["51", "44", "33", "32"]
REQUESTER = "51"
SHOWN = ("verdict", "members", "region", "period", "purpose", "standard_per_person", "income_per_person", "allowance",
         "totals", "rules", "routing", "missing", "as_of", "consent_id")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Federation, Path]]:
    """Four provinces of synthetic data; Sichuan (51) asks and publishes the test standard of Chengdu."""
    root = tmp_path_factory.mktemp("hhbatch")
    generate(PROVINCES, 30, 11, root / "data")
    data = {c: root / "data" / f"{c}.csv" for c in PROVINCES}
    (root / "standards.toml").write_text(STANDARDS, encoding="utf-8")
    with run_cluster(PROVINCES, root=root / "fed", data=data) as fed:
        fed.publish_standards(REQUESTER, root / "standards.toml")
        yield fed, root


def _members(root: Path) -> dict[str, list[str]]:
    """Sichuan's households (home 51): key -> members' ID numbers."""
    members: dict[str, list[str]] = defaultdict(list)
    with open(root / "data" / "members.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["home"] == REQUESTER:
                members[row["household"]].append(row["id_number"])
    return dict(members)


@pytest.fixture(scope="module")
def inputs(world: tuple[Federation, Path]) -> dict[str, Any]:
    """HOUSEHOLDS.csv with a region column (every other household leaves it empty) and its CONSENTS.csv."""
    fed, root = world
    members = _members(root)
    path = root / "households.csv"
    rows = ["household,id_number,region"]
    for n, (key, ids) in enumerate(sorted(members.items())):
        rows += [f"{key},{i},{'510104' if n % 2 == 0 else ''}" for i in ids]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    consents = root / "consents.csv"
    proc = hedui("consent", "grant-batch", "--config", fed.configs[REQUESTER], "--in", path, "--purpose", "dibao",
                 "--out", consents)
    assert proc.returncode == 0, proc.stderr
    return {"households": path, "consents": consents, "members": members}


def check_batch(fed: Federation, households: Path, consents: Path, out: Path, *extra: object) -> subprocess.CompletedProcess[str]:
    return hedui("household", "check-batch", "--config", fed.configs[REQUESTER], "--in", households, "--consents",
                 consents, "--purpose", "dibao", "--period", PERIOD, "--out", out, "--chunk", "8", *extra)


def lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def shown(line: dict[str, Any]) -> dict[str, Any]:
    return {k: line[k] for k in SHOWN}


def test_check_batch_matches_single_checks_and_the_oracle(world: tuple[Federation, Path], inputs: dict[str, Any],
                                                          tmp_path: Path) -> None:
    """Every household's totals and verdict match the CSV oracle, a sample matches `household check`, and all verify."""
    fed, root = world
    out = tmp_path / "results.jsonl"
    proc = check_batch(fed, inputs["households"], inputs["consents"], out, "--region", "510100")
    assert proc.returncode == 0, proc.stderr
    results = lines(out)
    members = inputs["members"]
    assert sorted(r["household"] for r in results) == sorted(members)
    values = province_values(root / "data", PROVINCES)
    verdicts = set()
    for r in results:
        ids = members[r["household"]]
        expected = _expected(values, ids)
        assert r["totals"] == {m: expected[m] for m in r["totals"]}, r["household"]
        assert (r["verdict"], r["allowance"]) == _verdict(expected, len(ids)), r["household"]
        assert r["missing"] == [] and r["routing"][REQUESTER] == "OK" and r["region"] in ("510104", "510100")
        verdicts.add(r["verdict"])
    assert verdicts == {"ELIGIBLE", "NOT_ELIGIBLE"}  # the oracle decides something
    assert {r["region"] for r in results} == {"510104", "510100"}  # the column, and --region for rows without one
    receipts = {r["household"]: r["consent_id"] for r in results}
    for r in results[:6]:
        single = fed.household(REQUESTER, members[r["household"]], r["region"], consent_id=receipts[r["household"]],
                               period=PERIOD).to_json()
        assert {k: single[k] for k in SHOWN} == shown(r)
    verified = hedui("household", "verify", "--pki", fed.pki, out)
    assert verified.returncode == 0, verified.stdout
    assert f"{len(results)} of {len(results)} decision records valid" in verified.stdout


def test_resume_after_interruption_gives_the_same_output(world: tuple[Federation, Path], inputs: dict[str, Any],
                                                         tmp_path: Path) -> None:
    """A run cut off mid-line resumes to the same households and decisions, without duplicates or partial lines."""
    fed, _ = world
    full, cut = tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    assert check_batch(fed, inputs["households"], inputs["consents"], full, "--region", "510100").returncode == 0
    written = full.read_text(encoding="utf-8").splitlines(keepends=True)
    cut.write_text("".join(written[:11]) + written[11][: len(written[11]) // 2], encoding="utf-8")
    proc = check_batch(fed, inputs["households"], inputs["consents"], cut, "--region", "510100")
    assert proc.returncode == 0, proc.stderr
    resumed = lines(cut)
    assert len(resumed) == len({r["household"] for r in resumed}) == len(written)
    assert resumed[:11] == lines(full)[:11]  # finished lines are kept as they were
    assert {r["household"]: shown(r) for r in resumed} == {r["household"]: shown(r) for r in lines(full)}
    assert "11 already done" in proc.stderr


def test_rejects_name_lines_and_reasons_never_an_id(world: tuple[Federation, Path], inputs: dict[str, Any],
                                                    tmp_path: Path) -> None:
    """A bad ID number, a household with no region, one without a consent and one whose region publishes no
    standard are rejected by line number and reason, with no ID number; the good household is decided."""
    fed, _ = world
    (good, good_ids), (other, other_ids), (third, third_ids) = sorted(inputs["members"].items())[:3]
    bad_id = good_ids[0][:-1] + ("0" if good_ids[0][-1] != "0" else "1")
    households = tmp_path / "households.csv"
    rows = ["household,id_number,region", *(f"{good},{i},510104" for i in good_ids), f"bad-id,{bad_id},510104",
            *(f"{other},{i}," for i in other_ids), f"no-consent,{good_ids[0]},510104",
            *(f"{third},{i},110101" for i in third_ids)]
    households.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "results.jsonl"
    proc = check_batch(fed, households, inputs["consents"], out)  # no --region: the empty cells have none
    assert proc.returncode == 0, proc.stderr
    assert [r["household"] for r in lines(out)] == [good]
    rejects_file = out.with_name(out.name + ".rejects.csv")
    with open(rejects_file, newline="") as f:
        rejected = {r["household"]: r for r in csv.DictReader(f)}
    first = {"bad-id": 2 + len(good_ids), other: 3 + len(good_ids), "no-consent": 3 + len(good_ids) + len(other_ids),
             third: 4 + len(good_ids) + len(other_ids)}
    assert {k: int(r["line"]) for k, r in rejected.items()} == first
    assert "check character" in rejected["bad-id"]["reason"]
    assert "no region" in rejected[other]["reason"]
    assert "no consent" in rejected["no-consent"]["reason"]
    assert "no published standard for region 110101" in rejected[third]["reason"]
    text = rejects_file.read_text() + proc.stderr + proc.stdout
    assert not [n for n in [bad_id, *good_ids, *other_ids, *third_ids] if n in text]


class _NoContributions(NodeServer):
    """A node that answers discovery but fails every contribution batch (UNAVAILABLE: a holder dying mid-batch)."""

    async def start(self, listen: str | None = None) -> int:
        port = await super().start(listen)

        def fail(queries: Any, *_: Any) -> Any:
            return [Refusal(ErrorCode.UNAVAILABLE, "store went away") for _ in queries]

        self.household_servicer.service.contribute_many = fail
        return port


class _RefusingSome(NodeServer):
    """A node that refuses every other household of each contribution batch (item by item, sealed from the coordinator)."""

    async def start(self, listen: str | None = None) -> int:
        port = await super().start(listen)
        service = self.household_servicer.service
        contribute_many = service.contribute_many

        def some(queries: Any, *args: Any) -> Any:
            done = contribute_many(queries, *args)
            return [Refusal(ErrorCode.NOT_AUTHORISED, "not this one") if i % 2 else c for i, c in enumerate(done)]

        service.contribute_many = some
        return port


def _others(line: dict[str, Any]) -> set[str]:
    """The provinces besides the requester that contributed to the line's decision."""
    return {p for p, st in line["routing"].items() if st == "OK" and p != REQUESTER}


def _run_with(fed: Federation, code: str, server_class: type | None, inputs: dict[str, Any], out: Path) -> list[dict]:
    """One check-batch run with province `code` down (None) or replaced by `server_class`."""
    fed.stop_node(code)
    if server_class is not None:
        fed.start_node(code, server_class=server_class)
    try:
        assert check_batch(fed, inputs["households"], inputs["consents"], out, "--region", "510100").returncode == 0
    finally:
        if server_class is not None:
            fed.stop_node(code)
        fed.start_node(code)
    return lines(out)


def test_a_holder_down_gives_incomplete_lines_naming_it_and_a_rerun_completes(
        world: tuple[Federation, Path], inputs: dict[str, Any], tmp_path: Path) -> None:
    """With 33 down, the lines of households 33's locator matches are INCOMPLETE naming 33 (summed over the
    others) and verify, the others are decided as usual (33 holds none of them); a re-run completes them."""
    fed, _ = world
    out = tmp_path / "results.jsonl"
    first = _run_with(fed, "33", None, inputs, out)
    touched = [r for r in first if r["routing"]["33"] != "NO_MATCH"]
    incomplete = [r for r in touched if "error" not in r]
    assert touched and all(r["routing"]["33"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED") for r in touched)
    assert all(r["verdict"] == "INCOMPLETE" and r["missing"] == ["33"] for r in incomplete)
    assert all(r["verdict"] != "INCOMPLETE" and r["missing"] == [] for r in first if r not in touched)
    # a line is undecided only where 33's absence would leave one province beside the requester (SECURITY G25)
    assert incomplete and all(len(_others(r)) <= 1 for r in first if "error" in r)
    assert hedui("household", "verify", "--pki", fed.pki, out).returncode == (1 if any("error" in r for r in first) else 0)
    proc = check_batch(fed, inputs["households"], inputs["consents"], out, "--region", "510100")
    assert proc.returncode == 0, proc.stderr
    second = lines(out)
    assert len(second) == len(first) == len({r["household"] for r in second})
    assert all(r["verdict"] != "INCOMPLETE" and r["missing"] == [] for r in second)
    done = [r for r in first if "error" not in r and r["verdict"] != "INCOMPLETE"]  # 33 holds none of these
    assert done and f"{len(done)} already done" in proc.stderr


def test_a_holder_failing_mid_batch_gets_repeated_rounds_never_a_partial_sum(
        world: tuple[Federation, Path], inputs: dict[str, Any], tmp_path: Path) -> None:
    """33 answers discovery but its contribution batches fail: its households get a fresh round without it
    (INCOMPLETE naming 33, the others' sum, never the first round's), the rest complete; a re-run completes all."""
    fed, root = world
    out = tmp_path / "results.jsonl"
    first = _run_with(fed, "33", _NoContributions, inputs, out)
    members, values = inputs["members"], province_values(root / "data", PROVINCES)
    others = {p: v for p, v in values.items() if p != "33"}
    touched = [r for r in first if r["routing"]["33"] != "NO_MATCH"]
    assert touched and all(r["routing"]["33"] == "UNAVAILABLE" for r in touched)
    assert all(r["verdict"] != "INCOMPLETE" and r["missing"] == [] for r in first if r not in touched)
    repeated = [r for r in touched if "error" not in r]
    assert repeated
    for r in repeated:
        holder_set = household_pb2.HolderSetBody.FromString(household_pb2.SignedHolderSet.FromString(
            base64.b64decode(r["record"]["body"]["holder_set"])).body)
        assert r["verdict"] == "INCOMPLETE" and r["missing"] == ["33"]
        assert holder_set.previous_round_id and "33" not in holder_set.holders and list(holder_set.missing) == ["33"]
        expected = _expected(others, members[r["household"]])
        assert r["totals"] == {m: expected[m] for m in r["totals"]}  # the fresh round's sum, without 33's share
    assert check_batch(fed, inputs["households"], inputs["consents"], out, "--region", "510100").returncode == 0
    assert all(r["verdict"] != "INCOMPLETE" for r in lines(out))


def test_a_holder_refusing_a_household_leaves_it_undecided_until_a_rerun(
        world: tuple[Federation, Path], inputs: dict[str, Any], tmp_path: Path) -> None:
    """A refusal sealed inside 33's batch reply is not a transport failure: that household is not summed without 33
    but left undecided (an error line naming 33, no record); the others are decided; a re-run completes them."""
    fed, _ = world
    out = tmp_path / "results.jsonl"
    first = _run_with(fed, "33", _RefusingSome, inputs, out)
    undecided = [r for r in first if "error" in r]
    assert undecided and all("province 33" in r["error"] and "record" not in r for r in undecided)
    assert all(r["routing"]["33"] == "DENIED" for r in undecided)
    assert all(r["verdict"] != "INCOMPLETE" for r in first if "error" not in r)
    proc = check_batch(fed, inputs["households"], inputs["consents"], out, "--region", "510100")
    assert proc.returncode == 0, proc.stderr
    assert f"{len(first) - len(undecided)} already done" in proc.stderr
    assert all("error" not in r and r["verdict"] != "INCOMPLETE" for r in lines(out))


def test_household_verify_fails_a_results_file_with_a_changed_or_undecided_line(
        world: tuple[Federation, Path], inputs: dict[str, Any], tmp_path: Path) -> None:
    """A line whose shown verdict differs from its record, a tampered record, or a line without a record fail (exit 1)."""
    fed, _ = world
    out = tmp_path / "results.jsonl"
    assert check_batch(fed, inputs["households"], inputs["consents"], out, "--region", "510100").returncode == 0
    good = lines(out)
    shown_changed = json.loads(json.dumps(good[0]))
    shown_changed["verdict"] = "ELIGIBLE" if good[0]["verdict"] != "ELIGIBLE" else "NOT_ELIGIBLE"
    record_changed = json.loads(json.dumps(good[1]))
    record_changed["record"]["body"]["decision"]["allowance"] += 100
    undecided = {"household": "x", "consent_id": "c-1", "members": 1, "region": "510104", "error": "no answer",
                 "routing": {"33": "UNAVAILABLE"}}
    for n, line in ((1, shown_changed), (2, record_changed), (3, undecided)):
        bad = tmp_path / f"bad{n}.jsonl"
        rows = [shown_changed if n == 1 else good[0], record_changed if n == 2 else good[1], *good[2:]]
        if n == 3:
            rows.append(line)
        bad.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        proc = hedui("household", "verify", "--pki", fed.pki, bad, "--json")
        assert proc.returncode == 1, (n, proc.stdout)
        report = json.loads(proc.stdout)
        assert [x["line"] for x in report["lines"] if not x["valid"]] == [n if n < 3 else len(rows)]


def test_a_holder_audits_one_record_per_batch_naming_each_household(
        world: tuple[Federation, Path], inputs: dict[str, Any], tmp_path: Path) -> None:
    """44's audit log gets one `contributed` record per contribution batch, whose entries name every household
    round (round id, consent id, digest of what it signed) and no ID number."""
    fed, _ = world
    node = fed.servers["44"]
    before = node.audit_log.head()[0]
    out = tmp_path / "results.jsonl"
    assert check_batch(fed, inputs["households"], inputs["consents"], out, "--region", "510100").returncode == 0
    results = lines(out)
    new = [e for e in node.audit_log.entries(after=before)]
    records = [audit.AuditRecord.from_json(e.payload) for e in new]
    contributed = [r for r in records if r.decision == "contributed"]
    entries = [e for r in contributed for e in r.batch]
    held = [r for r in results if r["routing"].get("44") == "OK"]
    assert held and len(entries) == len(held) and len(contributed) < len(held)
    assert {e.request_id for e in entries} == {r["round_id"] for r in held}
    assert {e.consent_id for e in entries} == {r["consent_id"] for r in held}
    assert all(len(e.outcome_digest) == 64 for e in entries)
    payloads = " ".join(e.payload.decode() for e in new)
    assert not [i for ids in inputs["members"].values() for i in ids if i in payloads]


def test_rounds_too_large_for_one_message_are_routed_as_several(world: tuple[Federation, Path],
                                                                inputs: dict[str, Any]) -> None:
    """A RouteRoundBatch that would pass the session's message limit goes as several smaller ones (gRPC
    refuses an oversized message whole), and every household is decided as from one message."""
    import asyncio

    from node.client.batch import read_consents, read_households
    from node.client.household_batch import BatchHousehold, HouseholdBatchSession

    fed, _ = world
    member = fed.member(REQUESTER)
    households, _ = read_households(inputs["households"])
    receipts = read_consents(inputs["consents"])
    chunk = [BatchHousehold(h.key, h.ids, "510104", receipts[h.key]) for h in households][:8]

    async def run(limit: int | None) -> tuple[list[dict[str, Any]], list[int]]:
        session = HouseholdBatchSession(member, "dibao", period=PERIOD)
        sent = record_sizes(session, "RouteRoundBatch")
        if limit is not None:
            session.max_request_bytes = limit
        try:
            return await session.check(chunk), sent
        finally:
            await session.close()

    whole, one = asyncio.run(run(None))
    limit = max(one) // 3
    split, many = asyncio.run(run(limit))
    assert len(chunk) == 8 and len(one) == 1
    assert len(many) >= 3 and all(size <= limit for size in many)
    assert [r["household"] for r in split] == [h.key for h in chunk]
    assert [(r["verdict"], r["totals"]) for r in split] == [(r["verdict"], r["totals"]) for r in whole]
    assert all("error" not in r and r["missing"] == [] for r in split)
