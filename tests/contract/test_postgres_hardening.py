"""PostgreSQL backend hardening: guards that stay guards, error hygiene, no DDL stalls, no deadlocks, one clock."""

from __future__ import annotations

import psycopg
import pytest

from node.store.errors import StoreError
from node.store.postgres.chain import PgChain


def _dbname(url: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(url)["dbname"]


def test_replica_only_guard_is_reported_and_restored_and_replica_sessions_are_refused(postgres_url: str) -> None:
    """A guard switched to replica-only is missing and re-enabled ALWAYS; replica mode passes no guard; a pool refuses it."""
    with PgChain(postgres_url, "audit", prunable=True) as chain:
        chain.append("k", "a", b"1")
        with psycopg.connect(postgres_url, autocommit=True) as sql:
            sql.execute("ALTER TABLE audit ENABLE REPLICA TRIGGER audit_no_update")
            sql.execute("ALTER TABLE audit ENABLE TRIGGER audit_no_truncate")  # origin-only
            assert chain.missing_guards() == ("audit_no_update", "audit_no_truncate")
        with PgChain(postgres_url, "audit", prunable=True) as reopened:
            assert reopened.restored_guards == ("audit_no_update", "audit_no_truncate")
            assert reopened.missing_guards() == ()
        with psycopg.connect(postgres_url, autocommit=True) as sql:
            sql.execute("SET session_replication_role = replica")
            for statement in ("UPDATE audit SET at_ms = 0", "TRUNCATE audit", "DELETE FROM audit"):
                with pytest.raises(psycopg.errors.RestrictViolation):
                    sql.execute(statement)
        assert chain.count() == 1
    with psycopg.connect(postgres_url, autocommit=True) as sql:
        sql.execute(f'ALTER DATABASE "{_dbname(postgres_url)}" SET session_replication_role = replica')
    with pytest.raises(StoreError, match="session_replication_role"):
        PgChain(postgres_url, "audit", prunable=True)
