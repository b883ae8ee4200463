"""The Chain contract (node.store.interfaces.Chain), run against every backend in node.testing.backends."""

from __future__ import annotations

import threading

import pytest

from node.store.audit import KIND_PRUNE, AuditLog, AuditRecord
from node.store.chainformat import BROKEN, GENESIS, MISMATCH, entry_hash
from node.store.errors import StoreError
from node.store.interfaces import Chain, PrefixView, Storage
from node.testing.backends import Backend
from tests.contract.conftest import run_together, start_children

DAY_MS = 86_400_000
NOW_MS = 1_800_000_000_000


def _fill(chain: Chain, n: int, *, at_ms: int | None = None) -> None:
    chain.append_many([("rec", f"key-{i % 3}", f"payload {i}".encode()) for i in range(n)], at_ms=at_ms)


def test_appends_link_and_read_back(storage: Storage) -> None:
    """Entries are numbered from 1, each names the hash before it, hashes use the table name, reads return them."""
    chain = storage.chain("things")
    assert isinstance(chain, Chain) and chain.head() == (0, GENESIS) and chain.anchor() == (1, GENESIS)
    first = chain.append("grant", "c-1", b"one", at_ms=5)
    more = chain.append_many([("grant", "c-2", b"two"), ("revoke", "c-1", b"")], at_ms=7)
    [nxt] = chain.append_next(lambda head: [("note", "", str(head[0] + 1).encode())])
    assert [first.idx, *(e.idx for e in more), nxt.idx] == [1, 2, 3, 4] and nxt.payload == b"4"
    assert first.prev_hash == GENESIS and more[0].prev_hash == first.hash and nxt.prev_hash == more[1].hash
    assert first.hash == entry_hash("things", 1, 5, "grant", "c-1", b"one", GENESIS)
    assert chain.head() == (4, nxt.hash) and chain.count() == 4 and chain.entry(2) == more[0]
    assert chain.entry(99) is None and chain.latest("c-1") == more[1] and chain.latest("nobody") is None
    assert [e.idx for e in chain.entries(key="c-1")] == [1, 3]
    assert [e.idx for e in chain.entries(after=1, since_ms=7, limit=1)] == [2]
    assert chain.verify() and chain.verify(expect_head=(2, more[0].hash)).ok and chain.missing_guards() == ()


def test_a_failed_batch_writes_nothing(storage: Storage) -> None:
    """append_many with one bad item, and append_next whose build raises, leave the chain as it was."""
    chain = storage.chain("things")
    _fill(chain, 2)
    with pytest.raises(ValueError):
        chain.append_many([("ok", "k", b"x"), ("", "k", b"bad kind")])

    def build(head: tuple[int, bytes]) -> list[tuple[str, str, bytes]]:
        raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError):
        chain.append_next(build)
    assert chain.head()[0] == 2 and chain.count() == 2 and chain.append_many([]) == []


def test_guards_refuse_update_delete_and_a_skipping_insert(backend: Backend, storage: Storage) -> None:
    """Raw SQL cannot UPDATE, DELETE or INSERT out of sequence below the interface; the chain still verifies."""
    chain = storage.chain("things")
    _fill(chain, 3)
    head_idx, head_hash = chain.head()
    for statement in ("UPDATE things SET payload = x'00' WHERE idx = 2", "DELETE FROM things WHERE idx = 3",
                      "INSERT INTO things(idx, at_ms, kind, key, payload, prev_hash, hash) VALUES "
                      f"(9, 0, 'k', '', x'', x'{head_hash.hex()}', x'{head_hash.hex()}')"):
        with pytest.raises(backend.refused):
            backend.sql("things", statement)
    assert chain.head() == (head_idx, head_hash) and chain.verify().ok


@pytest.mark.parametrize("tampering, first_bad, good, reason", [
    (["UPDATE things SET payload = x'6576696c' WHERE idx = 3"], 3, 2, MISMATCH),
    (["DELETE FROM things WHERE idx = 2"], 3, 1, BROKEN),
    (["UPDATE things SET idx = 100 WHERE idx = 2", "UPDATE things SET idx = 2 WHERE idx = 4",
      "UPDATE things SET idx = 4 WHERE idx = 100"], 2, 1, BROKEN),
])  # fmt: skip
def test_verify_catches_edits_deletes_and_reorders(backend: Backend, storage: Storage, tampering: list[str],
                                                   first_bad: int, good: int, reason: str) -> None:
    """With the guards out of the way, an edited, deleted or reordered entry fails verify at that entry."""
    chain = storage.chain("things")
    _fill(chain, 5)
    backend.tamper("things", tampering)
    report = chain.verify()
    assert not report and report.first_bad == first_bad and report.reason == reason.format(n=first_bad)
    assert report.count == good


def test_verify_against_an_expected_head_catches_a_cut_tail(backend: Backend, storage: Storage) -> None:
    """A deleted tail leaves a valid shorter chain, which fails against the head recorded before."""
    chain = storage.chain("things")
    _fill(chain, 4)
    recorded = chain.head()
    backend.tamper("things", ["DELETE FROM things WHERE idx = 4"])
    assert chain.verify().ok and not chain.verify(expect_head=recorded).ok


def test_appends_from_threads_and_two_instances_stay_linear(backend: Backend, storage: Storage) -> None:
    """Four threads over two Storage instances append 200 entries: indices 1..200, one each, chain verifies."""
    other = backend.open()
    chains = [storage.chain("things"), other.chain("things")]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(25):
                chains[n % 2].append_many([("rec", f"t{n}", f"{n}-{i}-a".encode()), ("rec", f"t{n}", f"{n}-{i}-b".encode())])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    assert not errors
    entries = list(chains[0].entries())
    assert [e.idx for e in entries] == list(range(1, 201)) and chains[0].verify().ok
    for n in range(4):  # each batch of two stayed together
        mine = [e for e in entries if e.key == f"t{n}"]
        assert all(b.idx == a.idx + 1 for a, b in zip(mine[::2], mine[1::2], strict=True))


def test_appends_from_several_processes_stay_linear(backend: Backend, storage: Storage) -> None:
    """Three processes append at once through their own storages: one linear chain that verifies."""
    chain = storage.chain("things")
    chain.append("start", "", b"")
    children = start_children(backend, """
        chain = storage.chain("things")
        for i in range(30):
            chain.append_next(lambda head: [("rec", args[0], str(head[0] + 1).encode())])
    """, [[f"p{n}"] for n in range(3)])
    run_together(children)
    entries = list(chain.entries())
    assert [e.idx for e in entries] == list(range(1, 92)) and chain.verify().ok
    # append_next saw the true head inside its transaction: every payload names its own index
    assert all(e.payload == str(e.idx).encode() for e in entries[1:])
    assert sorted(e.key for e in entries[1:]) == sorted(f"p{n}" for n in range(3) for _ in range(30))


def _plan_before(at_ms: int) -> object:
    def plan(view: PrefixView) -> tuple[int, tuple[str, str, bytes]] | None:
        keep = view.first_since(at_ms) or view.head[0] + 1
        if view.count_before(keep) == 0:
            return None
        anchor = view.anchor_for(keep)
        return keep, ("marker", "", f"{anchor[0]}:{anchor[1].hex()}".encode())
    return plan


def test_remove_prefix_appends_its_marker_records_the_anchor_and_keeps_verifying(storage: Storage) -> None:
    """remove_prefix removes the entries before `keep` with a marker entry, in one step; the anchor is recorded."""
    chain = storage.chain("log", prunable=True)
    _fill(chain, 4, at_ms=NOW_MS - 10 * DAY_MS)
    _fill(chain, 2, at_ms=NOW_MS)
    kept_prev = chain.entry(5).prev_hash  # type: ignore[union-attr]
    done = chain.remove_prefix(_plan_before(NOW_MS))  # type: ignore[arg-type]
    assert done is not None and done.removed == 4 and done.anchor == (5, kept_prev)
    assert done.marker.idx == 7 and done.marker.payload == f"5:{kept_prev.hex()}".encode()
    assert chain.anchor() == (5, kept_prev) and [e.idx for e in chain.entries()] == [5, 6, 7]
    assert chain.entry(4) is None and chain.count() == 3 and chain.head() == (7, done.marker.hash)
    with chain.snapshot() as snap:
        assert snap.anchor == (5, kept_prev) and [e.idx for e in snap.entries()] == [5, 6, 7]
    assert chain.remove_prefix(_plan_before(NOW_MS)) is None  # type: ignore[arg-type]  # nothing old left
    chain.append("rec", "k", b"after")
    assert chain.head()[0] == 8


def test_remove_prefix_refuses_a_keep_outside_the_chain_and_changes_nothing(storage: Storage) -> None:
    """A keep at or below the anchor, or beyond head + 1, is a ValueError and nothing is removed or appended."""
    chain = storage.chain("log", prunable=True)
    _fill(chain, 3)
    before = list(chain.entries())
    for keep in (1, 0, 5):
        with pytest.raises(ValueError):
            chain.remove_prefix(lambda view, k=keep: (k, ("marker", "", b"")))
    assert list(chain.entries()) == before and chain.anchor() == (1, GENESIS)
    # keep = head + 1 removes everything before the marker, which becomes the anchor entry
    done = chain.remove_prefix(lambda view: (4, ("marker", "", b"")))
    assert done is not None and done.anchor == (4, before[-1].hash) and [e.idx for e in chain.entries()] == [4]


def test_a_snapshot_sees_one_instant(backend: Backend, storage: Storage) -> None:
    """Appends and a prefix removal made while a snapshot is open are not seen by it."""
    chain = storage.chain("log", prunable=True)
    _fill(chain, 3, at_ms=NOW_MS - 10 * DAY_MS)
    other = backend.open()
    try:
        writer = other.chain("log", prunable=True)
        with chain.snapshot() as snap:
            assert snap.anchor == (1, GENESIS)
            writer.append("rec", "k", b"late", at_ms=NOW_MS)
            assert writer.remove_prefix(_plan_before(NOW_MS)) is not None  # type: ignore[arg-type]
            assert [e.idx for e in snap.entries()] == [1, 2, 3]
        assert chain.anchor()[0] == 4 and [e.idx for e in chain.entries()] == [4, 5]
    finally:
        other.close()


def test_the_audit_log_prunes_and_verifies_through_the_interface(backend: Backend, storage: Storage) -> None:
    """AuditLog on any backend: prune keeps verify ok, records the anchor, and a prefix cut by hand is caught."""
    log = AuditLog(storage.audit(), retention_days=183)
    for age in (300, 250, 5, 1):
        log.record(AuditRecord(at_ms=NOW_MS - age * DAY_MS, request_id=f"req-{age}", requester="44",
                               decision="answered"), at_ms=NOW_MS - age * DAY_MS)
    assert log.prune(NOW_MS) == 2
    report = log.verify()
    assert report.ok and report.anchor_index == 3 and log.anchor()[0] == 3
    assert [e.kind for e in log.entries()][-1] == KIND_PRUNE
    backend.tamper("audit", ["DELETE FROM audit WHERE idx = 3"])
    assert not log.verify().ok


def test_close_is_idempotent_and_a_closed_chain_refuses(storage: Storage) -> None:
    """close() twice is harmless; reading or appending afterwards raises StoreError."""
    chain = storage.chain("things")
    chain.append("rec", "k", b"x")
    chain.close()
    chain.close()
    with pytest.raises(StoreError):
        chain.append("rec", "k", b"y")
    with pytest.raises(StoreError):
        chain.head()


def test_read_only_storage_opens_what_exists_and_writes_nothing(backend: Backend, storage: Storage) -> None:
    """A read-only storage reads an existing chain, refuses to append, and names a missing one as missing."""
    storage.chain("things").append("rec", "k", b"x")
    with backend.open(readonly=True) as ro:
        chain = ro.chain("things")
        assert chain.head()[0] == 1 and chain.verify().ok
        with pytest.raises(StoreError):
            chain.append("rec", "k", b"y")
        with pytest.raises(StoreError):
            ro.chain("nothing_here")
