"""Building signed queries and checking signed answers: the requester's side of the protocol."""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from google.protobuf.message import DecodeError

from node.crypto import possession, sealing, signing
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.crypto.tokens import possession_key, subject_token
from node.domain import idnumber
from node.domain.catalogue import Catalogue
from node.domain.policy import Policy, UnknownPurpose
from node.domain.predicate import Check, Comparator, parse_check, require_one_per_item
from node.domain.regions import province_uri
from node.errors import BadInput
from node.service import packed
from node.wire.v1 import common_pb2, coordinator_pb2, verification_pb2

_WIRE_OPS = {
    Comparator.LT: common_pb2.LT,
    Comparator.LE: common_pb2.LE,
    Comparator.EQ: common_pb2.EQ,
    Comparator.NE: common_pb2.NE,
    Comparator.GE: common_pb2.GE,
    Comparator.GT: common_pb2.GT,
}


@dataclass(frozen=True)
class ResultRow:
    """The outcome of one check for one subject (an index into the caller's list of IDs)."""

    subject: int
    check: str
    outcome: str
    as_of: str | None


@dataclass(frozen=True)
class Answer:
    """One holder's signed answer, checked."""

    province: str
    signature_valid: bool
    results: tuple[ResultRow, ...]
    signed: verification_pb2.SignedAnswer | None = None
    problem: str | None = None
    query_body: bytes = b""
    query_signature: common_pb2.Signature | None = None
    #: The parsed answer body (None when it did not parse).
    body: verification_pb2.AnswerBody | None = None

    def with_query(self, query_body: bytes, signature: common_pb2.Signature | None = None) -> Answer:
        """The same answer, keeping the serialized query it answers and the requester's signature
        over it (for saving as evidence that also proves who asked)."""
        return dataclasses.replace(self, query_body=query_body, query_signature=signature)


@dataclass
class VerifyResult:
    """Everything one verification produced: answers by holder, and routing status if routed."""

    request_id: str
    answers: list[Answer] = field(default_factory=list)
    routing: dict[str, str] | None = None
    query_body: bytes = b""

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "request_id": self.request_id,
            "answers": [
                {
                    "province": a.province,
                    "signature_valid": a.signature_valid,
                    "results": [
                        {"subject": r.subject, "check": r.check, "outcome": r.outcome, "as_of": r.as_of}
                        for r in a.results
                    ],
                }
                for a in self.answers
            ],
        }
        if self.routing is not None:
            out["routing"] = dict(self.routing)
        return out


@dataclass(frozen=True)
class PreparedQuery:
    """A validated query ready to sign: tokens instead of ID numbers, typed checks.

    `possession` holds the subjects' possession keys (same order as `tokens`), with which a
    sealed query is locked to its real holders (node.crypto.possession); never sent.
    """

    requester: str
    purpose: str
    tokens: tuple[bytes, ...]
    checks: tuple[Check, ...]
    possession: tuple[bytes, ...] = ()

    def body(self, *, audience: str = "", consent: verification_pb2.SignedConsent | None = None,
             request_id: str | None = None, reply_key: bytes = b"", reply_suite: str = "",
             accept_packed: bool = False) -> verification_pb2.QueryBody:
        return verification_pb2.QueryBody(
            requester=self.requester,
            request_id=request_id or uuid.uuid4().hex,
            nonce=os.urandom(16),
            issued_at_ms=int(time.time() * 1000),
            purpose=self.purpose,
            subjects=list(self.tokens),
            checks=[common_pb2.Check(attribute=c.attribute, op=_WIRE_OPS[c.op], operand=c.operand) for c in self.checks],
            consent=consent,
            audience=audience,
            reply_seal_suite=reply_suite,
            reply_seal_key=reply_key,
            accept_packed=accept_packed,
        )


def validate_household(ids: Sequence[str], max_subjects: int = 16) -> list[str]:
    """Normalised, distinct ID numbers of 1 to `max_subjects` household members, or BadInput naming the first fault."""
    if not 1 <= len(ids) <= max_subjects:
        raise BadInput(f"a household has 1 to {max_subjects} ID numbers")
    numbers = []
    for position, raw in enumerate(ids, start=1):
        try:
            numbers.append(idnumber.validate(raw))
        except idnumber.InvalidIdNumber as exc:
            raise idnumber.InvalidIdNumber(f"ID number #{position}: {exc}") from None
    if len(set(numbers)) != len(numbers):
        raise BadInput("the same ID number is given twice")
    return numbers


def prepare(
    *,
    requester: str,
    linkage_key: bytes,
    ids: Sequence[str],
    purpose: str,
    checks: Sequence[str | Check],
    catalogue: Catalogue,
    policy: Policy,
    max_subjects: int = 16,
    max_checks: int = 32,
) -> PreparedQuery:
    """Validate user input before anything leaves the machine; raise BadInput on the first fault."""
    if not 1 <= len(checks) <= max_checks:
        raise BadInput(f"a query has 1 to {max_checks} checks")
    numbers = validate_household(ids, max_subjects)
    if purpose not in policy.purposes:
        raise UnknownPurpose(f"unknown purpose {purpose!r}; known: {', '.join(sorted(policy.purposes))}")
    typed = [c if isinstance(c, Check) else parse_check(c) for c in checks]
    for c in typed:
        catalogue.get(c.attribute)
    require_one_per_item(typed)
    return PreparedQuery(requester, purpose, tuple(subject_token(linkage_key, n) for n in numbers), tuple(typed),
                         tuple(possession_key(linkage_key, n) for n in numbers))


def locked_envelope(holder: str, queries: Sequence[tuple[PreparedQuery, bytes]], *, request_id: str,
                    seal_key: bytes, batch: bool = False) -> coordinator_pb2.Envelope:
    """The envelope for `holder`: each (prepared query, serialized SignedQuery) locked to the
    subjects' possession keys, then sealed (HPKE) to the holder's sealing key; with one
    possession commitment per query for the coordinator. One query for Route, or a
    LockedBatch (`batch`) for RouteBatch.
    """
    recipient = province_uri(holder)
    if not batch and len(queries) != 1:
        raise ValueError("a single envelope carries exactly one query")
    message = verification_pb2.LockedBatch() if batch else verification_pb2.LockedQuery()
    commitments = []
    for prepared, raw in queries:  # each query locked in place: no LockedQuery copied into the batch
        into = message.queries.add() if batch else message
        _, commitment = possession.lock(raw, tokens=prepared.tokens, keys=prepared.possession,
                                        recipient=recipient, request_id=request_id, into=into)
        commitments.append(commitment)
    sealed = sealing.seal(message.SerializeToString(), kind=sealing.QUERY, recipient=recipient, public_key=seal_key)
    return coordinator_pb2.Envelope(province=holder, query=sealed, possession_commitments=commitments)


def sign_query(signer: signing.Signer, body: verification_pb2.QueryBody) -> verification_pb2.SignedQuery:
    """Serialize and sign a query body."""
    raw = body.SerializeToString()
    return verification_pb2.SignedQuery(body=raw, signature=signer.sign(signing.QUERY, raw))


def check_answer(
    signed: verification_pb2.SignedAnswer,
    query: verification_pb2.QueryBody,
    query_bytes: bytes,
    verifier: signing.Verifier,
    *,
    expect_province: str | None = None,
    rows: bool = True,
) -> Answer:
    """Verify a holder's answer: signature, binding to our query, and shape of the results (rows or
    columns, node.service.packed). With `rows=False` the answer keeps its parsed body (`body`) and
    builds no `ResultRow` (a batch reads the columns itself: `result_dicts`)."""
    body = verification_pb2.AnswerBody()
    try:
        body.ParseFromString(signed.body)
    except DecodeError:
        return Answer(expect_province or "?", False, (), signed, "answer body does not parse")
    province = body.responder or expect_province or "?"
    problem = None
    try:
        verified = verifier.verify(signed.signature, signing.ANSWER, signed.body)
        if verified.identity.province != body.responder:
            problem = "answer signed by another member than its responder"
        elif expect_province is not None and body.responder != expect_province:
            problem = "answer comes from another province than asked"
        elif body.query_digest != signing.digest(query_bytes) or body.request_id != query.request_id:
            problem = "answer is bound to another query"
        else:
            problem = packed.problem(body, len(query.subjects) * len(query.checks))
    except (SignatureInvalid, CertificateRejected) as exc:
        problem = str(exc)
    if not rows:
        return Answer(province, problem is None, (), signed, problem, body=body)
    checks = check_names(query)
    result_rows = tuple(
        ResultRow(
            subject=subject,
            check=checks[check] if check < len(checks) else "?",
            outcome=_NAMES.get(outcome, "?"),
            as_of=as_of or None,
        )
        for subject, check, outcome, as_of in packed.results(body, len(checks))
    )
    return Answer(province, problem is None, result_rows, signed, problem, body=body)


def check_names(query: verification_pb2.QueryBody) -> list[str]:
    """The checks of a query as shown in results, e.g. "income.wage_monthly<=300000"."""
    return [f"{c.attribute}{_SYMBOL.get(c.op, '?')}{c.operand}" for c in query.checks]  # a saved query is outside bytes


def result_dicts(answer: Answer, checks: Sequence[str], memo: dict[tuple[int, int, int, str], dict[str, object]],
                 ) -> list[dict[str, object]]:
    """The JSON-ready results of a checked answer (as `VerifyResult.to_json` writes them), read from its
    columns. Equal results share one read-only dict from `memo` (one per distinct subject, check,
    outcome and date across the caller's answers), so a batch builds no object per result."""
    body = answer.body
    if body is None:
        return [{"subject": r.subject, "check": r.check, "outcome": r.outcome, "as_of": r.as_of} for r in answer.results]
    out = []
    for key in packed.results(body, len(checks)):
        row = memo.get(key)
        if row is None:
            subject, check, outcome, as_of = key
            row = memo[key] = {"subject": subject, "check": checks[check] if check < len(checks) else "?",
                               "outcome": _NAMES.get(outcome, "?"), "as_of": as_of or None}
        out.append(row)
    return out


#: Outcome value -> name; another value (a newer or a broken holder) makes the answer invalid, not a crash.
_NAMES: Final[dict[int, str]] = {v: common_pb2.Outcome.Name(v) for v in common_pb2.Outcome.values()}
_SYMBOL = {common_pb2.LT: "<", common_pb2.LE: "<=", common_pb2.EQ: "==", common_pb2.NE: "!=", common_pb2.GE: ">=", common_pb2.GT: ">"}
