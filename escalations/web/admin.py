"""The audit page (administrators): audit rows, newest first, filtered by case, person, action and
date. Filters are posted, not put in the address: a person's email address is personal data."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from escalations.web import audit
from escalations.web.accounts import AuditFilter
from escalations.web.auth import check_csrf, require
from escalations.web.context import web
from escalations.web.roles import Role
from escalations.web.templating import render

PAGE = 100
LONDON = ZoneInfo("Europe/London")


def _day(value: str, errors: list[tuple[str, str]], field: str, label: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.combine(date.fromisoformat(value), time(0), LONDON).astimezone(UTC)
    except ValueError:
        errors.append((field, f"Enter the {label} as a date, for example 2026-11-30"))
        return None


def parse_filter(form: dict[str, str]) -> tuple[AuditFilter, list[tuple[str, str]]]:
    errors: list[tuple[str, str]] = []
    since = _day(form.get("since", ""), errors, "since", "from date")
    until = _day(form.get("until", ""), errors, "until", "to date")
    try:
        offset = max(0, int(form.get("offset") or 0))
    except ValueError:
        offset = 0
    f = AuditFilter(case_ref=form.get("case_ref") or None, user_email=form.get("user_email") or None,
                    action=form.get("action") or None, since=since,
                    until=until + timedelta(days=1) if until else None, limit=PAGE + 1, offset=offset)
    return f, errors


def _page(request: Request, form: dict[str, str]) -> Response:
    user = require(request, Role.ADMIN)
    f, errors = parse_filter(form)
    rows = [] if errors else web(request).accounts.audit_rows(f)
    audit.record(request, user, "audit.view")
    context: dict[str, Any] = {"rows": rows[:PAGE], "more": len(rows) > PAGE, "form": form, "errors": errors,
                               "offset": f.offset, "page_size": PAGE, "local": lambda dt: dt.astimezone(LONDON)}
    return render(request, "audit.html.j2", context, status_code=400 if errors else 200)


def audit_page(request: Request) -> Response:
    return _page(request, {})


async def audit_filter(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form)
    values = {k: str(form.get(k, "")).strip() for k in ("case_ref", "user_email", "action", "since", "until",
                                                        "offset")}
    return await run_in_threadpool(_page, request, values)


routes: list[BaseRoute] = [
    Route("/audit", audit_page, methods=["GET"], name="audit"),
    Route("/audit", audit_filter, methods=["POST"]),
]
