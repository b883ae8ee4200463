"""Free text that is stored or sent never carries an ID number: case references, ingest sources.

Real coordinator and nodes on loopback with mutual TLS; `hedui` runs as a subprocess. A refusal
is one line on stderr that does not repeat the value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.client.client import PeerRefused
from node.coordinator.consents import CONSENT_REQUEST_DOMAIN
from node.crypto import signing
from node.crypto.tokens import subject_token
from node.member import Member
from node.service.consent import commitment
from node.testing import Federation, run_cluster
from node.wire.v1 import coordinator_pb2, verification_pb2
from tests.conftest import STRANGER, WORKER

HEDUI = [sys.executable, "-m", "node.cli.main"]
CHECK = "deposit.balance_total<=2000000"


def hedui(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEDUI, *map(str, args)], capture_output=True, text=True, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def ledger_bytes(fed: Federation) -> bytes:
    data_dir = Member.from_config(fed.coordinator_config).cfg.data_dir  # type: ignore[arg-type]
    return b"".join(p.read_bytes() for p in data_dir.glob("ledger.sqlite*"))


@pytest.fixture(scope="module")
def fed(planted: dict[str, Path]) -> Iterator[Federation]:
    with run_cluster(["51", "44"], data=planted) as federation:
        yield federation


@pytest.mark.parametrize("case", [
    WORKER, f"MZ/2026/{WORKER}", f"{WORKER[:6]}-{WORKER[6:14]}-{WORKER[14:]}", f"{WORKER.lower()}/x",
])
def test_case_reference_holding_an_id_number_is_refused_before_it_is_sent(fed: Federation, case: str) -> None:
    """`consent grant --case` with an ID number in it exits 2 without echoing it, and nothing reaches the ledger."""
    line = one_line_error(hedui("consent", "grant", "--config", fed.configs["51"], "--id", STRANGER,
                                "--purpose", "dibao", "--case", case))
    assert "case reference must not contain an ID number" in line
    assert WORKER not in line and WORKER[6:14] not in line
    assert WORKER.encode() not in ledger_bytes(fed)
    ok = hedui("consent", "grant", "--config", fed.configs["51"], "--id", STRANGER, "--purpose", "dibao",
               "--case", "MZ/2026/000123", "--json")
    assert ok.returncode == 0, ok.stderr


def test_coordinator_refuses_a_case_reference_holding_an_id_number(fed: Federation) -> None:
    """A signed registration whose case reference holds an ID number (an old or hostile client) is refused unstored."""
    m = fed.member("51")
    salt, now_ms = os.urandom(16), int(time.time() * 1000)
    body = coordinator_pb2.ConsentRequestBody(
        requester="51", request_id=uuid.uuid4().hex, nonce=os.urandom(16), issued_at_ms=now_ms, purpose="dibao",
        subject_salt=salt, subject_commitments=[commitment(salt, subject_token(m.linkage_key, STRANGER))],
        not_before_ms=now_ms - 60_000, not_after_ms=now_ms + 86_400_000, case_reference=f"case-{WORKER}",
    ).SerializeToString()
    request = coordinator_pb2.RegisterConsentRequest(body=body, signature=m.signer.sign(CONSENT_REQUEST_DOMAIN, body))
    with fed.coordinator("51") as coordinator, pytest.raises(PeerRefused) as refused:
        coordinator.call("RegisterConsent", request)
    assert refused.value.status == "INVALID_ARGUMENT"
    assert "case reference must not contain an ID number" in str(refused.value) and WORKER not in str(refused.value)
    assert WORKER.encode() not in ledger_bytes(fed)


def test_holder_refuses_a_receipt_whose_case_reference_holds_an_id_number(fed: Federation) -> None:
    """A coordinator-signed receipt carrying an ID number in its case reference (registered before) is not honoured."""
    genuine = fed.grant("51", [WORKER], "dibao")
    body = verification_pb2.ConsentBody.FromString(genuine.receipt.body)
    body.case_reference = WORKER
    raw = body.SerializeToString()
    coordinator = Member.from_config(fed.coordinator_config)  # type: ignore[arg-type]
    legacy = verification_pb2.SignedConsent(body=raw, signature=coordinator.signer.sign(signing.CONSENT, raw))
    with fed.client("51", to="44") as peer, pytest.raises(PeerRefused) as refused:
        peer.verify([WORKER], "dibao", [CHECK], consent=legacy)
    assert refused.value.status == "PERMISSION_DENIED" and "case reference" in str(refused.value)
    assert WORKER not in str(refused.value)
    with fed.client("51", to="44") as peer:  # the same consent without it is answered
        assert peer.verify([WORKER], "dibao", [CHECK], consent=genuine.receipt).answers[0].signature_valid


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_ingest_source_holding_an_id_number_is_refused_without_echo(fed: Federation, tmp_path: Path,
                                                                     suffix: str) -> None:
    """An ingest row whose source holds an ID number rejects the file: the line is named, the number is not."""
    rows = [(STRANGER, "deposit.balance_total", "100", "2026-10-31", "bank:ICBC"),
            (STRANGER, "income.wage_monthly", "100", "2026-10-31", f"hrss/{WORKER}")]
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        path.write_text("id_number,attribute,value,as_of,source\n" + "".join(",".join(r) + "\n" for r in rows))
    else:
        keys = ("id_number", "attribute", "value", "as_of", "source")
        path.write_text("".join(json.dumps(dict(zip(keys, r, strict=True))) + "\n" for r in rows))
    before = hedui("node", "status", "--config", fed.configs["51"], "--json").stdout
    proc = hedui("ingest", "--config", fed.configs["51"], path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    bad_line = 3 if suffix == ".csv" else 2
    assert f"{path}:{bad_line}: source must not contain an ID number" in proc.stderr.splitlines()
    assert WORKER not in proc.stderr
    assert hedui("node", "status", "--config", fed.configs["51"], "--json").stdout == before
