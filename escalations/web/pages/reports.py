"""Reports: the records report of one partnership over a period, as a page with its charts and
tables, and its downloads — the report as one HTML file, its figures as CSV, each chart as PNG.

The figures are the records package's (``build_report`` over the case records, small counts shown
as "<5"); this page only asks for them and lays them out. The query string holds the partnership and
the dates, nothing else."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from escalations.records.read import load_records
from escalations.records.report import Report, build_report, render_html
from escalations.records.report.charts import CHARTED, chart_png
from escalations.web import audit
from escalations.web.auth import STAFF, CaseNotFound, StaffUser, require
from escalations.web.context import application
from escalations.web.pages.common import page


@dataclass(frozen=True)
class Period:
    partnership: str
    first: date
    last: date

    @property
    def query(self) -> str:
        return f"partnership={self.partnership}&from={self.first.isoformat()}&to={self.last.isoformat()}"


def _date(value: str | None, default: date) -> date:
    try:
        return date.fromisoformat(value) if value else default
    except ValueError:
        return default


def period_of(request: Request, user: StaffUser, today: date) -> Period:
    q = request.query_params
    pid = q.get("partnership") or min(user.partnerships, default="")
    if pid not in user.partnerships:
        raise CaseNotFound()
    last = _date(q.get("to"), today)
    first = _date(q.get("from"), last - timedelta(days=364))
    return Period(pid, min(first, last), max(first, last))


def report_for(request: Request, period: Period) -> Report:
    app = application(request)
    p = app.config.partnerships[period.partnership]
    start = datetime.combine(period.first, time(0), p.tz).astimezone(UTC)
    end = datetime.combine(period.last + timedelta(days=1), time(0), p.tz).astimezone(UTC)
    records = load_records(app.store, p.id, opened_from=start, opened_to=end)
    return build_report(records, p, period.first, period.last, now=app.clock.now())


def reports_page(request: Request) -> Response:
    user = require(request, *STAFF)
    app = application(request)
    if not user.partnerships:
        raise CaseNotFound()
    period = period_of(request, user, app.clock.now().date())
    report = report_for(request, period)
    audit.record(request, user, "report.view", detail=f"{period.partnership} {period.first}..{period.last}")
    return page(request, "pages/reports.html.j2", "reports", {
        "r": report, "period": period, "charted": CHARTED})


def report_chart(request: Request) -> Response:
    user = require(request, *STAFF)
    name = request.path_params["name"]
    if name not in CHARTED:
        raise CaseNotFound()
    period = period_of(request, user, application(request).clock.now().date())
    return Response(chart_png(report_for(request, period), name), media_type="image/png")


def _csv(report: Report) -> bytes:
    """The same rows as ``escalations report``'s report.csv."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("table", "row", "column", "value"))
    w.writerows(report.csv_rows())
    return buf.getvalue().encode("utf-8")


def report_download(request: Request) -> Response:
    """report.html (stylesheet inline), report.csv or report.json."""
    user = require(request, *STAFF)
    fmt = request.path_params["fmt"]
    if fmt not in ("html", "csv", "json"):
        raise CaseNotFound()
    period = period_of(request, user, application(request).clock.now().date())
    report = report_for(request, period)
    data = {"html": lambda: render_html(report).encode(), "csv": lambda: _csv(report),
            "json": lambda: (json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n").encode()}[fmt]()
    audit.record(request, user, f"report.download_{fmt}", detail=f"{period.partnership} {period.first}..{period.last}")
    media = {"html": "text/html; charset=utf-8", "csv": "text/csv; charset=utf-8", "json": "application/json"}[fmt]
    name = f"report-{period.partnership}-{period.first}-{period.last}.{fmt}"
    return Response(data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})


routes = [Route("/reports", reports_page, name="reports"),
          Route("/reports/chart/{name}.png", report_chart, name="report_chart"),
          Route("/reports/report.{fmt}", report_download, name="report_download")]
