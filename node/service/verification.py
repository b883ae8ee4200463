"""Answering a signed verification query from the local store, disclosing outcomes only."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from google.protobuf.message import DecodeError

from node.config import Limits
from node.crypto import sealing, signing
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.crypto.possession import Unlocked
from node.domain import request_ids
from node.domain.catalogue import Catalogue
from node.domain.policy import Policy
from node.domain.predicate import ONE_PER_ITEM, Check, Comparator, repeated_item
from node.errors import ErrorCode, Refusal
from node.service.probing import ProbeLimit
from node.service.packed import Columns
from node.store.interfaces import Fact, FactStore
from node.wire.v1 import common_pb2, verification_pb2

NONCE_MIN, NONCE_MAX = 16, 64
TOKEN_BYTES: Final[int] = 32

_OPS: Final[dict[int, Comparator]] = {
    common_pb2.LT: Comparator.LT,
    common_pb2.LE: Comparator.LE,
    common_pb2.EQ: Comparator.EQ,
    common_pb2.NE: Comparator.NE,
    common_pb2.GE: Comparator.GE,
    common_pb2.GT: Comparator.GT,
}


class ConsentGate(Protocol):
    """Decides whether a query's consent receipt authorises it (see node.service.consent)."""

    def check(self, query: verification_pb2.QueryBody, checks: list[Check]) -> str:
        """Raise Refusal when the consent does not authorise the query; else return its consent id."""


class ReplayGuard(Protocol):
    """Remembers nonces so a signed query cannot be answered twice."""

    def remember(self, requester: str, nonce: bytes, issued_at_ms: int) -> bool:
        """Record the nonce; False when it was already seen."""


@dataclass(frozen=True, slots=True)
class Admitted:
    """A query that passed every check but the nonce (`VerificationService.admit`): what `answer` needs."""

    signed: verification_pb2.SignedQuery
    body: verification_pb2.QueryBody
    checks: list[Check]
    consent_id: str


@dataclass(frozen=True)
class Decided:
    """A verified query and the answer body the node will sign."""

    query: verification_pb2.QueryBody
    query_digest: bytes
    answer: verification_pb2.AnswerBody
    items: tuple[str, ...]
    probes: int = 0  # probing budget this query used (node.service.probing)
    consent_id: str = ""  # the consent the gate accepted (set by decide_batch; "" when not known)


def parse_checks(body: verification_pb2.QueryBody, catalogue: Catalogue) -> list[Check]:
    """Typed checks of a query; unknown items or comparators refuse the whole query."""
    checks: list[Check] = []
    for c in body.checks:
        op = _OPS.get(c.op)
        if op is None:
            raise Refusal(ErrorCode.MALFORMED, "check has no valid comparator")
        if c.attribute not in catalogue:
            raise Refusal(ErrorCode.UNKNOWN_ITEM)
        checks.append(Check(c.attribute, op, c.operand))
    if repeated_item(c.attribute for c in checks) is not None:
        raise Refusal(ErrorCode.MALFORMED, ONE_PER_ITEM)
    return checks


def require_usable_reply_key(bodies: Iterable[bytes]) -> None:
    """Refuse sealed queries unless they name one requester and a reply key an answer can be sealed to.

    `bodies` are the (not yet authenticated) serialized QueryBody of one sealed query or of every
    query of a batch. Bodies that do not parse are left to `decide` (refused per query); the rest
    must name one requester and one usable reply key, else the whole request is refused
    MALFORMED before anything is decided (no nonce consumed, nothing answered or audited as such).
    """
    names: set[tuple[str, str, bytes]] = set()
    for raw in bodies:
        try:
            body = verification_pb2.QueryBody.FromString(raw)
        except DecodeError:
            continue
        names.add((body.requester, body.reply_seal_suite, body.reply_seal_key))
    if len(names) > 1:
        raise Refusal(ErrorCode.MALFORMED, "a batch has one requester and one reply key")
    if not names:
        raise Refusal(ErrorCode.MALFORMED, "query body does not parse")
    ((_, suite, key),) = names
    if suite != sealing.SUITE_NAME or not sealing.usable_public_key(key):
        raise Refusal(ErrorCode.MALFORMED, "sealed query names no usable reply key")


class VerificationService:
    """What a province node does with a verification query; the gRPC servicer only adapts."""

    def __init__(
        self,
        *,
        province: str,
        store: FactStore,
        catalogue: Catalogue,
        policy: Policy,
        verifier: signing.Verifier,
        limits: Limits,
        consent: ConsentGate | None,
        replay: ReplayGuard,
        probes: ProbeLimit | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.province = province
        self.store = store
        self.catalogue = catalogue
        self.policy = policy
        self.verifier = verifier
        self.limits = limits
        self.consent = consent
        self.replay = replay
        self.probes = probes
        self.clock = clock

    def authenticate(self, signed: verification_pb2.SignedQuery, peer_province: str | None) -> verification_pb2.QueryBody:
        """Check the query's signature and that signer, requester and TLS peer agree.

        `peer_province` is None for a query relayed sealed by the coordinator: the signer is then
        the requester, and the query must be addressed to this province.
        """
        try:
            verified = self.verifier.verify(signed.signature, signing.QUERY, signed.body)
        except (SignatureInvalid, CertificateRejected) as exc:
            raise Refusal(ErrorCode.UNAUTHENTICATED, str(exc)) from None
        signer = verified.identity.province
        if signer is None or (peer_province is not None and signer != peer_province):
            raise Refusal(ErrorCode.IDENTITY_MISMATCH)
        body = verification_pb2.QueryBody()
        try:
            body.ParseFromString(signed.body)
        except DecodeError:
            raise Refusal(ErrorCode.MALFORMED, "query body does not parse") from None
        if body.requester != signer:
            raise Refusal(ErrorCode.IDENTITY_MISMATCH)
        if peer_province is None and body.audience != self.province:
            raise Refusal(ErrorCode.NOT_ADDRESSED_HERE)
        return body

    def _admit(self, body: verification_pb2.QueryBody, lock: Unlocked | None,
               parsed: dict[tuple[tuple[str, int, int], ...], list[Check] | Refusal] | None = None,
               valid_ids: set[str] | None = None) -> tuple[list[Check], str]:
        """Refuse malformed, stale, misaddressed, oversized or unconsented queries (everything but a replay, which
        `answer` refuses); the checks and the consent id. `lock` is the possession lock a sealed query came in:
        its subjects and request id must be the ones the lock named (the holder unlocked it for those).
        `parsed` caches the checks of a batch (parsed once per distinct checks), `valid_ids` the request ids
        of a batch already found valid (a chunk shares one)."""
        if valid_ids is None or body.request_id not in valid_ids:
            request_ids.check(body.request_id)
            if valid_ids is not None:
                valid_ids.add(body.request_id)
        if not NONCE_MIN <= len(body.nonce) <= NONCE_MAX:
            raise Refusal(ErrorCode.MALFORMED, "nonce must be 16 to 64 bytes")
        if body.audience and body.audience != self.province:
            raise Refusal(ErrorCode.NOT_ADDRESSED_HERE)
        now_ms = int(self.clock() * 1000)
        if abs(now_ms - body.issued_at_ms) > self.limits.clock_skew_s * 1000:
            raise Refusal(ErrorCode.CLOCK_WINDOW)
        if body.purpose not in self.policy.purposes:
            raise Refusal(ErrorCode.UNKNOWN_PURPOSE)
        n_subjects, n_checks = len(body.subjects), len(body.checks)
        if not 1 <= n_subjects <= self.limits.max_subjects or not 1 <= n_checks <= self.limits.max_checks:
            raise Refusal(ErrorCode.TOO_MANY, f"1 to {self.limits.max_subjects} subjects and 1 to {self.limits.max_checks} checks")
        subjects = tuple(body.subjects)
        if any(len(s) != TOKEN_BYTES for s in subjects):
            raise Refusal(ErrorCode.MALFORMED, "subject tokens must be 32 bytes")
        if len(set(subjects)) != n_subjects:
            raise Refusal(ErrorCode.MALFORMED, "subjects must be distinct")
        if lock is not None and (subjects != lock.tokens or body.request_id != lock.request_id):
            raise Refusal(ErrorCode.MALFORMED, "query does not match the lock it came in")
        if parsed is None:
            checks = parse_checks(body, self.catalogue)
        else:
            key = tuple((c.attribute, c.op, c.operand) for c in body.checks)
            known = parsed.get(key)
            if known is None:
                try:
                    known = parse_checks(body, self.catalogue)
                except Refusal as refusal:
                    known = refusal
                parsed[key] = known
            if isinstance(known, Refusal):
                raise Refusal(known.code, known.detail)
            checks = known
        consent_id = self.consent.check(body, checks) if self.consent is not None else ""
        return checks, consent_id

    def decide(self, signed: verification_pb2.SignedQuery, peer_province: str | None, *,
               lock: Unlocked | None = None) -> Decided:
        """Authenticate, validate and evaluate a query; the caller signs the answer."""
        return self.answer(self.admit(signed, peer_province, lock=lock))

    # `decide` in two steps, for servers whose stores wait on the network (Storage.threaded): `admit` reads
    # and updates the in-memory state the event loop also changes (consent view, receipt and certificate
    # caches) and runs on the loop; `answer` touches only the stores (nonce, probing budget, facts), which
    # are then safe to use from a worker thread, and pure evaluation.

    def admit(self, signed: verification_pb2.SignedQuery, peer_province: str | None, *,
              lock: Unlocked | None = None) -> Admitted:
        """Authenticate the query and check everything but its nonce (on the event loop's thread)."""
        body = self.authenticate(signed, peer_province)
        checks, consent_id = self._admit(body, lock)
        return Admitted(signed, body, checks, consent_id)

    def recheck(self, admitted: Admitted) -> None:
        """The consent check of `admit` again, on the loop once `answer` ran on a store thread: a revocation
        applied, or the view gone stale, while the thread worked refuses the answer (the bound of T6c holds)."""
        if self.consent is not None:
            self.consent.check(admitted.body, admitted.checks)

    def answer(self, admitted: Admitted) -> Decided:
        """Record the nonce (REPLAYED if seen), spend the probing budget and evaluate from the store."""
        signed, body, checks, consent_id = admitted.signed, admitted.body, admitted.checks, admitted.consent_id
        if not self.replay.remember(body.requester, body.nonce, body.issued_at_ms):
            raise Refusal(ErrorCode.REPLAYED)
        allowed = [self.policy.allows(body.purpose, c.attribute) for c in checks]
        probes = 0  # checks the policy denies reveal nothing and use no budget
        if self.probes is not None:
            asked = [c for c, ok in zip(checks, allowed, strict=True) if ok]
            probes = self.probes.admit(body.requester, consent_id, body.purpose, asked)
        attributes = sorted({c.attribute for c, ok in zip(checks, allowed, strict=True) if ok})
        facts = self.store.lookup(list(body.subjects), attributes) if attributes else {}
        results = []
        for s in range(len(body.subjects)):
            for i, (check, ok) in enumerate(zip(checks, allowed, strict=True)):
                if not ok:
                    results.append(verification_pb2.Result(subject=s, check=i, outcome=common_pb2.DENIED))
                    continue
                fact = facts.get((s, check.attribute))
                if fact is None:
                    results.append(verification_pb2.Result(subject=s, check=i, outcome=common_pb2.NO_RECORD))
                    continue
                outcome = common_pb2.SATISFIED if check.evaluate(fact.value) else common_pb2.NOT_SATISFIED
                results.append(verification_pb2.Result(subject=s, check=i, outcome=outcome, as_of=fact.as_of))
        query_digest = signing.digest(signed.body)
        answer = verification_pb2.AnswerBody(
            responder=self.province,
            requester=body.requester,
            request_id=body.request_id,
            digest_algorithm="sha256",
            query_digest=query_digest,
            answered_at_ms=int(self.clock() * 1000),
            results=results,
        )
        return Decided(body, query_digest, answer, tuple(c.attribute for c in checks), probes)

    def decide_batch(self, queries: Sequence[tuple[verification_pb2.SignedQuery, Unlocked]],
                     peer_province: str | None) -> list[Decided | Refusal]:
        """`decide` for a batch's queries, as columns; one Decided or Refusal per query, in order.

        Each query is authenticated, validated and consent-checked on its own, as in `decide`; the
        checks are parsed once per distinct checks, the nonces of the queries still standing are
        recorded together (NonceStore `remember_many`, one write), every query of one item
        set is looked up in one store lookup, and the results are packed (node.service.packed) when
        the query accepts it (`accept_packed`; else rows, as 0.2 requesters read). Call inside `batch_scope`.
        """
        return self.answer_batch(self.admit_batch(queries, peer_province))

    def admit_batch(self, queries: Sequence[tuple[verification_pb2.SignedQuery, Unlocked]],
                    peer_province: str | None) -> list[Admitted | Refusal]:
        """`admit` for each query of a batch (checks parsed once per distinct checks), on the event loop's thread."""
        out: list[Admitted | Refusal] = []
        parsed: dict[tuple[tuple[str, int, int], ...], list[Check] | Refusal] = {}
        valid_ids: set[str] = set()
        for signed, lock in queries:
            try:
                body = self.authenticate(signed, peer_province)
                checks, consent_id = self._admit(body, lock, parsed, valid_ids)
            except Refusal as refusal:
                out.append(refusal)
                continue
            out.append(Admitted(signed, body, checks, consent_id))
        return out

    def answer_batch(self, admitted: Sequence[Admitted | Refusal]) -> list[Decided | Refusal]:
        """`answer` for a batch's admitted queries (refusals pass through), as `decide_batch` describes: the
        nonces in one write, one store lookup per item set. Call inside `batch_scope`, on one thread."""
        out: list[Decided | Refusal | None] = [a if isinstance(a, Refusal) else None for a in admitted]
        standing = [(i, a.body, a.checks, a.consent_id) for i, a in enumerate(admitted) if isinstance(a, Admitted)]
        fresh = remember_all(self.replay, [(b.requester, b.nonce, b.issued_at_ms) for _, b, _, _ in standing])
        by_items: dict[tuple[str, ...], list[tuple[int, verification_pb2.QueryBody, list[Check], list[bool], int, str]]] = {}
        for (i, body, checks, consent_id), new in zip(standing, fresh, strict=True):
            if not new:
                out[i] = Refusal(ErrorCode.REPLAYED)
                continue
            allowed = [self.policy.allows(body.purpose, c.attribute) for c in checks]
            probes = 0
            if self.probes is not None:
                try:
                    probes = self.probes.admit(body.requester, consent_id, body.purpose,
                                               [c for c, ok in zip(checks, allowed, strict=True) if ok])
                except Refusal as refusal:
                    out[i] = refusal
                    continue
            attributes = tuple(sorted({c.attribute for c, ok in zip(checks, allowed, strict=True) if ok}))
            by_items.setdefault(attributes, []).append((i, body, checks, allowed, probes, consent_id))
        now_ms = int(self.clock() * 1000)
        for attributes, group in by_items.items():
            tokens = [t for _, body, *_ in group for t in body.subjects]
            facts = self.store.lookup(tokens, attributes) if attributes else {}
            offset = 0
            for i, body, checks, allowed, probes, consent_id in group:
                signed = admitted[i].signed  # type: ignore[union-attr]  # only Admitted reach a group
                n_subjects = len(body.subjects)
                columns = _evaluate(checks, allowed, facts, offset, n_subjects)
                offset += n_subjects
                query_digest = signing.digest(signed.body)
                answer = verification_pb2.AnswerBody(
                    responder=self.province, requester=body.requester, request_id=body.request_id,
                    digest_algorithm="sha256", query_digest=query_digest, answered_at_ms=now_ms)
                if body.accept_packed and columns.fits():
                    answer.packed.CopyFrom(columns.packed())
                else:
                    answer.results.extend(columns.rows(len(checks)))
                out[i] = Decided(body, query_digest, answer, tuple(c.attribute for c in checks), probes, consent_id)
        assert all(o is not None for o in out)
        return out  # type: ignore[return-value]

    @contextlib.contextmanager
    def batch_scope(self) -> Iterator[None]:
        """Group the replay guard's and the probing ledger's writes for a batch into one transaction each."""
        with contextlib.ExitStack() as scopes:
            scope = getattr(self.replay, "transaction", None)
            if scope is not None:
                scopes.enter_context(scope())
            if self.probes is not None:
                scopes.enter_context(self.probes.transaction())
            yield


def remember_all(replay: ReplayGuard, nonces: list[tuple[str, bytes, int]]) -> list[bool]:
    """Record every (requester, nonce, issued_at_ms); True for each seen for the first time (in order)."""
    many = getattr(replay, "remember_many", None)
    if many is not None:
        return list(many(nonces))
    return [replay.remember(*n) for n in nonces]


def _evaluate(checks: list[Check], allowed: list[bool], facts: dict[tuple[int, str], Fact],
              offset: int, n_subjects: int) -> Columns:
    """The results of one query (subjects offset..offset+n_subjects of a lookup), subject-major."""
    columns = Columns()
    add = columns.add
    for s in range(offset, offset + n_subjects):
        for check, ok in zip(checks, allowed, strict=True):
            if not ok:
                add(common_pb2.DENIED)
                continue
            fact = facts.get((s, check.attribute))
            if fact is None:
                add(common_pb2.NO_RECORD)
            else:
                add(common_pb2.SATISFIED if check.evaluate(fact.value) else common_pb2.NOT_SATISFIED, fact.as_of)
    return columns
