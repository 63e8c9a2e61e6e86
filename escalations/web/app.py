"""The web interface's ASGI app: ``create_web_app(application, settings) -> Starlette``.

Routes: the sign-in pages (escalations/web/signin.py, oidc.py), the home page, the audit page, the
static stylesheet, and every route in ``escalations.web.pages.routes`` (matched first). Middleware,
outermost first: security headers and the access log, the signed pre-sign-in cookie, the session
loader."""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from escalations.settings import Settings
from escalations.web import admin, oidc, pages, signin
from escalations.web.accounts import Accounts
from escalations.web.auth import CaseNotFound, Forbidden, SignInRequired, current_user, require
from escalations.web.context import WebContext
from escalations.web.headers import SecurityHeaders
from escalations.web.roles import STAFF, Role
from escalations.web.sessions import SessionLoader
from escalations.web.templating import HERE, make_environment, render

if TYPE_CHECKING:
    from escalations.app import App

log = structlog.get_logger("escalations.web")

#: How long a half-finished sign-in (the pre-sign-in cookie) lasts.
PRE_SESSION_SECONDS = 15 * 60


def create_web_app(application: App, settings: Settings) -> Starlette:
    web_settings = settings.web
    accounts = Accounts(application.store.engine, application.store.lease_clock, web_settings,
                        service_secret=settings.token_secret())
    context = WebContext(application=application, settings=web_settings, accounts=accounts,
                         templates=make_environment(), oidc=oidc.client_for(web_settings))
    key = hmac.new(settings.token_secret(), b"escalations web pre-sign-in cookie", hashlib.sha256).hexdigest()
    middleware = [
        Middleware(SecurityHeaders, https=web_settings.secure_cookies, log_requests=web_settings.access_log),
        Middleware(SessionMiddleware, secret_key=key, session_cookie=context.pre_cookie_name,
                   max_age=PRE_SESSION_SECONDS, same_site="lax", https_only=web_settings.secure_cookies),
        Middleware(SessionLoader, context=context),
    ]
    routes: list[BaseRoute] = [*pages.routes, *signin.routes, *oidc.routes, *admin.routes,
                               Route("/", home, name="home"),
                               Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static")]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=_handlers())
    app.state.web = context
    return app


def home(request: Request) -> Response:
    user = current_user(request)
    if user is not None and user.is_practitioner and len(user.case_refs) == 1:
        return RedirectResponse(f"/cases/{next(iter(user.case_refs))}", status_code=303)
    user = require(request, *STAFF, Role.PRACTITIONER)
    links = [{"href": "/audit", "text": "Audit trail"}] if user.role is Role.ADMIN else []
    return render(request, "home.html.j2", {"links": links})


def _handlers() -> dict[Any, Any]:
    return {SignInRequired: _sign_in_required, Forbidden: _forbidden, CaseNotFound: _not_found,
            HTTPException: _http_error, Exception: _server_error}


def _sign_in_required(request: Request, _exc: Exception) -> Response:
    # Where to come back to: the path only (never a query string), kept in the signed cookie, not the URL.
    if request.method == "GET":
        request.session["next"] = request.url.path
    return RedirectResponse("/sign-in", status_code=303)


def _forbidden(request: Request, exc: Exception) -> Response:
    reason = exc.reason if isinstance(exc, Forbidden) else "forbidden"
    log.info("web.forbidden", reason=reason, route=getattr(request.scope.get("route"), "path", None))
    lines = (["The form was out of date or did not come from this service. Go back, reload the page and "
              "try again."] if reason == "csrf" else ["Your account does not allow this."])
    return render(request, "error.html.j2", {"heading": "You cannot do this", "lines": lines}, status_code=403)


def _not_found(request: Request, _exc: Exception) -> Response:
    return render(request, "error.html.j2", {"heading": "Page not found",
                                             "lines": ["If you typed the web address, check it is correct."]},
                  status_code=404)


def _http_error(request: Request, exc: Exception) -> Response:
    code = exc.status_code if isinstance(exc, HTTPException) else 500
    if code == 404:
        return _not_found(request, exc)
    heading = {405: "This page cannot be used that way", 400: "Sorry, there is a problem"}.get(code, "Sorry, there is a problem")
    return render(request, "error.html.j2", {"heading": heading, "lines": []}, status_code=code)


def _server_error(request: Request, exc: Exception) -> Response:
    log.error("web.error", error_type=type(exc).__name__, route=getattr(request.scope.get("route"), "path", None),
              exc_info=exc)
    return Response("Sorry, there is a problem with the service. Try again later.", status_code=500,
                    media_type="text/plain", headers={"Cache-Control": "no-store"})
