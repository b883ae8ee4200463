"""Structured logging: JSON lines when not on a terminal, readable lines on one.

Log events carry request ids, peer provinces, purposes, item codes and outcomes; never an ID
number, a subject token in full, or a data value. Callers bind context with
`log.bind(request_id=..., peer=...)`. Handlers refuse an invalid request id before logging
anything; as a last guard, every event's `request_id` passes `request_ids.shown` (an invalid
one is logged as "invalid", never as it was sent).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Final

import structlog

from node.domain import request_ids
from node.errors import BadInput

LEVELS: Final[tuple[str, ...]] = ("debug", "info", "warning", "error")
_configured = False


def check_level(level: object) -> str:
    """The log level, lower-cased, or BadInput naming the levels (never echoing what was given)."""
    if not isinstance(level, str) or level.lower() not in LEVELS:
        raise BadInput(f"log level must be one of {', '.join(LEVELS)}")
    return level.lower()


def _request_id_guard(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Replace a request id that is not valid by "invalid" (peers choose request ids)."""
    if "request_id" in event:
        event["request_id"] = request_ids.shown(event["request_id"])
    return event


def _worker(pid: int) -> Any:
    """A processor naming the worker process of every event."""
    def add(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        event["worker"] = pid
        return event
    return add


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is when a line is written, not when logging was configured
    (a test harness swaps it, and a line must never go to an old, closed stream)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", *, json: bool | None = None, stream: Any = None, worker_pid: int | None = None) -> None:
    """Configure structlog once per process; JSON unless stderr is a terminal. BadInput for an unknown level.

    `worker_pid` (a `--workers` process) is added to every event as "worker", so the workers'
    interleaved lines can be told apart.
    """
    global _configured
    level = check_level(level)
    if json is None:
        json = not (stream or sys.stderr).isatty()
    stream = stream or _CurrentStderr()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _request_id_guard,
            *([_worker(worker_pid)] if worker_pid is not None else []),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get(name: str) -> Any:
    """A bound logger for one component."""
    if not _configured:
        configure()
    return structlog.get_logger(component=name)
