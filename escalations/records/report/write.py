"""``escalations report``: the report's files in a folder — report.html (with its stylesheet),
report.csv and report.json (the same figures), and a PNG chart per table — private modes."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from rich.progress import Progress

from escalations.cases.store import Store
from escalations.records.files import write_private
from escalations.records.read import load_records
from escalations.records.report.model import Report, build_report
from escalations.records.report.render import css, render_html
from escalations.routing.policy.model import Partnership

__all__ = ["Written", "report_files", "write_report"]


@dataclass(frozen=True)
class Written:
    cases: int
    files: tuple[Path, ...]


def _csv(report: Report) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("table", "row", "column", "value"))
    w.writerows(report.csv_rows())
    return buf.getvalue().encode("utf-8")


def report_files(report: Report) -> dict[str, bytes]:
    """Every file of the report, by name."""
    from escalations.records.report.charts import CHARTED, chart_png

    files = {f"chart-{name}.png": chart_png(report, name) for name in CHARTED}
    charts = {name: f"chart-{name}.png" for name in CHARTED}
    files["report.css"] = css().encode()
    files["report.html"] = render_html(report, charts=charts, css_href="report.css").encode()
    files["report.json"] = (json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n").encode()
    files["report.csv"] = _csv(report)
    return files


def write_report(store: Store, p: Partnership, first: date, last: date, out_dir: Path, *,
                 threshold: int = 5, progress: bool = False) -> Written:
    start = datetime.combine(first, time(0), p.tz).astimezone(UTC)
    end = datetime.combine(last + timedelta(days=1), time(0), p.tz).astimezone(UTC)
    with Progress(transient=True, disable=not progress) as bar:
        loading = bar.add_task("Reading cases", total=None)
        records = load_records(store, p.id, opened_from=start, opened_to=end)
        bar.update(loading, total=1, completed=1)
        counting = bar.add_task("Counting", total=len(records))
        report = build_report(records, p, first, last, threshold=threshold, now=store.clock.now(),
                              on_record=lambda: bar.advance(counting))
        drawing = bar.add_task("Drawing charts and writing files", total=None)
        files = report_files(report)
        out_dir.mkdir(parents=True, exist_ok=True)
        out_dir.chmod(0o700)
        written = []
        for name, data in files.items():
            write_private(out_dir / name, data)
            written.append(out_dir / name)
        bar.update(drawing, total=1, completed=1)
    return Written(report.total, tuple(written))
