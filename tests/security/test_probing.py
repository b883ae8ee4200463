"""Probing stops (issue 10, point 5): checks at values other than published standards are limited per consent and item.

Real servers on loopback with mutual TLS, a real standards document signed and carried in the
directory, real SQLite probing ledger and audit logs. The holder is Guangdong (44), the
requester Sichuan (51), whose published standard frees its own figures.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node import config as config_mod
from node.client.client import PeerRefused
from node.client.query import PreparedQuery, locked_envelope, sign_query
from node.crypto import sealing
from node.crypto.tokens import possession_key, subject_token
from node.domain.predicate import parse_check
from node.domain.regions import province_uri
from node.store import audit
from node.store.sqlite import backup
from node.server.household_servicer import CONTRIBUTED
from node.store.probes import PROBES_DB, ProbeLedger
from node.testing import Federation, run_cluster
from node.wire.v1 import verification_pb2, verification_pb2_grpc
from node.store.sqlite.storage import audit_file_readonly
from tests.conftest import WORKER, WORKER_WAGE

BUDGET = 2  # set in the nodes' [limits] below (the default is 3)
STANDARD = 91000  # Sichuan's published standard per person, fen a month
FINANCIAL = 24 * STANDARD  # its financial-asset limit per person
OTHERS = 95000  # Jiangsu's standard: published, but not by the requester

SICHUAN = f"""
province = "51"
version = 1
example = true
[[standard]]
region = "510100"
name_zh = "测试市"
name_en = "Test city"
purpose = "dibao"
period_from = "2024-01"
standard_per_person = {STANDARD}
income_monthly = ["income_monthly"]
rules = ["income", "financial_assets", "vehicles"]
source = "test figure"
[standard.financial_assets]
months_of_standard = 24
source = "test figure"
[standard.vehicles]
count_max = 1
value_max = 5000000
source = "test figure"
"""
JIANGSU = SICHUAN.replace('"51"', '"32"').replace("510100", "320100").replace(str(STANDARD), str(OTHERS))


@pytest.fixture(scope="module")
def fed(planted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    folder = tmp_path_factory.mktemp("standards")
    with run_cluster(["32", "44", "51"], data=planted,
                     config_extra={"limits": {"probe_checks_per_consent_item": BUDGET}}) as federation:
        for code, text in (("51", SICHUAN), ("32", JIANGSU)):
            path = folder / f"{code}.toml"
            path.write_text(text, encoding="utf-8")
            federation.publish_standards(code, path)
        refresh(federation, "44")
        yield federation


def refresh(fed: Federation, code: str) -> None:
    """Have a node read the directory now (it does so itself every 30 s)."""
    fed.loop.run(fed.servers[code].link.directory(refresh=True))  # type: ignore[union-attr]


def data_dir(fed: Federation, code: str) -> Path:
    return config_mod.load(fed.configs[code]).data_dir


def uses(fed: Federation, consent_id: str, item: str) -> int:
    """Budget the requester 51 has used on `item` under the consent, read from the holder's ledger file."""
    with sqlite3.connect(f"{(data_dir(fed, '44') / PROBES_DB).as_uri()}?mode=ro", uri=True) as db:
        (n,) = db.execute("SELECT count(*) FROM probes WHERE requester = '51' AND consent_id = ? AND item = ?",
                          (consent_id, item)).fetchone()
    return int(n)


def audit_rows(fed: Federation, after: int = 0) -> list[dict[str, Any]]:
    with audit_file_readonly(data_dir(fed, "44") / audit.AUDIT_DB) as log:
        return [row for e in log.entries(after=after) if e.kind == audit.KIND_RECORD
                for row in audit.per_query(json.loads(e.payload))]  # a batch record: one row per query


def audit_head(fed: Federation) -> int:
    with audit_file_readonly(data_dir(fed, "44") / audit.AUDIT_DB) as log:
        return log.head()[0]


def ask(fed: Federation, consent: Any, *checks: str) -> str:
    """One direct query from 51 to 44 about WORKER: "OK" when answered, else the refusal message."""
    try:
        fed.verify("51", [WORKER], list(checks), consent_id=consent.consent_id, to="44")
    except PeerRefused as refused:
        return str(refused)
    return "OK"


def test_checks_at_published_values_are_never_limited(fed: Federation) -> None:
    """Any number of checks at the requester's published figures, at 0 or 1, or fixed by the range, use no budget."""
    consent = fed.grant("51", [WORKER], "dibao")
    before = audit_head(fed)
    for op in ("<=", "<", ">", ">=", "==", "!="):
        assert ask(fed, consent, f"income.wage_monthly{op}{STANDARD}", f"deposit.balance_total{op}{FINANCIAL}",
                   f"vehicle.count{op}1", f"vehicle.value_total{op}5000000") == "OK"
    for constant in ("income.wage_monthly>=0", "income.wage_monthly>0", "deposit.balance_total<=1",
                     "deposit.balance_total<=1000000000000000", "social_insurance.contributing==1"):
        assert ask(fed, consent, constant) == "OK"
    for item in ("income.wage_monthly", "deposit.balance_total", "vehicle.count", "vehicle.value_total"):
        assert uses(fed, consent.consent_id, item) == 0
    answered = [r for r in audit_rows(fed, before) if r["consent_id"] == consent.consent_id]
    assert len(answered) == 11 and all(r["decision"] == "answered" and "probes" not in r["extra"] for r in answered)


def test_a_published_figure_frees_only_its_own_items_and_province(fed: Federation) -> None:
    """The standard per person is not free on a deposit, nor another province's standard on a wage: both are counted."""
    consent = fed.grant("51", [WORKER], "dibao")
    assert ask(fed, consent, f"deposit.balance_total<={STANDARD}") == "OK"
    assert ask(fed, consent, f"income.wage_monthly<={FINANCIAL}") == "OK"
    assert ask(fed, consent, f"income.wage_monthly<={OTHERS}") == "OK"  # Jiangsu's, not Sichuan's
    assert uses(fed, consent.consent_id, "deposit.balance_total") == 1
    assert uses(fed, consent.consent_id, "income.wage_monthly") == 2


def test_binary_search_is_refused_after_the_budget_and_each_refusal_is_audited(fed: Federation) -> None:
    """Moving thresholds get BUDGET answers, then PROBING_LIMIT every time, each audited; refusals use nothing."""
    consent = fed.grant("51", [WORKER], "dibao")
    before = audit_head(fed)
    low, high, replies, operands = 0, 10_000_000, [], []
    for _ in range(6):
        mid = (low + high) // 2
        operands.append(mid)
        reply = ask(fed, consent, f"income.wage_monthly<={mid}")
        replies.append(reply)
        if reply == "OK":  # the requester would learn the side; here we know it
            low, high = (low, mid) if WORKER_WAGE <= mid else (mid + 1, high)
    assert replies[:BUDGET] == ["OK"] * BUDGET
    for reply in replies[BUDGET:]:
        assert "PERMISSION_DENIED" in reply and "probing limit reached" in reply and "income.wage_monthly" in reply
        assert not [str(v) for v in operands if str(v) in reply] and str(WORKER_WAGE) not in reply
    assert uses(fed, consent.consent_id, "income.wage_monthly") == BUDGET
    rows = [r for r in audit_rows(fed, before) if r["consent_id"] == consent.consent_id]
    assert [r["decision"] for r in rows] == ["answered"] * BUDGET + ["refused:PROBING_LIMIT"] * (6 - BUDGET)
    assert all(r["extra"].get("probes") == "1" for r in rows[:BUDGET])
    assert all(r["items"] == ["income.wage_monthly"] and r["requester"] == "51" for r in rows)
    # Asking again at a threshold already counted, or at a published value, is still answered.
    assert ask(fed, consent, f"income.wage_monthly>{operands[0]}") == "OK"
    assert ask(fed, consent, f"income.wage_monthly<{STANDARD}") == "OK"
    # A query with one refused item is refused whole: its other, fresh item uses nothing.
    assert "probing limit" in ask(fed, consent, "income.wage_monthly<=777", "deposit.balance_total<=777")
    assert uses(fed, consent.consent_id, "deposit.balance_total") == 0


def test_routed_queries_are_limited_too(fed: Federation) -> None:
    """Through the coordinator (sealed), the holder refuses beyond the budget; the route shows DENIED and the reason."""
    consent = fed.grant("51", [WORKER], "dibao")
    results = [fed.verify("51", [WORKER], [f"deposit.balance_total<={v}"], consent_id=consent.consent_id)
               for v in (1000, 2000, 3000)]
    assert [r.routing["44"] for r in results] == ["OK"] * BUDGET + ["DENIED"]
    assert uses(fed, consent.consent_id, "deposit.balance_total") == BUDGET
    row = [r for r in audit_rows(fed) if r["consent_id"] == consent.consent_id][-1]
    assert row["decision"] == "refused:PROBING_LIMIT" and row["extra"]["via"] == "coordinator" and row["requester"] == "51"


def test_budget_is_per_consent_and_item(fed: Federation) -> None:
    """Another item under the same consent, or the same item under another consent, has a budget of its own."""
    first, second = fed.grant("51", [WORKER], "dibao"), fed.grant("51", [WORKER], "dibao")
    for v in range(BUDGET):
        assert ask(fed, first, f"income.wage_monthly<={100_000 + v}") == "OK"
    assert "probing limit" in ask(fed, first, "income.wage_monthly<=200000")
    for v in range(BUDGET):
        assert ask(fed, first, f"deposit.balance_total<={100_000 + v}") == "OK"
        assert ask(fed, second, f"income.wage_monthly<={300_000 + v}") == "OK"
    assert "probing limit" in ask(fed, first, "deposit.balance_total<=200000")
    assert "probing limit" in ask(fed, second, "income.wage_monthly<=400000")


def test_budget_survives_a_node_restart(fed: Federation, tmp_path: Path) -> None:
    """A used budget is in the holder's ledger file (and its backups): after a restart the next moving threshold is still refused."""
    consent = fed.grant("51", [WORKER], "dibao")
    for v in range(BUDGET):
        assert ask(fed, consent, f"income.wage_monthly<={500_000 + v}") == "OK"
    made = backup.backup(data_dir(fed, "44"), tmp_path / "bk")
    assert PROBES_DB in {f.name for f in made.files}
    fed.stop_node("44")
    fed.start_node("44")
    assert "probing limit" in ask(fed, consent, "income.wage_monthly<=600000")
    assert ask(fed, consent, f"income.wage_monthly<={500_000 + 1}") == "OK"  # already counted
    assert ask(fed, consent, f"income.wage_monthly<={STANDARD}") == "OK"  # published (read again at start)


def test_a_batch_counts_each_query(fed: Federation) -> None:
    """In one VerifyBatch, each query's moving threshold counts: BUDGET are answered, the rest refused and audited."""
    consent = fed.grant("51", [WORKER], "dibao")
    m = fed.member("51")
    token = subject_token(m.linkage_key, WORKER)
    key = X25519PrivateKey.generate()
    request_id = uuid.uuid4().hex
    queries = []
    for v in (10_000, 20_000, 30_000, 40_000):
        prepared = PreparedQuery("51", "dibao", (token,), (parse_check(f"income.wage_monthly<={v}"),))
        queries.append(sign_query(m.signer, prepared.body(
            audience="44", consent=fed.receipt("51", consent.consent_id), request_id=request_id,
            reply_key=sealing.public_bytes(key.public_key()), reply_suite=sealing.SUITE_NAME)))
    locks = PreparedQuery("51", "dibao", (token,), (), (possession_key(m.linkage_key, WORKER),))
    with fed.coordinator("51") as c:
        seal_key = c.directory()["44"].seal_public_key
    sealed = locked_envelope("44", [(locks, q.SerializeToString()) for q in queries], request_id=request_id,
                             seal_key=seal_key, batch=True).query
    before = audit_head(fed)
    folder = fed.pki / "members" / "51"
    creds = grpc.ssl_channel_credentials(root_certificates=(fed.pki / "ca.pem").read_bytes(),
                                         private_key=(folder / "tls.key").read_bytes(),
                                         certificate_chain=(folder / "tls.pem").read_bytes())
    with grpc.secure_channel(fed.addresses["44"], creds) as channel:
        reply = verification_pb2_grpc.VerificationStub(channel).VerifyBatch(
            verification_pb2.VerifyBatchRequest(sealed=sealed), timeout=10)
    raw = sealing.open_sealed(reply.sealed, kind=sealing.ANSWER, identity=province_uri("51"), private_key=key)
    items = verification_pb2.AnswerBatch.FromString(raw).items
    assert [i.error_code or "OK" for i in items] == ["OK"] * BUDGET + ["PROBING_LIMIT"] * (4 - BUDGET)
    assert uses(fed, consent.consent_id, "income.wage_monthly") == BUDGET
    rows = [r for r in audit_rows(fed, before) if r["consent_id"] == consent.consent_id]
    assert sorted(r["decision"] for r in rows) == sorted(["answered"] * BUDGET + ["refused:PROBING_LIMIT"] * (4 - BUDGET))


def test_household_rounds_use_no_budget(fed: Federation) -> None:
    """A household means test compares nothing at the holder: it neither uses budget nor is refused when it is spent."""
    consent = fed.grant("51", [WORKER], "dibao")
    before = audit_head(fed)
    result = fed.household("51", [WORKER], "510100", consent_id=consent.consent_id)
    assert result.routing["44"] == "OK" and result.decision.verdict == "NOT_ELIGIBLE"
    assert result.decision.totals["income_monthly"] == WORKER_WAGE
    assert [r["decision"] for r in audit_rows(fed, before) if r["consent_id"] == consent.consent_id] == [CONTRIBUTED]
    for item in ("income.wage_monthly", "deposit.balance_total", "vehicle.count", "vehicle.value_total"):
        assert uses(fed, consent.consent_id, item) == 0
    for v in range(BUDGET):
        assert ask(fed, consent, f"income.wage_monthly<={700_000 + v}") == "OK"
    assert "probing limit" in ask(fed, consent, "income.wage_monthly<=800000")
    again = fed.household("51", [WORKER], "510100", consent_id=consent.consent_id)
    assert again.routing["44"] == "OK" and again.decision.totals == result.decision.totals


def test_worker_processes_share_one_budget(tmp_path: Path) -> None:
    """Two ledgers on one file (as two `--workers` processes have) count into one budget, all or nothing per query."""
    path = tmp_path / PROBES_DB
    first, second = ProbeLedger(path, key=b"k" * 32), ProbeLedger(path, key=b"k" * 32)
    try:
        assert first.admit("51", "c-1", {"income.wage_monthly": "le:1"}, 2) == (None, 1)
        assert second.admit("51", "c-1", {"income.wage_monthly": "le:1"}, 2) == (None, 0)  # the same cut
        assert second.admit("51", "c-1", {"income.wage_monthly": "le:2"}, 2) == (None, 1)
        over = first.admit("51", "c-1", {"income.wage_monthly": "le:3", "deposit.balance_total": "le:3"}, 2)
        assert over == ("income.wage_monthly", 0)
        assert first.uses("51", "c-1", "deposit.balance_total") == 0 and second.uses("51", "c-1", "income.wage_monthly") == 2
        with pytest.raises(sqlite3.IntegrityError):  # never decremented
            first._db.execute("DELETE FROM probes")
        text = path.read_bytes() + (tmp_path / f"{PROBES_DB}-wal").read_bytes()
        assert b"le:1" not in text  # cuts are stored only as keyed digests
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        first.close()
        second.close()
