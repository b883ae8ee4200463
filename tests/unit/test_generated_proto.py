"""The committed protobuf code matches what scripts/gen-proto produces from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    """Regenerating into a temp dir gives byte-identical files to the committed ones."""
    subprocess.run([str(ROOT / "scripts" / "gen-proto"), str(tmp_path)], check=True,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "node" / "wire").rglob("*") if p.is_file()}
    committed = {p.relative_to(ROOT): p.read_bytes() for p in (ROOT / "node" / "wire").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    assert fresh, "gen-proto produced nothing"
    assert sorted(map(str, fresh)) == sorted(map(str, committed)), "generated files differ from committed ones"
    stale = [str(p) for p in fresh if fresh[p] != committed[p]]
    assert not stale, f"stale generated code, run scripts/gen-proto: {stale}"
