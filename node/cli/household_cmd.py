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
MAX_CHUNK = 256  # households per batch message: 16 members each stay within one discovery (4,096 tokens)


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

    from node.cli.batch_cmd import add_results_arguments

    batch = household_sub.add_parser("check-batch", help="decide many consented households (resumable, as verify-batch)")
    add_results_arguments(batch, max_chunk=MAX_CHUNK)
    batch.add_argument("--region", metavar="CODE", help="the region of households whose rows name none")
    batch.add_argument("--period", metavar="YYYY-MM", help="the month decided (default: this month, UTC)")
    batch.set_defaults(func=_check_batch)

    verify = household_sub.add_parser("verify", help="check a decision record, or every line of check-batch results, "
                                                     "offline (exit 0 valid, 1 invalid)")
    from node.cli.answer_cmd import add_trust_arguments

    add_trust_arguments(verify)
    verify.add_argument("record", type=Path, metavar="RECORD|RESULTS.jsonl")
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


def _check_batch(args: argparse.Namespace) -> int:
    from node.cli.batch_cmd import check_shape, read_ready, run_results
    from node.client.batch import reject_household
    from node.client.coordinator import CoordinatorClient
    from node.client.household import StandardsInForce
    from node.client.household_batch import BatchHousehold, HouseholdBatchSession
    from node.client.standards import current_period
    from node.domain.standards import check_period, fallback_regions
    from node.member import Member

    if args.region is not None:
        fallback_regions(args.region)
    period = check_period(args.period) if args.period is not None else current_period()
    check_shape(args, max_chunk=MAX_CHUNK)
    member = Member.from_config(args.config)
    member.policy.purpose(args.purpose)
    ready, rejects = read_ready(args, member)
    with CoordinatorClient(member) as coordinator:
        standards = StandardsInForce(member, coordinator.signed_directory(max_age_s=0))
    households = []
    for h, receipt in ready:
        region = h.region or args.region
        try:
            if not region:
                raise BadInput("the household has no region: give a region column or --region")
            standards.find(region, args.purpose, period)
        except BadInput as exc:
            rejects.append(reject_household(h, str(exc)))
            continue
        households.append((h.key, BatchHousehold(h.key, h.ids, region, receipt)))
    return run_results(args, households, rejects, lambda: HouseholdBatchSession(member, args.purpose, period=period),
                       lambda session, chunk: session.check(chunk), verb="decided")


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
    import sys

    from node.cli.answer_cmd import evidence_of
    from node.client.decision_record import verify_record
    from node.files import parse_json

    verifier = evidence_of(args)  # signatures checked at each record's decision time
    if not args.record.is_file():
        raise BadInput(f"{args.record}: no such file")
    if _is_results(args.record):
        return _verify_results(args, verifier)
    if args.record.stat().st_size > MAX_RECORD_BYTES:
        raise BadInput(f"{args.record}: larger than a decision record can be")
    try:
        record = parse_json(args.record.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise BadInput(f"{args.record}: not a readable decision record") from None
    checked = verify_record(record, verifier)
    if args.json:
        print(json.dumps({"valid": checked.valid, "problems": list(checked.problems), "requester": checked.requester,
                          "verdict": checked.verdict, "decided_at": checked.decided_at,
                          "warnings": list(checked.warnings)}))
        return 0 if checked.valid else EXIT_INVALID
    for warning in checked.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if checked.valid:
        print(f"decision record valid: {checked.verdict}, decided by province {checked.requester} at {checked.decided_at}")
    else:
        print("decision record INVALID: " + "; ".join(checked.problems))
    return 0 if checked.valid else EXIT_INVALID


def _is_results(path: Path) -> bool:
    """Whether `path` is check-batch results (one JSON object a line, with "household"), not one saved record."""
    from node.files import parse_json

    with open(path, "rb") as f:
        first = f.readline(MAX_RECORD_BYTES)
    try:
        line = parse_json(first)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(line, dict) and "household" in line


def _verify_results(args: argparse.Namespace, verifier: Any) -> int:
    """Check every line of a results file; print the invalid ones and a count (exit 1 if any is invalid)."""
    import sys

    from node.client.decision_record import RecordCheck, check_line
    from node.domain import freetext
    from node.files import parse_json

    standards: dict[str, Any] = {}
    lines: list[dict[str, Any]] = []
    warnings: set[str] = set()
    with open(args.record, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                if len(raw) > MAX_RECORD_BYTES:
                    raise ValueError
                line = parse_json(raw)
            except (ValueError, UnicodeDecodeError):
                line = None
            checked = check_line(line, verifier, standards=standards) if line is not None else \
                RecordCheck(False, ("not a JSON line",))
            household = line.get("household") if isinstance(line, dict) and isinstance(line.get("household"), str) else ""
            lines.append({"line": n, "household": household, "valid": checked.valid, "verdict": checked.verdict,
                          "problems": list(checked.problems), "decided_at": checked.decided_at})
            warnings.update(checked.warnings)
    if not lines:
        raise BadInput(f"{args.record}: holds no results")
    valid = all(x["valid"] for x in lines)
    if args.json:
        print(json.dumps({"valid": valid, "lines": lines, "warnings": sorted(warnings)}, ensure_ascii=False))
        return 0 if valid else EXIT_INVALID
    for warning in sorted(warnings):
        print(f"warning: {warning}", file=sys.stderr)
    for x in lines:
        if not x["valid"]:
            print(f"line {x['line']} (household {freetext.show(x['household'])}): INVALID: " + "; ".join(x["problems"]))
    bad = sum(1 for x in lines if not x["valid"])
    print(f"{len(lines) - bad} of {len(lines)} decision records valid" + (f", {bad} INVALID" if bad else ""))
    return 0 if valid else EXIT_INVALID
