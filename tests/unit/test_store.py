"""Unit tests of the SQLite fact store."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.store.errors import StoreCorrupt, StoreError
from node.store.sqlite.facts import STORE_FILE, Fact, Store

AGGREGATES = {"deposit.balance_total": "sum", "marriage.married": "max", "vehicle.count": "sum"}
A, B, C = (bytes([n]) * 32 for n in (1, 2, 3))


def _put(store: Store, rows: list[tuple[bytes, str, str, str, int]]) -> int:
    """Write (token, attribute, as_of, source, value) rows in one transaction."""
    with store.writer() as w:
        written = w.upsert_facts((w.subject_id(t), a, d, s, v) for t, a, d, s, v in rows)
        w.set_aggregates(AGGREGATES)
    return written


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "data") as s:
        yield s


def test_open_creates_private_store_file(tmp_path: Path) -> None:
    """Store.open creates <data_dir>/store.sqlite readable by the owner only, in WAL mode."""
    with Store.open(tmp_path / "d") as store:
        path = tmp_path / "d" / STORE_FILE
        assert store.path == path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_schema_version_recorded(store: Store) -> None:
    """The meta table records schema version 2 and reopening the store works."""
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)
    conn.close()
    Store(store.path).close()


def test_lookup_returns_latest_as_of(store: Store) -> None:
    """lookup answers with the value of the latest as-of date, not an older one."""
    _put(store, [
        (A, "vehicle.count", "2024-01-31", "mps", 3),
        (A, "vehicle.count", "2024-05-31", "mps", 1),
        (A, "vehicle.count", "2024-03-31", "mps", 7),
    ])  # fmt: skip
    assert store.lookup([A], ["vehicle.count"]) == {(0, "vehicle.count"): Fact(1, "2024-05-31")}


def test_sum_aggregates_sources_on_latest_date(store: Store) -> None:
    """Sum items add the sources that report on the latest date, ignoring older dates."""
    _put(store, [
        (A, "deposit.balance_total", "2024-05-31", "bank:icbc", 100),
        (A, "deposit.balance_total", "2024-05-31", "bank:abc", 250),
        (A, "deposit.balance_total", "2024-04-30", "bank:boc", 999),
    ])  # fmt: skip
    facts = store.lookup([A], ["deposit.balance_total"])
    assert facts[(0, "deposit.balance_total")] == Fact(350, "2024-05-31")


def test_max_aggregates_sources(store: Store) -> None:
    """Max items (booleans) take the largest value among same-date sources."""
    _put(store, [
        (A, "marriage.married", "2024-05-31", "civil_affairs", 0),
        (A, "marriage.married", "2024-05-31", "mps", 1),
    ])  # fmt: skip
    assert store.lookup([A], ["marriage.married"])[(0, "marriage.married")] == Fact(1, "2024-05-31")


def test_lookup_many_subjects_and_absent_keys(store: Store) -> None:
    """Keys are (index, attribute); duplicates share answers; missing data is an absent key."""
    _put(store, [
        (A, "vehicle.count", "2024-05-31", "mps", 2),
        (B, "marriage.married", "2024-05-31", "civil", 1),
    ])  # fmt: skip
    facts = store.lookup([A, C, B, A], ["vehicle.count", "marriage.married", "deposit.balance_total"])
    assert facts == {
        (0, "vehicle.count"): Fact(2, "2024-05-31"),
        (3, "vehicle.count"): Fact(2, "2024-05-31"),
        (2, "marriage.married"): Fact(1, "2024-05-31"),
    }
    assert store.lookup([], ["vehicle.count"]) == {}
    assert store.lookup([A], []) == {}


def test_lookup_large_token_list(store: Store) -> None:
    """Token lists longer than one statement's chunk are answered completely."""
    tokens = [i.to_bytes(32, "big") for i in range(1, 1201)]
    _put(store, [(t, "vehicle.count", "2024-05-31", "mps", i) for i, t in enumerate(tokens)])
    facts = store.lookup(tokens, ["vehicle.count"])
    assert len(facts) == 1200
    assert facts[(1199, "vehicle.count")].value == 1199


def test_upsert_replaces_and_does_not_duplicate(store: Store) -> None:
    """Writing the same key again counts no write; a changed value replaces the old one."""
    row = (A, "vehicle.count", "2024-05-31", "mps", 2)
    assert _put(store, [row]) == 1
    assert _put(store, [row]) == 0
    assert _put(store, [(A, "vehicle.count", "2024-05-31", "mps", 3)]) == 1
    assert store.counts() == {"subjects": 1, "facts": 1}
    assert store.lookup([A], ["vehicle.count"])[(0, "vehicle.count")].value == 3


def test_holds(store: Store) -> None:
    """holds tells, per token and in order, whether the store has any fact on the subject."""
    _put(store, [(B, "vehicle.count", "2024-05-31", "mps", 1)])
    assert store.holds([A, B, C, B]) == [False, True, False, True]
    assert store.holds([]) == []


def test_writer_rolls_back_on_error(store: Store) -> None:
    """An exception inside writer() leaves the store unchanged."""
    with pytest.raises(RuntimeError), store.writer() as w:
        w.upsert_facts([(w.subject_id(A), "vehicle.count", "2024-05-31", "mps", 1)])
        raise RuntimeError("abort")
    assert store.counts() == {"subjects": 0, "facts": 0}
    assert store.holds([A]) == [False]


def test_counts_and_integrity(store: Store) -> None:
    """counts reports subjects and facts, and a healthy store passes check_integrity."""
    _put(store, [(A, "vehicle.count", "2024-05-31", "mps", 1),
                 (A, "marriage.married", "2024-05-31", "civil", 1),
                 (B, "vehicle.count", "2024-05-31", "mps", 1)])  # fmt: skip
    assert store.counts() == {"subjects": 2, "facts": 3}
    store.check_integrity()


def test_concurrent_readers_and_writer(store: Store) -> None:
    """Many threads can look up while another thread writes; every reader sees whole writes."""
    _put(store, [(A, "deposit.balance_total", "2024-01-31", "bank:a", 1)])
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                fact = store.lookup([A], ["deposit.balance_total"])[(0, "deposit.balance_total")]
                # both banks of a month are written together, so a month's sum is always even
                assert fact.as_of == "2024-01-31" or fact.value % 2 == 0
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for month in range(2, 10):
        as_of = f"2024-{month:02d}-28"
        _put(store, [(A, "deposit.balance_total", as_of, "bank:a", month),
                     (A, "deposit.balance_total", as_of, "bank:b", month)])  # fmt: skip
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert store.lookup([A], ["deposit.balance_total"])[(0, "deposit.balance_total")] == Fact(
        18, "2024-09-28"
    )


def test_closed_store_refuses(tmp_path: Path) -> None:
    """After close(), reads and writes raise StoreError; closing twice is harmless."""
    store = Store.open(tmp_path)
    store.lookup([A], ["vehicle.count"])
    store.close()
    store.close()
    with pytest.raises(StoreError):
        store.holds([A])
    with pytest.raises(StoreError), store.writer():
        pass


def test_not_a_database_is_corrupt(tmp_path: Path) -> None:
    """Opening a file that is not SQLite raises StoreCorrupt."""
    (tmp_path / STORE_FILE).write_bytes(os.urandom(4096))
    with pytest.raises(StoreCorrupt):
        Store.open(tmp_path)


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    """An SQLite file with other tables is not mistaken for a store."""
    conn = sqlite3.connect(tmp_path / STORE_FILE)
    conn.execute("CREATE TABLE other(x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreCorrupt, match="not a Hedui store"):
        Store.open(tmp_path)


def test_newer_schema_version_refused(tmp_path: Path) -> None:
    """A store written by another schema version is refused with a clear StoreError."""
    Store.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / STORE_FILE)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store.open(tmp_path)


def test_damaged_file_fails_integrity_check(tmp_path: Path) -> None:
    """Overwriting pages of a populated store makes check_integrity raise StoreCorrupt."""
    with Store.open(tmp_path) as store:
        tokens = [i.to_bytes(32, "big") for i in range(1, 3001)]
        _put(store, [(t, "vehicle.count", "2024-05-31", "mps", 1) for t in tokens])
    path = tmp_path / STORE_FILE
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(3 * page, len(data) - page, 2 * page):
        data[offset + 8 : offset + 200] = b"\xff" * 192
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt):
        with Store.open(tmp_path) as store:
            store.check_integrity()
