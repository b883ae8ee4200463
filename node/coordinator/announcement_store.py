"""Where the directory keeps the announcements it accepted and when each was last heard: the seam to a shared store.

`Directory` reads and writes its announcements only through an `AnnouncementStore`.
`AnnouncementDocument` keeps them as JSON in the member's storage (`Storage.document("directory.json")`:
the file `directory.json` in the data directory on SQLite, a row on PostgreSQL), so every worker and
replica sharing the storage sees each other's announcements; each accepted announcement is a
read-modify-write under the document's lock (`locked()`), so two replicas accepting at once keep both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from node.store.interfaces import SharedDocument
from node.store.sqlite.documents import FileDocument


@dataclass(frozen=True)
class Heard:
    """One accepted announcement (serialized `SignedAnnouncement`) and when the coordinator last received it (unix ms)."""

    announcement: bytes
    seen_ms: int


class AnnouncementStore(Protocol):
    """Every announcement the directory accepted, with its freshness; shared by every coordinator process."""

    def changed(self) -> list[Heard] | None:
        """Every stored announcement when the store changed since this object last read or wrote it; None when it did not."""
        ...

    def save(self, heard: Sequence[Heard]) -> None:
        """Replace the stored announcements with `heard` (atomically: a reader sees the old or the new list)."""
        ...

    def locked(self) -> AbstractContextManager[None]:
        """Serialise a read-modify-write (`changed`, then `save`) with every other process and host sharing the store."""
        ...


def _parse(raw: bytes, default_seen_ms: int) -> list[Heard] | None:
    """directory.json's announcements; None when unreadable (keep what is held)."""
    try:
        data = json.loads(raw)
        members = [bytes.fromhex(a) for a in data.get("members", [])]
        seen = data.get("seen_ms") or [default_seen_ms] * len(members)
    except (ValueError, TypeError, AttributeError):
        return None
    if len(seen) != len(members) or not all(isinstance(s, int) for s in seen):
        return None
    return [Heard(a, s) for a, s in zip(members, seen, strict=True)]


class AnnouncementDocument:
    """The directory.json body kept in a `SharedDocument` of the member's storage (same JSON as AnnouncementFile)."""

    def __init__(self, document: SharedDocument) -> None:
        self.document = document
        self.path = getattr(document, "path", None)  # the file, when the storage keeps it as one

    def changed(self) -> list[Heard] | None:
        raw = self.document.changed()
        return None if raw is None else _parse(raw, int(time.time() * 1000))

    def save(self, heard: Sequence[Heard]) -> None:
        self.document.write(json.dumps({"members": [h.announcement.hex() for h in heard],
                                        "seen_ms": [h.seen_ms for h in heard]}).encode())

    def locked(self) -> AbstractContextManager[None]:
        return self.document.locked()


def announcement_file(path: Path) -> AnnouncementDocument:
    """The announcements in the JSON file `path` (directory.json, as the SQLite storage keeps it)."""
    return AnnouncementDocument(FileDocument(path))
