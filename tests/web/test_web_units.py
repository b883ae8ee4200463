"""The web application's security mechanisms on a real SQLite database and the real ASGI app:
Argon2id, lock-out, sessions, CSRF, the CSP, escaping, form validation and error pages."""

from __future__ import annotations

from collections.abc import Iterator

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.routing import Route

from node.domain import idnumber
from node.store import audit
from node.web import csrf
from node.web.accounts import LOCK_MS, MAX_FAILURES, LoginRefused, check_password, hash_password
from node.web.desk import Desk
from node.web.sessions import MAX_AGE_S
from tests.web.conftest import ORIGIN, PASSWORD, csrf_of, login

GOOD_ID = idnumber.make("510104", dt.date(1980, 3, 1), 101)
BAD_ID = GOOD_ID[:17] + ("0" if GOOD_ID[17] != "0" else "1")
MARKUP = '<script>alert("x")</script><b onmouseover=1>bold</b>'


def test_passwords_are_stored_as_argon2id(desk: Desk) -> None:
    """An account's password is kept only as an Argon2id hash that verifies the right password and no other."""
    stored = desk.db.one("SELECT pw_hash FROM accounts WHERE name = 'alice'")[0]
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert check_password(stored, PASSWORD) and not check_password(stored, PASSWORD + "x")
    assert hash_password(PASSWORD) != hash_password(PASSWORD)  # salted


def test_repeated_failures_lock_the_account_until_the_lock_expires(desk: Desk) -> None:
    """After MAX_FAILURES wrong passwords even the right one is refused, until LOCK_MS has passed."""
    now = 1_900_000_000_000
    for _ in range(MAX_FAILURES):
        with pytest.raises(LoginRefused):
            desk.accounts.authenticate("alice", "wrong password!", now_ms=now)
    with pytest.raises(LoginRefused) as refused:
        desk.accounts.authenticate("alice", PASSWORD, now_ms=now + 1)
    assert refused.value.locked
    assert desk.accounts.authenticate("alice", PASSWORD, now_ms=now + LOCK_MS + 1).name == "alice"


def test_a_session_ends_after_the_idle_timeout_and_after_a_working_day(desk: Desk) -> None:
    """A session is found while used within the idle timeout, and gone after it or after MAX_AGE_S."""
    t0 = 1_900_000_000_000
    session = desk.sessions.create("wabc", now_ms=t0)
    assert desk.sessions.get(session.token, now_ms=t0 + (desk.sessions.idle_s - 1) * 1000) is not None
    assert desk.sessions.get(session.token, now_ms=t0 + (2 * desk.sessions.idle_s) * 1000) is None
    busy = desk.sessions.create("wabc", now_ms=t0)
    step = (desk.sessions.idle_s - 1) * 1000
    at = t0
    while at + step < t0 + MAX_AGE_S * 1000:
        at += step
        assert desk.sessions.get(busy.token, now_ms=at) is not None
    assert desk.sessions.get(busy.token, now_ms=t0 + MAX_AGE_S * 1000 + 1) is None
    stored = desk.db.all("SELECT token_hash FROM sessions")
    assert all(session.token.encode() not in row[0] for row in stored)  # only hashes are kept


def test_login_sets_a_fresh_httponly_samesite_strict_cookie(client: object) -> None:
    """Signing in replaces the anonymous session's token with a new one, HttpOnly and SameSite=Strict."""
    before = client.get("/login").cookies.get("hedui_session")  # type: ignore[attr-defined]
    response = login(client)
    assert response.status_code == 303 and response.headers["location"] == "/cases"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Secure" not in cookie  # plain HTTP on loopback; Secure behind TLS (next test)
    assert response.cookies.get("hedui_session") not in (None, before)


def test_cookies_are_secure_behind_tls(desk: Desk) -> None:
    """Served over HTTPS, the session cookie carries Secure and responses carry HSTS."""
    from starlette.testclient import TestClient

    from node.web.app import create_app

    with TestClient(create_app(desk), base_url="https://testserver") as c:
        page = c.get("/login")
        assert "Secure" in page.headers["set-cookie"]
        assert page.headers["strict-transport-security"].startswith("max-age=")


def test_wrong_password_is_refused_and_audited_by_account_id(client: object, desk: Desk) -> None:
    """A wrong password gets 401 and the login page again; the audit names the account's identifier, not its name."""
    response = login(client, password="not the password")
    assert response.status_code == 401 and 'id="refused"' in response.text
    rows = [json.loads(e.payload) for e in desk.audit_log.entries()]
    refused = [r for r in rows if r["decision"] == "web.login.refused"]
    alice = desk.db.one("SELECT id FROM accounts WHERE name = 'alice'")[0]
    assert refused and refused[-1]["extra"]["account"] == alice and refused[-1]["requester"] == "51"
    assert all("alice" not in json.dumps(r) for r in rows)


@pytest.mark.parametrize("change", ["no token", "wrong token", "foreign origin", "no origin"])
def test_a_form_without_the_sessions_token_or_from_another_site_is_refused(client: object, change: str) -> None:
    """Every POST needs this session's CSRF token and this site's Origin; anything else is 403 and nothing happens."""
    login(client)
    token = csrf_of(client.get("/cases").text)  # type: ignore[attr-defined]
    data = {"csrf": token}
    headers = {"Origin": ORIGIN}
    if change == "no token":
        data = {}
    elif change == "wrong token":
        data = {"csrf": token[:-2] + "xx"}
    elif change == "foreign origin":
        headers = {"Origin": "http://evil.example"}
    else:
        headers = {}
    response = client.post("/logout", data=data, headers=headers, follow_redirects=False)  # type: ignore[attr-defined]
    assert response.status_code == 403
    assert client.get("/cases", follow_redirects=False).status_code == 200  # type: ignore[attr-defined]  # still signed in


def test_a_route_accepting_post_without_declared_csrf_handling_stops_the_app() -> None:
    """CSRF fails closed: an unsafe route that neither checks nor declares an exemption is a startup error."""
    async def handler(request: object) -> None: ...
    with pytest.raises(RuntimeError, match="without CSRF protection"):
        csrf.check_routes([Route("/x", handler, methods=["POST"])])
    csrf.check_routes([Route("/x", csrf.exempt("webhook signed by other means")(handler), methods=["POST"])])


@pytest.mark.parametrize("path", ["/login", "/cases", "/static/style.css", "/no-such-page", "/cases/cnothere"])
def test_every_response_carries_the_one_content_security_policy(client: object, path: str) -> None:
    """Pages, redirects, static files and error pages all carry default-src 'none' and frame-ancestors 'none'."""
    login(client)
    response = client.get(path, follow_redirects=False)  # type: ignore[attr-defined]
    policy = response.headers["content-security-policy"]
    assert policy.startswith("default-src 'none'") and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["x-content-type-options"] == "nosniff" and response.headers["x-frame-options"] == "DENY"


def test_markup_typed_into_text_fields_comes_back_escaped(client: object) -> None:
    """Script and markup in the applicant and notes fields are shown as text, never as markup."""
    login(client)
    token = csrf_of(client.get("/cases/new").text)  # type: ignore[attr-defined]
    response = client.post("/cases", data={"csrf": token, "applicant": MARKUP, "notes": MARKUP, "region": MARKUP,  # type: ignore[attr-defined]
                                           "wage_1": MARKUP, "purpose": MARKUP},
                           headers={"Origin": ORIGIN})
    assert response.status_code == 400
    assert "<script>" not in response.text and "<b onmouseover" not in response.text
    assert "&lt;script&gt;alert(" in response.text


def test_an_id_number_with_a_wrong_check_character_is_refused_in_the_form(client: object) -> None:
    """A member's ID number whose GB 11643 check character is wrong gets a clear message, and the number is not echoed."""
    login(client)
    token = csrf_of(client.get("/cases/new").text)  # type: ignore[attr-defined]
    response = client.post("/cases", data={"csrf": token, "region": "510104", "purpose": "dibao", "id_1": BAD_ID},  # type: ignore[attr-defined]
                           files={"evidence": ("form.pdf", b"%PDF-1.4", "application/pdf")}, headers={"Origin": ORIGIN})
    assert response.status_code == 400
    assert "member 1: ID number check character does not match (GB 11643)" in response.text
    assert BAD_ID not in response.text and BAD_ID[:17] not in response.text


def test_bad_requests_get_an_error_page_never_a_traceback(client: object) -> None:
    """Unknown cases, oversized bodies and wrong roles get an HTTP error page with one line, no traceback."""
    login(client)
    missing = client.get("/cases/cnothere")  # type: ignore[attr-defined]
    assert missing.status_code == 404 and 'id="error-message"' in missing.text and "Traceback" not in missing.text
    huge = client.post("/cases", content=b"x", headers={"Content-Length": str(10**9), "Origin": ORIGIN})  # type: ignore[attr-defined]
    assert huge.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked, counted as it arrives
        for _ in range(40):
            yield b"x" * (1024 * 1024)

    chunked = client.post("/login", content=chunks(), headers={  # type: ignore[attr-defined]
        "Origin": ORIGIN, "Content-Type": "application/x-www-form-urlencoded"})
    assert chunked.status_code == 413 and "Traceback" not in chunked.text
    assert client.get("/log").status_code == 403  # type: ignore[attr-defined]  # a caseworker is not an auditor


def test_an_auditor_sees_the_access_log_and_no_case(client: object) -> None:
    """Auditors land on the access log; the case list and the new-case form are refused to them."""
    response = login(client, "audrey")
    assert response.headers["location"] == "/log"
    assert client.get("/log").status_code == 200  # type: ignore[attr-defined]
    assert client.get("/cases").status_code == 403  # type: ignore[attr-defined]
    assert client.get("/cases/new").status_code == 403  # type: ignore[attr-defined]


def test_web_audit_records_keep_the_record_contract() -> None:
    """A web audit record carries the account's identifier beside the province and refuses an ID number anywhere."""
    rec = audit.web_event("web.case.check", province="51", account="w0123456789ab", case_id="c0123456789",
                          consent_id="c-abc", purpose="dibao", statuses={"44": "OK"})
    assert rec.requester == "51" and rec.extra == {"44": "OK", "account": "w0123456789ab", "case": "c0123456789"}
    with pytest.raises(ValueError):
        audit.web_event("web.case.view", province="51", account=GOOD_ID)
    with pytest.raises(ValueError):
        audit.web_event("web.case.view", province="51", account="w1", case_id=GOOD_ID)


def test_user_add_reads_the_password_from_stdin_and_keeps_the_database_private(node_config: Path) -> None:
    """`hedui web user add --password-stdin` creates the account; web.sqlite is 0600; a short password is exit 2."""
    cmd = [sys.executable, "-m", "node.cli.main", "web", "user", "add", "--config", str(node_config), "--role", "supervisor",
           "--password-stdin", "--json"]
    done = subprocess.run([*cmd, "--name", "sam"], input=PASSWORD + "\n", capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    account = json.loads(done.stdout)
    assert account["role"] == "supervisor" and account["office"] == "510000" and account["id"].startswith("w")
    desk = Desk(node_config)
    try:
        assert oct(os.stat(desk.db.path).st_mode & 0o777) == "0o600"
        assert desk.accounts.get(account["id"]).name == "sam"
    finally:
        desk.close()
    short = subprocess.run([*cmd, "--name", "sid"], input="short\n", capture_output=True, text=True, check=False)
    assert short.returncode == 2 and short.stderr.count("\n") == 1 and "Traceback" not in short.stderr


def test_without_a_cjk_font_the_pdf_report_falls_back_to_english_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine with no CJK font the PDF still builds, A4, in a core font with English labels and the digest."""
    from node.web import pdf
    from node.web.cases import Case, MemberInput, Status

    result = {"household": {"verdict": "ELIGIBLE", "allowance": 90000, "income_per_person": 45000,
                            "standard_per_person": 90000, "members": 1, "as_of": {"from": "2026-11-30", "to": "2026-11-30"},
                            "period": "2026-12", "rules": {"income": True}, "routing": {"44": "OK"}, "missing": []},
              "persons": [], "record_sha256": "ab" * 32}
    case = Case("c0123456789", "510104", "w1", 0, 0, Status.CHECKED, "510104", "dibao", "张三", "",
                (MemberInput(GOOD_ID),), "consent1", 0, "e" * 64, "c.pdf", result, "{}", 0)
    monkeypatch.setattr(pdf, "CJK_FONTS", ())
    body = pdf.report_pdf(case, "51", "zh", compress=False)
    assert body.startswith(b"%PDF-") and b"/MediaBox [0 0 595.28 841.89]" in body
    assert b"(Household means test" in body and b"(" + b"ab" * 32 + b")" in body and b"FontFile2" not in body
