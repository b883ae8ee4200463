"""`hedui coordinator` and `hedui ledger`: run the coordinator and check its consent ledger."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from node.cli.node_cmd import add_config_file_options, add_key_passphrase_options, add_wait_options
from node.errors import BadInput


def register(sub: Any) -> None:
    coord = sub.add_parser("coordinator", help="set up and run the federation coordinator")
    coord_sub = coord.add_subparsers(dest="coordinator_command", required=True)
    init = coord_sub.add_parser("init", help="write the coordinator config and copy its keys into its data dir")
    init.add_argument("--pki", required=True, type=Path, metavar="DIR")
    init.add_argument("--listen", required=True, metavar="HOST:PORT")
    init.add_argument("--data-dir", required=True, type=Path, metavar="DIR")
    init.add_argument("--config", required=True, type=Path, metavar="FILE")
    add_config_file_options(init)
    add_key_passphrase_options(init)
    init.set_defaults(func=_init)
    serve = coord_sub.add_parser("serve", help="run the coordinator until SIGTERM/SIGINT")
    serve.add_argument("--config", required=True, type=Path, metavar="FILE")
    serve.add_argument("--listen", metavar="HOST:PORT", help="override the configured address")
    serve.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here (overrides [metrics] listen)")
    serve.add_argument("--workers", type=int, default=1, metavar="N", help="server processes sharing the port (SO_REUSEPORT)")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--port-file", type=Path, metavar="FILE", help="write the bound port here once serving")
    serve.set_defaults(func=_serve)

    wait = coord_sub.add_parser("wait", help="wait until the coordinator serves (exit 4 on timeout)")
    add_wait_options(wait)

    ledger = sub.add_parser("ledger", help="the coordinator's consent ledger")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True)
    verify = ledger_sub.add_parser(
        "verify", help="check the hash chain and that no committed entry was lost: exit 0 intact, 1 tampered or truncated",
        description="Recompute the hash chain from genesis and compare its end with ledger.head, the head every "
                    "commit records outside SQLite: a lost WAL or an older copy put back shows as truncated.")
    verify.add_argument("--config", required=True, type=Path, metavar="COORD_FILE")
    verify.add_argument("--witness", action="append", type=Path, default=[], metavar="DIR",
                        help="a node's witness directory (or data dir): the entry at every ledger head the "
                             "coordinator signed to it must be held with that hash (repeatable)")
    verify.add_argument("--accept-lost", action="store_true",
                        help="with --witness: accept witnessed entries the coordinator declared lost in a new "
                             "epoch (a restore you know of); without it they make the check fail (LEDGER CUT)")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=_ledger_verify)
    epoch = ledger_sub.add_parser(
        "new-epoch", help="accept a ledger that lost entries: start a new epoch at its head (coordinator stopped)",
        description="After a lost WAL or an older ledger file put back (`ledger verify` says truncated), start a "
                    "new epoch at the ledger's current head so the coordinator opens it again. Nodes then refuse "
                    "every consent of earlier epochs registered after that head: register those again. "
                    "`hedui restore` of a coordinator backup does this itself.")
    epoch.add_argument("--config", required=True, type=Path, metavar="COORD_FILE")
    epoch.add_argument("--json", action="store_true")
    epoch.set_defaults(func=_ledger_new_epoch)


def coordinator_config(pki: Path, listen: str, data_dir: Path) -> dict[str, Any]:
    """The config table of a coordinator whose keys are installed under `data_dir`."""
    from node.cli.node_cmd import install_member_keys
    from node.domain.regions import COORDINATOR_URI

    keys = install_member_keys(pki, "coordinator", data_dir.resolve(), linkage=False)
    return {"member": {"identity": COORDINATOR_URI, "listen": listen, "data_dir": str(data_dir.resolve())},
            "keys": keys, "logging": {"level": "info"}}


def _init(args: argparse.Namespace) -> int:
    from node import config
    from node.cli.node_cmd import check_hostport, config_file_keys, key_passphrase_keys

    check_hostport(args.listen)
    files = config_file_keys(args)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    args.data_dir.chmod(0o700)
    table = coordinator_config(args.pki, args.listen, args.data_dir)
    table["keys"] |= files
    table["keys"] |= key_passphrase_keys(args, table["keys"])
    config.write(args.config, table)
    print(f"coordinator configured: {args.config} (data in {args.data_dir.resolve()})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from node import config, logs
    from node.cli.node_cmd import port_file_writer, run_workers_for, with_metrics
    from node.coordinator.server import CoordinatorServer
    from node.server.node_server import serve_until_signalled

    cfg = with_metrics(args, config.load(args.config))
    if args.workers != 1:
        return run_workers_for(args, "coordinator", cfg.listen)
    if not cfg.is_coordinator:
        raise BadInput("this config is a province node's (use `hedui node serve`)")
    logs.configure(args.log_level or cfg.log_level, worker_pid=os.getpid() if args.reuse_port else None)
    asyncio.run(serve_until_signalled(CoordinatorServer(cfg, reuse_port=args.reuse_port), args.listen,
                                      on_ready=port_file_writer(args.port_file)))
    return 0


def _ledger_verify(args: argparse.Namespace) -> int:
    from node import config
    from node.store import ledger, witness
    from node.store.sqlite import ledger as sqlite_ledger
    from node.store.errors import StoreCorrupt, StoreMissing
    from node.store.factory import open_storage_readonly

    cfg = config.load(args.config)
    storage = open_storage_readonly(cfg)
    try:
        chain = storage.ledger()
    except StoreMissing as exc:
        storage.close()
        raise BadInput(f"no ledger at {exc.location}") from None
    heads, invalid = _witnessed(cfg, args.witness, "ledger")
    try:
        head = sqlite_ledger.HeadFile(cfg.data_dir / sqlite_ledger.HEAD_FILE).read()
        head_problem = None
    except StoreCorrupt as exc:
        head, head_problem = None, str(exc)
    try:
        report = chain.verify()
        identity = ledger.read_identity(chain) if report.ok else None
        truncated = sqlite_ledger.truncation(chain, head) if report.ok else None
        witnessed = None if not report.ok or not args.witness else witness.check_ledger(
            chain, heads, epoch=b"" if identity is None else identity.epoch,
            ledger_id=b"" if identity is None else identity.ledger_id, lineage=() if identity is None else identity.lineage)
    finally:
        storage.close()
    if head_problem is None and head is None and report.ok and (identity is not None or report.count == 0):
        head_problem = (f"{sqlite_ledger.HEAD_FILE} is missing: a truncated ledger cannot be told from a complete one "
                        "(if no entry was lost: `hedui ledger new-epoch`)")
    lost = [] if witnessed is None else [c.head for c in witnessed.checked if c.status == "lost"]
    cut = bool(lost) and not args.accept_lost  # entries nodes saw, declared lost by the coordinator itself
    ok = (report.ok and truncated is None and head_problem is None and not invalid and not cut
          and (witnessed is None or witnessed.ok))
    if args.json:
        print(json.dumps({"ok": ok, "entries": report.count, "first_bad": report.first_bad,
                          "reason": report.reason or truncated or head_problem, "head": report.head_hash.hex(),
                          "truncated": truncated is not None,
                          "committed_head": None if head is None else {"index": head.index, "hash": head.hash.hex()},
                          "ledger_id": None if identity is None else identity.ledger_id.hex(),
                          "epoch": None if identity is None else identity.epoch.hex(),
                          **_witness_json(args.witness, witnessed, invalid)}))
    elif not report.ok:
        print(f"LEDGER TAMPERED: {report.reason}")
    elif witnessed is not None and not witnessed.ok:
        print(f"LEDGER {'TRUNCATED' if witnessed.truncated else 'REWRITTEN'}: {witnessed.reason}")
    elif invalid:
        print(f"WITNESS INVALID: {invalid[0]}")
    elif cut:
        top = max(lost, key=lambda h: h.index)
        print(f"LEDGER CUT: the coordinator declared entries lost in a new epoch after nodes had witnessed "
              f"them, up to entry {top.index} ({top.source}): a restore, or history cut; "
              "if it was a restore you know of, check again with --accept-lost")
    elif truncated is not None:
        print(f"LEDGER TRUNCATED: {truncated}")
    elif head_problem is not None:
        print(f"LEDGER UNCONFIRMED: {head_problem}")
    else:
        epoch = "" if identity is None else f", epoch {identity.epoch.hex()[:16]}"
        print(f"ledger intact: {report.count} entries, head {report.head_hash.hex()[:16]}{epoch}"
              + ("" if witnessed is None else f"; witnessed heads: {_summary(witnessed)}"))
    return 0 if ok else 1


def _witnessed(cfg: Any, directories: list[Path], kind: str) -> tuple[list[Any], list[str]]:
    """The coordinator's heads witnessed in `directories` (re-verified), and the lines that do not verify."""
    if not directories:
        return [], []
    from node.coordinator.audit_heads import load_witnesses
    from node.member import Member
    from node.store import witness

    if not cfg.is_coordinator:
        raise BadInput("--witness checks the coordinator's chains: give the coordinator's config")
    name = witness.LEDGER_HEADS if kind == "ledger" else witness.AUDIT_HEADS
    return load_witnesses(directories, name, Member(cfg).verifier)


def _witness_json(directories: list[Path], report: Any, invalid: list[str]) -> dict[str, Any]:
    """The `witness` key of `--json` output (only with --witness, so the output without it is unchanged)."""
    if not directories:
        return {}
    return {"witness": {"ok": report is not None and report.ok and not invalid,
                        "first_bad": None if report is None else report.first_bad,
                        "reason": None if report is None else report.reason,
                        "truncated": report is not None and report.truncated,
                        "heads": [] if report is None else report.to_json(), "invalid": invalid}}


def _summary(report: Any) -> str:
    counts: dict[str, int] = {}
    for c in report.checked:
        counts[c.status] = counts.get(c.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"


def _ledger_new_epoch(args: argparse.Namespace) -> int:
    from node import config
    from node.store.sqlite import ledger as sqlite_ledger
    from node.store.sqlite.backup import ensure_idle

    cfg = config.load(args.config)
    if cfg.store_url.lower().startswith(("postgresql:", "postgres:")):  # the ledger table, this host's head file
        from node.store.postgres.backup import new_epoch

        identity, kept = new_epoch(cfg.store_url, cfg.data_dir)
    else:
        path = cfg.data_dir / sqlite_ledger.LEDGER_FILE
        if not path.exists():
            raise BadInput(f"no ledger at {path}")
        ensure_idle(path)
        identity, kept = sqlite_ledger.new_epoch(cfg.data_dir)
    if args.json:
        print(json.dumps({"epoch": identity.epoch.hex(), "kept_index": kept, "ledger_id": identity.ledger_id.hex()}))
    else:
        print(f"new ledger epoch {identity.epoch.hex()[:16]} at entry {kept + 1}")
    print(f"WARNING: nodes refuse every consent of earlier epochs registered after entry {kept}: register those again",
          file=sys.stderr)
    return 0
