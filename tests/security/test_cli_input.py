"""Bad CLI input ends in one line on stderr and exit 2: no traceback, no exit 70, no ID number echoed.

`hedui` runs as a subprocess against real node and coordinator configs (a federation on
loopback with mutual TLS, for the commands that would otherwise go on to ask it something).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from node.testing import Federation, run_cluster
from tests.conftest import STRANGER, WORKER

# `hedui` under a 4 GiB address-space ceiling, so an unbounded read fails fast instead of filling the machine
# (set in the child itself: a preexec_fn would fork a process whose gRPC threads are running).
HEDUI = [sys.executable, "-c", "import resource, runpy; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
         "runpy.run_module('node.cli.main', run_name='__main__')"]
CHECK = "deposit.balance_total<=2000000"
_LONG_DIGIT_RUN = re.compile(r"\d{15,}")
MISTYPED = WORKER[:-1] + ("0" if WORKER[-1] != "0" else "1")  # a wrong check character: still personal data


def hedui(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEDUI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def fed(planted: dict[str, Path]) -> Iterator[Federation]:
    with run_cluster(["51", "44"], data=planted) as federation:
        yield federation


def config_with(fed: Federation, tmp_path: Path, **tables: dict[str, Any]) -> Path:
    """A copy of node 51's config with some tables replaced or added."""
    data = tomllib.loads(fed.configs["51"].read_text(encoding="utf-8"))
    data.update(tables)
    path = tmp_path / "node51.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("flags", [
    ["--check", WORKER],
    ["--check", MISTYPED],
    ["--check", f"deposit.balance_total<={WORKER}"],
    ["--check", f"{WORKER}<=5"],
    ["--purpose", WORKER],
    ["--purpose", f"dibao {WORKER}"],
], ids=["bare", "mistyped-operand", "operand", "attribute", "purpose", "purpose-suffix"])
def test_id_number_pasted_into_check_or_purpose_is_never_echoed(fed: Federation, flags: list[str]) -> None:
    """An ID number (or a mistyped one) given as a check or purpose exits 2; stderr holds no long digit run."""
    base = {"--purpose": "dibao", "--check": CHECK}
    base.pop(flags[0])
    proc = hedui("verify", "--config", fed.configs["51"], "--to", fed.addresses["44"], "--id", STRANGER,
                 *flags, *[x for kv in base.items() for x in kv])
    line = one_line_error(proc)
    assert WORKER[:-1] not in line and not _LONG_DIGIT_RUN.search(line), line


def test_id_number_pasted_into_a_consent_scope_is_never_echoed(fed: Federation) -> None:
    """`consent grant --scope` with an ID number exits 2 without repeating it."""
    line = one_line_error(hedui("consent", "grant", "--config", fed.configs["51"], "--id", STRANGER,
                                "--purpose", "dibao", "--scope", WORKER))
    assert "unknown scope category" in line and not _LONG_DIGIT_RUN.search(line)


def test_unknown_log_level_is_one_line_and_exit_2(fed: Federation, tmp_path: Path) -> None:
    """`--log-level loud`, or `level = "loud"` in [logging], is refused in one line, not a traceback or exit 70."""
    line = one_line_error(hedui("--log-level", "loud", "node", "status", "--config", fed.configs["51"]))
    assert "log level must be one of debug, info, warning, error" in line
    cfg = config_with(fed, tmp_path, logging={"level": "loud"})
    line = one_line_error(hedui("node", "serve", "--config", cfg, "--listen", "127.0.0.1:0"))
    assert "logging.level must be one of" in line


def test_deeply_nested_json_ingest_is_a_rejected_line_not_a_crash(fed: Federation, tmp_path: Path) -> None:
    """A JSONL line nested 100 000 deep is reported as bad JSON and the file rejected whole (exit 2)."""
    path = tmp_path / "deep.jsonl"
    path.write_text('{"id_number": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    before = hedui("node", "status", "--config", fed.configs["51"], "--json").stdout
    proc = hedui("ingest", "--config", fed.configs["51"], path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert proc.stderr.splitlines() == [f"{path}:1: line is not valid JSON",
                                        f"hedui: {path}: rejected, 1 bad line(s); nothing was stored from it"]
    assert hedui("node", "status", "--config", fed.configs["51"], "--json").stdout == before


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "over-the-cap"])
def test_evidence_that_is_not_a_bounded_regular_file_is_refused(fed: Federation, tmp_path: Path, kind: str) -> None:
    """`consent grant --evidence` with /dev/zero, a FIFO or a file over 64 MiB exits 2 at once, in one line."""
    if kind == "dev-zero":
        evidence = Path("/dev/zero")
    elif kind == "fifo":
        evidence = tmp_path / "form.pdf"
        os.mkfifo(evidence)
    else:
        evidence = tmp_path / "form.pdf"
        with open(evidence, "wb") as f:
            f.truncate(64 * 1024 * 1024 + 1)  # sparse: no disk used
    line = one_line_error(hedui("consent", "grant", "--config", fed.configs["51"], "--id", STRANGER,
                                "--purpose", "dibao", "--evidence", evidence, timeout=30))
    assert ("larger than 64 MiB" if kind == "over-the-cap" else "is not a regular file") in line


@pytest.mark.parametrize("limits", [
    {"max_subjects": "16"}, {"max_checks": True}, {"default_deadline_s": "10"}, {"max_subjects": 0},
    {"rate_per_peer_per_s": float("nan")},
], ids=["string", "bool", "string-float", "zero", "nan"])
def test_limit_of_the_wrong_type_is_one_line_and_exit_2(fed: Federation, tmp_path: Path,
                                                        limits: dict[str, Any]) -> None:
    """A [limits] value of the wrong type (or not positive) is a config error naming the key, before anything runs."""
    cfg = config_with(fed, tmp_path, limits=limits)
    (key,) = limits
    line = one_line_error(hedui("verify", "--config", cfg, "--to", "127.0.0.1:1", "--deadline", "2", "--id", STRANGER,
                                "--purpose", "dibao", "--check", CHECK))
    assert f"limits.{key} must be a positive" in line


def test_argparse_errors_never_echo_an_id_number(tmp_path: Path) -> None:
    """An ID number (check character X) pasted where a number belongs is masked in argparse's one-line error (exit 2)."""
    import datetime as dt

    from node.domain import idnumber

    with_x = next(n for n in (idnumber.make("510104", dt.date(1988, 5, 17), s) for s in range(1, 999)) if n.endswith("X"))
    proc = subprocess.run([sys.executable, "-m", "node.cli.main", "household", "check", "--config", str(tmp_path / "x.toml"),
                           "--consent", "c-1", "--id", WORKER, "--purpose", "dibao", "--region", "510104",
                           "--deadline", with_x], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert with_x[:17] not in proc.stderr and "invalid float value" in proc.stderr
