"""Backup and restore of a member's data directory: its SQLite databases and small state files.

What is copied
    store.sqlite, audit.sqlite (chain table "audit"), ledger.sqlite (chain table "ledger"),
    probes.sqlite (the probing ledger, node.store.probes): whichever exist. Each is copied with SQLite's online backup API in one step, i.e. from one
    read snapshot, so the copy is consistent while the server keeps running and writing (WAL
    readers never block the writer). Each database is consistent on its own; the copies are
    not one cross-database snapshot (a fact written between two copies may be in one and not
    the other), which nothing relies on.
    directory.json, standards.json (a coordinator's published standards), audit-checkpoints.jsonl
    and a node's witness/ files (the coordinator's signed heads it kept, node.store.witness), when
    present: read whole in one go. Writers
    replace directory.json atomically; of the append-only .jsonl only complete lines are kept.
    They are copied *before* the databases, so a checkpoint in the backup never names an audit
    entry that the (later) audit snapshot lacks.

What is not copied: the keys directory
    Private keys (TLS, signing, sealing, and the linkage key that turns ID numbers into subject
    tokens) are backed up separately, by the PKI owner, under the PKI's own controls. Keeping
    them out means a data backup - which routinely travels to less trusted storage - cannot be
    combined with the linkage key to confirm whose records a token holds, and restoring data
    never rolls keys back past a rotation or re-issue.
    Also not copied: nonces.sqlite (the replay guard's memory of the last clock window, useless
    once that window has passed), a coordinator's locators.sqlite (signed filters for the current
    and next discovery epoch, which every node lodges again at start and within
    node.server.locator_publisher.HELD_CHECK_S of finding them gone), lease lock files, and earlier
    pre-restore-*/ directories.

Layout of a backup directory
    MANIFEST.json plus one file per copied item. The manifest records the format, creation
    time, hedui and SQLite versions, the member identity (when known), and per file its size,
    SHA-256 and, for hash chains, the entry count and head hash. The databases are stored in
    rollback (DELETE) journal mode, so each is one self-contained file; the node switches them
    back to WAL when it opens them.

Safety
    `backup` writes into a fresh temp directory next to `out`, checks every copy (PRAGMA
    integrity_check; hash chains recomputed - the audit log from its retention anchor via
    AuditLog.verify, the ledger from genesis) and only then renames it to `out`; on any
    failure the partial output is removed. `restore` stages every file inside the data dir,
    checking size, SHA-256, integrity and chains (against the manifest's heads) on the staged
    bytes, before touching anything; it then moves the files it replaces (with their -wal,
    -shm and -journal files, which hold committed data or would be replayed onto the wrong
    database) into `pre-restore-<UTC time>/`, never deleting them, and installs each file
    with os.replace. The probe uses of a replaced probes.sqlite are merged into the restored one
    first (a budget spent after the backup stays spent; a replaced file that cannot be read refuses
    the restore, nothing replaced). A restored consent ledger then starts a new epoch (node.store.sqlite_ledger.restored):
    nodes refuse consents registered after the backup's head, revocations the replaced ledger
    held are re-applied, and `ledger.head` is reset to the new head.

The member must be stopped for a restore. That cannot be known for sure; `restore` refuses
when a database it would replace is open by any process (a server keeps a WAL connection open,
which holds a shared lock that an exclusive-locking probe cannot get past).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from node import __version__
from node.errors import BadInput
from node import files as files_mod
from node.files import parse_json, write_file
from node.store import witness
from node.store.probes import PROBES_DB
from node.store.sqlite import documents
from node.store.sqlite import ledger as sqlite_ledger
from node.store.sqlite.chain import GENESIS, HASH_BYTES, HashChain
from node.store.errors import StoreCorrupt, StoreError

MANIFEST: Final[str] = "MANIFEST.json"
FORMAT: Final[str] = "hedui-backup/2"  # /2 added standards.json (an older Hedui refuses it by format)
READABLE: Final[frozenset[str]] = frozenset({"hedui-backup/1", FORMAT})  # /1: the same layout, fewer state files
# Database file -> the hash-chain table it holds (None: not a chain).
DATABASES: Final[dict[str, str | None]] = {
    "store.sqlite": None,
    "audit.sqlite": "audit",
    "ledger.sqlite": "ledger",
    "probes.sqlite": None,  # the probing ledger: a restore must not hand back spent budgets
}
STATE_FILES: Final[tuple[str, ...]] = (
    "directory.json", "audit-checkpoints.jsonl", "standards.json",
    # A node's witnesses of the coordinator's chains (node.store.witness): lost with the data dir otherwise.
    f"{witness.WITNESS_DIR}/{witness.LEDGER_HEADS}", f"{witness.WITNESS_DIR}/{witness.AUDIT_HEADS}",
)
SIDECARS: Final[tuple[str, ...]] = ("-wal", "-shm", "-journal")
_BUSY_TIMEOUT_S: Final[float] = 10.0  # reading a snapshot of a live database
_PROBE_TIMEOUT_S: Final[float] = 0.5  # probing whether a database is in use
_INTEGRITY_ROWS: Final[int] = 5
_CHUNK: Final[int] = 1 << 20
_SHA256_RE: Final[re.Pattern[str]] = re.compile(r"[0-9a-f]{64}")
_HEAD_RE: Final[re.Pattern[str]] = re.compile(f"[0-9a-f]{{{2 * HASH_BYTES}}}")


# -- errors -------------------------------------------------------------------------------------


class BackupError(StoreError):
    """A backup or restore could not be carried out (I/O or SQLite failure)."""


class BackupCorrupt(StoreCorrupt, BackupError):
    """A copy or a backup fails its checks: manifest hash, integrity check or hash chain."""


class BackupRefused(BadInput):
    """The request cannot be done as asked: missing source, non-empty destination, existing data."""


class DataDirBusy(BackupRefused):
    """A database that a restore would replace is open by another process."""


# -- reports ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackupFile:
    """One file of a backup as the manifest records it."""

    name: str
    size: int
    sha256: str
    chain_table: str | None = None
    chain_entries: int | None = None  # entries held (fewer than head_index once the audit log is pruned)
    chain_head_index: int | None = None
    chain_head: str | None = None  # hex

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "size": self.size, "sha256": self.sha256}
        if self.chain_table is not None:
            out["chain"] = {"table": self.chain_table, "entries": self.chain_entries,
                            "head_index": self.chain_head_index, "head": self.chain_head}
        return out


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What `backup` wrote."""

    out: Path
    created_at: str
    identity: str | None
    files: tuple[BackupFile, ...]

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "created_at": self.created_at, "identity": self.identity,
                "files": [f.to_json() for f in self.files]}


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What `restore` installed, and where the files it replaced were moved."""

    data_dir: Path
    created_at: str
    identity: str | None
    files: tuple[BackupFile, ...]
    moved_aside: Path | None
    ledger: sqlite_ledger.RestoredLedger | None = None  # set when a coordinator's consent ledger was restored

    def to_json(self) -> dict[str, Any]:
        out = {"data_dir": str(self.data_dir), "backup_created_at": self.created_at,
               "identity": self.identity, "files": [f.to_json() for f in self.files],
               "moved_aside": None if self.moved_aside is None else str(self.moved_aside)}
        if self.ledger is not None:
            out["ledger"] = self.ledger.to_json()
        return out


# -- backup -------------------------------------------------------------------------------------


def backup(data_dir: Path, out: Path, *, identity: str | None = None) -> BackupReport:
    """Copy the databases and state files of `data_dir` into the new directory `out`.

    Safe while the member runs. `out` must not exist or be an empty directory. Every copy is
    checked before `out` appears; raises BackupCorrupt (and leaves nothing behind) if any fails.
    """
    data_dir, out = Path(data_dir), Path(out)
    if not data_dir.is_dir():
        raise BackupRefused(f"data directory {data_dir} does not exist")
    databases = [name for name in DATABASES if (data_dir / name).is_file()]
    if not databases:
        raise BackupRefused(f"no Hedui databases in {data_dir}")
    _check_destination(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise BackupError(f"cannot create backup directory {out}: {exc.strerror}") from None
    created_at = _utc_now().isoformat(timespec="seconds").replace("+00:00", "Z")
    try:
        files: list[BackupFile] = []
        for name in STATE_FILES:  # before the databases: see the module docstring
            data = _read_state_file(data_dir / name)
            if data is not None:
                (tmp / name).parent.mkdir(mode=0o700, exist_ok=True)
                _write_new(tmp / name, data)
                files.append(BackupFile(name, len(data), hashlib.sha256(data).hexdigest()))
        for name in databases:
            _snapshot(data_dir / name, tmp / name)
            files.append(_check_copy(tmp / name, name, "backup of "))
        files.sort(key=lambda f: f.name)
        manifest = {
            "format": FORMAT,
            "created_at": created_at,
            "hedui_version": __version__,
            "sqlite_version": sqlite3.sqlite_version,
            "identity": identity,
            "files": [f.to_json() for f in files],
        }
        _write_new(tmp / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        _fsync_subdirs(tmp)
        _fsync_dir(tmp)
        try:
            os.rename(tmp, out)  # replaces an empty directory atomically; fails on a non-empty one
        except OSError as exc:
            raise BackupRefused(f"backup destination {out} cannot be written: {exc.strerror}") from None
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BackupReport(out, created_at, identity, tuple(files))


def _check_destination(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BackupRefused(f"backup destination {out} exists and is not a directory")
    if out.is_dir():
        try:
            empty = next(out.iterdir(), None) is None
        except OSError as exc:
            raise BackupRefused(f"backup destination {out} cannot be read: {exc.strerror}") from None
        if not empty:
            raise BackupRefused(f"backup destination {out} exists and is not empty")


def _read_state_file(path: Path) -> bytes | None:
    """The file's bytes (complete lines only for .jsonl), or None when it does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    if path.suffix == ".jsonl":
        data = data[: data.rfind(b"\n") + 1]  # an append may be in flight: drop a torn last line
        lines = data.splitlines()
    else:
        lines = [data]
    try:
        for line in lines:
            if line.strip():
                parse_json(line)
    except ValueError:
        raise BackupCorrupt(f"{path} is not valid JSON") from None
    return data


def _snapshot(src_path: Path, dst_path: Path) -> None:
    """Copy one live database with the online backup API, in one step (one read snapshot)."""
    name = src_path.name
    try:
        # mode=rw: never create a database that vanished; query_only: never write to it.
        src = sqlite3.connect(f"{src_path.resolve().as_uri()}?mode=rw", uri=True,
                              timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {src_path} for backup: {exc}") from None
    try:
        os.close(os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        dst = sqlite3.connect(dst_path, isolation_level=None)
        try:
            src.execute("PRAGMA query_only=ON")
            src.backup(dst)  # pages=-1: all pages in one step, from one read transaction
            # The copy inherits WAL mode from the header; make it a single self-contained file.
            if dst.execute("PRAGMA journal_mode=DELETE").fetchone()[0] != "delete":
                raise BackupError(f"backup of {name}: cannot leave WAL mode in the copy")
        finally:
            dst.close()
        _fsync_file(dst_path)
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError):
            raise BackupError(f"backup of {name} failed: {exc}") from None
        raise BackupCorrupt(f"backup of {name} failed: {src_path} is damaged ({exc})") from None
    except OSError as exc:
        raise BackupError(f"backup of {name} failed: {exc.strerror}") from None
    finally:
        src.close()


def _check_copy(path: Path, name: str, what: str, expect: BackupFile | None = None) -> BackupFile:
    """Integrity-check one database copy (and verify its chain); describe it for the manifest.

    `what` starts the error messages; `expect` (restore) supplies the chain head to reach.
    """
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        try:
            rows = [r[0] for r in conn.execute(f"PRAGMA integrity_check({_INTEGRITY_ROWS})")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BackupCorrupt(f"{what}{name} failed its integrity check: {exc}") from None
    if rows != ["ok"]:
        raise BackupCorrupt(f"{what}{name} failed its integrity check: {'; '.join(map(str, rows))}")
    table = DATABASES[name]
    size, digest = _hash_file(path)
    if table is None:
        return BackupFile(name, size, digest)
    expect_head = None
    if expect is not None and expect.chain_head_index is not None and expect.chain_head is not None:
        expect_head = (expect.chain_head_index, bytes.fromhex(expect.chain_head))
    try:
        ok, reason, entries, head_index, head = _verify_chain(path, table, expect_head)
    except StoreCorrupt:
        raise BackupCorrupt(f"{what}{name} holds no valid {table!r} hash chain") from None
    except ValueError:
        raise BackupCorrupt(f"{what}{name}: the manifest's chain head is malformed") from None
    if not ok:
        raise BackupCorrupt(f"{what}{name}: {table} chain does not verify: {reason}")
    if expect is not None and expect.chain_entries != entries:
        raise BackupCorrupt(f"{what}{name}: {table} chain holds {entries} entries, the manifest says "
                            f"{expect.chain_entries}")
    return BackupFile(name, size, digest, table, entries, head_index, head.hex())


def _verify_chain(path: Path, table: str, expect_head: tuple[int, bytes] | None
                  ) -> tuple[bool, str | None, int, int, bytes]:
    """(ok, reason, entries, head index, head hash) of the chain `table` in the file `path`.

    The audit log may have been pruned (its chain then starts at a recorded anchor, not at
    genesis), so it is verified by node.store.audit.AuditLog.
    """
    if table == "audit":
        from node.store.audit import AuditLog

        with AuditLog(HashChain.open_readonly(path, table)) as log:
            audit = log.verify([expect_head] if expect_head is not None else [])
        return audit.ok, audit.reason, audit.count, audit.head_index, audit.head_hash
    chain = HashChain.open_readonly(path, table)
    try:
        report = chain.verify(expect_head)
    finally:
        chain.close()
    return report.ok, report.reason, report.count, report.count, report.head_hash


# -- restore ------------------------------------------------------------------------------------


def restore(backup_dir: Path, data_dir: Path, *, force: bool = False,
            expect_identity: str | None = None) -> RestoreReport:
    """Install the backup in `backup_dir` into `data_dir`; the member must be stopped.

    Everything is checked first (manifest hashes, integrity, chains). Existing files that would
    be replaced are refused unless `force`, and then moved into `data_dir/pre-restore-<time>/`.
    `expect_identity` refuses a backup made of another member.
    """
    backup_dir, data_dir = Path(backup_dir), Path(data_dir)
    manifest, files = _read_manifest(backup_dir)
    identity = manifest.get("identity")
    if expect_identity is not None and identity is not None and identity != expect_identity:
        raise BackupRefused(f"backup {backup_dir} is of {identity}, not {expect_identity}")
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        stage = Path(tempfile.mkdtemp(prefix=".restore-", dir=data_dir))
    except OSError as exc:
        raise BackupError(f"cannot write to data directory {data_dir}: {exc.strerror}") from None
    try:
        checked: list[BackupFile] = []
        for f in files:
            (stage / f.name).parent.mkdir(mode=0o700, exist_ok=True)
            _stage(backup_dir / f.name, stage / f.name, f, backup_dir)
            if f.name in DATABASES:
                _check_copy(stage / f.name, f.name, f"backup {backup_dir}: ", expect=f)
            checked.append(f)
        _fsync_subdirs(stage)
        _fsync_dir(stage)

        replaced = [data_dir / f.name for f in files]
        moved_aside: Path | None = None
        if conflicts := _existing(replaced):
            if not force:
                names = ", ".join(sorted(p.name for p in conflicts))
                raise BackupRefused(f"{data_dir} already holds {names}; use --force to move them aside")
            for target in replaced:
                if target.name in DATABASES and target.is_file():
                    ensure_idle(target)
            if (data_dir / PROBES_DB).is_file() and (stage / PROBES_DB).is_file():
                _merge_probes(stage / PROBES_DB, data_dir / PROBES_DB)
            conflicts = _existing(replaced)  # closing a probe may have folded a -wal into its database
            moved_aside = _aside_dir(data_dir)
            for path in conflicts:
                os.replace(path, moved_aside / path.name)
            _fsync_dir(moved_aside)
        for f in files:
            (data_dir / f.name).parent.mkdir(mode=0o700, exist_ok=True)
            if f.name in documents.PUBLIC:  # as FileDocument.write leaves it: readable on the host
                os.chmod(stage / f.name, files_mod.PUBLIC)
            os.replace(stage / f.name, data_dir / f.name)
        _fsync_subdirs(data_dir)
        _fsync_dir(data_dir)
        # A consent ledger goes back to the backup's head: a new epoch tells every node so.
        restored_ledger = (sqlite_ledger.restored(data_dir, moved_aside)
                           if any(f.name == sqlite_ledger.LEDGER_FILE for f in files) else None)
    except OSError as exc:
        raise BackupError(f"restore into {data_dir} failed: {exc.strerror}: {exc.filename}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return RestoreReport(data_dir, str(manifest["created_at"]), identity, tuple(checked), moved_aside, restored_ledger)


def _merge_probes(staged: Path, replaced: Path) -> None:
    """Add the replaced probes.sqlite's uses to the staged copy (probe uses are only ever added)."""
    try:
        db = sqlite3.connect(staged.resolve().as_uri(), uri=True, isolation_level=None)  # uri: the ATTACH's mode=ro
        try:
            db.execute("ATTACH DATABASE ? AS replaced", (f"{replaced.resolve().as_uri()}?mode=ro",))
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT OR IGNORE INTO main.probes(requester, consent_id, item, cut, at_ms) "
                       "SELECT requester, consent_id, item, cut, at_ms FROM replaced.probes")
            db.execute("COMMIT")
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"cannot carry the probe uses of {replaced} into the restored one ({exc}); move it away "
                          "to restore without them") from None


def _existing(targets: list[Path]) -> list[Path]:
    """The targets, and their -wal/-shm/-journal files, that exist."""
    candidates = (p for t in targets for p in (t, *(t.with_name(t.name + s) for s in SIDECARS)))
    return [p for p in candidates if p.exists() or p.is_symlink()]


def _read_manifest(backup_dir: Path) -> tuple[dict[str, Any], list[BackupFile]]:
    """The manifest and its files, validated; file names are only ever the known ones."""
    path = backup_dir / MANIFEST
    if not backup_dir.is_dir():
        raise BackupRefused(f"backup directory {backup_dir} does not exist")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BackupRefused(f"{backup_dir} is not a Hedui backup (no {MANIFEST})") from None
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    bad = f"backup {backup_dir}: {MANIFEST} is malformed"
    try:
        manifest = parse_json(raw)
    except ValueError:
        raise BackupCorrupt(bad) from None
    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BackupCorrupt(f"{bad} (format {found!r}, expected {FORMAT!r})")
    if not isinstance(manifest.get("created_at"), str) or not isinstance(manifest.get("identity"), str | None):
        raise BackupCorrupt(bad)
    entries = manifest.get("files")
    if not isinstance(entries, list) or not entries:
        raise BackupCorrupt(f"{bad} (no files)")
    files: list[BackupFile] = []
    for entry in entries:
        try:
            name, size, digest = entry["name"], entry["size"], entry["sha256"]
            chain = entry.get("chain")
            if name not in DATABASES and name not in STATE_FILES:
                raise BackupCorrupt(f"{bad} (unexpected file {str(name)[:64]!r})")
            if not _count(size) or not _SHA256_RE.fullmatch(digest):
                raise BackupCorrupt(bad)
            table = DATABASES.get(name)
            if (chain is None) != (table is None):
                raise BackupCorrupt(f"{bad} (chain record of {name})")
            if chain is not None:
                n, head_index, head = chain["entries"], chain["head_index"], chain["head"]
                if (chain["table"] != table or not _count(n) or not _count(head_index) or n > head_index
                        or not isinstance(head, str) or not _HEAD_RE.fullmatch(head)
                        or (head_index == 0 and head != GENESIS.hex())):
                    raise BackupCorrupt(f"{bad} (chain record of {name})")
                files.append(BackupFile(name, size, digest, table, n, head_index, head))
            else:
                files.append(BackupFile(name, size, digest))
        except (KeyError, TypeError, AttributeError):
            raise BackupCorrupt(bad) from None
    if len({f.name for f in files}) != len(files):
        raise BackupCorrupt(f"{bad} (a file is listed twice)")
    return manifest, files


def _stage(src: Path, dst: Path, want: BackupFile, backup_dir: Path) -> None:
    """Copy src to dst (0600), hashing the bytes copied; they must match the manifest."""
    h = hashlib.sha256()
    size = 0
    try:
        with open(src, "rb") as fin:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fout:
                while chunk := fin.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    fout.write(chunk)
                fout.flush()
                os.fsync(fout.fileno())
    except FileNotFoundError:
        raise BackupCorrupt(f"backup {backup_dir}: {want.name} is missing") from None
    except OSError as exc:
        raise BackupError(f"cannot copy {src}: {exc.strerror}") from None
    if size != want.size or h.hexdigest() != want.sha256:
        raise BackupCorrupt(f"backup {backup_dir}: {want.name} does not match its manifest "
                            f"({'size' if size != want.size else 'SHA-256'} differs)")


def ensure_idle(db: Path) -> None:
    """Refuse when some process has `db` open (a running server holds a WAL connection).

    A plain BEGIN IMMEDIATE would succeed against an idle server, so this asks for an exclusive
    lock in exclusive locking mode: any other open WAL connection holds a shared lock on the
    file that prevents it. Only "locked"/"busy" counts as in use; a damaged file is not.
    Closing the probe (the last connection) checkpoints the file's own WAL into it.
    """
    try:
        conn = sqlite3.connect(db, timeout=_PROBE_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error:
        return
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            raise DataDirBusy(f"{db} is in use by another process: stop the node before restoring") from None
    except sqlite3.DatabaseError:
        pass  # damaged: that is no reason to keep it; it is moved aside, not deleted
    finally:
        conn.close()


def _aside_dir(data_dir: Path) -> Path:
    stamp = _utc_now().strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        path = data_dir / (f"pre-restore-{stamp}" + (f"-{n}" if n else ""))
        try:
            path.mkdir(mode=0o700)
            return path
        except FileExistsError:
            continue
    raise BackupError(f"cannot create a pre-restore directory in {data_dir}")


# -- helpers ------------------------------------------------------------------------------------


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _hash_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _write_new(path: Path, data: bytes) -> None:
    write_file(path, data)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_subdirs(path: Path) -> None:
    """fsync the subdirectories state files live in (witness/), where they exist."""
    for sub in {Path(name).parent for name in STATE_FILES} - {Path(".")}:
        if (path / sub).is_dir():
            _fsync_dir(path / sub)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)
