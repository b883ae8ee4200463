"""`hedui verify`: ask peers a signed, minimal-disclosure question about a household."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

from node import files
from node.client.query import VerifyResult
from node.domain.regions import province_name
from node.errors import BadInput

ANSWER_FILE_FORMAT = "hedui-answer/v1"
#: 2: entries keep the query's signature, the file the CRL in force (a file without "version" is 1).
ANSWER_FILE_VERSION = 2


def register(sub: Any) -> None:
    verify = sub.add_parser("verify", help="verify a household against peer provinces' data")
    verify.add_argument("--config", required=True, type=Path, metavar="FILE")
    verify.add_argument("--to", metavar="HOST:PORT", help="ask this node directly (default: route via the coordinator)")
    verify.add_argument("--province", metavar="CODE",
                        help="the province expected at --to (default: the one the federation directory lists there)")
    verify.add_argument("--id", dest="ids", action="append", required=True, metavar="ID", help="ID number; repeat for each member")
    verify.add_argument("--purpose", required=True, metavar="P")
    verify.add_argument("--check", dest="checks", action="append", required=True, metavar="EXPR",
                        help="e.g. 'deposit.balance_total<=2000000' (integer in the item's unit: fen, 0.01 m², 0/1)")
    verify.add_argument("--consent", metavar="CONSENT_ID", help="the registered consent that authorises the query")
    verify.add_argument("--deadline", type=float, default=None, metavar="SECONDS")
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.add_argument("--save", type=Path, metavar="ANSWER_FILE", help="keep the signed answers for `hedui answer verify`")
    verify.add_argument("--force", action="store_true", help="replace ANSWER_FILE if it exists")
    verify.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from node.client.client import PeerClient
    from node.member import Member

    member = Member.from_config(args.config)
    if args.deadline is not None and args.deadline <= 0:
        raise BadInput("--deadline must be positive")
    if args.save:
        files.refuse_existing(args.save, replace=args.force)  # before anything is asked
    consent = None
    if args.consent:
        from node.client.coordinator import fetch_receipt

        consent = fetch_receipt(member, args.consent, deadline_s=args.deadline)
    if args.to:
        with PeerClient(member, args.to, province=args.province, deadline_s=args.deadline) as peer:
            prepared = peer.prepare(args.ids, args.purpose, args.checks)
            result = peer.send(prepared, consent=consent)
    else:
        from node.client.routed import routed_verify

        result = routed_verify(member, args.ids, args.purpose, args.checks, consent=consent, deadline_s=args.deadline)
    if args.save:
        save_answers(args.save, result, replace=args.force, crl=member.crl.der)
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        print(render(result))
    return 0 if all(a.signature_valid for a in result.answers) else 1


def save_answers(path: Path, result: VerifyResult, *, replace: bool = False, crl: bytes = b"") -> None:
    """Write the signed answers, the signed queries they answer and the CRL in force (`crl`, DER) for
    offline checking at the time of each answer: 0600, never over a file unasked."""
    from node.client.saved_answers import evidence_entry

    data = {
        "format": ANSWER_FILE_FORMAT,
        "version": ANSWER_FILE_VERSION,
        "request_id": result.request_id,
        "answers": [evidence_entry(a) for a in result.answers if a.signed is not None],
        "crl": base64.b64encode(crl).decode(),
    }
    files.write_file(path, json.dumps(data, indent=1) + "\n", replace=replace)  # evidence about applicants: 0600


def render(result: VerifyResult) -> str:
    """A readable table: one block per answering province."""
    lines = [f"request {result.request_id}"]
    if result.routing is not None:
        status = ", ".join(f"{p} {s}" for p, s in sorted(result.routing.items()))
        lines.append(f"routing: {status or 'no province holds data on this household'}")
    for answer in result.answers:
        verdict = "signature valid" if answer.signature_valid else f"SIGNATURE INVALID ({answer.problem})"
        lines.append(f"\nprovince {answer.province} ({province_name(answer.province)}): {verdict}")
        width = max([len(r.check) for r in answer.results] + [5])
        lines.append(f"  {'subject':<8} {'check':<{width}}  {'outcome':<14} as of")
        for r in answer.results:
            lines.append(f"  #{r.subject:<7} {r.check:<{width}}  {r.outcome:<14} {r.as_of or '-'}")
    return "\n".join(lines)
