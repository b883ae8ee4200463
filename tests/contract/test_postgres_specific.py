"""PostgreSQL-only behaviour of the storage backend: trigger guards, writers in many processes, server restarts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import psycopg
import pytest

from node.store.chainformat import GENESIS, entry_hash
from node.store.errors import StoreError
from node.store.postgres import PgStorage
from node.store.postgres.chain import PgChain
from node.store.postgres.nonces import PgNonceStore
from node.testing.postgres import PostgresServer

_GATE = 0x4845_4455_4900  # advisory lock the test holds until every child process is connected


def _children(code: str, n: int, url: str, *args: str) -> list[str]:
    """Run `code` in n separate Python processes, released together once all are connected; their stdout lines."""
    script = textwrap.dedent(f"""
        import sys, psycopg
        url = sys.argv[1]
        gate = psycopg.connect(url, autocommit=True)
        print("ready", flush=True)
        gate.execute("SELECT pg_advisory_lock_shared(%s)", ({_GATE},))
        gate.close()
    """) + textwrap.dedent(code)
    with psycopg.connect(url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (_GATE,))
        procs = [subprocess.Popen([sys.executable, "-c", script, url, str(i), *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(n)]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        holder.execute("SELECT pg_advisory_unlock(%s)", (_GATE,))
        outputs = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            outputs.extend(out.split())
    return outputs


def test_triggers_refuse_update_delete_truncate_and_skipping_insert(postgres_url: str) -> None:
    """Raw SQL cannot edit, delete, truncate or skip ahead in a chain table: the PL/pgSQL guards refuse."""
    with PgChain(postgres_url, "audit", prunable=True) as chain:
        chain.append_many([("k", "a", b"1"), ("k", "b", b"2")])
        head = chain.head()
        zero = "\\x" + "00" * 32
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            for sql in ("UPDATE audit SET payload = 'x' WHERE idx = 1", "DELETE FROM audit WHERE idx = 2",
                        "TRUNCATE audit",
                        f"INSERT INTO audit VALUES (4, 0, 'k', 'c', '3', '{head[1].hex()}', '{zero}')",
                        f"INSERT INTO audit VALUES (3, 0, 'k', 'c', '3', '{zero}', '{zero}')"):
                with pytest.raises(psycopg.errors.RestrictViolation):
                    conn.execute(sql)
        assert chain.head() == head and chain.count() == 2 and chain.verify()


def test_entry_appended_on_postgres_verifies_with_the_shared_hash(postgres_url: str) -> None:
    """An entry written on PostgreSQL hashes exactly as node.store.chainformat.entry_hash computes it."""
    with PgChain(postgres_url, "ledger") as chain:
        first = chain.append("consent.grant", "c-1\x00é", b"\x00payload")
        second = chain.append("consent.revoke", "c-1\x00é", b"")
        for e, prev in ((first, GENESIS), (second, first.hash)):
            assert e.prev_hash == prev
            assert e.hash == entry_hash("ledger", e.idx, e.at_ms, e.kind, e.key, e.payload, prev)
        assert chain.entry(1) == first and chain.latest("c-1\x00é") == second


def test_dropped_or_disabled_guards_are_reported_and_reinstalled(postgres_url: str) -> None:
    """missing_guards names a dropped and a disabled trigger; opening the chain for writing re-installs them."""
    with PgChain(postgres_url, "audit", prunable=True) as chain:
        assert chain.missing_guards() == ()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER audit_no_delete ON audit")
            conn.execute("ALTER TABLE audit DISABLE TRIGGER audit_append_next")
        assert set(chain.missing_guards()) == {"audit_no_delete", "audit_append_next"}
        with PgChain(postgres_url, "audit", prunable=True) as again:
            assert set(again.restored_guards) == {"audit_no_delete", "audit_append_next"}
            assert again.missing_guards() == ()


def test_remove_prefix_is_the_only_delete(postgres_url: str) -> None:
    """remove_prefix deletes below `keep` and records the anchor; the delete guard is back in force right after."""
    with PgChain(postgres_url, "audit", prunable=True) as chain:
        chain.append_many([("k", str(i), b"") for i in range(5)])
        done = chain.remove_prefix(lambda view: (4, ("audit.prune", "", b"{}")))
        assert done is not None and done.removed == 3 and done.marker.idx == 6
        assert chain.anchor() == (4, chain.entry(4).prev_hash)  # type: ignore[union-attr]
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("SELECT set_config('hedui.remove_below_audit', '100', false)")  # the setting alone: the anchor says 4
            with pytest.raises(psycopg.errors.RestrictViolation):
                conn.execute("BEGIN; DELETE FROM audit WHERE idx = 4; COMMIT")
        assert [e.idx for e in chain.entries()] == [4, 5, 6]


def test_concurrent_appends_from_many_processes_stay_linear(postgres_url: str) -> None:
    """Eight processes, each with its own pool, appending at once: one linear chain that verifies, nothing lost."""
    PgChain(postgres_url, "ledger").close()  # create the table before the race
    code = """
        from node.store.postgres.chain import PgChain
        me = sys.argv[2]
        with PgChain(url, "ledger") as chain:
            for i in range(15):
                if i % 3 == 0:
                    chain.append_many([("k", f"{me}-{i}-a", b"x"), ("k", f"{me}-{i}-b", b"y")])
                else:
                    chain.append_next(lambda head: [("k", f"{me}-{i}", str(head[0] + 1).encode())])
        print("done")
    """
    assert _children(code, 8, postgres_url) == ["done"] * 8
    with PgChain(postgres_url, "ledger", readonly=True) as chain:
        report = chain.verify()
        assert report.ok and report.count == 8 * 20
        entries = list(chain.entries())
        assert [e.idx for e in entries] == list(range(1, 161))
        for e in entries:  # append_next saw the head its entry follows, inside the lock
            if "-a" not in e.key and "-b" not in e.key:
                assert e.payload == str(e.idx).encode()
        assert len({e.key for e in entries}) == 160


def test_nonce_replay_refused_across_processes(postgres_url: str) -> None:
    """Six processes (six pools) record the same nonces at once: each nonce is fresh for exactly one of them."""
    PgNonceStore(postgres_url, window_ms=60_000).close()
    code = """
        import time
        from node.store.postgres.nonces import PgNonceStore
        now = int(time.time() * 1000)
        with PgNonceStore(url, window_ms=60_000) as store:
            single = [store.remember("req", f"n{i}".encode(), now) for i in range(20)]
            many = store.remember_many([("req", f"m{i}".encode(), now) for i in range(20)])
        print(",".join("1" if f else "0" for f in single + many))
    """
    rows = [[v == "1" for v in line.split(",")] for line in _children(code, 6, postgres_url)]
    assert len(rows) == 6
    for column in zip(*rows, strict=True):
        assert sum(column) == 1


@pytest.mark.slow
def test_server_restart_loses_nothing_committed_and_pools_reconnect() -> None:
    """An immediate (crash-like) PostgreSQL restart keeps every committed entry, nonce and fact; the open objects work on."""
    with PostgresServer() as server:
        url = server.create_database("restart")
        storage = PgStorage(url)
        try:
            chain, nonces, facts = storage.audit(), storage.nonces(window_ms=60_000), storage.facts()
            written = chain.append_many([("k", str(i), b"v") for i in range(50)])
            issued = time.time_ns() // 1_000_000  # inside the window (an older nonce is never fresh)
            assert nonces.remember("req", b"once", issued)
            with facts.writer() as w:
                sid = w.subject_id(b"t" * 32, b"p" * 32)
                assert w.upsert_facts([(sid, "income.wage_monthly", "2026-10-31", "hrss", 567800)]) == 1
            server.restart("immediate")
            assert chain.head() == (50, written[-1].hash)
            assert chain.verify().count == 50
            assert not nonces.remember("req", b"once", issued)
            assert facts.lookup([b"t" * 32], ["income.wage_monthly"])[(0, "income.wage_monthly")].value == 567800
            assert chain.append("k", "after", b"").idx == 51
        finally:
            storage.close()


@pytest.mark.slow
def test_server_down_is_a_store_error_then_recovers() -> None:
    """With the server stopped an append raises StoreError (nothing written); after start the next append continues the head."""
    with PostgresServer() as server:
        url = server.create_database("down")
        with PgChain(url, "audit", prunable=True) as chain:
            chain.append("k", "1", b"")
            server.stop()
            with pytest.raises(StoreError):
                chain.append("k", "lost", b"")
            server.restart()
            assert chain.append("k", "2", b"").idx == 2
            assert [e.key for e in chain.entries()] == ["1", "2"]


@pytest.mark.slow
def test_while_the_server_is_down_only_the_first_access_waits_the_full_pool_wait() -> None:
    """A call that touches the store several times while PostgreSQL is down is refused within about one pool wait:
    after one wait ran out, further accesses wait only DOWN_WAIT_S; the first access after the server is back
    (within the pool's short reconnect retry) gets a connection and full waits resume."""
    from node.store.postgres import pool as pools

    with PostgresServer() as server:
        url = server.create_database("downwait")
        with PgChain(url, "audit", prunable=True) as chain:
            chain.append("k", "1", b"")
            server.stop("immediate")
            waits = []
            for _ in range(3):
                with pytest.raises(StoreError) as refused:
                    chain.append("k", "lost", b"")
                waits.append(str(refused.value))
            assert f"within {pools.POOL_WAIT_S:g} s" in waits[0], waits
            assert all(f"within {pools.DOWN_WAIT_S:g} s" in w for w in waits[1:]), waits
            server.restart()
            # the pool's own retry gives up after RECONNECT_S; from then on every access starts an attempt at once
            tries, deadline = 0, time.monotonic() + pools.RECONNECT_S + 10 * pools.DOWN_WAIT_S + 5
            while True:
                tries += 1
                try:
                    assert chain.append("k", "2", b"").idx == 2
                    break
                except StoreError as exc:
                    assert f"within {pools.DOWN_WAIT_S:g} s" in str(exc)
                    assert time.monotonic() < deadline, f"no connection after the restart ({tries} tries)"
            server.stop("immediate")
            with pytest.raises(StoreError, match=f"within {pools.POOL_WAIT_S:g} s"):  # back to the full wait
                chain.append("k", "lost", b"")
            server.restart()
