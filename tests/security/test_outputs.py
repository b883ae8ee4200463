"""Output files through the real CLI: no planted symlink followed, 0600, no silent overwrite, no ID in rejects.

A real federation (coordinator and two nodes, mutual TLS) runs on loopback; `hedui` runs as a
subprocess with umask 022, as in an operator's shell.
"""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.cli.audit_cmd import run as audit_run
from node.testing import Federation, run_cluster
from tests.conftest import SPOUSE, STRANGER, WORKER

HEDUI = [sys.executable, "-m", "node.cli.main"]
CHECK = "deposit.balance_total<=2000000"


def hedui(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEDUI, *map(str, args)], capture_output=True, text=True, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(scope="module", autouse=True)
def umask_022() -> Iterator[None]:
    """The usual operator umask, inherited by every `hedui` run here: modes come from the writer, not the umask."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture(scope="module")
def fed(planted: dict[str, Path]) -> Iterator[Federation]:
    with run_cluster(["51", "44"], data=planted) as federation:
        yield federation


@pytest.fixture(scope="module")
def consent(fed: Federation) -> str:
    return str(fed.grant("51", [WORKER], "dibao").consent_id)


def verify(fed: Federation, consent: str, *extra: object) -> subprocess.CompletedProcess[str]:
    return hedui("verify", "--config", fed.configs["51"], "--to", fed.addresses["44"], "--id", WORKER,
                 "--purpose", "dibao", "--check", CHECK, "--consent", consent, *extra)


def households_file(path: Path, rows: list[str]) -> Path:
    path.write_text("household,id_number\n" + "".join(row + "\n" for row in rows), encoding="utf-8")
    return path


def test_save_refuses_to_overwrite_an_existing_file_unless_forced(fed: Federation, consent: str, tmp_path: Path) -> None:
    """`verify --save` onto an existing file exits 2 before asking anything and leaves it; `--force` replaces it."""
    saved = tmp_path / "answer.json"
    saved.write_text("an earlier answer\n")
    line = one_line_error(verify(fed, consent, "--save", saved))
    assert "already exists" in line and "--force" in line
    assert saved.read_text() == "an earlier answer\n"
    proc = verify(fed, consent, "--save", saved, "--force")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(saved.read_text())["format"] == "hedui-answer/v1" and mode(saved) == 0o600
    assert hedui("answer", "verify", "--pki", fed.pki, saved).returncode == 0


def test_planted_symlinks_are_never_followed(fed: Federation, consent: str, tmp_path: Path) -> None:
    """A symlink planted at the old temporary name or at the target redirects no write; the victim is untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    saved = tmp_path / "answer.json"
    planted_tmp = tmp_path / "answer.json.tmp"  # the name the old writer always used
    planted_tmp.symlink_to(victim)
    proc = verify(fed, consent, "--save", saved)
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "precious\n"
    assert planted_tmp.is_symlink() and not saved.is_symlink() and mode(saved) == 0o600
    target = tmp_path / "redirected.json"
    target.symlink_to(victim)
    assert "already exists" in one_line_error(verify(fed, consent, "--save", target))
    assert verify(fed, consent, "--save", target, "--force").returncode == 0
    assert victim.read_text() == "precious\n" and not target.is_symlink()
    assert json.loads(target.read_text())["format"] == "hedui-answer/v1"


def test_audit_export_does_not_follow_a_symlink_at_its_temporary_name(
        fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`audit export --out` ignores a symlink planted at the old per-process temporary name and refuses to overwrite."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "export.jsonl"
    (tmp_path / f".export.jsonl.{os.getpid()}.tmp").symlink_to(victim)  # the old writer's name in this process
    assert audit_run(["audit", "export", "--config", str(fed.configs["44"]), "--out", str(out)]) == 0
    assert victim.read_text() == "precious\n" and mode(out) == 0o600 and not out.is_symlink()
    assert audit_run(["audit", "export", "--config", str(fed.configs["44"]), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_every_output_file_is_owner_only(fed: Federation, consent: str, tmp_path: Path) -> None:
    """Saved answers, audit exports, batch outputs and rejects, and synthetic data are 0600 under umask 022."""
    saved, export = tmp_path / "answer.json", tmp_path / "audit.jsonl"
    assert verify(fed, consent, "--save", saved).returncode == 0
    assert hedui("audit", "export", "--config", fed.configs["44"], "--out", export).returncode == 0
    households = households_file(tmp_path / "households.csv", [f"h1,{WORKER}", "h2,12345"])
    consents, results = tmp_path / "consents.csv", tmp_path / "results.jsonl"
    grant = hedui("consent", "grant-batch", "--config", fed.configs["51"], "--in", households, "--purpose", "dibao",
                  "--out", consents)
    assert grant.returncode == 0, grant.stderr
    batch = hedui("verify-batch", "--config", fed.configs["51"], "--in", households, "--consents", consents,
                  "--purpose", "dibao", "--check", CHECK, "--out", results)
    assert batch.returncode == 0, batch.stderr
    synth = tmp_path / "synth"
    assert hedui("synth", "--provinces", "44", "--households", "2", "--out", synth).returncode == 0
    written = [saved, export, consents, results, tmp_path / "consents.csv.rejects.csv",
               tmp_path / "results.jsonl.rejects.csv", *synth.iterdir()]
    assert len(written) == 9
    assert {p.name: mode(p) for p in written} == {p.name: 0o600 for p in written}
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_synth_refuses_to_overwrite_earlier_files_unless_forced(tmp_path: Path) -> None:
    """`hedui synth` into a directory holding its files exits 2 and changes nothing; `--force` replaces them."""
    assert hedui("synth", "--provinces", "44", "--households", "2", "--out", tmp_path).returncode == 0
    (tmp_path / "44.csv").write_text("kept\n")
    assert "already exists" in one_line_error(hedui("synth", "--provinces", "44", "--households", "2", "--out", tmp_path))
    assert (tmp_path / "44.csv").read_text() == "kept\n"
    assert hedui("synth", "--provinces", "44", "--households", "2", "--out", tmp_path, "--force").returncode == 0
    assert (tmp_path / "44.csv").read_text().startswith("id_number,")


def test_rejects_file_names_the_line_and_never_an_id_number(fed: Federation, tmp_path: Path) -> None:
    """Rows keyed by an ID number, or malformed, are rejected by line; no ID number reaches any output file."""
    bad_id = WORKER[:-1] + ("0" if WORKER[-1] != "0" else "1")
    households = households_file(tmp_path / "households.csv", [
        f"h1,{WORKER}",                      # line 2: fine
        f"{SPOUSE},{SPOUSE}",                # line 3: the household key is an ID number
        f"{STRANGER},{STRANGER},,extra",     # line 4: malformed, keyed by an ID number
        f"h2,{bad_id}",                      # line 5: a mistyped ID number
        f"h 3 {STRANGER[:6]} {STRANGER[6:14]} {STRANGER[14:]},{STRANGER}",  # line 6: a grouped ID in the key
    ])
    consents = tmp_path / "consents.csv"
    proc = hedui("consent", "grant-batch", "--config", fed.configs["51"], "--in", households, "--purpose", "dibao",
                 "--out", consents)
    assert proc.returncode == 0, proc.stderr
    rejects_path = tmp_path / "consents.csv.rejects.csv"
    with open(rejects_path, newline="", encoding="utf-8") as f:
        rejects = {int(r["line"]): r for r in csv.DictReader(f)}
    assert sorted(rejects) == [3, 4, 5, 6]
    assert rejects[3]["household"] == "" and "household key must not contain an ID number" in rejects[3]["reason"]
    assert rejects[4]["household"] == "" and rejects[6]["household"] == ""
    assert rejects[5]["household"] == "h2" and "check character" in rejects[5]["reason"]
    results = tmp_path / "results.jsonl"
    batch = hedui("verify-batch", "--config", fed.configs["51"], "--in", households, "--consents", consents,
                  "--purpose", "dibao", "--check", CHECK, "--out", results)
    assert batch.returncode == 0, batch.stderr
    outputs = [rejects_path, consents, results, tmp_path / "results.jsonl.rejects.csv"]
    for number in (WORKER, SPOUSE, STRANGER, bad_id, STRANGER[6:14]):
        for path in outputs:
            assert number not in path.read_text(encoding="utf-8"), path.name
        assert number not in proc.stderr + batch.stderr


def test_batch_outputs_refuse_a_file_no_earlier_run_wrote(fed: Federation, tmp_path: Path) -> None:
    """A batch --out or --rejects naming another file (here the input) exits 2 and leaves that file as it was."""
    households = households_file(tmp_path / "households.csv", [f"h1,{WORKER}"])
    before = households.read_bytes()
    grant = ["consent", "grant-batch", "--config", fed.configs["51"], "--in", households, "--purpose", "dibao"]
    assert "not the output of an earlier run" in one_line_error(hedui(*grant, "--out", households))
    assert "not a rejects file" in one_line_error(hedui(*grant, "--out", tmp_path / "c.csv", "--rejects", households))
    assert households.read_bytes() == before and not (tmp_path / "c.csv").exists()
    consents = tmp_path / "consents.csv"
    assert hedui(*grant, "--out", consents).returncode == 0
    again = hedui(*grant, "--out", consents)  # a re-run resumes: appending to its own output is the contract
    assert again.returncode == 0 and "0 consents registered (1 already" in again.stderr
    verify = ["verify-batch", "--config", fed.configs["51"], "--in", households, "--consents", consents,
              "--purpose", "dibao", "--check", CHECK]
    assert "not the output of an earlier run" in one_line_error(hedui(*verify, "--out", consents))
    assert hedui(*grant, "--out", consents).returncode == 0  # the consents file is still whole
    assert households.read_bytes() == before
