"""Witnessed chains (issue 12.5): linked checkpoints, and the coordinator's chains checked against nodes' witnesses."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from node.client.client import PeerRefused
from node.store import audit, ledger
from node.store.sqlite import ledger as sqlite_ledger
from node.store.audit import NO_PREVIOUS, Checkpoint, sign_checkpoint
from node.store.sqlite.chain import HashChain, entry_hash
from node.testing import run_cluster
from node.wire.v1 import coordinator_pb2
from node.store.sqlite.storage import audit_file, audit_file_readonly
from tests.conftest import WORKER

HEDUI = [sys.executable, "-m", "node.cli.main"]
CHECK = ["deposit.balance_total<=2000000"]


def hedui(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEDUI, *map(str, args)], capture_output=True, text=True, timeout=60)


def rewrite_from(db_path: Path, table: str, first: int) -> tuple[int, bytes]:
    """What an operator with the sqlite3 tool does: move entry `first` an hour back and recompute every hash after it
    with the project's own chain code; returns the new head."""
    db = sqlite3.connect(db_path)
    db.execute(f"DROP TRIGGER {table}_no_update")
    rows = db.execute(f"SELECT idx, at_ms, kind, key, payload, prev_hash FROM {table} ORDER BY idx").fetchall()
    prev = bytes(32)
    for idx, at_ms, kind, key, payload, stored_prev in rows:
        if idx < first:
            prev = entry_hash(table, idx, at_ms, kind, key, payload, stored_prev)
            continue
        at_ms -= 3_600_000 if idx == first else 0
        digest = entry_hash(table, idx, at_ms, kind, key, payload, prev)
        db.execute(f"UPDATE {table} SET at_ms=?, prev_hash=?, hash=? WHERE idx=?", (at_ms, prev, digest, idx))
        prev = digest
    db.commit()
    db.close()
    return rows[-1][0], prev


def truncate_after(db_path: Path, table: str, last: int) -> tuple[int, bytes]:
    """Delete every entry after `last` (the append-only guard dropped first); returns the new head."""
    db = sqlite3.connect(db_path)
    db.execute(f"DROP TRIGGER {table}_no_delete")
    db.execute(f"DELETE FROM {table} WHERE idx > ?", (last,))
    head = db.execute(f"SELECT idx, hash FROM {table} WHERE idx = ?", (last,)).fetchone()
    db.commit()
    db.close()
    return head[0], head[1]


def snapshot(directory: Path, names: list[str]) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for n in names for p in directory.glob(n + "*")}


def put_back(directory: Path, saved: dict[str, bytes], names: list[str]) -> None:
    for n in names:
        for p in directory.glob(n + "*"):
            p.unlink()
    for name, data in saved.items():
        (directory / name).write_bytes(data)


def witness_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_rewritten_or_truncated_ledger_is_caught_by_a_nodes_witness(planted: dict[str, Path], tmp_path: Path) -> None:
    """A coordinator ledger rewritten offline with recomputed hashes (and its head file), or cut short, passes
    `ledger verify` alone but fails `ledger verify --witness` against a node's witnessed signed heads."""
    with run_cluster(["51", "44"], root=tmp_path, data=planted) as fed:
        link = fed.servers["44"].link
        link.ledger_witness.min_interval_s = 0  # keep every head that moved (the default keeps one a minute)
        for _ in range(3):
            fed.grant("51", [WORKER], "dibao")
            fed.loop.run(link.sync_revocations())
        fed.stop_node("coordinator")
    coordinator, config = tmp_path / "coordinator", fed.coordinator_config
    witness_dir = tmp_path / "node44" / "witness"
    heads = witness_lines(witness_dir / "ledger-heads.jsonl")
    indices = [h["index"] for h in heads]
    assert indices == sorted(set(indices)) and len(indices) >= 4, indices
    assert hedui("ledger", "verify", "--config", config, "--witness", witness_dir).returncode == 0
    names = [sqlite_ledger.LEDGER_FILE, sqlite_ledger.HEAD_FILE]
    saved = snapshot(coordinator, names)

    # Rewrite the entry of the first grant and everything after it, and the head file to match.
    first_grant = indices[1]
    new_head = rewrite_from(coordinator / sqlite_ledger.LEDGER_FILE, ledger.TABLE, first_grant)
    sqlite_ledger.HeadFile(coordinator / sqlite_ledger.HEAD_FILE).reset(sqlite_ledger.Head(*new_head))
    alone = hedui("ledger", "verify", "--config", config)
    assert alone.returncode == 0, alone.stdout  # the rewrite is consistent on its own...
    caught = hedui("ledger", "verify", "--config", config, "--witness", tmp_path / "node44")
    assert caught.returncode == 1, caught.stdout  # ...but not with what the coordinator signed to the node
    assert caught.stdout.startswith(f"LEDGER REWRITTEN: entry {first_grant} is not the one") and \
        caught.stdout.count("\n") == 1 and caught.stderr == "", caught.stdout
    report = json.loads(hedui("ledger", "verify", "--config", config, "--witness", witness_dir, "--json").stdout)
    assert report["ok"] is False and report["witness"]["first_bad"] == first_grant
    assert report["entries"] == new_head[0]  # the existing keys are still there

    # Put the original back, then cut off the last two entries (head file moved back with them).
    put_back(coordinator, saved, names)
    assert hedui("ledger", "verify", "--config", config, "--witness", witness_dir).returncode == 0
    kept = truncate_after(coordinator / sqlite_ledger.LEDGER_FILE, ledger.TABLE, indices[-1] - 2)
    sqlite_ledger.HeadFile(coordinator / sqlite_ledger.HEAD_FILE).reset(sqlite_ledger.Head(*kept))
    assert hedui("ledger", "verify", "--config", config).returncode == 0
    cut = hedui("ledger", "verify", "--config", config, "--witness", witness_dir)
    assert cut.returncode == 1 and cut.stdout.startswith(
        f"LEDGER TRUNCATED: the chain ends at entry {kept[0]} but the coordinator signed a head at entry "
        f"{kept[0] + 1} ") and f"entries {kept[0] + 1} to {indices[-1]} are missing" in cut.stdout, cut.stdout

    # The same cut declared by the coordinator itself (`ledger new-epoch`): still caught, as a cut, unless
    # the operator says it was a restore they know of.
    assert hedui("ledger", "new-epoch", "--config", config).returncode == 0
    declared = hedui("ledger", "verify", "--config", config, "--witness", witness_dir)
    assert declared.returncode == 1 and declared.stdout.startswith("LEDGER CUT: "), declared.stdout
    assert f"up to entry {indices[-1]}" in declared.stdout
    accepted = hedui("ledger", "verify", "--config", config, "--witness", witness_dir, "--accept-lost")
    assert accepted.returncode == 0 and "lost" in accepted.stdout, accepted.stdout


def test_a_rewritten_or_truncated_coordinator_audit_log_is_caught_by_a_nodes_witness(
        planted: dict[str, Path], tmp_path: Path) -> None:
    """The coordinator's audit head comes signed with every checkpoint acknowledgement (and consent-feed reply); a
    node keeps it, and a coordinator audit log rewritten with recomputed hashes, or truncated, fails
    `audit verify --witness`."""
    with run_cluster(["51", "44"], root=tmp_path, data=planted) as fed:
        link = fed.servers["44"].link
        link.audit_witness.min_interval_s = 0
        consent = fed.grant("51", [WORKER], "dibao").consent_id
        for _ in range(3):
            fed.verify("51", [WORKER], CHECK, consent_id=consent)  # routed: the coordinator audits it
            fed.loop.run(link.checkpoint_once())
        fed.stop_node("coordinator")
    coordinator, config = tmp_path / "coordinator", fed.coordinator_config
    witness_dir = tmp_path / "node44" / "witness"
    heads = witness_lines(witness_dir / "audit-heads.jsonl")
    indices = [h["index"] for h in heads]
    assert len(indices) >= 3 and indices == sorted(set(indices)), indices  # the acks' heads, and the feed's
    ok = hedui("audit", "verify", "--config", config, "--witness", witness_dir)
    assert ok.returncode == 0 and f"witnessed heads: {len(indices)} ok" in ok.stdout, ok.stdout
    names = [audit.AUDIT_DB]
    saved = snapshot(coordinator, names)

    rewrite_from(coordinator / audit.AUDIT_DB, audit.TABLE, indices[0])
    assert hedui("audit", "verify", "--config", config).returncode == 0
    caught = hedui("audit", "verify", "--config", config, "--witness", witness_dir)
    assert caught.returncode == 1 and caught.stdout.startswith(
        f"AUDIT LOG REWRITTEN: entry {indices[0]} is not the one the coordinator signed") and \
        caught.stdout.count("\n") == 1, caught.stdout

    put_back(coordinator, saved, names)
    truncate_after(coordinator / audit.AUDIT_DB, audit.TABLE, indices[0])
    assert hedui("audit", "verify", "--config", config).returncode == 0
    cut = hedui("audit", "verify", "--config", config, "--witness", witness_dir, "--json")
    report = json.loads(cut.stdout)
    assert cut.returncode == 1 and report["witness"]["truncated"] is True
    assert [h["status"] for h in report["witness"]["heads"]] == ["ok"] + ["missing"] * (len(indices) - 1)
    line = hedui("audit", "verify", "--config", config, "--witness", witness_dir).stdout
    assert line.startswith(f"AUDIT LOG TRUNCATED: the chain ends at entry {indices[0]}"), line


def test_a_quiet_node_witnesses_the_coordinators_audit_head_from_the_consent_feed(
        planted: dict[str, Path], tmp_path: Path) -> None:
    """A node that makes no query and lodges no checkpoint still witnesses the coordinator's audit heads moved by
    other nodes' activity (they come with the consent feed), and a coordinator audit log rewritten afterwards is
    caught by `audit verify --witness` with that node's witness dir."""
    with run_cluster(["51", "44", "33"], root=tmp_path, data=planted) as fed:
        quiet = fed.servers["33"].link
        quiet.audit_witness.min_interval_s = 0  # keep every head that moved (the default keeps one a minute)
        own_before = audit_head_of(tmp_path / "node33")
        consent = fed.grant("51", [WORKER], "dibao").consent_id
        for _ in range(3):
            fed.verify("51", [WORKER], CHECK, consent_id=consent)  # routed 51 -> 44: the coordinator audits it
            fed.loop.run(quiet.sync_revocations())  # what the node's poll loop does every second
        with fed.coordinator("33") as c:
            lodged = c.call("LatestCheckpoint", coordinator_pb2.LatestCheckpointRequest())
        own_after = audit_head_of(tmp_path / "node33")
        fed.stop_node("coordinator")
    assert lodged.body == b"" and own_after == own_before  # quiet: no checkpoint, its own audit head never moved
    coordinator, config = tmp_path / "coordinator", fed.coordinator_config
    witness_dir = tmp_path / "node33" / "witness"
    indices = [h["index"] for h in witness_lines(witness_dir / "audit-heads.jsonl")]
    assert len(indices) >= 4 and indices == sorted(set(indices)), indices  # the head at start, then each route's
    ok = hedui("audit", "verify", "--config", config, "--witness", witness_dir)
    assert ok.returncode == 0 and f"witnessed heads: {len(indices)} ok" in ok.stdout, ok.stdout

    # Rewrite the coordinator's audit log from the last witnessed head's entry on (recomputed hashes).
    rewrite_from(coordinator / audit.AUDIT_DB, audit.TABLE, indices[-1])
    assert hedui("audit", "verify", "--config", config).returncode == 0  # consistent on its own...
    caught = hedui("audit", "verify", "--config", config, "--witness", witness_dir)
    assert caught.returncode == 1 and caught.stdout.startswith(  # ...but not with what it signed to the quiet node
        f"AUDIT LOG REWRITTEN: entry {indices[-1]} is not the one the coordinator signed") and \
        caught.stdout.count("\n") == 1, caught.stdout


def audit_head_of(data_dir: Path) -> tuple[int, bytes]:
    with audit_file_readonly(data_dir / audit.AUDIT_DB) as log:
        return log.head()


def test_the_coordinator_signs_its_audit_head_only_when_it_moved(tmp_path: Path) -> None:
    """Polls of an unmoved audit head get the same signed head without another signature; a new audit entry makes
    the next poll's head a newly signed one of the new index, verifying as the coordinator's."""
    from node.coordinator.audit_heads import AuditHeadSigner, parse_audit_head
    from node.member import Member
    from node.testing import build_federation

    fed = build_federation(tmp_path / "fed", ["44"])
    assert fed.coordinator_config is not None
    member = Member.from_config(fed.coordinator_config)
    with audit_file(tmp_path / "audit.sqlite") as log:
        log.record(audit.coordinator_event("announce", requester="44"))
        heads = AuditHeadSigner(log, member.signer)

        async def polls(n: int) -> list[coordinator_pb2.SignedAuditHead]:
            return [await heads.signed() for _ in range(n)]

        first = asyncio.run(polls(50))
        assert heads.signings == 1 and all(h == first[0] for h in first)
        log.record(audit.coordinator_event("announce", requester="44"))
        second = asyncio.run(polls(50))
        assert heads.signings == 2 and all(h == second[0] for h in second)
    before, after = (parse_audit_head(h[0], member.verifier) for h in (first, second))
    assert (before.index, after.index) == (1, 2) and before.hash != after.hash


def test_a_witness_line_not_signed_by_the_coordinator_proves_nothing(planted: dict[str, Path], tmp_path: Path) -> None:
    """A witnessed head edited by the node's operator (to accuse the coordinator) fails its signature and is
    reported as an invalid witness line, not as a rewritten ledger; a node config is refused for --witness."""
    with run_cluster(["51", "44"], root=tmp_path, data=planted) as fed:
        fed.grant("51", [WORKER], "dibao")
        fed.loop.run(fed.servers["44"].link.sync_revocations())
    witness_file = tmp_path / "node44" / "witness" / "ledger-heads.jsonl"
    line = json.loads(witness_file.read_text().splitlines()[-1])
    signed = coordinator_pb2.SignedLedgerHead.FromString(base64.b64decode(line["blob"]))
    body = coordinator_pb2.LedgerHeadBody.FromString(signed.body)
    body.head_hash = b"\x05" * 32
    signed.body = body.SerializeToString()
    line["blob"] = base64.b64encode(signed.SerializeToString()).decode()
    with witness_file.open("a") as f:
        f.write(json.dumps(line) + "\n")
    out = hedui("ledger", "verify", "--config", fed.coordinator_config, "--witness", witness_file.parent)
    assert out.returncode == 1 and out.stdout.startswith("WITNESS INVALID: ") and "does not verify" in out.stdout
    wrong = hedui("audit", "verify", "--config", fed.configs["44"], "--witness", witness_file.parent)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "coordinator's config" in wrong.stderr
    missing = hedui("ledger", "verify", "--config", fed.coordinator_config, "--witness", tmp_path / "nowhere")
    assert missing.returncode == 2 and "no ledger-heads.jsonl" in missing.stderr and "Traceback" not in missing.stderr


def _forged(member: str, signer: object, index: int, head: bytes, prev: tuple[int, bytes] | None) -> object:
    return sign_checkpoint(Checkpoint(member, index, head, int(time.time() * 1000), prev), signer).message  # type: ignore[arg-type]


def test_a_checkpoint_that_does_not_extend_the_held_one_is_refused_and_a_genuine_sequence_accepted(
        planted: dict[str, Path], tmp_path: Path) -> None:
    """Checkpoints signed with the node's real key that name another previous checkpoint, go back, or give the held
    index another head are refused (INVALID_ARGUMENT, a conflict entry, an audit row); the node's own linked
    sequence is accepted, and a node whose acknowledgement was lost re-links to what the coordinator holds."""
    with run_cluster(["51", "44"], root=tmp_path, data=planted) as fed:
        link, node = fed.servers["44"].link, fed.member("44")
        member = node.cfg.identity
        consent = fed.grant("51", [WORKER], "dibao").consent_id
        for _ in range(3):
            fed.verify("51", [WORKER], CHECK, consent_id=consent, to="44")
            fed.loop.run(link.checkpoint_once())
        with fed.coordinator("44") as c:
            held = Checkpoint.parse(c.call("LatestCheckpoint", coordinator_pb2.LatestCheckpointRequest()).body)
            forgeries = {
                "forked": _forged(member, node.signer, held.index + 1, b"\x01" * 32, (held.index, b"\x07" * 32)),
                "first": _forged(member, node.signer, held.index + 1, b"\x01" * 32, NO_PREVIOUS),
                "truncated": _forged(member, node.signer, held.index - 1, b"\x01" * 32, held.link),
                "rewritten": _forged(member, node.signer, held.index, b"\x01" * 32, held.link),
                "unlinked": _forged(member, node.signer, held.index + 1, b"\x01" * 32, None),
            }
            refusals = {}
            for name, message in forgeries.items():
                with pytest.raises(PeerRefused) as refused:
                    c.call("SubmitCheckpoint", message)
                refusals[name] = refused.value
            assert Checkpoint.parse(c.call("LatestCheckpoint", coordinator_pb2.LatestCheckpointRequest()).body) == held
            # An acknowledgement the node never saw: the coordinator holds a checkpoint the node's memory does not.
            fed.verify("51", [WORKER], CHECK, consent_id=consent, to="44")
            with audit_file_readonly(tmp_path / "node44" / audit.AUDIT_DB) as log:
                index, head = log.head()
            c.call("SubmitCheckpoint", _forged(member, node.signer, index, head, held.link))
        fed.verify("51", [WORKER], CHECK, consent_id=consent, to="44")
        with pytest.raises(grpc.RpcError):
            fed.loop.run(link.checkpoint_once())  # links to the one it lodged last: refused...
        fed.loop.run(link.checkpoint_once())  # ...then it asks what is held and extends that
        exported = hedui("audit", "export", "--config", fed.coordinator_config)
    assert all(r.status == "INVALID_ARGUMENT" for r in refusals.values()), refusals
    assert "does not extend" in str(refusals["forked"]) and "forked" in str(refusals["forked"])
    assert "truncated" in str(refusals["truncated"]) and "rewritten" in str(refusals["rewritten"])
    assert "names no previous checkpoint" in str(refusals["unlinked"])
    with HashChain.open_readonly(tmp_path / "coordinator" / sqlite_ledger.LEDGER_FILE, ledger.TABLE) as chain:
        mine = [e for e in chain.entries(key=member)]
    # "unlinked" is refused before it is compared; the node's stale attempt is a conflict too.
    assert [e.kind for e in mine].count(audit.KIND_CHECKPOINT_CONFLICT) == 4 + 1
    lodged = [Checkpoint.parse(coordinator_pb2.AuditCheckpoint.FromString(e.payload).body)
              for e in mine if e.kind == audit.KIND_CHECKPOINT]
    assert lodged[0].prev == NO_PREVIOUS and len(lodged) == 5
    assert all(b.prev == a.link and b.index >= a.index for a, b in zip(lodged, lodged[1:], strict=False)), lodged
    rows = [json.loads(x) for x in exported.stdout.splitlines()]
    assert sum(1 for r in rows if r["decision"] == "refused:MALFORMED"
               and r.get("extra", {}).get("call") == "SubmitCheckpoint") == len(forgeries) + 1


def test_the_witness_file_stays_bounded_and_never_compacts_away_evidence(tmp_path: Path) -> None:
    """Heads that only move forward are thinned and the file is compacted past its limit, but the last head of every
    epoch and every head contradicting another one at the same index are kept."""
    from node.store.witness import Head, WitnessFile

    path = tmp_path / "witness" / "ledger-heads.jsonl"
    file = WitnessFile(path, min_interval_s=60, max_lines=8)
    assert file.offer(Head(1, b"\x01" * 32, b"e1", b"L", b"", 0))
    assert not file.offer(Head(2, b"\x02" * 32, b"e1", b"L", b"", 1_000))  # moved forward within a minute
    assert file.offer(Head(1, b"\x09" * 32, b"e1", b"L", b"", 2_000))  # index 1 with another hash: kept at once
    assert file.offer(Head(3, b"\x03" * 32, b"e2", b"L", b"", 3_000))  # another epoch: kept at once
    for n in range(4, 20):
        assert file.offer(Head(n, bytes([n]) * 32, b"e2", b"L", b"", n * 60_000))
    heads = [h for h in WitnessFile(path).read() if isinstance(h, Head)]
    assert len(heads) <= 8 + 1 and path.stat().st_mode & 0o777 == 0o600
    kept = {(h.epoch, h.index, h.hash) for h in heads}
    assert (b"e1", 1, b"\x01" * 32) in kept and (b"e1", 1, b"\x09" * 32) in kept  # the contradiction
    assert (b"e2", 19, bytes([19]) * 32) in kept  # the newest head
    assert not file.offer(Head(19, bytes([19]) * 32, b"e2", b"L", b"", 30 * 60_000))  # the same head again
