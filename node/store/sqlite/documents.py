"""A shared document on SQLite storage: a file in the data directory, replaced atomically, read again when its mtime moves."""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from pathlib import Path

from node import files
from node.store.errors import StoreError

#: Documents readable by anyone on the host (what the coordinator publishes anyway); others are owner-only.
PUBLIC: frozenset[str] = frozenset({"standards.json"})


class FileDocument:
    """`path` (e.g. directory.json, standards.json: the files these were before storage knew them, unchanged)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: int | None = None
        self._lock = threading.Lock()

    def changed(self) -> bytes | None:
        try:
            stamp = self.path.stat().st_mtime_ns
            if stamp == self._stamp:
                return None
            body = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror}") from None
        self._stamp = stamp
        return body

    def write(self, body: bytes) -> None:
        mode = files.PUBLIC if self.path.name in PUBLIC else files.PRIVATE
        try:
            files.write_file(self.path, bytes(body), replace=True, mode=mode)
            self._stamp = self.path.stat().st_mtime_ns
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror}") from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive `flock` on `<path>.lock` (the lock file the standards used before), and this process's lock."""
        with self._lock, open(self.path.with_name(f"{self.path.name}.lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def close(self) -> None:
        return None
