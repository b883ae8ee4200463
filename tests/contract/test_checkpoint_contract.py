"""The CheckpointStorage contract (node.store.interfaces.CheckpointStorage): the node's own signed checkpoints."""

from __future__ import annotations

from node.store.audit import NO_PREVIOUS, Checkpoint, SignedCheckpoint
from node.store.interfaces import CheckpointStorage, Storage
from node.testing.backends import Backend
from node.wire.v1 import common_pb2, coordinator_pb2

MEMBER = "urn:hedui:province:44"


def _signed(index: int, prev: tuple[int, bytes]) -> SignedCheckpoint:
    """A checkpoint with a placeholder signature: the storage keeps it, it does not judge it."""
    cp = Checkpoint(MEMBER, index, bytes([index]) * 32, 1_800_000_000_000 + index, prev)
    return SignedCheckpoint(cp, coordinator_pb2.AuditCheckpoint(body=cp.body(), signature=common_pb2.Signature()))


def test_checkpoints_read_back_in_order_and_link_on(backend: Backend, storage: Storage) -> None:
    """Appended checkpoints read back in order (also from a new instance); last_link is what the next extends."""
    book = storage.checkpoints()
    assert isinstance(book, CheckpointStorage) and book.read() == [] and book.last_link() == NO_PREVIOUS
    first = _signed(3, NO_PREVIOUS)
    second = _signed(7, first.checkpoint.link)
    book.append(first)
    book.append(second)
    assert book.last_link() == second.checkpoint.link
    with backend.open() as again:
        held = again.checkpoints().read()
    assert [(pos, blob, problem) for pos, blob, problem in held] == [(1, first.blob, None), (2, second.blob, None)]
    with backend.open(readonly=True) as ro:
        assert [blob for _, blob, _ in ro.checkpoints().read()] == [first.blob, second.blob]
