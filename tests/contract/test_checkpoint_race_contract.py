"""CheckpointStore.receive on a shared chain: the "extends the held one" check and the append are one locked step."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from node.crypto import pki, signing
from node.domain.regions import province_uri
from node.errors import Refusal
from node.store.audit import KIND_CHECKPOINT, KIND_CHECKPOINT_CONFLICT, Checkpoint, CheckpointStore, SignedCheckpoint
from node.store.audit.checkpoints import sign_checkpoint
from node.store.interfaces import Chain, Entry, Link
from node.testing.backends import Backend
from node.testing.cluster import build_federation
from tests.contract.conftest import run_together, start_children

MEMBER = province_uri("44")


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Province 44's signer and the federation's CA (for the coordinator's verifier)."""
    fed = build_federation(tmp_path_factory.mktemp("race-pki"), ["44"])
    return {"signer": fed.member("44").signer, "ca": fed.pki / "ca.pem"}


def _verifier(ca: Path) -> signing.Verifier:
    return signing.Verifier(pki.TrustAnchor.load(ca))


def _checkpoint(signer: signing.Signer, index: int, prev: Link) -> SignedCheckpoint:
    """A validly signed checkpoint of 44's at `index` (a fresh head each time), extending `prev`."""
    return sign_checkpoint(Checkpoint(MEMBER, index, secrets.token_bytes(32), int(time.time() * 1000), prev), signer)


class _PausingChain:
    """A real chain that, after each read of a member's latest entry, waits (bounded) until the other receiver has
    read too: a check made outside the append's lock is then made by both receivers before either appends."""

    def __init__(self, chain: Chain, barrier: threading.Barrier) -> None:
        self._chain, self._barrier = chain, barrier

    def latest(self, key: str) -> Entry | None:
        found = self._chain.latest(key)
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:  # the other receiver waits for our lock: it cannot read meanwhile
            pass
        return found

    def append_next(self, build: Callable[[Link], Sequence[tuple[str, str, bytes]]]) -> list[Entry]:
        return self._chain.append_next(build)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)


def _lodge(store: CheckpointStore, signed: SignedCheckpoint) -> str:
    try:
        store.receive(signed.message, MEMBER)
    except Refusal as refused:
        return f"refused {refused.code.name}: {refused}"
    return "accepted"


def _race(first: Chain, second: Chain, verifier: signing.Verifier, lodged: list[SignedCheckpoint]) -> list[str]:
    """Lodge lodged[0] through `first` and lodged[1] through `second` at once, each receiver pausing after its read."""
    barrier = threading.Barrier(2, timeout=3)
    stores = [CheckpointStore(_PausingChain(chain, barrier), verifier)  # type: ignore[arg-type]
              for chain in (first, second)]
    results: list[str] = ["", ""]
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _lodge(stores[i], lodged[i])))
               for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_two_receivers_on_separate_stores_lodge_conflicting_checkpoints_one_wins(
        backend: Backend, member: dict[str, Any]) -> None:
    """Two receivers with their own storage objects lodging two different successors at once: one is kept, the
    other refused as not extending the held one and recorded as a conflict."""
    verifier = _verifier(member["ca"])
    with backend.open() as first_storage, backend.open() as second_storage:
        first_ledger, second_ledger = first_storage.ledger(), second_storage.ledger()
        base = _checkpoint(member["signer"], 3, (0, b"\0" * 32))
        CheckpointStore(first_ledger, verifier).receive(base.message, MEMBER)
        rivals = [_checkpoint(member["signer"], 7, base.checkpoint.link),
                  _checkpoint(member["signer"], 8, base.checkpoint.link)]
        results = _race(first_ledger, second_ledger, verifier, rivals)
        assert sorted(r.split(":")[0] for r in results) == ["accepted", "refused MALFORMED"], results
        refused = next(r for r in results if r.startswith("refused"))
        assert "does not extend the one held" in refused
        winner = rivals[results.index("accepted")]
        assert CheckpointStore(second_ledger, verifier).latest(MEMBER) == winner.checkpoint
        kinds = [e.kind for e in first_ledger.entries(key=MEMBER)]
        assert kinds == [KIND_CHECKPOINT, KIND_CHECKPOINT, KIND_CHECKPOINT_CONFLICT]
        assert first_ledger.verify().ok


def test_two_receivers_lodging_the_same_checkpoint_at_once_keep_it_once(
        backend: Backend, member: dict[str, Any]) -> None:
    """The same checkpoint lodged through two storage objects at once (a resend racing its original) is kept once."""
    verifier = _verifier(member["ca"])
    with backend.open() as first_storage, backend.open() as second_storage:
        first_ledger, second_ledger = first_storage.ledger(), second_storage.ledger()
        signed = _checkpoint(member["signer"], 3, (0, b"\0" * 32))
        assert _race(first_ledger, second_ledger, verifier, [signed, signed]) == ["accepted", "accepted"]
        assert [e.kind for e in first_ledger.entries(key=MEMBER)] == [KIND_CHECKPOINT]


_CHILD = """
from node.crypto import pki, signing
from node.errors import Refusal
from node.store.audit import CheckpointStore
store = CheckpointStore(storage.ledger(), signing.Verifier(pki.TrustAnchor.load(args[0])))
try:
    store.receive(bytes.fromhex(args[1]), args[2])
    print("accepted")
except Refusal as refused:
    print("refused", refused.code.name, "does not extend" in str(refused))
"""


def test_processes_lodging_conflicting_checkpoints_at_once_keep_exactly_one(
        backend: Backend, member: dict[str, Any]) -> None:
    """Four processes, each its own storage, lodge four different successors of the held checkpoint at once:
    exactly one is kept, the other three are refused as not extending it."""
    verifier = _verifier(member["ca"])
    with backend.open() as storage:
        ledger = storage.ledger()
        base = _checkpoint(member["signer"], 3, (0, b"\0" * 32))
        CheckpointStore(ledger, verifier).receive(base.message, MEMBER)
        rivals = [_checkpoint(member["signer"], 4 + i, base.checkpoint.link) for i in range(4)]
        outputs = run_together(start_children(backend, _CHILD, [[str(member["ca"]), r.blob.hex(), MEMBER]
                                                                for r in rivals]))
        results = [out.strip() for out in outputs]
        assert sorted(results) == ["accepted"] + ["refused MALFORMED True"] * 3, results
        held = CheckpointStore(ledger, verifier).all_signed(MEMBER)
        assert [s.checkpoint for s in held] == [base.checkpoint, rivals[results.index("accepted")].checkpoint]
        assert sum(e.kind == KIND_CHECKPOINT_CONFLICT for e in ledger.entries(key=MEMBER)) == 3
        assert ledger.verify().ok
