"""The partnership's escalations report: :func:`build_report` (pure, over case records), then
:func:`render_html`, CSV/JSON and PNG charts (``write.write_report``)."""

from escalations.records.report.model import Report, Table, build_report, suppressed
from escalations.records.report.render import render_html

__all__ = ["Report", "Table", "build_report", "render_html", "suppressed"]
