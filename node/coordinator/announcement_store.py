"""Where the directory keeps the announcements it accepted and when each was last heard: the seam to a shared store.

`Directory` reads and writes its announcements only through an `AnnouncementStore`. The one
implementation here is the JSON file `directory.json` in the coordinator's data directory, which
the workers of one coordinator (and replicas on hosts sharing that filesystem) rewrite under a
read-modify-write. `AnnouncementDocument` keeps the same JSON in the member's storage
(`Storage.document("directory.json")`: that very file on SQLite, a row on PostgreSQL), so replicas
on different hosts sharing one database see each other's announcements.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from node import files
from node.store.interfaces import SharedDocument


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


class AnnouncementFile:
    """`directory.json`: {"members": [hex announcement…], "seen_ms": [ms…]} (parallel lists; a file from
    before replicas has no "seen_ms", its announcements count as heard when the file was written)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: int | None = None

    def changed(self) -> list[Heard] | None:
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if stamp == self._stamp:
            return None
        try:
            data = json.loads(self.path.read_text())
            members = [bytes.fromhex(raw) for raw in data.get("members", [])]
            seen = data.get("seen_ms") or [stamp // 1_000_000] * len(members)
        except (ValueError, TypeError, AttributeError):
            return None  # being replaced right now, or unreadable: keep what is held, read it next time
        if len(seen) != len(members) or not all(isinstance(s, int) for s in seen):
            return None
        self._stamp = stamp
        return [Heard(a, s) for a, s in zip(members, seen, strict=True)]

    def save(self, heard: Sequence[Heard]) -> None:
        files.write_file(self.path, json.dumps({"members": [h.announcement.hex() for h in heard],
                                                "seen_ms": [h.seen_ms for h in heard]}), replace=True)
        self._stamp = self.path.stat().st_mtime_ns


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
