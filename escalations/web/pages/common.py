"""What every staff page shares: the menu, London-time formatting, the words for statuses and
kinds of event, and the one way to render a page (``page``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import HTMLResponse

from escalations.web.auth import StaffUser, current_user
from escalations.web.roles import Role
from escalations.web.templating import render

LONDON = ZoneInfo("Europe/London")

NAV = (("/", "Today", "today"), ("/cases", "Cases", "cases"), ("/reports", "Reports", "reports"),
       ("/policy", "Policy and configuration", "policy"))

#: Statuses in words, and the tag colour each is shown with.
STATUS: Mapping[str, tuple[str, str]] = {
    "awaiting_information": ("Incomplete", "yellow"),
    "open": ("Open", "green"),
    "needs_routing": ("Needs routing", "orange"),
    "awaiting_confirmation": ("Awaiting confirmation", "yellow"),
    "closed": ("Closed", "grey"),
    "withdrawn": ("Withdrawn", "grey"),
}

CHILD_STATUS: Mapping[str, str] = {"cp_plan": "Child protection plan", "looked_after": "Looked after",
                                   "child_in_need": "Child in need", "none": "None of these"}


def when(t: datetime | None, empty: str = "–") -> str:
    """A moment as London local time: "Tue 3 Nov 2026, 10:00"."""
    if t is None:
        return empty
    return t.astimezone(LONDON).strftime("%a %-d %b %Y, %H:%M")


def status_words(status: str) -> str:
    return STATUS.get(status, (status.replace("_", " ").capitalize(), ""))[0]


def status_colour(status: str) -> str:
    return STATUS.get(status, ("", "grey"))[1]


def kind_words(kind: str) -> str:
    """An event's kind as a reader says it ("staff_note" -> "Staff: note")."""
    if kind.startswith("staff_"):
        return "Staff: " + kind.removeprefix("staff_").replace("_", " ")
    if kind.startswith("reply_"):
        return "Reply: " + kind.removeprefix("reply_").replace("_", " ")
    return kind.replace("_", " ").capitalize()


def agency_namer(request: Request) -> Callable[[str, str | None], str]:
    """(partnership, agency id or text) -> the directory's name for it (the text itself if not an id)."""
    from escalations.web.context import application

    config = application(request).config

    def name(pid: str, agency: str | None) -> str:
        if not agency:
            return "Not known"
        p = config.partnerships.get(pid)
        found = next((a for a in p.agencies if a.id == agency), None) if p is not None else None
        return found.name if found is not None else agency

    return name


def nav(current: str, admin: bool = False) -> list[dict[str, Any]]:
    items = [*NAV, ("/audit", "Audit trail", "audit")] if admin else list(NAV)
    return [{"href": href, "text": text, "current": key == current} for href, text, key in items]


def page(request: Request, template: str, current: str, context: Mapping[str, Any] | None = None, *,
         status_code: int = 200) -> HTMLResponse:
    user = current_user(request)
    admin = user is not None and user.role is Role.ADMIN
    values: dict[str, Any] = {"nav": nav(current, admin) if user is None or not user.is_practitioner else [],
                              "when": when, "status_words": status_words, "status_colour": status_colour,
                              "kind_words": kind_words, "child_status_words": CHILD_STATUS,
                              "can_act": bool(user and user.can_act()), "agency_name": agency_namer(request),
                              **(context or {})}
    return render(request, template, values, status_code=status_code)


def flash(request: Request, message: str | None = None) -> str | None:
    """Set (with ``message``) or take the one-line confirmation shown on the next page (signed cookie)."""
    if message is not None:
        request.session["flash"] = message
        return None
    taken = request.session.pop("flash", None)
    return taken if isinstance(taken, str) else None


def partnerships_of(user: StaffUser) -> frozenset[str]:
    return user.partnerships


def staff_roles() -> tuple[Role, ...]:
    return (Role.VIEWER, Role.COORDINATOR, Role.ADMIN)
