"""`hedui answer verify`: check saved signed answers offline against the federation CA."""

from __future__ import annotations

import argparse
import base64
import binascii
import json
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from node.errors import BadInput
from node.files import parse_json


def register(sub: Any) -> None:
    answer = sub.add_parser("answer", help="work with saved signed answers")
    answer_sub = answer.add_subparsers(dest="answer_command", required=True)
    verify = answer_sub.add_parser("verify", help="check a saved answer file offline (exit 0 valid, 1 invalid)")
    where = verify.add_mutually_exclusive_group(required=True)
    where.add_argument("--pki", type=Path, metavar="DIR", help="PKI dir holding ca.pem")
    where.add_argument("--ca", type=Path, metavar="FILE", help="the federation CA certificate")
    verify.add_argument("file", type=Path, metavar="ANSWER_FILE")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=_verify)


def load_answer_file(path: Path) -> list[tuple[bytes, bytes]]:
    """(serialized query, serialized signed answer) pairs of a saved answer file."""
    from node.cli.verify_cmd import ANSWER_FILE_FORMAT

    if path.exists() and not path.is_file():
        raise BadInput(f"{path} is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
        try:
            documents = [parse_json(text)]
        except ValueError:  # a RESULTS.jsonl of `hedui verify-batch`: evidence on every line
            documents = [parse_json(line) for line in text.splitlines() if line.strip()]
        pairs = []
        for data in documents:
            if data.get("format") == ANSWER_FILE_FORMAT:
                entries = data["answers"]
            elif "evidence" in data and "household" in data:
                entries = data["evidence"]
            else:
                raise BadInput(f"{path}: not a {ANSWER_FILE_FORMAT} file or verify-batch results")
            pairs.extend((base64.b64decode(a["query"], validate=True), base64.b64decode(a["answer"], validate=True))
                         for a in entries)
        return pairs
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, UnicodeDecodeError):
        raise BadInput(f"{path}: not a readable answer file") from None


def _verify(args: argparse.Namespace) -> int:
    from node.client.query import check_answer
    from node.crypto import pki, signing
    from node.wire.v1 import verification_pb2

    ca = args.ca or args.pki / "ca.pem"
    if not ca.exists():
        raise BadInput(f"CA certificate not found: {ca}")
    verifier = signing.Verifier(pki.TrustAnchor.load(ca))
    pairs = load_answer_file(args.file)
    if not pairs:
        raise BadInput(f"{args.file}: holds no answers")
    results = []
    for query_bytes, raw in pairs:
        try:
            query = verification_pb2.QueryBody.FromString(query_bytes)
            signed = verification_pb2.SignedAnswer.FromString(raw)
        except DecodeError:
            results.append({"province": "?", "valid": False, "problem": "answer or query does not parse"})
            continue
        checked = check_answer(signed, query, query_bytes, verifier)
        results.append({"province": checked.province, "valid": checked.signature_valid, "problem": checked.problem})
    ok = all(r["valid"] for r in results)
    if args.json:
        print(json.dumps({"valid": ok, "answers": results}))
    else:
        for r in results:
            print(f"province {r['province']}: {'valid' if r['valid'] else 'INVALID: ' + str(r['problem'])}")
    return 0 if ok else 1
