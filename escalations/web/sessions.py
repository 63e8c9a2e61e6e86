"""Server-side sessions: the cookie holds a random value, the database its hash and everything else.

Before sign-in a browser has only a small signed cookie (Starlette's SessionMiddleware, itsdangerous)
with the OIDC state, the sign-in form's CSRF token and a half-finished sign-in (password right, code
to come). Signing in always makes a new session row and a new cookie value, and clears the
pre-sign-in cookie: a session id planted before sign-in is never the one signed in (no fixation)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from escalations.web.accounts import Identity
from escalations.web.auth import SESSION_KEY
from escalations.web.context import WebContext, client_ip, web

TOKEN_KEY = "escalations.web.session_token"


class SessionLoader:
    """Loads the request's session row (or None) into the scope, once, off the event loop."""

    def __init__(self, app: ASGIApp, context: WebContext) -> None:
        self.app = app
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/static/"):
            token = HTTPConnection(scope).cookies.get(self.context.cookie_name)
            row = await run_in_threadpool(self.context.accounts.load_session, token) if token else None
            scope[SESSION_KEY] = row
            scope[TOKEN_KEY] = token if row is not None else None
        await self.app(scope, receive, send)


def start_session(request: Request, response: Response, who: Identity, *, method: str) -> None:
    """Sign in: a new session row and cookie; the pre-sign-in state is dropped."""
    ctx = web(request)
    old = request.scope.get(TOKEN_KEY)
    if old:
        ctx.accounts.end_session(old)
    token = ctx.accounts.create_session(who, method=method, ip=client_ip(request))
    request.session.clear()
    response.set_cookie(ctx.cookie_name, token, path="/", secure=ctx.settings.secure_cookies, httponly=True,
                        samesite="lax", max_age=int(ctx.settings.session_absolute_hours * 3600))


def end_session(request: Request, response: Response) -> None:
    ctx = web(request)
    token = request.scope.get(TOKEN_KEY)
    if token:
        ctx.accounts.end_session(token)
    request.session.clear()
    response.delete_cookie(ctx.cookie_name, path="/", secure=ctx.settings.secure_cookies, httponly=True,
                           samesite="lax")
