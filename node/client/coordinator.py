"""A province's synchronous client for its coordinator: consents, directory, discovery, routing."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError

from node import files
from node.client.client import PeerUnreachable, translate
from node.client.query import validate_household
from node.coordinator.consents import CONSENT_REQUEST_DOMAIN
from node.coordinator.directory import Entry
from node.coordinator.directory_cache import VerifiedDirectory
from node.crypto import discovery, signing
from node.crypto.tokens import subject_token
from node.domain import freetext
from node.domain.regions import COORDINATOR_TLS_NAME
from node.errors import BadInput, ErrorCode, Refusal
from node.member import Member
from node.server import coordinator_replicas as replicas
from node.server import failover, tls
from node.service.consent import SALT_BYTES, commitment, parse_receipt
from node.service.consent_request import bound_request
from node.wire.v1 import coordinator_pb2, coordinator_pb2_grpc, verification_pb2

DAY_MS: Final[int] = 24 * 3600 * 1000
#: The largest scanned consent form hashed for a grant (only its SHA-256 is sent).
MAX_EVIDENCE_BYTES: Final[int] = 64 * 1024 * 1024


@dataclass(frozen=True)
class ConsentInfo:
    """A consent as its registering province sees it (no subject appears here)."""

    consent_id: str
    state: str
    purpose: str
    scopes: tuple[str, ...]
    subjects: int
    not_before_ms: int
    not_after_ms: int
    case_reference: str
    evidence_sha256: str
    ledger_index: int
    revoked_at_ms: int
    receipt: verification_pb2.SignedConsent
    #: The id of the request the province signed; "" for a receipt that carries none (holders refuse those).
    request_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "consent_id": self.consent_id, "state": self.state, "purpose": self.purpose, "scopes": list(self.scopes),
            "subjects": self.subjects, "not_before_ms": self.not_before_ms, "not_after_ms": self.not_after_ms,
            "case_reference": self.case_reference, "evidence_sha256": self.evidence_sha256,
            "ledger_index": self.ledger_index, "revoked_at_ms": self.revoked_at_ms or None,
            "request_id": self.request_id, "requester_signed": bool(self.request_id),
        }


class CoordinatorClient:
    """Calls the coordinator over mutual TLS as the configured province, failing over between its replicas
    (`[member] coordinator` lists them; node.server.coordinator_replicas holds the rule)."""

    def __init__(self, member: Member, *, deadline_s: float | None = None) -> None:
        if not member.cfg.coordinator:
            raise BadInput("this node has no coordinator configured (hedui node init --coordinator HOST:PORT)")
        self.member = member
        self.deadline_s = deadline_s or member.cfg.limits.default_deadline_s
        self.endpoints = member.cfg.coordinator_endpoints
        self._order = replicas.shared_order(self.endpoints)  # a client made after another starts where it ended
        # The coordinator's certificate must carry its federation name (checked in every handshake).
        options = tls.channel_options(member.cfg.limits, server_name=COORDINATOR_TLS_NAME)
        if len(self.endpoints) > 1:
            options = [*options, *failover.RECONNECT_OPTIONS]
        credentials = tls.channel_credentials(member.cfg)
        self._channels = [grpc.secure_channel(e, credentials, options=options) for e in self.endpoints]
        self._channel = self._channels[0]
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)
        self._stubs: dict[Callable[[grpc.Channel], Any], list[Any]] = {
            coordinator_pb2_grpc.CoordinatorStub: [self.stub, *map(coordinator_pb2_grpc.CoordinatorStub, self._channels[1:])]}
        self._watched: set[int] = set()  # channels whose connectivity was watched (closed once unwatched)
        self._verified = VerifiedDirectory(member.verifier)  # a directory verified once per change
        self._directory: tuple[float, coordinator_pb2.SignedDirectory, dict[str, Entry]] | None = None
        self._noted = b""  # the directory digest the coordinator last named

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        for index, channel in enumerate(self._channels):
            if index in self._watched:
                failover.close_when_unwatched(channel)
            else:
                channel.close()

    def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        """`method` of the Coordinator service at the replicas (HeduiError on failure)."""
        return self.call_service(coordinator_pb2_grpc.CoordinatorStub, method, request, timeout=timeout)

    def call_service(self, make_stub: Callable[[grpc.Channel], Any], method: str, request: Any, *,
                     timeout: float | None = None) -> Any:
        """`method` of another service the coordinator serves (`make_stub`, e.g. the household rounds)."""
        walk = replicas.Walk(self._order, method, timeout or self.deadline_s)
        try:
            return self._walk(walk, make_stub, method, request)
        except grpc.RpcError as exc:
            raise unanswered(exc, walk) from None

    def service(self, make_stub: Callable[[grpc.Channel], Any]) -> Any:
        """A stub-like object for another service whose calls fail over as `call` does."""
        return _Service(self, make_stub)

    def _walk(self, walk: replicas.Walk, make_stub: Callable[[grpc.Channel], Any], method: str, request: Any) -> Any:
        stubs = self._stubs.setdefault(make_stub, [make_stub(c) for c in self._channels])
        # One replica: a coordinator that is restarting is waited for within the deadline (nothing is sent
        # before it is up). Several: a replica not connected within its share is passed over instead.
        wait = len(self._channels) == 1

        def connect(index: int, seconds: float) -> bool:
            self._watched.add(index)
            return failover.connected_blocking(self._channels[index], seconds)

        def invoke(index: int, seconds: float) -> Any:
            return getattr(stubs[index], method)(request, timeout=seconds, wait_for_ready=wait)

        return replicas.call_blocking(walk, connect, invoke)

    def grant(self, ids: Sequence[str], purpose: str, *, scopes: Sequence[str] = (), days: int = 30,
              evidence: Path | None = None, case_reference: str = "") -> ConsentInfo:
        """Register an applicant household's consent; ID numbers become salted token commitments."""
        m = self.member
        numbers = validate_household(ids, m.cfg.limits.max_subjects)
        m.policy.purpose(purpose)
        for scope in scopes:
            if scope not in m.catalogue.categories:
                raise BadInput(f"unknown scope category {scope!r}; known: {', '.join(m.catalogue.categories)}")
        if not 1 <= days <= 366:
            raise BadInput("--days must be 1 to 366")
        case_reference = freetext.case_reference(case_reference)  # stored in the ledger, sent in every query
        digest = b""
        if evidence is not None:
            digest = files.sha256_of(evidence, max_bytes=MAX_EVIDENCE_BYTES, what="evidence file")
        salt = os.urandom(SALT_BYTES)
        now_ms = int(time.time() * 1000)
        tokens = [subject_token(m.linkage_key, n) for n in numbers]
        not_before_ms, not_after_ms = now_ms - 60_000, now_ms + days * DAY_MS
        body = coordinator_pb2.ConsentRequestBody(
            requester=m.province, request_id=uuid.uuid4().hex, nonce=os.urandom(16), issued_at_ms=now_ms,
            purpose=purpose, subject_salt=salt,
            subject_commitments=[commitment(salt, t) for t in tokens],
            scopes=list(scopes), not_before_ms=not_before_ms, not_after_ms=not_after_ms,
            case_reference=case_reference, evidence_algorithm="sha256" if digest else "", evidence_digest=digest,
            **self.discovery_commitments(salt, tokens, not_before_ms, not_after_ms),
        ).SerializeToString()
        request = coordinator_pb2.RegisterConsentRequest(body=body, signature=m.signer.sign(CONSENT_REQUEST_DOMAIN, body))
        info = self._info(self.call("RegisterConsent", request))
        require_own_request(info.receipt, body, self.member.verifier)
        return info

    def discovery_epoch_s(self) -> int:
        """The coordinator's discovery epoch length, from its signed directory."""
        epoch_s = self._fetch_directory(30.0)[2].discovery_epoch_s
        if epoch_s < 1:
            raise BadInput("the coordinator publishes no discovery epoch (it predates locator discovery)")
        return epoch_s

    def discovery_commitments(self, salt: bytes, tokens: Sequence[bytes], not_before_ms: int,
                              not_after_ms: int) -> dict[str, Any]:
        """A consent request's discovery fields: commitments to its members' discovery tokens for the
        epochs it covers, and the first of those epochs."""
        epochs = discovery.consent_epochs(not_before_ms, not_after_ms, self.discovery_epoch_s())
        return {"discovery_commitments": discovery.consent_commitments(salt, tokens, epochs),
                "discovery_first_epoch": epochs.start}

    def discovery_tokens(self, tokens: Sequence[bytes]) -> tuple[int, list[bytes]]:
        """The current discovery epoch and the subjects' discovery tokens in it (no token leaves)."""
        epoch = discovery.current_epoch(self.discovery_epoch_s())
        return epoch, [discovery.discovery_token(t, epoch) for t in tokens]

    def revoke(self, consent_id: str, reason: str = "applicant_withdrew") -> ConsentInfo:
        return self._info(self.call("RevokeConsent", coordinator_pb2.RevokeConsentRequest(consent_id=consent_id, reason=reason)))

    def show(self, consent_id: str) -> ConsentInfo:
        return self._info(self.call("GetConsent", coordinator_pb2.GetConsentRequest(consent_id=consent_id)))

    def directory(self, *, max_age_s: float = 30.0) -> dict[str, Entry]:
        """The verified federation directory: fetched again when the coordinator named another one
        (`note_directory`), or, when it named none, when older than `max_age_s`; verified again only
        when it changed (node.coordinator.directory_cache)."""
        return self._fetch_directory(max_age_s)[2]

    def note_directory(self, digest: bytes) -> None:
        """The coordinator's current directory digest, as a Discover reply names it: the held
        directory is kept however old while the digest is its own, and fetched again as soon as not.
        An empty digest (a coordinator that names none) leaves the age rule."""
        self._noted = digest

    def signed_directory(self, *, max_age_s: float = 30.0) -> coordinator_pb2.SignedDirectory:
        """The signed directory as the coordinator sent it (standards documents in their signed
        form, for decision records), from the same fetch as `directory`."""
        return self._fetch_directory(max_age_s)[1]

    def _fetch_directory(self, max_age_s: float) -> tuple[float, coordinator_pb2.SignedDirectory, dict[str, Entry]]:
        cached = self._directory
        if cached is not None and self._noted:
            stale = self._noted != self._verified.digest
        else:
            stale = cached is None or time.monotonic() - cached[0] > max_age_s
        if stale:
            signed = self.call("Directory", coordinator_pb2.DirectoryRequest())
            cached = self._directory = (time.monotonic(), signed, self._verified.get(signed))
        elif cached is not None:
            verified = self._verified.current()  # None only before the first verification; {} is a verdict
            if verified is not None and verified is not cached[2]:
                cached = self._directory = (cached[0], cached[1], verified)  # a certificate in it changed its verdict
        assert cached is not None
        return cached

    def _info(self, status: coordinator_pb2.ConsentStatus) -> ConsentInfo:
        body = parse_receipt(status.receipt, self.member.verifier)
        try:  # this province's own request, shown as it is (holders verify it): old consents stay listable
            request_id = coordinator_pb2.ConsentRequestBody.FromString(body.request).request_id if body.request else ""
        except DecodeError:
            request_id = ""
        return ConsentInfo(
            consent_id=body.consent_id, state=coordinator_pb2.ConsentState.Name(status.state), purpose=body.purpose,
            scopes=tuple(body.scopes), subjects=len(body.subject_commitments), not_before_ms=body.not_before_ms,
            not_after_ms=body.not_after_ms, case_reference=body.case_reference,
            evidence_sha256=body.evidence_digest.hex(), ledger_index=status.ledger_index,
            revoked_at_ms=status.revoked_at_ms, receipt=status.receipt, request_id=request_id,
        )


class _Service:
    """Another service's methods as attributes, called through `CoordinatorClient.call_service`."""

    def __init__(self, client: CoordinatorClient, make_stub: Callable[[grpc.Channel], Any]) -> None:
        self._client, self._make_stub = client, make_stub

    def __getattr__(self, method: str) -> Callable[..., Any]:
        def call(request: Any, *, timeout: float | None = None, wait_for_ready: bool | None = None) -> Any:
            return self._client.call_service(self._make_stub, method, request, timeout=timeout)
        return call


def unanswered(exc: grpc.RpcError, walk: replicas.Walk) -> Exception:
    """The walk's failure as a one-line Hedui error; a registration refused as a replay after a replica that
    may have recorded it failed says so (its nonce is spent: a new request is needed), never "refused".

    A resend the ledger holds is answered with its receipt (the registration is confirmed); a replay refusal
    means the nonce was spent without a ledger entry the replica asked could see: the failed replica may have
    died between the two, or may still be committing it."""
    code = exc.code() if hasattr(exc, "code") else None
    if walk.unanswered and code == grpc.StatusCode.ALREADY_EXISTS:
        return PeerUnreachable("UNAVAILABLE", f"coordinator replica {walk.unanswered[0]} failed after {walk.method} was "
                               "sent and another replica has seen its nonce but not its registration: it may still "
                               "be recorded there; send it again as a new request")
    error = translate(exc)
    if len(walk.order.endpoints) > 1 and code in replicas.FAILOVER:
        error = PeerUnreachable(code.name, f"no answer from coordinator replica(s) {', '.join(walk.tried)} "
                                f"({len(walk.order.endpoints)} configured): " + str(error).split(": ", 1)[-1])
    return error


def require_own_request(receipt: verification_pb2.SignedConsent, request: bytes, verifier: signing.Verifier) -> None:
    """Refuse a fresh receipt that does not carry, unmodified and matching, the request this province just signed."""
    body = parse_receipt(receipt, verifier)
    if body.request != request:
        raise Refusal(ErrorCode.CONSENT_INVALID, "the coordinator's receipt does not carry the consent request this node signed")
    bound_request(body, verifier)


def fetch_receipt(member: Member, consent_id: str, *, deadline_s: float | None = None) -> verification_pb2.SignedConsent:
    """The coordinator-signed receipt of one of this province's consents."""
    with CoordinatorClient(member, deadline_s=deadline_s) as coordinator:
        return coordinator.show(consent_id).receipt
