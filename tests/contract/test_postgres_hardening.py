"""PostgreSQL backend hardening: guards that stay guards, error hygiene, no DDL stalls, no deadlocks, one clock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import psycopg
import pytest
import tomli_w

from node.store.errors import StoreError
from node.store.postgres import pool as pools
from node.store.postgres.chain import PgChain
from node.testing.cluster import build_federation

REPO = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize("url", ["postgresql://hedui:s3cr3t@[::1/db", "postgresql://hedui:s3%zzcr3t@localhost/db"])
def test_malformed_url_never_shows_its_password(tmp_path: Path, url: str) -> None:
    """backup, restore and ledger new-epoch on a URL libpq cannot parse: exit 2, one line on stderr, no password."""
    fed = build_federation(tmp_path, ["44"])
    assert fed.coordinator_config is not None
    for path in (fed.configs["44"], fed.coordinator_config):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        data["store"] = {"url": url}
        path.write_text(tomli_w.dumps(data), encoding="utf-8")
    (tmp_path / "bk").mkdir()
    for args in (("backup", "--config", fed.configs["44"], "--out", tmp_path / "out"),
                 ("restore", "--config", fed.configs["44"], "--from", tmp_path / "bk", "--force"),
                 ("ledger", "new-epoch", "--config", fed.coordinator_config)):
        done = subprocess.run([sys.executable, "-m", "node.cli.main", *map(str, args)], capture_output=True, text=True,
                              timeout=120, cwd=REPO)
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "s3" not in done.stderr + done.stdout, done.stderr
        assert pools.BAD_URL in done.stderr
    for call in (lambda: pools.acquire(url), lambda: PgChain(url, "audit")):
        with pytest.raises(StoreError) as caught:
            call()
        assert "s3" not in str(caught.value)


def _opens(url: str) -> list[BaseException | None]:
    """Open a writable fact store, audit chain, checkpoints and nonces in a thread; [error or None], or [] while it hangs."""
    from node.store.postgres.checkpoints import PgCheckpoints
    from node.store.postgres.facts import PgStore
    from node.store.postgres.nonces import PgNonceStore

    result: list[BaseException | None] = []

    def run() -> None:
        try:
            for opened in (PgStore(url), PgChain(url, "audit", prunable=True), PgCheckpoints(url),
                           PgNonceStore(url, window_ms=1000)):
                opened.close()
            result.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)  # a hang detector, not a speed assertion: without the fix this waits for the writer for ever
    return result


def test_opening_during_an_open_ingest_transaction_does_not_wait_for_it(postgres_url: str) -> None:
    """With an uncommitted facts write open elsewhere, opens run no DDL and return; a DDL they need fails on its lock timeout."""
    from node.store.postgres.facts import PgStore

    assert _opens(postgres_url) == [None]  # everything created
    for needs_ddl in (False, True):
        if needs_ddl:
            with psycopg.connect(postgres_url, autocommit=True) as sql:
                sql.execute("DROP TRIGGER facts_changed ON facts")
        writer = psycopg.connect(postgres_url)
        try:
            writer.execute("INSERT INTO subjects(id, token) VALUES (1, %s)", (b"t" * 32,))
            writer.execute("INSERT INTO facts(subject_id, attribute, as_of, source, value) "
                           "VALUES (1, 'a', '2026-01-01', 's', 5)")
            if not needs_ddl:
                assert _opens(postgres_url) == [None]
            else:
                with pytest.raises(StoreError, match="lock timeout"):
                    PgStore(postgres_url)
        finally:
            writer.rollback()
            writer.close()
    assert _opens(postgres_url) == [None]  # the trigger is back once the writer is gone


def test_overlapping_nonce_batches_in_opposite_orders_do_not_deadlock(postgres_url: str) -> None:
    """Two replicas' remember_many over the same 900 keys, forward and reversed, never deadlock; each key is fresh once."""
    from node.store.postgres.nonces import PgNonceStore

    stores = [PgNonceStore(postgres_url, window_ms=300_000) for _ in range(2)]
    try:
        at = time.time_ns() // 1_000_000
        for trial in range(5):
            batch = [("44", f"{trial}-{i:04d}".encode(), at) for i in range(900)]
            batches = [batch, batch[::-1]]
            answers: list[list[bool] | BaseException] = [[], []]
            gate = threading.Barrier(2)

            def run(n: int, batches: list = batches, answers: list = answers, gate: threading.Barrier = gate) -> None:
                gate.wait()
                try:
                    answers[n] = stores[n].remember_many(batches[n])
                except BaseException as exc:  # noqa: BLE001 - handed to the test
                    answers[n] = exc

            workers = [threading.Thread(target=run, args=(n,)) for n in range(2)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            assert not any(isinstance(a, BaseException) for a in answers), answers
            forward, backward = answers
            assert isinstance(forward, list) and isinstance(backward, list)
            assert all(a != b for a, b in zip(forward, backward[::-1], strict=True))  # exactly one of the two
    finally:
        for store in stores:
            store.close()


class _FastClock:
    """A replica's clock an hour ahead (the real clock, shifted)."""

    @staticmethod
    def time() -> float:
        return time.time() + 3600

    @staticmethod
    def time_ns() -> int:
        return time.time_ns() + 3600 * 10**9


def test_nonces_are_purged_and_judged_by_the_database_clock(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica with a fast clock purges nothing another replica still accepts; a nonce older than the horizon is never fresh."""
    from node.store.postgres import nonces as nonces_mod

    window = 60_000
    honest = nonces_mod.PgNonceStore(postgres_url, window_ms=window)
    fast = nonces_mod.PgNonceStore(postgres_url, window_ms=window)
    try:
        now = time.time_ns() // 1_000_000
        assert honest.remember("44", b"n" * 16, now - window // 2) is True  # inside the honest replica's window
        monkeypatch.setattr(nonces_mod, "time", _FastClock, raising=False)
        ahead = now + 3_600_000
        assert all(fast.remember_many([("51", f"f{i:04d}".encode(), ahead) for i in range(1000)]))  # its purge runs
        monkeypatch.undo()
        assert honest.remember("44", b"n" * 16, now - window // 2) is False  # still remembered: still a replay
        stale = now - 3 * window  # beyond twice the window by the database clock: maybe seen and purged
        assert honest.remember("44", b"s" * 16, stale) is False
        assert honest.remember_many([("44", b"t" * 16, stale), ("44", b"u" * 16, now)]) == [False, True]
    finally:
        honest.close()
        fast.close()


def test_reads_inside_append_next_use_the_locked_connection(postgres_url: str) -> None:
    """With every other pooled connection taken, append_next's build still reads head, entry and latest (no second connection)."""
    with PgChain(postgres_url, "ledger") as chain:
        chain.append("grant", "c-1", b"g")
        pool = pools.acquire(postgres_url)
        taken = [pool.getconn() for _ in range(pools.MAX_CONNECTIONS - 1)]  # one left: the append's
        try:
            seen: list[object] = []

            def build(head: tuple[int, bytes]) -> list[tuple[str, str, bytes]]:
                latest = chain.latest("c-1")
                seen.extend([chain.head() == head, chain.entry(1) == latest, latest is not None and latest.kind])
                return [("revoke", "c-1", b"r")]

            written = chain.append_next(build)
        finally:
            for conn in taken:
                pool.putconn(conn)
            pools.release(pool)
        assert seen == [True, True, "grant"] and [e.kind for e in written] == ["revoke"]
        assert chain.latest("c-1") == written[0]
    assert pools.POOL_WAIT_S <= 2


def test_a_tail_one_host_read_is_missed_by_that_host(postgres_url: str, tmp_path: Path) -> None:
    """Host B reads the head host A committed; when the database loses that tail, B refuses the ledger too."""
    from node.store import ledger
    from node.store.postgres import PgStorage

    with PgStorage(postgres_url, data_dir=tmp_path / "b") as host_b:
        reader = host_b.ledger()  # B's ledger.head: the identity entry only
        with PgStorage(postgres_url, data_dir=tmp_path / "a") as host_a:
            host_a.ledger().append_many([(ledger.GRANT, f"c-{i}", b"{}") for i in range(5)])
        assert reader.head()[0] == 6  # B serves the feed and sees A's commits
    with psycopg.connect(postgres_url, autocommit=True) as sql:  # the database loses the tail (an older copy put back)
        sql.execute("ALTER TABLE ledger DISABLE TRIGGER USER")
        sql.execute("DELETE FROM ledger WHERE idx > 3")
    with PgStorage(postgres_url, data_dir=tmp_path / "b") as host_b, pytest.raises(ledger.LedgerTruncated):
        host_b.ledger()


def test_a_session_cannot_shadow_the_anchors_with_its_own_table(postgres_url: str) -> None:
    """A temporary hedui_chain_anchors earlier on a session's search_path does not open the audit chain's delete guard."""
    with PgChain(postgres_url, "audit", prunable=True) as audit:
        audit.append_many([("k", f"{i}", b"x") for i in range(5)])
        with psycopg.connect(postgres_url) as sql:
            sql.execute("CREATE TEMP TABLE hedui_chain_anchors(chain TEXT, idx BIGINT, prev_hash BYTEA)")
            sql.execute("INSERT INTO pg_temp.hedui_chain_anchors VALUES ('audit', 4, %s)", (b"\0" * 32,))
            sql.execute("SELECT set_config('hedui.remove_below_audit', '4', true)")
            with pytest.raises(psycopg.errors.RestrictViolation):
                sql.execute("DELETE FROM audit WHERE idx < 4")
        assert audit.count() == 5 and audit.missing_guards() == ()
        with psycopg.connect(postgres_url, autocommit=True) as sql:  # the same body without the pinned search_path
            body = sql.execute("SELECT prosrc FROM pg_proc WHERE proname = 'hedui_chain_delete'").fetchone()[0]
            sql.execute("CREATE OR REPLACE FUNCTION hedui_chain_delete() RETURNS trigger LANGUAGE plpgsql AS $$"
                        + body + "$$")
        assert audit.missing_guards() == ("hedui_chain_delete()",)
