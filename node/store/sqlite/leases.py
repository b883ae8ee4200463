"""A named singleton role on SQLite storage: a non-blocking `flock` on `<data_dir>/<name>.lock` (one holder per host)."""

from __future__ import annotations

import fcntl
import re
import threading
from pathlib import Path
from typing import IO

_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")


def check_name(name: str) -> str:
    """`name` if it is a lease name (lowercase letters, digits, dashes); else ValueError."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"a lease name is lowercase letters, digits and dashes: {name!r}")
    return name


class FileLease:
    """Held while this process keeps an exclusive `flock` on the file; the kernel drops it when the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle: IO[bytes] | None = None
        self._lock = threading.Lock()

    def held(self) -> bool:
        with self._lock:
            if self._handle is None:
                handle = open(self.path, "a+b")  # noqa: SIM115 - kept open while held
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    return False
                self._handle = handle
            return True

    def release(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    close = release
