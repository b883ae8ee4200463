"""`hedui coordinator` and `hedui ledger`: run the coordinator and check its consent ledger."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from node.errors import BadInput


def register(sub: Any) -> None:
    coord = sub.add_parser("coordinator", help="set up and run the federation coordinator")
    coord_sub = coord.add_subparsers(dest="coordinator_command", required=True)
    init = coord_sub.add_parser("init", help="write the coordinator config and copy its keys into its data dir")
    init.add_argument("--pki", required=True, type=Path, metavar="DIR")
    init.add_argument("--listen", required=True, metavar="HOST:PORT")
    init.add_argument("--data-dir", required=True, type=Path, metavar="DIR")
    init.add_argument("--config", required=True, type=Path, metavar="FILE")
    init.set_defaults(func=_init)
    serve = coord_sub.add_parser("serve", help="run the coordinator until SIGTERM/SIGINT")
    serve.add_argument("--config", required=True, type=Path, metavar="FILE")
    serve.add_argument("--listen", metavar="HOST:PORT", help="override the configured address")
    serve.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here (overrides [metrics] listen)")
    serve.add_argument("--workers", type=int, default=1, metavar="N", help="server processes sharing the port (SO_REUSEPORT)")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)

    ledger = sub.add_parser("ledger", help="the coordinator's consent ledger")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True)
    verify = ledger_sub.add_parser("verify", help="check the hash chain: exit 0 intact, 1 tampered")
    verify.add_argument("--config", required=True, type=Path, metavar="COORD_FILE")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=_ledger_verify)


def coordinator_config(pki: Path, listen: str, data_dir: Path) -> dict[str, Any]:
    """The config table of a coordinator whose keys are installed under `data_dir`."""
    from node.cli.node_cmd import install_member_keys
    from node.domain.regions import COORDINATOR_URI

    keys = install_member_keys(pki, "coordinator", data_dir.resolve(), linkage=False)
    return {"member": {"identity": COORDINATOR_URI, "listen": listen, "data_dir": str(data_dir.resolve())},
            "keys": keys, "logging": {"level": "info"}}


def _init(args: argparse.Namespace) -> int:
    from node import config
    from node.cli.node_cmd import check_hostport

    check_hostport(args.listen)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    args.data_dir.chmod(0o700)
    config.write(args.config, coordinator_config(args.pki, args.listen, args.data_dir))
    print(f"coordinator configured: {args.config} (data in {args.data_dir.resolve()})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from node import config, logs
    from node.cli.node_cmd import run_workers_for, with_metrics
    from node.coordinator.server import CoordinatorServer
    from node.server.node_server import serve_until_signalled

    cfg = with_metrics(args, config.load(args.config))
    if args.workers != 1:
        return run_workers_for(args, "coordinator", cfg.listen)
    if not cfg.is_coordinator:
        raise BadInput("this config is a province node's (use `hedui node serve`)")
    logs.configure(args.log_level or cfg.log_level)
    asyncio.run(serve_until_signalled(CoordinatorServer(cfg, reuse_port=args.reuse_port), args.listen))
    return 0


def _ledger_verify(args: argparse.Namespace) -> int:
    from node import config
    from node.store.chain import HashChain

    cfg = config.load(args.config)
    path = cfg.data_dir / "ledger.sqlite"
    if not path.exists():
        raise BadInput(f"no ledger at {path}")
    chain = HashChain.open_readonly(path, table="ledger")
    try:
        report = chain.verify()
    finally:
        chain.close()
    if args.json:
        print(json.dumps({"ok": report.ok, "entries": report.count, "first_bad": report.first_bad,
                          "reason": report.reason, "head": report.head_hash.hex()}))
    elif report.ok:
        print(f"ledger intact: {report.count} entries, head {report.head_hash.hex()[:16]}")
    else:
        print(f"LEDGER TAMPERED: {report.reason}")
    return 0 if report.ok else 1
