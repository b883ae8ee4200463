"""The batch page against a real federation: a caseworker uploads households and their consents, the
batch runs in the background through the node's client API, and results and rejects download."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.domain import idnumber
from node.testing import Federation, run_cluster
from node.web.desk import Desk
from tests.integration.test_batch import hedui
from tests.web.conftest import ORIGIN, PASSWORD, csrf_of, login
from tests.web.test_browser import PARENT, STANDARDS, WORKER, _csv

LONER = idnumber.make("510104", dt.date(1990, 1, 2), 213)  # held nowhere: income 0, eligible for the whole standard
BAD = LONER[:17] + ("1" if LONER[17] != "1" else "2")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    d = tmp_path_factory.mktemp("webbatch")
    data = {"44": _csv(d / "44.csv", [(WORKER, "income.wage_monthly", 60000)]),
            "33": _csv(d / "33.csv", [(PARENT, "pension.monthly", 30000)]),
            "51": _csv(d / "51.csv", [(WORKER, "hukou.registered", 1)])}
    (d / "standards.toml").write_text(STANDARDS, encoding="utf-8")
    with run_cluster(["51", "44", "33"], data=data, root=d / "fed") as federation:
        federation.publish_standards("51", d / "standards.toml")
        yield federation


@pytest.fixture(scope="module")
def uploads(fed: Federation, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A households CSV (two good households, one row with a wrong check character) and its consents CSV."""
    d = tmp_path_factory.mktemp("uploads")
    households = d / "households.csv"
    households.write_text(f"household,id_number,region\nh-two,{WORKER},510104\nh-two,{PARENT},510104\n"
                          f"h-one,{LONER},\nh-bad,{BAD},510104\n", encoding="utf-8")
    consents = d / "consents.csv"
    proc = hedui("consent", "grant-batch", "--config", fed.configs["51"], "--in", households, "--purpose", "dibao",
                 "--out", consents)
    assert proc.returncode == 0, proc.stderr
    return {"households": households.read_bytes(), "consents": consents.read_bytes()}


@pytest.fixture(scope="module")
def desk(fed: Federation) -> Iterator[Desk]:
    d = Desk(fed.configs["51"])
    d.accounts.add("alice", "caseworker", "510104", PASSWORD)
    d.accounts.add("bob", "caseworker", "510105", PASSWORD)
    d.accounts.add("audrey", "auditor", "510000", PASSWORD)
    yield d
    d.close()


def _client(desk: Desk, name: str) -> Any:
    from starlette.testclient import TestClient

    from node.web.app import create_app

    client = TestClient(create_app(desk), base_url=ORIGIN, raise_server_exceptions=False)
    assert login(client, name).status_code == 303
    return client


def _upload(client: Any, uploads: dict[str, bytes], **fields: str) -> Any:
    token = csrf_of(client.get("/cases").text if "auditor" not in fields else client.get("/log").text)
    return client.post("/batches", data={"csrf": token, "purpose": "dibao", "region": "510104", **fields},
                       files={"households": ("households.csv", uploads["households"], "text/csv"),
                              "consents": ("consents.csv", uploads["consents"], "text/csv")},
                       headers={"Origin": ORIGIN}, follow_redirects=False)


@pytest.fixture(scope="module")
def batch(desk: Desk, uploads: dict[str, bytes]) -> dict[str, Any]:
    """Alice uploads the batch; the test waits for its background thread, then reads the pages."""
    client = _client(desk, "alice")
    response = _upload(client, uploads)
    assert response.status_code == 303, response.text
    batch_id = response.headers["location"].rsplit("/", 1)[1]
    desk.batches.join(batch_id, timeout=120)
    return {"id": batch_id, "client": client}


def test_an_uploaded_batch_runs_to_done_and_downloads_one_result_line_per_household(
        batch: dict[str, Any], fed: Federation, desk: Desk, tmp_path: Path) -> None:
    """Progress reaches done; results.jsonl has one verdict line per good household, equal to the oracle's,
    and verifies offline as check-batch results do."""
    client = batch["client"]
    progress = client.get(f"/batches/{batch['id']}/progress").json()
    assert progress["status"] == "done" and progress["done"] == progress["total"] == 2 and progress["percent"] == 100
    assert progress["rejected"] == 1 and progress["error"] == ""
    page = client.get(f"/batches/{batch['id']}")
    assert 'data-status="done"' in page.text and 'http-equiv="refresh"' not in page.text  # refreshes only while running
    response = client.get(f"/batches/{batch['id']}/results.jsonl")
    assert response.status_code == 200 and "attachment" in response.headers["content-disposition"]
    assert "default-src 'none'" in response.headers["content-security-policy"]
    lines = {r["household"]: r for r in map(json.loads, response.text.splitlines())}
    assert set(lines) == {"h-two", "h-one"}
    consent = lines["h-two"]["consent_id"]
    oracle = fed.household("51", [WORKER, PARENT], "510104", consent_id=consent).to_json()
    assert lines["h-two"]["verdict"] == oracle["verdict"] == "ELIGIBLE"
    assert lines["h-two"]["allowance"] == oracle["allowance"] == 90000
    assert lines["h-one"]["verdict"] == "ELIGIBLE" and lines["h-one"]["allowance"] == 90000
    (tmp_path / "results.jsonl").write_bytes(response.content)
    proc = hedui("household", "verify", "--pki", fed.pki, tmp_path / "results.jsonl")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = desk.batches.root / batch["id"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir()) and len(list(folder.iterdir())) == 4
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_bad_row_shows_in_the_rejects_without_its_id_number(batch: dict[str, Any]) -> None:
    """The row with a wrong check character is in rejects.csv by line and reason; no ID number is in it."""
    response = batch["client"].get(f"/batches/{batch['id']}/rejects.csv")
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["line"], r["household"]) for r in rows] == [("5", "h-bad")] and "check character" in rows[0]["reason"]
    assert BAD not in response.text and LONER not in response.text and WORKER not in response.text


def test_the_batch_is_audited_by_account_and_refused_to_others(batch: dict[str, Any], desk: Desk,
                                                               uploads: dict[str, bytes]) -> None:
    """Start, end and downloads are audited with the account id; another office's caseworker and an auditor get 403."""
    alice = desk.db.one("SELECT id FROM accounts WHERE name = 'alice'")[0]
    auditor = desk.accounts.get(desk.db.one("SELECT id FROM accounts WHERE name = 'audrey'")[0])
    actions = {r.action for r in desk.access_log(auditor) if r.account == alice and r.case == batch["id"]}
    assert {"batch.start", "batch.end", "batch.results", "batch.rejects"} <= actions
    bob = _client(desk, "bob")
    for path in ("", "/progress", "/results.jsonl", "/rejects.csv"):
        assert bob.get(f"/batches/{batch['id']}{path}").status_code == 403
    assert batch["id"] not in bob.get("/batches").text
    audrey = _client(desk, "audrey")
    assert audrey.get("/batches").status_code == 403
    assert audrey.get(f"/batches/{batch['id']}/results.jsonl").status_code == 403
    assert _upload(audrey, uploads, auditor="1").status_code == 403


def test_a_consents_file_that_grant_batch_did_not_write_is_refused_with_one_line(desk: Desk, uploads: dict[str, bytes]) -> None:
    """A consents file that grant-batch did not write is refused at upload (400), and nothing is kept."""
    client = _client(desk, "alice")
    before = set(desk.batches.root.iterdir())
    response = _upload(client, {**uploads, "consents": b"not,a,consents,file\n1,2,3,4\n"})
    assert response.status_code == 400 and "consents.csv: header must be" in response.text and "Traceback" not in response.text
    assert set(desk.batches.root.iterdir()) == before


def test_a_running_batchs_page_refreshes_itself_and_offers_no_rejects_yet(desk: Desk) -> None:
    """While a batch runs its page reloads every two seconds (no script needed) and the rejects are not offered yet."""
    alice = desk.db.one("SELECT id FROM accounts WHERE name = 'alice'")[0]
    with desk.db.tx() as conn:  # a batch as its background thread leaves it mid-way
        conn.execute("INSERT INTO batches VALUES ('b00running0', '510104', ?, 0, 'dibao', '', 'running', 10, 4, 0, 0, '', 0)",
                     (alice,))
    client = _client(desk, "alice")
    page = client.get("/batches/b00running0")
    assert '<meta http-equiv="refresh" content="2">' in page.text and 'value="4"' in page.text
    assert "rejects.csv" not in page.text
    assert client.get("/batches/b00running0/progress").json()["percent"] == 40
