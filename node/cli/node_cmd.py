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
    init.add_argument("--coordinator", action="append", metavar="HOST:PORT[,HOST:PORT]",
                      help="the federation coordinator; repeat (or comma-separate) for each of its replicas")
    add_config_file_options(init)
    add_key_passphrase_options(init)
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

    wait = node_sub.add_parser("wait", help="wait until the node serves and the coordinator routes to it (exit 4 on timeout)")
    add_wait_options(wait)

    status = node_sub.add_parser("status", help="show the node's identity and store size")
    status.add_argument("--config", required=True, type=Path, metavar="FILE")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)


def add_config_file_options(parser: Any) -> None:
    """`--catalogue FILE` and `--policy FILE` for `node init` and `coordinator init`."""
    parser.add_argument("--catalogue", type=Path, metavar="FILE",
                        help="a province's own data-item catalogue (default: the national one shipped with hedui)")
    parser.add_argument("--policy", type=Path, metavar="FILE",
                        help="a province's own purpose policy (default: the one shipped with hedui)")


def add_key_passphrase_options(parser: Any) -> None:
    """`--passphrase-file FILE` / `--passphrase-credential NAME` of `node init` and `coordinator init`."""
    from node.cli.keys_cmd import add_secret_options

    add_secret_options(parser, "passphrase", "the passphrase of encrypted key files (recorded in [keys])")


def key_passphrase_keys(args: argparse.Namespace, keys: dict[str, str]) -> dict[str, str]:
    """The [keys] passphrase entries of init's options, after checking the installed keys open with it."""
    from node.cli.keys_cmd import passphrase_keys, secret_from
    from node.crypto import keyfile

    source = secret_from(args, "passphrase")
    for name in ("tls_key", "sign_key", "seal_key"):
        if name in keys and keyfile.is_encrypted(Path(keys[name])):
            keyfile.load_private_key(Path(keys[name]), source)  # no or a wrong passphrase: one line, exit 2
    return passphrase_keys(source)


def config_file_keys(args: argparse.Namespace) -> dict[str, str]:
    """The [keys] entries naming the catalogue and policy files given at init, after checking both load."""
    from node.domain.catalogue import load_catalogue
    from node.domain.policy import load_policy

    catalogue = load_catalogue(args.catalogue.resolve() if args.catalogue else None)
    load_policy(args.policy.resolve() if args.policy else None, catalogue=catalogue)
    return {name: str(path.resolve()) for name, path in (("catalogue", args.catalogue), ("policy", args.policy)) if path}


def add_wait_options(parser: Any) -> None:
    """`hedui node wait` / `hedui coordinator wait`: for scripts that start servers in the background."""
    parser.add_argument("--config", required=True, type=Path, metavar="FILE")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="give up after this long (default 30)")
    parser.add_argument("--to", metavar="HOST:PORT", help="the server's address (default: the configured listen address)")
    parser.set_defaults(func=_wait)


def _wait(args: argparse.Namespace) -> int:
    from node.client.ready import wait_ready
    from node.member import Member

    if args.to:
        check_hostport(args.to)
    member = Member.from_config(args.config)
    address = wait_ready(member, timeout_s=args.timeout, address=args.to)
    print(f"{member.cfg.identity} ready at {address}")
    return 0


def copy_secret(src: Path, dst: Path, *, private: bool) -> None:
    """Copy a key or certificate; private files are created 0600, never widened afterwards."""
    from node import files

    files.write_file(dst, src.read_bytes(), replace=True, mode=files.PRIVATE if private else files.PUBLIC)


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
    if not paths.sign_key.exists() and paths.sign_cert.exists():
        del files["sign_key"]  # the signing key is in a PKCS#11 token (`hedui pki hsm-generate`)
    for name, (src, private) in files.items():
        dst = keys_dir / src.name
        copy_secret(src, dst, private=private)
        table[name] = str(dst.resolve())
    return table


def _init(args: argparse.Namespace) -> int:
    from node import config
    from node.domain.regions import is_province, province_uri
    from node.store.factory import open_storage

    if not is_province(args.province):
        raise BadInput(f"unknown province code {args.province!r}")
    check_hostport(args.listen)
    coordinators = coordinator_endpoints(args.coordinator or [])
    files = config_file_keys(args)
    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)  # the store, audit log and keys are the operator's alone
    keys = install_member_keys(args.pki, args.province, data_dir, linkage=True) | files
    keys |= key_passphrase_keys(args, keys)
    member: dict[str, Any] = {
        "identity": province_uri(args.province), "province": args.province,
        "listen": args.listen, "data_dir": str(data_dir),
    }
    if coordinators:  # one endpoint stays a string (as before); several replicas are a TOML array
        member["coordinator"] = coordinators[0] if len(coordinators) == 1 else coordinators
    config.write(args.config, {"member": member, "keys": keys, "logging": {"level": "info"}})
    with open_storage(config.load(args.config)) as storage:
        storage.facts().close()
    print(f"node {args.province} configured: {args.config} (data in {data_dir})")
    return 0


def coordinator_endpoints(values: list[str]) -> list[str]:
    """The `--coordinator` options (each may be a comma list) as distinct HOST:PORT endpoints, in order."""
    endpoints = [e.strip() for v in values for e in v.split(",")]
    for endpoint in endpoints:
        check_hostport(endpoint)
    if len(set(endpoints)) != len(endpoints):
        raise BadInput("--coordinator names the same endpoint twice")
    return endpoints


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
    logs.configure(args.log_level or cfg.log_level, worker_pid=os.getpid() if args.reuse_port else None)
    server = NodeServer(cfg, reuse_port=args.reuse_port)
    asyncio.run(serve_until_signalled(server, args.listen, on_ready=port_file_writer(args.port_file)))
    return 0


def port_file_writer(path: Path | None) -> Any:
    """The on_ready hook of `serve --port-file FILE`: the bound port, written once serving."""
    def ready(port: int) -> None:
        if path is not None:  # written whole, then renamed: a reader never sees a partial file
            from node import files

            files.write_file(path, f"{port}\n", replace=True, mode=files.PUBLIC)
    return ready


def _rotate(args: argparse.Namespace) -> int:
    from node import config

    cfg = config.load(args.config)
    member = cfg.province or "coordinator"
    install_member_keys(args.pki, member, cfg.data_dir, linkage=cfg.linkage_key is not None)
    print(f"installed new keys for {member} in {cfg.data_dir / 'keys'}; a running server uses them within seconds")
    return 0


def _status(args: argparse.Namespace) -> int:
    from node import __version__, config
    from node.store.factory import open_storage

    cfg = config.load(args.config)
    with open_storage(cfg) as storage, storage.facts() as store:
        counts = store.counts()
        counts["subjects_without_possession_key"] = store.missing_possession()  # > 0: re-ingest before serving
    data = {"identity": cfg.identity, "province": cfg.province, "listen": cfg.listen, "version": __version__, **counts}
    print(json.dumps(data) if args.json else "\n".join(f"{k}: {v}" for k, v in data.items()))
    return 0
