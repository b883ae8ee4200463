"""Unit tests of backup and restore of a member's data dir, and of store corruption detection."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from node.errors import BadInput
from node.store.sqlite.backup import (
    MANIFEST,
    BackupCorrupt,
    BackupRefused,
    DataDirBusy,
    backup,
    restore,
)
from node.store.sqlite.chain import HashChain
from node.store.errors import StoreCorrupt, StoreError
from node.store.sqlite.facts import Store
from node.store.sqlite.storage import audit_file, audit_file_readonly

IDENTITY = "urn:hedui:province:51"


def _token(i: int) -> bytes:
    return hashlib.sha256(b"subject-%d" % i).digest()


def _add_facts(data_dir: Path, start: int, n: int, per_subject: int = 1) -> None:
    """Facts for subjects start..start+n-1, `per_subject` attributes each, in one transaction."""
    with Store.open(data_dir) as store, store.writer() as w:
        w.upsert_facts((w.subject_id(_token(i)), f"attr.{a}", "2026-10-31", "src", i * 10 + a)
                       for i in range(start, start + n) for a in range(per_subject))


def _add_entries(path: Path, table: str, n: int) -> None:
    with HashChain(path, table=table) as chain:
        chain.append_many([("query", f"req-{i}", b'{"n":%d}' % i) for i in range(n)])


@pytest.fixture
def member(tmp_path: Path) -> Path:
    """A data dir with a store, an audit chain, a ledger chain, state files and keys."""
    d = tmp_path / "data"
    _add_facts(d, 0, 200)
    _add_entries(d / "audit.sqlite", "audit", 30)
    _add_entries(d / "ledger.sqlite", "ledger", 10)
    (d / "directory.json").write_text(json.dumps({"members": []}))
    (d / "audit-checkpoints.jsonl").write_bytes(b'{"idx": 10}\n{"idx": 20}\n{"idx": 3')  # torn last line
    (d / "keys").mkdir()
    (d / "keys" / "sign.key").write_bytes(b"secret")
    return d


def _rewrite_manifest(backup_dir: Path, name: str) -> None:
    """Make the manifest agree with the current bytes of `name` (as a careful forger would)."""
    manifest = json.loads((backup_dir / MANIFEST).read_text())
    data = (backup_dir / name).read_bytes()
    for f in manifest["files"]:
        if f["name"] == name:
            f["size"], f["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (backup_dir / MANIFEST).write_text(json.dumps(manifest))


def _facts(data_dir: Path) -> int:
    with Store.open(data_dir) as store:
        return store.counts()["facts"]


# -- backup -------------------------------------------------------------------------------------


def test_backup_manifest_lists_every_file_with_matching_sha256(member: Path, tmp_path: Path) -> None:
    """The manifest names each copied file with its true size and SHA-256, the identity and versions."""
    out = tmp_path / "bk"
    report = backup(member, out, identity=IDENTITY)
    manifest = json.loads((out / MANIFEST).read_text())
    names = [f["name"] for f in manifest["files"]]
    assert names == ["audit-checkpoints.jsonl", "audit.sqlite", "directory.json", "ledger.sqlite", "store.sqlite"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, MANIFEST])
    for f in manifest["files"]:
        data = (out / f["name"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f["size"], f["sha256"])
    assert manifest["identity"] == IDENTITY and manifest["format"] == "hedui-backup/2"
    assert manifest["hedui_version"] and manifest["created_at"].endswith("Z")
    chains = {f["name"]: f["chain"] for f in manifest["files"] if "chain" in f}
    assert chains["audit.sqlite"]["entries"] == 30 and chains["ledger.sqlite"]["entries"] == 10
    assert [f.name for f in report.files] == names


def test_backup_excludes_keys_and_torn_jsonl_line(member: Path, tmp_path: Path) -> None:
    """Keys are never copied, and a half-appended last line of the checkpoint log is dropped."""
    out = tmp_path / "bk"
    backup(member, out)
    assert not (out / "keys").exists()
    assert (out / "audit-checkpoints.jsonl").read_bytes() == b'{"idx": 10}\n{"idx": 20}\n'
    assert (out.stat().st_mode & 0o777) == 0o700
    assert all((p.stat().st_mode & 0o077) == 0 for p in out.iterdir())
    assert not list(out.glob("*-wal")) and not list(out.glob("*-shm"))


def test_witness_files_are_backed_up_and_restored(member: Path, tmp_path: Path) -> None:
    """A node's witnesses of the coordinator's heads travel with its backup and come back on restore."""
    wdir = member / "witness"
    wdir.mkdir(mode=0o700)
    (wdir / "ledger-heads.jsonl").write_bytes(b'{"i": 1}\n{"i": 2}\n{"torn')
    (wdir / "audit-heads.jsonl").write_bytes(b'{"i": 7}\n')
    out = tmp_path / "bk"
    report = backup(member, out)
    assert {"witness/ledger-heads.jsonl", "witness/audit-heads.jsonl"} <= {f.name for f in report.files}
    assert (out / "witness" / "ledger-heads.jsonl").read_bytes() == b'{"i": 1}\n{"i": 2}\n'
    assert (out / "witness").stat().st_mode & 0o077 == 0
    fresh = tmp_path / "fresh"
    restore(out, fresh)
    assert (fresh / "witness" / "ledger-heads.jsonl").read_bytes() == b'{"i": 1}\n{"i": 2}\n'
    assert (fresh / "witness" / "audit-heads.jsonl").read_bytes() == b'{"i": 7}\n'


def test_backup_during_concurrent_writes_is_consistent(member: Path, tmp_path: Path) -> None:
    """Backups taken while threads keep writing facts and audit entries pass integrity and chain checks."""
    stop = threading.Event()
    errors: list[BaseException] = []
    commits = {"facts": 0, "audit": 0}
    batch = 7  # facts per write transaction: a consistent copy holds a whole number of batches

    def write_facts() -> None:
        try:
            with Store.open(member) as store:
                i = 10_000
                while not stop.is_set():
                    with store.writer() as w:
                        sid = w.subject_id(_token(i))
                        w.upsert_facts((sid, f"attr.{a}", "2026-10-31", "src", a) for a in range(batch))
                    i += 1
                    commits["facts"] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def write_audit() -> None:
        try:
            with HashChain(member / "audit.sqlite", table="audit") as chain:
                while not stop.is_set():
                    chain.append_many([("query", "k", b"x" * 200)] * 3)
                    commits["audit"] += 1
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=write_facts), threading.Thread(target=write_audit)]
    for t in threads:
        t.start()
    def progressed(after: dict[str, int]) -> dict[str, int]:
        """Wait until both writers committed again since `after` (they run during every backup)."""
        deadline = time.monotonic() + 10
        while any(commits[k] <= after[k] for k in commits) and not errors and time.monotonic() < deadline:
            time.sleep(0.001)
        return dict(commits)

    try:
        seen = progressed({"facts": 0, "audit": 0})
        reports = []
        for n in range(3):
            reports.append(backup(member, tmp_path / f"bk{n}"))
            seen = progressed(seen)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    for report in reports:
        conn = sqlite3.connect(report.out / "store.sqlite")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        facts = conn.execute("SELECT count(*) FROM facts").fetchone()[0]
        conn.close()
        assert facts > 200 and (facts - 200) % batch == 0
        with HashChain.open_readonly(report.out / "audit.sqlite", "audit") as chain:
            verified = chain.verify()
        assert verified.ok and verified.count > 30 and (verified.count - 30) % 3 == 0
    assert _facts(member) >= max(
        sqlite3.connect(r.out / "store.sqlite").execute("SELECT count(*) FROM facts").fetchone()[0] for r in reports
    )


def test_backup_refuses_non_empty_destination(member: Path, tmp_path: Path) -> None:
    """An existing non-empty --out is refused as bad input; an existing empty directory is used."""
    out = tmp_path / "bk"
    out.mkdir()
    (out / "other").write_text("x")
    with pytest.raises(BackupRefused, match="exists and is not empty"):
        backup(member, out)
    assert sorted(p.name for p in out.iterdir()) == ["other"]
    (out / "other").unlink()
    backup(member, out)
    assert (out / MANIFEST).is_file()


def test_backup_refuses_a_dir_without_databases(tmp_path: Path) -> None:
    """A missing data dir, or one holding no databases, is refused as bad input."""
    with pytest.raises(BackupRefused, match="does not exist"):
        backup(tmp_path / "nope", tmp_path / "bk")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackupRefused, match="no Hedui databases"):
        backup(tmp_path / "empty", tmp_path / "bk")
    assert issubclass(BackupRefused, BadInput)


def test_backup_of_tampered_chain_fails_and_leaves_nothing(member: Path, tmp_path: Path) -> None:
    """A live audit chain that was edited fails the copy's chain check; no output or temp dir remains."""
    conn = sqlite3.connect(member / "audit.sqlite")
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET payload = x'00' WHERE idx = 5")
    conn.commit()
    conn.close()
    with pytest.raises(BackupCorrupt, match="audit chain does not verify: entry 5"):
        backup(member, tmp_path / "bk")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_backup_of_corrupt_store_fails_and_leaves_nothing(tmp_path: Path) -> None:
    """A damaged store.sqlite fails the copy's integrity check; no output or temp dir remains."""
    data = tmp_path / "data"
    _corrupt_store(data)
    with pytest.raises(BackupCorrupt, match="store.sqlite"):
        backup(data, tmp_path / "bk")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# -- restore ------------------------------------------------------------------------------------


def test_restore_into_empty_dir_gives_a_working_store(member: Path, tmp_path: Path) -> None:
    """A restored data dir opens as a store holding the backed-up facts, with intact chains."""
    out = tmp_path / "bk"
    backup(member, out, identity=IDENTITY)
    target = tmp_path / "new"
    report = restore(out, target, expect_identity=IDENTITY)
    assert report.moved_aside is None and report.identity == IDENTITY
    with Store.open(target) as store:
        store.check_integrity()
        assert store.counts() == {"subjects": 200, "facts": 200}
        facts = store.lookup([_token(7), _token(199)], ["attr.0"])
        assert (facts[(0, "attr.0")].value, facts[(1, "attr.0")].value) == (70, 1990)
    with HashChain(target / "audit.sqlite", table="audit") as chain:
        assert chain.verify().count == 30 and chain.append("query", "after", b"{}").idx == 31
    assert sorted(p.name for p in target.iterdir()) == [
        "audit-checkpoints.jsonl", "audit.sqlite", "directory.json", "ledger.head", "ledger.sqlite", "store.sqlite"]


def test_restore_refuses_flipped_byte(member: Path, tmp_path: Path) -> None:
    """One flipped byte in a backed-up database is caught by the manifest and nothing is installed."""
    out = tmp_path / "bk"
    backup(member, out)
    path = out / "store.sqlite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    target = tmp_path / "new"
    with pytest.raises(BackupCorrupt, match="store.sqlite does not match its manifest"):
        restore(out, target)
    assert list(target.iterdir()) == []


def test_restore_refuses_edited_chain_with_forged_manifest(member: Path, tmp_path: Path) -> None:
    """An audit entry edited in the backup is caught by chain verification even with a matching manifest."""
    out = tmp_path / "bk"
    backup(member, out)
    conn = sqlite3.connect(out / "audit.sqlite")
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET key = 'forged' WHERE idx = 12")
    conn.commit()
    conn.close()
    _rewrite_manifest(out, "audit.sqlite")
    with pytest.raises(BackupCorrupt, match="audit chain does not verify: entry 12"):
        restore(out, tmp_path / "new")
    assert list((tmp_path / "new").iterdir()) == []


def test_restore_refuses_truncated_chain_with_forged_manifest(member: Path, tmp_path: Path) -> None:
    """A ledger whose last entries were deleted in the backup fails against the manifest's recorded head."""
    out = tmp_path / "bk"
    backup(member, out)
    conn = sqlite3.connect(out / "ledger.sqlite")
    conn.execute("DROP TRIGGER ledger_no_delete")
    conn.execute("DELETE FROM ledger WHERE idx > 8")
    conn.commit()
    conn.close()
    _rewrite_manifest(out, "ledger.sqlite")
    with pytest.raises(BackupCorrupt, match="ledger chain does not verify: entry 10 missing"):
        restore(out, tmp_path / "new")


def test_pruned_audit_log_is_backed_up_and_restored(tmp_path: Path) -> None:
    """An audit log pruned by retention (its chain starts at an anchor) passes backup and restore checks."""
    data = tmp_path / "data"
    _add_facts(data, 0, 3)
    now = time.time_ns() // 1_000_000
    with HashChain(data / "audit.sqlite", table="audit") as chain:
        chain.append_many([("audit.record", f"old-{i}", b"{}") for i in range(20)], at_ms=now - 400 * 86_400_000)
        chain.append_many([("audit.record", f"new-{i}", b"{}") for i in range(5)], at_ms=now)
    with audit_file(data / "audit.sqlite") as log:
        assert log.prune(now) == 20
    out = tmp_path / "bk"
    chain_record = next(f for f in backup(data, out).files if f.name == "audit.sqlite")
    assert (chain_record.chain_entries, chain_record.chain_head_index) == (6, 26)
    restore(out, tmp_path / "new")
    with audit_file_readonly(tmp_path / "new" / "audit.sqlite") as log:
        assert log.verify().ok and log.anchor()[0] == 21


def test_restore_refuses_a_backup_of_another_member(member: Path, tmp_path: Path) -> None:
    """A backup recorded as another member's is refused as bad input."""
    out = tmp_path / "bk"
    backup(member, out, identity="urn:hedui:province:44")
    with pytest.raises(BackupRefused, match="is of urn:hedui:province:44, not urn:hedui:province:51"):
        restore(out, tmp_path / "new", expect_identity=IDENTITY)


def test_restore_refuses_a_dir_without_manifest(tmp_path: Path) -> None:
    """A directory that is not a backup is refused as bad input, a malformed manifest as corrupt."""
    (tmp_path / "bk").mkdir()
    with pytest.raises(BackupRefused, match="not a Hedui backup"):
        restore(tmp_path / "bk", tmp_path / "new")
    (tmp_path / "bk" / MANIFEST).write_text('{"format": "hedui-backup/1", "created_at": "x", '
                                            '"files": [{"name": "../keys/sign.key", "size": 1, "sha256": "00"}]}')
    with pytest.raises(BackupCorrupt, match="unexpected file"):
        restore(tmp_path / "bk", tmp_path / "new")


def test_restore_over_existing_data_needs_force(member: Path, tmp_path: Path) -> None:
    """Without force, restoring over existing databases is refused and nothing changes."""
    out = tmp_path / "bk"
    backup(member, out)
    _add_facts(member, 1000, 5)
    before = (member / "store.sqlite").read_bytes()
    with pytest.raises(BackupRefused, match="already holds .*store.sqlite.*use --force"):
        restore(out, member)
    assert (member / "store.sqlite").read_bytes() == before
    assert not list(member.glob("pre-restore-*")) and not list(member.glob(".restore-*"))


def test_restore_with_force_moves_old_files_aside(member: Path, tmp_path: Path) -> None:
    """With force, old databases (with WAL-only commits of a crashed writer) move to pre-restore-*/ intact."""
    out = tmp_path / "bk"
    backup(member, out)
    _add_facts(member, 1000, 5)
    crash = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA wal_autocheckpoint=0')\n"
        "c.execute(\"INSERT INTO facts VALUES (1, 'attr.wal', '2026-11-01', 'src', 1)\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", crash, str(member / "store.sqlite")], check=True, timeout=30)
    assert (member / "store.sqlite-wal").stat().st_size > 0
    report = restore(out, member, force=True)
    aside = report.moved_aside
    assert aside is not None and aside.parent == member and aside.name.startswith("pre-restore-")
    assert not list(member.glob("*-wal")) and not list(member.glob("*-shm"))
    assert _facts(member) == 200
    assert _facts(aside) == 200 + 5 + 1  # the crashed writer's commit survived the move
    assert (aside / "keys").exists() is False and (member / "keys" / "sign.key").read_bytes() == b"secret"
    assert sorted(p.name for p in aside.iterdir()) == [
        "audit-checkpoints.jsonl", "audit.sqlite", "directory.json", "ledger.sqlite", "store.sqlite"]


def test_restore_refuses_while_store_is_open(member: Path, tmp_path: Path) -> None:
    """A restore, even forced, is refused while a store it would replace is open (as by a running node)."""
    out = tmp_path / "bk"
    backup(member, out)
    with Store.open(member) as store:
        store.counts()
        with pytest.raises(DataDirBusy, match="in use .* stop the node"):
            restore(out, member, force=True)
    assert not list(member.glob("pre-restore-*"))


# -- storage safety -----------------------------------------------------------------------------


def _corrupt_store(data_dir: Path) -> Path:
    """A store spanning many pages with garbage written over pages in the middle of the file."""
    _add_facts(data_dir, 0, 3000, per_subject=2)
    path = data_dir / "store.sqlite"
    size = path.stat().st_size
    assert size > 100 * 4096
    with open(path, "r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(b"\xde\xad\xbe\xef" * 2048)
    return path


def test_corrupted_store_fails_integrity_check(tmp_path: Path) -> None:
    """Bytes overwritten mid-file make Store.check_integrity raise StoreCorrupt naming the file."""
    path = _corrupt_store(tmp_path / "data")
    with Store.open(tmp_path / "data") as store:
        with pytest.raises(StoreCorrupt, match=f"store {path} integrity check failed: ") as info:
            store.check_integrity()
    assert "\n" not in str(info.value) and isinstance(info.value, StoreError)
