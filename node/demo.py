"""`hedui demo`: a whole federation on loopback with synthetic data, and real verifications."""

from __future__ import annotations

import contextlib
import csv
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from node.client.client import PeerRefused
from node.errors import BadInput
from node.domain.regions import PROVINCE_CODES, province_name
from node.synth import EXPORTING, generate
from node.testing import Federation, run_cluster

#: Labour-exporting and labour-importing provinces first, so a small demo still shows migration.
PREFERRED = ("51", "44", "41", "33", "34", "32", "52", "31", "43", "11")
DIBAO_CHECKS = (
    "deposit.balance_total<=2000000",       # savings at most 20,000 yuan
    "income.wage_monthly<=300000",          # wage at most 3,000 yuan a month
    "vehicle.count==0",
    "securities.value_total<=500000",
)


@dataclass(frozen=True)
class Person:
    household: str
    id_number: str
    home: str
    work: str


def choose_provinces(n: int) -> list[str]:
    if not 1 <= n <= len(PROVINCE_CODES):
        raise ValueError(f"--provinces must be 1 to {len(PROVINCE_CODES)}")
    rest = [c for c in PROVINCE_CODES if c not in PREFERRED]
    return sorted((list(PREFERRED) + rest)[:n])


def read_people(out: Path) -> list[Person]:
    with open(out / "members.csv", newline="", encoding="utf-8") as f:
        return [Person(r["household"], r["id_number"], r["home"], r["work"]) for r in csv.DictReader(f)]


def _fmt_statuses(routing: dict[str, str]) -> str:
    shown = [f"{p} {province_name(p)} {s}" for p, s in sorted(routing.items()) if s != "NO_MATCH"]
    quiet = sum(1 for s in routing.values() if s == "NO_MATCH")
    return ", ".join(shown) + (f" (+{quiet} provinces with no match)" if quiet else "")


@contextlib.contextmanager
def federation(provinces: list[str], households: int, seed: int, root: Path | None,
               say: Callable[[str], None]) -> Iterator[tuple[Federation, list[Person]]]:
    with contextlib.ExitStack() as stack:
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hedui-demo-")))
        started = time.monotonic()
        summary = generate(provinces, households, seed, root / "data", replace=True)  # --dir may hold an earlier run
        say(f"Synthetic data: {summary.households:,} households, {summary.members:,} people "
            f"({summary.migrants:,} migrant workers), {sum(summary.facts_per_province.values()):,} facts "
            f"in {len(provinces)} provinces")
        data = {p: root / "data" / f"{p}.csv" for p in provinces}
        fed = stack.enter_context(run_cluster(provinces, root=root / "federation", data=data))
        say(f"Federation up in {time.monotonic() - started:.1f} s: PKI, {len(provinces)} nodes and a coordinator "
            f"on loopback with mutual TLS (coordinator {fed.addresses['coordinator']})")
        yield fed, read_people(root / "data")


def run_demo(provinces_n: int = 31, households: int = 40, seed: int = 2026, *, detail: int = 4,
             rounds: int = 60, root: Path | None = None, keep_running: bool = False,
             say: Callable[[str], None] = print) -> dict[str, float]:
    """Run the demo; return its measured figures (for tests and the report's last lines)."""
    provinces = choose_provinces(provinces_n)
    with federation(provinces, households, seed, root, say) as (fed, people):
        households_of: dict[str, list[Person]] = defaultdict(list)
        for p in people:
            households_of[p.household].append(p)
        def interest(household: str) -> tuple[int, bool, str]:
            ms = households_of[household]
            away = {m.work for m in ms if m.work != m.home}
            return (-len(away), ms[0].home not in EXPORTING, household)

        chosen = sorted(households_of, key=interest)[: max(detail, rounds)]
        latencies: list[float] = []
        outcomes: dict[str, int] = defaultdict(int)
        cross = 0
        for i, household in enumerate(chosen):
            members = households_of[household]
            home = members[0].home
            ids = [m.id_number for m in members]
            consent = fed.grant(home, ids, "dibao", case_reference=f"DEMO/{household}")
            t0 = time.perf_counter()
            result = fed.verify(home, ids, list(DIBAO_CHECKS), consent_id=consent.consent_id)
            latencies.append(time.perf_counter() - t0)
            cross += any(s == "OK" for s in result.routing.values())
            for answer in result.answers:
                for r in answer.results:
                    outcomes[r.outcome] += 1
            if i < detail:
                say("")
                say(f"Household {household}: {len(members)} member(s), registered in {province_name(home)} ({home}); "
                    f"consent {consent.consent_id} (ledger entry {consent.ledger_index})")
                for j, m in enumerate(members):
                    where = f"works in {province_name(m.work)}" if m.work != m.home else "lives and works at home"
                    say(f"  member #{j}: {where}")
                say(f"  routed to: {_fmt_statuses(result.routing) or 'no other province holds data'}")
                for answer in result.answers:
                    say(f"  {province_name(answer.province)} ({answer.province}) answers, signature "
                        f"{'valid' if answer.signature_valid else 'INVALID'}:")
                    for r in answer.results:
                        if r.outcome != "NO_RECORD":
                            say(f"    member #{r.subject}  {r.check:<32} {r.outcome:<14} as of {r.as_of or '-'}")
        say("")
        household_figures = _demo_households(fed, [households_of[h] for h in chosen], detail, say)
        say("")
        _demo_revocation(fed, households_of[chosen[0]], say)
        p50 = statistics.median(latencies) * 1000
        p99 = sorted(latencies)[int(0.99 * (len(latencies) - 1))] * 1000
        say("")
        say(f"{len(chosen)} households verified through the coordinator ({cross} with data in other provinces): "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms per household")
        say("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
        say("No ID number or data value left its province: the coordinator saw pseudonymous tokens and ciphertext.")
        if keep_running:
            _keep_running(fed, say)
        return {"households": len(chosen), "cross_province": cross, "p50_ms": p50, "p99_ms": p99, **household_figures}


def _demo_households(fed: Federation, households: list[list[Person]], detail: int,
                     say: Callable[[str], None]) -> dict[str, float]:
    """The household means test on the shipped example standards: totals over every province, no share revealed."""
    from node.domain.catalogue import shipped
    from node.domain.standards import ELIGIBLE

    published = set()
    for code in sorted(fed.configs):
        example = next((f for f in shipped("standards").iterdir() if f.name.startswith(f"{code}-")), None)
        if example is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / example.name
                path.write_bytes(example.read_bytes())
                fed.publish_standards(code, path)
            published.add(code)
    say(f"Household means test: example standards published by {', '.join(sorted(published)) or 'no province'} "
        "(config/standards/, each figure with its source)")
    latencies: list[float] = []
    verdicts: dict[str, int] = defaultdict(int)
    for members in households:
        home, ids = members[0].home, [m.id_number for m in members]
        if home not in published:
            continue
        consent = fed.grant(home, ids, "dibao")
        t0 = time.perf_counter()
        try:
            result = fed.household(home, ids, ids[0][:6], consent_id=consent.consent_id)
        except BadInput:  # no example standard in force for this region: skipped, not a failure
            continue
        latencies.append(time.perf_counter() - t0)
        data = result.to_json()
        verdicts[data["verdict"]] += 1
        if len(latencies) <= detail:
            shares = ", ".join(f"{province_name(p)} ({p})" for p, s in sorted(data["routing"].items()) if s == "OK")
            amount = f", allowance {data['allowance'] / 100:,.2f} yuan a month" if data["verdict"] == ELIGIBLE else ""
            say(f"  household of {data['members']} in {data['region']}: {data['verdict']}{amount}; income per person "
                f"{data['income_per_person'] / 100:,.2f} yuan vs standard {data['standard_per_person'] / 100:,.2f} "
                f"(summed over {shares})")
    if not latencies:
        say("  no household is registered in a province with an example standard")
        return {"household_checks": 0}
    p50 = statistics.median(latencies) * 1000
    say(f"{len(latencies)} household decisions ({', '.join(f'{k} {v}' for k, v in sorted(verdicts.items()))}): "
        f"p50 {p50:.1f} ms; each province's share stayed masked, only the totals were added up")
    return {"household_checks": len(latencies), "household_p50_ms": p50}


def _demo_revocation(fed: Federation, members: list[Person], say: Callable[[str], None]) -> None:
    home = members[0].home
    ids = [m.id_number for m in members]
    consent = fed.grant(home, ids, "dibao")
    fed.revoke(home, consent.consent_id)
    try:
        fed.verify(home, ids, list(DIBAO_CHECKS[:1]), consent_id=consent.consent_id)
        say("Revoked consent: UNEXPECTEDLY ANSWERED")
    except PeerRefused as exc:
        say(f"Revoked consent {consent.consent_id}: {exc}")


def _keep_running(fed: Federation, say: Callable[[str], None]) -> None:
    say("")
    say("Federation keeps running; try the CLI against it, for example:")
    code = next(iter(fed.configs))
    say(f"  hedui consent grant --config {fed.configs[code]} --id ID --purpose dibao")
    say(f"  hedui verify --config {fed.configs[code]} --consent CONSENT_ID --id ID --purpose dibao "
        f"--check 'deposit.balance_total<=2000000'")
    say("Press Ctrl-C to stop.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say("stopping")
