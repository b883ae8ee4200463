"""Capture what the servers of this process log, for tests that prove what never reaches a log line."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

from node import logs


@contextlib.contextmanager
def capture_logs(level: str = "debug") -> Iterator[io.StringIO]:
    """Every log line of this process as JSON lines in a StringIO; logging to stderr at warning after."""
    sink = io.StringIO()
    logs.configure(level, json=True, stream=sink)
    try:
        yield sink
    finally:
        logs.configure("warning")
