"""Reports: the records report of a partnership over a period, as a page with its charts and
tables, and its downloads (HTML, CSV, PNG).

Integration point: the report itself (``escalations.records.report``) is built on the records
branch; until it is part of this build the page says so."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from escalations.web.auth import STAFF, require
from escalations.web.pages.common import page


def reports_page(request: Request) -> Response:
    require(request, *STAFF)
    return page(request, "pages/reports.html.j2", "reports", {"available": False})


routes = [Route("/reports", reports_page, name="reports")]
