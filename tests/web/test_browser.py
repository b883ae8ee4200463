"""End to end in a real headless browser (Debian's chromium driven by Playwright) against a real
federation: a caseworker decides a household spread over two other provinces, and every refusal
the web application promises is seen as a person would see it. Screenshots go to docs/screenshots/."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from node.client.decision_record import verify_record
from node.domain import idnumber
from node.testing import Federation, run_cluster
from node.testing.standards import standards_document
from node.web.app import create_app
from node.web.desk import Desk
from tests.web.conftest import PASSWORD

# Not importorskip: without Playwright or chromium these tests must fail loudly, never skip.
from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
# Two members, each with data in another province: a wage of 600 yuan in Guangdong (44) and a
# pension of 300 yuan in Zhejiang (33). Chengdu's test standard is 900 yuan a person.
WORKER = idnumber.make("510104", dt.date(1984, 5, 6), 211)
PARENT = idnumber.make("510104", dt.date(1950, 7, 8), 212)
MARKUP = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
STANDARDS = standards_document()  # Chengdu: 900 yuan a person, income and financial assets (24 months)


def _csv(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    lines = ["id_number,attribute,value,as_of,source"] + [f"{i},{a},{v},2026-11-30,test" for i, a, v in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    d = tmp_path_factory.mktemp("web")
    data = {"44": _csv(d / "44.csv", [(WORKER, "income.wage_monthly", 60000)]),
            "33": _csv(d / "33.csv", [(PARENT, "pension.monthly", 30000)]),
            "51": _csv(d / "51.csv", [(WORKER, "hukou.registered", 1)])}
    (d / "standards.toml").write_text(STANDARDS, encoding="utf-8")
    with run_cluster(["51", "44", "33"], data=data, root=d / "fed") as federation:
        federation.publish_standards("51", d / "standards.toml")
        yield federation


@pytest.fixture(scope="module")
def desk(fed: Federation) -> Iterator[Desk]:
    d = Desk(fed.configs["51"])
    d.accounts.add("alice", "caseworker", "510104", PASSWORD)
    d.accounts.add("bob", "caseworker", "510105", PASSWORD)
    d.accounts.add("sara", "supervisor", "510000", PASSWORD)
    d.accounts.add("audrey", "auditor", "510000", PASSWORD)
    yield d
    d.close()


@pytest.fixture(scope="module")
def site(desk: Desk) -> Iterator[str]:
    """`hedui web serve`'s app under uvicorn on a port the test bound itself (listening before the server starts)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(create_app(desk), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _page(browser: Browser, site: str) -> Page:
    context = browser.new_context(base_url=site, viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.on("dialog", lambda d: pytest.fail(f"a script ran: dialog {d.message!r}"))
    return page


def _login(page: Page, name: str, password: str = PASSWORD) -> None:
    page.goto("/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("#login")


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _new_case(page: Page, first_id: str) -> None:
    page.goto("/cases/new")
    page.fill("input[name=applicant]", MARKUP)
    page.fill("input[name=region]", "510104")
    page.select_option("select[name=purpose]", "dibao")
    page.fill("input[name=id_1]", first_id)
    page.fill("input[name=wage_1]", "500")
    page.fill("input[name=id_2]", PARENT)
    page.fill("input[name=deposit_2]", "100")
    page.fill("textarea[name=notes]", MARKUP)
    page.set_input_files("input[name=evidence]", files=[{"name": "authorization.pdf", "mimeType": "application/pdf",
                                                          "buffer": b"%PDF-1.4\n% signed authorization (scan)\n"}])
    page.click("#create")


@pytest.fixture(scope="module")
def case(browser: Browser, site: str, fed: Federation, desk: Desk) -> dict[str, Any]:
    """Alice signs in, is refused a wrong check character, registers the case and runs the test."""
    page = _page(browser, site)
    _shot_login = page.goto("/login")
    assert _shot_login is not None
    _shot(page, "login")
    _login(page, "alice")
    bad = WORKER[:17] + ("1" if WORKER[17] != "1" else "2")
    _new_case(page, bad)
    problems = page.inner_text("#problems")
    assert "member 1: ID number check character does not match (GB 11643)" in problems
    _shot(page, "case-form-refused")
    _new_case(page, WORKER)
    page.wait_for_url("**/cases/c*")
    case_url = page.url
    page.click("#run")
    page.wait_for_selector("#verdict")
    _shot(page, "case")
    info = {"url": case_url, "id": case_url.rsplit("/", 1)[1], "page": page}
    return info


def test_a_caseworker_decides_a_household_spread_over_two_other_provinces(case: dict[str, Any], fed: Federation,
                                                                          desk: Desk) -> None:
    """The case page shows the verdict and allowance the client API (the oracle) computes, each province answered."""
    page: Page = case["page"]
    stored = desk.cases.get(case["id"])
    oracle = fed.household("51", [WORKER, PARENT], "510104", consent_id=stored.consent_id).to_json()
    # (600 + 300) yuan for two is 450 a person under 900: eligible for (900 − 450) × 2 = 900 yuan a month.
    assert oracle["verdict"] == "ELIGIBLE" and oracle["allowance"] == 90000 and oracle["income_per_person"] == 45000
    assert page.get_attribute("#verdict", "data-verdict") == oracle["verdict"]
    assert int(page.get_attribute("#allowance", "data-fen")) == oracle["allowance"]
    assert int(page.get_attribute("#income-pp", "data-fen")) == oracle["income_per_person"]
    statuses = {row.get_attribute("data-province"): row.get_attribute("data-status")
                for row in page.query_selector_all("#routing tr[data-province]")}
    assert statuses == oracle["routing"] == {"33": "OK", "44": "OK", "51": "OK"}
    assert page.inner_text("#routing").count("已答复") == 3
    # The declared wage of 500 yuan is checked against Guangdong's record: a discrepancy, shown without the value.
    outcomes = [c.get_attribute("data-outcome") for c in page.query_selector_all("#persons td[data-outcome]")]
    assert "NOT_SATISFIED" in outcomes and "60000" not in page.content() and "600.00" not in page.inner_text("#persons")
    assert WORKER not in page.content() and PARENT not in page.content()


def test_markup_typed_into_every_text_field_comes_back_as_text(case: dict[str, Any]) -> None:
    """The applicant and notes fields show the typed markup literally and no script of it ran."""
    page: Page = case["page"]
    page.goto(case["url"])
    assert page.inner_text("#applicant") == MARKUP and page.inner_text("#notes") == MARKUP
    assert page.evaluate("window.pwned") is None


def test_the_report_prints_on_a4_with_the_records_digest(case: dict[str, Any], fed: Federation, tmp_path: Path) -> None:
    """The report carries the decision record's digest; the downloaded record has it and verifies offline."""
    page: Page = case["page"]
    page.goto(case["url"] + "/report")
    digest = page.inner_text("#digest")
    with page.expect_download() as download:
        page.click("#verify a")
    record_path = tmp_path / "decision.json"
    download.value.save_as(record_path)
    raw = record_path.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == digest
    checked = verify_record(json.loads(raw), fed.member("51").verifier)
    assert checked.valid and checked.verdict == "ELIGIBLE", checked.problems
    page.emulate_media(media="print")
    _shot(page, "report-print")
    pdf = page.pdf(format="A4", print_background=False)
    assert pdf.startswith(b"%PDF-") and b"/MediaBox [0 0 595" in pdf  # A4: 595 × 842 points
    page.emulate_media(media="screen")


def test_wrong_password_is_refused(browser: Browser, site: str) -> None:
    """A wrong password gets the login page again with the refusal, and no case list."""
    page = _page(browser, site)
    _login(page, "alice", "not the password")
    assert page.is_visible("#refused") and "/login" in page.url


def test_an_expired_session_goes_back_to_the_login_page(browser: Browser, site: str, desk: Desk) -> None:
    """A session idle for longer than the timeout is refused and the caseworker is asked to sign in again."""
    page = _page(browser, site)
    _login(page, "alice")
    page.wait_for_url("**/cases")
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "hedui_session")
    with desk.db.tx() as conn:  # this session's last use moves back past the idle timeout
        conn.execute("UPDATE sessions SET last_ms = last_ms - ? WHERE token_hash = ?",
                     ((desk.sessions.idle_s + 60) * 1000, hashlib.sha256(token.encode()).digest()))
    page.goto("/cases")
    assert "/login?expired=1" in page.url and page.is_visible("#expired")


def test_a_form_without_its_csrf_token_is_refused(case: dict[str, Any], desk: Desk) -> None:
    """Running a check from a form whose token was removed is refused (403) and runs nothing."""
    page: Page = case["page"]
    page.goto(case["url"])
    checked_before = desk.cases.get(case["id"]).checked_ms
    page.evaluate("document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())")
    page.click("#run")
    assert page.is_visible("#error-message") and "security token" in page.inner_text("#error-message")
    assert desk.cases.get(case["id"]).checked_ms == checked_before


def test_a_caseworker_of_another_office_cannot_open_the_case(case: dict[str, Any], browser: Browser, site: str) -> None:
    """Bob (office 510105) gets 403 on Alice's case (510104) and does not see it in his list."""
    page = _page(browser, site)
    _login(page, "bob")
    page.wait_for_url("**/cases")
    assert case["id"] not in page.inner_text("#cases")
    response = page.goto(case["url"])
    assert response is not None and response.status == 403


def test_an_auditor_reads_the_access_log_and_cannot_run_a_check(case: dict[str, Any], browser: Browser, site: str,
                                                                desk: Desk) -> None:
    """The auditor sees who did what on which case under which consent, exports it, and is refused a check."""
    page = _page(browser, site)
    _login(page, "audrey")
    page.wait_for_url("**/log")
    log = page.inner_text("#log")
    alice = desk.db.one("SELECT id FROM accounts WHERE name = 'alice'")[0]
    assert alice in log and case["id"] in log and "case.check" in log and desk.cases.get(case["id"]).consent_id in log
    _shot(page, "access-log")
    with page.expect_download() as download:
        page.click("#export-csv")
    exported = Path(download.value.path()).read_text(encoding="utf-8")
    assert "case.check" in exported and WORKER not in exported and PARENT not in exported
    # A hand-made form with the auditor's own valid token: the role, not the token, refuses it.
    checked_before = desk.cases.get(case["id"]).checked_ms
    page.evaluate("""(url) => { const f = document.createElement('form'); f.method = 'post'; f.action = url + '/run';
        const i = document.createElement('input'); i.name = 'csrf'; i.value = document.querySelector('input[name=csrf]').value;
        f.appendChild(i); document.body.appendChild(f); f.submit(); }""", case["url"])
    page.wait_for_selector("#error-message")
    assert "role" in page.inner_text("#error-message")
    assert desk.cases.get(case["id"]).checked_ms == checked_before
    assert page.goto(case["url"]).status == 403


def test_the_case_list_and_federation_pages_for_the_screenshots(case: dict[str, Any]) -> None:
    """The case list shows the case with its status and days; the federation page lists every province serving."""
    page: Page = case["page"]
    page.goto("/cases")
    row = page.inner_text("#cases")
    assert case["id"] in row and "已核对" in row
    _shot(page, "cases")
    page.goto("/federation")
    assert page.inner_text("#directory").count("SERVING") == 3
    _shot(page, "federation")
    page.click("#lang")
    assert "Federation" in page.inner_text("h1")
    page.goto(case["url"])
    _shot(page, "case-en")
    page.click("#lang")


def _streams(pdf: bytes) -> bytes:
    """Every content stream of a PDF, inflated where it is compressed."""
    import re
    import zlib

    out = []
    for raw in re.findall(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            out.append(zlib.decompress(raw))
        except zlib.error:
            out.append(raw)
    return b"\n".join(out)


def test_the_report_downloads_as_an_a4_pdf_with_the_records_digest(case: dict[str, Any], desk: Desk) -> None:
    """GET report.pdf is an A4 PDF attachment with the CJK font embedded, the digest as text, and is audited."""
    page: Page = case["page"]
    response = page.request.get(case["url"] + "/report.pdf")
    assert response.status == 200 and response.headers["content-type"] == "application/pdf"
    assert response.headers["content-disposition"] == f'attachment; filename="report-{case["id"]}.pdf"'
    assert "default-src 'none'" in response.headers["content-security-policy"]
    body = response.body()
    assert body.startswith(b"%PDF-") and b"/MediaBox [0 0 595.28 841.89]" in body  # A4 in points
    assert b"WenQuanYi" in body or b"MicroHei" in body  # the Chinese labels' font is embedded
    digest = desk.cases.get(case["id"]).result["record_sha256"]
    text = _streams(body)
    assert f"({digest})".encode() in text and b"hedui household verify --ca ca.pem" in text
    assert WORKER.encode() not in text and PARENT.encode() not in text
    alice = desk.db.one("SELECT id FROM accounts WHERE name = 'alice'")[0]
    assert any(r.action == "case.report_pdf" and r.account == alice and r.case == case["id"]
               for r in desk.access_log(desk.accounts.get(desk.db.one("SELECT id FROM accounts WHERE name = 'audrey'")[0])))


@pytest.mark.parametrize("name", ["bob", "audrey"])
def test_another_offices_caseworker_and_an_auditor_cannot_download_the_pdf(case: dict[str, Any], browser: Browser,
                                                                           site: str, name: str) -> None:
    """Bob (another office) and the auditor get 403 for the case's PDF report, and no PDF."""
    page = _page(browser, site)
    _login(page, name)
    page.wait_for_load_state()
    response = page.request.get(case["url"] + "/report.pdf")
    assert response.status == 403 and not response.body().startswith(b"%PDF")
