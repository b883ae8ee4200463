"""`hedui backup` and `hedui restore`: consistent copies of a member's databases, and putting them back.

`hedui backup` is safe while the node (or coordinator) runs. `hedui restore` needs it stopped:
restore refuses when a database it would replace is open by another process; on PostgreSQL it also
keeps every Hedui process out until it has finished (a replica started meanwhile fails with one
line), on SQLite a server started during the restore is not prevented. Key material (the data
dir's keys/) is never part of a backup; the PKI owner backs it up separately (see
node.store.sqlite.backup). Locators are not backed up: every node lodges its own again.

Exit codes: 0 done; 1 the backup (or the copy just made) fails its checks; 2 bad input or
refused (missing config, non-empty --out, existing data without --force, node running).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

_EXIT_INVALID = 1  # node.cli.main.EXIT_INVALID: a checked artefact is invalid


def register(sub: Any) -> None:
    backup = sub.add_parser(
        "backup", help="copy a member's databases and state consistently (safe while it runs)",
        description="Copy store, audit, ledger and probing-budget databases (whichever exist) with SQLite's "
                    "online backup API (on PostgreSQL: one snapshot of the same tables), plus directory.json, "
                    "standards.json and audit-checkpoints.jsonl, into a new directory with a MANIFEST.json; every "
                    "copy is integrity-checked and hash chains verified. Keys are not included: the PKI owner "
                    "backs them up separately. Nor are a coordinator's locators: every node lodges its own again "
                    "at start and within 5 minutes of finding them gone.")
    backup.add_argument("--config", required=True, type=Path, metavar="FILE")
    backup.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="new directory to create (must not exist, or be empty)")
    backup.add_argument("--json", action="store_true")
    backup.set_defaults(func=_backup)

    restore = sub.add_parser(
        "restore", help="restore a backup into a stopped member's data dir",
        description="Check a backup (manifest SHA-256s, integrity, hash chains) and install it into the "
                    "config's data dir (or its PostgreSQL store). The node must be stopped (every replica); on "
                    "PostgreSQL no Hedui process can open the store until the restore has finished. Existing "
                    "databases are refused unless --force, which moves them (with their -wal/-shm) to "
                    "DATA_DIR/pre-restore-<time>/; probe uses recorded after the backup are kept (spent budgets "
                    "stay spent). A bad or truncated backup changes nothing. A "
                    "coordinator's consent ledger then starts a new epoch: nodes refuse every consent registered "
                    "after the backup's head (a warning names it) and revocations the replaced ledger held are "
                    "re-applied.")
    restore.add_argument("--config", required=True, type=Path, metavar="FILE")
    restore.add_argument("--from", dest="backup_dir", required=True, type=Path, metavar="DIR")
    restore.add_argument("--force", action="store_true",
                         help="replace existing databases, moving them aside (never deleting them)")
    restore.add_argument("--json", action="store_true")
    restore.set_defaults(func=_restore)


def _invalid(exc: Exception) -> int:
    print(f"hedui: {exc}", file=sys.stderr)
    return _EXIT_INVALID


def _describe(f: Any) -> str:
    extra = f", {f.chain_entries} {f.chain_table} entries" if f.chain_table else ""
    return f"  {f.name}: {f.size} bytes{extra}, sha256 {f.sha256[:16]}"


def _postgres(cfg: Any) -> str | None:
    """The `[store] url` when the member's store is PostgreSQL (backup and restore then go through node.store.postgres)."""
    url = str(getattr(cfg, "store_url", "") or "")
    return url if url.lower().startswith(("postgresql:", "postgres:")) else None


def _backup(args: argparse.Namespace) -> int:
    from node import config
    from node.store.sqlite.backup import BackupCorrupt, backup

    cfg = config.load(args.config)
    try:
        if url := _postgres(cfg):  # one REPEATABLE READ snapshot exported to this same format
            from node.store.postgres.backup import backup as pg_backup

            report = pg_backup(url, cfg.data_dir, args.out, identity=cfg.identity)
        else:
            report = backup(cfg.data_dir, args.out, identity=cfg.identity)
    except BackupCorrupt as exc:
        return _invalid(exc)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(f"backup of {cfg.identity} written to {report.out}")
        print("\n".join(_describe(f) for f in report.files))
        print(f"keys are not included: back up {cfg.data_dir / 'keys'} with the PKI owner's procedure")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from node import config
    from node.store.sqlite.backup import BackupCorrupt, restore

    cfg = config.load(args.config)
    try:
        if url := _postgres(cfg):
            from node.store.postgres.backup import restore as pg_restore

            report = pg_restore(args.backup_dir, cfg.data_dir, url, force=args.force, expect_identity=cfg.identity)
        else:
            report = restore(args.backup_dir, cfg.data_dir, force=args.force, expect_identity=cfg.identity)
    except BackupCorrupt as exc:
        return _invalid(exc)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(f"restored backup of {report.identity or 'unknown member'} made {report.created_at} "
              f"into {report.data_dir}")
        print("\n".join(_describe(f) for f in report.files))
        if report.moved_aside is not None:
            print(f"previous files moved to {report.moved_aside}")
    if report.ledger is not None:
        print("\n".join(_ledger_warning(report.ledger, report.created_at)), file=sys.stderr)
    return 0


def _ledger_warning(restored: Any, created_at: str) -> list[str]:
    """What a restored consent ledger means for the federation (printed on stderr)."""
    lines = [f"WARNING: the consent ledger now ends at entry {restored.kept_index} (the backup's head) and starts "
             f"a new epoch: nodes refuse every consent registered after entry {restored.kept_index}"]
    if restored.replaced_index is not None and restored.replaced_index > restored.kept_index:
        lines.append(f"  the replaced ledger reached entry {restored.replaced_index}")
    if restored.lost:
        lines.append(f"  {restored.lost} consent(s) registered after the backup must be registered again")
    if restored.carried is None:
        lines.append(f"  revocations recorded after the backup could not be read from a replaced ledger: revoke again "
                     f"any consent revoked after {created_at}")
    elif restored.carried:
        lines.append(f"  {restored.carried} revocation(s) recorded after the backup were carried over from the "
                     "replaced ledger")
    return lines
