"""`hedui audit` end to end: tamper and rewrite detection, crash safety, export, prune."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from node.cli.audit_cmd import parse_since, run
from node.domain.regions import COORDINATOR_URI, province_uri
from node.member import Member
from node.store.audit import (
    ANSWERED, AUDIT_DB, CHECKPOINT_FILE, DAY_MS, KIND_PRUNE, AuditRecord, CheckpointStore, make_checkpoint,
)  # fmt: skip
from node.store.sqlite.checkpoints import CheckpointFile
from node.store.sqlite.chain import HashChain, entry_hash
from node.testing.cluster import Federation, build_federation
from node.store.sqlite.storage import audit_file, audit_file_readonly

REPO = Path(__file__).resolve().parents[2]
MEMBER = province_uri("44")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return build_federation(tmp_path_factory.mktemp("audit-cli"), ["44"])


def member_config(fed: Federation, tmp_path: Path, who: str = "44", audit: dict[str, Any] | None = None) -> Path:
    """A copy of a member's config with its own data dir under tmp_path (keys stay shared)."""
    source = fed.configs[who] if who != "coordinator" else fed.coordinator_config
    assert source is not None
    data = tomllib.loads(source.read_text(encoding="utf-8"))
    data["member"]["data_dir"] = str(tmp_path / f"data-{who}")
    if audit:
        data["audit"] = audit
    (tmp_path / f"data-{who}").mkdir()
    path = tmp_path / f"{who}.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def data_dir(cfg: Path) -> Path:
    return Path(tomllib.loads(cfg.read_text(encoding="utf-8"))["member"]["data_dir"])


def rec(n: int, at_ms: int = 1_800_000_000_000) -> AuditRecord:
    return AuditRecord(at_ms=at_ms, request_id=f"req-{n:08d}", requester="51", decision=ANSWERED, purpose="dibao",
                       items=("income.wage_monthly",), outcome_digest=f"{n:064x}")


def hedui_audit(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = run(["audit", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def fill(cfg: Path, n: int, *, at_ms: int | None = None) -> None:
    with audit_file(data_dir(cfg) / AUDIT_DB) as log:
        log.record_many([rec(i) for i in range(n)], at_ms=at_ms)


def test_edited_row_is_caught_by_audit_verify_naming_the_entry(
        fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A row edited with sqlite3 after dropping the guard makes `hedui audit verify` exit 1 naming it."""
    cfg = member_config(fed, tmp_path)
    fill(cfg, 10)
    code, out, _ = hedui_audit(capsys, "verify", "--config", cfg)
    assert code == 0 and out.startswith("audit log intact: entries 1..10")
    db = data_dir(cfg) / AUDIT_DB
    conn = sqlite3.connect(db, isolation_level=None)
    payload = conn.execute("SELECT payload FROM audit WHERE idx = 7").fetchone()[0]
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET payload = ? WHERE idx = 7", (payload.replace(b"answered", b"refused:MALFORMED"),))
    conn.close()
    code, out, err = hedui_audit(capsys, "verify", "--config", cfg)
    assert code == 1
    assert out.strip() == "AUDIT LOG TAMPERED: entry 7: content does not match its hash (record key 'req-00000006')"
    assert "audit_no_update" in err
    code, out, _ = hedui_audit(capsys, "verify", "--config", cfg, "--json")
    report = json.loads(out)
    assert code == 1 and (report["ok"], report["first_bad"], report["bad_key"]) == (False, 7, "req-00000006")


def test_rewritten_history_passes_alone_but_not_against_the_coordinator_checkpoint(
        fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An operator who recomputes every hash from entry k passes the plain check, not the coordinator's checkpoint."""
    cfg = member_config(fed, tmp_path)
    coord_cfg = member_config(fed, tmp_path, "coordinator")
    fill(cfg, 20)
    node = Member.from_config(cfg)
    db = data_dir(cfg) / AUDIT_DB
    with audit_file(db) as log:  # the node lodges its head with the coordinator (the RPC, minus the network)
        signed = make_checkpoint(log, node.signer, MEMBER)
        CheckpointFile(data_dir(cfg) / CHECKPOINT_FILE).append(signed)
    coordinator = Member.from_config(coord_cfg)
    with HashChain(data_dir(coord_cfg) / "ledger.sqlite", table="ledger") as ledger:
        CheckpointStore(ledger, coordinator.verifier).receive(signed.message, MEMBER)
    code, out, _ = hedui_audit(capsys, "verify", "--config", cfg)
    assert code == 0 and "1 ok" in out  # the local copy of the checkpoint matches

    # The operator rewrites entries 12..20 (a refusal hidden as an answer, say) and recomputes the chain.
    conn = sqlite3.connect(db, isolation_level=None)
    rows = conn.execute("SELECT idx, at_ms, kind, key, payload, prev_hash FROM audit WHERE idx >= 12 ORDER BY idx")
    prev = None
    conn.execute("DROP TRIGGER audit_no_update")
    for idx, at_ms, kind, key, payload, stored_prev in rows.fetchall():
        prev = stored_prev if prev is None else prev
        payload = payload.replace(b'"purpose":"dibao"', b'"purpose":"tekun"')
        digest = entry_hash("audit", idx, at_ms, kind, key, payload, prev)
        conn.execute("UPDATE audit SET payload = ?, prev_hash = ?, hash = ? WHERE idx = ?", (payload, prev, digest, idx))
        prev = digest
    conn.close()
    (data_dir(cfg) / CHECKPOINT_FILE).unlink()  # and removes the node's own copy of its checkpoints

    code, out, _ = hedui_audit(capsys, "verify", "--config", cfg)
    assert code == 0, out
    exported = tmp_path / "coordinator-checkpoint.jsonl"
    code, _, _ = hedui_audit(capsys, "export-checkpoint", "--config", coord_cfg, "--member", "44", "--out", exported)
    assert code == 0
    code, out, _ = hedui_audit(capsys, "verify", "--config", cfg, "--checkpoint", exported)
    assert code == 1 and out.strip() == "AUDIT LOG TAMPERED: entry 20 missing or changed since checkpoint (record key 'req-00000019')"
    code, out, _ = hedui_audit(capsys, "verify", "--config", cfg, "--checkpoint", exported, "--json")
    assert json.loads(out)["checkpoints"][0]["status"] == "mismatch"

    # Re-signing the rewritten head with the node's key does not get it past the coordinator either.
    with audit_file_readonly(db) as log:
        resigned = make_checkpoint(log, node.signer, MEMBER, prev=signed.checkpoint.link)  # linked as it must be
    with HashChain(data_dir(coord_cfg) / "ledger.sqlite", table="ledger") as ledger:
        with pytest.raises(Exception, match="rewritten"):
            CheckpointStore(ledger, coordinator.verifier).receive(resigned.message, MEMBER)


def test_checkpoint_file_from_another_member_or_forged_is_rejected(
        fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--checkpoint` with a forged or foreign checkpoint exits 1; a node can lodge and re-export its own."""
    cfg = member_config(fed, tmp_path)
    fill(cfg, 3)
    code, out, _ = hedui_audit(capsys, "checkpoint", "--config", cfg, "--out", tmp_path / "mine.jsonl", "--json")
    assert code == 0 and json.loads(out)["index"] == 3
    code, out, _ = hedui_audit(capsys, "verify", "--config", cfg, "--checkpoint", tmp_path / "mine.jsonl", "--json")
    assert code == 0 and [c["status"] for c in json.loads(out)["checkpoints"]] == ["ok", "ok"]
    coordinator = Member.from_config(fed.coordinator_config)  # type: ignore[arg-type]
    with audit_file_readonly(data_dir(cfg) / AUDIT_DB) as log:
        foreign = make_checkpoint(log, coordinator.signer, COORDINATOR_URI)
    (tmp_path / "foreign.bin").write_bytes(foreign.blob)
    code, out, _ = hedui_audit(capsys, "verify", "--config", cfg, "--checkpoint", tmp_path / "foreign.bin")
    assert code == 1 and out.startswith("CHECKPOINT INVALID:") and "not urn:hedui:province:44" in out
    line = json.loads((tmp_path / "mine.jsonl").read_text())
    line["blob"] = line["blob"][:-8] + "AAAAAAA="
    (tmp_path / "forged.jsonl").write_text(json.dumps(line) + "\n")
    code, out, _ = hedui_audit(capsys, "verify", "--config", cfg, "--checkpoint", tmp_path / "forged.jsonl")
    assert code == 1 and "CHECKPOINT INVALID" in out


_CHILD = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from node.store.audit import ANSWERED, AsyncAuditor, AuditRecord
    from node.store.sqlite.storage import audit_file

    async def main() -> None:
        auditor = AsyncAuditor(audit_file(Path(sys.argv[1])))
        n = 0
        while True:
            batch = [AuditRecord(at_ms=n, request_id=f"req-{n:06d}-{i:02d}", requester="51", decision=ANSWERED,
                                 purpose="dibao", items=("income.wage_monthly",), outcome_digest="cd" * 32)
                     for i in range(32)]
            entries = await asyncio.gather(*(auditor.record(r) for r in batch))
            print(entries[-1].idx, flush=True)
            n += 1

    asyncio.run(main())
""")


def test_sigkill_while_auditing_leaves_a_chain_that_verifies(
        fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A server killed with SIGKILL while writing audit records leaves a chain `hedui audit verify` accepts."""
    cfg = member_config(fed, tmp_path)
    db = data_dir(cfg) / AUDIT_DB
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(db)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    last = 0
    try:
        for line in child.stdout:  # each line: a batch committed
            last = int(line)
            if last >= 100:
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
        child.stdout.close()
    assert last >= 100 and child.returncode == -signal.SIGKILL
    proc = subprocess.run([sys.executable, "-m", "node.cli.audit_cmd", "audit", "verify", "--config", str(cfg), "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"] and report["entries"] >= last
    assert report["entries"] % 32 == 0  # batches are all or nothing
    with audit_file(db) as log:
        assert log.record(rec(1)).idx == report["entries"] + 1


def test_export_since_filters_and_writes_json_lines(
        fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`export --since` keeps only entries at or after T (duration, date or datetime) as JSON lines."""
    cfg = member_config(fed, tmp_path)
    now = parse_since("0s")
    with audit_file(data_dir(cfg) / AUDIT_DB) as log:
        log.record_many([rec(0), rec(1)], at_ms=now - 10 * DAY_MS)
        log.record_many([rec(2)], at_ms=now - 2 * DAY_MS)
        log.record_many([rec(3), rec(4)])
    code, out, _ = hedui_audit(capsys, "export", "--config", cfg, "--since", "7d")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["idx"] for r in rows] == [3, 4, 5]
    assert set(rows[0]) == {"idx", "at", "hash", "kind", "at_ms", "request_id", "requester", "purpose",
                            "consent_id", "items", "checks", "outcome_digest", "decision", "extra"}
    assert rows[0]["at"].endswith("Z") and rows[0]["request_id"] == "req-00000002" and len(rows[0]["hash"]) == 64
    code, _, _ = hedui_audit(capsys, "export", "--config", cfg, "--out", tmp_path / "all.jsonl")
    lines = (tmp_path / "all.jsonl").read_text().splitlines()
    assert code == 0 and len(lines) == 5 and oct((tmp_path / "all.jsonl").stat().st_mode & 0o777) == "0o600"
    day = json.loads(lines[2])["at"][:10]
    code, out, _ = hedui_audit(capsys, "export", "--config", cfg, "--since", day)
    assert code == 0 and [json.loads(x)["idx"] for x in out.splitlines()][0] == 3
    code, out, _ = hedui_audit(capsys, "export", "--config", cfg, "--since", json.loads(lines[3])["at"])
    assert code == 0 and [json.loads(x)["idx"] for x in out.splitlines()] == [4, 5]
    code, _, err = hedui_audit(capsys, "export", "--config", cfg, "--since", "last tuesday")
    assert code == 2 and "--since" in err


def test_prune_cli_uses_configured_retention_and_verify_still_passes(
        fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`prune` removes entries past [audit] retention_days, keeps newer ones, and the log still verifies."""
    cfg = member_config(fed, tmp_path, audit={"retention_days": 200})
    now = parse_since("0s")
    with audit_file(data_dir(cfg) / AUDIT_DB) as log:
        for age in (400, 250, 201, 199, 30):
            log.record(rec(age), at_ms=now - age * DAY_MS)
    code, out, _ = hedui_audit(capsys, "prune", "--config", cfg, "--json")
    result = json.loads(out)
    assert code == 0 and (result["removed"], result["retention_days"], result["anchor"]) == (3, 200, 4)
    code, out, _ = hedui_audit(capsys, "verify", "--config", cfg)
    assert code == 0 and out.startswith("audit log intact: entries 4..6")
    code, out, _ = hedui_audit(capsys, "export", "--config", cfg)
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r.get("request_id") for r in rows[:2]] == ["req-00000199", "req-00000030"]
    assert rows[2]["kind"] == KIND_PRUNE and rows[2]["removed"] == 3
    (tmp_path / "short").mkdir()
    bad = member_config(fed, tmp_path / "short", audit={"retention_days": 90})
    fill(bad, 1)
    code, _, err = hedui_audit(capsys, "prune", "--config", bad)
    assert code == 2 and "six months" in err


def test_verify_without_an_audit_log_is_bad_input(
        fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`audit verify` on a member with no audit log exits 2 with one line."""
    cfg = member_config(fed, tmp_path)
    code, _, err = hedui_audit(capsys, "verify", "--config", cfg)
    assert code == 2 and err.startswith("hedui: no audit log at")
