"""What the fuzzer found, through the commands a person runs: one clear line, no traceback.

Each input is the regression file the fuzzer's finding left in tests/fuzz/regressions/ (replayed
through its harness by tests/fuzz/test_fuzz_corpus.py); here `hedui` itself reads it, as a
subprocess, against the fuzz world's real PKI (the record is signed by its members).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from tests.fuzz.world import world

REGRESSIONS = Path(__file__).resolve().parents[1] / "fuzz" / "regressions"


def hedui(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def test_config_with_a_nul_in_a_path_is_refused_in_one_line(tmp_path: Path) -> None:
    """A member config whose path setting holds a NUL is a config error (exit 2, one line), not a ValueError traceback."""
    config = tmp_path / "node.toml"
    config.write_bytes((REGRESSIONS / "member_config" / "nul-in-path").read_bytes())
    proc = hedui("node", "status", "--config", config)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert "member.data_dir must be a path" in proc.stderr


def test_decision_record_whose_totals_are_not_an_object_is_invalid(tmp_path: Path) -> None:
    """`household verify` of a record whose decision totals are not a JSON object says INVALID with the reason (exit 1)."""
    record = tmp_path / "record.json"
    record.write_bytes((REGRESSIONS / "decision_record" / "totals-not-an-object").read_bytes())
    assert json.loads(record.read_bytes())["body"]["decision"]["totals"] == []
    proc = hedui("household", "verify", "--pki", world().root / "pki", record)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "decision record INVALID" in proc.stdout and "household totals must map each measure" in proc.stdout


def test_results_line_whose_totals_are_not_an_object_is_invalid(tmp_path: Path) -> None:
    """`household verify RESULTS.jsonl` reports a line whose record's totals are not an object as invalid, no traceback."""
    results = tmp_path / "results.jsonl"
    results.write_bytes((REGRESSIONS / "results_line" / "totals-not-an-object").read_bytes() + b"\n")
    proc = hedui("household", "verify", "--pki", world().root / "pki", results, "--json")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "household totals must map each measure" in proc.stdout


def _answer_file(tmp_path: Path, answer_body: bytes, query_body: bytes | None = None) -> Path:
    """A `hedui-answer/v1` file holding `answer_body` signed by the fuzz world's holder (44)."""
    from node.crypto import signing
    from node.wire.v1 import verification_pb2

    w = world()
    signed = verification_pb2.SignedAnswer(body=answer_body, signature=w.signer("44").sign(signing.ANSWER, answer_body))
    path = tmp_path / "answer.json"
    path.write_text(json.dumps({"format": "hedui-answer/v1", "answers": [{
        "province": "44", "query": base64.b64encode(query_body or w.sent_query).decode(),
        "answer": base64.b64encode(signed.SerializeToString()).decode()}]}), encoding="utf-8")
    return path


def test_answer_with_an_unknown_outcome_is_invalid_not_a_crash(tmp_path: Path) -> None:
    """`answer verify` of a holder-signed answer whose result carries an outcome outside the enum says INVALID (exit 1)."""
    body = (REGRESSIONS / "answer" / "unknown-outcome").read_bytes()
    proc = hedui("answer", "verify", "--pki", world().root / "pki", _answer_file(tmp_path, body), "--json")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["answers"][0]["problem"] == "answer has a result with an unknown outcome"


def test_saved_query_with_an_unknown_comparator_is_invalid_not_a_crash(tmp_path: Path) -> None:
    """`answer verify` of a file whose saved query has a comparator outside the enum reports it invalid (exit 1)."""
    path = tmp_path / "answer.json"
    path.write_bytes((REGRESSIONS / "answer_file" / "unknown-comparator-in-saved-query").read_bytes())
    proc = hedui("answer", "verify", "--pki", world().root / "pki", path, "--json")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["answers"][0]["valid"] is False
