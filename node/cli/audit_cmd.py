"""`hedui audit`: verify, export and prune a member's audit log; make and export checkpoints.

    hedui audit verify --config FILE [--checkpoint FILE] [--witness DIR] [--json]   exit 0 intact, 1 tampered
    hedui audit export --config FILE [--since T] [--out FILE]          JSON lines
    hedui audit prune --config FILE [--json]                           drop entries past retention
    hedui audit checkpoint --config NODE_FILE [--out FILE] [--json]    sign and keep the head
    hedui audit export-checkpoint --config COORD_FILE --member ID [--out FILE]

The audit log is `<data_dir>/audit.sqlite` for nodes and the coordinator alike. `verify`
checks the chain from its anchor (the first entry kept after pruning), every checkpoint in
`<data_dir>/audit-checkpoints.jsonl`, and the checkpoint given with `--checkpoint` (one
exported from the coordinator with `export-checkpoint`: the operator of a node cannot
change what the coordinator holds, so a rewritten history is caught against it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any

from node import files
from node.domain.freetext import show
from node.errors import BadInput, HeduiError

_DURATION = re.compile(r"(\d{1,6})([smhdw])")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="the member's tamper-evident audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)

    verify = audit_sub.add_parser("verify", help="check the audit chain and checkpoints: exit 0 intact, 1 tampered")
    verify.add_argument("--config", required=True, type=Path, metavar="FILE")
    verify.add_argument("--checkpoint", action="append", type=Path, default=[], metavar="FILE",
                        help="a checkpoint exported from the coordinator (repeatable)")
    verify.add_argument("--witness", action="append", type=Path, default=[], metavar="DIR",
                        help="on the coordinator: a node's witness directory (or data dir); the entry at every "
                             "audit head the coordinator signed to it must be held with that hash (repeatable)")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=_verify)

    export = audit_sub.add_parser("export", help="write audit records as JSON lines")
    export.add_argument("--config", required=True, type=Path, metavar="FILE")
    export.add_argument("--since", metavar="T", help="ISO date or UTC datetime, or a duration such as 7d, 12h")
    export.add_argument("--out", type=Path, metavar="FILE", help="default: standard output")
    export.add_argument("--force", action="store_true", help="replace FILE if it exists")
    export.set_defaults(func=_export)

    prune = audit_sub.add_parser("prune", help="remove entries older than [audit] retention_days (export first)")
    prune.add_argument("--config", required=True, type=Path, metavar="FILE")
    prune.add_argument("--json", action="store_true")
    prune.set_defaults(func=_prune)

    checkpoint = audit_sub.add_parser("checkpoint", help="sign the node's audit head and keep it locally")
    checkpoint.add_argument("--config", required=True, type=Path, metavar="FILE")
    checkpoint.add_argument("--out", type=Path, metavar="FILE", help="also write it to FILE")
    checkpoint.add_argument("--force", action="store_true", help="replace FILE if it exists")
    checkpoint.add_argument("--json", action="store_true")
    checkpoint.set_defaults(func=_checkpoint)

    held = audit_sub.add_parser("export-checkpoint",
                                help="on the coordinator: the latest checkpoint it holds for a member")
    held.add_argument("--config", required=True, type=Path, metavar="COORD_FILE")
    held.add_argument("--member", required=True, metavar="IDENTITY", help="a member identity or province code")
    held.add_argument("--out", type=Path, metavar="FILE", help="default: standard output")
    held.add_argument("--force", action="store_true", help="replace FILE if it exists")
    held.set_defaults(func=_export_checkpoint)


# -- helpers ---------------------------------------------------------------------------------


def parse_since(text: str, *, now_ms: int | None = None) -> int:
    """Milliseconds since the epoch for --since: 2026-01-31, 2026-01-31T08:00[:00][Z|+08:00], or 7d."""
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    text = text.strip()
    duration = _DURATION.fullmatch(text)
    if duration:
        return now - int(duration.group(1)) * _UNIT_MS[duration.group(2)]
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
        moment = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"--since {show(text)}: use an ISO date, an ISO datetime (UTC unless it has an offset) "
                       "or a duration such as 7d, 12h, 30m") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _load(config_path: Path) -> Any:
    from node import config

    return config.load(config_path)


def _storage(cfg: Any, *, readonly: bool) -> Any:
    """The member's storage (node.store.factory), holding an audit log: BadInput "no audit log at ..." if none."""
    from node.store.errors import StoreMissing
    from node.store.factory import open_storage, open_storage_readonly

    with open_storage_readonly(cfg) as storage:
        try:
            storage.audit()
        except StoreMissing as exc:
            raise BadInput(f"no audit log at {exc.location}") from None
    return open_storage_readonly(cfg) if readonly else open_storage(cfg)


def _member_identity(text: str) -> str:
    from node.domain.regions import COORDINATOR_URI, is_province, province_uri

    if is_province(text):
        return province_uri(text)
    if text == "coordinator":
        return COORDINATOR_URI
    return text


def _check_out(args: argparse.Namespace) -> None:
    """Refuse an existing --out before any work unless --force (the write checks again, atomically)."""
    if args.out is not None:
        files.refuse_existing(args.out, replace=args.force)


# -- verify ----------------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    from node.member import Member
    from node.store.audit import (
        CHECKPOINT_FILE, AuditLog, CheckpointInvalid, iso_utc, read_checkpoint_blobs, verify_checkpoint,
    )  # fmt: skip

    from node.cli.coordinator_cmd import _summary, _witness_json, _witnessed
    from node.store import witness

    cfg = _load(args.config)
    storage = _storage(cfg, readonly=True)
    heads, invalid_heads = _witnessed(cfg, args.witness, "audit")
    sources: list[tuple[str, int, bytes | None, str | None]] = [
        (f"local {CHECKPOINT_FILE} line {n}", n, blob, problem)
        for n, blob, problem in storage.checkpoints().read()
    ]
    for file in args.checkpoint:
        try:
            lines = read_checkpoint_blobs(file)
        except OSError as exc:
            raise BadInput(f"cannot read checkpoint file {file}: {exc.strerror}") from None
        if not lines:
            raise BadInput(f"checkpoint file {file} holds no checkpoint")
        sources.extend((f"{file} line {n}" if len(lines) > 1 else str(file), n, blob, problem)
                       for n, blob, problem in lines)
    checked: list[dict[str, Any]] = []
    expect: list[tuple[int, bytes]] = []
    expect_of: list[int] = []  # position in `checked` of each expected head
    verifier = Member(cfg).verifier if any(blob is not None for _, _, blob, _ in sources) else None
    for label, _, blob, problem in sources:
        row: dict[str, Any] = {"source": label}
        if blob is not None and verifier is not None:
            try:
                cp = verify_checkpoint(blob, verifier, member=cfg.identity, at_signing_time=True)
            except CheckpointInvalid as exc:
                problem = str(exc)
            else:
                row.update(index=cp.index, head=cp.head.hex(), at=iso_utc(cp.at_ms))
                expect.append(cp.expect_head)
                expect_of.append(len(checked))
        row["status"] = f"invalid: {problem}" if problem else "unchecked"
        checked.append(row)

    with storage:
        log = AuditLog(storage.audit())
        report = log.verify([*expect, *(h.expect for h in heads)])
        missing_guards = log.missing_guards()
        table_guards = storage.missing_guards()  # the checkpoint book's, probing ledger's, facts' (PostgreSQL)
    by_store = {"audit": list(missing_guards), **{what: list(names) for what, names in table_guards.items()}}
    missing_guards = tuple(name for names in by_store.values() for name in names)
    for pos, result in zip(expect_of, report.checkpoints[:len(expect)], strict=True):
        checked[pos]["status"] = result.status
    witnessed = None if not args.witness else witness.check_audit(
        [(h, r.status) for h, r in zip(heads, report.checkpoints[len(expect):], strict=True)], report.head_index)
    bad_checkpoints = [c for c in checked if c["status"].startswith("invalid")]
    ok = report.ok and not bad_checkpoints and not invalid_heads

    if args.json:
        print(json.dumps({
            "ok": ok, "entries": report.count, "anchor": report.anchor_index, "head_index": report.head_index,
            "head": report.head_hash.hex(), "first_bad": report.first_bad, "reason": report.reason,
            "bad_key": report.bad_key, "checkpoints": checked, "missing_guards": list(missing_guards),
            "missing_guards_by_store": by_store,
            **_witness_json(args.witness, witnessed, invalid_heads),
        }))  # fmt: skip
    elif witnessed is not None and not witnessed.ok:
        print(f"AUDIT LOG {'TRUNCATED' if witnessed.truncated else 'REWRITTEN'}: {witnessed.reason}")
    elif not report.ok:
        where = f" (record key {report.bad_key!r})" if report.bad_key else ""
        print(f"AUDIT LOG TAMPERED: {report.reason}{where}")
    elif bad_checkpoints:
        for c in bad_checkpoints:
            print(f"CHECKPOINT INVALID: {c['source']}: {c['status'][len('invalid: '):]}")
    elif invalid_heads:
        print(f"WITNESS INVALID: {invalid_heads[0]}")
    else:
        span = f"entries {report.anchor_index}..{report.head_index}" if report.count else "no entries"
        counts: dict[str, int] = {}
        for c in checked:
            counts[c["status"]] = counts.get(c["status"], 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
        print(f"audit log intact: {span}, head {report.head_hash.hex()[:16]}; checkpoints: {summary}"
              + ("" if witnessed is None else f"; witnessed heads: {_summary(witnessed)}"))
    if missing_guards and not args.json:
        print(f"warning: store guards missing: {', '.join(missing_guards)}", file=sys.stderr)
    return 0 if ok else 1


# -- export and prune ------------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:
    from node.store.audit import AuditLog, export_row

    cfg = _load(args.config)
    since_ms = parse_since(args.since) if args.since else None
    _check_out(args)
    with _storage(cfg, readonly=True) as storage:
        log = AuditLog(storage.audit())
        if args.out is None:
            count = _write_rows(log.entries(since_ms=since_ms), export_row, sys.stdout)
        else:
            with files.atomic(args.out, replace=args.force) as out:
                count = _write_rows(log.entries(since_ms=since_ms), export_row, out)
    if args.out is not None:
        print(f"exported {count} audit entries to {args.out}", file=sys.stderr)
    return 0


def _write_rows(entries: Any, to_row: Any, out: IO[str]) -> int:
    count = 0
    for entry in entries:
        out.write(json.dumps(to_row(entry), sort_keys=True, separators=(",", ":")) + "\n")
        count += 1
    return count


def _prune(args: argparse.Namespace) -> int:
    from node.store.audit import DAY_MS, iso_utc, retention_days
    from node.store.factory import open_audit_log

    cfg = _load(args.config)
    days = retention_days(cfg.path)
    now = time.time_ns() // 1_000_000
    with _storage(cfg, readonly=False) as storage, open_audit_log(storage, cfg) as log:
        removed = log.prune(now)
        anchor, _ = log.anchor()
    cutoff = iso_utc(now - days * DAY_MS)
    if args.json:
        print(json.dumps({"removed": removed, "retention_days": days, "cutoff": cutoff, "anchor": anchor}))
    else:
        print(f"pruned {removed} audit entries older than {days} days (before {cutoff}); "
              f"history now starts at entry {anchor}")
    return 0


# -- checkpoints -----------------------------------------------------------------------------


def _checkpoint(args: argparse.Namespace) -> int:
    from node.member import Member
    from node.store.audit import CHECKPOINT_FILE, AuditLog, make_checkpoint

    cfg = _load(args.config)
    if cfg.is_coordinator:
        raise BadInput("checkpoints are made by province nodes; on the coordinator use export-checkpoint")
    _check_out(args)
    with _storage(cfg, readonly=False) as storage:
        file = storage.checkpoints()
        with AuditLog(storage.audit()) as log:
            signed = make_checkpoint(log, Member(cfg).signer, cfg.identity, prev=file.last_link())
        file.append(signed)
    line = signed.to_json_line()
    if args.out is not None:
        files.write_file(args.out, line + "\n", replace=args.force)
    if args.json:
        print(line)
    else:
        cp = signed.checkpoint
        print(f"checkpoint of {cp.member} at entry {cp.index}, head {cp.head.hex()[:16]}, "
              f"kept in {cfg.data_dir / CHECKPOINT_FILE}" + (f" and written to {args.out}" if args.out else ""))
    return 0


def _export_checkpoint(args: argparse.Namespace) -> int:
    from node.member import Member
    from node.store.audit import CheckpointStore
    from node.store.errors import StoreMissing
    from node.store.factory import open_storage_readonly

    cfg = _load(args.config)
    if not cfg.is_coordinator:
        raise BadInput("export-checkpoint reads the coordinator's ledger: give the coordinator's config")
    _check_out(args)
    with open_storage_readonly(cfg) as storage:
        try:
            chain = storage.ledger()
        except StoreMissing as exc:
            raise BadInput(f"no ledger at {exc.location}") from None
        member = _member_identity(args.member)
        # Every checkpoint, not just the latest: a history rewritten below an old checkpoint and
        # then checkpointed again is still caught by the old one.
        held = CheckpointStore(chain, Member(cfg).verifier).all_signed(member)
    if not held:
        raise BadInput(f"the coordinator holds no checkpoint from {member}")
    text = "".join(signed.to_json_line() + "\n" for signed in held)
    if args.out is None:
        print(text, end="")
    else:
        files.write_file(args.out, text, replace=args.force)
        print(f"{len(held)} checkpoint(s) of {member} up to entry {held[-1].checkpoint.index} written to {args.out}",
              file=sys.stderr)
    return 0


# -- standalone entry point (before `audit` is registered in node.cli.main) -------------------


def run(argv: Sequence[str] | None = None) -> int:
    """`python -m node.cli.audit_cmd audit ...`: the `hedui audit` commands on their own."""
    from node.cli.main import _Parser, exit_code

    parser = _Parser(prog="hedui")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HeduiError as exc:
        print(f"hedui: {exc}", file=sys.stderr)
        return exit_code(exc)
    except OSError as exc:
        print(f"hedui: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
