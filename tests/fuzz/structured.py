"""Structure-aware passes over the seeds (`python -m tests.fuzz.structured [--save DIR] [TARGET…]`), where byte mutation is weak.

libFuzzer's byte mutations rarely keep JSON, TOML or a protobuf well formed enough to reach
deep code. These passes do: every subtree of a JSON/TOML seed is replaced by values of other
types or removed, and every field of a protobuf seed (nested messages included) is set to
edge values, with repeated fields duplicated, emptied or multiplied. Each input goes through
the target's harness under the same contract. One input per distinct finding is saved to
DIR/<target>/ (default tests/fuzz/regressions).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import tomllib
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tomli_w
from google.protobuf.message import Message

from node.wire.v1 import common_pb2, coordinator_pb2, household_pb2, verification_pb2
from tests.fuzz import harnesses

ROOT = Path(__file__).resolve().parent
JSON_VALUES: list[Any] = [None, True, 0, -1, 2**63, 2**200, 1.5, 1e308, "", "x", "AAAA", "510100", "2026-11", [], [1],
                          ["x"], [[]], {}, {"a": 1}]
TOML_VALUES: list[Any] = [True, 0, -1, 2**63 - 1, 1.5, "", "x", "510100", "2026-11", [], [1], ["x"], [[1]], {}, {"a": 1}]
DOCUMENTS: dict[str, str] = {
    "standards_canonical": "json", "standards_signed": "json", "decision_record": "json", "results_line": "json",
    "answer_file": "json", "evidence_json": "json", "ingest_jsonl": "jsonl", "standards_toml": "toml",
    "member_config": "toml", "catalogue_toml": "toml", "policy_toml": "toml", "checkpoint": "json",
    "witness_line": "json", "witness_dir": "jsonl",
}
MESSAGES: dict[str, type[Message]] = {
    "query": verification_pb2.QueryBody, "audit_refusal": verification_pb2.QueryBody,
    "contribution_query": household_pb2.ContributionQueryBody, "consent_receipt": verification_pb2.ConsentBody,
    "holder_set": household_pb2.HolderSetBody, "directory": coordinator_pb2.DirectoryBody,
    "announcement": coordinator_pb2.AnnouncementBody, "ledger_head": coordinator_pb2.LedgerHeadBody,
    "consent_request": coordinator_pb2.ConsentRequestBody, "answer": verification_pb2.AnswerBody,
    "contribution": household_pb2.ContributionBody, "locked_query": verification_pb2.LockedQuery,
    "locked_batch": verification_pb2.LockedBatch, "signature": common_pb2.Signature,
    "locator_body": coordinator_pb2.LocatorBody, "signed_locator": coordinator_pb2.SignedLocator,
    "discover": coordinator_pb2.DiscoverRequest, "discover_batch": coordinator_pb2.DiscoverBatchRequest,
    "open_round": household_pb2.OpenRoundRequest, "open_round_batch": household_pb2.OpenRoundBatchRequest,
    "audit_head": coordinator_pb2.AuditHeadBody, "checkpoint_message": coordinator_pb2.AuditCheckpoint,
}
STRINGS = ["", "x", "51", "44", "\x00", "é" * 70, "a" * 5000, "req-fuzz-0001", "dibao", "*", "deposit.*", "..", "33"]
BYTES = [b"", b"\x00", b"\x00" * 32, b"\xff" * 33, b"x" * 5000]
INTS = [0, 1, -1, 2**31, 2**63 - 1, -(2**63), 7, 255]
UINTS = [0, 1, 2**32 - 1, 2**64 - 1, 17]


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            yield from _paths(v, (*prefix, i))


def _replaced(obj: Any, path: tuple[Any, ...], value: Any, *, delete: bool = False) -> Any:
    if not path:
        return value
    out = copy.deepcopy(obj)
    parent = out
    for k in path[:-1]:
        parent = parent[k]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


def document_inputs(kind: str, raw: bytes) -> Iterator[bytes]:
    """Type-confused variants of a JSON, JSON-lines or TOML seed."""
    encode: Callable[[Any], bytes | None]
    if kind == "toml":
        obj, values = tomllib.loads(raw.decode("utf-8")), TOML_VALUES

        def encode(o: Any) -> bytes | None:
            try:
                return tomli_w.dumps(o).encode() if isinstance(o, dict) else None
            except (TypeError, ValueError):
                return None
    elif kind == "jsonl":
        obj, values = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()], JSON_VALUES
        encode = lambda o: b"".join(json.dumps(x).encode() + b"\n" for x in (o if isinstance(o, list) else [o]))  # noqa: E731
    else:
        obj, values = json.loads(raw), JSON_VALUES
        encode = lambda o: json.dumps(o, ensure_ascii=False).encode()  # noqa: E731
    for path in list(_paths(obj)):
        for value in values:
            if (data := encode(_replaced(obj, path, value))) is not None:
                yield data
        if path and (data := encode(_replaced(obj, path, None, delete=True))) is not None:
            yield data


def _field_values(fd: Any) -> list[Any]:
    t = fd.type
    if t == fd.TYPE_STRING:
        return STRINGS
    if t == fd.TYPE_BYTES:
        return BYTES
    if t in (fd.TYPE_UINT32, fd.TYPE_UINT64, fd.TYPE_FIXED32, fd.TYPE_FIXED64):
        return [v for v in UINTS if t in (fd.TYPE_UINT64, fd.TYPE_FIXED64) or v < 2**32]
    if t == fd.TYPE_BOOL:
        return [True, False]
    if t == fd.TYPE_ENUM:
        return [0, 1, 6, 99, -5]
    return [v for v in INTS if t in (fd.TYPE_INT64, fd.TYPE_SINT64, fd.TYPE_SFIXED64) or -(2**31) <= v < 2**31]


def _variants(msg: Message) -> Iterator[None]:
    """Change `msg` in place, one field at a time, yielding after each change and undoing it after."""
    for fd in msg.DESCRIPTOR.fields:
        if fd.type == fd.TYPE_MESSAGE:
            if fd.is_repeated:
                items = getattr(msg, fd.name)
                saved = [type(i).FromString(i.SerializeToString()) for i in items]
                if saved:
                    items.append(saved[0]); yield; del items[-1]  # noqa: E702
                    items.extend(saved * 20); yield; del items[len(saved):]  # noqa: E702
                    del items[:]; yield; items.extend(saved)  # noqa: E702
                    for sub in list(items)[:2]:
                        yield from _variants(sub)
            elif msg.HasField(fd.name):
                kept = getattr(msg, fd.name).SerializeToString()
                msg.ClearField(fd.name); yield; getattr(msg, fd.name).MergeFromString(kept)  # noqa: E702
                yield from _variants(getattr(msg, fd.name))
            continue
        values = _field_values(fd)
        if fd.is_repeated:
            field, saved = getattr(msg, fd.name), list(getattr(msg, fd.name))
            for v in values:
                field.append(v); yield; del field[-1]  # noqa: E702
                if saved:
                    field[0] = v; yield; field[0] = saved[0]  # noqa: E702
            if saved:
                del field[:]; yield; field.extend(saved)  # noqa: E702
                field.extend(saved * 40); yield; del field[len(saved):]  # noqa: E702
        else:
            kept = getattr(msg, fd.name)
            for v in values:
                try:
                    setattr(msg, fd.name, v)
                except (TypeError, ValueError):
                    continue
                yield
            setattr(msg, fd.name, kept)


def message_inputs(message: type[Message], raw: bytes) -> Iterator[bytes]:
    """Field-level variants of a protobuf seed."""
    msg = message.FromString(raw)
    for _ in _variants(msg):
        yield msg.SerializeToString()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.structured", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET")
    parser.add_argument("--save", type=Path, default=ROOT / "regressions")
    args = parser.parse_args(argv)
    names = args.targets or sorted({*DOCUMENTS, *MESSAGES})
    found: dict[tuple[str, str, str, int], Path] = {}
    for name in names:
        count = 0
        for seed in sorted((ROOT / "corpus" / name).glob("*")):
            variants = (document_inputs(DOCUMENTS[name], seed.read_bytes()) if name in DOCUMENTS
                        else message_inputs(MESSAGES[name], seed.read_bytes()))
            for data in variants:
                count += 1
                try:
                    harnesses.check(name, data)
                except harnesses.ContractViolation as exc:
                    cause = exc.__cause__
                    where = traceback.extract_tb(cause.__traceback__)[-1] if cause is not None else None
                    key = (name, type(cause).__name__, where.filename if where else "", where.lineno or 0 if where else 0)
                    if key not in found:
                        folder = args.save / name
                        folder.mkdir(parents=True, exist_ok=True)
                        found[key] = folder / f"crash-{hashlib.sha1(data).hexdigest()}"
                        found[key].write_bytes(data)
                        print(f"FUZZ FINDING {name}: {exc}\nFUZZ FINDING input saved to {found[key]}", file=sys.stderr)
        print(f"{name}: {count} inputs", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
