"""Which process of a node's `--workers` does the node's one-at-a-time work: the one holding a lock file.

Checkpoints of one audit chain, witness files and locators must come from one process (two
processes' checkpoints would not extend each other; two publishers would race). The first
process to take the lock (a non-blocking `flock`) leads until it exits or releases it; the
others ask again later and take over then.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


class Lead:
    """A `flock` on `path` this process holds once `held()` first succeeds, until `release()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] | None = None

    def held(self) -> bool:
        """Whether this process leads (it holds the lock, or takes it now)."""
        if self._handle is None:
            handle = open(self.path, "a+b")  # noqa: SIM115 - kept open while leading
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return False
            self._handle = handle
        return True

    def release(self) -> None:
        """Stop leading (another process, or a restarted node in this one, may take over)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
