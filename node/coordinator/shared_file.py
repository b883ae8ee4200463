"""A JSON file of hex-encoded signed messages that several coordinator workers rewrite (the
directory's announcements, the published standards): read again only when it changed."""

from __future__ import annotations

import json
from pathlib import Path


def changed_entries(path: Path, stamp: int | None, key: str) -> tuple[int, list[str]] | None:
    """(new modification stamp, the list under `key`) when `path` changed since `stamp`; None when it
    did not, is absent, or is being replaced right now (keep what you have, read it next time)."""
    try:
        now = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    if now == stamp:
        return None
    try:
        entries = json.loads(path.read_text()).get(key, [])
    except ValueError:
        return None
    return now, entries
