"""What every request handler can reach: the application, the web settings, the accounts, templates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jinja2 import Environment
from starlette.requests import Request

from escalations.settings import WebSettings
from escalations.web.accounts import Accounts

if TYPE_CHECKING:
    from escalations.app import App


@dataclass(frozen=True)
class WebContext:
    application: App
    settings: WebSettings
    accounts: Accounts
    templates: Environment
    #: authlib's registered OpenID Connect client (None: OIDC not configured).
    oidc: Any = None

    @property
    def cookie_name(self) -> str:
        # __Host-: Secure, Path=/ and no Domain, or the browser refuses it (no sibling host can set it).
        return "__Host-esc_session" if self.settings.secure_cookies else "esc_session"

    @property
    def pre_cookie_name(self) -> str:
        return "__Host-esc_pre" if self.settings.secure_cookies else "esc_pre"

    def partnership_name(self, pid: str) -> str:
        p = self.application.config.partnerships.get(pid)
        return p.name if p is not None else pid


def web(request: Request) -> WebContext:
    ctx = request.app.state.web
    assert isinstance(ctx, WebContext)
    return ctx


def application(request: Request) -> App:
    return web(request).application


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


def route_template(request: Request) -> str | None:
    """The matched route's path template (``/cases/{ref}``), never the path with its values."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None
