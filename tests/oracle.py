"""An independent oracle: what each province should answer, computed from the synthetic CSVs."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from node.domain.catalogue import load_catalogue


def province_values(data: Path, provinces: Iterable[str]) -> dict[str, dict[tuple[str, str], int]]:
    """Per province: (ID number, item) -> value at the latest as-of date, same-date sources combined."""
    aggregates = load_catalogue().aggregates()
    out: dict[str, dict[tuple[str, str], int]] = {}
    for code in provinces:
        rows: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
        with open(data / f"{code}.csv", newline="") as f:
            for r in csv.DictReader(f):
                rows[(r["id_number"], r["attribute"])].append((r["as_of"], int(r["value"])))
        values = {}
        for key, facts in rows.items():
            latest = max(d for d, _ in facts)
            same = [v for d, v in facts if d == latest]
            values[key] = sum(same) if aggregates[key[1]] == "sum" else max(same)
        out[code] = values
    return out


def expected_outcome(values: dict[tuple[str, str], int], id_number: str, check: object) -> str:
    value = values.get((id_number, check.attribute))  # type: ignore[attr-defined]
    if value is None:
        return "NO_RECORD"
    return "SATISFIED" if check.evaluate(value) else "NOT_SATISFIED"  # type: ignore[attr-defined]
