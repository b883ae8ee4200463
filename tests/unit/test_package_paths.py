"""The package reaches nothing outside itself at run time: what it needs ships inside it (issue 8)."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "node"
# A path built upward from a module file (`Path(__file__).parents[2]`, `.parent.parent`, `"../config"`)
# finds the checkout's files when run from a checkout and nothing once installed.
UPWARD = re.compile(r"__file__.*(\.parents\[|\.parent\.parent)|['\"]\.\./|['\"]config/")


def test_no_module_builds_a_path_out_of_the_package() -> None:
    """No module of `node` builds a path above its own folder or into the repository's config/."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "wire" in path.parts:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if UPWARD.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_shipped_data_folder_is_the_repositorys_config() -> None:
    """node/data is config/ itself (a link), so the shipped catalogue and policy cannot drift from the edited ones."""
    data = PACKAGE / "data"
    assert data.is_symlink() and data.resolve() == (PACKAGE.parent / "config").resolve()
