"""The one Content Security Policy and the security headers every response carries."""

from __future__ import annotations

from typing import Final

#: Nothing is allowed unless named: the pages use only this site's stylesheet and script.
POLICY: Final[dict[str, tuple[str, ...]]] = {
    "default-src": ("'none'",),
    "style-src": ("'self'",),
    "script-src": ("'self'",),
    "img-src": ("'self'",),
    "form-action": ("'self'",),
    "frame-ancestors": ("'none'",),
    "base-uri": ("'none'",),
}

HEADERS: Final[dict[str, str]] = {
    "Content-Security-Policy": "; ".join(f"{k} {' '.join(v)}" for k, v in POLICY.items()),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class SecurityHeaders:
    """ASGI middleware: add `HEADERS` to every HTTP response (and HSTS when served over TLS)."""

    def __init__(self, app: object) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # type: ignore[operator]
            return
        tls = scope.get("scheme") == "https"

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in _LOWER]
                headers += [(k.encode(), v.encode()) for k, v in HEADERS.items()]
                if tls:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message = {**message, "headers": headers}
            await send(message)  # type: ignore[operator]

        await self.app(scope, receive, with_headers)  # type: ignore[operator]


_LOWER: Final[frozenset[str]] = frozenset(k.lower() for k in HEADERS)
