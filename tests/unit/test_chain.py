"""Unit tests of the hash-chained append-only log."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.store.sqlite.chain import GENESIS, Entry, HashChain, entry_hash
from node.store.errors import StoreCorrupt, StoreError

REPO = Path(__file__).resolve().parents[2]
BROKEN = "chain broken (missing or reordered entries before it)"
MISMATCH = "content does not match its hash"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.sqlite"


@pytest.fixture
def chain(path: Path) -> Iterator[HashChain]:
    with HashChain(path) as c:
        yield c


def _fill(chain: HashChain, n: int) -> list[Entry]:
    return [chain.append("query", f"req-{i}", f'{{"n":{i}}}'.encode(), at_ms=1000 + i)
            for i in range(1, n + 1)]  # fmt: skip


def _sql(path: Path, *statements: str) -> None:
    """Run statements through a plain sqlite3 connection, as an operator with the CLI would."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def _hash_by_spec(table: str, e: Entry) -> bytes:
    """The version-1 encoding, written out independently of the module."""

    def lp(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b

    data = (b"hedui/v1/chain\x00" + lp(table.encode()) + e.idx.to_bytes(8, "big")
            + e.at_ms.to_bytes(8, "big", signed=True) + lp(e.kind.encode()) + lp(e.key.encode())
            + lp(e.payload) + e.prev_hash)  # fmt: skip
    return hashlib.sha256(data).digest()


# -- appending and reading -------------------------------------------------------------------


def test_empty_chain(chain: HashChain) -> None:
    """An empty chain has head (0, 32 zero bytes), no entries, and verifies."""
    assert chain.head() == (0, bytes(32)) == (0, GENESIS)
    assert chain.count() == 0
    assert list(chain.entries()) == []
    report = chain.verify()
    assert report.ok and bool(report) and report.count == 0 and report.head_hash == GENESIS


def test_append_links_entries(chain: HashChain) -> None:
    """Appends are numbered from 1, each prev_hash is the previous hash, and head follows."""
    a = chain.append("grant", "c-1", b'{"p":"dibao"}', at_ms=1_700_000_000_000)
    b = chain.append("revoke", "c-1", b"", at_ms=-5)
    assert (a.idx, a.prev_hash, b.idx, b.prev_hash) == (1, GENESIS, 2, a.hash)
    assert (b.at_ms, b.kind, b.key, b.payload) == (-5, "revoke", "c-1", b"")
    assert chain.head() == (2, b.hash)
    assert list(chain.entries()) == [a, b]
    assert chain.count() == 2


def test_hash_follows_the_documented_encoding(chain: HashChain) -> None:
    """Entry hashes are SHA-256 over the documented length-prefixed encoding."""
    entries = [chain.append("grant", "c-1", b"\x00\xff", at_ms=-1),
               chain.append("审计", "", b"x" * 300, at_ms=2**62)]  # fmt: skip
    for e in entries:
        assert e.hash == _hash_by_spec("entries", e)
        assert e.hash == entry_hash("entries", e.idx, e.at_ms, e.kind, e.key, e.payload,
                                    e.prev_hash)  # fmt: skip


def test_hash_depends_on_table_name(tmp_path: Path) -> None:
    """The same entry hashes differently in another table, so chains cannot be spliced."""
    with (
        HashChain(tmp_path / "x.sqlite", table="ledger") as a,
        HashChain(tmp_path / "x.sqlite", table="audit") as b,
    ):
        ea, eb = a.append("k", "key", b"p", at_ms=1), b.append("k", "key", b"p", at_ms=1)
        assert ea.hash != eb.hash
        assert a.verify().ok and b.verify().ok


def test_append_many_is_one_batch(chain: HashChain) -> None:
    """append_many numbers and links a batch like single appends, with one shared at_ms."""
    first = chain.append("start", "", b"")
    batch = chain.append_many([("query", f"r{i}", bytes([i])) for i in range(5)], at_ms=77)
    assert [e.idx for e in batch] == [2, 3, 4, 5, 6]
    assert batch[0].prev_hash == first.hash
    assert all(e.at_ms == 77 for e in batch)
    assert chain.append_many([]) == []
    assert list(chain.entries(after=1)) == batch and chain.verify().ok


def test_append_many_is_all_or_nothing(chain: HashChain) -> None:
    """A batch with one bad item appends nothing."""
    chain.append("start", "", b"")
    with pytest.raises(TypeError):
        items = [("query", "r1", b"ok"), ("query", "r2", "not bytes")]
        chain.append_many(items)  # type: ignore[arg-type]
    assert chain.head()[0] == 1


def test_append_checks_arguments(chain: HashChain) -> None:
    """Bad kind, key, payload or at_ms are refused before anything is written."""
    with pytest.raises(ValueError):
        chain.append("", "k", b"")
    with pytest.raises(TypeError):
        chain.append("k", 5, b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        chain.append("k", "k", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        chain.append("k", "k", b"", at_ms=2**63)
    with pytest.raises(ValueError):
        chain.append("k", "\udcff", b"")
    assert chain.head()[0] == 0


def test_default_at_ms_is_now(chain: HashChain) -> None:
    """Without at_ms an entry is stamped with the current wall-clock time in ms."""
    before = time.time_ns() // 1_000_000
    e = chain.append("k", "k", b"")
    assert before <= e.at_ms <= time.time_ns() // 1_000_000


def test_entries_filters(chain: HashChain) -> None:
    """entries() filters by after, key and since_ms, limits, and keeps idx order."""
    for i in range(1, 11):
        chain.append("grant" if i % 2 else "revoke", f"c-{i % 3}", b"", at_ms=i * 100)
    assert [e.idx for e in chain.entries(after=7)] == [8, 9, 10]
    assert [e.idx for e in chain.entries(key="c-1")] == [1, 4, 7, 10]
    assert [e.idx for e in chain.entries(key="c-1", after=4, limit=1)] == [7]
    assert [e.idx for e in chain.entries(since_ms=900)] == [9, 10]
    assert list(chain.entries(limit=0)) == []
    with pytest.raises(ValueError):
        chain.entries(limit=-1)


def test_latest_by_key(chain: HashChain) -> None:
    """latest() returns the last entry with a key, or None for an unknown key."""
    chain.append("grant", "c-1", b"a")
    chain.append("grant", "c-2", b"b")
    last = chain.append("revoke", "c-1", b"c")
    assert chain.latest("c-1") == last
    assert chain.latest("c-9") is None


def test_open_iterator_does_not_pin_reads(chain: HashChain) -> None:
    """A half-consumed entries() iterator does not make later reads stale."""
    chain.append("grant", "c-1", b"")
    it = chain.entries()
    assert next(it).idx == 1
    revoked = chain.append("revoke", "c-1", b"")
    assert chain.latest("c-1") == revoked and chain.head()[0] == 2
    it.close()


def test_reopen_continues_the_chain(path: Path) -> None:
    """A reopened chain keeps its head and appends after it."""
    with HashChain(path) as c:
        head = _fill(c, 3)[-1]
    with HashChain(path) as c:
        assert c.head() == (3, head.hash)
        assert c.append("k", "k", b"").prev_hash == head.hash
        assert c.verify().ok and c.restored_guards == ()


def test_pragmas_and_file_mode(chain: HashChain, path: Path) -> None:
    """The writer uses WAL, synchronous=FULL and secure_delete=ON; the file is private."""
    writer = chain._writer
    assert writer is not None
    assert writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert writer.execute("PRAGMA secure_delete").fetchone()[0] == 1
    assert path.stat().st_mode & 0o777 == 0o600


def test_close_is_final(path: Path) -> None:
    """After close() reads and writes raise StoreError; close() may be repeated."""
    with HashChain(path) as c:
        c.append("k", "k", b"")
    c.close()
    for call in (c.head, c.count, lambda: c.append("k", "k", b""), lambda: list(c.entries())):
        with pytest.raises(StoreError):
            call()


def test_table_name_is_checked(path: Path) -> None:
    """Only lowercase identifiers not starting with 'sqlite' are accepted as table names."""
    for bad in ("Entries", "x; DROP TABLE y", "", "1x", "sqlite_x"):
        with pytest.raises(ValueError):
            HashChain(path, table=bad)


def test_foreign_table_is_rejected(path: Path) -> None:
    """A file whose table has other columns is refused as StoreCorrupt."""
    _sql(path, "CREATE TABLE entries(a INTEGER, b TEXT)")
    with pytest.raises(StoreCorrupt):
        HashChain(path)
    with pytest.raises(StoreCorrupt):
        HashChain.open_readonly(path, "entries")


def test_not_sqlite_is_rejected(path: Path) -> None:
    """A file that is not SQLite is refused as StoreCorrupt."""
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreCorrupt):
        HashChain(path)


# -- concurrency and crashes -----------------------------------------------------------------


def test_concurrent_appends_from_threads(chain: HashChain) -> None:
    """Appends from many threads get distinct contiguous indexes and the chain verifies."""
    got: list[int] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        for i in range(40):
            e = chain.append("query", f"t{t}-{i}", b"")
            with lock:
                got.append(e.idx)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(got) == list(range(1, 321))
    assert chain.verify().ok and chain.count() == 320


def test_two_handles_on_one_file(path: Path) -> None:
    """Two HashChain objects on the same file interleave appends without breaking the chain."""
    with HashChain(path) as a, HashChain(path) as b:
        for i in range(10):
            (a if i % 2 else b).append("k", str(i), b"")
        assert a.head() == b.head() and a.head()[0] == 10
        assert a.verify().ok


_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from node.store.sqlite.chain import HashChain

    chain = HashChain(Path(sys.argv[1]))
    i = 0
    while True:
        i += 1
        if i % 2:
            e = chain.append("tick", f"k{i}", b"x" * 64)
        else:
            e = chain.append_many([("batch", f"b{i}-{j}", b"y" * 64) for j in range(25)])[-1]
        print(e.idx, flush=True)
""")


def test_sigkill_mid_append_leaves_a_valid_chain(path: Path) -> None:
    """A writer killed with SIGKILL while appending leaves a chain that verifies."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    last = 0
    try:
        for line in child.stdout:  # blocks until the child reports a committed entry
            last = int(line)
            if last >= 50:
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
        child.stdout.close()
    assert last >= 50 and child.returncode == -signal.SIGKILL
    with HashChain.open_readonly(path, "entries") as ro:
        assert ro.verify().ok
    with HashChain(path) as c:
        report = c.verify()
        assert report.ok and report.count >= last and c.count() == report.count
        assert c.append("after", "crash", b"").idx == report.count + 1


# -- guards (triggers) -----------------------------------------------------------------------


def test_triggers_refuse_update_and_delete(chain: HashChain, path: Path) -> None:
    """Plain SQL UPDATE and DELETE on the table are refused by the triggers."""
    _fill(chain, 3)
    for statement in ("UPDATE entries SET payload = x'00' WHERE idx = 2",
                      "UPDATE entries SET idx = 9 WHERE idx = 3",
                      "DELETE FROM entries WHERE idx = 3",
                      "DELETE FROM entries"):  # fmt: skip
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            _sql(path, statement)
    assert chain.count() == 3 and chain.verify().ok


def test_trigger_refuses_skipping_or_unlinked_insert(chain: HashChain, path: Path) -> None:
    """Plain SQL INSERTs that skip an index, replace a row or break the link are refused."""
    head = _fill(chain, 3)[-1]
    h, z = head.hash.hex(), "00" * 32
    statements = [
        f"INSERT INTO entries VALUES (5, 0, 'k', 'k', x'', x'{h}', x'{z}')",  # skips 4
        f"INSERT OR REPLACE INTO entries VALUES (2, 0, 'k', 'k', x'', x'{h}', x'{z}')",
        f"INSERT INTO entries VALUES (4, 0, 'k', 'k', x'', x'{z}', x'{z}')",  # wrong prev_hash
        # idx left to SQLite
        (
            "INSERT INTO entries(at_ms, kind, key, payload, prev_hash, hash) "
            f"VALUES (0, 'k', 'k', x'', x'{h}', x'{z}')"
        ),
    ]
    for statement in statements:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            _sql(path, statement)
    assert chain.count() == 3 and chain.verify().ok


def test_reopen_restores_dropped_triggers(chain: HashChain, path: Path) -> None:
    """Opening read-write re-installs dropped triggers and reports which ones were missing."""
    _fill(chain, 3)
    _sql(path, "DROP TRIGGER entries_no_update", "DROP TRIGGER entries_no_delete")
    with HashChain.open_readonly(path, "entries") as ro:
        assert ro.missing_guards() == ("entries_no_update", "entries_no_delete")
        assert ro.verify().ok
    with HashChain(path) as c:
        assert c.restored_guards == ("entries_no_update", "entries_no_delete")
        assert c.missing_guards() == ()
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        _sql(path, "DELETE FROM entries WHERE idx = 3")


# -- verification ----------------------------------------------------------------------------


def test_verify_catches_edit_after_dropping_triggers(chain: HashChain, path: Path) -> None:
    """An UPDATE made after dropping the triggers is reported at the edited entry."""
    _fill(chain, 6)
    _sql(path, "DROP TRIGGER entries_no_update",
         "UPDATE entries SET payload = CAST('{\"n\":999}' AS BLOB) WHERE idx = 3")  # fmt: skip
    report = chain.verify()
    assert not report.ok and not report
    assert (report.first_bad, report.reason) == (3, f"entry 3: {MISMATCH}")
    second = chain.latest("req-2")
    assert second is not None and (report.count, report.head_hash) == (2, second.hash)


def test_verify_catches_retyped_column(chain: HashChain, path: Path) -> None:
    """A payload rewritten as TEXT (wrong type) is a content mismatch, not a crash."""
    _fill(chain, 4)
    _sql(path, "DROP TRIGGER entries_no_update",
         "UPDATE entries SET payload = '{\"n\":2}' WHERE idx = 2")  # fmt: skip
    assert chain.verify().reason == f"entry 2: {MISMATCH}"


def test_verify_catches_deleted_middle_row(chain: HashChain, path: Path) -> None:
    """A deleted middle entry breaks the chain at the entry after it."""
    _fill(chain, 6)
    _sql(path, "DROP TRIGGER entries_no_delete", "DELETE FROM entries WHERE idx = 3")
    report = chain.verify()
    assert (report.ok, report.first_bad, report.reason) == (False, 4, f"entry 4: {BROKEN}")


def test_verify_catches_deleted_and_renumbered_rows(chain: HashChain, path: Path) -> None:
    """Deleting an entry and renumbering the rest to close the gap still breaks the chain."""
    _fill(chain, 6)
    _sql(path, "DROP TRIGGER entries_no_delete", "DROP TRIGGER entries_no_update",
         "DELETE FROM entries WHERE idx = 3",
         "UPDATE entries SET idx = idx - 1 WHERE idx > 3")  # fmt: skip
    report = chain.verify()
    assert (report.first_bad, report.reason) == (3, f"entry 3: {BROKEN}")


def test_verify_catches_swapped_payloads(chain: HashChain, path: Path) -> None:
    """Swapping the payloads of two entries is reported at the first of them."""
    _fill(chain, 6)
    _sql(path, "DROP TRIGGER entries_no_update",
         "UPDATE entries SET payload = CASE idx WHEN 3 THEN (SELECT payload FROM entries "
         "WHERE idx = 5) ELSE (SELECT payload FROM entries WHERE idx = 3) END "
         "WHERE idx IN (3, 5)")  # fmt: skip
    report = chain.verify()
    assert (report.first_bad, report.reason) == (3, f"entry 3: {MISMATCH}")


def test_verify_catches_swapped_rows(chain: HashChain, path: Path) -> None:
    """Swapping the indexes of two whole rows breaks the chain at the first of them."""
    _fill(chain, 6)
    _sql(path, "DROP TRIGGER entries_no_update",
         "UPDATE entries SET idx = 1000 WHERE idx = 3", "UPDATE entries SET idx = 3 WHERE idx = 5",
         "UPDATE entries SET idx = 5 WHERE idx = 1000")  # fmt: skip
    report = chain.verify()
    assert (report.first_bad, report.reason) == (3, f"entry 3: {BROKEN}")


def test_verify_catches_truncated_tail_only_against_checkpoint(
    chain: HashChain, path: Path
) -> None:
    """A deleted tail verifies alone but is caught against a recorded head."""
    _fill(chain, 10)
    checkpoint = chain.head()
    _sql(path, "DROP TRIGGER entries_no_delete", "DELETE FROM entries WHERE idx > 7")
    assert chain.verify().ok and chain.verify().count == 7
    report = chain.verify(expect_head=checkpoint)
    assert (report.ok, report.count, report.first_bad) == (False, 7, 10)
    assert report.reason == "entry 10 missing or changed since checkpoint"


def test_verify_catches_consistent_rewrite_against_checkpoint(chain: HashChain, path: Path) -> None:
    """A suffix rewritten with recomputed hashes verifies alone but not against a checkpoint."""
    entries = _fill(chain, 6)
    checkpoint = chain.head()
    prev = entries[2].prev_hash
    for e in entries[2:]:
        forged = Entry(e.idx, e.at_ms, e.kind, e.key, b"forged", prev, b"")
        digest = _hash_by_spec("entries", forged)
        _sql(path, "DROP TRIGGER IF EXISTS entries_no_update",
             f"UPDATE entries SET payload = x'{b'forged'.hex()}', prev_hash = x'{prev.hex()}', "
             f"hash = x'{digest.hex()}' WHERE idx = {e.idx}")  # fmt: skip
        prev = digest
    assert chain.verify().ok
    report = chain.verify(expect_head=checkpoint)
    assert (report.first_bad, report.reason) == (6, "entry 6 missing or changed since checkpoint")


def test_verify_accepts_older_checkpoint(chain: HashChain) -> None:
    """A checkpoint taken earlier still matches after further appends."""
    _fill(chain, 3)
    checkpoint = chain.head()
    _fill(chain, 3)
    assert chain.verify(expect_head=checkpoint).ok
    assert chain.verify(expect_head=(0, GENESIS)).ok
    with pytest.raises(ValueError):
        chain.verify(expect_head=(1, b"short"))


def test_readonly_reads_and_refuses_writes(chain: HashChain, path: Path) -> None:
    """open_readonly reads and verifies a live chain but cannot append or be written through."""
    _fill(chain, 3)
    with HashChain.open_readonly(path, "entries") as ro:
        assert ro.head() == chain.head() and ro.verify().ok
        chain.append("more", "k", b"")
        assert ro.head()[0] == 4 and ro.latest("k") is not None
        with pytest.raises(StoreError, match="read-only"):
            ro.append("k", "k", b"")
        conn = ro._reader()
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DROP TRIGGER entries_no_update")


def test_readonly_missing_file(tmp_path: Path) -> None:
    """open_readonly of a missing file raises StoreError and creates nothing."""
    with pytest.raises(StoreError):
        HashChain.open_readonly(tmp_path / "none.sqlite", "entries")
    assert list(tmp_path.iterdir()) == []


# -- performance -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HashChain]:
    """A chain of 50,000 entries with 200-byte payloads."""
    with HashChain(tmp_path_factory.mktemp("big") / "audit.sqlite") as c:
        for b in range(5):
            c.append_many([("query", f"req-{b}-{i}", bytes(200)) for i in range(10_000)])
        yield c


def test_append_many_appends_a_large_batch_in_order(tmp_path: Path) -> None:
    """10,000 entries appended by one append_many form one intact chain in the order given."""
    with HashChain(tmp_path / "t.sqlite") as c:
        items = [("query", f"req-{i}", b'{"purpose":"dibao","n":12}') for i in range(10_000)]
        c.append_many(items)
        report = c.verify()
        assert report.ok and report.count == 10_000
        keys = [e.key for e in c.entries()]
    assert keys == [key for _, key, _ in items]


def test_verify_checks_every_entry_of_a_large_chain(big: HashChain) -> None:
    """verify() walks all 50,000 entries (speed is measured by scripts/bench, never asserted here)."""
    report = big.verify()
    assert report.ok and report.count == 50_000


def test_verify_streams(big: HashChain) -> None:
    """verify() holds O(1) entries in memory, not the whole chain (~15 MB here)."""
    tracemalloc.start()
    try:
        assert big.verify().ok
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_a_prefix_removed_while_a_reader_holds_a_snapshot_leaves_the_wal_once_it_ends(path: Path) -> None:
    """remove_prefix does not wait for a reader's open snapshot to checkpoint the WAL (it holds the writer lock):
    the removed payloads stay in the WAL only until the first append after the snapshot ended truncates it."""
    secret = b"removed-payload-7f3a"
    with HashChain(path, table="log", prunable=True) as chain, HashChain(path, table="log", prunable=True) as other:
        chain.append_many([("rec", f"k{i}", secret + bytes([i])) for i in range(3)], at_ms=1_000)
        chain.append("rec", "kept", b"kept", at_ms=5_000)

        def plan(view):  # type: ignore[no-untyped-def]  # keep the entry at 5_000 and later
            keep = view.first_since(2_000)
            return keep, ("marker", "", b"cut")

        wal = Path(f"{path}-wal")
        with other.snapshot() as snap:
            assert [e.idx for e in snap.entries()] == [1, 2, 3, 4]
            assert chain.remove_prefix(plan, at_ms=6_000) is not None  # returns although the snapshot is open
            assert [e.idx for e in snap.entries()] == [1, 2, 3, 4]  # the snapshot still sees its instant
            assert wal.stat().st_size > 0  # the checkpoint could not run past the reader
        chain.append("rec", "after", b"after", at_ms=7_000)  # the first append after it ended truncates the WAL
        assert wal.stat().st_size == 0
        assert secret not in path.read_bytes()
        assert [e.idx for e in chain.entries()] == [4, 5, 6] and chain.anchor()[0] == 4
