"""HTML pages from Jinja2 templates (escalations/web/templates and escalations/web/pages/templates),
autoescaped; undefined variables are errors, not blanks.

Every page extends ``base.html.j2`` and gets ``request``, ``user`` (a StaffUser or None),
``csrf_token`` (put ``{{ csrf_field() }}`` in every form), ``partnership_name(id)`` and
``static(path)``. A page title is words only: never a child's name or any value from a case."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from escalations.web.auth import CSRF_FIELD, csrf_token, current_user
from escalations.web.context import web

HERE = Path(__file__).resolve().parent
TEMPLATE_DIRS = (HERE / "templates", HERE / "pages" / "templates")


def make_environment() -> Environment:
    env = Environment(loader=ChoiceLoader([FileSystemLoader(str(d)) for d in TEMPLATE_DIRS]),
                      autoescape=True, undefined=StrictUndefined, auto_reload=False,
                      trim_blocks=True, lstrip_blocks=True)
    env.globals["service_name"] = "Resolving professional differences"
    return env


def render(request: Request, template: str, context: Mapping[str, Any] | None = None, *,
           status_code: int = 200, headers: Mapping[str, str] | None = None) -> HTMLResponse:
    ctx = web(request)
    token = csrf_token(request)

    def csrf_field() -> Markup:
        return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, escape(token))

    def static(path: str) -> str:
        return f"/static/{path}"

    values = {"request": request, "user": current_user(request), "csrf_token": token, "csrf_field": csrf_field,
              "partnership_name": ctx.partnership_name, "static": static, "oidc_enabled": ctx.oidc is not None,
              "oidc_name": ctx.settings.oidc.name if ctx.settings.oidc is not None else "",
              "local_accounts": ctx.settings.local_accounts, **(context or {})}
    html = ctx.templates.get_template(template).render(values)
    return HTMLResponse(html, status_code=status_code, headers=dict(headers or {}))
