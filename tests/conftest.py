"""Shared fixtures: planted data files and running federations on loopback."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.domain import idnumber
from node.testing.postgres import PostgresServer, shared_server

# A Sichuan-registered migrant worker whose wages and deposits sit in Guangdong (44).
WORKER = idnumber.make("510104", dt.date(1988, 5, 17), 371)
SPOUSE = idnumber.make("510104", dt.date(1990, 2, 3), 372)
# Someone nobody holds data on.
STRANGER = idnumber.make("320102", dt.date(1975, 11, 30), 15)
# A planted value that must never leave the node or reach a log: 1,234,567.89 yuan in fen.
CANARY_DEPOSIT = 123456789
WORKER_WAGE = 567800


def write_csv(path: Path, rows: list[tuple[str, str, int, str, str]]) -> Path:
    lines = ["id_number,attribute,value,as_of,source"] + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Departmental data for Guangdong (44) and Sichuan (51) about one migrant household."""
    d = tmp_path_factory.mktemp("data")
    gd = write_csv(d / "44.csv", [
        (WORKER, "deposit.balance_total", CANARY_DEPOSIT, "2026-10-31", "bank:ICBC"),
        (WORKER, "income.wage_monthly", WORKER_WAGE, "2026-10-31", "hrss"),
        (WORKER, "social_insurance.contributing", 1, "2026-10-31", "hrss"),
        (WORKER, "securities.value_total", 0, "2026-10-31", "csrc"),
    ])
    sc = write_csv(d / "51.csv", [
        (WORKER, "hukou.registered", 1, "2026-11-20", "mps"),
        (SPOUSE, "hukou.registered", 1, "2026-11-20", "mps"),
        (SPOUSE, "deposit.balance_total", 150000, "2026-10-31", "bank:ABC"),
        (WORKER, "real_estate.count", 1, "2026-09-30", "natural_resources"),
    ])
    return {"44": gd, "51": sc}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server (initdb + pg_ctl in a temp dir) for the session; fails loudly if it cannot start."""
    yield shared_server()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL server, dropped after the test."""
    name = f"t_{secrets.token_hex(6)}"
    yield postgres_server.create_database(name)
    postgres_server.drop_database(name)
