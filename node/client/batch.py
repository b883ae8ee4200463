"""Batch consent and batch verification: many households per signed, sealed message.

A chunk of households costs one DiscoverBatch (each province is asked once about all their
tokens), one batch signature over all the chunk's queries, one seal per holding province and
one RouteBatch. Chunks are pipelined so the coordinator and holders always have work.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node import files
from node.client.coordinator import require_own_request, unanswered
from node.client.query import Answer, PreparedQuery, check_answer, check_names, locked_envelope, result_dicts
from node.client.saved_answers import evidence_entry
from node.coordinator.consents import CONSENT_REQUEST_DOMAIN
from node.coordinator.router import status_name
from node.crypto import discovery, sealing, signing
from node.crypto.tokens import possession_key, subject_token
from node.domain import freetext, idnumber
from node.domain.predicate import Check, parse_check, require_one_per_item
from node.domain.standards import fallback_regions
from node.domain.regions import COORDINATOR_TLS_NAME, province_uri
from node.errors import BadInput, ErrorCode, HeduiError, Refusal
from node.member import Member
from node.server import coordinator_replicas as replicas
from node.server import failover, tls
from node.server.channel_pool import ChannelPool
from node.service.consent import SALT_BYTES, commitment
from node.wire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc, verification_pb2

CHUNK: Final[int] = 128
IN_FLIGHT: Final[int] = 4
DAY_MS: Final[int] = 24 * 3600 * 1000
MESSAGE_MARGIN: Final[int] = 64 * 1024  # below the message limit: gRPC's framing and metadata


@dataclass
class Household:
    """One household of an input file: its key, members' ID numbers, where they were read, and
    its GB/T 2260 region when the file has a `region` column ("" when none is given)."""

    key: str
    ids: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    evidence: bytes = b""
    region: str = ""


@dataclass(frozen=True)
class Reject:
    """A rejected row: its line, its household key ("" when the key itself is unfit to write) and why."""

    line: int
    household: str
    reason: str


REJECTS_HEADER: Final[tuple[str, ...]] = ("line", "household", "reason")
#: Columns a households file may have after `household,id_number`, in any order.
OPTIONAL_COLUMNS: Final[tuple[str, ...]] = ("evidence_sha256", "region")
_HEADER_FORM: Final[str] = "household,id_number[,evidence_sha256][,region]"


def read_households(path: Path, *, max_members: int = 16) -> tuple[list[Household], list[Reject]]:
    """Households of a CSV `household,id_number[,evidence_sha256][,region]`; bad rows reject their household."""
    households: dict[str, Household] = {}
    bad: dict[str, list[Reject]] = {}
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    with f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BadInput(f"{path} is not a regular file")
        reader = csv.reader(f)
        try:
            _read_rows(path, reader, households, bad)
        except csv.Error:
            raise BadInput(f"{path}: line {reader.line_num} is not well-formed CSV") from None
        except UnicodeDecodeError:
            raise BadInput(f"{path}: not valid UTF-8 (after line {reader.line_num})") from None
    good: list[Household] = []
    rejects: list[Reject] = [r for rs in bad.values() for r in rs if r.household not in households]
    for key, h in households.items():
        problems = list(bad.get(key, []))
        if len(h.ids) + len([p for p in problems if "ID number" in p.reason]) > max_members:
            problems.append(Reject(h.lines[0], key, f"household has more than {max_members} members"))
        elif len(set(h.ids)) != len(h.ids):
            problems.append(Reject(h.lines[0], key, "the same ID number appears twice in the household"))
        if problems:
            rejects.extend(problems)
        else:
            good.append(h)
    rejects.sort(key=lambda r: r.line)
    return good, rejects


def _read_rows(path: Path, reader: Any, households: dict[str, Household], bad: dict[str, list[Reject]]) -> None:
    header = next(reader, None)
    names = [h.strip() for h in header or ()]
    if names[:2] != ["household", "id_number"] or len(set(names)) != len(names) or \
            any(n not in OPTIONAL_COLUMNS for n in names[2:]):
        raise BadInput(f"{path}: header must be {_HEADER_FORM}")
    evidence_at, region_at = (names.index(c) if c in names else None for c in OPTIONAL_COLUMNS)
    for line, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        key = row[0].strip()
        # The key is written to the output and rejects files: one that may not be is never kept.
        unfit = freetext.problem("household key", key, max_len=freetext.HOUSEHOLD_KEY_MAX) if key else "malformed row"
        if unfit is not None:
            bad.setdefault(f"\0line-{line}", []).append(Reject(line, "", unfit))
            continue
        if not 2 <= len(row) <= len(names):  # trailing optional cells may be left out
            bad.setdefault(key, []).append(Reject(line, key, "malformed row"))
            continue
        h = households.setdefault(key, Household(key))
        h.lines.append(line)
        try:
            h.ids.append(idnumber.validate(row[1]))
        except idnumber.InvalidIdNumber as exc:
            bad.setdefault(key, []).append(Reject(line, key, str(exc)))
            continue
        problem = _optional_cells(h, row, evidence_at, region_at)
        if problem is not None:
            bad.setdefault(key, []).append(Reject(line, key, problem))


def _optional_cells(h: Household, row: list[str], evidence_at: int | None, region_at: int | None) -> str | None:
    """Take a row's evidence digest and region into its household; what is wrong with them, if anything."""
    evidence = row[evidence_at].strip() if evidence_at is not None and evidence_at < len(row) else ""
    if evidence:
        try:
            digest = bytes.fromhex(evidence)
            if len(digest) != 32:
                raise ValueError
            h.evidence = digest
        except ValueError:
            return "evidence_sha256 must be 64 hex digits"
    region = row[region_at].strip() if region_at is not None and region_at < len(row) else ""
    if region:
        try:
            fallback_regions(region)
        except BadInput as exc:
            return str(exc)
        if h.region and h.region != region:
            return "the household's members name different regions"
        h.region = region
    return None


def write_rejects(path: Path, rejects: Sequence[Reject]) -> None:
    """Rejected rows by line number, household key and reason; never an ID number (0600, atomic)."""
    with files.atomic(path, replace=True) as f:
        w = csv.writer(f)
        w.writerow(REJECTS_HEADER)
        for r in rejects:
            fit = freetext.problem("household key", r.household, max_len=freetext.HOUSEHOLD_KEY_MAX) is None
            w.writerow([r.line, r.household if fit else "", idnumber.redact(r.reason)])


class BatchSession:
    """An async session with the coordinator as one province, for batch work."""

    def __init__(self, member: Member, *, deadline_s: float = 30.0) -> None:
        if not member.cfg.coordinator:
            raise BadInput("this node has no coordinator configured")
        self.member = member
        self.deadline_s = deadline_s
        self.endpoints = member.cfg.coordinator_endpoints
        self._order = replicas.shared_order(self.endpoints)
        options = tls.channel_options(member.cfg.limits, server_name=COORDINATOR_TLS_NAME)
        if len(self.endpoints) > 1:
            options = [*options, *failover.RECONNECT_OPTIONS]
        # Per replica, `[limits] connections_per_peer` connections, calls in turn, so a coordinator's --workers share them
        self._pools = [ChannelPool(e, tls.channel_credentials(member.cfg), options, member.cfg.limits.connections_per_peer,
                                   coordinator_pb2_grpc.CoordinatorStub) for e in self.endpoints]
        self._pool = self._pools[0]
        self._channel = self._pool.channels[0]
        self._coordinator = [pool.stub for pool in self._pools]
        self.signer = signing.AsyncBatchSigner(member.signer)
        self._directory: dict[str, Any] | None = None
        #: The largest RouteBatch this session sends (gRPC refuses a message over the limit, whole); a chunk
        #: whose request would be larger is split in halves.
        self.max_request_bytes = member.cfg.limits.max_message_bytes - MESSAGE_MARGIN

    @property
    def stub(self) -> coordinator_pb2_grpc.CoordinatorStub:
        """The Coordinator stub of the current replica's next connection."""
        return self._pools[self._order.current].stub()

    def pickers(self, make_stub: Callable[[Any], Any]) -> list[Callable[[], Any]]:
        """Per replica, stubs of another service over its connections, in their turn."""
        return [pool.picker(make_stub) for pool in self._pools]

    async def close(self) -> None:
        for pool in self._pools:
            await pool.close()

    async def call(self, method: str, request: Any, *, stubs: Sequence[Callable[[], Any]] | None = None) -> Any:
        """`method` of the Coordinator service (or of the service `stubs` picks, per replica) at the replicas,
        failing over between them (node.server.coordinator_replicas); HeduiError on failure."""
        pick = stubs or self._coordinator
        wait = len(self._pools) == 1  # one replica: a restarting coordinator is waited for within the deadline

        async def connect(index: int, seconds: float) -> bool:
            return (await self._pools[index].connected_stub(seconds))[1]

        async def invoke(index: int, seconds: float) -> Any:
            return await getattr(pick[index](), method)(request, timeout=seconds, wait_for_ready=wait)

        walk = replicas.Walk(self._order, method, self.deadline_s)
        try:
            reply = await replicas.call_async(walk, connect, invoke)
        except grpc.RpcError as exc:
            raise unanswered(exc, walk) from None
        if walk.unanswered and method == "RegisterConsentBatch":  # a replica that failed may have recorded some
            for item in reply.items:
                if item.error_code == ErrorCode.REPLAYED.name:
                    item.error = (f"coordinator replica {walk.unanswered[0]} failed after this registration was sent "
                                  "and may have recorded it: register it again (a new request)")
        return reply

    async def directory(self) -> dict[str, Any]:
        if self._directory is None:
            from node.coordinator.directory import verify_directory

            signed = await self.call("Directory", coordinator_pb2.DirectoryRequest())
            self._directory = verify_directory(signed, self.member.verifier)
        return self._directory

    async def discovery_epoch_s(self) -> int:
        """The coordinator's discovery epoch length, from its signed directory."""
        epoch_s = (await self.directory()).discovery_epoch_s
        if epoch_s < 1:
            raise BadInput("the coordinator publishes no discovery epoch (it predates locator discovery)")
        return epoch_s

    # -- consents ------------------------------------------------------------------------

    async def grant(self, households: Sequence[Household], purpose: str, days: int,
                    ) -> list[tuple[Household, verification_pb2.SignedConsent | None, str]]:
        """Register one consent per household; (household, receipt or None, error)."""
        m = self.member
        now_ms = int(time.time() * 1000)
        not_before_ms, not_after_ms = now_ms - 60_000, now_ms + days * DAY_MS
        epochs = discovery.consent_epochs(not_before_ms, not_after_ms, await self.discovery_epoch_s())
        bodies = []
        for h in households:
            salt = os.urandom(SALT_BYTES)
            tokens = [subject_token(m.linkage_key, n) for n in h.ids]
            bodies.append(coordinator_pb2.ConsentRequestBody(
                requester=m.province, request_id=uuid.uuid4().hex, nonce=os.urandom(16), issued_at_ms=now_ms,
                purpose=purpose, subject_salt=salt,
                subject_commitments=[commitment(salt, t) for t in tokens],
                not_before_ms=not_before_ms, not_after_ms=not_after_ms,
                case_reference="", evidence_algorithm="sha256" if h.evidence else "", evidence_digest=h.evidence,
                discovery_commitments=discovery.consent_commitments(salt, tokens, epochs),
                discovery_first_epoch=epochs.start,
            ).SerializeToString())
        signatures = await self.signer.sign_many([(CONSENT_REQUEST_DOMAIN, b) for b in bodies])
        reply = await self.call("RegisterConsentBatch", coordinator_pb2.RegisterConsentBatchRequest(
            requests=[coordinator_pb2.RegisterConsentRequest(body=b, signature=s) for b, s in zip(bodies, signatures, strict=True)]))
        out: list[tuple[Household, verification_pb2.SignedConsent | None, str]] = []
        for h, raw, item in zip(households, bodies, reply.items, strict=True):
            if item.error_code:
                out.append((h, None, item.error))
                continue
            try:  # the receipt must carry, unmodified, the request this node signed for the household
                require_own_request(item.status.receipt, raw, m.verifier)
            except Refusal as refusal:
                out.append((h, None, str(refusal)))
                continue
            out.append((h, item.status.receipt, item.error))
        return out

    # -- verification --------------------------------------------------------------------

    async def verify(self, chunk: Sequence[tuple[Household, verification_pb2.SignedConsent]], purpose: str,
                     checks: Sequence[Check]) -> list[dict[str, Any]]:
        """Verify a chunk of households; one JSON-ready record per household, in order."""
        m = self.member
        request_id = uuid.uuid4().hex
        consent_ids = [verification_pb2.ConsentBody.FromString(r.body).consent_id for _, r in chunk]
        prepared = [PreparedQuery(m.province, purpose, tuple(subject_token(m.linkage_key, n) for n in h.ids), tuple(checks),
                                  tuple(possession_key(m.linkage_key, n) for n in h.ids))
                    for h, _ in chunk]
        epoch = discovery.current_epoch(await self.discovery_epoch_s())
        found = await self.call("DiscoverBatch", coordinator_pb2.DiscoverBatchRequest(
            request_id=request_id, epoch=epoch,
            households=[coordinator_pb2.HouseholdDiscovery(
                consent_id=c, discovery_tokens=[discovery.discovery_token(t, epoch) for t in p.tokens])
                for c, p in zip(consent_ids, prepared, strict=True)]))
        contacted = {s.province: status_name(s.status) for s in found.statuses}
        directory = await self.directory()
        reply_key = X25519PrivateKey.generate()
        reply_public = sealing.public_bytes(reply_key.public_key())
        per_holder: dict[str, list[tuple[int, verification_pb2.QueryBody, bytes]]] = {}
        for i, ((_, receipt), p, holders) in enumerate(zip(chunk, prepared, found.households, strict=True)):
            for holder in holders.holders:
                if holder not in directory:
                    continue
                body = p.body(audience=holder, consent=receipt, request_id=request_id, reply_key=reply_public,
                              reply_suite=sealing.SUITE_NAME, accept_packed=True)
                per_holder.setdefault(holder, []).append((i, body, body.SerializeToString()))
        flat = [(h, i, body, raw) for h, items in per_holder.items() for i, body, raw in items]
        signatures = await self.signer.sign_many([(signing.QUERY, raw) for *_, raw in flat]) if flat else []
        batches: dict[str, list[tuple[PreparedQuery, bytes]]] = {}
        query_signatures = {(holder, i): sig for (holder, i, _, _), sig in zip(flat, signatures, strict=True)}
        for (holder, i, _, raw), sig in zip(flat, signatures, strict=True):
            batches.setdefault(holder, []).append(
                (prepared[i], verification_pb2.SignedQuery(body=raw, signature=sig).SerializeToString()))
        routed: dict[str, coordinator_pb2.RoutedAnswer] = {}
        if batches:  # each household's query locked to its possession keys, the batch sealed to the holder
            envelopes = [locked_envelope(h, qs, request_id=request_id, seal_key=directory[h].seal_public_key, batch=True)
                         for h, qs in batches.items()]
            involved = sorted({consent_ids[i] for items in per_holder.values() for i, _, _ in items})
            request = coordinator_pb2.RouteBatchRequest(request_id=request_id, consent_ids=involved, envelopes=envelopes)
            if request.ByteSize() > self.max_request_bytes and len(chunk) > 1:
                # Too large for one message (large households held in many provinces): each half on its own,
                # discovered and signed again (the queries built here are never sent, so no nonce is spent).
                half = len(chunk) // 2
                return [*await self.verify(chunk[:half], purpose, checks), *await self.verify(chunk[half:], purpose, checks)]
            reply = await self.call("RouteBatch", request)
            routed = {a.province: a for a in reply.answers}
        answers: dict[tuple[str, int], tuple[Answer | None, str]] = {}
        for holder, items in per_holder.items():
            routed_answer = routed.get(holder)
            status = status_name(routed_answer.status) if routed_answer else "UNAVAILABLE"
            batch_items: dict[int, verification_pb2.BatchItem] = {}
            if routed_answer is not None and status == "OK":
                try:
                    raw = sealing.open_sealed(routed_answer.answer, kind=sealing.ANSWER,
                                              identity=province_uri(m.province), private_key=reply_key)
                    batch_items = {it.index: it for it in verification_pb2.AnswerBatch.FromString(raw).items}
                except Exception:  # noqa: BLE001 - an unopenable reply is that province's failure
                    status = "DENIED"
            for position, (i, body, raw) in enumerate(items):
                item = batch_items.get(position)
                if status != "OK" or item is None:
                    answers[(holder, i)] = (None, status)
                elif item.error_code:
                    answers[(holder, i)] = (None, ITEM_STATUS.get(item.error_code, "DENIED"))
                else:
                    answer = check_answer(item.answer, body, raw, m.verifier, expect_province=holder,
                                          rows=False).with_query(raw, query_signatures[(holder, i)])
                    answers[(holder, i)] = (answer, "OK")
        crl_b64 = base64.b64encode(m.crl.der).decode()
        names = check_names(prepared[0].body()) if prepared else []  # every query of the chunk has these checks
        memo: dict[tuple[int, int, int, str], dict[str, Any]] = {}
        records = []
        # Every province that answered discovery OK holds none of a household unless it is one of its holders.
        not_holding = {p: "NO_MATCH" if s == "OK" else s for p, s in contacted.items()}
        for i, ((h, _receipt), holders) in enumerate(zip(chunk, found.households, strict=True)):
            if holders.error_code:
                records.append({"household": h.key, "consent_id": consent_ids[i], "members": len(h.ids),
                                "error": holders.error, "routing": {}, "answers": [], "evidence": []})
                continue
            routing = dict(not_holding)
            household_answers = []
            evidence = []
            for holder in holders.holders:
                answer, status = answers.get((holder, i), (None, "UNAVAILABLE"))
                routing[holder] = status
                if answer is not None:
                    household_answers.append({"province": holder, "signature_valid": answer.signature_valid,
                                              "results": result_dicts(answer, names, memo)})
                    evidence.append(evidence_entry(answer))
            record = {"household": h.key, "consent_id": consent_ids[i], "members": len(h.ids),
                      "routing": dict(sorted(routing.items())), "answers": household_answers, "evidence": evidence}
            if evidence:  # the CRL in force: each line stays checkable on its own (node.client.saved_answers)
                record["crl"] = crl_b64
            records.append(record)
        return records


#: Item refusals that a later run may overcome, as routing statuses; every other refusal is final (DENIED).
ITEM_STATUS: Final[dict[str, str]] = {"UNAVAILABLE": "UNAVAILABLE", "DEADLINE": "DEADLINE_EXCEEDED",
                                       "RATE_LIMITED": "UNAVAILABLE", "OVERLOADED": "UNAVAILABLE",
                                       "NOT_HELD": "NOT_HELD"}
#: Routing statuses after which a re-run would change nothing for that province.
FINAL_STATUSES: Final[frozenset[str]] = frozenset({"OK", "NO_MATCH", "DENIED", "NOT_HELD", "IMPLAUSIBLE"})


def complete(record: dict[str, Any]) -> bool:
    """A household is done when every province was answered, said it holds nothing, or was found not to."""
    return "error" not in record and all(s in FINAL_STATUSES for s in record["routing"].values())


async def pipeline(chunks: Iterable[Any], work: Callable[[Any], Any], in_flight: int = IN_FLIGHT) -> AsyncIterator[Any]:
    """Run `work` over chunks with up to `in_flight` running, yielding results in input order."""
    pending: list[asyncio.Task[Any]] = []
    iterator = iter(chunks)
    exhausted = False
    while True:
        while not exhausted and len(pending) < in_flight:
            try:
                pending.append(asyncio.ensure_future(work(next(iterator))))
            except StopIteration:
                exhausted = True
        if not pending:
            return
        yield await pending.pop(0)


def chunked(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def parse_checks(exprs: Sequence[str], member: Member, purpose: str) -> list[Check]:
    member.policy.purpose(purpose)
    checks = [parse_check(e) for e in exprs]
    for c in checks:
        member.catalogue.get(c.attribute)
    if not 1 <= len(checks) <= member.cfg.limits.max_checks:
        raise BadInput(f"1 to {member.cfg.limits.max_checks} checks")
    require_one_per_item(checks)
    return checks


__all__ = ["ITEM_STATUS", "REJECTS_HEADER", "BatchSession", "HeduiError", "Household", "Reject", "chunked", "complete",
           "parse_checks", "pipeline", "read_households", "write_rejects"]
_ = common_pb2


def reject_household(h: Household, reason: str) -> Reject:
    """The reject of a household read from a HOUSEHOLDS.csv: its first line, its key, why."""
    return Reject(h.lines[0], h.key, reason)


def read_consents(path: Path) -> dict[str, verification_pb2.SignedConsent]:
    """household -> SignedConsent receipt, from a CONSENTS.csv (`hedui consent grant-batch`)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"household", "receipt"} <= set(reader.fieldnames):
                raise BadInput(f"{path}: header must be household,consent_id,receipt")
            return {row["household"]: verification_pb2.SignedConsent.FromString(base64.b64decode(row["receipt"]))
                    for row in reader}
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except (ValueError, KeyError, TypeError, DecodeError, csv.Error):  # csv.Error: e.g. a field past csv's size limit (fuzzing)
        raise BadInput(f"{path}: not a consents file written by `hedui consent grant-batch`") from None
