"""Server-side sessions: a random token in an HttpOnly cookie, its SHA-256 in the database,
an idle timeout and an absolute lifetime, and one CSRF token per session."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Final

from node.web.db import WebDb

COOKIE: Final[str] = "hedui_session"
DEFAULT_IDLE_S: Final[int] = 15 * 60
MAX_AGE_S: Final[int] = 12 * 3600  # a session ends after a working day, however active


@dataclass(frozen=True)
class Session:
    """A live session: signed in as `account_id` (empty before login), with its CSRF token."""

    token: str
    account_id: str
    csrf: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Sessions:
    """Sessions in the web database; a token is never stored, only its hash."""

    def __init__(self, db: WebDb, *, idle_s: int = DEFAULT_IDLE_S) -> None:
        self.db, self.idle_s = db, idle_s

    def create(self, account_id: str = "", *, now_ms: int | None = None) -> Session:
        now = _now_ms() if now_ms is None else now_ms
        session = Session(secrets.token_urlsafe(32), account_id, secrets.token_urlsafe(32))
        with self.db.tx() as conn:
            conn.execute("DELETE FROM sessions WHERE last_ms < ? OR created_ms < ?",
                         (now - self.idle_s * 1000, now - MAX_AGE_S * 1000))
            conn.execute("INSERT INTO sessions(token_hash, account_id, csrf, created_ms, last_ms) VALUES (?, ?, ?, ?, ?)",
                         (_digest(session.token), account_id or None, session.csrf, now, now))
        return session

    def get(self, token: str | None, *, now_ms: int | None = None) -> Session | None:
        """The live session of `token` (its idle clock restarted), or None when unknown or expired."""
        if not token or len(token) > 128:
            return None
        now = _now_ms() if now_ms is None else now_ms
        digest = _digest(token)
        row = self.db.one("SELECT account_id, csrf, created_ms, last_ms FROM sessions WHERE token_hash = ?", (digest,))
        if row is None:
            return None
        account_id, csrf, created, last = row
        with self.db.tx() as conn:
            if now - last > self.idle_s * 1000 or now - created > MAX_AGE_S * 1000:
                conn.execute("DELETE FROM sessions WHERE token_hash = ?", (digest,))
                return None
            conn.execute("UPDATE sessions SET last_ms = ? WHERE token_hash = ?", (now, digest))
        return Session(token, account_id or "", csrf)

    def end(self, token: str | None) -> None:
        if token:
            with self.db.tx() as conn:
                conn.execute("DELETE FROM sessions WHERE token_hash = ?", (_digest(token),))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
