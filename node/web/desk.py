"""What the web application does for a signed-in account: cases, the household means test and the
per-person checks through the node's own client API (`node.client`), roles, and the audit of it all."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from node.client.coordinator import CoordinatorClient
from node.client.household import household_check
from node.client.routed import routed_verify
from node.coordinator.directory import Entry, server_name
from node.domain import idnumber
from node.errors import BadInput, HeduiError
from node.member import Member
from node.server import failover, tls
from node.store import audit
from node.store.factory import open_audit_log, open_storage
from node.web.accounts import Account, Accounts, Role
from node.web.batches import Batch, Batches
from node.web.cases import Case, CaseInput, Cases, Status, new_case_id
from node.web.db import WebDb
from node.web.sessions import DEFAULT_IDLE_S, Sessions

EVIDENCE_DIR: Final[str] = "web-evidence"
MAX_EVIDENCE: Final[int] = 20 * 1024 * 1024
#: What a scanned authorization may be, by its first bytes.
EVIDENCE_KINDS: Final[dict[bytes, str]] = {b"%PDF-": "pdf", b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpg"}
WEB_PREFIX: Final[str] = "web."


class Forbidden(Exception):
    """The account's role or office does not allow this."""


class NotFound(Exception):
    """No such case (or not one the account may know of)."""


@dataclass(frozen=True)
class LogRow:
    """One access-log line as an auditor reads it."""

    at: str
    account: str
    account_name: str
    action: str
    case: str
    consent: str
    purpose: str
    statuses: dict[str, str]


class Desk:
    """The web application's logic over one province node's config."""

    def __init__(self, config_path: Path, *, idle_s: int = DEFAULT_IDLE_S) -> None:
        self.config_path = Path(config_path)
        self.member = Member.from_config(self.config_path)
        self.province = self.member.province
        data_dir = self.member.cfg.data_dir
        self.db = WebDb(data_dir)
        self.accounts, self.sessions, self.cases = Accounts(self.db), Sessions(self.db, idle_s=idle_s), Cases(self.db)
        self.batches = Batches(self.db, self.member, on_end=lambda b: self.audit(
            "batch.end", b.created_by, batch=b, statuses={"status": b.status, "households": str(b.done),
                                                           "incomplete": str(b.incomplete), "rejected": str(b.rejected)}))
        self.evidence_dir = data_dir / EVIDENCE_DIR
        self.evidence_dir.mkdir(mode=0o700, exist_ok=True)
        self.storage = open_storage(self.member.cfg)
        self.audit_log = open_audit_log(self.storage, self.member.cfg)
        self._coordinator: CoordinatorClient | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self.batches.close()
        if self._coordinator is not None:
            self._coordinator.__exit__(None, None, None)
        self.audit_log.close()
        self.storage.close()
        self.db.close()

    @property
    def coordinator(self) -> CoordinatorClient:
        """One long-lived client (its channel and directory cache reused across requests)."""
        with self._lock:
            if self._coordinator is None:
                self._coordinator = CoordinatorClient(self.member)
            return self._coordinator

    @property
    def purposes(self) -> tuple[str, ...]:
        return tuple(sorted(self.member.policy.purposes))

    # -- audit -----------------------------------------------------------------------------

    def audit(self, action: str, account: str, *, case: Case | None = None, statuses: dict[str, str] | None = None,
              request_id: str = "", batch: Batch | None = None) -> None:
        """Record one action durably, with the account's identifier next to the province (and the case or batch)."""
        self.audit_log.record(audit.web_event(
            WEB_PREFIX + action, province=self.province, account=account or "anonymous",
            request_id=request_id or uuid.uuid4().hex, case_id=case.id if case else batch.id if batch else "",
            consent_id=case.consent_id if case else "", purpose=case.purpose if case else batch.purpose if batch else "",
            statuses=statuses))

    # -- roles -----------------------------------------------------------------------------

    def require(self, account: Account, *roles: Role, action: str) -> None:
        if account.role not in roles:
            self.audit(f"forbidden.{action}", account.id)
            raise Forbidden(action)

    def case_for(self, account: Account, case_id: str, *, action: str = "view") -> Case:
        """The case when the account may handle it: caseworkers their own office's, supervisors every one."""
        self.require(account, Role.CASEWORKER, Role.SUPERVISOR, action=action)
        case = self.cases.get(case_id)
        if case is None:
            raise NotFound(case_id)
        self._require_office(account, case.office, action, case=case)
        return case

    def list_for(self, account: Account) -> list[Case]:
        self.require(account, Role.CASEWORKER, Role.SUPERVISOR, action="list")
        return self.cases.list(_office_of(account))

    def _require_office(self, account: Account, office: str, action: str, **audited: Any) -> None:
        """Caseworkers reach their own office's cases and batches only (supervisors every office's)."""
        if _office_of(account) not in (None, office):
            self.audit(f"forbidden.{action}", account.id, **audited)
            raise Forbidden(action)

    # -- cases -----------------------------------------------------------------------------

    def create(self, account: Account, data: CaseInput, evidence: bytes) -> Case:
        """Store the signed authorization (0600), register the consent with its SHA-256, then the case."""
        self.require(account, Role.CASEWORKER, Role.SUPERVISOR, action="create")
        kind = next((k for magic, k in EVIDENCE_KINDS.items() if evidence.startswith(magic)), None)
        if kind is None:
            raise BadInput("the signed authorization must be a PDF, PNG or JPEG file")
        if len(evidence) > MAX_EVIDENCE:
            raise BadInput(f"the signed authorization is larger than {MAX_EVIDENCE // (1024 * 1024)} MiB")
        case_id = new_case_id()
        path = self.evidence_dir / f"{case_id}.{kind}"
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(evidence)
            out.flush()
            os.fsync(out.fileno())
        try:
            info = self.coordinator.grant([m.id_number for m in data.members], data.purpose, days=data.consent_days,
                                          evidence=path, case_reference=case_id)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        case = self.cases.add(case_id, account.office, account.id, data, consent_id=info.consent_id,
                              consent_expires_ms=info.not_after_ms, evidence_sha256=info.evidence_sha256,
                              evidence_file=path.name)
        self.audit("case.create", account.id, case=case)
        return case

    def run(self, account: Account, case_id: str) -> Case:
        """The household means test and the per-person checks against the declared figures, stored with the case."""
        case = self.case_for(account, case_id, action="check")
        if case.status not in (Status.OPEN, Status.CHECKED):
            raise BadInput("this case is closed or its consent revoked; it cannot be checked again")
        coordinator = self.coordinator
        receipt = coordinator.show(case.consent_id)
        if receipt.state != "ACTIVE":
            raise BadInput(f"the case's consent is {receipt.state.lower()}; register a new case")
        ids = [m.id_number for m in case.members]
        household = household_check(self.member, ids, case.purpose, case.region, consent=receipt.receipt,
                                    coordinator=coordinator)
        persons = [self._person(n, m, case, receipt.receipt) for n, m in enumerate(case.members)]
        record = json.dumps(household.record, ensure_ascii=False, indent=1) + "\n"
        result = {"household": household.to_json(), "persons": [p for p in persons if p is not None],
                  "record_sha256": hashlib.sha256(record.encode()).hexdigest(), "checked_ms": int(time.time() * 1000)}
        self.cases.set_result(case.id, result, record)
        self.audit("case.check", account.id, case=case, statuses=household.routing, request_id=household.round_id)
        checked = self.cases.get(case.id)
        assert checked is not None
        return checked

    def _person(self, n: int, member: Any, case: Case, receipt: Any) -> dict[str, Any] | None:
        """Minimal-disclosure checks of one member against what was declared: outcomes only, by province."""
        checks = []
        if member.wage is not None:
            checks.append(("wage", member.wage, f"income.wage_monthly<={member.wage}"))
        if member.deposit is not None:
            checks.append(("deposit", member.deposit, f"deposit.balance_total<={member.deposit}"))
        if not checks:
            return None
        out: dict[str, Any] = {"member": n, "masked": idnumber.mask(member.id_number), "rows": [], "routing": {}}
        try:
            verified = routed_verify(self.member, [member.id_number], case.purpose, [c for _, _, c in checks],
                                     consent=receipt, coordinator=self.coordinator)
        except HeduiError as exc:
            out["error"] = idnumber.redact(str(exc))
            return out
        out["routing"] = dict(sorted((verified.routing or {}).items()))
        labels = {c: (label, fen) for label, fen, c in checks}
        for answer in verified.answers:
            for row in answer.results:
                label, fen = labels.get(row.check, (row.check, 0))
                out["rows"].append({"province": answer.province, "item": label, "declared": fen,
                                    "outcome": row.outcome if answer.signature_valid else "INVALID", "as_of": row.as_of})
        return out

    def revoke(self, account: Account, case_id: str) -> Case:
        """Supervisors only: revoke the case's consent at the coordinator (in force everywhere within seconds)."""
        self.require(account, Role.SUPERVISOR, action="revoke")
        case = self.case_for(account, case_id, action="revoke")
        if case.status is not Status.REVOKED:
            self.coordinator.revoke(case.consent_id)
            self.cases.set_status(case.id, Status.REVOKED)
        self.audit("case.revoke", account.id, case=case)
        return self.cases.get(case.id) or case

    def close_case(self, account: Account, case_id: str) -> Case:
        case = self.case_for(account, case_id, action="close")
        if case.status in (Status.OPEN, Status.CHECKED):
            self.cases.set_status(case.id, Status.CLOSED)
        self.audit("case.close", account.id, case=case)
        return self.cases.get(case.id) or case

    # -- batches ---------------------------------------------------------------------------

    def batch_start(self, account: Account, *, purpose: str, region: str, households: bytes, consents: bytes) -> Batch:
        """Caseworkers and supervisors: keep the uploads and decide the households in the background."""
        self.require(account, Role.CASEWORKER, Role.SUPERVISOR, action="batch")
        batch = self.batches.start(office=account.office, account_id=account.id, purpose=purpose, region=region,
                                   households=households, consents=consents)
        self.audit("batch.start", account.id, batch=batch)
        return batch

    def batch_for(self, account: Account, batch_id: str, *, action: str = "batch") -> Batch:
        """The batch when the account may see it: caseworkers their own office's, supervisors every one."""
        self.require(account, Role.CASEWORKER, Role.SUPERVISOR, action=action)
        batch = self.batches.get(batch_id)
        if batch is None:
            raise NotFound(batch_id)
        self._require_office(account, batch.office, action, batch=batch)
        return batch

    def batch_list(self, account: Account) -> list[Batch]:
        self.require(account, Role.CASEWORKER, Role.SUPERVISOR, action="batch")
        return self.batches.list(_office_of(account))

    # -- auditors --------------------------------------------------------------------------

    def access_log(self, account: Account, *, limit: int = 1000) -> list[LogRow]:
        """Auditors only: every web action, newest first, with account identifiers (and their names beside)."""
        self.require(account, Role.AUDITOR, action="log")
        rows: list[LogRow] = []
        names = {r[0]: r[1] for r in self.db.all("SELECT id, name FROM accounts")}
        for entry in self.audit_log.entries():
            try:
                rec = audit.AuditRecord.from_json(entry.payload)
            except ValueError:
                continue
            if not rec.decision.startswith(WEB_PREFIX):
                continue
            extra = dict(rec.extra)
            who, case = extra.pop("account", ""), extra.pop("case", "")
            rows.append(LogRow(audit.iso_utc(rec.at_ms), who, names.get(who, ""), rec.decision.removeprefix(WEB_PREFIX),
                               case, rec.consent_id, rec.purpose, extra))
        return rows[::-1][:limit]

    # -- federation ------------------------------------------------------------------------

    def federation(self, account: Account) -> dict[str, Any]:
        """Each province's directory entry and health, the local store's counts and newest dates, recent refusals."""
        self.require(account, Role.CASEWORKER, Role.SUPERVISOR, Role.AUDITOR, action="federation")
        directory = self.coordinator.directory()
        with ThreadPoolExecutor(max_workers=8) as pool:
            health = dict(zip(directory, pool.map(self._health, directory.values()), strict=True))
        with self.storage.facts() as store:
            counts, newest = store.counts(), store.newest_as_of()
        refusals = []
        for entry in self.audit_log.entries(since_ms=int(time.time() * 1000) - 7 * audit.DAY_MS):
            try:
                rec = audit.AuditRecord.from_json(entry.payload)
            except ValueError:
                continue
            if rec.decision.startswith("refused:"):
                refusals.append({"at": audit.iso_utc(rec.at_ms), "requester": rec.requester, "decision": rec.decision,
                                 "purpose": rec.purpose})
        return {"provinces": [{"province": p, "endpoint": e.endpoint, "health": health[p]}
                              for p, e in sorted(directory.items())],
                "counts": counts, "newest": newest, "refusals": refusals[-20:][::-1]}

    def _health(self, entry: Entry) -> str:
        """SERVING when any of the province's listed endpoints (its replicas) serves, within 1.5 s in all
        (an equal share per endpoint still to try); else the first endpoint's status."""
        cfg = self.member.cfg
        options = tls.channel_options(cfg.limits, server_name=server_name(entry))  # the announced certificate only
        deadline, statuses = time.monotonic() + 1.5, []
        for k, endpoint in enumerate(entry.endpoints):
            timeout = max(0.001, failover.attempt_timeout(deadline, len(entry.endpoints) - k, time.monotonic()))
            try:
                with grpc.secure_channel(endpoint, tls.channel_credentials(cfg), options=options) as ch:
                    reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
                statuses.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
            except grpc.RpcError as exc:
                statuses.append(exc.code().name if hasattr(exc, "code") else "UNAVAILABLE")
            if statuses[-1] == "SERVING":
                return "SERVING"
        return statuses[0]


def _office_of(account: Account) -> str | None:
    """The office an account's view is limited to: a caseworker's own; None (every office) for others."""
    return account.office if account.role is Role.CASEWORKER else None

