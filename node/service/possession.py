"""Unlocking possession-locked queries with the possession keys of the subjects this node holds."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError

from node.crypto import possession
from node.crypto.possession import LockError, Unlocked
from node.errors import ErrorCode, Refusal
from node.store.interfaces import FactStore
from node.wire.v1 import verification_pb2


class Unlocker:
    """Opens the locked queries of sealed calls: only those with a subject this store holds."""

    def __init__(self, store: FactStore, identity: str, *, max_subjects: int = 16) -> None:
        self.store = store
        self.identity = identity
        self.max_subjects = max_subjects

    def unlock(self, locked: verification_pb2.LockedQuery) -> Unlocked:
        """The unlocked query; Refusal NOT_HELD when no subject's possession key opens it."""
        result = self.unlock_many([locked])[0]
        if isinstance(result, Refusal):
            raise result
        return result

    def unlock_many(self, queries: Sequence[verification_pb2.LockedQuery]) -> list[Unlocked | Refusal]:
        """Each query unlocked, or the Refusal of it; one store read for all their subjects."""
        shaped: list[Refusal | None] = []
        tokens: list[bytes] = []
        for locked in queries:
            try:
                possession.check_shape(locked, self.max_subjects)
            except LockError as exc:
                shaped.append(Refusal(ErrorCode.MALFORMED, str(exc)))
                continue
            shaped.append(None)
            tokens.extend(s.token for s in locked.subjects)
        keys = self.store.possession_keys(tokens) if tokens else {}
        out: list[Unlocked | Refusal] = []
        for locked, refusal in zip(queries, shaped, strict=True):
            if refusal is not None:
                out.append(refusal)
                continue
            unlocked = possession.unlock_checked(locked, keys, recipient=self.identity)  # shape checked above
            out.append(unlocked if unlocked is not None else Refusal(ErrorCode.NOT_HELD))
        return out


def signed_query(unlocked: Unlocked) -> verification_pb2.SignedQuery:
    """The signed query inside an unlocked query; Refusal MALFORMED when the content is broken."""
    if unlocked.signed_query is None:
        raise Refusal(ErrorCode.MALFORMED, "locked query content does not open")
    try:
        return verification_pb2.SignedQuery.FromString(unlocked.signed_query)
    except DecodeError:
        raise Refusal(ErrorCode.MALFORMED, "locked query content does not parse") from None
