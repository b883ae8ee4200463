"""The Starlette application: thin handlers that parse a request, call `Desk`, and render a template."""

from __future__ import annotations

import csv
import functools
import io
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from node import logs
from node.client.client import PeerRefused, PeerUnreachable
from node.domain.regions import PROVINCES
from node.errors import BadInput, HeduiError
from node.web import csrf, i18n, pdf
from node.web.accounts import Account, LoginRefused, Role
from node.web.batches import MAX_CSV
from node.web.cases import FormErrors, parse_case
from node.web.csp import SecurityHeaders
from node.web.desk import MAX_EVIDENCE, Desk, Forbidden, NotFound
from node.web.sessions import COOKIE, Session

MAX_BODY: Final[int] = MAX_EVIDENCE + 1024 * 1024
Handler = Callable[..., Awaitable[Response]]
_log = logs.get("web")


class BodyLimit:
    """ASGI middleware: refuse a request body larger than MAX_BODY (413) before it is parsed, whether
    it announces its length or arrives chunked (bytes are counted as they are received)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            await HTMLResponse("request too large", status_code=413)(scope, receive, send)
            return
        received, refused, started = 0, False, False

        async def counted_send(message: dict) -> None:
            nonlocal started
            if refused:
                return  # the 413 is out; whatever the handler still sends is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def counted_receive() -> dict:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY:
                    if not started and not refused:
                        await HTMLResponse("request too large", status_code=413)(scope, receive, send)
                    refused = True
                    return {"type": "http.disconnect"}  # the handler stops reading: nothing more is stored
            return message

        await self.app(scope, counted_receive, counted_send)


def yuan(fen: int | None) -> str:
    """Integer fen as yuan for display: 123456 -> '1,234.56'."""
    if fen is None:
        return "—"
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100:,}.{abs(fen) % 100:02d}"


class Web:
    """Handlers bound to one Desk, with the templates."""

    def __init__(self, desk: Desk) -> None:
        self.desk = desk
        self.env = Environment(loader=PackageLoader("node.web", "templates"), autoescape=select_autoescape(default=True))
        self.env.globals.update(yuan=yuan, provinces=PROVINCES)
        self.env.filters["datetime"] = lambda s: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(s))

    # -- rendering -------------------------------------------------------------------------

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        lang = i18n.pick(request.cookies.get(i18n.COOKIE))
        session: Session | None = getattr(request.state, "session", None)
        html = self.env.get_template(name).render(
            request=request, lang=lang, t=functools.partial(i18n.text, lang),
            status_words=functools.partial(i18n.status, lang), account=getattr(request.state, "account", None),
            csrf_token=session.csrf if session else "", province=self.desk.province, path=request.url.path, **context)
        return HTMLResponse(html, status_code=status)

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", status=status, message=message)

    def set_session(self, request: Request, response: Response, session: Session) -> None:
        response.set_cookie(COOKIE, session.token, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")

    # -- wrappers --------------------------------------------------------------------------

    def signed_in(self, handler: Handler) -> Handler:
        """Load the session and account; an expired or absent one goes back to the login page."""
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            token = request.cookies.get(COOKIE)
            session = await run_in_threadpool(self.desk.sessions.get, token)
            account = self.desk.accounts.get(session.account_id) if session and session.account_id else None
            if session is None or account is None:
                if request.method in csrf.SAFE_METHODS:
                    return RedirectResponse("/login?expired=1" if token else "/login", status_code=303)
                return self.error(request, 403, i18n.text(i18n.pick(request.cookies.get(i18n.COOKIE)), "expired"))
            request.state.session, request.state.account = session, account
            return await handler(request)
        return endpoint

    def form_action(self, handler: Callable[[Request, FormData], Awaitable[Response]], *, max_files: int = 1) -> Handler:
        """Parse the form and check its CSRF token against the session's before the handler runs."""
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            session: Session | None = getattr(request.state, "session", None)
            if session is None:
                session = await run_in_threadpool(self.desk.sessions.get, request.cookies.get(COOKIE))
                request.state.session = session
            if not csrf.same_origin(request.url.scheme, request.headers.get("host", ""), request.headers.get("origin"),
                                    request.headers.get("referer")):
                return self.error(request, 403, "request does not come from this site")  # before any body is read
            form = await request.form(max_files=max_files, max_fields=100, max_part_size=64 * 1024)
            try:
                csrf.verify(scheme=request.url.scheme, host=request.headers.get("host", ""),
                            origin=request.headers.get("origin"), referer=request.headers.get("referer"),
                            expected=session.csrf if session else None, submitted=form.get(csrf.FIELD))
            except csrf.CsrfRefused as exc:
                account: Account | None = getattr(request.state, "account", None)
                await run_in_threadpool(self.desk.audit, "refused.csrf", account.id if account else "")
                return self.error(request, 403, str(exc))
            return await handler(request, form)
        return csrf.protected(endpoint)

    # -- login -----------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        session = await run_in_threadpool(self.desk.sessions.get, request.cookies.get(COOKIE))
        if session is None:
            session = await run_in_threadpool(self.desk.sessions.create)
        request.state.session = session
        expired = request.query_params.get("expired") == "1"
        response = self.render(request, "login.html", expired=expired, refused=False)
        self.set_session(request, response, session)
        return response

    async def login(self, request: Request, form: FormData) -> Response:
        name, password = str(form.get("name", ""))[:64], str(form.get("password", ""))
        try:
            account = await run_in_threadpool(self.desk.accounts.authenticate, name, password)
        except LoginRefused as exc:
            await run_in_threadpool(self.desk.audit, "login.locked" if exc.locked else "login.refused", exc.account_id)
            return self.render(request, "login.html", status=401, expired=False, refused=True)
        old = request.state.session
        self.desk.sessions.end(old.token if old else None)
        session = await run_in_threadpool(self.desk.sessions.create, account.id)  # a new token: no fixation
        await run_in_threadpool(self.desk.audit, "login", account.id)
        response = RedirectResponse("/log" if account.role is Role.AUDITOR else "/cases", status_code=303)
        self.set_session(request, response, session)
        return response

    async def logout(self, request: Request, form: FormData) -> Response:
        await run_in_threadpool(self.desk.audit, "logout", request.state.account.id)
        self.desk.sessions.end(request.state.session.token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    async def lang(self, request: Request) -> Response:
        target = request.query_params.get("next", "/")
        if not target.startswith("/") or target.startswith("//") or "\\" in target:
            target = "/"
        response = RedirectResponse(quote(target, safe="/?=&"), status_code=303)
        response.set_cookie(i18n.COOKIE, i18n.pick(request.path_params["code"]), samesite="strict", path="/",
                            secure=request.url.scheme == "https", httponly=True)
        return response

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/log" if request.state.account.role is Role.AUDITOR else "/cases", status_code=303)

    # -- cases -----------------------------------------------------------------------------

    async def case_list(self, request: Request) -> Response:
        cases = await run_in_threadpool(self.desk.list_for, request.state.account)
        return self.render(request, "cases.html", cases=cases)

    async def case_form(self, request: Request) -> Response:
        self.desk.require(request.state.account, Role.CASEWORKER, Role.SUPERVISOR, action="create")
        return self.render(request, "case_new.html", fields={}, problems=[], purposes=self.desk.purposes)

    async def case_create(self, request: Request, form: FormData) -> Response:
        account = request.state.account
        self.desk.require(account, Role.CASEWORKER, Role.SUPERVISOR, action="create")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        upload = form.get("evidence")
        try:
            data = parse_case(fields, province=self.desk.province, purposes=self.desk.purposes)
            if not isinstance(upload, UploadFile) or not upload.filename:
                raise FormErrors([("evidence", "attach the scanned signed authorization")])
        except FormErrors as exc:
            shown = {k: v for k, v in fields.items() if not k.startswith("id_") and k != csrf.FIELD}
            return self.render(request, "case_new.html", status=400, fields=shown, problems=exc.problems,
                               purposes=self.desk.purposes)
        evidence = await upload.read(MAX_EVIDENCE + 1)
        case = await run_in_threadpool(self.desk.create, account, data, evidence)
        return RedirectResponse(f"/cases/{case.id}", status_code=303)

    async def case_page(self, request: Request) -> Response:
        account = request.state.account
        case = await run_in_threadpool(self.desk.case_for, account, request.path_params["case_id"])
        await run_in_threadpool(self.desk.audit, "case.view", account.id, case=case)
        return self.render(request, "case.html", case=case, result=case.result)

    async def case_run(self, request: Request, form: FormData) -> Response:
        case = await run_in_threadpool(self.desk.run, request.state.account, request.path_params["case_id"])
        return RedirectResponse(f"/cases/{case.id}", status_code=303)

    async def case_revoke(self, request: Request, form: FormData) -> Response:
        case = await run_in_threadpool(self.desk.revoke, request.state.account, request.path_params["case_id"])
        return RedirectResponse(f"/cases/{case.id}", status_code=303)

    async def case_close(self, request: Request, form: FormData) -> Response:
        case = await run_in_threadpool(self.desk.close_case, request.state.account, request.path_params["case_id"])
        return RedirectResponse(f"/cases/{case.id}", status_code=303)

    async def case_report(self, request: Request) -> Response:
        account = request.state.account
        case = await run_in_threadpool(self.desk.case_for, account, request.path_params["case_id"], action="report")
        if case.result is None:
            return self.error(request, 409, "run the check before printing the report")
        await run_in_threadpool(self.desk.audit, "case.report", account.id, case=case)
        return self.render(request, "report.html", case=case, result=case.result)

    async def case_report_pdf(self, request: Request) -> Response:
        """The report as an A4 PDF download (same roles, office and audit as the report page)."""
        account = request.state.account
        case = await run_in_threadpool(self.desk.case_for, account, request.path_params["case_id"], action="report")
        if case.result is None:
            return self.error(request, 409, "run the check before printing the report")
        body = await run_in_threadpool(pdf.report_pdf, case, self.desk.province, i18n.pick(request.cookies.get(i18n.COOKIE)))
        await run_in_threadpool(self.desk.audit, "case.report_pdf", account.id, case=case)
        return Response(body, media_type="application/pdf", headers={
            "Content-Disposition": f'attachment; filename="report-{case.id}.pdf"'})

    async def case_record(self, request: Request) -> Response:
        account = request.state.account
        case = await run_in_threadpool(self.desk.case_for, account, request.path_params["case_id"], action="record")
        if not case.record:
            return self.error(request, 409, "run the check first")
        await run_in_threadpool(self.desk.audit, "case.record", account.id, case=case)
        return Response(case.record, media_type="application/json", headers={
            "Content-Disposition": f'attachment; filename="decision-{case.id}.json"'})

    # -- batches ---------------------------------------------------------------------------

    async def batch_list(self, request: Request) -> Response:
        batches = await run_in_threadpool(self.desk.batch_list, request.state.account)
        return self.render(request, "batches.html", batches=batches, purposes=self.desk.purposes)

    async def batch_create(self, request: Request, form: FormData) -> Response:
        account = request.state.account
        self.desk.require(account, Role.CASEWORKER, Role.SUPERVISOR, action="batch")
        uploads = {}
        for name in ("households", "consents"):
            upload = form.get(name)
            if not isinstance(upload, UploadFile) or not upload.filename:
                raise BadInput(f"attach the {name} CSV file")
            uploads[name] = await upload.read(MAX_CSV + 1)
        batch = await run_in_threadpool(
            functools.partial(self.desk.batch_start, account, purpose=str(form.get("purpose", "")),
                              region=str(form.get("region", "")).strip(), **uploads))
        return RedirectResponse(f"/batches/{batch.id}", status_code=303)

    async def batch_page(self, request: Request) -> Response:
        account = request.state.account
        batch = await run_in_threadpool(self.desk.batch_for, account, request.path_params["batch_id"])
        return self.render(request, "batch.html", batch=batch)

    async def batch_progress(self, request: Request) -> Response:
        batch = await run_in_threadpool(self.desk.batch_for, request.state.account, request.path_params["batch_id"])
        return JSONResponse({"status": batch.status, "total": batch.total, "done": batch.done,
                             "incomplete": batch.incomplete, "rejected": batch.rejected, "percent": batch.percent,
                             "error": batch.error})

    async def batch_file(self, request: Request) -> Response:
        account = request.state.account
        name = request.path_params["name"]
        kind = {"results.jsonl": "results", "rejects.csv": "rejects"}.get(name)
        if kind is None:
            raise NotFound(name)
        batch = await run_in_threadpool(self.desk.batch_for, account, request.path_params["batch_id"], action=kind)
        path = self.desk.batches.file(batch, kind)
        if not path.is_file():
            return self.error(request, 409, "the batch has not finished yet")
        await run_in_threadpool(self.desk.audit, f"batch.{kind}", account.id, batch=batch)
        body = await run_in_threadpool(path.read_bytes)
        media = "application/x-ndjson" if kind == "results" else "text/csv; charset=utf-8"
        return Response(body, media_type=media, headers={
            "Content-Disposition": f'attachment; filename="batch-{batch.id}-{name}"'})

    # -- auditors and federation -----------------------------------------------------------

    async def access_log(self, request: Request) -> Response:
        account = request.state.account
        rows = await run_in_threadpool(self.desk.access_log, account)
        await run_in_threadpool(self.desk.audit, "log.view", account.id)
        return self.render(request, "access_log.html", rows=rows)

    async def access_log_export(self, request: Request) -> Response:
        account = request.state.account
        rows = await run_in_threadpool(self.desk.access_log, account, limit=1_000_000)
        await run_in_threadpool(self.desk.audit, "log.export", account.id)
        if request.query_params.get("format") == "jsonl":
            body = "".join(json.dumps(r.__dict__, ensure_ascii=False) + "\n" for r in rows)
            return Response(body, media_type="application/x-ndjson",
                            headers={"Content-Disposition": 'attachment; filename="access-log.jsonl"'})
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["at", "account", "account_name", "action", "case", "consent", "purpose", "statuses"])
        for r in rows:
            writer.writerow([r.at, r.account, _csv_safe(r.account_name), r.action, r.case, r.consent, r.purpose,
                             " ".join(f"{k}={v}" for k, v in sorted(r.statuses.items()))])
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="access-log.csv"'})

    async def federation(self, request: Request) -> Response:
        info = await run_in_threadpool(self.desk.federation, request.state.account)
        return self.render(request, "federation.html", info=info)

    # -- errors ----------------------------------------------------------------------------

    async def on_error(self, request: Request, exc: Exception) -> Response:
        """Every failure becomes an error page with a one-line message, never a traceback."""
        if isinstance(exc, HTTPException):
            return self.error(request, exc.status_code, str(exc.detail))
        if isinstance(exc, Forbidden):
            return self.error(request, 403, "your role or office does not allow this")
        if isinstance(exc, NotFound):
            return self.error(request, 404, "no such case")
        if isinstance(exc, PeerUnreachable):
            return self.error(request, 502, str(exc))
        if isinstance(exc, PeerRefused | BadInput):
            return self.error(request, 400 if isinstance(exc, BadInput) else 409, str(exc))
        if isinstance(exc, HeduiError):
            return self.error(request, 500, str(exc))
        _log.error("web_internal_error", error=type(exc).__name__, path=request.url.path)
        return self.error(request, 500, f"internal error ({type(exc).__name__})")


def _csv_safe(text: str) -> str:
    """A cell a spreadsheet will not run as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def create_app(desk: Desk) -> Any:
    """The ASGI application for one Desk, wrapped in the security headers and the body limit."""
    web = Web(desk)
    auth = web.signed_in
    routes = [
        Route("/", auth(web.home)),
        Route("/login", web.login_page, methods=["GET"]),
        Route("/login", web.form_action(web.login), methods=["POST"]),
        Route("/logout", auth(web.form_action(web.logout)), methods=["POST"]),
        Route("/lang/{code}", web.lang),
        Route("/cases", auth(web.case_list), methods=["GET"]),
        Route("/cases", auth(web.form_action(web.case_create)), methods=["POST"]),
        Route("/cases/new", auth(web.case_form)),
        Route("/cases/{case_id}", auth(web.case_page)),
        Route("/cases/{case_id}/run", auth(web.form_action(web.case_run)), methods=["POST"]),
        Route("/cases/{case_id}/revoke", auth(web.form_action(web.case_revoke)), methods=["POST"]),
        Route("/cases/{case_id}/close", auth(web.form_action(web.case_close)), methods=["POST"]),
        Route("/cases/{case_id}/report", auth(web.case_report)),
        Route("/cases/{case_id}/record.json", auth(web.case_record)),
        Route("/cases/{case_id}/report.pdf", auth(web.case_report_pdf)),
        Route("/batches", auth(web.batch_list), methods=["GET"]),
        Route("/batches", auth(web.form_action(web.batch_create, max_files=2)), methods=["POST"]),
        Route("/batches/{batch_id}", auth(web.batch_page)),
        Route("/batches/{batch_id}/progress", auth(web.batch_progress)),
        Route("/batches/{batch_id}/{name}", auth(web.batch_file)),
        Route("/log", auth(web.access_log)),
        Route("/log/export", auth(web.access_log_export)),
        Route("/federation", auth(web.federation)),
        Mount("/static", StaticFiles(packages=[("node.web", "static")]), name="static"),
    ]
    csrf.check_routes(routes)
    handlers = {kind: web.on_error for kind in (HTTPException, Forbidden, NotFound, HeduiError, Exception)}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.desk = desk
    return SecurityHeaders(BodyLimit(app))


def serve(config_path: Path, listen: str, *, idle_s: int | None = None, tls_cert: Path | None = None,
          tls_key: Path | None = None) -> None:
    """Run the application with uvicorn until interrupted."""
    import uvicorn

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BadInput("--listen must be HOST:PORT")
    desk = Desk(config_path, **({"idle_s": idle_s} if idle_s else {}))
    try:
        uvicorn.run(create_app(desk), host=host.strip("[]"), port=int(port), log_level="warning", access_log=False,
                    ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None,
                    server_header=False)
    finally:
        desk.close()
