"""Coverage-guided fuzzing of one target, or of all in one process: `python -m tests.fuzz.run TARGET|all [--save DIR] [libFuzzer flags]`.

The committed corpus and regressions of the target are read; inputs libFuzzer finds
interesting go to a scratch folder (removed at the end), never into the repository. An input
that breaks the target's contract is written to `--save DIR/<target>/crash-<sha1>` (default: a
kept temporary folder) and its path printed on a line starting "FUZZ FINDING"; the run then
stops with a non-zero exit. A hang (-timeout, 10 s) or a native crash is written by libFuzzer
under the same folder (`timeout-*`, `crash-*`; with `all`, prefixed by "all-" and carrying the
target's index as first byte). With `all`, the first byte of an input picks the target, and
every committed input is replayed first, so a bounded run covers every target.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("--save", type=Path, help="where inputs that break the contract are kept")
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)  # set by the parent for its child
    return parser.parse_known_args(argv)


def main(argv: list[str]) -> int:
    """Run the fuzzer in a child process, so its scratch folder (corpus, fuzz world) is removed however it ends."""
    args, _ = _parse(argv)
    if args.scratch is not None:
        return _fuzz(args, _parse(argv)[1])
    save = (args.save or Path(tempfile.mkdtemp(prefix="hedui-fuzz-findings-"))).resolve()
    scratch = Path(tempfile.mkdtemp(prefix="hedui-fuzz-run-"))
    try:
        # the last --save wins: the child gets the resolved folder
        proc = subprocess.run([sys.executable, "-m", "tests.fuzz.run", *argv, "--save", str(save), "--scratch", str(scratch)],
                              cwd=ROOT.parent.parent)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode != 0:
        kept = sorted(p for p in save.rglob("*") if p.is_file())
        print("FUZZ FINDING files: " + (", ".join(map(str, kept)) or f"none under {save}"), file=sys.stderr)
    elif args.save is None:
        shutil.rmtree(save, ignore_errors=True)
    return proc.returncode


def inputs(name: str) -> list[Path]:
    """The committed corpus and regression files of target `name`."""
    return sorted(p for kind in ("corpus", "regressions") for p in (ROOT / kind / name).glob("*") if p.is_file())


def _fuzz(args: argparse.Namespace, libfuzzer: list[str]) -> int:
    import atheris

    tempfile.tempdir = str(args.scratch)  # the fuzz world is built in the scratch folder too
    with atheris.instrument_imports(include=["node"]):
        from tests.fuzz import harnesses
    names = sorted(harnesses.TARGETS)
    if args.target not in (*names, "all"):
        print(f"unknown target {args.target!r}; known: all, {', '.join(names)}", file=sys.stderr)
        return 2
    work = args.scratch / "corpus"
    work.mkdir()
    if args.target == "all":
        for i, name in enumerate(names):  # a target's index as the first byte of each of its inputs
            for p in inputs(name):
                (work / f"{name}-{p.name}").write_bytes(bytes([i]) + p.read_bytes())
        dirs = [str(work)]
        prefix = f"{args.save}/all-"
    else:
        dirs = [str(work), *(str(ROOT / kind / args.target) for kind in ("corpus", "regressions")
                             if (ROOT / kind / args.target).is_dir())]
        prefix = f"{args.save}/{args.target}/"
    (args.save if args.target == "all" else args.save / args.target).mkdir(parents=True, exist_ok=True)
    harnesses.world()  # built before fuzzing starts (not counted against the first input)

    def one(data: bytes) -> None:
        name = args.target
        if name == "all":
            if not data:
                return
            name, data = names[data[0] % len(names)], data[1:]
        try:
            harnesses.check(name, data)
        except harnesses.ContractViolation as exc:
            folder = args.save / name
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"crash-{hashlib.sha1(data).hexdigest()}"  # libFuzzer's own name for it
            path.write_bytes(data)
            print(f"\nFUZZ FINDING {name}: {exc}\nFUZZ FINDING input saved to {path}", file=sys.stderr, flush=True)
            raise

    flags = [f"-artifact_prefix={prefix}", "-timeout=10", "-rss_limit_mb=3072", *libfuzzer]
    atheris.Setup([sys.argv[0], *flags, *dirs], one)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
