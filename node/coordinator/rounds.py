"""Household rounds on the coordinator: fix and sign who takes part, and check a round before
its sealed contribution queries are forwarded. The coordinator keeps no round state: the signed
holder set travels with every later request (so any worker process, or a restarted coordinator,
can route it); only round ids are remembered, so that masks are never reused."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from node.crypto import signing
from node.domain import request_ids
from node.errors import ErrorCode, Refusal
from node.service.household import verify_holder_set
from node.service.signed import coordinator_signed
from node.service.verification import ReplayGuard
from node.wire.v1 import household_pb2

ROUND_PREFIX: Final[bytes] = b"hedui/v1/coordinator-round\x00"
MAX_ROUND_BATCH: Final[int] = 512  # households per OpenRoundBatch / RouteRoundBatch
MAX_ENVELOPES: Final[int] = 64  # holders per RouteRound(Batch)


class RoundBook:
    """Signs holder sets; verifies them when they come back. Refuses a round id seen before."""

    def __init__(self, *, signer: signing.Signer, verifier: signing.Verifier, replay: ReplayGuard,
                 clock_skew_s: int, clock: Callable[[], float] = time.time) -> None:
        self.signer = signer
        self.verifier = verifier
        self.replay = replay
        self.clock_skew_s = clock_skew_s
        self.clock = clock

    def open(self, requester: str, consent_id: str, round_id: str, holders: Iterable[str], *,
             missing: Iterable[str] = (), previous_round_id: str = "") -> household_pb2.SignedHolderSet:
        """A new round over `holders` (the requester is always one); REPLAYED for a used round id."""
        return self.sign([self.body(requester, consent_id, round_id, holders, missing=missing,
                                    previous_round_id=previous_round_id)])[0]

    def body(self, requester: str, consent_id: str, round_id: str, holders: Iterable[str], *,
             missing: Iterable[str] = (), previous_round_id: str = "") -> bytes:
        """A new round's serialized holder set, not yet signed; the round id is remembered (REPLAYED if seen)."""
        request_ids.check(round_id)
        now_ms = int(self.clock() * 1000)
        if not self.replay.remember(requester, ROUND_PREFIX + round_id.encode(), now_ms):
            raise Refusal(ErrorCode.REPLAYED, "round id already used: masks are never reused")
        return household_pb2.HolderSetBody(
            round_id=round_id, consent_id=consent_id, requester=requester,
            holders=sorted(set(holders) | {requester}), missing=sorted(set(missing)),
            previous_round_id=previous_round_id, issued_at_ms=now_ms,
        ).SerializeToString()

    def sign(self, bodies: Sequence[bytes]) -> list[household_pb2.SignedHolderSet]:
        """Holder sets signed with one key operation (a batch signature; each still verifies alone)."""
        signatures = self.signer.sign_many([(signing.HOLDER_SET, b) for b in bodies]) if bodies else []
        return [household_pb2.SignedHolderSet(body=b, signature=s) for b, s in zip(bodies, signatures, strict=True)]

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Remember the round ids of a batch in one transaction, if the replay store can."""
        scope = getattr(self.replay, "transaction", None)
        return scope() if scope is not None else contextlib.nullcontext()

    def check(self, signed: household_pb2.SignedHolderSet, requester: str, consent_id: str, *,
              fresh: bool = True) -> household_pb2.HolderSetBody:
        """A holder set this coordinator signed for `requester` and `consent_id` (and recently, if `fresh`)."""
        body = verify_holder_set(signed, self.verifier)
        if body.requester != requester or body.consent_id != consent_id:
            raise Refusal(ErrorCode.NOT_AUTHORISED, "holder set belongs to another requester or consent")
        if fresh and abs(int(self.clock() * 1000) - body.issued_at_ms) > self.clock_skew_s * 1000:
            raise Refusal(ErrorCode.CLOCK_WINDOW, "holder set is too old: open a new round")
        return body

    def outcome(self, holder_set: household_pb2.SignedHolderSet, failed: Iterable[str]) -> household_pb2.SignedRoundOutcome:
        """The signed record of which holders failed in transport when `holder_set` was routed."""
        return self.outcomes([(holder_set, failed)])[0]

    def outcomes(self, rounds: Sequence[tuple[household_pb2.SignedHolderSet, Iterable[str]]]
                 ) -> list[household_pb2.SignedRoundOutcome]:
        """One signed outcome per routed holder set, with one key operation for all of them."""
        now_ms = int(self.clock() * 1000)
        bodies = [household_pb2.RoundOutcomeBody(holder_set_digest=hashlib.sha256(h.body).digest(),
                                                 failed=sorted(set(failed)), issued_at_ms=now_ms).SerializeToString()
                  for h, failed in rounds]
        signatures = self.signer.sign_many([(signing.ROUND_OUTCOME, b) for b in bodies]) if bodies else []
        return [household_pb2.SignedRoundOutcome(body=b, signature=s) for b, s in zip(bodies, signatures, strict=True)]

    def repeat(self, requester: str, consent_id: str, round_id: str, previous: household_pb2.SignedHolderSet,
               outcome: household_pb2.SignedRoundOutcome, exclude: Iterable[str] = ()) -> household_pb2.SignedHolderSet:
        """A fresh round over the earlier round's holders less those this coordinator saw fail."""
        return self.sign([self.repeat_body(requester, consent_id, round_id, previous, outcome, exclude)])[0]

    def repeat_body(self, requester: str, consent_id: str, round_id: str, previous: household_pb2.SignedHolderSet,
                    outcome: household_pb2.SignedRoundOutcome, exclude: Iterable[str] = ()) -> bytes:
        """The holder set of `repeat`, not yet signed.

        Only a failure the coordinator itself saw when it routed `previous` (its signed `outcome`)
        lets a holder be left out: a requester cannot build a smaller round at will.
        """
        before = self.check(previous, requester, consent_id, fresh=False)
        seen = coordinator_signed(outcome.signature, signing.ROUND_OUTCOME, outcome.body, household_pb2.RoundOutcomeBody,
                                  self.verifier, "round outcome")
        if seen.holder_set_digest != hashlib.sha256(previous.body).digest():
            raise Refusal(ErrorCode.MALFORMED, "round outcome belongs to another holder set")
        dropped = set(seen.failed)
        if not dropped or requester in dropped or not dropped <= set(before.holders):
            raise Refusal(ErrorCode.MALFORMED, "no holder of the earlier round failed: nothing to leave out")
        if exclude and set(exclude) != dropped:
            raise Refusal(ErrorCode.MALFORMED, "exclude must name exactly the holders the coordinator saw fail")
        return self.body(requester, consent_id, round_id, set(before.holders) - dropped,
                         missing=set(before.missing) | dropped, previous_round_id=before.round_id)
