"""`hedui pki`: the federation CA, member certificates and keys."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from node.cli.keys_cmd import add_secret_options, new_passphrase, secret_from


def register(sub: Any) -> None:
    pki = sub.add_parser("pki", help="federation PKI: CA, member certificates, keys")
    pki_sub = pki.add_subparsers(dest="pki_command", required=True)

    init = pki_sub.add_parser("init", help="create the federation root CA and linkage key")
    init.add_argument("--pki", required=True, type=Path, metavar="DIR")
    init.add_argument("--force", action="store_true", help="replace an existing CA (invalidates every member)")
    init.add_argument("--json", action="store_true")
    add_secret_options(init, "passphrase", "a passphrase to encrypt ca.key with")
    init.set_defaults(func=_init)

    issue = pki_sub.add_parser("issue", help="issue a province's (or the coordinator's) TLS, signing and sealing keys")
    who = issue.add_mutually_exclusive_group(required=True)
    who.add_argument("--province", metavar="CODE", help="two-digit province code, e.g. 32")
    who.add_argument("--coordinator", action="store_true", help="issue the coordinator's identity")
    issue.add_argument("--pki", required=True, type=Path, metavar="DIR")
    issue.add_argument("--host", action="append", default=[], metavar="NAME",
                       help="DNS name or IP the member is reached at, put in its TLS certificate (repeatable)")
    issue.add_argument("--loopback", action="store_true",
                       help="also name localhost, 127.0.0.1 and ::1 in the TLS certificate (tests and demos only)")
    issue.add_argument("--json", action="store_true")
    add_secret_options(issue, "passphrase", "a passphrase to encrypt the new private keys with")
    add_secret_options(issue, "ca-passphrase", "the passphrase of an encrypted ca.key")
    issue.set_defaults(func=_issue)

    _register_revoke(pki_sub)
    from node.cli import keys_cmd

    keys_cmd.register(pki_sub)


def _register_revoke(pki_sub: Any) -> None:
    revoke = pki_sub.add_parser("revoke", help="revoke a member's certificates (or serials) in the federation CRL")
    revoke.add_argument("--pki", required=True, type=Path, metavar="DIR")
    who = revoke.add_mutually_exclusive_group(required=True)
    who.add_argument("--province", metavar="CODE")
    who.add_argument("--coordinator", action="store_true")
    who.add_argument("--serial", type=int, action="append", metavar="N", help="certificate serial number (repeatable)")
    revoke.add_argument("--compromised-since", metavar="ISO_TIME", type=_instant,
                        help="the key is suspected compromised since then (e.g. 2026-11-30T08:00Z): "
                             "saved evidence signed from then on fails `answer verify` / `household verify`")
    revoke.add_argument("--publish", type=Path, metavar="COORD_CONFIG",
                        help="also install the CRL at this coordinator, which distributes it to every node")
    revoke.add_argument("--json", action="store_true")
    add_secret_options(revoke, "ca-passphrase", "the passphrase of an encrypted ca.key")
    revoke.set_defaults(func=_revoke)


def _revoke(args: argparse.Namespace) -> int:
    from node import config, files
    from node.crypto.revocation import CRL_FILE, accepted_crl, revoke

    member = "coordinator" if args.coordinator else args.province
    cfg = config.load(args.publish) if args.publish else None
    # Numbered past (and merged with) the CRL the coordinator already distributes: members refuse an older one.
    newer_than = None if cfg is None else accepted_crl(cfg.data_dir)
    report = revoke(args.pki, member=member, serials=args.serial or (), newer_than=newer_than,
                    compromised_since=args.compromised_since, ca_passphrase=secret_from(args, "ca-passphrase"))
    published = None
    if cfg is not None:
        published = cfg.data_dir / CRL_FILE
        files.write_file(published, report.path.read_bytes(), replace=True, mode=files.PUBLIC)
    _say(args, {"crl": str(report.path), "crl_number": report.crl_number, "revoked": list(report.serials),
                "published": str(published) if published else None},
         f"CRL #{report.crl_number} lists {len(report.serials)} revoked certificate(s): {report.path}"
         + (f"; published to {published}" if published else ""))
    return 0


def _instant(text: str) -> Any:
    """A timezone-aware instant from ISO 8601 text (argparse type: a bad one is a one-line usage error)."""
    import datetime as dt

    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError("give the time zone, e.g. 2026-11-30T08:00Z or +08:00")
    return when


def _init(args: argparse.Namespace) -> int:
    from node.crypto.pki import init_pki

    init_pki(args.pki, force=args.force, passphrase=new_passphrase(args))
    _say(args, {"pki": str(args.pki), "ca": str(args.pki / "ca.pem")}, f"federation CA created in {args.pki}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    from node.crypto.pki import issue_member

    member = "coordinator" if args.coordinator else args.province
    paths = issue_member(args.pki, member, hosts=args.host, loopback=args.loopback, passphrase=new_passphrase(args),
                         ca_passphrase=secret_from(args, "ca-passphrase"))
    _say(
        args,
        {"member": member, "tls_cert": str(paths.tls_cert), "sign_cert": str(paths.sign_cert), "seal_pub": str(paths.seal_pub)},
        f"issued TLS, signing and sealing keys for {member} in {paths.tls_cert.parent}",
    )
    return 0


def _say(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, ensure_ascii=False) if args.json else text)
