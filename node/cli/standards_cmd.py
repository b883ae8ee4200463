"""`hedui standards`: publish this province's assistance standards and show the federation's."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from node.domain.regions import province_name
from node.errors import BadInput
from node.domain.standards import Standard, StandardsDocument


def register(sub: Any) -> None:
    standards = sub.add_parser("standards", help="published assistance standards (低保标准) carried in the federation directory")
    standards_sub = standards.add_subparsers(dest="standards_command", required=True)

    publish = standards_sub.add_parser("publish", help="validate, sign and publish this province's standards document")
    publish.add_argument("--config", required=True, type=Path, metavar="NODE_FILE")
    publish.add_argument("file", type=Path, metavar="FILE", help="the standards TOML (format: config/standards/*.toml)")
    publish.add_argument("--json", action="store_true")
    publish.set_defaults(func=_publish)

    example = standards_sub.add_parser("example", help="print the example standards document shipped for a province")
    example.add_argument("--province", required=True, metavar="CODE")
    example.set_defaults(func=_example)

    show = standards_sub.add_parser("show", help="list the standards in force, each province's signature verified")
    show.add_argument("--config", required=True, type=Path, metavar="NODE_FILE")
    show.add_argument("--region", metavar="R", help="the standards that apply to this GB/T 2260 code (county -> city -> province)")
    show.add_argument("--purpose", metavar="P", help="only this purpose")
    show.add_argument("--period", metavar="YYYY-MM", help="in force in this month (default: this month, UTC)")
    show.add_argument("--all", action="store_true", help="every entry of every document, whatever its period")
    show.add_argument("--json", action="store_true", help="print a JSON list")
    show.set_defaults(func=_show)


def _publish(args: argparse.Namespace) -> int:
    from node.client.standards import publish_standards
    from node.member import Member

    published = publish_standards(Member.from_config(args.config), args.file)
    doc = published.document
    if args.json:
        print(json.dumps({"publisher": doc.province, "version": published.version, "entries": published.entries,
                          "example": doc.example, "standards": [_row(doc, s) for s in doc.standards]}, ensure_ascii=False))
        return 0
    kind = "example document" if doc.example else "document"
    print(f"published {kind} of province {doc.province} ({province_name(doc.province)}), version {published.version},"
          f" {published.entries} entries")
    print(_table(doc.standards))
    return 0


def _example(args: argparse.Namespace) -> int:
    """The shipped example document of a province (config/standards/NN-*.toml), to edit and publish."""
    from node.domain.catalogue import shipped
    from node.domain.regions import is_province

    if not is_province(args.province):
        raise BadInput("--province must be a two-digit province code")
    examples = sorted(f for f in shipped("standards").iterdir() if f.name.startswith(f"{args.province}-"))
    if not examples:
        known = sorted(f.name.split("-", 1)[0] for f in shipped("standards").iterdir() if f.name.endswith(".toml"))
        raise BadInput(f"no example document ships for province {args.province}; examples exist for {', '.join(known)}")
    sys.stdout.write(examples[0].read_text(encoding="utf-8"))
    return 0


def _show(args: argparse.Namespace) -> int:
    from node.client.standards import current_period, fetch_directory
    from node.domain.standards import check_period, fallback_regions
    from node.member import Member

    member = Member.from_config(args.config)
    period = check_period(args.period) if args.period else current_period()
    if args.region:
        fallback_regions(args.region)
    if args.purpose:
        member.policy.purpose(args.purpose)
    directory = fetch_directory(member)
    rows: list[Standard] = []
    for province in sorted(directory.standards):
        doc = directory.standards[province]
        if args.region and province != args.region[:2]:
            continue
        if args.region and not args.all:
            found = (doc.find(args.region, p, period) for p in member.policy.purposes)
            rows.extend(s for s in found if s is not None)
        else:
            rows.extend(s for s in doc.standards
                        if (args.all or s.covers(period))
                        and (not args.region or s.region in fallback_regions(args.region)))
    if args.purpose:
        rows = [s for s in rows if s.purpose == args.purpose]
    for province in directory.rejected_standards:
        print(f"hedui: province {province}'s standards document does not verify and is left out", file=sys.stderr)
    if args.json:
        print(json.dumps([_row(directory.standards[s.publisher], s) for s in rows], ensure_ascii=False))
        return 0
    when = "any period" if args.all else period
    if not rows:
        print(f"no published standards in force ({when})" + (f" for region {args.region}" if args.region else ""))
        return 0
    print(f"standards in force ({when})" + (f" for region {args.region}" if args.region else ""))
    print(_table(rows))
    return 0


def _row(doc: StandardsDocument, standard: Standard) -> dict[str, Any]:
    """One entry for --json: the signed entry itself plus its publisher, version and period."""
    return {**standard.to_json(), "period": {"from": standard.period_from, "to": standard.period_to},
            "publisher": doc.province, "version": doc.version, "example": doc.example}


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _table(rows: Any) -> str:
    rows = list(rows)
    width = max([len(",".join(s.rules)) for s in rows] + [5])
    purpose = max([len(s.purpose) for s in rows] + [7])
    lines = [f"  {'region':<7} {'purpose':<{purpose}} {'period':<17} {'yuan/month':>10}  {'rules':<{width}}  name"]
    for s in rows:
        period = f"{s.period_from}..{s.period_to or ''}"
        marker = " (example)" if s.example else ""
        lines.append(f"  {s.region:<7} {s.purpose:<{purpose}} {period:<17} {_yuan(s.standard_per_person):>10}  "
                     f"{','.join(s.rules):<{width}}  {s.name_zh}{marker}")
    return "\n".join(lines)
