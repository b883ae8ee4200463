"""Tests for node.bench: generated bench data, and the quick bench run end to end."""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from node.bench import (FACT_SPECS, MEMBER_FACT_SPECS, PARTS, goals, id_numbers, parse_args, plan_households, table,
                        write_facts_csv, write_households)
from node.bench.cli import stores_of
from node.bench.scale import curve, curve_table, parse_curve
from node.bench.workers_split import split_households, split_lines
from node.domain.idnumber import validate

REQUIRED_POSITIVE = (
    "echo_seq_per_s", "verify_seq_per_s", "echo_c32_per_s", "verify_c32_per_s", "verify_ratio_c32",
    "verify_ratio_seq", "ingest_facts_per_s", "lookups_per_s", "node_rss_mb",
    "routed_p50_ms", "routed_p99_ms", "routed_per_s", "direct_p50_ms", "routed_over_direct_p50",
    "batch_households_per_s", "node_rss_mb_1m", "verify_c32_workers1_per_s", "verify_c32_workers2_per_s",
    "workers_speedup", "household_households_per_s", "household_over_batch",
)
GOALS = {"verify_ratio_c32": 0.8, "routed_over_direct_p50": 3.0, "batch_households_per_s": 2000.0,
         "household_households_per_s": 2000.0, "node_rss_mb_1m": 300.0, "ingest_facts_per_s": 250000.0}


def test_id_numbers_are_distinct_and_valid() -> None:
    """Generated ID numbers pass GB 11643 validation and never repeat, across birth-day wrap-around."""
    numbers = id_numbers(20_000, start=17_990)
    assert len(set(numbers)) == len(numbers)
    assert all(validate(n) == n for n in numbers[::97] + numbers[:20])


def test_facts_csv_has_the_requested_facts_per_subject(tmp_path: Path) -> None:
    """A fractional facts_per_subject alternates whole counts and writes catalogue rows in header order."""
    ids = id_numbers(10)
    count = write_facts_csv(tmp_path / "f.csv", ids, facts_per_subject=2.5)
    with (tmp_path / "f.csv").open(encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id_number", "attribute", "value", "as_of", "source"]
    assert count == len(rows) - 1 == 25
    assert {r[1] for r in rows[1:]} <= {spec[0] for spec in FACT_SPECS}


def test_member_facts_cover_the_batch_checks(tmp_path: Path) -> None:
    """Six facts per member: one per batch check, vehicle.count last."""
    count = write_facts_csv(tmp_path / "m.csv", id_numbers(3), facts_per_subject=6, specs=MEMBER_FACT_SPECS)
    with (tmp_path / "m.csv").open(encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    assert count == len(rows) == 18
    assert [r[1] for r in rows[:6]] == [spec[0] for spec in MEMBER_FACT_SPECS]


def test_planned_households_spread_over_the_asked_provinces(tmp_path: Path) -> None:
    """Routed: 1-3 members in 1-2 provinces; batch: 3 members in 2-3; every chosen province holds someone."""
    provinces = [f"{c}" for c in (11, 12, 13, 14, 15, 21)]
    ids = iter(id_numbers(3 * 800))
    rng = random.Random(1)
    routed = plan_households(rng, 400, members=(1, 3), spread=(1, 2), provinces=provinces, ids=ids, prefix="r")
    batch = plan_households(rng, 400, members=(3, 3), spread=(2, 3), provinces=provinces, ids=ids, prefix="b")
    for _key, numbers, where in routed:
        assert 1 <= len(numbers) <= 3 and 1 <= len(set(where)) <= min(2, len(numbers))
    for _key, numbers, where in batch:
        assert len(numbers) == 3 and 2 <= len(set(where)) <= 3
    assert {len(set(w)) for _, _, w in batch} == {2, 3}
    all_ids = [n for _, numbers, _ in routed + batch for n in numbers]
    assert len(set(all_ids)) == len(all_ids)
    expect = write_households(tmp_path / "h.csv", batch)
    assert expect[batch[0][0]] == sorted(set(batch[0][2]))
    lines = (tmp_path / "h.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "household,id_number" and len(lines) == 1 + 3 * 400


def test_goals_say_met_and_how_far_off() -> None:
    """At-least goals fall short by bound - value, at-most goals by value - bound; unmeasured ones are None."""
    g = goals({"verify_ratio_c32": 0.4, "routed_over_direct_p50": 2.0, "batch_households_per_s": 500.0,
               "household_households_per_s": 2500.0})
    assert g["verify_ratio_c32"]["met"] is False and g["verify_ratio_c32"]["shortfall"] == pytest.approx(0.4)
    assert g["verify_ratio_c32"]["factor"] == pytest.approx(2.0)
    assert g["routed_over_direct_p50"]["met"] is True and g["routed_over_direct_p50"]["shortfall"] == 0
    assert g["batch_households_per_s"]["shortfall"] == pytest.approx(1500.0)
    assert g["household_households_per_s"]["met"] is True and g["household_households_per_s"]["shortfall"] == 0
    assert g["node_rss_mb_1m"]["met"] is None
    assert goals({"node_rss_mb_1m": 300.0})["node_rss_mb_1m"]["met"] is False  # strictly below 300
    assert goals({"node_rss_mb_1m": 350.0})["node_rss_mb_1m"]["shortfall"] == pytest.approx(50.0)
    ingest = goals({"ingest_facts_per_s": 125000.0})["ingest_facts_per_s"]
    assert ingest["met"] is False and ingest["factor"] == pytest.approx(2.0) and ingest["rule"] == ">="


def test_the_table_reports_a_household_only_run() -> None:
    """`--only household` (no per-person batch in the run) still prints its line and its goal."""
    out = {"household_households_per_s": 250.0, "household_rounds_per_s": [240.0, 260.0], "household_chunk": 128,
           "household_in_flight": 4, "household_holders_per_household": 3.5, "household_chunk_p50_ms": 1800.0,
           "household_chunk_p99_ms": 3000.0, "household_server_cpu": 1.0, "household_client_cpu": 0.3,
           "household_other_cpu": 0.0, "household_server_cpu_us_per_household": 4000.0,
           "household_client_cpu_us_per_household": 1100.0, "household_line_bytes": 12000.0, "total_s": 1.0}
    out["goals"] = goals(out)
    text = table(out)
    assert "250 households/s" in text and "per-person batch" not in text
    assert "household_households_per_s" in text and "NOT met" in text


def test_only_takes_comma_separated_parts() -> None:
    """--only rpc still works, several parts combine, `all` means every part, unknown parts are refused."""
    assert parse_args(["--only", "rpc"]).only == ["rpc"]
    assert parse_args(["--only", "routed,batch"]).only == ["routed", "batch"]
    assert parse_args(["--only", "household"]).only == ["household"]
    assert parse_args([]).only == list(PARTS) == parse_args(["--only", "all"]).only
    with pytest.raises(SystemExit):
        parse_args(["--only", "rpc,nope"])
    assert isinstance(parse_args([]), argparse.Namespace)


def test_store_option_and_the_figures_of_a_second_store() -> None:
    """--store takes sqlite, postgresql or both (a full run measures both, a quick one SQLite); a later store's
    figures print beside the first's."""
    assert stores_of(parse_args([]), quick=False) == ["sqlite", "postgresql"]
    assert stores_of(parse_args([]), quick=True) == ["sqlite"]
    assert stores_of(parse_args(["--store", "postgresql"]), quick=True) == ["postgresql"]
    assert parse_args(["--store", "sqlite,postgresql"]).store == ["sqlite", "postgresql"]
    with pytest.raises(SystemExit):
        parse_args(["--store", "mysql"])
    out = {"postgresql_batch_households_per_s": 111.0, "postgresql_batch_chunk_p50_ms": 2260.0,
           "postgresql_batch_chunk_p99_ms": 2300.0, "postgresql_batch_server_cpu": 0.94,
           "postgresql_batch_server_cpu_us_per_household": 8424.0, "postgresql_batch_other_cpu": 0.9,
           "postgresql_national_process": "one database per member", "total_s": 1.0}
    out["goals"] = goals(out)
    text = table(out)
    assert "the same on postgresql (one database per member)" in text and "batch 111 households/s" in text


@pytest.mark.slow
def test_quick_bench_runs_end_to_end() -> None:
    """`python -m node.bench --quick --seconds 1` ends with one JSON line whose rates are all positive."""
    proc = subprocess.run(
        [sys.executable, "-m", "node.bench", "--quick", "--seconds", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in REQUIRED_POSITIVE:
        assert summary[key] > 0, key
    assert summary["verify_ratio_c32_goal"] == 0.8
    assert isinstance(summary["met"], bool) and summary["shortfall"] >= 0
    assert summary["batch_goal"] == 2000 and isinstance(summary["batch_met"], bool) and summary["batch_shortfall"] >= 0
    assert summary["household_goal"] == 2000 and isinstance(summary["household_met"], bool)
    assert summary["household_households"] == summary["batch_households"] and summary["household_failed_households"] == 0
    assert summary["household_over_batch"] == pytest.approx(summary["household_households_per_s"]
                                                            / summary["batch_households_per_s"])
    assert summary["routed_over_direct_p50"] == pytest.approx(summary["routed_p50_ms"] / summary["direct_p50_ms"])
    for name, bound in GOALS.items():
        goal = summary["goals"][name]
        assert goal["goal"] == bound and isinstance(goal["met"], bool) and goal["shortfall"] >= 0, name
        assert goal["value"] == pytest.approx(summary[name]), name
    assert summary["national_provinces"] == 31
    assert summary["machine"]["nproc"] >= 1 and summary["machine"]["python"]
    assert summary["code"]["commit"]


def test_scale_curve_reports_slopes_and_whether_cost_per_household_grows() -> None:
    """The curve lists each figure by size, fits the slope per added province, and says CPU per household
    grows only when the fitted line rises more than the tolerance; its table names every size."""
    def point(cost: float) -> dict[str, float]:
        return {"routed_p50_ms": 10.0, "routed_c8_server_cpu_us_per_call": 900.0, "batch_households_per_s": 400.0,
                "batch_server_cpu_us_per_household": cost, "batch_client_cpu_us_per_household": 100.0,
                "batch_holders_per_household": 2.5}

    flat = curve({3: point(1000.0), 11: point(1010.0), 31: point(990.0)}, 8)
    assert flat["scale_provinces"] == [3, 11, 31]
    assert flat["scale_batch_cpu_us_per_household"] == [1100.0, 1110.0, 1090.0]
    assert flat["scale_slope_per_province"]["routed_p50_ms"] == pytest.approx(0.0)
    assert flat["scale_batch_cpu_grows"] is False
    rising = curve({3: point(1000.0), 11: point(1800.0), 31: point(3800.0)}, 8)
    assert rising["scale_slope_per_province"]["batch_server_cpu_us_per_household"] == pytest.approx(100.0)
    assert rising["scale_batch_cpu_grows"] is True
    text = "\n".join(curve_table(rising))
    assert "3 prov" in text and "31 prov" in text and "GROWS" in text
    assert parse_curve("31,3,11") == (3, 11, 31) and parse_curve("none") == ()
    assert parse_args(["--scale-provinces", "3,11"]).scale_provinces == (3, 11)
    with pytest.raises(SystemExit):
        parse_args(["--scale-provinces", "2,40"])


def test_workers_split_households_and_report(tmp_path: Path) -> None:
    """The split phases' households are all held by the provider (3 members for batch, whole households only),
    and the table shows each kind of traffic's per-worker CPU split and the connection knob when there is one."""
    ids = id_numbers(10)
    expect = split_households(tmp_path / "b.csv", ids, 3)
    assert list(expect) == ["w000000", "w000001", "w000002"] and all(v == ["44"] for v in expect.values())
    rows = list(csv.DictReader((tmp_path / "b.csv").open(encoding="utf-8")))
    assert [r["id_number"] for r in rows] == ids[:9]
    out = {"workers2_routed_cpu_share": [1.0, 0.0], "workers2_batch_cpu_share": [0.93, 0.07],
           "workers2_routed_concurrency": 8, "workers2_routed_per_s": 23.0, "workers2_batch_households_per_s": 133.0,
           "workers2_coordinator_connections_per_peer": None}
    (line,) = split_lines(out)
    assert "split 100%/0%" in line and "split 93%/7%" in line and "no connections_per_peer knob" in line
    assert "connections_per_peer 4" in split_lines({**out, "workers2_coordinator_connections_per_peer": 4})[0]
