"""`hedui`: entry point, argument parsing, and the mapping of errors to exit codes.

Exit codes: 0 success; 1 a checked artefact is invalid; 2 bad input; 3 refused by a peer;
4 peer unreachable or deadline exceeded. User errors print one line on stderr, never a
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from node import __version__
from node.errors import BadInput, HeduiError, Refusal

# gRPC's C core logs connection chatter (GOAWAY on shutdown) at INFO; keep the CLI's output clean.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

EXIT_OK, EXIT_INVALID, EXIT_BAD_INPUT, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_INTERNAL = 0, 1, 2, 3, 4, 70


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line with exit code 2."""

    def error(self, message: str) -> NoReturn:
        from node.domain.idnumber import redact  # a pasted ID number is never echoed

        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {redact(message)} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from node.cli import (answer_cmd, audit_cmd, backup_cmd, batch_cmd, consent_cmd, coordinator_cmd, data_cmd, demo_cmd, node_cmd, pki_cmd,
                          household_cmd, standards_cmd, verify_cmd, web_cmd)

    parser = _Parser(prog="hedui", description="Hedui (核对): federated household economic verification")
    parser.add_argument("--log-level", default=None, help="debug, info, warning or error")
    parser.add_argument("--version", action="version", version=f"hedui {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in (pki_cmd, node_cmd, coordinator_cmd, data_cmd, consent_cmd, verify_cmd, answer_cmd, demo_cmd, backup_cmd, audit_cmd,
                   batch_cmd, standards_cmd, household_cmd, web_cmd):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from node import logs

    serving = args.command in ("node", "coordinator")
    try:
        logs.configure(args.log_level or ("info" if serving else "warning"))  # an unknown level is BadInput
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("hedui: interrupted", file=sys.stderr)
        return 130
    except HeduiError as exc:
        print(f"hedui: {exc}", file=sys.stderr)
        return exit_code(exc)
    except OSError as exc:
        from node.domain.idnumber import redact

        print(redact(f"hedui: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")), file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - a bug: one line, details only with --log-level debug
        print(f"hedui: internal error ({type(exc).__name__}); rerun with --log-level debug for details",
              file=sys.stderr)
        if (args.log_level or "").lower() == "debug":
            raise
        return EXIT_INTERNAL


def exit_code(exc: HeduiError) -> int:
    """The exit code of an error, by kind."""
    from node.client.client import PeerRefused, PeerUnreachable

    if isinstance(exc, PeerUnreachable):
        return EXIT_UNREACHABLE
    if isinstance(exc, PeerRefused | Refusal):
        return EXIT_REFUSED
    if isinstance(exc, BadInput):
        return EXIT_BAD_INPUT
    return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
