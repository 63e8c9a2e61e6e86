"""Cases: filter by partnership, status, stage, raising and receiving agency, child status and the
date opened; search by reference; sortable; paginated; the same list as CSV.

The query string holds filters only (statuses, agency names, dates, a reference): never a child's
details, which are not searchable here."""

from __future__ import annotations

import csv
import io
from datetime import date
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from escalations.views.pages import SORTS, CaseFilter, case_list
from escalations.web import audit
from escalations.web.auth import STAFF, Role, StaffUser, require
from escalations.web.context import application
from escalations.web.pages.common import CHILD_STATUS, LONDON, STATUS, page, status_words, when

FILTERS = ("partnership", "status", "stage", "raising_agency", "receiving_agency", "child_status", "opened_from",
           "opened_to", "reference")


def _date(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def _int(value: str | None, default: int | None = None) -> int | None:
    try:
        return int(value) if value else default
    except ValueError:
        return default


def filter_of(request: Request, user: StaffUser) -> CaseFilter:
    q = request.query_params
    sort = q.get("sort") or "opened"
    return CaseFilter(
        partnerships=user.partnerships, partnership=q.get("partnership") or None, status=q.get("status") or None,
        stage=_int(q.get("stage")), raising_agency=q.get("raising_agency") or None,
        receiving_agency=q.get("receiving_agency") or None, child_status=q.get("child_status") or None,
        opened_from=_date(q.get("opened_from")), opened_to=_date(q.get("opened_to")),
        reference=q.get("reference") or None, sort=sort if sort in SORTS else "opened",
        descending=q.get("order", "desc") != "asc", page=_int(q.get("page"), 1) or 1,
        only=user.case_refs if user.is_practitioner else None)


def _link(request: Request, **changes: object) -> str:
    params = {k: v for k, v in request.query_params.items() if v}
    params.update({k: str(v) for k, v in changes.items() if v is not None})
    return "/cases?" + urlencode(params)


def cases_page(request: Request) -> Response:
    user = require(request, *STAFF, Role.PRACTITIONER)
    app = application(request)
    f = filter_of(request, user)
    listing = case_list(app.store, f, LONDON)

    def sort_link(name: str) -> str:
        order = "asc" if f.sort == name and f.descending else "desc"
        return _link(request, sort=name, order=order, page=1)

    values = {k: request.query_params.get(k, "") for k in FILTERS}
    return page(request, "pages/cases.html.j2", "cases", {
        "listing": listing, "f": f, "values": values, "sort_link": sort_link,
        "page_link": lambda n: _link(request, page=n), "csv_link": "/cases.csv?" + urlencode(
            {k: v for k, v in request.query_params.items() if v and k != "page"}),
        "statuses": STATUS, "child_statuses": CHILD_STATUS})


def _cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: a referral's words starting with = + - @ are not formulas."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def cases_csv(request: Request) -> Response:
    user = require(request, *STAFF)
    app = application(request)
    listing = case_list(app.store, filter_of(request, user), LONDON, paginate=False)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["reference", "partnership", "status", "stage", "opened", "deadline", "raising agency",
                "receiving agency", "child status", "immediate risk"])
    for r in listing.rows:
        w.writerow([_cell(v) for v in (
            r.reference, r.partnership, status_words(r.status), r.stage if r.stage is not None else "",
            when(r.opened_at, ""), when(r.due_at, ""), r.raising_agency or "", r.receiving_agency or "",
            CHILD_STATUS.get(r.child_status or "", r.child_status or ""), "yes" if r.immediate_risk else "no")])
    audit.record(request, user, "cases.export_csv", detail=f"{listing.total} cases")
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="cases.csv"'})


routes = [Route("/cases", cases_page, name="cases"), Route("/cases.csv", cases_csv, name="cases_csv")]
