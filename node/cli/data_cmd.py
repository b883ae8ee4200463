"""`hedui ingest` and `hedui synth`: departmental data into a node's store, and synthetic data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from node.errors import BadInput


def register(sub: Any) -> None:
    ingest = sub.add_parser("ingest", help="load departmental data (CSV or JSONL) into the node's store")
    ingest.add_argument("--config", required=True, type=Path, metavar="FILE")
    ingest.add_argument("files", nargs="+", type=Path, metavar="DATA.csv")
    ingest.add_argument("--json", action="store_true")
    ingest.set_defaults(func=_ingest)

    synth = sub.add_parser("synth", help="write realistic synthetic departmental data, one CSV per province")
    synth.add_argument("--provinces", required=True, metavar="CODES", help="comma-separated codes, e.g. 32,51")
    synth.add_argument("--households", required=True, type=int, metavar="N", help="households per province")
    synth.add_argument("--seed", type=int, default=1, metavar="S")
    synth.add_argument("--out", required=True, type=Path, metavar="DIR")
    synth.add_argument("--force", action="store_true", help="replace files an earlier run left in DIR")
    synth.add_argument("--json", action="store_true")
    synth.set_defaults(func=_synth)


def _ingest(args: argparse.Namespace) -> int:
    from node.member import Member
    from node.store.errors import IngestRejected
    from node.store.ingest import ingest_file
    from node.store.factory import open_storage

    member = Member.from_config(args.config)
    reports = []
    with open_storage(member.cfg) as storage, storage.facts() as store:
        for path in args.files:
            try:
                report = ingest_file(store, path, linkage_key=member.linkage_key, catalogue=member.catalogue)
            except IngestRejected as exc:
                for line, reason in exc.errors:
                    print(f"{path}:{line}: {reason}", file=sys.stderr)
                raise BadInput(f"{path}: rejected, {len(exc.errors)} bad line(s); nothing was stored from it") from None
            reports.append((path, report))
            if not args.json:
                rate = report.rows / report.seconds if report.seconds else 0.0
                added = f", {report.possession_added} possession keys added" if report.possession_added else ""
                print(f"{path}: {report.rows} rows, {report.subjects} subjects, {report.facts_written} facts written"
                      f"{added} in {report.seconds:.2f} s ({rate:,.0f} rows/s)")
        missing = store.missing_possession()
    if missing:
        print(f"note: {missing} subjects of this store still have no possession key (ingested before schema 2): "
              "ingest their departmental files again before serving", file=sys.stderr)
    if args.json:
        print(json.dumps([{"file": str(p), "rows": r.rows, "subjects": r.subjects, "facts_written": r.facts_written,
                           "possession_keys_added": r.possession_added, "seconds": round(r.seconds, 3)}
                          for p, r in reports]))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from node.synth import generate

    codes = [c.strip() for c in args.provinces.split(",") if c.strip()]
    try:
        summary = generate(codes, args.households, args.seed, args.out, replace=args.force)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    if args.json:
        print(json.dumps({"provinces": list(summary.provinces), "households": summary.households,
                          "members": summary.members, "migrants": summary.migrants,
                          "facts_per_province": summary.facts_per_province}))
    else:
        facts = ", ".join(f"{p}: {n}" for p, n in summary.facts_per_province.items())
        print(f"wrote {summary.members} people in {summary.households} households ({summary.migrants} migrant workers) "
              f"to {args.out}; facts per province: {facts}")
    return 0
