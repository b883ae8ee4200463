"""`hedui demo`: build and run a federation on loopback and show real verifications."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from node.errors import BadInput


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run a whole federation on loopback with synthetic data")
    demo.add_argument("--provinces", type=int, default=31, metavar="N", help="number of provinces (default 31)")
    demo.add_argument("--households", type=int, default=40, metavar="N", help="households per province (default 40)")
    demo.add_argument("--seed", type=int, default=2026, metavar="S")
    demo.add_argument("--detail", type=int, default=4, metavar="N", help="households shown in detail")
    demo.add_argument("--rounds", type=int, default=60, metavar="N", help="households verified in all")
    demo.add_argument("--dir", type=Path, metavar="DIR", help="keep everything here instead of a temp dir")
    demo.add_argument("--keep-running", action="store_true", help="keep the federation up until Ctrl-C")
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from node.demo import run_demo

    if args.households < 1 or args.rounds < 1 or args.detail < 0:
        raise BadInput("--households and --rounds must be positive")
    try:
        run_demo(args.provinces, args.households, args.seed, detail=args.detail, rounds=args.rounds, root=args.dir,
                 keep_running=args.keep_running)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    return 0
