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


def test_anchor_rows_and_guard_functions_are_guarded(postgres_url: str) -> None:
    """A forged anchor cannot open the ledger for deletes, anchors only move up in remove_prefix, a replaced guard function is reported and restored."""
    with PgChain(postgres_url, "ledger") as ledger, PgChain(postgres_url, "audit", prunable=True) as audit:
        ledger.append_many([("k", f"{i}", b"x") for i in range(5)])
        audit.append_many([("k", f"{i}", b"x") for i in range(5)])
        assert ledger.missing_guards() == () and audit.missing_guards() == ()
        with psycopg.connect(postgres_url) as sql:  # one transaction: what remove_prefix does, on the ledger
            sql.execute("SELECT set_config('hedui.remove_below_ledger', '4', true)")
            sql.execute("INSERT INTO hedui_chain_anchors(chain, idx, prev_hash) VALUES ('ledger', 4, %s)", (b"\0" * 32,))
            with pytest.raises(psycopg.errors.RestrictViolation):
                sql.execute("DELETE FROM ledger WHERE idx < 4")
            sql.rollback()
            with pytest.raises(psycopg.errors.RestrictViolation):  # no setting: no anchor row
                sql.execute("INSERT INTO hedui_chain_anchors(chain, idx, prev_hash) VALUES ('audit', 3, %s)", (b"\0" * 32,))
            sql.rollback()
        assert ledger.count() == 5
        removed = audit.remove_prefix(lambda view: (3, ("audit.pruned", "p", b"")))
        assert removed is not None and audit.anchor()[0] == 3
        with psycopg.connect(postgres_url, autocommit=True) as sql:
            for statement in ("UPDATE hedui_chain_anchors SET idx = 1", "DELETE FROM hedui_chain_anchors",
                              "TRUNCATE hedui_chain_anchors"):
                with pytest.raises(psycopg.errors.RestrictViolation):
                    sql.execute(statement)
            sql.execute("CREATE OR REPLACE FUNCTION hedui_chain_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ "
                        "BEGIN RETURN NEW; END $$")
        assert ledger.missing_guards() == ("hedui_chain_refuse()",)
        with PgChain(postgres_url, "ledger") as reopened:
            assert reopened.restored_guards == ("hedui_chain_refuse()",) and reopened.missing_guards() == ()
        with psycopg.connect(postgres_url, autocommit=True) as sql, pytest.raises(psycopg.errors.RestrictViolation):
            sql.execute("UPDATE ledger SET at_ms = 0")
        assert audit.anchor()[0] == 3 and audit.count() == 4  # entries 3..5 and the marker
