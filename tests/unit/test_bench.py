"""Tests for node.bench: generated bench data, and the quick bench run end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from node.bench import FACT_SPECS, id_numbers, write_facts_csv
from node.domain.idnumber import validate

REQUIRED_POSITIVE = (
    "echo_seq_per_s", "verify_seq_per_s", "echo_c32_per_s", "verify_c32_per_s", "verify_ratio_c32",
    "verify_ratio_seq", "ingest_facts_per_s", "lookups_per_s", "node_rss_mb",
)


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


@pytest.mark.slow
def test_quick_bench_runs_end_to_end() -> None:
    """`python -m node.bench --quick --seconds 1` ends with one JSON line whose rates are all positive."""
    proc = subprocess.run(
        [sys.executable, "-m", "node.bench", "--quick", "--seconds", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in REQUIRED_POSITIVE:
        assert summary[key] > 0, key
    assert summary["verify_ratio_c32_goal"] == 0.8
    assert isinstance(summary["met"], bool) and summary["shortfall"] >= 0
    assert summary["machine"]["nproc"] >= 1 and summary["machine"]["python"]
