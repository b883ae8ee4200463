"""`hedui household`: the household means test across provinces, and its signed decision record."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from node import files
from node.domain.regions import province_name
from node.errors import BadInput

EXIT_INVALID = 1
MAX_RECORD_BYTES = 16 * 1024 * 1024


def register(sub: Any) -> None:
    household = sub.add_parser("household", help="the household means test across provinces")
    household_sub = household.add_subparsers(dest="household_command", required=True)

    check = household_sub.add_parser("check", help="decide one consented household on its region's published standard")
    check.add_argument("--config", required=True, type=Path, metavar="NODE_FILE")
    check.add_argument("--consent", required=True, metavar="CONSENT_ID")
    check.add_argument("--id", dest="ids", action="append", required=True, metavar="ID", help="ID number; repeat for each member")
    check.add_argument("--purpose", required=True, metavar="P")
    check.add_argument("--region", required=True, metavar="CODE", help="the household's GB/T 2260 region (county or city)")
    check.add_argument("--period", metavar="YYYY-MM", help="the month decided (default: this month, UTC)")
    check.add_argument("--deadline", type=float, default=None, metavar="SECONDS")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.add_argument("--save", type=Path, metavar="RECORD", help="keep the signed decision record for `household verify`")
    check.add_argument("--force", action="store_true", help="replace RECORD if it exists")
    check.set_defaults(func=_check)

    verify = household_sub.add_parser("verify", help="check a decision record offline (exit 0 valid, 1 invalid)")
    where = verify.add_mutually_exclusive_group(required=True)
    where.add_argument("--pki", type=Path, metavar="DIR", help="PKI dir holding ca.pem")
    where.add_argument("--ca", type=Path, metavar="FILE", help="the federation CA certificate")
    verify.add_argument("record", type=Path, metavar="RECORD")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=_verify)


def _check(args: argparse.Namespace) -> int:
    from node.client.coordinator import fetch_receipt
    from node.client.household import household_check
    from node.domain.standards import check_period, fallback_regions
    from node.member import Member

    if args.deadline is not None and args.deadline <= 0:
        raise BadInput("--deadline must be positive")
    fallback_regions(args.region)  # a 6-digit region code, else one line and exit 2
    if args.period is not None:
        check_period(args.period)
    if args.save:
        files.refuse_existing(args.save, replace=args.force)  # before anything is asked
    member = Member.from_config(args.config)
    consent = fetch_receipt(member, args.consent, deadline_s=args.deadline)
    result = household_check(member, args.ids, args.purpose, args.region, consent=consent, period=args.period,
                             deadline_s=args.deadline)
    if args.save:
        files.write_file(args.save, json.dumps(result.record, ensure_ascii=False, indent=1) + "\n", replace=args.force)
    print(json.dumps(result.to_json(), ensure_ascii=False) if args.json else render(result.to_json()))
    return 0


def render(data: dict[str, Any]) -> str:
    """A caseworker's summary: verdict, allowance, income per person against the standard, each rule, each province."""
    yuan = lambda fen: f"{fen / 100:,.2f} yuan"  # noqa: E731 - display only; every figure stays integer fen
    lines = [f"household of {data['members']} in region {data['region']}, {data['period']} ({data['purpose']}): "
             f"{data['verdict']}"]
    if data["verdict"] == "ELIGIBLE":
        lines.append(f"  allowance: {yuan(data['allowance'])} a month")
    lines.append(f"  income per person: {yuan(data['income_per_person'])} a month "
                 f"(standard {yuan(data['standard_per_person'])})")
    for rule, ok in sorted(data["rules"].items()):
        lines.append(f"  rule {rule}: {'met' if ok else 'NOT met'}")
    shown = ", ".join(f"{p} {province_name(p)} {s}" for p, s in sorted(data["routing"].items()))
    lines.append(f"  provinces: {shown or 'none'}")
    if data["missing"]:
        lines.append(f"  missing (the decision is incomplete): {', '.join(data['missing'])}")
    if data["as_of"]["from"]:
        lines.append(f"  data as of {data['as_of']['from']} to {data['as_of']['to']}")
    return "\n".join(lines)


def _verify(args: argparse.Namespace) -> int:
    from node.client.decision_record import verify_record
    from node.crypto import pki, signing
    from node.files import parse_json

    ca = args.ca or args.pki / "ca.pem"
    verifier = signing.Verifier(pki.TrustAnchor.load(ca))
    if not args.record.is_file():
        raise BadInput(f"{args.record}: no such file")
    if args.record.stat().st_size > MAX_RECORD_BYTES:
        raise BadInput(f"{args.record}: larger than a decision record can be")
    try:
        record = parse_json(args.record.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise BadInput(f"{args.record}: not a readable decision record") from None
    checked = verify_record(record, verifier)
    if args.json:
        print(json.dumps({"valid": checked.valid, "problems": list(checked.problems), "requester": checked.requester,
                          "verdict": checked.verdict}))
    elif checked.valid:
        print(f"decision record valid: {checked.verdict}, decided by province {checked.requester}")
    else:
        print("decision record INVALID: " + "; ".join(checked.problems))
    return 0 if checked.valid else EXIT_INVALID
