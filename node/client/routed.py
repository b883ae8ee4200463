"""Routed verification: discover the holders through the coordinator, then ask them sealed.

The coordinator sees subject tokens (for discovery) and ciphertext; each holder gets its own
query, addressed and sealed to it and locked to the possession keys of the household (so a
province that only claims to hold someone cannot read it), and seals its signed answer back.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.client.coordinator import CoordinatorClient
from node.client.query import Answer, VerifyResult, check_answer, locked_envelope, prepare
from node.coordinator.router import status_name
from node.crypto import sealing, signing
from node.domain.predicate import Check
from node.domain.regions import province_uri
from node.errors import BadInput
from node.member import Member
from node.wire.v1 import coordinator_pb2, verification_pb2


def routed_verify(
    member: Member,
    ids: Sequence[str],
    purpose: str,
    checks: Sequence[str | Check],
    *,
    consent: verification_pb2.SignedConsent | None,
    deadline_s: float | None = None,
    coordinator: CoordinatorClient | None = None,
) -> VerifyResult:
    """Verify a household against every province that holds data on it; never raises for one bad holder.

    Pass a long-lived `coordinator` client to reuse its connection and cached directory across calls.
    """
    if consent is None:
        raise BadInput("a routed verification needs --consent CONSENT_ID")
    m = member
    prepared = prepare(requester=m.province, linkage_key=m.linkage_key, ids=ids, purpose=purpose, checks=checks,
                       catalogue=m.catalogue, policy=m.policy, max_subjects=m.cfg.limits.max_subjects,
                       max_checks=m.cfg.limits.max_checks)
    consent_id = verification_pb2.ConsentBody.FromString(consent.body).consent_id
    request_id = uuid.uuid4().hex
    budget = deadline_s or m.cfg.limits.default_deadline_s
    deadline = time.monotonic() + budget

    def remaining() -> float:
        return max(0.05, deadline - time.monotonic())

    with contextlib.ExitStack() as stack:
        if coordinator is None:
            coordinator = stack.enter_context(CoordinatorClient(m, deadline_s=budget))
        epoch, edts = coordinator.discovery_tokens(prepared.tokens)
        found = coordinator.call("Discover", coordinator_pb2.DiscoverRequest(
            consent_id=consent_id, request_id=request_id, discovery_tokens=edts, epoch=epoch), timeout=remaining())
        routing = {s.province: status_name(s.status) for s in found.statuses}
        if not found.holders:
            return VerifyResult(request_id=request_id, answers=[], routing=routing)
        coordinator.note_directory(found.directory_digest)  # the held directory while it is the current one
        directory = coordinator.directory()
        holders = [h for h in found.holders if h in directory]
        for h in set(found.holders) - set(holders):
            routing[h] = "UNAVAILABLE"
        reply_key = X25519PrivateKey.generate()  # per request: answers stay private even if a long-term key leaks
        reply_public = sealing.public_bytes(reply_key.public_key())
        bodies = {h: prepared.body(audience=h, consent=consent, request_id=request_id, reply_key=reply_public,
                                   reply_suite=sealing.SUITE_NAME) for h in holders}
        raws = {h: b.SerializeToString() for h, b in bodies.items()}
        signatures = m.signer.sign_many([(signing.QUERY, raws[h]) for h in holders])
        query_signatures = dict(zip(holders, signatures, strict=True))
        envelopes = [  # locked to the household's possession keys: only a real holder can read it
            locked_envelope(h, [(prepared, verification_pb2.SignedQuery(body=raws[h], signature=sig).SerializeToString())],
                            request_id=request_id, seal_key=directory[h].seal_public_key)
            for h, sig in zip(holders, signatures, strict=True)
        ]
        reply = coordinator.call("Route", coordinator_pb2.RouteRequest(
            consent_id=consent_id, request_id=request_id, envelopes=envelopes), timeout=remaining())
    answers: list[Answer] = []
    for routed in reply.answers:
        routing[routed.province] = status_name(routed.status)
        if routed.status != coordinator_pb2.ROUTE_OK or routed.province not in bodies:
            continue
        try:
            raw = sealing.open_sealed(routed.answer, kind=sealing.ANSWER, identity=province_uri(m.province),
                                      private_key=reply_key)
            signed = verification_pb2.SignedAnswer.FromString(raw)
        except Exception:  # noqa: BLE001 - a seal that does not open is an invalid answer, not a crash
            answers.append(Answer(routed.province, False, (), None, "sealed answer does not open"))
            continue
        answer = check_answer(signed, bodies[routed.province], raws[routed.province], m.verifier,
                              expect_province=routed.province)
        answers.append(answer.with_query(raws[routed.province], query_signatures[routed.province]))
    answers.sort(key=lambda a: a.province)
    return VerifyResult(request_id=request_id, answers=answers, routing=routing)
