"""The fuzz corpus replays clean, and a short coverage-guided run of every target finds nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from node.errors import ErrorCode, Refusal
from tests.fuzz import harnesses

FUZZ = Path(__file__).resolve().parent
REPO = FUZZ.parent.parent
CASES = sorted((name, p) for name in harnesses.TARGETS for kind in ("corpus", "regressions")
               for p in (FUZZ / kind / name).glob("*") if p.is_file())


def test_every_target_has_a_seed_corpus() -> None:
    """Every harness has committed seeds, and every corpus folder names a harness."""
    folders = {p.name for kind in ("corpus", "regressions") for p in (FUZZ / kind).glob("*") if p.is_dir()}
    assert folders - set(harnesses.TARGETS) == set()
    assert {name for name, _ in CASES if "corpus" in _.parts} == set(harnesses.TARGETS)


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{n}/{p.parent.parent.name}/{p.name}" for n, p in CASES])
def test_fuzz_corpus_replays_clean(target: str, path: Path) -> None:
    """Each committed corpus and regression input gives a value or a typed error from its decoder."""
    harnesses.check(target, path.read_bytes())


def test_seeds_reach_past_signatures() -> None:
    """The signatures nested in the seeds verify in this process's world (its keys signed them), so fuzzing starts deep."""
    for target in ("query", "contribution_query", "locked_query", "consent_receipt", "directory", "locator_body",
                   "signed_locator", "discover", "checkpoint", "checkpoint_message", "audit_head"):
        for path in sorted((FUZZ / "corpus" / target).iterdir()):
            try:
                harnesses.TARGETS[target].run(path.read_bytes())
            except Refusal as refusal:  # a later check may refuse a seed once the protocol changes; a signature may not
                assert refusal.code != ErrorCode.UNAUTHENTICATED and "verify" not in str(refusal), (
                    f"{target}/{path.name}: {refusal}; regenerate the seeds: python -m tests.fuzz.seeds")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="atheris wheels are for Linux")
def test_bounded_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    """A short coverage-guided run over all targets (every committed input first, then mutations) breaks no contract."""
    pytest.importorskip("atheris")
    budget = os.environ.get("HEDUI_FUZZ_SECONDS", "15")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", "all", "--save", str(tmp_path), f"-max_total_time={budget}",
         "-runs=200000", "-print_final_stats=0"],
        cwd=REPO, capture_output=True, text=True, timeout=int(budget) + 120, errors="replace",
    )
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("INFO: Instrumenting")]
    findings = [line for line in lines if line.startswith("FUZZ FINDING")]
    assert proc.returncode == 0 and not findings, "\n".join(findings + lines[-40:])
    assert "Done" in proc.stderr


def test_structured_passes_find_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Type-confused JSON/TOML seeds and edge-valued protobuf fields (tests/fuzz/structured.py) break no contract."""
    from tests.fuzz import structured

    status = structured.main(["--save", str(tmp_path)])
    findings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("FUZZ FINDING")]
    assert status == 0 and not findings, "\n".join(findings)
