"""PostgreSQL guards beyond the chains: the checkpoint book's and probing ledger's append-only triggers and the
facts' change triggers are always-enabled, source-checked by missing_guards() and restored by a writable open."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import psycopg
import pytest

from node.store.postgres.chain import PgChain
from node.store.postgres.checkpoints import PgCheckpoints
from node.store.postgres.facts import PgStore
from node.store.postgres.probes import PgProbeLedger

# (open it, a row to insert, statements its guards must refuse in any session mode)
_APPEND_ONLY: dict[str, tuple[Callable[..., Any], str, tuple[str, ...]]] = {
    "checkpoints": (PgCheckpoints, "INSERT INTO audit_checkpoints(line) VALUES ('{}')",
                    ("UPDATE audit_checkpoints SET line = 'x'", "DELETE FROM audit_checkpoints",
                     "TRUNCATE audit_checkpoints")),
    "probes": (lambda url, **kw: PgProbeLedger(url, key=b"k" * 32, **kw),
               "INSERT INTO hedui_probes VALUES ('r', 'c', 'i', '\\x00'::bytea, 0)",
               ("UPDATE hedui_probes SET at_ms = 1", "DELETE FROM hedui_probes", "TRUNCATE hedui_probes")),
}


def _replica(url: str) -> psycopg.Connection:
    """A superuser session in replica mode (ordinary and replica-only triggers do not fire there)."""
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET session_replication_role = replica")
    return conn


@pytest.mark.parametrize("which", sorted(_APPEND_ONLY))
def test_append_only_tables_refuse_changes_even_in_replica_mode(postgres_url: str, which: str) -> None:
    """The checkpoint book's and the probing ledger's rows cannot be updated, deleted or truncated in a replica-mode session."""
    opener, insert, refused = _APPEND_ONLY[which]
    with opener(postgres_url) as opened, _replica(postgres_url) as sql:
        assert opened.missing_guards() == ()
        sql.execute(insert)
        for statement in refused:
            with pytest.raises(psycopg.errors.RestrictViolation):
                sql.execute(statement)
        assert sql.execute("SELECT count(*) FROM " + refused[-1].split()[-1]).fetchone()[0] == 1


@pytest.mark.parametrize("which", sorted(_APPEND_ONLY))
def test_dropped_disabled_or_replaced_table_guards_are_reported_and_restored(postgres_url: str, which: str) -> None:
    """A dropped trigger, one made origin-only and a replaced guard function are reported (also read-only) and re-installed."""
    opener, insert, refused = _APPEND_ONLY[which]
    with opener(postgres_url) as opened:
        names = opened.guards
        function = next(iter(names.functions))
        first, second = names.triggers
        table = names.triggers[first][0]
        with psycopg.connect(postgres_url, autocommit=True) as sql:
            sql.execute(f"DROP TRIGGER {first} ON {table}")
            sql.execute(f"ALTER TABLE {table} ENABLE TRIGGER {second}")  # origin-only
            sql.execute(f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                        "BEGIN RETURN NULL; END $$")
        expected = (f"{function}()", first, second)
        assert opened.missing_guards() == expected
        if which == "checkpoints":  # the CLIs' read-only open reports, and changes nothing
            with PgCheckpoints(postgres_url, readonly=True) as ro:
                assert ro.missing_guards() == expected and ro.restored_guards == ()
            assert opened.missing_guards() == expected
        with opener(postgres_url) as reopened:
            assert reopened.restored_guards == expected and reopened.missing_guards() == ()
    with _replica(postgres_url) as sql:
        sql.execute(insert)
        for statement in refused:
            with pytest.raises(psycopg.errors.RestrictViolation):
                sql.execute(statement)


def test_fact_changes_are_counted_even_in_replica_mode_and_their_triggers_restored(postgres_url: str) -> None:
    """A replica-mode session's change bumps the store version; a dropped, disabled or replaced change trigger
    or function (or one whose search_path was reset) is reported and re-installed by a writable open."""
    with PgStore(postgres_url) as store:
        watch = store.change_watch()
        before = watch.version()
        with _replica(postgres_url) as sql:
            sql.execute("INSERT INTO attributes(code, aggregate) VALUES ('a', 'sum')")
        assert watch.version() > before and store.missing_guards() == ()
        with psycopg.connect(postgres_url, autocommit=True) as sql:
            sql.execute("DROP TRIGGER facts_changed ON facts")
            sql.execute("ALTER TABLE subjects DISABLE TRIGGER subjects_changed")
            sql.execute("ALTER TABLE attributes ENABLE REPLICA TRIGGER attributes_changed")
            sql.execute("ALTER FUNCTION hedui_store_changed() RESET search_path")
        expected = ("hedui_store_changed()", "subjects_changed", "facts_changed", "attributes_changed")
        assert store.missing_guards() == expected
        with PgStore(postgres_url) as reopened:
            assert reopened.restored_guards == expected and reopened.missing_guards() == ()
        for statement in (f"INSERT INTO subjects(id, token) VALUES (1, '\\x{'11' * 32}'::bytea)",
                          "INSERT INTO facts VALUES (1, 'a', '2026-01-01', 's', 5)",
                          "UPDATE attributes SET aggregate = 'max'"):
            before = watch.version()
            with _replica(postgres_url) as sql:
                sql.execute(statement)
            assert watch.version() > before, statement


_PERMISSIVE: Final[str] = ("BEGIN IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; RETURN NEW; END")
# (open it writable, a row to insert, the guard to re-point with its table, event and function, an UPDATE it refuses)
_REPOINTED: dict[str, tuple[Callable[..., Any], str, tuple[str, str, str, str], str]] = {
    "checkpoints": (PgCheckpoints, "INSERT INTO audit_checkpoints(line) VALUES ('{}')",
                    ("audit_checkpoints_append_only", "audit_checkpoints", "UPDATE OR DELETE",
                     "hedui_checkpoints_refuse"), "UPDATE audit_checkpoints SET line = 'x'"),
    "chain": (lambda url: PgChain(url, "audit", prunable=True), "",
              ("audit_no_update", "audit", "UPDATE", "hedui_chain_refuse"), "UPDATE audit SET at_ms = 0"),
}


@pytest.mark.parametrize("which", sorted(_REPOINTED))
def test_guard_repointed_at_a_same_named_function_in_another_schema_is_reported_and_restored(
        postgres_url: str, which: str) -> None:
    """A guard trigger re-created to run a permissive same-named function in another schema is missing, and a
    writable open points it back at the real function, which refuses the change again."""
    opener, insert, (trigger, table, events, function), update = _REPOINTED[which]
    with opener(postgres_url) as opened:
        if which == "chain":
            opened.append("k", "a", b"1")
        with psycopg.connect(postgres_url, autocommit=True) as sql:
            if insert:
                sql.execute(insert)
            sql.execute("CREATE SCHEMA evil")
            sql.execute(f"CREATE FUNCTION evil.{function}() RETURNS trigger LANGUAGE plpgsql AS $$ {_PERMISSIVE} $$")
            sql.execute(f"DROP TRIGGER {trigger} ON {table}")
            sql.execute(f"CREATE TRIGGER {trigger} BEFORE {events} ON {table} FOR EACH ROW "
                        f"EXECUTE FUNCTION evil.{function}()")
            sql.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger}")
        assert opened.missing_guards() == (trigger,)
    with opener(postgres_url) as reopened:
        assert reopened.restored_guards == (trigger,) and reopened.missing_guards() == ()
    with _replica(postgres_url) as sql, pytest.raises(psycopg.errors.RestrictViolation):
        sql.execute(update)
