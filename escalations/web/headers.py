"""Every response's security headers, no caching of pages, and the access log.

The access log has the method, the matched route's template (``/cases/{ref}``), the status and the
time taken: never the query string (a search for a child's name), never the values in the path."""

from __future__ import annotations

import time

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = structlog.get_logger("escalations.web.access")

#: No inline script or style anywhere: the pages' own files only.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")


class SecurityHeaders:
    def __init__(self, app: ASGIApp, *, https: bool, log_requests: bool = True) -> None:
        self.app = app
        self.https = https
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self._add(MutableHeaders(scope=message), static)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if self.log_requests:
                route = scope.get("route")
                template = getattr(route, "path", None) or "(no route)"
                if static:
                    template = "/static/{path}"
                access_log.info("web.request", method=scope["method"], route=template, status=status,
                                ms=round((time.perf_counter() - started) * 1000, 1))

    def _add(self, headers: MutableHeaders, static: bool) -> None:
        headers["Content-Security-Policy"] = CSP
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), interest-cohort=()"
        if self.https:
            headers["Strict-Transport-Security"] = "max-age=31536000"
        headers["Cache-Control"] = "public, max-age=3600" if static else "no-store"
        if not static:
            headers["Pragma"] = "no-cache"
