"""Coverage-guided fuzzing of one target, or of all in one process: `python -m tests.fuzz.run TARGET|all [--save DIR] [libFuzzer flags]`.

The committed corpus and regressions of the target are read; inputs libFuzzer finds
interesting go to a scratch folder, never into the repository. An input that breaks the
target's contract is written to `--save DIR/<target>/crash-<sha256 prefix>` (default: a
scratch folder) and its path printed on a line starting "FUZZ FINDING", then the run stops
with a non-zero exit. With `all`, the first byte of an input picks the target (every
committed input is replayed first, so a bounded run covers every target).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent

with atheris.instrument_imports(include=["node"]):
    from tests.fuzz import harnesses

NAMES = sorted(harnesses.TARGETS)


def inputs(name: str) -> list[Path]:
    """The committed corpus and regression files of target `name`."""
    return sorted(p for kind in ("corpus", "regressions") for p in (ROOT / kind / name).glob("*") if p.is_file())


def _save(save: Path, name: str, data: bytes) -> Path:
    folder = save / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"crash-{hashlib.sha256(data).hexdigest()[:16]}"
    path.write_bytes(data)
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=[*NAMES, "all"])
    parser.add_argument("--save", type=Path, help="where an input that breaks the contract is kept (default: scratch)")
    args, libfuzzer = parser.parse_known_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="hedui-fuzz-run-"))
    save = args.save or scratch / "findings"
    work = scratch / "corpus"
    work.mkdir()
    names = NAMES if args.target == "all" else [args.target]
    if args.target == "all":
        for i, name in enumerate(names):  # a target's index as the first byte of each of its inputs
            for p in inputs(name):
                (work / f"{name}-{p.name}").write_bytes(bytes([i]) + p.read_bytes())
        dirs = [str(work)]
    else:
        dirs = [str(work), *(str(ROOT / kind / args.target) for kind in ("corpus", "regressions")
                             if (ROOT / kind / args.target).is_dir())]
    harnesses.world()  # built before fuzzing starts (not counted as a slow input)

    def one(data: bytes) -> None:
        if args.target == "all":
            if not data:
                return
            name, data = names[data[0] % len(names)], data[1:]
        else:
            name = args.target
        try:
            harnesses.check(name, data)
        except harnesses.ContractViolation as exc:
            path = _save(save, name, data)
            print(f"\nFUZZ FINDING {name}: {exc}\nFUZZ FINDING input saved to {path}", file=sys.stderr, flush=True)
            raise

    flags = [f"-artifact_prefix={scratch}/", "-timeout=10", "-rss_limit_mb=3072", *libfuzzer]
    atheris.Setup([sys.argv[0], *flags, *dirs], one)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
