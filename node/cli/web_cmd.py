"""`hedui web`: the caseworkers' web application (serve) and its accounts (user add)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from node.errors import BadInput


def register(sub: Any) -> None:
    web = sub.add_parser("web", help="the caseworkers' web application")
    web_sub = web.add_subparsers(dest="web_command", required=True)

    serve = web_sub.add_parser("serve", help="serve the web application for this province's staff")
    serve.add_argument("--config", required=True, type=Path, metavar="NODE_FILE")
    serve.add_argument("--listen", required=True, metavar="HOST:PORT")
    serve.add_argument("--idle-minutes", type=int, default=15, metavar="N", help="sign out after N idle minutes (default 15)")
    serve.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve HTTPS with this certificate (cookies become Secure)")
    serve.add_argument("--tls-key", type=Path, metavar="FILE")
    serve.set_defaults(func=_serve)

    user = web_sub.add_parser("user", help="web accounts")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="create an account (password prompted, or --password-stdin)")
    add.add_argument("--config", required=True, type=Path, metavar="NODE_FILE")
    add.add_argument("--name", required=True, metavar="N")
    add.add_argument("--role", required=True, choices=["caseworker", "supervisor", "auditor"])
    add.add_argument("--office", metavar="CODE", help="the office's 6-digit region code (default: the province, NN0000)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of standard input")
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=_user_add)


def _serve(args: argparse.Namespace) -> int:
    from node.web.app import serve

    if not 1 <= args.idle_minutes <= 24 * 60:
        raise BadInput("--idle-minutes must be 1 to 1440")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise BadInput("--tls-cert and --tls-key go together")
    serve(args.config, args.listen, idle_s=args.idle_minutes * 60, tls_cert=args.tls_cert, tls_key=args.tls_key)
    return 0


def _user_add(args: argparse.Namespace) -> int:
    from node.member import Member
    from node.web.accounts import Accounts
    from node.web.db import WebDb

    member = Member.from_config(args.config)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise BadInput("the two passwords differ")
    db = WebDb(member.cfg.data_dir)
    try:
        account = Accounts(db).add(args.name, args.role, args.office or f"{member.province}0000", password)
    finally:
        db.close()
    if args.json:
        print(json.dumps({"id": account.id, "name": account.name, "role": account.role.value, "office": account.office}))
    else:
        print(f"account {account.id} ({account.name}, {account.role.value}, office {account.office})")
    return 0
