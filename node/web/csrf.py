"""CSRF protection that fails closed: every unsafe method needs a declared check or exemption.

Each session has its own random token; every form carries it in the `csrf` field, compared
with `hmac.compare_digest`. The request's Origin (else its Referer) must be this site. A route
that accepts an unsafe method without `protected` or `exempt` stops the app from starting.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from typing import Any, Final
from urllib.parse import urlsplit

SAFE_METHODS: Final[frozenset[str]] = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
FIELD: Final[str] = "csrf"


class CsrfRefused(Exception):
    """A state-changing request without this site's origin or the session's token."""


def same_origin(scheme: str, host: str, origin: str | None, referer: str | None) -> bool:
    """Whether the request comes from a page of this site (`scheme://host`)."""
    mine = f"{scheme}://{host}".lower()
    if origin:
        return origin.lower() == mine
    if referer:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}".lower() == mine
    return False


def verify(*, scheme: str, host: str, origin: str | None, referer: str | None, expected: str | None,
           submitted: object) -> None:
    """Raise CsrfRefused unless the origin is this site and `submitted` is the session's token."""
    if not same_origin(scheme, host, origin, referer):
        raise CsrfRefused("the request does not come from this site")
    if not expected or not isinstance(submitted, str) or not hmac.compare_digest(expected.encode(), submitted.encode()):
        raise CsrfRefused("the form's security token is missing or wrong")


def protected(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an endpoint whose wrapper calls `verify` before anything else."""
    endpoint.__csrf__ = "protected"  # type: ignore[attr-defined]
    return endpoint


def exempt(reason: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark an endpoint that takes unsafe methods without a token, saying why."""
    def mark(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        endpoint.__csrf__ = f"exempt: {reason}"  # type: ignore[attr-defined]
        return endpoint
    return mark


def check_routes(routes: Iterable[Any]) -> None:
    """RuntimeError naming the first route that accepts an unsafe method with no declared CSRF handling."""
    for route in routes:
        methods = set(getattr(route, "methods", None) or ())
        if methods - SAFE_METHODS and not getattr(getattr(route, "endpoint", None), "__csrf__", None):
            raise RuntimeError(f"route {route.path} accepts {sorted(methods - SAFE_METHODS)} without CSRF protection")
