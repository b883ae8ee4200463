"""The node's own signed audit checkpoints as a file (node.store.interfaces.CheckpointStorage): audit-checkpoints.jsonl."""

from __future__ import annotations

from pathlib import Path

from node import files
from node.store.audit.checkpoints import SignedCheckpoint, last_link, read_checkpoint_blobs
from node.store.errors import StoreError


class CheckpointFile:
    """The node's own append-only copy of the checkpoints it signed: one JSON line each, fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, signed: SignedCheckpoint) -> None:
        """Append one line and fsync it."""
        line = (signed.to_json_line() + "\n").encode()
        try:
            files.append(self.path, line)  # 0600, a planted symlink refused
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror}") from None

    def read(self) -> list[tuple[int, bytes | None, str | None]]:
        """(line number, blob or None, problem or None) per line; [] when there is no file yet."""
        if not self.path.exists():
            return []
        return read_checkpoint_blobs(self.path)

    def last_link(self) -> tuple[int, bytes]:
        """The `link` of the last readable checkpoint in the file (`NO_PREVIOUS` if none): what the next extends."""
        return last_link(self.read())
