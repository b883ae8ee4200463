"""`hedui consent grant-batch` and `hedui verify-batch`: resumable national-scale batches."""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


from node.errors import BadInput


def register(sub: Any) -> None:
    batch = sub.add_parser("verify-batch", help="verify many households through the coordinator (resumable)")
    add_results_arguments(batch, max_chunk=512)
    batch.add_argument("--check", dest="checks", action="append", required=True, metavar="EXPR")
    batch.set_defaults(func=verify_batch)


def add_results_arguments(parser: Any, *, max_chunk: int) -> None:
    """The arguments of a resumable batch from HOUSEHOLDS.csv and CONSENTS.csv into RESULTS.jsonl."""
    parser.add_argument("--config", required=True, type=Path, metavar="NODE_FILE")
    parser.add_argument("--in", dest="input", required=True, type=Path, metavar="HOUSEHOLDS.csv",
                        help="household,id_number[,evidence_sha256][,region] rows, one per member")
    parser.add_argument("--consents", required=True, type=Path, metavar="CONSENTS.csv", help="from `consent grant-batch`")
    parser.add_argument("--purpose", required=True, metavar="P")
    parser.add_argument("--out", required=True, type=Path, metavar="RESULTS.jsonl")
    parser.add_argument("--rejects", type=Path, metavar="FILE", help="rejected rows (default: OUT.rejects.csv)")
    parser.add_argument("--chunk", type=int, default=128, metavar="N",
                        help=f"households per message (default 128, at most {max_chunk})")
    parser.add_argument("--in-flight", type=int, default=4, metavar="N", help="messages in flight (default 4)")
    parser.add_argument("--force", action="store_true",
                        help="replace OUT or the rejects file even if an earlier run did not write it")


def register_grant(consent_sub: Any) -> None:
    grant = consent_sub.add_parser("grant-batch", help="register one consent per household of a CSV (resumable)")
    grant.add_argument("--config", required=True, type=Path, metavar="NODE_FILE")
    grant.add_argument("--in", dest="input", required=True, type=Path, metavar="HOUSEHOLDS.csv",
                       help="household,id_number[,evidence_sha256] rows, one per member")
    grant.add_argument("--purpose", required=True, metavar="P")
    grant.add_argument("--days", type=int, default=30, metavar="N")
    grant.add_argument("--out", required=True, type=Path, metavar="CONSENTS.csv")
    grant.add_argument("--rejects", type=Path, metavar="FILE", help="rejected rows (default: OUT.rejects.csv)")
    grant.add_argument("--force", action="store_true", help="replace OUT or the rejects file even if an earlier run did not write it")
    grant.set_defaults(func=grant_batch)


def _rejects_path(args: argparse.Namespace) -> Path:
    return args.rejects or args.out.with_name(args.out.name + ".rejects.csv")


class _Foreign(Exception):
    """A line that no run of this command wrote."""


def _previous_run(path: Path, key_of: Callable[[int, str], str | None], *, force: bool) -> tuple[set[str], list[str]]:
    """Complete lines of an earlier run's output (a partial last line is dropped) and their keys.

    `key_of(n, line)` is the key of a finished line, None for one to redo, or raises _Foreign.
    The output is rewritten from these lines, so a file that is not such an output (another
    command's, or an input given as --out by mistake) is refused unless --force.
    """
    if not os.path.lexists(path):
        return set(), []
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise BadInput(f"{path} is not a regular file")
    foreign = BadInput(f"{path} exists and is not the output of an earlier run; give another --out, or --force to replace it")
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        if not force:
            raise foreign from None
        lines = []
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    done: set[str] = set()
    kept: list[str] = []
    for n, line in enumerate(lines):
        try:
            key = key_of(n, line)
        except _Foreign:
            if not force:
                raise foreign from None
            continue
        if key is not None:
            done.add(key)
            kept.append(line)
    return done, kept


def _check_rejects(args: argparse.Namespace) -> None:
    """The rejects file is replaced on every run: refuse one that no earlier run wrote, unless --force."""
    from node.client.batch import REJECTS_HEADER

    path = _rejects_path(args)
    if args.force or not os.path.lexists(path):
        return
    first = ""
    if stat.S_ISREG(os.lstat(path).st_mode):  # never open a FIFO or device to look at it
        try:
            with open(path, encoding="utf-8", newline="") as f:
                first = f.readline(256)
        except (OSError, UnicodeDecodeError):
            pass
    if first.rstrip("\r\n") != ",".join(REJECTS_HEADER):
        raise BadInput(f"{path} exists and is not a rejects file of an earlier run; give another --rejects, "
                       "or --force to replace it")


def _rewrite(path: Path, lines: list[str], header: str | None = None) -> IO[str]:
    """Atomically replace `path` with the kept lines (0600); return it open for appending."""
    from node import files

    return files.rewrite(path, ([header] if header is not None and (not lines or lines[0] != header) else []) + lines)


def grant_batch(args: argparse.Namespace) -> int:
    from node.client.batch import BatchSession, chunked, read_households, reject_household
    from node.cli.progress import Progress
    from node.member import Member

    member = Member.from_config(args.config)
    member.policy.purpose(args.purpose)
    if not 1 <= args.days <= 366:
        raise BadInput("--days must be 1 to 366")
    households, rejects = read_households(args.input, max_members=member.cfg.limits.max_subjects)
    header = "household,consent_id,receipt\n"

    def key_of(n: int, line: str) -> str | None:
        if n == 0:
            if line != header:
                raise _Foreign
            return None
        parts = next(csv.reader([line]), [])
        return parts[0] if len(parts) == 3 and parts[0] != "household" else None

    _check_rejects(args)
    done, lines = _previous_run(args.out, key_of, force=args.force)
    todo = [h for h in households if h.key not in done]
    out = _rewrite(args.out, lines, header)
    writer = csv.writer(out, lineterminator="\n")  # household keys may hold commas or quotes
    refused = 0

    async def run() -> None:
        nonlocal refused
        session = BatchSession(member)
        try:
            with Progress(len(todo), "consents") as progress:
                for chunk in chunked(todo, 256):
                    for h, receipt, error in await session.grant(chunk, args.purpose, args.days):
                        if receipt is None:
                            refused += 1
                            rejects.append(reject_household(h, f"refused by the coordinator: {error}"))
                            continue
                        consent_id = _consent_id(receipt)
                        writer.writerow([h.key, consent_id, base64.b64encode(receipt.SerializeToString()).decode()])
                    out.flush()
                    progress.advance(len(chunk))
        finally:
            await session.close()

    _run_to_the_end(run, out, args, rejects)
    print(f"{len(todo) - refused} consents registered ({len(done)} already in {args.out}); "
          f"{len(rejects)} rejected row(s) in {_rejects_path(args)}", file=sys.stderr)
    return 0


def _run_to_the_end(run: Any, out: IO[str], args: argparse.Namespace, rejects: list[Any]) -> None:
    """Run the batch; whatever happens (Ctrl-C included), leave whole lines on disk and the rejects file."""
    from node.client.batch import write_rejects

    try:
        asyncio.run(run())
    finally:
        out.flush()
        os.fsync(out.fileno())
        out.close()
        write_rejects(_rejects_path(args), sorted(rejects, key=lambda r: r.line))


def _consent_id(receipt: Any) -> str:
    from node.wire.v1 import verification_pb2

    return verification_pb2.ConsentBody.FromString(receipt.body).consent_id


def verify_batch(args: argparse.Namespace) -> int:
    from node.client.batch import BatchSession, parse_checks
    from node.member import Member

    member = Member.from_config(args.config)
    checks = parse_checks(args.checks, member, args.purpose)
    check_shape(args, max_chunk=512)
    ready, rejects = read_ready(args, member)
    return run_results(args, [(h.key, (h, r)) for h, r in ready], rejects, lambda: BatchSession(member),
                       lambda session, chunk: session.verify(chunk, args.purpose, checks), verb="verified")


def check_shape(args: argparse.Namespace, *, max_chunk: int) -> None:
    """--chunk and --in-flight within bounds, else one line and exit 2."""
    if not 1 <= args.chunk <= max_chunk or not 1 <= args.in_flight <= 32:
        raise BadInput(f"--chunk must be 1 to {max_chunk} and --in-flight 1 to 32")


def read_ready(args: argparse.Namespace, member: Any) -> tuple[list[tuple[Any, Any]], list[Any]]:
    """The households of --in with their receipts from --consents; rejected rows (and households without a consent)."""
    from node.client.batch import read_consents, read_households, reject_household

    households, rejects = read_households(args.input, max_members=member.cfg.limits.max_subjects)
    consents = read_consents(args.consents)
    ready = []
    for h in households:
        if h.key in consents:
            ready.append((h, consents[h.key]))
        else:
            rejects.append(reject_household(h, "no consent for this household in the consents file"))
    return ready, rejects


def results_key(_n: int, line: str) -> str | None:
    """The household of a finished line of a RESULTS.jsonl, None for one to redo (see node.client.batch.complete)."""
    from node.client.batch import complete
    from node.files import parse_json

    try:
        record = parse_json(line)
    except ValueError:
        raise _Foreign from None
    if not isinstance(record, dict) or not isinstance(record.get("household"), str) or \
            not isinstance(record.get("routing"), dict):
        raise _Foreign
    return record["household"] if complete(record) else None


def run_results(args: argparse.Namespace, ready: list[tuple[str, Any]], rejects: list[Any],
                open_session: Callable[[], Any], work: Callable[[Any, Any], Any], *, verb: str) -> int:
    """Run a resumable batch into --out: households already complete there are kept, the rest are
    done in chunks (--chunk, --in-flight) with progress; whole lines and the rejects file whatever happens."""
    from node.client.batch import chunked, complete, pipeline
    from node.cli.progress import Progress

    _check_rejects(args)
    done, lines = _previous_run(args.out, results_key, force=args.force)
    todo = [item for key, item in ready if key not in done]
    out = _rewrite(args.out, lines)
    stats = {"households": 0, "incomplete": 0}

    async def run() -> None:
        session = open_session()
        try:
            with Progress(len(todo), "households") as progress:
                async for records in pipeline(chunked(todo, args.chunk), lambda c: work(session, c), args.in_flight):
                    out.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
                    out.flush()
                    stats["households"] += len(records)
                    stats["incomplete"] += sum(1 for r in records if not complete(r))
                    progress.advance(len(records))
        finally:
            await session.close()

    _run_to_the_end(run, out, args, rejects)
    print(f"{stats['households']} households {verb} ({len(done)} already done, {stats['incomplete']} incomplete: "
          f"re-run to complete them); {len(rejects)} rejected row(s) in {_rejects_path(args)}", file=sys.stderr)
    return 0
