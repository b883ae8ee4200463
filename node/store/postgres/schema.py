"""The PostgreSQL DDL of a chain table and its append-only guards (PL/pgSQL triggers)."""

from __future__ import annotations

from typing import Final

from node.store.chainformat import HASH_BYTES
from node.store.postgres import ddl
from node.store.postgres.ddl import BEFORE, DELETE, INSERT, ROW, TRUNCATE, UPDATE

ANCHORS: Final[str] = "hedui_chain_anchors"
#: The transaction-local setting remove_prefix sets so the delete guard lets entries below it go.
REMOVE_BELOW: Final[str] = "hedui.remove_below_{t}"

# Guard function name -> its PL/pgSQL body, exactly as pg_proc.prosrc holds it (compared at every open).
BODIES: Final[dict[str, str]] = {
    "hedui_chain_refuse": """
BEGIN
    RAISE EXCEPTION 'append-only: % on % refused', TG_OP, TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END """,
    "hedui_chain_delete": f"""
DECLARE
    below bigint := coalesce(nullif(current_setting('hedui.remove_below_' || TG_TABLE_NAME, true), '')::bigint, 0);
    anchored bigint;
BEGIN
    -- Only remove_prefix's delete passes: it sets the setting and has recorded the anchor first.
    SELECT idx INTO anchored FROM {ANCHORS} WHERE chain = TG_TABLE_NAME;
    IF OLD.idx < least(below, coalesce(anchored, 0)) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'append-only: DELETE on % refused', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END """,
    # An anchor row is never updated down, moved or deleted; it is written only by remove_prefix's transaction
    # (which sets hedui.remove_below_<chain> to the new anchor first) and only upwards.
    "hedui_anchor_guard": """
DECLARE
    below text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'append-only: DELETE on % refused', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
    END IF;
    below := nullif(current_setting('hedui.remove_below_' || NEW.chain, true), '');
    IF below IS NULL OR NEW.idx IS DISTINCT FROM below::bigint OR NEW.idx <= 1
       OR (TG_OP = 'UPDATE' AND (NEW.chain IS DISTINCT FROM OLD.chain OR NEW.idx <= OLD.idx)) THEN
        RAISE EXCEPTION 'append-only: % on % refused (anchors only move up, inside remove_prefix)', TG_OP, TG_TABLE_NAME
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END """,
}

# One append guard function per chain table: static SQL, so PL/pgSQL plans the head lookup once per session.
APPEND_BODY: Final[str] = f"""
DECLARE head_idx bigint; head_hash bytea;
BEGIN
    SELECT idx, hash INTO head_idx, head_hash FROM "{{t}}" ORDER BY idx DESC LIMIT 1;
    IF NEW.idx IS DISTINCT FROM coalesce(head_idx, 0) + 1
       OR NEW.prev_hash IS DISTINCT FROM coalesce(head_hash, '\\x{'00' * HASH_BYTES}'::bytea) THEN
        RAISE EXCEPTION 'append-only: idx must be max(idx)+1 and prev_hash the head hash'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END """


def append_function(t: str) -> str:
    """The name of the per-table append guard function."""
    return f"hedui_append_{t}"


def bodies(t: str) -> dict[str, str]:
    """Every guard function a chain table relies on -> its expected body."""
    return {**BODIES, append_function(t): APPEND_BODY.format(t=t)}


ANCHORS_TABLE: Final[str] = f"""
CREATE TABLE IF NOT EXISTS {ANCHORS}(
    chain TEXT PRIMARY KEY,
    idx BIGINT NOT NULL,
    prev_hash BYTEA NOT NULL
);
"""

# kind and key are stored as their UTF-8 bytes: exactly what is hashed (TEXT cannot hold NUL).
TABLE: Final[str] = f"""
CREATE TABLE IF NOT EXISTS "{{t}}"(
    idx BIGINT PRIMARY KEY CHECK (idx >= 1),
    at_ms BIGINT NOT NULL,
    kind BYTEA NOT NULL,
    key BYTEA NOT NULL,
    payload BYTEA NOT NULL,
    prev_hash BYTEA NOT NULL CHECK (octet_length(prev_hash) = {HASH_BYTES}),
    hash BYTEA NOT NULL CHECK (octet_length(hash) = {HASH_BYTES})
);
CREATE INDEX IF NOT EXISTS "{{t}}_key" ON "{{t}}"(key, idx);
"""
COLUMNS: Final[tuple[str, ...]] = ("idx", "at_ms", "kind", "key", "payload", "prev_hash", "hash")

ENABLE_ALWAYS: Final[str] = ddl.ENABLE_ALWAYS


def guards(t: str, prunable: bool) -> dict[str, tuple[int, str]]:
    """Trigger name -> (tgtype, function) of every guard of chain `t`, the anchors table's included.

    A non-prunable chain's delete guard always refuses (no setting or anchor opens it).
    """
    return {
        f"{t}_no_update": (ROW | BEFORE | UPDATE, "hedui_chain_refuse"),
        f"{t}_no_delete": (ROW | BEFORE | DELETE, "hedui_chain_delete" if prunable else "hedui_chain_refuse"),
        f"{t}_no_truncate": (BEFORE | TRUNCATE, "hedui_chain_refuse"),
        f"{t}_append_next": (ROW | BEFORE | INSERT, append_function(t)),
        f"{ANCHORS}_guard": (ROW | BEFORE | INSERT | UPDATE | DELETE, "hedui_anchor_guard"),
        f"{ANCHORS}_no_truncate": (BEFORE | TRUNCATE, "hedui_chain_refuse"),
    }


def guard_table(name: str, t: str) -> str:
    """The table a guard of chain `t` sits on."""
    return ANCHORS if name.startswith(f"{ANCHORS}_") else t


def chain_guards(t: str, prunable: bool) -> ddl.Guards:
    """Every guard function and trigger of chain `t` (missing_guards reports them, a writable open restores them)."""
    return ddl.Guards(bodies(t), {name: (guard_table(name, t), tgtype, fn)
                                  for name, (tgtype, fn) in guards(t, prunable).items()})
