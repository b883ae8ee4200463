"""`hedui node`: set up, run and inspect a province node."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

from node.errors import BadInput


def register(sub: Any) -> None:
    node = sub.add_parser("node", help="set up, run and inspect a province node")
    node_sub = node.add_subparsers(dest="node_command", required=True)

    init = node_sub.add_parser("init", help="write a node config and copy the province's keys into its data dir")
    init.add_argument("--pki", required=True, type=Path, metavar="DIR")
    init.add_argument("--province", required=True, metavar="CODE")
    init.add_argument("--listen", required=True, metavar="HOST:PORT")
    init.add_argument("--data-dir", required=True, type=Path, metavar="DIR")
    init.add_argument("--config", required=True, type=Path, metavar="FILE")
    init.add_argument("--coordinator", metavar="HOST:PORT", help="the federation coordinator")
    init.set_defaults(func=_init)

    serve = node_sub.add_parser("serve", help="run the node until SIGTERM/SIGINT")
    serve.add_argument("--config", required=True, type=Path, metavar="FILE")
    serve.add_argument("--listen", metavar="HOST:PORT", help="override the configured address")
    serve.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here (overrides [metrics] listen)")
    serve.add_argument("--workers", type=int, default=1, metavar="N", help="server processes sharing the port (SO_REUSEPORT)")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--port-file", type=Path, metavar="FILE", help="write the bound port here once serving")
    serve.set_defaults(func=_serve)

    rotate = node_sub.add_parser("rotate", help="install the province's newly issued keys; a running node picks them up")
    rotate.add_argument("--config", required=True, type=Path, metavar="FILE")
    rotate.add_argument("--pki", required=True, type=Path, metavar="DIR")
    rotate.set_defaults(func=_rotate)

    status = node_sub.add_parser("status", help="show the node's identity and store size")
    status.add_argument("--config", required=True, type=Path, metavar="FILE")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)


def copy_secret(src: Path, dst: Path, *, private: bool) -> None:
    """Copy a key or certificate; private files are created 0600, never widened afterwards."""
    data = src.read_bytes()
    tmp = dst.with_name(dst.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, dst)


def install_member_keys(pki_dir: Path, member: str, data_dir: Path, *, linkage: bool) -> dict[str, str]:
    """Copy one member's key material from a PKI dir into `data_dir/keys`; return the [keys] table."""
    from node.crypto.pki import member_paths

    paths = member_paths(pki_dir, member)
    if not paths.tls_cert.exists():
        raise BadInput(f"no keys issued for {member} in {pki_dir}: run `hedui pki issue --pki {pki_dir} "
                       f"{'--coordinator' if member == 'coordinator' else '--province ' + member}` first")
    keys_dir = data_dir / "keys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    table: dict[str, str] = {}
    files = {
        "ca_cert": (paths.ca_cert, False), "tls_cert": (paths.tls_cert, False), "tls_key": (paths.tls_key, True),
        "sign_cert": (paths.sign_cert, False), "sign_key": (paths.sign_key, True),
        "seal_key": (paths.seal_key, True), "seal_pub": (paths.seal_pub, False),
    }
    if linkage:
        files["linkage_key"] = (paths.linkage_key, True)
    for name, (src, private) in files.items():
        dst = keys_dir / src.name
        copy_secret(src, dst, private=private)
        table[name] = str(dst.resolve())
    return table


def _init(args: argparse.Namespace) -> int:
    from node import config
    from node.domain.regions import is_province, province_uri
    from node.store.store import Store

    if not is_province(args.province):
        raise BadInput(f"unknown province code {args.province!r}")
    check_hostport(args.listen)
    if args.coordinator:
        check_hostport(args.coordinator)
    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)  # the store, audit log and keys are the operator's alone
    keys = install_member_keys(args.pki, args.province, data_dir, linkage=True)
    member: dict[str, Any] = {
        "identity": province_uri(args.province), "province": args.province,
        "listen": args.listen, "data_dir": str(data_dir),
    }
    if args.coordinator:
        member["coordinator"] = args.coordinator
    config.write(args.config, {"member": member, "keys": keys, "logging": {"level": "info"}})
    Store.open(data_dir).close()
    print(f"node {args.province} configured: {args.config} (data in {data_dir})")
    return 0


def check_hostport(value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BadInput(f"address must be HOST:PORT, got {value!r}")


def run_workers_for(args: argparse.Namespace, kind: str, listen: str) -> int:
    """`hedui KIND serve --workers N`: N server processes on one port (node.server.workers)."""
    from node.server.workers import run_workers

    if not 1 <= args.workers <= 64:
        raise BadInput("--workers must be 1 to 64")
    return run_workers(kind, args.config, args.listen or listen, args.workers, metrics=args.metrics,
                       log_level=args.log_level)


def with_metrics(args: argparse.Namespace, cfg: Any) -> Any:
    """The config with `--metrics HOST:PORT` applied over `[metrics] listen`; ConfigError (exit 2)
    for an address metrics may not be served on (node.server.metrics.listen_address)."""
    import dataclasses

    from node.server.metrics import listen_address

    cfg = dataclasses.replace(cfg, metrics_listen=args.metrics) if args.metrics else cfg
    if cfg.metrics_listen:
        listen_address(cfg)
    return cfg


def _serve(args: argparse.Namespace) -> int:
    from node import config, logs
    from node.server.node_server import NodeServer, serve_until_signalled

    cfg = with_metrics(args, config.load(args.config))
    if args.workers != 1:
        return run_workers_for(args, "node", cfg.listen)
    if cfg.province is None:
        raise BadInput("this config is not a province node's (use `hedui coordinator serve`)")
    logs.configure(args.log_level or cfg.log_level)
    server = NodeServer(cfg, reuse_port=args.reuse_port)

    def ready(port: int) -> None:
        if args.port_file:
            args.port_file.write_text(f"{port}\n")

    asyncio.run(serve_until_signalled(server, args.listen, on_ready=ready))
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from node import config

    cfg = config.load(args.config)
    member = cfg.province or "coordinator"
    install_member_keys(args.pki, member, cfg.data_dir, linkage=cfg.linkage_key is not None)
    print(f"installed new keys for {member} in {cfg.data_dir / 'keys'}; a running server uses them within seconds")
    return 0


def _status(args: argparse.Namespace) -> int:
    from node import config
    from node.store.store import Store

    cfg = config.load(args.config)
    with Store.open(cfg.data_dir) as store:
        counts = store.counts()
    data = {"identity": cfg.identity, "province": cfg.province, "listen": cfg.listen, **counts}
    print(json.dumps(data) if args.json else "\n".join(f"{k}: {v}" for k, v in data.items()))
    return 0
