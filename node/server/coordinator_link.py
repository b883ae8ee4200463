"""A node's link to its coordinator: announce itself, follow revocations, witness its heads, read the
directory, lodge its discovery locators, seal."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import grpc
from cryptography.hazmat.primitives.serialization import Encoding
from grpc import aio

from node.coordinator.audit_heads import parse_audit_head
from node.coordinator.directory import ANNOUNCEMENT, Entry, FederationDirectory
from node.coordinator.directory_cache import VerifiedDirectory
from node.crypto import masks, pki, sealing
from node.crypto.pki import province_of_identity
from node.domain.regions import COORDINATOR_TLS_NAME, COORDINATOR_URI, province_uri
from node.errors import ErrorCode, HeduiError, Refusal
from node.member import Member
from node.server import tls
from node.server.lead import Lead
from node.server.locator_publisher import LocatorPublisher
from node.server.coordinator_replicas import CoordinatorReplicas
from node.server.metrics import MemberMetrics
from node.service.consent import LedgerChange, LedgerHead, RevocationView, parse_ledger_head
from node.store import audit, witness
from node.store.interfaces import CheckpointStorage, FactStore, Lease
from node.wire.v1 import common_pb2, coordinator_pb2, verification_pb2

T = TypeVar("T")
CHAIN_LEAD_FILE = "chain-lead.lock"
POLL_INTERVAL_S: Final[float] = 1.0
#: After a failed consent sync the next attempt comes this soon (doubling up to POLL_INTERVAL_S), not a whole
#: interval later: a view refreshed every second fails closed after 4 s, so one lost reply (3 s deadline) must
#: not cost another full interval on top.
RETRY_AFTER_S: Final[float] = 0.1
CHECKPOINT_EVERY_S: Final[float] = 60.0
DIRECTORY_MAX_AGE_S: Final[float] = 30.0
#: How often a node announces its endpoint again (well within the directory's `ENDPOINT_TTL_S`, 90 s).
REANNOUNCE_S: Final[float] = 30.0


def next_poll_delay(failures: int, elapsed: float = 0.0) -> float:
    """The wait before the feed's next round after `failures` failed rounds in a row, the last one having
    taken `elapsed` seconds: after a good round what is left of the interval since that round began (a
    slow round is not followed by a whole interval more), else RETRY_AFTER_S doubling with each further
    failure, up to the interval."""
    if failures == 0:
        return max(0.0, POLL_INTERVAL_S - elapsed)
    return min(RETRY_AFTER_S * 2 ** (failures - 1), POLL_INTERVAL_S)


class CoordinatorLink:
    """Background tasks and lookups a node needs from the coordinator."""

    def __init__(self, member: Member, revocations: RevocationView, log: Any, *,
                 audit_log: audit.AuditLog | None = None, checkpoint_every_s: float = CHECKPOINT_EVERY_S,
                 metrics: MemberMetrics | None = None,
                 on_directory: Callable[[FederationDirectory], None] | None = None,
                 store: FactStore | None = None, checkpoints: CheckpointStorage | None = None,
                 leases: Callable[[str], Lease] | None = None) -> None:
        assert member.cfg.coordinator, "node has no coordinator configured"
        self.on_directory = on_directory  # told of every newly verified directory (e.g. its standards)
        self.member = member
        self.metrics = metrics
        self.revocations = revocations
        self.log = log
        self.identity = province_uri(member.province)
        self._seal_key, seal_pub = pki.load_seal_keys(member.cfg.seal_key, member.cfg.seal_pub, member.cfg.key_passphrase)
        self.mask_key = masks.mask_key_from_seal_key(self._seal_key)
        self.seal_public = sealing.public_bytes(seal_pub)
        # Every coordinator replica configured, in order; calls fail over between them (coordinator_replicas).
        self.replicas = CoordinatorReplicas(member.cfg.coordinator_endpoints, self._open_channel, log)
        self._directory: FederationDirectory = FederationDirectory({})
        self._verified_directory = VerifiedDirectory(member.verifier)
        self._directory_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._endpoint: str | None = None  # what start() announced
        self._announced: coordinator_pb2.SignedAnnouncement | None = None  # and the announcement, sent again
        self._crl_digest = b""
        self._sync_lock = asyncio.Lock()
        self.checkpoint_every_s = checkpoint_every_s
        self.locators = None if store is None else LocatorPublisher(
            member.province, store, member.signer, log, lock_dir=member.cfg.data_dir, epoch_s=self._epoch_s,
            lead=None if leases is None else leases("locator"),
            send=lambda signed: self._call("PublishLocator", signed, 30),
            held=lambda: self._call("HeldLocators", coordinator_pb2.HeldLocatorsRequest(), 5))
        self.checkpointer = None if audit_log is None or checkpoints is None else audit.NodeCheckpointer(
            audit_log, member.signer, member.cfg.identity, checkpoints)
        # One process of a node's `--workers` lodges checkpoints and writes witnesses: the one holding this
        # lock (checkpoints of one chain from several processes would not extend each other).
        # With `leases` (Storage.lease) the lock is the storage's: one lead across every replica host on PostgreSQL.
        self._lead: Lease | Lead = Lead(member.cfg.data_dir / CHAIN_LEAD_FILE) if leases is None else leases("chain-lead")
        witnesses = member.cfg.data_dir / witness.WITNESS_DIR  # the coordinator's signed heads, for `--witness`
        self.ledger_witness = witness.WitnessFile(witnesses / witness.LEDGER_HEADS)
        self.audit_witness = witness.WitnessFile(witnesses / witness.AUDIT_HEADS)
        self._audit_head_order = (0, 0)  # (signed at_ms, index) of the newest audit head offered to the witness

    async def start(self, endpoint: str) -> bool:
        """Announce `endpoint` and sync consent state once; keep both going in the background.

        Returns True when both first attempts succeeded (the node is then fully ready).
        """
        self._endpoint = endpoint
        self._announced = signed = self.announcement(endpoint)
        announced = await self._announce_once(signed)
        try:
            await self.sync_revocations()
            await self.sync_certificate_revocations()
            synced = True
        except (grpc.RpcError, HeduiError):
            synced = False
        try:
            await self.directory(refresh=True)  # published standards known before the first query
        except (grpc.RpcError, HeduiError):
            pass  # the poll loop reads it later
        # The consent feed runs from here on: building the locators below takes seconds on a large store, and
        # the server already answers queries, which fail closed once the view is older than its staleness bound.
        self._tasks = [asyncio.create_task(self._poll_loop(0 if synced else 1))]
        await self.publish_locators()  # discoverable from the first query on
        if self.locators is not None:
            self._tasks.append(asyncio.create_task(self._locator_loop()))
        if self.checkpointer is not None:
            self._tasks.append(asyncio.create_task(self._checkpoint_loop()))
        self._tasks.append(asyncio.create_task(self._announce_loop(announced)))
        return announced and synced

    def rotate(self, signer: Any) -> None:
        """Use rotated keys: sign checkpoints and locators with the new key (locators are lodged again,
        signed by it) and reconnect with the new TLS certificate."""
        if self.checkpointer is not None:
            self.checkpointer.signer = signer
        if self.locators is not None:  # locators signed by a revoked key would be refused from then on
            self.locators.signer = signer
            self.locators.resign()
        self.redial()

    async def reannounce(self) -> bool:
        """Announce again (after a rotation: the new TLS certificate's fingerprint and name)."""
        if self._endpoint is None:
            return False
        self._announced = self.announcement(self._endpoint)
        return await self._announce_once(self._announced)

    def redial(self) -> None:
        """Reconnect to the coordinator's replicas with the (rotated) TLS certificate."""
        loop = asyncio.get_running_loop()
        for old in self.replicas.dial():
            loop.create_task(old.close(grace=5))

    def _open_channel(self, endpoint: str, extra: list[tuple[str, Any]]) -> aio.Channel:
        """A channel to one coordinator replica, with this node's (current) TLS credentials."""
        cfg = self.member.cfg
        return aio.secure_channel(endpoint, tls.channel_credentials(cfg),
                                  options=tls.channel_options(cfg.limits, server_name=COORDINATOR_TLS_NAME) + extra)

    def _call(self, method: str, request: Any, timeout: float) -> Any:
        """A Coordinator call on the replica that answered last, failing over to the others (an awaitable)."""
        return self.replicas.call(method, request, timeout)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.locators is not None:
            self.locators.close()
        self._lead.release()  # a node restarted in this process takes the lead again
        await asyncio.gather(*(c.close() for c in self.replicas.channels))

    async def _epoch_s(self) -> int:
        return (await self.directory()).discovery_epoch_s

    async def publish_locators(self) -> bool:
        """Send the coordinator this province's locators that are due; False when that failed (retried)."""
        if self.locators is None:
            return True
        try:
            await self.locators.run_once()
        except grpc.RpcError as exc:
            self.log.warning("locator_publish_failed", status=exc.code().name if hasattr(exc, "code") else "?",
                             reason=(exc.details() or "")[:200] if hasattr(exc, "details") else "")
            return False
        except HeduiError as exc:
            self.log.warning("locator_publish_failed", reason=str(exc))
            return False
        return True

    async def _locator_loop(self) -> None:
        delay = POLL_INTERVAL_S
        while True:
            await asyncio.sleep(delay)  # polling period of the store's data version and the epoch
            try:
                ok = await self.publish_locators()
            except Exception as exc:  # noqa: BLE001 - keep publishing whatever one attempt hit
                self.log.error("locator_publish_failed", error_type=type(exc).__name__)
                ok = False
            delay = POLL_INTERVAL_S if ok else min(delay * 2, 30.0)

    def announcement(self, endpoint: str) -> coordinator_pb2.SignedAnnouncement:
        tls_cert = pki.load_cert(self.member.cfg.tls_cert)
        tls_der = tls_cert.public_bytes(Encoding.DER)
        body = coordinator_pb2.AnnouncementBody(
            province=self.member.province, endpoint=endpoint, seal_suite=sealing.SUITE_NAME,
            seal_public_key=self.seal_public, tls_cert_sha256=hashlib.sha256(tls_der).digest(),
            issued_at_ms=int(time.time() * 1000), mask_public_key=masks.public_bytes(self.mask_key),
            tls_name=pki.certificate_tls_name(tls_cert),
        ).SerializeToString()
        return coordinator_pb2.SignedAnnouncement(body=body, signature=self.member.signer.sign(ANNOUNCEMENT, body))

    async def _announce_once(self, signed: coordinator_pb2.SignedAnnouncement, *, again: bool = False) -> bool:
        try:
            await self._call("Announce", signed, 5)
        except grpc.RpcError as exc:
            self.log.warning("announce_failed", status=exc.code().name if hasattr(exc, "code") else "?")
            return False
        (self.log.debug if again else self.log.info)("announced")
        return True

    async def _announce_loop(self, announced: bool) -> None:
        """Until accepted, announce with back-off; then the same announcement every REANNOUNCE_S, which keeps
        this endpoint in the directory (an endpoint not heard for `directory.ENDPOINT_TTL_S` drops out)."""
        delay = 0.2
        while True:
            if announced:
                await asyncio.sleep(REANNOUNCE_S)  # the refresh period, not a readiness wait
                announced = await self._announce_once(self._announced, again=True)
                delay = 0.2
                continue
            await asyncio.sleep(delay)  # retry backoff, not a readiness wait
            delay = min(delay * 2, 5.0)
            announced = await self._announce_once(self._announced)

    async def checkpoint_once(self) -> None:
        """Sign the audit chain's head (if it moved) and lodge it with the coordinator (one process per node)."""
        if self.checkpointer is not None and self._lead.held():
            try:
                await self.checkpointer.run_once(self._submit_checkpoint, lambda: self._call(
                    "LatestCheckpoint", coordinator_pb2.LatestCheckpointRequest(), 5))
            finally:
                if self.checkpointer.went_back is not None:  # the coordinator lost checkpoints this node lodged
                    lodged, held = self.checkpointer.went_back
                    self.checkpointer.went_back = None
                    self.log.error("coordinator_checkpoints_went_back", lodged_index=lodged, held_index=held)

    async def _submit_checkpoint(self, message: coordinator_pb2.AuditCheckpoint) -> coordinator_pb2.CheckpointAck:
        """Lodge one checkpoint; keep the coordinator's signed audit head from the acknowledgement."""
        ack = await self._call("SubmitCheckpoint", message, 5)
        if ack.HasField("audit_head"):
            self._witness_audit_head(ack.audit_head)
        return ack

    def _witness_audit_head(self, signed: coordinator_pb2.SignedAuditHead) -> None:
        """Keep the coordinator's signed audit head (from a CheckpointAck or a consent-feed reply).

        One that does not verify is logged and dropped (the reply it came with is used all the same). One
        signed before the newest kept is a reply that crossed a later one in flight (the feed and the
        checkpoint ask concurrently) and says nothing new: it is not offered, so it is not kept as a step back.
        """
        try:
            head = parse_audit_head(signed, self.member.verifier)
        except Refusal as exc:
            self.log.warning("coordinator_reply_rejected", reason=str(exc))
            return
        order = (head.at_ms, head.index)
        if order < self._audit_head_order:
            return
        self._audit_head_order = order
        self._witness(self.audit_witness, witness.Head(
            head.index, head.hash, blob=signed.SerializeToString(deterministic=True), at_ms=witness.now_ms()))

    def _witness(self, file: witness.WitnessFile, head: witness.Head) -> None:
        """Keep a signed head of the coordinator's (one process per node writes them); a failure to write it
        is logged, never fatal to the feed."""
        if not self._lead.held():
            return
        try:
            file.offer(head)
        except HeduiError as exc:
            self.log.error("witness_failed", file=file.path.name, reason=str(exc))

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_every_s)  # checkpoint period
            try:
                await self.checkpoint_once()
            except Exception as exc:  # noqa: BLE001 - keep checkpointing whatever one attempt hit
                self.log.warning("checkpoint_failed", error_type=type(exc).__name__)

    async def sync_certificate_revocations(self) -> None:
        """Fetch the federation CRL when it changed; apply it (never an older one) and keep a copy for the CLI."""
        from node.crypto import revocation

        reply = await self._call("Revocations", coordinator_pb2.RevocationsRequest(known_sha256=self._crl_digest), 3)
        if reply.crl_der and reply.sha256 != self._crl_digest:
            try:
                count = self.member.crl.accept(reply.crl_der)
            except revocation.CrlRollback as exc:
                self._crl_digest = reply.sha256  # reported once, not on every poll
                self.log.error("revocation_list_rolled_back", reason=str(exc))
                return
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import Encoding

            from node import files

            files.write_file(self.member.crl_path, x509.load_der_x509_crl(reply.crl_der).public_bytes(Encoding.PEM),
                             replace=True, mode=files.PUBLIC)
            self._crl_digest = reply.sha256
            self.log.info("revocations_applied", revoked=count)

    async def sync_revocations(self) -> None:
        """Pull revocations and the signed ledger head; alert when the ledger went back (then read it all again).

        Each reply also carries the coordinator's signed audit head: witnessed here too, so a node that lodges
        no checkpoint (its own audit head did not move) keeps witnessing the coordinator's audit chain.
        """
        async with self._sync_lock:  # each reply is checked against the head of the request before it
            for _ in range(2):
                after, epoch = self.revocations.request()
                reply = await self._call("ConsentUpdates",
                                         coordinator_pb2.ConsentUpdatesRequest(after_index=after, epoch=epoch), 3)
                head = parse_ledger_head(reply.head, self.member.verifier)
                self._witness(self.ledger_witness, witness.Head(
                    head.index, head.hash, head.epoch, head.ledger_id, reply.head.SerializeToString(deterministic=True),
                    witness.now_ms()))
                if reply.HasField("audit_head"):
                    self._witness_audit_head(reply.audit_head)
                change = self.revocations.apply(
                    ((u.ledger_index, u.consent_id, u.state == coordinator_pb2.REVOKED) for u in reply.updates),
                    head, reply.after_hash)
                if change is None:
                    return
                self._report(change, head)
                if self.revocations.cursor == head.index:
                    return

    def _report(self, change: LedgerChange, head: LedgerHead) -> None:
        fields = {"kind": change.kind, "seen_index": change.seen_index, "head_index": change.head_index,
                  "kept_index": change.kept_index, "epoch": head.epoch.hex()[:16]}
        if change.alert:
            self.log.error("ledger_went_back", note="consents registered after kept_index are refused", **fields)
        else:
            self.log.warning("ledger_new_epoch", **fields)
        if self.metrics is not None:
            self.metrics.ledger_change(change.kind)

    async def _poll_loop(self, failures: int = 0) -> None:
        elapsed = 0.0
        while True:
            await asyncio.sleep(next_poll_delay(failures, elapsed))  # polling period of the feed (shorter after a failure)
            started = time.monotonic()
            failures = 0 if await self.poll_once() else failures + 1
            elapsed = time.monotonic() - started

    async def poll_once(self) -> bool:
        """One round of the feed: consent updates, the CRL, the directory when due; False when it failed (logged)."""
        try:
            await self.sync_revocations()
            await self.sync_certificate_revocations()
            if time.monotonic() - self._directory_at > DIRECTORY_MAX_AGE_S:
                members = await self.directory(refresh=True)
                self.log.debug("directory_refreshed", members=len(members))
            return True
        except grpc.RpcError as exc:
            self.log.warning("consent_sync_failed", status=exc.code().name if hasattr(exc, "code") else "?")
        except Refusal as exc:  # an unverifiable directory or ledger head
            self.log.warning("coordinator_reply_rejected", reason=str(exc))
        except HeduiError as exc:
            self.log.error("revocation_list_rejected", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - the feed must keep running (else the node fails closed)
            self.log.error("sync_failed", error_type=type(exc).__name__)
        return False

    async def directory(self, *, refresh: bool = False) -> dict[str, Entry]:
        if refresh or not self._directory or time.monotonic() - self._directory_at > DIRECTORY_MAX_AGE_S:
            signed = await self._call("Directory", coordinator_pb2.DirectoryRequest(), 5)
            verified = self._verified_directory.get(signed)  # verified again only when it changed
            self._directory_at = time.monotonic()
            if verified is not self._directory:
                self._directory = verified
                if self.on_directory is not None:
                    self.on_directory(self._directory)
        return self._directory

    # -- sealing, for the Verification servicer ---------------------------------------------

    def open_message(self, sealed: common_pb2.Sealed, peer_identity: str, message: type[T]) -> tuple[T, str | None]:
        """Open a sealed query message; the requester is the TLS peer, or None when relayed by the coordinator."""
        try:
            raw = sealing.open_sealed(sealed, kind=sealing.QUERY, identity=self.identity, private_key=self._seal_key)
            opened = message.FromString(raw)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - SealError or DecodeError: the same public refusal
            raise Refusal(ErrorCode.MALFORMED, "sealed query does not open") from None
        if peer_identity == COORDINATOR_URI:
            return opened, None
        province = province_of_identity(peer_identity)
        if province is None:
            raise Refusal(ErrorCode.NOT_AUTHORISED)
        return opened, province

    def open_query(self, sealed: common_pb2.Sealed, peer_identity: str) -> tuple[verification_pb2.LockedQuery, str | None]:
        """The possession-locked query inside a sealed Verify (still to unlock: node.service.possession)."""
        return self.open_message(sealed, peer_identity, verification_pb2.LockedQuery)

    def open_batch(self, sealed: common_pb2.Sealed, peer_identity: str) -> tuple[verification_pb2.LockedBatch, str | None]:
        """The possession-locked queries inside a sealed VerifyBatch."""
        return self.open_message(sealed, peer_identity, verification_pb2.LockedBatch)

    @staticmethod
    def check_reply_key(query: verification_pb2.QueryBody) -> None:
        """Refuse a sealed query whose reply key cannot be sealed to."""
        if query.reply_seal_suite != sealing.SUITE_NAME or len(query.reply_seal_key) != 32:
            raise Refusal(ErrorCode.MALFORMED, "sealed query names no usable reply key")

    @classmethod
    def seal_answer(cls, answer: verification_pb2.SignedAnswer | verification_pb2.AnswerBatch,
                    query: verification_pb2.QueryBody) -> common_pb2.Sealed:
        """Seal an answer (or a batch of them) to the reply key the requester signed into its query."""
        cls.check_reply_key(query)
        return sealing.seal(answer.SerializeToString(), kind=sealing.ANSWER, recipient=province_uri(query.requester),
                            public_key=query.reply_seal_key)
