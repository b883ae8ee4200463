"""`hedui consent`: register, revoke and show applicants' consents at the coordinator."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    consent = sub.add_parser("consent", help="applicant consents (核对授权书) registered at the coordinator")
    consent_sub = consent.add_subparsers(dest="consent_command", required=True)

    grant = consent_sub.add_parser("grant", help="register a household's signed verification authorisation")
    grant.add_argument("--config", required=True, type=Path, metavar="NODE_FILE")
    grant.add_argument("--id", dest="ids", action="append", required=True, metavar="ID", help="repeat for each member")
    grant.add_argument("--purpose", required=True, metavar="P")
    grant.add_argument("--scope", default="", metavar="CATEGORY,...", help="data-item categories covered (default: all the purpose allows)")
    grant.add_argument("--days", type=int, default=30, metavar="N", help="validity in days (default 30)")
    grant.add_argument("--evidence", type=Path, metavar="FILE", help="the scanned signed form; only its SHA-256 is sent")
    grant.add_argument("--case", default="", metavar="REF", help="case reference of the assistance application")
    grant.add_argument("--json", action="store_true")
    grant.set_defaults(func=_grant)

    from node.cli.batch_cmd import register_grant

    register_grant(consent_sub)

    revoke = consent_sub.add_parser("revoke", help="revoke a consent (in force everywhere within seconds)")
    revoke.add_argument("--config", required=True, type=Path, metavar="NODE_FILE")
    revoke.add_argument("consent_id", metavar="CONSENT_ID")
    revoke.add_argument("--reason", default="applicant_withdrew",
                        choices=["applicant_withdrew", "case_closed", "registered_in_error", "other"])
    revoke.add_argument("--json", action="store_true")
    revoke.set_defaults(func=_revoke)

    show = consent_sub.add_parser("show", help="show a consent's state")
    show.add_argument("--config", required=True, type=Path, metavar="NODE_FILE")
    show.add_argument("consent_id", metavar="CONSENT_ID")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_show)


def _client(args: argparse.Namespace) -> Any:
    from node.client.coordinator import CoordinatorClient
    from node.member import Member

    return CoordinatorClient(Member.from_config(args.config))


def _grant(args: argparse.Namespace) -> int:
    scopes = [s.strip() for s in args.scope.split(",") if s.strip()]
    with _client(args) as coordinator:
        info = coordinator.grant(args.ids, args.purpose, scopes=scopes, days=args.days, evidence=args.evidence,
                                 case_reference=args.case)
    print(json.dumps({"consent_id": info.consent_id}) if args.json else info.consent_id)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with _client(args) as coordinator:
        info = coordinator.revoke(args.consent_id, args.reason)
    print(json.dumps(info.to_json()) if args.json else f"{info.consent_id}: {info.state}")
    return 0


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if ms else "-"


def _show(args: argparse.Namespace) -> int:
    with _client(args) as coordinator:
        info = coordinator.show(args.consent_id)
    if args.json:
        print(json.dumps(info.to_json()))
        return 0
    print("\n".join([
        f"consent     {info.consent_id}",
        f"state       {info.state}" + (f" since {_when(info.revoked_at_ms)}" if info.revoked_at_ms else ""),
        f"purpose     {info.purpose}",
        f"scopes      {', '.join(info.scopes) or 'all the purpose allows'}",
        f"subjects    {info.subjects}",
        f"valid       {_when(info.not_before_ms)} to {_when(info.not_after_ms)}",
        f"case        {info.case_reference or '-'}",
        f"evidence    {('sha256:' + info.evidence_sha256) if info.evidence_sha256 else '-'}",
        f"ledger      entry {info.ledger_index}",
        f"request     {info.request_id}" if info.request_id
        else "request     none signed by this province: holders refuse it, register the consent again",
    ]))
    return 0
