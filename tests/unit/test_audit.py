"""The audit log: record contract, group commit, checkpoints, coordinator store, retention pruning."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.crypto import pki, signing
from node.domain.regions import COORDINATOR_URI, province_uri
from node.errors import ErrorCode, Refusal
from node.service.verification import Decided
from node.store.audit import (
    ANSWERED, DAY_MS, KIND_CHECKPOINT, KIND_CHECKPOINT_CONFLICT, KIND_PRUNE, RECORD_KEYS, ROUTE, AsyncAuditor,
    AuditLog, AuditRecord, AuditUnavailable, Checkpoint, CheckpointInvalid, CheckpointStore,
    NO_PREVIOUS, NodeCheckpointer, answered,
    coordinator_event, make_checkpoint, refusal, refused, retention_days, verify_checkpoint,
)  # fmt: skip
from node.store.sqlite.chain import HashChain, entry_hash
from node.store.errors import StoreCorrupt, StoreError
from node.store.sqlite.checkpoints import CheckpointFile
from node.testing.cluster import build_federation
from node.wire.v1 import common_pb2, coordinator_pb2, verification_pb2
from node.store.sqlite.storage import audit_file, audit_file_readonly
from tests.conftest import CANARY_DEPOSIT, WORKER

TOKEN = bytes(range(32))
NOW_MS = 1_800_000_000_000


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    fed = build_federation(tmp_path_factory.mktemp("audit-pki"), ["44", "51"])
    return {"44": fed.member("44").signer, "51": fed.member("51").signer,
            "verifier": signing.Verifier(pki.TrustAnchor.load(fed.pki / "ca.pem"))}


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    with audit_file(tmp_path / "audit.sqlite") as audit_log:
        yield audit_log


def rec(n: int = 0, *, at_ms: int = NOW_MS, decision: str = ANSWERED) -> AuditRecord:
    return AuditRecord(at_ms=at_ms, request_id=f"req-{n:08d}", requester="51", decision=decision,
                       purpose="dibao", consent_id="c-0123456789abcdef01234567", items=("income.wage_monthly",),
                       outcome_digest="ab" * 32)


def query() -> verification_pb2.QueryBody:
    consent = verification_pb2.SignedConsent(body=verification_pb2.ConsentBody(consent_id="c-00aa").SerializeToString())
    return verification_pb2.QueryBody(
        requester="51", request_id="req-abcdefgh", nonce=b"n" * 16, issued_at_ms=NOW_MS, purpose="dibao",
        subjects=[TOKEN], consent=consent,
        checks=[common_pb2.Check(attribute="deposit.balance_total", op=common_pb2.LE, operand=CANARY_DEPOSIT)],
    )  # fmt: skip


def _sql(path: Path, *statements: str) -> None:
    """Run statements through a plain sqlite3 connection, as an operator with the sqlite3 tool would."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


# -- the record contract ---------------------------------------------------------------------


def test_record_json_has_only_the_allowed_keys_and_no_subject_data(log: AuditLog) -> None:
    """Answer, refusal and coordinator records serialize to exactly RECORD_KEYS, without tokens or operands."""
    q = query()
    answer = verification_pb2.AnswerBody(responder="44", requester="51", request_id=q.request_id)
    decided = Decided(query=q, query_digest=b"d" * 32, answer=answer, items=("deposit.balance_total",))
    records = [
        answered(decided, answer.SerializeToString(), relayed=True),
        refusal(ErrorCode.CONSENT_REVOKED, query=q.SerializeToString(), requester="51"),
        coordinator_event(ROUTE, requester="51", request_id="r-00000001", consent_id="c-00aa",
                          statuses={"44": "OK", "32": "UNREACHABLE"}),
    ]
    for entry, record in zip(log.record_many(records), records, strict=True):
        raw = json.loads(entry.payload)
        assert set(raw) == RECORD_KEYS
        assert AuditRecord.from_json(entry.payload) == record
        text = entry.payload.decode()
        assert TOKEN.hex() not in text and str(CANARY_DEPOSIT) not in text and WORKER not in text
    assert records[0].consent_id == "c-00aa" and records[0].extra == {"via": "coordinator"}
    assert records[1].decision == "refused:CONSENT_REVOKED" and records[1].outcome_digest == ""


def test_record_refuses_id_numbers_and_free_form_values() -> None:
    """A record holding an ID number, a token-sized value or a malformed field cannot be built."""
    with pytest.raises(ValueError, match="ID number"):
        AuditRecord(at_ms=1, request_id=f"x-{WORKER}", requester="51", decision=ANSWERED)
    with pytest.raises(ValueError):
        AuditRecord(at_ms=1, request_id="r-1", requester="51", decision=ANSWERED, extra={"value": TOKEN.hex()})
    with pytest.raises(ValueError):
        AuditRecord(at_ms=1, request_id="r-1", requester="51", decision="answered: yes")
    with pytest.raises(ValueError):
        AuditRecord(at_ms=1, request_id="r-1", requester="51", decision=ANSWERED, outcome_digest="not-hex")
    with pytest.raises(ValueError):
        AuditRecord.from_json(json.dumps({**rec().to_dict(), "value": 1}).encode())


def test_refusal_from_unauthenticated_bytes_keeps_only_well_formed_fields() -> None:
    """A refused query's claimed fields are kept only when well formed; an ID number in them never is."""
    q = query()
    q.request_id = WORKER
    q.purpose = "dibao; DROP"
    record = refusal(ErrorCode.MALFORMED, query=q.SerializeToString())
    assert (record.request_id, record.purpose, record.requester) == ("invalid", "", "51")
    assert record.extra == {"requester": "claimed"}
    assert refusal(ErrorCode.MALFORMED, query=b"\xff\xff garbage").request_id == ""
    assert refused(ErrorCode.REPLAYED) == "refused:REPLAYED"


# -- group commit ----------------------------------------------------------------------------


def test_async_auditor_writes_32_concurrent_records_in_one_or_two_transactions(
        log: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """32 records submitted in one loop turn are committed by at most two record_many transactions."""
    calls: list[int] = []
    original = log.record_many

    def counting(records: Any, **kw: Any) -> Any:
        calls.append(len(records))
        return original(records, **kw)

    monkeypatch.setattr(log, "record_many", counting)

    async def main() -> list[Any]:
        auditor = AsyncAuditor(log)
        try:
            return await asyncio.gather(*(auditor.record(rec(i)) for i in range(32)))
        finally:
            await auditor.aclose()

    entries = asyncio.run(main())
    assert 1 <= len(calls) <= 2 and sum(calls) == 32
    assert [e.idx for e in entries] == list(range(1, 33))
    assert [AuditRecord.from_json(e.payload).request_id for e in entries] == [f"req-{i:08d}" for i in range(32)]
    assert log.verify().ok


def test_async_auditor_raises_when_the_write_fails_so_no_answer_is_given(tmp_path: Path) -> None:
    """When the audit write fails, `record` raises AuditUnavailable and the caller returns no answer."""
    given: list[str] = []

    async def handler(auditor: AsyncAuditor) -> str:
        await auditor.record(rec())
        given.append("answer")
        return "answer"

    async def attempt(audit_log: AuditLog) -> BaseException | None:
        auditor = AsyncAuditor(audit_log)
        try:
            results = await asyncio.gather(*(handler(auditor) for _ in range(4)), return_exceptions=True)
        finally:
            await auditor.aclose()
        assert all(isinstance(r, AuditUnavailable) for r in results)
        return results[0] if isinstance(results[0], BaseException) else None

    closed = audit_file(tmp_path / "a.sqlite")
    closed.close()  # the database is gone from under the server
    error = asyncio.run(attempt(closed))
    assert isinstance(error, AuditUnavailable) and error.code is ErrorCode.UNAVAILABLE
    assert isinstance(error.__cause__, StoreError)
    with audit_file(tmp_path / "b.sqlite"):
        pass
    readonly = audit_file_readonly(tmp_path / "b.sqlite")  # writes refused by SQLite
    try:
        asyncio.run(attempt(readonly))
    finally:
        readonly.close()
    assert given == []


# -- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_sign_and_verify(log: AuditLog, members: dict[str, Any]) -> None:
    """A signed checkpoint verifies to the member, index and head of the log it was made from."""
    log.record_many([rec(i) for i in range(5)])
    signed = make_checkpoint(log, members["44"], province_uri("44"))
    checkpoint = verify_checkpoint(signed.blob, members["verifier"], member=province_uri("44"))
    assert checkpoint == signed.checkpoint
    assert checkpoint.expect_head == log.head() and checkpoint.index == 5
    assert log.verify([checkpoint.expect_head]).ok


def test_tampered_or_misattributed_checkpoint_is_refused(log: AuditLog, members: dict[str, Any]) -> None:
    """An edited body, another member's signature or the wrong member name are all refused."""
    log.record_many([rec(i) for i in range(3)])
    signed = make_checkpoint(log, members["44"], province_uri("44"))
    verifier = members["verifier"]
    edited = coordinator_pb2.AuditCheckpoint()
    edited.CopyFrom(signed.message)
    edited.body = Checkpoint(province_uri("44"), 2, log.head()[1], signed.checkpoint.at_ms).body()
    with pytest.raises(CheckpointInvalid, match="signature"):
        verify_checkpoint(edited, verifier)
    forged = make_checkpoint(log, members["51"], province_uri("44"))  # 51 claims to speak for 44
    with pytest.raises(CheckpointInvalid, match="another member"):
        verify_checkpoint(forged.blob, verifier)
    with pytest.raises(CheckpointInvalid, match="not urn:hedui:province:51"):
        verify_checkpoint(signed.blob, verifier, member=province_uri("51"))
    with pytest.raises(CheckpointInvalid):
        verify_checkpoint(b"\x0a\x03abc", verifier)


def test_coordinator_store_keeps_latest_and_refuses_contradictions(
        tmp_path: Path, log: AuditLog, members: dict[str, Any]) -> None:
    """The coordinator keeps the newest checkpoint per member and records and refuses one that rewrites history."""
    member = province_uri("44")
    with HashChain(tmp_path / "ledger.sqlite", table="ledger") as ledger:
        store = CheckpointStore(ledger, members["verifier"])
        assert store.latest(member) is None
        log.record_many([rec(i) for i in range(3)])
        first = make_checkpoint(log, members["44"], member)
        entry = store.receive(first.message, member)
        assert entry.kind == KIND_CHECKPOINT and store.receive(first.blob, member).idx == entry.idx
        log.record_many([rec(i) for i in range(3, 6)])
        second = make_checkpoint(log, members["44"], member, prev=first.checkpoint.link)
        store.receive(second.message, member)
        assert store.latest(member) == second.checkpoint
        assert store.receive(first.message, member).idx == entry.idx  # a late duplicate, not a conflict
        with pytest.raises(Refusal) as wrong_peer:
            store.receive(second.message, province_uri("51"))
        assert wrong_peer.value.code is ErrorCode.IDENTITY_MISMATCH
        rewritten = Checkpoint(member, 6, b"\x01" * 32, second.checkpoint.at_ms + 1, second.checkpoint.link)
        body = rewritten.body()
        message = coordinator_pb2.AuditCheckpoint(body=body, signature=members["44"].sign(signing.CHECKPOINT, body))
        with pytest.raises(Refusal) as conflict:
            store.receive(message, member)
        assert conflict.value.code is ErrorCode.MALFORMED and "rewritten" in str(conflict.value)
        assert ledger.latest(member).kind == KIND_CHECKPOINT_CONFLICT  # type: ignore[union-attr]
        assert store.latest(member) == second.checkpoint
        assert ledger.verify().ok


def test_checkpoint_store_refuses_future_and_unsigned(tmp_path: Path, log: AuditLog, members: dict[str, Any]) -> None:
    """A checkpoint dated in the future or signed by nobody is refused before it is kept."""
    member = province_uri("44")
    with HashChain(tmp_path / "ledger.sqlite", table="ledger") as ledger:
        store = CheckpointStore(ledger, members["verifier"])
        future = make_checkpoint(log, members["44"], member, at_ms=int(time.time() * 1000) + 3_600_000)
        with pytest.raises(Refusal) as late:
            store.receive(future.message, member)
        assert late.value.code is ErrorCode.CLOCK_WINDOW
        with pytest.raises(Refusal) as unsigned:
            store.receive(coordinator_pb2.AuditCheckpoint(body=future.message.body), member)
        assert unsigned.value.code is ErrorCode.UNAUTHENTICATED
        assert ledger.head()[0] == 0


def test_node_checkpointer_keeps_a_local_copy_and_retries_until_lodged(
        tmp_path: Path, log: AuditLog, members: dict[str, Any]) -> None:
    """The node signs a new checkpoint only when its head moved, keeps each locally, and resubmits after a failure."""
    file = CheckpointFile(tmp_path / "audit-checkpoints.jsonl")
    checkpointer = NodeCheckpointer(log, members["44"], province_uri("44"), file)
    lodged: list[coordinator_pb2.AuditCheckpoint] = []

    async def submit(message: coordinator_pb2.AuditCheckpoint) -> None:
        lodged.append(message)

    async def failing(message: coordinator_pb2.AuditCheckpoint) -> None:
        raise ConnectionError("coordinator unreachable")

    async def latest() -> coordinator_pb2.AuditCheckpoint:
        return lodged[-1] if lodged else coordinator_pb2.AuditCheckpoint()

    async def scenario() -> None:
        log.record(rec(1))
        with pytest.raises(ConnectionError):
            await checkpointer.run_once(failing, latest)
        first = await checkpointer.run_once(submit, latest)
        assert first is not None and first.checkpoint.index == 1
        assert await checkpointer.run_once(submit, latest) is None  # head unchanged: nothing to lodge
        log.record(rec(2))
        second = await checkpointer.run_once(submit, latest)
        assert second is not None and second.checkpoint.index == 2

    asyncio.run(scenario())
    assert len(lodged) == 2 and len(file.read()) == 2  # the retry reused the kept checkpoint
    assert [verify_checkpoint(b, members["verifier"]).index for _, b, _ in file.read() if b] == [1, 2]


# -- retention -------------------------------------------------------------------------------


def _aged(log: AuditLog, ages_days: list[int], now_ms: int) -> None:
    for n, age in enumerate(ages_days):
        log.record(rec(n), at_ms=now_ms - age * DAY_MS)


def test_prune_removes_old_prefix_keeps_recent_and_still_verifies(log: AuditLog) -> None:
    """Entries past retention are removed; recent ones stay; the prune is an entry; verify passes."""
    now = NOW_MS
    _aged(log, [400, 300, 200, 191, 100, 10, 0], now)
    before = {e.idx: e.hash for e in log.entries()}
    checkpoint_old, checkpoint_new = (2, before[2]), (7, before[7])
    assert log.prune(now) == 4
    kept = list(log.entries())
    assert [e.idx for e in kept] == [5, 6, 7, 8] and all(before[e.idx] == e.hash for e in kept[:3])
    assert kept[-1].kind == KIND_PRUNE and json.loads(kept[-1].payload)["removed"] == 4
    assert log.anchor() == (5, before[4])
    report = log.verify([checkpoint_old, checkpoint_new, (4, before[4])])
    assert report.ok and report.count == 4 and report.anchor_index == 5
    assert [c.status for c in report.checkpoints] == ["pruned", "ok", "ok"]
    assert log.prune(now) == 0 and log.head()[0] == 8
    log.record(rec(99))
    assert log.verify().ok and log.missing_guards() == ()


def test_prune_never_removes_entries_newer_than_retention(log: AuditLog) -> None:
    """Only the prefix older than the cutoff goes: an old entry behind a recent one is kept."""
    _aged(log, [300, 5, 300, 200], NOW_MS)
    assert log.prune(NOW_MS) == 1
    assert [e.idx for e in log.entries()][:3] == [2, 3, 4]
    ages = [(NOW_MS - e.at_ms) // DAY_MS for e in log.entries() if e.kind != KIND_PRUNE]
    assert ages == [5, 300, 200]
    # everything old: all but the prune entry itself goes, and the chain still verifies and grows
    assert log.prune(NOW_MS + 400 * DAY_MS) == 4
    assert [e.kind for e in log.entries()] == [KIND_PRUNE]
    log.record(rec(1))
    assert log.verify().ok


def test_prefix_deleted_without_prune_or_tampered_log_is_caught(log: AuditLog, tmp_path: Path) -> None:
    """Deleting old entries by hand (no prune entry) fails verify, and prune refuses a tampered log."""
    _aged(log, [300, 300, 1], NOW_MS)
    _sql(Path(log.location), "DROP TRIGGER audit_no_delete", "DELETE FROM audit WHERE idx = 1")
    assert log.verify().first_bad == 2
    _sql(Path(log.location), "CREATE TABLE IF NOT EXISTS audit_meta(name TEXT PRIMARY KEY, value TEXT NOT NULL)",
         "INSERT OR REPLACE INTO audit_meta VALUES ('anchor', "
         f"'{{\"idx\": 2, \"prev\": \"{next(log.entries()).prev_hash.hex()}\"}}')")
    report = log.verify()
    assert (report.ok, report.first_bad) == (False, 2) and "without a recorded prune" in (report.reason or "")
    with pytest.raises(StoreCorrupt):
        log.prune(NOW_MS)


def test_verify_names_an_edited_entry_after_prune(log: AuditLog) -> None:
    """An entry edited after a prune is reported by index and key, starting from the anchor."""
    _aged(log, [300, 10, 9, 8], NOW_MS)
    log.prune(NOW_MS)
    e = next(e for e in log.entries() if e.idx == 3)
    forged = e.payload.replace(b"answered", b"refused:MALFORMED")
    _sql(Path(log.location), "DROP TRIGGER audit_no_update", f"UPDATE audit SET payload = x'{forged.hex()}' WHERE idx = 3")
    report = log.verify()
    assert (report.ok, report.first_bad, report.bad_key) == (False, 3, "req-00000002")
    assert report.reason == "entry 3: content does not match its hash"
    assert entry_hash("audit", e.idx, e.at_ms, e.kind, e.key, e.payload, e.prev_hash) == e.hash


def test_retention_is_read_from_config_and_bounded(tmp_path: Path) -> None:
    """[audit] retention_days is read from the TOML (default 190) and must be at least six months."""
    cfg = tmp_path / "m.toml"
    cfg.write_text("[member]\nidentity = 'x'\n", encoding="utf-8")
    assert retention_days(cfg) == 190
    cfg.write_text("[audit]\nretention_days = 365\n", encoding="utf-8")
    assert retention_days(cfg) == 365
    cfg.write_text("[audit]\nretention_days = 30\n", encoding="utf-8")
    with pytest.raises(Exception, match="six months"):
        retention_days(cfg)
    with pytest.raises(Exception, match="six months"):
        audit_file(tmp_path / "a.sqlite", retention_days=7)


def test_coordinator_records(log: AuditLog) -> None:
    """Coordinator events are keyed by consent id when there is no request id; malformed peer fields are blanked."""
    entry = log.record(coordinator_event("consent.grant", requester="51", consent_id="c-0011", purpose="dibao"))
    assert entry.key == "c-0011" and AuditRecord.from_json(entry.payload).requester == "51"
    assert AuditRecord(at_ms=1, request_id="", requester=COORDINATOR_URI, decision="route").key == ""
    malformed = coordinator_event(refused(ErrorCode.MALFORMED), requester="51", request_id="bad id!",
                                  consent_id=WORKER, statuses={"call": "route"})
    assert (malformed.request_id, malformed.consent_id, malformed.extra) == ("invalid", "", {"call": "route"})


def test_outcome_digest_that_happens_to_contain_an_id_like_run_is_accepted() -> None:
    """A hex digest containing 18 digits that pass the ID checksum is still a digest: the answer is not refused."""
    import datetime as dt

    from node.domain import idnumber

    lookalike = idnumber.make("510104", dt.date(1988, 5, 17), 371)
    digest = ("ab" * 32)[: 64 - 18] + lookalike.replace("X", "0")
    if not idnumber.is_valid(digest[-18:]):
        digest = ("ab" * 32)[: 64 - 18] + idnumber.make("510104", dt.date(1988, 5, 17), 373)
    assert idnumber.is_valid(digest[-18:])
    record = AuditRecord(at_ms=1, request_id="req-00000001", requester="51", decision="answered", outcome_digest=digest)
    assert record.outcome_digest == digest
    with pytest.raises(ValueError):
        AuditRecord(at_ms=1, request_id=digest[-18:], requester="51", decision="answered")


def test_node_checkpointer_links_each_checkpoint_and_notices_a_coordinator_that_lost_its_checkpoints(
        tmp_path: Path, log: AuditLog, members: dict[str, Any]) -> None:
    """Each lodged checkpoint names the one before it; when the coordinator later holds less than was lodged,
    the checkpointer says so (`went_back`) and starts a new sequence from what is held."""
    checkpointer = NodeCheckpointer(log, members["44"], province_uri("44"), CheckpointFile(tmp_path / "cp.jsonl"))
    held: list[coordinator_pb2.AuditCheckpoint] = []

    async def submit(message: coordinator_pb2.AuditCheckpoint) -> None:
        held.append(message)

    async def latest() -> coordinator_pb2.AuditCheckpoint:
        return held[-1] if held else coordinator_pb2.AuditCheckpoint()

    async def refuse(message: coordinator_pb2.AuditCheckpoint) -> None:
        raise ConnectionError("refused")

    async def scenario() -> list[Any]:
        made = []
        for i in range(2):
            log.record(rec(i))
            made.append(await checkpointer.run_once(submit, latest))
        log.record(rec(2))
        held.clear()  # the coordinator's ledger was put back to before any of them
        with pytest.raises(ConnectionError):
            await checkpointer.run_once(refuse, latest)
        made.append(await checkpointer.run_once(submit, latest))
        return made

    first, second, third = asyncio.run(scenario())
    assert first.checkpoint.prev == NO_PREVIOUS and second.checkpoint.prev == first.checkpoint.link
    assert checkpointer.went_back == (2, 0) and third.checkpoint.prev == NO_PREVIOUS
