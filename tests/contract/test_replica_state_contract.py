"""The contracts of the state replicas on several hosts must agree on: shared documents, locators, probing budgets, leases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

from node.coordinator.announcement_store import AnnouncementDocument, Heard
from node.store.interfaces import Storage
from node.testing.backends import Backend, describe
from tests.contract.conftest import REPO, run_together, start_children

KEY = b"k" * 32


def test_announcements_round_trip_and_changes_are_seen_by_another_instance(backend: Backend) -> None:
    """An announcement list saved through one storage instance is read whole by another, and only when it changed."""
    with backend.open() as one, backend.open() as two:
        writer = AnnouncementDocument(one.document("directory.json"))
        reader = AnnouncementDocument(two.document("directory.json"))
        assert reader.changed() is None  # nothing stored yet
        heard = [Heard(b"\x00signed-44", 1_700_000_000_000), Heard(b"signed-51\xff", 1_700_000_000_001)]
        writer.save(heard)
        assert reader.changed() == heard
        assert reader.changed() is None  # unchanged since this reader read it
        writer.save(heard[:1])
        assert reader.changed() == heard[:1]
        assert writer.changed() is None  # the writer knows what it wrote


def test_a_document_written_by_a_process_is_seen_changed_by_another(backend: Backend) -> None:
    """A shared document (the published standards' home) written in a child process is read back here, whole."""
    with backend.open() as storage:
        doc = storage.document("standards.json")
        assert doc.changed() is None
        children = start_children(backend, """
            storage.document("standards.json").write(json.dumps({"standards": args}).encode())
        """, [["aa", "bb"]])
        run_together(children)
        assert json.loads(doc.changed() or b"") == {"standards": ["aa", "bb"]}
        assert doc.changed() is None


def test_read_modify_writes_under_the_document_lock_lose_nothing(backend: Backend) -> None:
    """Four processes each appending 10 entries under `locked()` leave all 40 (no lost update)."""
    children = start_children(backend, """
        doc = storage.document("standards.json")
        for n in range(10):
            with doc.locked():  # re-read under the lock (a fresh instance: what is stored now), modify, write
                fresh = storage.document("standards.json").changed()
                items = json.loads(fresh)["standards"] if fresh else []
                doc.write(json.dumps({"standards": items + [f"{args[0]}-{n}"]}).encode())
    """, [[p] for p in "abcd"])
    run_together(children)
    with backend.open() as storage:
        stored = json.loads(storage.document("standards.json").changed() or b"")["standards"]
    assert sorted(stored) == sorted(f"{p}-{n}" for p in "abcd" for n in range(10))


def _put(rows, generation: int, shard: int, bits: int, count: int, shard_count: int) -> str:
    return rows.put_shard("44", 100, generation, shard, bits, count, shard_count, bytes([generation, shard]) * 4,
                          oldest_epoch=99, max_pending=2)


def test_locator_generations_complete_and_are_read_by_another_instance(backend: Backend) -> None:
    """Shards are pending until all arrived, then in force for every instance; older generations are refused."""
    with backend.open() as one, backend.open() as two:
        writer, reader = one.locators(), two.locators()
        assert reader.read(-1, {}) == (0, [])
        assert _put(writer, 1, 0, 1, 10, 6) == "pending"
        assert reader.read(0, {}) is None  # nothing in force changed
        assert _put(writer, 1, 1, 1, 10, 4) == "complete"
        version, sets = reader.read(0, {})  # type: ignore[misc]
        assert [(s.province, s.epoch, s.generation, s.subject_count) for s in sets] == [("44", 100, 1, 10)]
        assert sets[0].shards == ((1, 6, bytes([1, 0]) * 4), (1, 4, bytes([1, 1]) * 4))
        assert reader.read(version, {}) is None
        assert _put(writer, 1, 0, 1, 10, 6) == "in_force"
        assert _put(writer, 2, 0, 1, 10, 6) == "pending"
        assert _put(writer, 2, 1, 1, 10, 5) == "mismatch"  # 6 + 5 != 10: nothing kept
        assert _put(writer, 2, 1, 1, 10, 4) == "complete"
        assert _put(writer, 1, 0, 1, 10, 6) == "older"
        version2, sets = reader.read(version, {("44", 100): 1})  # type: ignore[misc]
        assert version2 > version and sets[0].generation == 2 and sets[0].shards is not None
        assert reader.read(-1, {("44", 100): 2})[1][0].shards is None  # type: ignore[index]


def test_a_probe_counted_by_one_instance_is_seen_by_another_and_never_given_back(backend: Backend) -> None:
    """Two instances share one budget: a cut admitted on one counts on the other; the budget is never refilled."""
    with backend.open() as one, backend.open() as two:
        a, b = one.probes(key=KEY), two.probes(key=KEY)
        assert a.admit("32", "c-1", {"income": "<5000"}, 2) == (None, 1)
        assert b.uses("32", "c-1", "income") == 1
        assert b.admit("32", "c-1", {"income": "<5000"}, 2) == (None, 0)  # the same cut again: free
        assert b.admit("32", "c-1", {"income": "<6000"}, 2) == (None, 1)
        assert a.admit("32", "c-1", {"income": "<7000"}, 2) == ("income", 0)  # the third distinct cut
        assert a.admit("32", "c-1", {"income": "<7000", "assets": "<1"}, 2) == ("income", 0)  # all or none
        assert b.uses("32", "c-1", "assets") == 0
        a.close()
    with backend.open() as three:
        assert three.probes(key=KEY).uses("32", "c-1", "income") == 2  # committed, still counted


def test_concurrent_processes_never_exceed_a_probing_budget(backend: Backend) -> None:
    """Six processes each asking 5 distinct cuts against a budget of 4 admit exactly 4 in total."""
    children = start_children(backend, """
        probes = storage.probes(key=b"k" * 32)
        won = [probes.admit("32", "c-1", {"income": f"<{args[0]}-{n}"}, 4)[0] is None for n in range(5)]
        print(json.dumps(sum(won)))
    """, [[p] for p in range(6)])
    assert sum(json.loads(out) for out in run_together(children)) == 4
    with backend.open() as storage:
        assert storage.probes(key=KEY).uses("32", "c-1", "income") == 4


_HOLDER = """
import json, sys
from node.store.factory import open_url
spec = json.loads(sys.argv[1])
storage = open_url(spec["url"], spec["data_dir"])
lease = storage.lease("chain-lead")
print(json.dumps(lease.held()), flush=True)
for line in sys.stdin:
    if line.strip() == "release":
        lease.release()
        print("released", flush=True)
"""


def _holder(backend: Backend) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_HOLDER), json.dumps(describe(backend))],
                             cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert json.loads(child.stdout.readline()) is True, child.stderr.read() if child.stderr else ""
    return child


def test_a_lease_held_by_another_process_is_refused_until_released(backend: Backend) -> None:
    """While another process holds the lease, held() is False here; after it releases, this process takes it."""
    child = _holder(backend)
    try:
        with backend.open() as storage:
            lease = storage.lease("chain-lead")
            assert lease.held() is False
            assert lease.held() is False  # asking again does not take it
            assert storage.lease("locator").held() is True  # another name is another role
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write("release\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "released"
            assert lease.held() is True
            assert lease.held() is True  # held stays held
            lease.close()
            assert storage.lease("chain-lead").held() is True  # closing gives it up
    finally:
        child.kill()
        child.wait()


def test_a_lease_is_released_when_its_holder_process_dies(backend: Backend) -> None:
    """SIGKILL of the holding process frees the lease for another (no stale holder)."""
    child = _holder(backend)
    try:
        with backend.open() as storage:
            lease = storage.lease("chain-lead")
            assert lease.held() is False
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            # the kernel (flock) or the server (session) frees it once the socket closes: wait for that, bounded
            pause = threading.Event()
            assert any(lease.held() or pause.wait(0.05) for _ in range(200))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_storage_gives_every_replica_state_object(storage: Storage) -> None:
    """A writable Storage opens a lease, a document, locators and probes (the Protocol's new members)."""
    assert isinstance(storage, Storage)
    for thing in (storage.lease("locator"), storage.document("directory.json"), storage.locators(),
                  storage.probes(key=KEY)):
        thing.close()
        thing.close()  # idempotent
