"""The FactStore contract (node.store.interfaces.FactStore and FactWriter): what the service layer and ingest rely on."""

from __future__ import annotations

import pytest

from node.store.errors import StoreError
from node.store.interfaces import Fact, FactStore, Storage
from node.testing.backends import Backend

A, B, C = (bytes([n]) * 32 for n in (1, 2, 3))
KEY_A, KEY_B = bytes([9]) * 32, bytes([8]) * 32


def _load(store: FactStore) -> None:
    with store.writer() as w:
        w.set_aggregates({"income.wage": "sum", "deposit.total": "max"})
        a, b = w.subject_ids([A, B], [KEY_A, KEY_B])
        assert (w.subject_id(A), w.new_subjects) == (a, 2)
        w.upsert_facts([
            (a, "income.wage", "2026-09-30", "hrss", 100), (a, "income.wage", "2026-10-31", "hrss", 300),
            (a, "income.wage", "2026-10-31", "tax", 200), (a, "deposit.total", "2026-10-31", "icbc", 50),
            (a, "deposit.total", "2026-10-31", "boc", 70), (b, "deposit.total", "2026-01-01", "icbc", 5),
        ])  # fmt: skip


def test_lookups_take_the_latest_date_and_combine_sources_by_aggregate(storage: Storage) -> None:
    """lookup answers the latest as-of per attribute, summing or taking the max of same-date sources."""
    store = storage.facts()
    assert isinstance(store, FactStore)
    _load(store)
    got = store.lookup([A, C, B, A], ["income.wage", "deposit.total"])
    assert got == {
        (0, "income.wage"): Fact(500, "2026-10-31"), (0, "deposit.total"): Fact(70, "2026-10-31"),
        (2, "deposit.total"): Fact(5, "2026-01-01"),
        (3, "income.wage"): Fact(500, "2026-10-31"), (3, "deposit.total"): Fact(70, "2026-10-31"),
    }  # fmt: skip
    assert store.lookup([], ["income.wage"]) == {} and store.lookup([A], []) == {}


def test_holds_possession_and_held_tokens_round_trip(storage: Storage) -> None:
    """holds, possession_keys, held_tokens, held_count, counts and newest_as_of agree with what was written."""
    store = storage.facts()
    _load(store)
    assert store.holds([C, A, B]) == [False, True, True]
    assert store.possession_keys([A, B, C]) == {A: KEY_A, B: KEY_B}
    assert sorted(store.held_tokens(batch=1)) == sorted([A, B]) and store.held_count() == 2
    assert store.counts() == {"subjects": 2, "facts": 6} and store.missing_possession() == 0
    assert store.newest_as_of() == {"deposit.total": "2026-10-31", "income.wage": "2026-10-31"}
    store.check_integrity()


def test_a_failed_write_leaves_nothing_and_a_savepoint_undoes_its_part(storage: Storage) -> None:
    """An exception in writer() rolls everything back; one in a savepoint undoes only that part and its counters."""
    store = storage.facts()
    with pytest.raises(RuntimeError), store.writer() as w:
        w.upsert_facts([(w.subject_id(A, KEY_A), "income.wage", "2026-10-31", "hrss", 1)])
        raise RuntimeError("abandon")
    assert store.counts() == {"subjects": 0, "facts": 0}
    with store.writer() as w:
        w.upsert_facts([(w.subject_id(A, KEY_A), "income.wage", "2026-10-31", "hrss", 1)])
        with pytest.raises(RuntimeError), w.savepoint():
            w.upsert_facts([(w.subject_id(B, KEY_B), "income.wage", "2026-10-31", "hrss", 2)])
            raise RuntimeError("undo this part")
        assert w.new_subjects == 1
    assert store.holds([A, B]) == [True, False] and store.counts() == {"subjects": 1, "facts": 1}


def test_another_instance_sees_a_commit_and_the_change_watch_moves(backend: Backend, storage: Storage) -> None:
    """A commit through one store is seen by a second instance, whose change watch reports it."""
    store = storage.facts()
    with backend.open() as other:
        reader = other.facts()
        watch = reader.change_watch()
        try:
            before = watch.version()
            _load(store)
            assert watch.version() != before
            assert reader.holds([A]) == [True]
        finally:
            watch.close()


def test_upsert_counts_only_rows_inserted_or_changed(storage: Storage) -> None:
    """upsert_facts returns rows inserted or changed (an identical row is not counted)."""
    store = storage.facts()
    with store.writer() as w:
        a = w.subject_id(A, KEY_A)
        assert w.upsert_facts([(a, "income.wage", "2026-10-31", "hrss", 1)]) == 1
    with store.writer() as w:
        a = w.subject_id(A, KEY_A)
        assert w.upsert_facts([(a, "income.wage", "2026-10-31", "hrss", 1), (a, "income.wage", "2026-10-31", "tax", 2)]) == 1
        assert w.upsert_facts(iter([(a, "income.wage", "2026-10-31", "hrss", 9)])) == 1
    # no aggregate recorded: same-date sources combine by max
    assert store.lookup([A], ["income.wage"]) == {(0, "income.wage"): Fact(9, "2026-10-31")}


def test_close_is_idempotent_and_a_closed_store_refuses(storage: Storage) -> None:
    """close() twice is harmless; a write afterwards raises StoreError."""
    store = storage.facts()
    store.close()
    store.close()
    with pytest.raises(StoreError), store.writer():
        pass
