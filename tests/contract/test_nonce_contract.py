"""The NonceStore contract (node.store.interfaces.NonceStore): one row per nonce, insert-or-refuse across processes."""

from __future__ import annotations

import json
import time

import pytest

from node.store.errors import StoreError
from node.store.interfaces import NonceStore, Storage
from node.testing.backends import Backend
from tests.contract.conftest import run_together, start_children

WINDOW_MS = 300_000


def _now() -> int:
    return time.time_ns() // 1_000_000


def test_a_nonce_is_fresh_once_per_requester(storage: Storage) -> None:
    """remember is True the first time, False after; another requester's same nonce is its own."""
    nonces = storage.nonces(window_ms=WINDOW_MS)
    assert isinstance(nonces, NonceStore) and nonces.window_ms == WINDOW_MS
    at = _now()
    assert nonces.remember("44", b"n-1", at) is True
    assert nonces.remember("44", b"n-1", at) is False
    assert nonces.remember("51", b"n-1", at) is True


def test_remember_many_sees_repeats_inside_the_batch_and_before_it(storage: Storage) -> None:
    """remember_many answers per nonce: False for one recorded before and for a repeat within the batch."""
    nonces = storage.nonces(window_ms=WINDOW_MS)
    at = _now()
    nonces.remember("44", b"old", at)
    batch = [("44", b"a", at), ("44", b"old", at), ("44", b"a", at), ("51", b"a", at)]
    assert nonces.remember_many(batch) == [True, False, False, True]
    assert nonces.remember_many(batch) == [False, False, False, False]
    assert nonces.remember_many([]) == []


def test_remember_many_records_all_or_nothing(storage: Storage) -> None:
    """A batch with a malformed last nonce raises and records none of the others."""
    nonces = storage.nonces(window_ms=WINDOW_MS)
    at = _now()
    with pytest.raises(TypeError):
        nonces.remember_many([("44", b"a", at), ("44", b"b", at), ("44", "not bytes", at)])  # type: ignore[list-item]
    assert nonces.remember_many([("44", b"a", at), ("44", b"b", at)]) == [True, True]


def test_a_nonce_is_refused_by_another_instance_and_after_a_reopen(backend: Backend, storage: Storage) -> None:
    """A nonce one store recorded is a replay to a second store instance, and still after both reopen."""
    at = _now()
    first = storage.nonces(window_ms=WINDOW_MS)
    assert first.remember_many([("44", b"x", at), ("44", b"y", at)]) == [True, True]
    with first.transaction():
        assert first.remember("44", b"z", at) is True
        assert first.remember("44", b"z", at) is False
    first.close()
    with backend.open() as again:
        second = again.nonces(window_ms=WINDOW_MS)
        assert second.remember("44", b"x", at) is False
        assert second.remember_many([("44", b"y", at), ("44", b"z", at), ("44", b"new", at)]) == [False, False, True]


def test_concurrent_processes_accept_each_nonce_exactly_once(backend: Backend, storage: Storage) -> None:
    """Three processes record the same 300 nonces at once (singly and in batches): each is fresh exactly once."""
    storage.nonces(window_ms=WINDOW_MS).close()  # created before the race
    at = _now()
    children = start_children(backend, """
        nonces = storage.nonces(window_ms=300_000)
        mine = [("44", f"n-{i}".encode(), args[1]) for i in range(300)]
        fresh = []
        if args[0] == "many":
            for start in range(0, 300, 50):
                fresh += nonces.remember_many(mine[start:start + 50])
        else:
            fresh = [nonces.remember(*n) for n in mine]
        print(json.dumps(fresh))
    """, [["one", at], ["many", at], ["one", at]])
    children_out = run_together(children)
    answers = [json.loads(out) for out in children_out]
    assert [sum(column) for column in zip(*answers, strict=True)] == [1] * 300


def test_close_is_idempotent_and_a_closed_store_refuses(storage: Storage) -> None:
    """close() twice is harmless; remembering afterwards raises StoreError (it never answers fresh)."""
    nonces = storage.nonces(window_ms=WINDOW_MS)
    nonces.close()
    nonces.close()
    with pytest.raises(StoreError):
        nonces.remember("44", b"late", _now())
    with pytest.raises(StoreError):
        nonces.remember_many([("44", b"late", _now())])
