"""The coordinator's locator rows in PostgreSQL: shards, the set in force, a version counter (one writer at a time)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import psycopg

from node.store.interfaces import LocatorSet
from node.store.postgres import pool as pools
from node.store.postgres.pooled import Pooled

_SCHEMA: Final[str] = """
CREATE TABLE IF NOT EXISTS hedui_locator_shards(
    province TEXT NOT NULL, epoch BIGINT NOT NULL, generation BIGINT NOT NULL, shard INTEGER NOT NULL,
    shard_bits INTEGER NOT NULL, subject_count BIGINT NOT NULL, shard_count BIGINT NOT NULL, filter BYTEA NOT NULL,
    PRIMARY KEY (province, epoch, generation, shard));
CREATE TABLE IF NOT EXISTS hedui_locator_active(
    province TEXT NOT NULL, epoch BIGINT NOT NULL, generation BIGINT NOT NULL, subject_count BIGINT NOT NULL,
    PRIMARY KEY (province, epoch));
CREATE TABLE IF NOT EXISTS hedui_locator_version(one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one), value BIGINT NOT NULL);
"""
_S, _A = "hedui_locator_shards", "hedui_locator_active"


class PgLocators(Pooled):
    """node.store.interfaces.LocatorStore in three tables; writers serialised by a transaction advisory lock."""

    what = "locators"

    def __init__(self, url: str) -> None:
        super().__init__(url, _SCHEMA)

    def put_shard(self, province: str, epoch: int, generation: int, shard: int, shard_bits: int,
                  subject_count: int, shard_count: int, filter_bytes: bytes, *, oldest_epoch: int,
                  max_pending: int) -> str:
        outcome = "mismatch"
        with self._conn("writing") as conn, conn.transaction():
            outcome = self._put(conn, (province, epoch), generation, shard, shard_bits, subject_count, shard_count,
                                filter_bytes, oldest_epoch, max_pending)
            if outcome == "mismatch":
                raise psycopg.Rollback()  # nothing of this shard kept
        return outcome

    @staticmethod
    def _put(conn: psycopg.Connection, key: tuple[str, int], generation: int, shard: int, shard_bits: int,
             subject_count: int, shard_count: int, filter_bytes: bytes, oldest_epoch: int, max_pending: int) -> str:
        """put_shard's decision inside its transaction (node.store.sqlite.locators.put, in PostgreSQL)."""
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (pools.lock_key("locators"),))
        row = conn.execute(f"SELECT generation FROM {_A} WHERE province = %s AND epoch = %s", key).fetchone()
        in_force = row[0] if row is not None else 0
        if generation < in_force:
            return "older"
        if generation == in_force:
            return "in_force"
        conn.execute(f"INSERT INTO {_S} VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT "
                     "(province, epoch, generation, shard) DO UPDATE SET shard_bits = excluded.shard_bits, "
                     "subject_count = excluded.subject_count, shard_count = excluded.shard_count, "
                     "filter = excluded.filter",
                     (*key, generation, shard, shard_bits, subject_count, shard_count, bytes(filter_bytes)))
        conn.execute(f"DELETE FROM {_S} WHERE province = %s AND epoch = %s AND generation != %s AND generation "
                     f"NOT IN (SELECT DISTINCT generation FROM {_S} WHERE province = %s AND epoch = %s "
                     "AND generation != %s ORDER BY generation DESC LIMIT %s)",
                     (*key, in_force, *key, in_force, max_pending))
        shards, total, claims = conn.execute(
            f"SELECT count(*), sum(shard_count), count(DISTINCT subject_count) FROM {_S}"
            " WHERE province = %s AND epoch = %s AND generation = %s", (*key, generation)).fetchone()
        if shards < 1 << shard_bits:
            return "pending"
        if claims != 1 or total != subject_count:
            return "mismatch"
        conn.execute(f"INSERT INTO {_A} VALUES (%s, %s, %s, %s) ON CONFLICT (province, epoch) DO UPDATE SET "
                     "generation = excluded.generation, subject_count = excluded.subject_count",
                     (*key, generation, subject_count))
        conn.execute(f"DELETE FROM {_S} WHERE province = %s AND epoch = %s AND generation < %s", (*key, generation))
        conn.execute(f"DELETE FROM {_S} WHERE epoch < %s", (oldest_epoch,))
        conn.execute(f"DELETE FROM {_A} WHERE epoch < %s", (oldest_epoch,))
        conn.execute("INSERT INTO hedui_locator_version(value) VALUES (1) "
                     "ON CONFLICT (one) DO UPDATE SET value = hedui_locator_version.value + 1")
        return "complete"

    def read(self, version: int, known: Mapping[tuple[str, int], int]) -> tuple[int, list[LocatorSet]] | None:
        with self._conn("reading") as conn:
            row = conn.execute("SELECT value FROM hedui_locator_version").fetchone()
            if (row[0] if row else 0) == version:
                return None  # the cheap path: one small read
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                row = conn.execute("SELECT value FROM hedui_locator_version").fetchone()
                now = row[0] if row else 0
                sets = []
                for province, epoch, generation, count in conn.execute(
                        f"SELECT province, epoch, generation, subject_count FROM {_A}").fetchall():
                    shards = None
                    if known.get((province, epoch)) != generation:
                        shards = tuple((b, n, bytes(f)) for b, n, f in conn.execute(
                            f"SELECT shard_bits, shard_count, filter FROM {_S} WHERE province = %s AND epoch = %s "
                            "AND generation = %s ORDER BY shard", (province, epoch, generation)).fetchall())
                    sets.append(LocatorSet(province, epoch, generation, count, shards))
            finally:
                conn.execute("COMMIT")
        return now, sets
