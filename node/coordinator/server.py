"""The coordinator's gRPC server: thin servicer over the consent registry, directory and router."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from grpc import aio

from node import __version__, logs
from node.config import MemberConfig
from node.coordinator.announcement_store import AnnouncementDocument
from node.coordinator.audit_heads import AuditHeadSigner
from node.coordinator.claims import ClaimBook
from node.coordinator.consents import ConsentRegistry, Resent
from node.coordinator.directory import Directory
from node.coordinator.locators import LocatorBook
from node.coordinator.household_servicer import HouseholdRoundsServicer
from node.coordinator.rounds import RoundBook
from node.coordinator.router import Router, per_province_timeout, status_name
from node.coordinator.standards import PUBLISH_DECISION, PublishedStandards
from node.crypto import discovery
from node.crypto.pki import TrustAnchor, province_of_identity
from node.crypto.revocation import CrlFile, CrlRollback
from node.domain import request_ids
from node.errors import ErrorCode, HeduiError, Refusal
from node.member import Member
from node.server.base import RunningServer, start_server
from node.server.admission import Admission
from node.server.edge import edge, peer_certificate_sha256
from node.server import metrics
from node.server.metrics import MemberMetrics
from node.store import audit
from node.store.factory import open_audit_log, open_storage
from node.store.interfaces import Chain
from node.wire.v1 import coordinator_pb2, coordinator_pb2_grpc, household_pb2_grpc, verification_pb2

SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name
MAX_DISCOVERY_TOKENS = 16
MAX_BATCH = 512  # households per batch message
CLAIMS_IMPLAUSIBLE = "claims.implausible"  # audit decision: a province is no longer routed to
LOCATOR_DECISION = "locator"  # audit decision: a province's locator for an epoch is in force
RESENT = {"resent": "confirmed"}  # on a consent.grant record: a resend of a registered request, answered with its receipt
# What nodes need to stay in force (consents, CRL, directory, announce, checkpoints): their own capacity.
FEEDS = frozenset(f"/{SERVICE_NAME}/{m}" for m in ("ConsentUpdates", "Revocations", "Directory", "Announce", "SubmitCheckpoint",
                                                   "PublishLocator", "HeldLocators"))


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    """Identity from mutual TLS; decisions from ConsentRegistry, Directory and Router."""

    def __init__(self, consents: ConsentRegistry, directory: Directory, router: Router, anchor: TrustAnchor,
                 cfg: MemberConfig, log: Any, crl: CrlFile, *, auditor: audit.AsyncAuditor,
                 checkpoints: audit.CheckpointStore,
                 audit_head: Callable[[], Awaitable[coordinator_pb2.SignedAuditHead]] | None = None) -> None:
        self.auditor = auditor
        self.checkpoints = checkpoints
        self.audit_head = audit_head  # the audit chain's signed head for CheckpointAck and ConsentUpdates (nodes witness it)
        self.crl = crl
        self.admission = Admission(anchor, cfg.limits, reserved=FEEDS)
        self.metrics = MemberMetrics(cfg.identity)
        self.consents = consents
        self.directory = directory
        self.router = router
        self.anchor = anchor
        self.cfg = cfg
        self.log = log

    def _province(self, context: aio.ServicerContext) -> str:
        province = province_of_identity(self.admission.admit(context))
        if province is None:
            raise Refusal(ErrorCode.NOT_AUTHORISED, "only provinces call the coordinator")
        return province

    def _timeout(self, context: aio.ServicerContext) -> float:
        return per_province_timeout(context.time_remaining(), self.cfg.limits.default_deadline_s)

    async def RegisterConsent(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "RegisterConsent", self.metrics, self._refusal_hook("RegisterConsent", request, context)):
            province = self._province(context)

            async def register() -> tuple[Any, asyncio.Future[Any]]:
                result = await self.consents.register_async(province, request)
                status = _status(result)
                body = verification_pb2.ConsentBody.FromString(status.receipt.body)
                return status, self.auditor.submit(audit.coordinator_event(
                    audit.CONSENT_GRANT, requester=province, consent_id=body.consent_id, purpose=body.purpose,
                    statuses=RESENT if isinstance(result, Resent) else None))

            # Shielded: a caller cancelled (or out of time) while the thread commits the grant does not
            # stop its audit record from being queued (no ledger entry without its record).
            status, recorded = await asyncio.shield(asyncio.ensure_future(register()))
            await recorded
            self.log.info("consent_registered", requester=province, consent_id=status.receipt and _cid(status),
                          ledger_index=status.ledger_index)
            return status

    async def RevokeConsent(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "RevokeConsent", self.metrics, self._refusal_hook("RevokeConsent", request, context)):
            province = self._province(context)

            async def revoke() -> tuple[Any, asyncio.Future[Any]]:
                recorded: list[asyncio.Future[Any]] = []

                def record() -> None:  # once the revocation is in the ledger (or, if it already was, after the call)
                    recorded.append(self.auditor.submit(audit.coordinator_event(
                        audit.CONSENT_REVOKE, requester=province, consent_id=request.consent_id)))

                status = await self.consents.revoke_async(province, request.consent_id, request.reason or "other",
                                                          on_appended=record)
                if not recorded:
                    record()
                return status, recorded[0]

            # Shielded, as in RegisterConsent: a caller gone while the thread appends does not stop the record.
            status, recorded = await asyncio.shield(asyncio.ensure_future(revoke()))
            await recorded
            self.log.info("consent_revoked", requester=province, consent_id=request.consent_id)
            return status

    async def GetConsent(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "GetConsent", self.metrics):
            return self.consents.status(self._province(context), request.consent_id)

    async def ConsentUpdates(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "ConsentUpdates", self.metrics):
            self._province(context)
            reply = self.consents.updates(request.after_index, request.epoch)
            if self.audit_head is not None:  # a node that lodges no checkpoint still witnesses the audit chain
                reply.audit_head.CopyFrom(await self.audit_head())
            return reply

    async def Announce(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "Announce", self.metrics, self._refusal_hook("Announce", request, context)):
            province = self._province(context)
            refresh = self.directory.holds(request)  # the 30 s re-announcement: not audited again
            entry = self.directory.announce(province, request, presented=peer_certificate_sha256(context))
            if not refresh:
                await self._audit(audit.coordinator_event("announce", requester=province))
            (self.log.debug if refresh else self.log.info)("announced", province=province, endpoint=entry.endpoint)
            return coordinator_pb2.AnnounceResponse()

    async def PublishStandards(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "PublishStandards", self.metrics,
                        self._refusal_hook("PublishStandards", request, context)):
            province = self._province(context)
            if self.directory.standards is None:
                raise Refusal(ErrorCode.UNAVAILABLE, "this coordinator carries no standards")
            doc = self.directory.standards.publish(province, request)
            await self._audit(audit.coordinator_event(PUBLISH_DECISION, requester=province, statuses={
                "version": str(doc.version), "entries": str(len(doc.standards)), "example": str(doc.example).lower()}))
            self.log.info("standards_published", province=province, version=doc.version, entries=len(doc.standards))
            return coordinator_pb2.PublishStandardsResponse(province=province, version=doc.version, entries=len(doc.standards))

    async def Directory(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "Directory", self.metrics):
            self._province(context)
            return self.directory.signed()

    async def Discover(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "Discover", self.metrics, self._refusal_hook("Discover", request, context)):
            province = self._province(context)
            request_ids.check(request.request_id)  # before anything is looked up, forwarded or logged
            self._check_discovery(province, request.consent_id, request.discovery_tokens, request.epoch)
            reply = self.router.discover(province, request)
            statuses = {s.province: status_name(s.status) for s in reply.statuses}
            await self._audit(audit.coordinator_event(
                audit.DISCOVER, requester=province, request_id=request.request_id, consent_id=request.consent_id,
                statuses=statuses))
            self.log.info("discovered", requester=province, consent_id=request.consent_id, request_id=request.request_id,
                          statuses=statuses)
            return reply

    async def Route(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "Route", self.metrics, self._refusal_hook("Route", request, context)):
            province = self._province(context)
            request_ids.check(request.request_id)
            self.consents.check_active(province, request.consent_id)
            if not 1 <= len(request.envelopes) <= 64:
                raise Refusal(ErrorCode.MALFORMED, "1 to 64 envelopes")
            reply = await self.router.route(request, self._timeout(context), province)
            statuses = {a.province: status_name(a.status) for a in reply.answers}
            await self._audit(audit.coordinator_event(
                audit.ROUTE, requester=province, request_id=request.request_id, consent_id=request.consent_id,
                statuses=statuses))
            await self._audit_claim_alerts()
            for holder, status in statuses.items():
                self.metrics.fanout(holder, status)
            self.log.info("routed", requester=province, consent_id=request.consent_id, request_id=request.request_id,
                          statuses=statuses)
            return reply


    async def RegisterConsentBatch(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "RegisterConsentBatch", self.metrics, self._refusal_hook("RegisterConsentBatch", request, context)):
            province = self._province(context)
            if not 1 <= len(request.requests) <= MAX_BATCH:
                raise Refusal(ErrorCode.TOO_MANY, f"1 to {MAX_BATCH} consents per batch")

            async def register() -> tuple[list[Any], asyncio.Future[Any]]:
                results = await self.consents.register_many_async(province, list(request.requests))
                # One submission (one future, one transaction), in request order: not a task per consent on the loop.
                return results, self.auditor.submit_many([
                    audit.coordinator_event(audit.refused(r.code), requester=province, request_id=_consent_request_id(q),
                                            statuses={"call": "RegisterConsentBatch"})
                    if isinstance(r, Refusal) else
                    audit.coordinator_event(audit.CONSENT_GRANT, requester=province, consent_id=_cid(_status(r)),
                                            purpose=verification_pb2.ConsentBody.FromString(_status(r).receipt.body).purpose,
                                            statuses=RESENT if isinstance(r, Resent) else None)
                    for q, r in zip(request.requests, results, strict=True)])

            # Shielded, as in RegisterConsent: the records are queued even when the caller went away meanwhile.
            results, recorded = await asyncio.shield(asyncio.ensure_future(register()))
            await recorded
            items = [coordinator_pb2.ConsentBatchItem(error_code=r.code.name, error=str(r)) if isinstance(r, Refusal)
                     else coordinator_pb2.ConsentBatchItem(status=_status(r)) for r in results]
            self.log.info("consents_registered", requester=province, count=sum(1 for i in items if not i.error_code),
                          resent=sum(1 for r in results if isinstance(r, Resent)),
                          refused=sum(1 for i in items if i.error_code))
            return coordinator_pb2.RegisterConsentBatchResponse(items=items)

    async def DiscoverBatch(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "DiscoverBatch", self.metrics, self._refusal_hook("DiscoverBatch", request, context)):
            province = self._province(context)
            request_ids.check(request.request_id)
            if not 1 <= len(request.households) <= MAX_BATCH:
                raise Refusal(ErrorCode.TOO_MANY, f"1 to {MAX_BATCH} households per batch")
            replies: list[coordinator_pb2.HouseholdHolders] = []
            asked: list[list[bytes] | None] = []
            for household in request.households:
                try:
                    self._check_discovery(province, household.consent_id, household.discovery_tokens, request.epoch)
                except Refusal as refusal:
                    replies.append(coordinator_pb2.HouseholdHolders(error_code=refusal.code.name, error=str(refusal)))
                    asked.append(None)
                    await self._audit(self._event(audit.refused(refusal.code), province, request.request_id,
                                                  household.consent_id, "DiscoverBatch"))
                    continue
                replies.append(coordinator_pb2.HouseholdHolders())
                asked.append(list(household.discovery_tokens))
            holders, statuses = self.router.holders_of(province, asked, request.epoch)
            if statuses:
                await self._audit(audit.coordinator_event(
                    audit.DISCOVER, requester=province, request_id=request.request_id,
                    statuses={s.province: status_name(s.status) for s in statuses}))
            for reply, found in zip(replies, holders, strict=True):
                reply.holders.extend(sorted(found))
            self.log.info("discovered_batch", requester=province, request_id=request.request_id,
                          households=len(replies), statuses={s.province: status_name(s.status) for s in statuses})
            return coordinator_pb2.DiscoverBatchResponse(households=replies, statuses=statuses,
                                                         directory_digest=self.directory.digest())

    async def RouteBatch(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "RouteBatch", self.metrics, self._refusal_hook("RouteBatch", request, context)):
            province = self._province(context)
            request_ids.check(request.request_id)
            if not 1 <= len(request.consent_ids) <= MAX_BATCH or not 1 <= len(request.envelopes) <= 64:
                raise Refusal(ErrorCode.TOO_MANY, f"1 to {MAX_BATCH} consents and 1 to 64 envelopes per batch")
            for consent_id in request.consent_ids:
                self.consents.check_active(province, consent_id)
            reply = await self.router.route(request, self._timeout(context), province, batch=True)
            await self._audit(audit.coordinator_event(
                audit.ROUTE, requester=province, request_id=request.request_id,
                statuses={a.province: status_name(a.status) for a in reply.answers}))
            await self._audit_claim_alerts()
            for answer in reply.answers:
                self.metrics.fanout(answer.province, status_name(answer.status))
            self.log.info("routed_batch", requester=province, request_id=request.request_id,
                          households=len(request.consent_ids),
                          statuses={a.province: status_name(a.status) for a in reply.answers})
            return reply

    async def SubmitCheckpoint(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "SubmitCheckpoint", self.metrics,
                        on_refusal=self._refusal_hook("SubmitCheckpoint", request, context)):
            identity = self.admission.admit(context)
            entry = self.checkpoints.receive(request, identity)
            ack = coordinator_pb2.CheckpointAck(ledger_index=entry.idx)
            if self.audit_head is not None:
                ack.audit_head.CopyFrom(await self.audit_head())
            return ack

    async def LatestCheckpoint(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "LatestCheckpoint", self.metrics):
            signed = self.checkpoints.latest_signed(self.admission.admit(context))
            return signed.message if signed is not None else coordinator_pb2.AuditCheckpoint()

    async def _audit(self, record: audit.AuditRecord) -> None:
        await self.auditor.record(record)

    async def _audit_claim_alerts(self) -> None:
        """Record every province the router stopped routing to since the last call (contradicted claims)."""
        if self.router.claims is None:
            return
        for alert in self.router.claims.drain_alerts():
            await self._audit(audit.coordinator_event(CLAIMS_IMPLAUSIBLE, requester=alert.requester, statuses={
                "holder": alert.holder, "scope": alert.scope, "judged": str(alert.judged),
                "contradicted": str(alert.contradicted), "expected_false_positives": f"{alert.expected:.6f}"}))

    @staticmethod
    def _event(decision: str, requester: str, request_id: str, consent_id: str, call: str) -> audit.AuditRecord:
        try:
            return audit.coordinator_event(decision, requester=requester, request_id=request_id,
                                           consent_id=consent_id, statuses={"call": call})
        except ValueError:  # a peer-supplied field the audit log will not store
            return audit.coordinator_event(decision, requester=requester, statuses={"call": call})

    def _refusal_hook(self, method: str, request: Any, context: aio.ServicerContext) -> Any:
        async def record(refusal: Refusal) -> None:
            try:
                requester = province_of_identity(self.admission.anchor.validate_tls_peer_cert(
                    context.auth_context()["x509_pem_cert"][0])) or ""
            except (HeduiError, KeyError, IndexError):
                requester = ""
            request_id = (_consent_request_id(request) if isinstance(request, coordinator_pb2.RegisterConsentRequest)
                          else getattr(request, "request_id", ""))
            await self._audit(self._event(audit.refused(refusal.code), requester, request_id,
                                          getattr(request, "consent_id", ""), method))
        return record

    def _check_discovery(self, province: str, consent_id: str, edts: Any, epoch: int) -> None:
        """Discovery only for the household the applicant consented for: every discovery token must
        be one the consent committed to for the request's epoch (its block of one commitment per
        member; node.crypto.discovery), no probing of others, no tokens of another epoch."""
        consent = self.consents.check_active(province, consent_id)
        if not 1 <= len(edts) <= MAX_DISCOVERY_TOKENS or any(len(t) != discovery.EDT_BYTES for t in edts):
            raise Refusal(ErrorCode.MALFORMED, f"1 to {MAX_DISCOVERY_TOKENS} discovery tokens of 32 bytes")
        n, block = len(consent.subject_commitments), epoch - consent.discovery_first_epoch
        if consent.discovery_first_epoch < 1 or not 0 <= block < len(consent.discovery_commitments) // max(n, 1):
            raise Refusal(ErrorCode.CONSENT_INVALID, "consent does not cover this discovery epoch")
        covered = set(consent.discovery_commitments[block * n:(block + 1) * n])
        if any(discovery.commitment(consent.subject_salt, t) not in covered for t in edts):
            raise Refusal(ErrorCode.CONSENT_INVALID, "consent does not cover every subject in this discovery epoch")

    async def PublishLocator(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "PublishLocator", self.metrics, self._refusal_hook("PublishLocator", request, context)):
            province = self._province(context)
            if self.router.locators is None:
                raise Refusal(ErrorCode.UNAVAILABLE, "this coordinator holds no locators")
            complete = self.router.locators.publish(province, request)
            if complete:
                body = coordinator_pb2.LocatorBody.FromString(request.body)
                await self._audit(audit.coordinator_event(LOCATOR_DECISION, requester=province, statuses={
                    "epoch": str(body.epoch), "subjects": str(body.subject_count), "shards": str(1 << body.shard_bits)}))
                self.log.info("locator_published", province=province, epoch=body.epoch, subjects=body.subject_count)
            return coordinator_pb2.PublishLocatorResponse(complete=complete)

    async def HeldLocators(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "HeldLocators", self.metrics):
            province = self._province(context)
            book = self.router.locators
            held = [] if book is None else [(e, h) for e in book.epochs() if (h := book.held(province, e)) is not None]
            return coordinator_pb2.HeldLocatorsResponse(locators=[
                coordinator_pb2.HeldLocator(epoch=e, generation=h.generation) for e, h in held])

    async def Revocations(self, request: Any, context: aio.ServicerContext) -> Any:
        async with edge(context, self.log, "Revocations", self.metrics):
            self.admission.admit(context)
            self.crl.refresh()
            if not self.crl.der or request.known_sha256 == self.crl.digest:
                return coordinator_pb2.RevocationList(sha256=self.crl.digest)
            return coordinator_pb2.RevocationList(crl_der=self.crl.der, sha256=self.crl.digest)


def _consent_request_id(request: coordinator_pb2.RegisterConsentRequest) -> str:
    """The request id a (not yet verified) consent request claims, for its audit record (shown only if valid)."""
    try:
        return request_ids.shown(coordinator_pb2.ConsentRequestBody.FromString(request.body).request_id)
    except Exception:  # noqa: BLE001 - undecodable body: no request id to record
        return ""


def _status(result: coordinator_pb2.ConsentStatus | Resent) -> coordinator_pb2.ConsentStatus:
    """A registration's status, whether just registered or confirmed as resent."""
    return result.status if isinstance(result, Resent) else result


def _cid(status: coordinator_pb2.ConsentStatus) -> str:
    from node.wire.v1 import verification_pb2

    return verification_pb2.ConsentBody.FromString(status.receipt.body).consent_id


@dataclass
class CoordinatorServer:
    """The running coordinator. `await start()` returns the bound port."""

    cfg: MemberConfig
    running: RunningServer | None = None
    port: int = 0
    servicer: Any = None
    reuse_port: bool = False
    metrics_port: int | None = None
    crl: CrlFile | None = None
    audit_log: audit.AuditLog | None = None
    auditor: audit.AsyncAuditor | None = None
    _closing: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    _grace: float = 5.0
    chain: Chain | None = None
    router: Router | None = None

    async def start(self, listen: str | None = None) -> int:
        """Start serving; return the bound port. A start that fails closes what it had opened."""
        try:
            return await self._start(listen)
        except BaseException:
            await self._closing.aclose()
            raise

    async def _start(self, listen: str | None) -> int:
        cfg = self.cfg
        log = logs.get("coordinator")
        if cfg.metrics_listen:
            metrics.listen_address(cfg)  # a refused metrics address stops the start before anything opens
        member = Member(cfg)
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        close = self._closing = contextlib.AsyncExitStack()  # stop() undoes start(), last step first
        storage = open_storage(cfg)
        close.callback(storage.close)
        self.chain = storage.ledger()  # refuses a ledger that lost committed entries
        close.callback(self.chain.close)
        nonces = storage.nonces(window_ms=cfg.limits.clock_skew_s * 1000)
        close.callback(nonces.close)
        consents = ConsentRegistry(
            self.chain, signer=member.signer, verifier=member.verifier, catalogue=member.catalogue,
            policy=member.policy, clock_skew_s=cfg.limits.clock_skew_s,
        )
        # announcements, standards and locators live in the storage, shared by every replica (any host)
        standards = PublishedStandards(storage.document("standards.json"), member.verifier,
                                       catalogue=member.catalogue, policy=member.policy)
        directory = Directory(AnnouncementDocument(storage.document("directory.json")), signer=member.signer,
                              verifier=member.verifier, standards=standards, discovery_epoch_s=cfg.discovery.epoch_s)
        locators = LocatorBook(storage.locators(), member.verifier, cfg.discovery)
        close.callback(locators.close)
        self.router = Router(cfg, directory, ClaimBook(cfg.claims, log, MemberMetrics(cfg.identity)), locators)
        close.push_async_callback(self.router.close)
        self.crl = member.crl  # the newest CRL accepted; an older crl.pem put back is refused
        self.audit_log = open_audit_log(storage, cfg)
        close.callback(self.audit_log.close)
        if storage.restored_guards():  # someone dropped or changed them: names only
            log.warning("store_guards_restored", guards=list(storage.restored_guards()))
        self.auditor = audit.AsyncAuditor(self.audit_log)
        close.push_async_callback(self.auditor.aclose)
        checkpoints = audit.CheckpointStore(self.chain, member.verifier, clock_skew_s=cfg.limits.clock_skew_s)
        servicer = CoordinatorServicer(consents, directory, self.router, member.anchor, cfg, log, self.crl,
                                       auditor=self.auditor, checkpoints=checkpoints,
                                       audit_head=AuditHeadSigner(self.audit_log, member.signer).signed)
        self.servicer = servicer
        rounds = HouseholdRoundsServicer(servicer, RoundBook(signer=member.signer, verifier=member.verifier, replay=nonces,
                                                             clock_skew_s=cfg.limits.clock_skew_s))

        def register(server: Any) -> None:
            coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
            household_pb2_grpc.add_HouseholdRoundsServicer_to_server(rounds, server)

        self.running = await start_server(cfg, listen, SERVICE_NAME, reuse_port=self.reuse_port,
                                          admission=servicer.admission, log=log, metrics=servicer.metrics,
                                          register=register)
        running = self.running
        close.push_async_callback(lambda: running.stop(self._grace))
        self.port = self.running.port
        if cfg.metrics_listen:
            metrics_server, self.metrics_port = metrics.serve(cfg)
            close.callback(metrics_server.shutdown)
        crl_task = asyncio.create_task(self._watch_crl(log))
        close.callback(crl_task.cancel)
        log.info("serving", version=__version__, port=self.port, ledger_entries=self.chain.head()[0])
        return self.port

    async def _watch_crl(self, log: Any) -> None:
        """Apply a newly published CRL within a second, to the coordinator's own peer checks too."""
        while True:
            await asyncio.sleep(1.0)  # polling period of the CRL file
            try:
                if self.crl.refresh():
                    log.info("revocations_applied", revoked=len(self.crl.anchor.revoked_serials))
            except CrlRollback as exc:
                log.error("revocation_list_rolled_back", reason=str(exc))
            except HeduiError as exc:
                log.error("revocation_list_rejected", reason=str(exc))

    async def stop(self, grace: float = 5.0) -> None:
        """Undo start(): CRL watch, metrics, then the server (in-flight calls get `grace` seconds),
        then the audit log, router channels and ledger."""
        self._grace = grace
        await self._closing.aclose()
