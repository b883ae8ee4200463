"""A province node: assembles store, keys and services into a running gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


from node import __version__, logs
from node.config import MemberConfig
from node.crypto import masks, pki, signing
from node.domain.regions import COORDINATOR_URI
from node.errors import HeduiError
from node.server.admission import Admission
from node.server.household_servicer import HouseholdHolderServicer
from node.server.base import RunningServer, start_server
from node.server import metrics
from node.server.metrics import MemberMetrics
from node.inflight import InFlight
from node.member import Member
from node.server.coordinator_link import CoordinatorLink
from node.server.store_threads import StoreThreads
from node.server.verification_servicer import VerificationServicer
from node.service.consent import ReceiptGate, RevocationView
from node.service.possession import Unlocker
from node.service.household import HouseholdService
from node.service.probing import ProbeLimit, PublishedValues
from node.service.verification import VerificationService
from node.store import audit
from node.store.probes import ledger_key
from node.store.errors import StoreError
from node.store.factory import open_audit_log, open_storage
from node.store.interfaces import FactStore, NonceStore, ProbeBudgets
from node.wire.v1 import household_pb2_grpc, verification_pb2, verification_pb2_grpc

SERVICE_NAME = verification_pb2.DESCRIPTOR.services_by_name["Verification"].full_name


@dataclass
class NodeServer:
    """One running province node. `await start()` returns the bound port."""

    cfg: MemberConfig
    running: RunningServer | None = None
    port: int = 0
    servicer: Any = None
    reuse_port: bool = False
    metrics_port: int | None = None
    batch_signer: signing.AsyncBatchSigner | None = None
    _nonces: NonceStore | None = None
    _closing: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    _grace: float = 5.0
    _member: Any = None
    _log: Any = None
    _keys_seen: tuple[int, ...] = ()
    audit_log: audit.AuditLog | None = None
    auditor: audit.AsyncAuditor | None = None
    store: FactStore | None = None
    probes: ProbeBudgets | None = None
    link: CoordinatorLink | None = None
    revocations: RevocationView = field(default_factory=RevocationView)

    async def start(self, listen: str | None = None) -> int:
        """Start serving; return the bound port. A start that fails closes what it had opened."""
        try:
            return await self._start(listen)
        except BaseException:
            await self._closing.aclose()
            raise

    async def _start(self, listen: str | None) -> int:
        cfg = self.cfg
        assert cfg.province is not None, "a node config names its province"
        log = logs.get("node").bind(province=cfg.province)
        if cfg.metrics_listen:
            metrics.listen_address(cfg)  # a refused metrics address stops the start before anything opens
        close = self._closing = contextlib.AsyncExitStack()  # stop() undoes start(), last step first
        storage = open_storage(cfg)
        close.callback(storage.close)
        self.store = storage.facts()
        close.callback(self.store.close)
        self.store.check_integrity()  # refuse a corrupt store before anything else
        missing = self.store.missing_possession()
        if missing:  # it would claim subjects whose sealed queries it cannot unlock
            raise StoreError(
                f"store {self.store.location}: {missing} subjects have no possession key (ingested before store "
                "schema 2): ingest the departmental files again (hedui ingest; facts are kept) before serving")
        self.audit_log = open_audit_log(storage, cfg)
        close.callback(self.audit_log.close)
        in_flight = InFlight()
        self.auditor = audit.AsyncAuditor(self.audit_log, in_flight=in_flight)
        close.push_async_callback(self.auditor.aclose)
        member = Member(cfg)
        anchor = member.anchor
        self.revocations = RevocationView()
        member_metrics = MemberMetrics(cfg.identity)
        published = PublishedValues(member.catalogue)  # refreshed with every verified directory
        if cfg.coordinator:
            self.link = CoordinatorLink(member, self.revocations, log, audit_log=self.audit_log, metrics=member_metrics,
                                        on_directory=lambda directory: published.update(directory.standards),
                                        store=self.store, checkpoints=storage.checkpoints(), leases=storage.lease)
        else:
            log.warning("no_coordinator", note="consents cannot be checked: every query will be refused")
        self._nonces = storage.nonces(window_ms=cfg.limits.clock_skew_s * 1000)
        close.callback(self._nonces.close)
        seal_key, _ = pki.load_seal_keys(cfg.seal_key, cfg.seal_pub, cfg.key_passphrase)
        self.probes = storage.probes(key=ledger_key(seal_key.private_bytes_raw()))  # shared by every replica
        close.callback(self.probes.close)
        if storage.restored_guards():  # someone dropped or changed them: names only
            log.warning("store_guards_restored", guards=list(storage.restored_guards()))
        gate = ReceiptGate(member.verifier, self.revocations)
        service = VerificationService(
            province=cfg.province,
            store=self.store,
            catalogue=member.catalogue,
            policy=member.policy,
            verifier=member.verifier,
            limits=cfg.limits,
            consent=gate,
            replay=self._nonces,
            probes=ProbeLimit(self.probes, published, member.catalogue, budget=cfg.limits.probe_checks_per_consent_item),
        )
        self.batch_signer = signing.AsyncBatchSigner(member.signer, in_flight=in_flight)
        store_threads = StoreThreads(storage.threaded)  # closed before the stores it uses (ExitStack order)
        close.callback(store_threads.close)
        servicer = VerificationServicer(
            service, self.batch_signer, anchor, Admission(anchor, cfg.limits, relay=COORDINATOR_URI), log,
            coordinator_identity=COORDINATOR_URI,
            unsealer=self.link, metrics=member_metrics, auditor=self.auditor, in_flight=in_flight,
            unlocker=Unlocker(self.store, cfg.identity, max_subjects=cfg.limits.max_subjects),
            store_threads=store_threads,
        )
        self.servicer = servicer
        household = self.household_servicer = self._household_servicer(member, gate, log, in_flight)

        def register(server: Any) -> None:
            verification_pb2_grpc.add_VerificationServicer_to_server(servicer, server)
            household_pb2_grpc.add_HouseholdHolderServicer_to_server(household, server)

        self.running = await start_server(cfg, listen, SERVICE_NAME, reuse_port=self.reuse_port,
                                          admission=servicer.admission, log=log, metrics=servicer.metrics,
                                          register=register)
        running = self.running
        close.push_async_callback(lambda: running.stop(self._grace))
        self.port = self.running.port
        if cfg.metrics_listen:
            metrics_server, self.metrics_port = metrics.serve(cfg)
            close.callback(metrics_server.shutdown)
        if self.link is not None:
            host = (listen or cfg.listen).rpartition(":")[0]
            close.push_async_callback(self.link.stop)
            if not await self.link.start(f"{cfg.advertise or host}:{self.port}"):
                log.warning("coordinator_unreachable", note="queries are refused until consent state is confirmed")
        self._member, self._log, self._keys_seen = member, log, self._key_stamp()
        watch = asyncio.create_task(self._watch_keys())
        close.callback(watch.cancel)
        log.info("serving", version=__version__, port=self.port, subjects=self.store.counts().get("subjects"))
        return self.port

    def _household_servicer(self, member: Member, gate: ReceiptGate, log: Any, in_flight: InFlight) -> Any:
        """The HouseholdHolder servicer: this province's masked share of household rounds."""
        cfg = self.cfg
        seal_key, _ = pki.load_seal_keys(cfg.seal_key, cfg.seal_pub, cfg.key_passphrase)
        service = HouseholdService(
            province=member.province, store=self.store, catalogue=member.catalogue, policy=member.policy,
            verifier=member.verifier, limits=cfg.limits, consent=gate, replay=self._nonces,
            mask_key=masks.mask_key_from_seal_key(seal_key),
        )
        return HouseholdHolderServicer(service, self.batch_signer, member.anchor, self.servicer.admission,
                                       log, link=self.link, coordinator_identity=COORDINATOR_URI, metrics=self.servicer.metrics,
                                       auditor=self.auditor, in_flight=in_flight)

    def _key_stamp(self) -> tuple[int, ...]:
        paths = (self.cfg.sign_key, self.cfg.sign_cert, self.cfg.tls_cert, self.cfg.tls_key)
        return tuple(p.stat().st_mtime_ns for p in paths if p is not None)  # no sign_key: it is in a token

    async def check_keys(self) -> bool:
        """Rotation without restart: use a new signing key, and redial the coordinator, once the key
        files changed (`hedui node rotate`). TLS server credentials reload on the next handshake."""
        try:
            stamp = self._key_stamp()
            if stamp == self._keys_seen:
                return False
            member = self._member
            member.__dict__.pop("signer", None)
            signer = member.signer
            if not signer.matches_certificate():  # caught between copying the certificate and the key
                member.__dict__.pop("signer", None)
                return False  # retried on the next poll
            self._keys_seen = stamp
            self.batch_signer.signer = signer
            if self.link is not None:
                self.link.rotate(member.signer)
                await self.link.reannounce()  # callers pin the announced TLS certificate
            self._log.info("keys_rotated")
            return True
        except (OSError, HeduiError, ValueError) as exc:
            self._log.error("key_rotation_failed", error_type=type(exc).__name__)
            return False

    async def _watch_keys(self) -> None:
        while True:
            await asyncio.sleep(1.0)  # polling period of the key files
            await self.check_keys()

    async def stop(self, grace: float = 5.0) -> None:
        """Undo start(): key watch, coordinator link, metrics, then the server (in-flight calls get
        `grace` seconds, still audited), then nonces, audit log and store."""
        self._grace = grace
        await self._closing.aclose()

async def serve_until_signalled(
    server: Any, listen: str | None = None, *, on_ready: Callable[[int], None] | None = None
) -> None:
    """Start a server and run until SIGTERM or SIGINT, then shut down gracefully."""
    port = await server.start(listen)
    if on_ready is not None:
        on_ready(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logs.get("server").info("shutting_down")
    await server.stop()
