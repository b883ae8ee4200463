"""The signed household decision record: what a requester decided, with the evidence anyone can
check offline (`hedui household verify`): the coordinator's holder set, every holder's signed
masked contribution, the published standard, and the requester's signature over all of it.

Checking a record proves that the totals are the sum of what the holders signed and that the
verdict and allowance follow from the published rules, without revealing any contribution.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.message import DecodeError

from node.coordinator.standards import verify_standards
from node.crypto import masks, signing
from node.crypto.errors import CertificateRejected, SignatureInvalid
from node.crypto.evidence import Evidence, TimedVerifier, at_ms
from node.domain.regions import COORDINATOR_URI
from node.domain.standards import evaluate
from node.errors import HeduiError, Refusal
from node.wire.v1 import common_pb2, coordinator_pb2, household_pb2

RECORD_FORMAT: Final[str] = "hedui-household-decision/v1"
#: 2: the record carries the CRL in force beside its signed body (a record without "version" is 1).
RECORD_VERSION: Final[int] = 2
#: Shown when a record is checked without a CRL of its own.
NO_CRL: Final[str] = "record saved without the revocation list in force: checked against the verifier's only"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not base64 text")
    return base64.b64decode(text, validate=True)


def check_contribution(signed: household_pb2.SignedContribution, verifier: signing.Verifier, *,
                       holder_set: household_pb2.SignedHolderSet, requester: str, province: str,
                       measures: Sequence[str], query_digest: bytes | None = None, round_id: str | None = None,
                       holder_set_digest: bytes | None = None) -> household_pb2.ContributionBody | str:
    """The contribution body when it is `province`'s signed answer to this round; else the problem.
    `round_id` and `holder_set_digest` are `holder_set`'s (computed here when not given)."""
    try:
        verified = verifier.verify(signed.signature, signing.CONTRIBUTION, signed.body)
        body = household_pb2.ContributionBody.FromString(signed.body)
    except (SignatureInvalid, CertificateRejected) as exc:
        return f"contribution signature does not verify: {exc}"
    except DecodeError:
        return "contribution does not parse"
    if round_id is None:
        round_id = household_pb2.HolderSetBody.FromString(holder_set.body).round_id
    if holder_set_digest is None:
        holder_set_digest = hashlib.sha256(holder_set.body).digest()
    if verified.identity.province != body.responder or body.responder != province:
        return "contribution signed by another province than the one asked"
    if body.requester != requester or body.round_id != round_id:
        return "contribution belongs to another round"
    if body.holder_set_digest != holder_set_digest:
        return "contribution is bound to another holder set"
    if query_digest is not None and body.query_digest != query_digest:
        return "contribution answers another query"
    if list(body.measures) != list(measures) or len(body.masked) != len(measures):
        return "contribution does not carry every measure"
    if any(len(v) != masks.WIDTH for v in body.masked):
        return "contribution has a masked value of the wrong width"
    return body


def record_body(*, requester: str, consent_id: str, purpose: str, region: str, period: str, members: int,
                measures: Sequence[str], decision: dict[str, Any], routing: dict[str, str], missing: Sequence[str],
                as_of: tuple[str, str], holder_set: household_pb2.SignedHolderSet | None,
                contributions: Sequence[household_pb2.SignedContribution],
                standard: coordinator_pb2.SignedStandards | None, decided_at_ms: int,
                standard_b64: str | None = None) -> dict[str, Any]:
    """A record's body, to be signed over `canonical(body)` (domain hedui/v1/household-decision).

    `standard_b64` is `standard` already base64-encoded (many records of a batch share one document).
    """
    if standard_b64 is None:
        standard_b64 = _b64(standard.SerializeToString()) if standard is not None else ""
    return {
        "requester": requester, "consent_id": consent_id, "purpose": purpose, "region": region, "period": period,
        "members": members, "measures": list(measures), "decision": decision, "routing": dict(sorted(routing.items())),
        "missing": sorted(missing), "as_of": {"from": as_of[0], "to": as_of[1]},
        "holder_set": _b64(holder_set.SerializeToString()) if holder_set is not None else "",
        "contributions": [_b64(c.SerializeToString()) for c in contributions],
        "standard": standard_b64, "decided_at_ms": decided_at_ms,
    }  # fmt: skip


def signed_record(body: dict[str, Any], signature: common_pb2.Signature, *, crl: bytes = b"") -> dict[str, Any]:
    """The record of `body` under the requester's signature over `canonical(body)`, with the CRL in force
    (`crl`, DER; CA-signed, so it needs no signature of the requester's)."""
    return {"format": RECORD_FORMAT, "version": RECORD_VERSION, "body": body,
            "signature": _b64(signature.SerializeToString()), "crl": _b64(crl)}


def canonical(body: dict[str, Any]) -> bytes:
    """The signed form of a record body: sorted keys, no spaces, UTF-8."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class RecordCheck:
    """The outcome of checking a decision record offline."""

    valid: bool
    problems: tuple[str, ...]
    requester: str = ""
    verdict: str = ""
    decided_at: str = ""
    warnings: tuple[str, ...] = ()


def verify_record(record: Any, verifier: signing.Verifier | Evidence, *,
                  standards: dict[str, Any] | None = None) -> RecordCheck:
    """Check a decision record: every signature, the sum of the masked contributions, and the decision.

    With a signing.Verifier, signatures are checked now; with an Evidence (long-term checking), at
    the record's signed `decided_at_ms`, against the verifier's CRLs and the one the record carries.
    `standards` (any dict, kept by the caller) remembers the standards documents already verified,
    for checking many records that carry the same one.
    """
    try:
        if isinstance(verifier, Evidence):
            return _verify_at_decision(record, verifier, standards)
        return _verify(record, verifier, standards)
    except (KeyError, TypeError, ValueError, DecodeError, HeduiError) as exc:
        reason = str(exc) if isinstance(exc, HeduiError) else f"record is malformed ({type(exc).__name__})"
        return RecordCheck(False, (reason,))


def _verify_at_decision(record: Any, evidence: Evidence, standards: dict[str, Any] | None) -> RecordCheck:
    """verify_record at the record's signed decision time."""
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return RecordCheck(False, (f"not a {RECORD_FORMAT} record",))
    decided_at_ms = record["body"]["decided_at_ms"]
    if not isinstance(decided_at_ms, int) or decided_at_ms <= 0:
        return RecordCheck(False, ("record carries no decision time",))
    crl = _unb64(record["crl"]) if "crl" in record else b""
    try:
        trust = evidence.including(crl)
    except CertificateRejected as exc:
        return RecordCheck(False, (f"the record's revocation list: {exc}",))
    when = at_ms(decided_at_ms)
    checked = _verify(record, trust.verifier(when), standards)
    return dataclasses.replace(checked, decided_at=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                               warnings=() if crl else (NO_CRL,))


#: The keys of a check-batch line that repeat what its record's body says.
_LINE_KEYS: Final[tuple[str, ...]] = ("routing", "missing", "as_of", "consent_id")


def check_line(line: Any, verifier: signing.Verifier | Evidence, *, standards: dict[str, Any] | None = None) -> RecordCheck:
    """Check one line of a `household check-batch` results file: its record, and that what the line
    shows (verdict, totals, rules, routing, ...) is what the record signs."""
    if not isinstance(line, dict) or not isinstance(line.get("household"), str):
        return RecordCheck(False, ("not a line of household check-batch results",))
    if "record" not in line:
        return RecordCheck(False, (f"no decision record: {line.get('error') or 'the household was not decided'}",))
    checked = verify_record(line["record"], verifier, standards=standards)
    if not checked.valid:
        return checked
    body = line["record"]["body"]
    shown = {k: line.get(k) for k in (*body["decision"], *_LINE_KEYS)}
    signed = {**body["decision"], **{k: body[k] for k in _LINE_KEYS}}
    round_id = household_pb2.HolderSetBody.FromString(
        household_pb2.SignedHolderSet.FromString(_unb64(body["holder_set"])).body).round_id if body["holder_set"] else ""
    if shown != signed or line.get("round_id") != round_id:
        return RecordCheck(False, ("the line does not show what its record signs",), checked.requester, checked.verdict)
    return checked


def _verify(record: Any, verifier: signing.Verifier, standards: dict[str, Any] | None) -> RecordCheck:
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return RecordCheck(False, (f"not a {RECORD_FORMAT} record",))
    body = record["body"]
    problems: list[str] = []
    signature = common_pb2.Signature.FromString(_unb64(record["signature"]))
    try:
        signer = verifier.verify(signature, signing.HOUSEHOLD_DECISION, canonical(body)).identity.province
        if signer != body["requester"]:
            problems.append("record signed by another member than its requester")
    except (SignatureInvalid, CertificateRejected) as exc:
        problems.append(f"requester's signature does not verify: {exc}")
    decision, measures = body["decision"], list(body["measures"])
    contributions = [household_pb2.SignedContribution.FromString(_unb64(c)) for c in body["contributions"]]
    totals: dict[str, int] | None = None
    if body["holder_set"]:
        holder_set = household_pb2.SignedHolderSet.FromString(_unb64(body["holder_set"]))
        problems += _check_holder_set(holder_set, body, verifier)
        holders = list(household_pb2.HolderSetBody.FromString(holder_set.body).holders)
        vectors = []
        by_province = {}
        for signed in contributions:
            province = household_pb2.ContributionBody.FromString(signed.body).responder
            checked = check_contribution(signed, verifier, holder_set=holder_set, requester=body["requester"],
                                         province=province, measures=measures)
            if isinstance(checked, str):
                problems.append(f"province {province}: {checked}")
                continue
            by_province[province] = [masks.decode(v) for v in checked.masked]
        if sorted(by_province) != holders:
            problems.append("the contributions are not exactly those of the holder set")
        else:
            vectors = [by_province[p] for p in holders]
            try:
                totals = dict(zip(measures, masks.unmask(vectors, len(measures)), strict=True))
            except masks.MaskError as exc:
                problems.append(str(exc))
    elif contributions:
        problems.append("contributions without a holder set")
    if totals is not None and totals != decision["totals"]:
        problems.append("the totals are not the sum of the holders' signed contributions")
    problems += _check_decision(body, decision, totals, verifier, standards)
    return RecordCheck(not problems, tuple(problems), body["requester"], decision.get("verdict", ""))


def _check_holder_set(holder_set: household_pb2.SignedHolderSet, body: dict[str, Any],
                      verifier: signing.Verifier) -> list[str]:
    try:
        verified = verifier.verify(holder_set.signature, signing.HOLDER_SET, holder_set.body)
    except (SignatureInvalid, CertificateRejected) as exc:
        return [f"holder set does not verify: {exc}"]
    parsed = household_pb2.HolderSetBody.FromString(holder_set.body)
    if verified.identity.identity != COORDINATOR_URI:
        return ["holder set not signed by the coordinator"]
    if parsed.requester != body["requester"] or parsed.consent_id != body["consent_id"]:
        return ["holder set belongs to another requester or consent"]
    if sorted(set(parsed.missing) | set(body["missing"])) != sorted(body["missing"]):
        return ["the record leaves out provinces the holder set names as missing"]
    return []


def _check_decision(body: dict[str, Any], decision: dict[str, Any], totals: dict[str, int] | None,
                    verifier: signing.Verifier, standards: dict[str, Any] | None) -> list[str]:
    """Re-evaluate the published standard on the proven totals; the record must say the same."""
    if not body["standard"]:
        return ["record carries no published standard"]
    document = standards.get(body["standard"]) if standards is not None else None
    if isinstance(verifier, TimedVerifier):  # a document verified for another record's time is checked at this one's
        signed = coordinator_pb2.SignedStandards.FromString(_unb64(body["standard"]))
        try:
            verifier.verify(signed.signature, signing.STANDARDS, signed.body)
        except (SignatureInvalid, CertificateRejected) as exc:
            return [f"published standard does not verify: {exc}"]
    if document is None:
        signed = coordinator_pb2.SignedStandards.FromString(_unb64(body["standard"]))
        try:
            document = verify_standards(signed, verifier)
        except Refusal as exc:
            return [f"published standard does not verify: {exc}"]
        if standards is not None:  # keyed by the exact signed bytes and signature (base64)
            standards[body["standard"]] = document
    standard = document.find(body["region"], body["purpose"], body["period"])
    if standard is None:
        return ["the published standard has no entry for this region, purpose and period"]
    complete = not body["missing"] and totals is not None
    again = evaluate(standard, body["members"], totals if totals is not None else decision["totals"], complete=complete,
                     region=body["region"], period=body["period"]).to_json()
    if totals is None and decision["verdict"] != "INCOMPLETE":
        return ["a decision without proven totals must be INCOMPLETE"]
    if again != decision:
        return ["the decision does not follow from the published standard and the totals"]
    return []
