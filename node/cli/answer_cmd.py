"""`hedui answer verify`: check saved signed answers offline, at the time of each answer, against the federation CA."""

from __future__ import annotations

import argparse
import base64
import binascii
import json
from pathlib import Path
from typing import Any

from node.errors import BadInput
from node.files import parse_json


def register(sub: Any) -> None:
    answer = sub.add_parser("answer", help="work with saved signed answers")
    answer_sub = answer.add_subparsers(dest="answer_command", required=True)
    verify = answer_sub.add_parser("verify", help="check a saved answer file offline (exit 0 valid, 1 invalid)")
    add_trust_arguments(verify)
    verify.add_argument("file", type=Path, metavar="ANSWER_FILE")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=_verify)


def add_trust_arguments(parser: Any) -> None:
    """--pki / --ca / --config (whose CA and CRL the verifier trusts) and --crl, for the offline verify commands."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--pki", type=Path, metavar="DIR", help="PKI dir holding ca.pem (and its crl.pem, if any)")
    where.add_argument("--ca", type=Path, metavar="FILE", help="the federation CA certificate")
    where.add_argument("--config", dest="trust_config", type=Path, metavar="NODE_FILE",
                       help="trust this node's CA and the newest revocation list it accepted")
    parser.add_argument("--crl", action="append", default=[], type=Path, metavar="FILE",
                        help="also apply this federation CRL (PEM or DER; repeatable)")


def evidence_of(args: argparse.Namespace) -> Any:
    """The node.crypto.evidence.Evidence of the verifier: its own CA, never the file's, and every CRL it has."""
    from node import config
    from node.crypto import pki, revocation
    from node.crypto.errors import CertificateRejected
    from node.crypto.evidence import Evidence

    crls: list[bytes] = []
    if args.trust_config is not None:
        cfg = config.load(args.trust_config)
        ca = cfg.ca_cert
        crls.append(revocation.accepted_crl(cfg.data_dir) or b"")
    else:
        ca = args.ca or args.pki / "ca.pem"
        if args.pki is not None and (args.pki / revocation.CRL_FILE).is_file():
            crls.append((args.pki / revocation.CRL_FILE).read_bytes())
    if not ca.is_file():
        raise BadInput(f"CA certificate not found: {ca}")
    for path in args.crl:
        if not path.is_file():
            raise BadInput(f"{path}: no such file")
        crls.append(path.read_bytes())
    if not any(crls):  # a file may carry an old CRL, from before a revocation it would not show
        import sys

        print("warning: the verifier has no revocation list of its own: each file is checked against the one "
              "it carries only (use --pki, --config or --crl for the federation's current one)", file=sys.stderr)
    try:
        return Evidence.of(pki.load_cert(ca), crls)
    except CertificateRejected as exc:
        raise BadInput(f"a revocation list given to the verifier is refused: {exc}") from None


def load_answer_file(path: Path) -> list[tuple[list[Any], bytes | None]]:
    """The documents of a saved answer file: (SavedEntry list, the CRL DER saved with it or None)."""
    from node.cli.verify_cmd import ANSWER_FILE_FORMAT
    from node.client.saved_answers import SavedEntry

    if path.exists() and not path.is_file():
        raise BadInput(f"{path} is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
        try:
            documents = [parse_json(text)]
        except ValueError:  # a RESULTS.jsonl of `hedui verify-batch`: evidence on every line
            documents = [parse_json(line) for line in text.splitlines() if line.strip()]
        out = []
        for data in documents:
            if data.get("format") == ANSWER_FILE_FORMAT:
                entries = data["answers"]
            elif "evidence" in data and "household" in data:
                entries = data["evidence"]
            else:
                raise BadInput(f"{path}: not a {ANSWER_FILE_FORMAT} file or verify-batch results")
            crl = data.get("crl")
            out.append(([SavedEntry.from_json(a) for a in entries],
                        None if crl is None else base64.b64decode(crl, validate=True)))
        return out
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, UnicodeDecodeError):
        raise BadInput(f"{path}: not a readable answer file") from None


def _verify(args: argparse.Namespace) -> int:
    import sys

    from node.client.saved_answers import check_documents

    evidence = evidence_of(args)
    documents = load_answer_file(args.file)
    if not any(entries for entries, _ in documents):
        raise BadInput(f"{args.file}: holds no answers")
    results, warnings = check_documents(documents, evidence)
    ok = all(r.valid for r in results)
    if args.json:
        print(json.dumps({"valid": ok, "answers": [r.to_json() for r in results],
                          "warnings": sorted(set(warnings))}))
    else:
        for warning in sorted(set(warnings)):
            print(f"warning: {warning}", file=sys.stderr)
        for r in results:
            verdict = f"valid (answered {r.answered_at})" if r.valid else "INVALID: " + str(r.problem)
            print(f"province {r.province}: {verdict}")
    return 0 if ok else 1
