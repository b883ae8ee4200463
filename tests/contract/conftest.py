"""The backend fixture: every contract test runs once per entry of node.testing.backends.BACKENDS."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.store.interfaces import Storage
from node.testing.backends import BACKENDS, Backend, describe

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, empty storage of one backend."""
    made = BACKENDS[request.param](tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def storage(backend: Backend) -> Iterator[Storage]:
    """The backend's storage, opened for writing."""
    opened = backend.open()
    try:
        yield opened
    finally:
        opened.close()


def start_children(backend: Backend, code: str, args: list[list[object]]) -> list[subprocess.Popen[str]]:
    """One Python process per entry of `args` running `code` with `storage` (its own Storage on `backend`)
    and `args` bound; each waits for a line on stdin before it starts, so they run at once."""
    prelude = textwrap.dedent("""
        import json, sys
        from node.store.factory import open_url
        spec = json.loads(sys.argv[1])
        args = json.loads(sys.argv[2])
        storage = open_url(spec["url"], spec["data_dir"])
        sys.stdin.readline()
    """)
    body = prelude + textwrap.dedent(code) + "\nstorage.close()\n"
    return [subprocess.Popen([sys.executable, "-c", body, json.dumps(describe(backend)), json.dumps(a)], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for a in args]


def run_together(children: list[subprocess.Popen[str]], timeout: float = 120) -> list[str]:
    """Release every child at once; their standard outputs (each must exit 0)."""
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=timeout)
        assert child.returncode == 0, err
        outputs.append(out)
    return outputs
