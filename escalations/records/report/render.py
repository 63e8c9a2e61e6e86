"""The report as one HTML page (Jinja2, autoescaped; its own small stylesheet, inline by default)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib import resources

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from escalations.records.report.model import Report, suppressed

__all__ = ["css", "render_html"]

#: The first column's heading, by table.
ROW_LABELS = {"per_month": "Month", "raising_agency": "Agency", "receiving_agency": "Agency",
              "stage_resolved": "Stage", "deadlines": "Stage deadlines", "breached_by": "Late by",
              "child_status": "Child status", "themes": "Theme", "outcomes": "How the case ended",
              "rarely_raise": "Agency"}


@cache
def _env() -> Environment:
    return Environment(loader=PackageLoader("escalations.records.report", "."), undefined=StrictUndefined,
                       autoescape=select_autoescape(["html", "j2"]), auto_reload=False)


@cache
def css() -> str:
    return resources.files("escalations.records.report").joinpath("report.css").read_text(encoding="utf-8")


def render_html(report: Report, *, charts: Mapping[str, str] | None = None, css_href: str | None = None) -> str:
    """The page; ``charts`` maps a table's name to its image URL (a file name next to the page, or a
    route of the web interface); ``css_href`` links the stylesheet instead of inlining it."""
    return _env().get_template("report.html.j2").render(
        r=report, charts=dict(charts or {}), css=css(), css_href=css_href, row_labels=ROW_LABELS,
        shown=lambda n: suppressed(n, report.threshold))
