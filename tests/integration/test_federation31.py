"""All 31 provinces on loopback: routed verification matches an oracle computed from the CSVs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from node.demo import read_people
from node.domain.predicate import parse_check
from node.domain.regions import PROVINCE_CODES
from node.synth import generate
from node.testing import run_cluster
from tests.oracle import province_values

CHECKS = ["deposit.balance_total<=2000000", "income.wage_monthly<=300000", "real_estate.count>=1",
          "social_insurance.contributing==1"]


def oracle(data: Path) -> dict[str, dict[tuple[str, str], int]]:
    return province_values(data, PROVINCE_CODES)


def test_31_province_federation_matches_the_oracle(tmp_path: Path) -> None:
    """Households with migrants are verified through the coordinator; every outcome and route matches the oracle."""
    generate(PROVINCE_CODES, 12, 31, tmp_path / "data")
    expected = oracle(tmp_path / "data")
    people = read_people(tmp_path / "data")
    households: dict[str, list] = defaultdict(list)
    for p in people:
        households[p.household].append(p)
    migrant = sorted(h for h, ms in households.items() if any(m.work != m.home for m in ms))[:25]
    assert len(migrant) >= 20
    checks = [parse_check(c) for c in CHECKS]
    data = {c: tmp_path / "data" / f"{c}.csv" for c in PROVINCE_CODES}
    compared = 0
    with run_cluster(PROVINCE_CODES, root=tmp_path / "fed", data=data) as fed:
        for household in migrant:
            members = households[household]
            home = members[0].home
            ids = [m.id_number for m in members]
            consent = fed.grant(home, ids, "dibao").consent_id
            result = fed.verify(home, ids, CHECKS, consent_id=consent, deadline_s=20)
            holders = {c for c in PROVINCE_CODES if c != home and any(k[0] in ids for k in expected[c])}
            assert {p for p, s in result.routing.items() if s == "OK"} == holders
            assert set(result.routing) == set(PROVINCE_CODES) - {home}
            for answer in result.answers:
                assert answer.signature_valid
                for r in answer.results:
                    check = checks[CHECKS.index(r.check)]
                    value = expected[answer.province].get((ids[r.subject], check.attribute))
                    want = "NO_RECORD" if value is None else ("SATISFIED" if check.evaluate(value) else "NOT_SATISFIED")
                    assert r.outcome == want, (household, answer.province, r)
                    compared += 1
    assert compared > 100
