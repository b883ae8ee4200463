"""The PostgreSQL DDL of a chain table and its append-only guards (PL/pgSQL triggers)."""

from __future__ import annotations

from typing import Final

from node.store.chainformat import HASH_BYTES

ANCHORS: Final[str] = "hedui_chain_anchors"
#: The transaction-local setting remove_prefix sets so the delete guard lets entries below it go.
REMOVE_BELOW: Final[str] = "hedui.remove_below_{t}"

FUNCTIONS: Final[str] = f"""
CREATE OR REPLACE FUNCTION hedui_chain_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'append-only: % on % refused', TG_OP, TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END $$;

CREATE OR REPLACE FUNCTION hedui_chain_delete() RETURNS trigger LANGUAGE plpgsql AS $$
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
END $$;

CREATE TABLE IF NOT EXISTS {ANCHORS}(
    chain TEXT PRIMARY KEY,
    idx BIGINT NOT NULL,
    prev_hash BYTEA NOT NULL
);
"""

# One append guard function per chain table: static SQL, so PL/pgSQL plans the head lookup once per session.
APPEND_FUNCTION: Final[str] = f"""
CREATE OR REPLACE FUNCTION "hedui_append_{{t}}"() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE head_idx bigint; head_hash bytea;
BEGIN
    SELECT idx, hash INTO head_idx, head_hash FROM "{{t}}" ORDER BY idx DESC LIMIT 1;
    IF NEW.idx IS DISTINCT FROM coalesce(head_idx, 0) + 1
       OR NEW.prev_hash IS DISTINCT FROM coalesce(head_hash, '\\x{'00' * HASH_BYTES}'::bytea) THEN
        RAISE EXCEPTION 'append-only: idx must be max(idx)+1 and prev_hash the head hash'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;
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

# Guard name suffix -> CREATE TRIGGER statement (the trigger is named "<table>_<suffix>"). Each is then
# ENABLE ALWAYS: an ordinary or replica-only trigger does not fire in a `session_replication_role = replica`
# session, so only an always-enabled guard guards.
GUARDS: Final[dict[str, str]] = {
    "no_update": 'CREATE TRIGGER "{t}_no_update" BEFORE UPDATE ON "{t}" FOR EACH ROW EXECUTE FUNCTION hedui_chain_refuse()',
    "no_delete": 'CREATE TRIGGER "{t}_no_delete" BEFORE DELETE ON "{t}" FOR EACH ROW EXECUTE FUNCTION hedui_chain_delete()',
    "no_truncate": 'CREATE TRIGGER "{t}_no_truncate" BEFORE TRUNCATE ON "{t}" FOR EACH STATEMENT '
                   "EXECUTE FUNCTION hedui_chain_refuse()",
    "append_next": 'CREATE TRIGGER "{t}_append_next" BEFORE INSERT ON "{t}" FOR EACH ROW EXECUTE FUNCTION "hedui_append_{t}"()',
}
ENABLE_ALWAYS: Final[str] = 'ALTER TABLE "{t}" ENABLE ALWAYS TRIGGER "{name}"'
# Always-enabled triggers of a table (disabled, origin-only 'O' or replica-only 'R' count as missing).
TRIGGERS_SQL: Final[str] = (
    "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal AND tgenabled = 'A'"
)
