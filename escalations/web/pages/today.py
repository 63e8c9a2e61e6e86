"""Today: what needs a person now, per partnership — each a count and a list."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from escalations.views.pages import today
from escalations.web.auth import current_user, require
from escalations.web.context import application
from escalations.web.pages.common import LONDON, flash, page, staff_roles


def today_page(request: Request) -> Response:
    user = current_user(request)
    if user is not None and user.is_practitioner:
        # A practitioner sees their own case(s) only.
        refs = sorted(user.case_refs)
        return RedirectResponse(f"/cases/{refs[0]}" if len(refs) == 1 else "/cases", status_code=303)
    user = require(request, *staff_roles())
    app = application(request)
    owner = app.operations.partnership_of if app.operations is not None else None
    views = today(app.store, user.partnerships, app.clock.now(), LONDON, quarantine_owner=owner)
    return page(request, "pages/today.html.j2", "today", {"views": views, "flash": flash(request)})


routes = [Route("/", today_page, name="today"), Route("/today", today_page, name="today_alias")]
