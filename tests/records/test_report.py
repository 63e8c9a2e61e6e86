"""The report over a year of a few hundred cases made through the real store: its counts are the
builder's, small numbers are shown as "<5" in the HTML, CSV and JSON, and the files are written."""

from __future__ import annotations

import csv
import json
import stat
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from escalations.app import App
from escalations.cli import app as cli_app
from escalations.records.read import load_records
from escalations.records.report import build_report, render_html, suppressed
from escalations.records.report.model import Report
from tests.conftest import CONFIG_DIR
from tests.records.builder import CHILD, NOW, Expected, build_year

FIRST, LAST = date(2025, 1, 1), date(2025, 12, 31)


@pytest.fixture
def year(app: App) -> tuple[App, Expected]:
    return app, build_year(app.store, app.config.partnerships["sutton"], 300)


@pytest.fixture
def any_year(any_app: App) -> tuple[App, Expected]:
    return any_app, build_year(any_app.store, any_app.config.partnerships["sutton"], 300)


def report_of(app: App, threshold: int = 5) -> Report:
    p = app.config.partnerships["sutton"]
    return build_report(load_records(app.store, "sutton"), p, FIRST, LAST, threshold=threshold, now=NOW)


def rows(report: Report, name: str) -> dict[str, tuple[int, ...]]:
    return dict(report.table(name).rows)


def test_counts_are_the_builders(any_year: tuple[App, Expected]) -> None:
    app, exp = any_year
    r = report_of(app)
    assert r.total == exp.total == 300
    assert {k: v[0] for k, v in rows(r, "per_month").items()} == dict(exp.month)
    assert len(rows(r, "per_month")) == 12
    assert {k: v[0] for k, v in rows(r, "raising_agency").items()} == dict(exp.raising)
    assert {k: v[0] for k, v in rows(r, "receiving_agency").items()} == dict(exp.receiving)
    assert {k: v[0] for k, v in rows(r, "stage_resolved").items()} == {
        f"Stage {n}: Stage {n} name": c for n, c in exp.stage.items()}
    assert {k: v[0] for k, v in rows(r, "child_status").items()} == {
        k: exp.status[k] for k in ("CP plan", "Looked after", "CIN", "Other")}
    assert rows(r, "deadlines") == {"met": (exp.met,), "breached": (exp.breached,)}
    assert {k: v[0] for k, v in rows(r, "breached_by").items() if v[0]} == dict(exp.late_by)
    themes = rows(r, "themes")
    assert themes["Progressing plans and communication"] == (exp.themes_tagged["Progressing plans and communication"], 0)
    assert themes["Levels of need"] == (0, exp.themes_read["Levels of need"])
    assert themes["Roles and responsibilities"] == themes["The need for action"] == (0, 0)
    endings = {k: sum(v) for k, v in rows(r, "outcomes").items()}
    assert endings == {k: exp.endings[k] for k in endings}
    assert sum(endings.values()) == 300


def test_agencies_that_rarely_raise_and_learning_by_theme(year: tuple[App, Expected]) -> None:
    app, exp = year
    r = report_of(app)
    rare = rows(r, "rarely_raise")
    assert rare == {"Sutton Housing Partnership": (0,), "NHS South West London ICB (Sutton)": (1,),
                    "Probation Service (London)": (3,)}
    points = dict(r.learning)
    texts = sorted(p.text for ps in points.values() for p in ps)
    assert texts == sorted(exp.learning)  # children as initials
    assert all(CHILD not in t for t in texts)
    # case 0 was tagged communication; 50, 100... some tagged (i % 5 == 0): all learning cases are i % 50 == 0
    assert set(points) == {"Progressing plans and communication"}


def test_small_numbers_are_suppressed_everywhere(year: tuple[App, Expected], tmp_path: Path) -> None:
    app, _ = year
    r = report_of(app)
    assert suppressed(0, 5) == 0 and suppressed(1, 5) == "<5" and suppressed(4, 5) == "<5" and suppressed(5, 5) == 5
    data = r.to_json()
    rare = {row["label"]: row["cases raised"] for row in data["tables"]["rarely_raise"]["rows"]}
    assert rare == {"Sutton Housing Partnership": 0, "NHS South West London ICB (Sutton)": "<5",
                    "Probation Service (London)": "<5"}
    csv_rows = [row for row in r.csv_rows() if row[0] == "raising_agency"]
    assert ("raising_agency", "Probation Service (London)", "cases", "<5") in csv_rows
    html = render_html(r)
    assert "<td class=\"n\">&lt;5</td>" in html and ">3<" not in html.split('id="rarely_raise"')[1].split("</table>")[0]
    # a higher threshold hides more
    r10 = report_of(app, threshold=10)
    assert all(v == "<10" or v == 0 or (isinstance(v, int) and v >= 10)
               for t in r10.to_json()["tables"].values() for row in t["rows"] for k, v in row.items() if k != "label")


def test_report_command_writes_html_csv_json_and_charts(year: tuple[App, Expected], tmp_path: Path) -> None:
    app, exp = year
    out = tmp_path / "report"
    s = app.settings
    result = CliRunner().invoke(cli_app, ["--config", str(CONFIG_DIR), "--data-dir", str(s.data_dir),
                                          "--database-url", s.effective_database_url, "report", "sutton",
                                          "--from", "2025-01-01", "--to", "2025-12-31", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "sutton: 300 case(s)" in result.stdout
    names = sorted(f.name for f in out.iterdir())
    assert {"report.html", "report.css", "report.csv", "report.json", "chart-per_month.png",
            "chart-raising_agency.png", "chart-themes.png"} <= set(names)
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        if f.suffix == ".png":
            assert f.read_bytes()[:4] == b"\x89PNG"
    html = (out / "report.html").read_text()
    assert 'src="chart-per_month.png"' in html and 'href="report.css"' in html
    assert "http" not in html.replace("http-equiv", "")  # no third-party assets
    data = json.loads((out / "report.json").read_text())
    assert data["total"] == 300
    with (out / "report.csv").open() as f:
        table = list(csv.reader(f))
    assert table[0] == ["table", "row", "column", "value"]
    assert ["per_month", "2025-03", "cases", str(exp.month["2025-03"])] in table
    assert ["summary", "cases", "count", "300"] in table


def test_report_command_errors_are_sentences(app: App, tmp_path: Path) -> None:
    s = app.settings
    base = ["--config", str(CONFIG_DIR), "--data-dir", str(s.data_dir), "--database-url", s.effective_database_url]
    bad = CliRunner().invoke(cli_app, [*base, "report", "nowhere", "--from", "2025-01-01", "--to", "2025-12-31",
                                       "--out", str(tmp_path / "r")])
    assert bad.exit_code == 1 and "No partnership nowhere" in bad.stderr
    bad = CliRunner().invoke(cli_app, [*base, "report", "sutton", "--from", "2025-13-01", "--to", "2025-12-31",
                                       "--out", str(tmp_path / "r")])
    assert bad.exit_code == 2 and "--from and --to must be dates" in bad.stderr
