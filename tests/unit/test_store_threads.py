"""StoreThreads: store work on threads of its own for threaded stores (PostgreSQL), inline for SQLite."""

from __future__ import annotations

import asyncio
import contextvars
import threading

from node.server.store_threads import StoreThreads

_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("_VAR", default="")


def _where() -> tuple[str, str]:
    return threading.current_thread().name, _VAR.get()


def test_threaded_work_runs_on_its_threads_in_the_callers_context_and_inline_otherwise() -> None:
    async def main() -> tuple[tuple[str, str], tuple[str, str]]:
        _VAR.set("request-7")
        threaded, inline = StoreThreads(True, name="hedui-test-store"), StoreThreads(False)
        try:
            return await threaded.run(_where), await inline.run(_where)
        finally:
            threaded.close()
            threaded.close()  # idempotent
            inline.close()

    (off_thread, off_ctx), (in_thread, in_ctx) = asyncio.run(main())
    assert off_thread.startswith("hedui-test-store") and off_ctx == "request-7"
    assert in_thread == threading.current_thread().name and in_ctx == "request-7"


def test_an_exception_of_the_work_reaches_the_caller() -> None:
    def fail() -> None:
        raise ValueError("refused")

    async def main() -> str:
        threads = StoreThreads(True)
        try:
            await threads.run(fail)
        except ValueError as exc:
            return str(exc)
        finally:
            threads.close()
        return "no exception"

    assert asyncio.run(main()) == "refused"
