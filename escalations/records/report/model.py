"""The report's figures, computed from case records: a pure function, so the web interface can show
the same report as a page. Counts below the threshold are shown as "<N" wherever they are shown
(:func:`suppressed`); the Report keeps the true numbers for its own rendering only."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from statistics import median
from typing import Any

from escalations.records.read import CaseRecord
from escalations.records.themes import THEME_CLAUSE, Theme, inferred_themes
from escalations.routing.policy.model import Partnership
from escalations.routing.redact import redactor_for

__all__ = ["LearningPoint", "Report", "Table", "build_report", "suppressed"]

DEFAULT_THRESHOLD = 5
CHILD_STATUS = {"cp_plan": "CP plan", "looked_after": "Looked after", "child_in_need": "CIN"}
UNKNOWN_AGENCY = "Not known"


def suppressed(n: int, threshold: int) -> int | str:
    """A count as shown: 1..threshold-1 as "<threshold" (0 and larger counts as they are)."""
    return f"<{threshold}" if 0 < n < threshold else n


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, tuple[int, ...]], ...]
    note: str = ""
    #: What the rows are (the first column's heading).
    row_label: str = ""

    def shown(self, threshold: int) -> list[tuple[str, list[int | str]]]:
        return [(label, [suppressed(v, threshold) for v in values]) for label, values in self.rows]

    def to_json(self, threshold: int) -> dict[str, Any]:
        return {"title": self.title, "row_label": self.row_label, "columns": list(self.columns), "note": self.note,
                "rows": [{"label": label, **dict(zip(self.columns, values, strict=True))}
                         for label, values in self.shown(threshold)]}


@dataclass(frozen=True)
class LearningPoint:
    reference: str
    at: datetime
    text: str


@dataclass(frozen=True)
class Report:
    partnership: str
    partnership_name: str
    first: date
    last: date
    threshold: int
    total: int
    tables: tuple[Table, ...]
    #: Days from opening to closing, of the cases resolved (None: none resolved).
    median_days_to_resolution: float | None
    #: Theme label -> learning points (the child as initials).
    learning: tuple[tuple[str, tuple[LearningPoint, ...]], ...] = field(default_factory=tuple)

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)

    def to_json(self) -> dict[str, Any]:
        return {"partnership": self.partnership, "from": self.first.isoformat(), "to": self.last.isoformat(),
                "threshold": self.threshold, "total": suppressed(self.total, self.threshold),
                "median_days_to_resolution": self.median_days_to_resolution,
                "tables": {t.name: t.to_json(self.threshold) for t in self.tables},
                "learning": [{"theme": theme, "points": [{"reference": p.reference, "at": p.at.isoformat(),
                                                          "text": p.text} for p in points]}
                             for theme, points in self.learning]}

    def csv_rows(self) -> list[tuple[str, str, str, int | str]]:
        """(table, row, column, value): the same figures as the HTML and JSON."""
        out: list[tuple[str, str, str, int | str]] = [("summary", "cases", "count",
                                                       suppressed(self.total, self.threshold))]
        for t in self.tables:
            for label, values in t.shown(self.threshold):
                out.extend((t.name, label, c, v) for c, v in zip(t.columns, values, strict=True))
        return out


# ---- the figures -------------------------------------------------------------------------------------


def _months(first: date, last: date) -> list[str]:
    out, y, m = [], first.year, first.month
    while (y, m) <= (last.year, last.month):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def _counts(name: str, title: str, counter: Counter[str], order: Sequence[str] | None = None,
            note: str = "", column: str = "cases") -> Table:
    labels = list(order) if order is not None else sorted(counter, key=lambda k: (-counter[k], k))
    return Table(name, title, (column,), tuple((label, (counter[label],)) for label in labels), note)


def agency_name(p: Partnership, agency_id: str | None, written: str | None) -> str:
    if agency_id:
        agency = p.agency(agency_id)
        if agency is not None:
            return agency.name
    return written.strip() if written and written.strip() else UNKNOWN_AGENCY


def _stage_label(r: CaseRecord) -> str:
    stages = r.stages
    if not stages:
        return "Before any stage"
    last = stages[-1]
    return f"Stage {last.number}: {last.name}" if last.number is not None else last.name


def _parse(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def stage_overruns(r: CaseRecord, now: datetime) -> list[timedelta]:
    """For each stage with a deadline that ended (moved on or closed): how late it ended (zero or
    less: on time). A stage still open past its deadline counts up to ``now``."""
    opened = [e for e in r.events if e.kind == "stage_opened"]
    ends: list[datetime | None] = [e.at for e in opened[1:]]
    ends.append(r.ending.at if r.ending else None)
    out = []
    for e, end in zip(opened, ends, strict=True):
        due = _parse(e.detail.get("due"))
        if due is None:
            continue
        if end is not None:
            out.append(end - due)
        elif now > due:  # still open, already late
            out.append(now - due)
    return out


def _ending_kind(r: CaseRecord) -> str:
    end = r.ending
    if end is None:
        return "Still open"
    if end.kind == "withdrawn":
        return "Withdrawn"
    how = str(end.detail.get("how") or "")
    if how.startswith("decided by"):
        return "Decided by the decision maker or partnership"
    if "not confirmed" in how:
        return "Resolved, not confirmed in the time allowed"
    return "Agreed and confirmed"


ENDINGS = ("Agreed and confirmed", "Decided by the decision maker or partnership",
           "Resolved, not confirmed in the time allowed", "Withdrawn", "Still open")


def _themes(r: CaseRecord) -> tuple[tuple[Theme, ...], bool]:
    tagged = tuple(Theme(t) for t in r.themes if t in Theme._value2member_map_)
    return (tagged, True) if tagged else (inferred_themes(r.fields.concern), False)


def _learning(records: Iterable[CaseRecord], p: Partnership) -> tuple[tuple[str, tuple[LearningPoint, ...]], ...]:
    by_theme: dict[str, list[LearningPoint]] = {t.label: [] for t in Theme}
    by_theme["No theme"] = []
    for r in records:
        if not r.learning:
            continue
        redact = redactor_for(r.fields, p).redact
        themes = [t.label for t in _themes(r)[0]] or ["No theme"]
        for e in r.learning:
            point = LearningPoint(r.reference, e.at, redact(str(e.detail.get("text") or "")))
            for label in themes:
                by_theme[label].append(point)
    return tuple((label, tuple(points)) for label, points in by_theme.items() if points)


@dataclass
class _Tally:
    month: Counter[str] = field(default_factory=Counter)
    raising: Counter[str] = field(default_factory=Counter)
    receiving: Counter[str] = field(default_factory=Counter)
    stage: Counter[str] = field(default_factory=Counter)
    status: Counter[str] = field(default_factory=Counter)
    themes: Counter[tuple[str, str]] = field(default_factory=Counter)
    endings: Counter[tuple[str, str]] = field(default_factory=Counter)
    deadlines: Counter[str] = field(default_factory=Counter)
    late_by: Counter[str] = field(default_factory=Counter)
    days: list[float] = field(default_factory=list)
    breached_cases: int = 0

    def add(self, r: CaseRecord, p: Partnership, now: datetime) -> None:
        self.month[r.opened_at.astimezone(p.tz).strftime("%Y-%m")] += 1
        self.raising[agency_name(p, r.raising_agency, r.fields.raised_by_agency)] += 1
        self.receiving[agency_name(p, r.other_agency, r.fields.other_agency)] += 1
        self.status[CHILD_STATUS.get(r.fields.child_status or "", "Other")] += 1
        if r.status == "closed":
            self.stage[_stage_label(r)] += 1
            if r.closed_at is not None:
                self.days.append((r.closed_at - r.opened_at).total_seconds() / 86400)
        themes, tagged = _themes(r)
        for t in themes:
            self.themes[(t.label, "tagged by staff" if tagged else "read from the referral")] += 1
        self.endings[(_ending_kind(r), "outcome sought stated" if r.fields.outcome_sought else
                      "no outcome sought stated")] += 1
        self._deadlines(stage_overruns(r, now))

    def _deadlines(self, overruns: list[timedelta]) -> None:
        late = [o for o in overruns if o > timedelta(0)]
        self.deadlines["met"] += len(overruns) - len(late)
        self.deadlines["breached"] += len(late)
        self.breached_cases += bool(late)
        for o in late:
            days = o.total_seconds() / 86400
            self.late_by["up to 1 day" if days <= 1 else "1 to 5 days" if days <= 5 else "over 5 days"] += 1


def _grid(name: str, title: str, counter: Counter[tuple[str, str]], rows: Sequence[str], cols: Sequence[str],
          note: str = "") -> Table:
    return Table(name, title, tuple(cols), tuple((r, tuple(counter[(r, c)] for c in cols)) for r in rows), note)


def _rare(p: Partnership, raising: Counter[str], threshold: int) -> Table:
    names = sorted({a.name for a in p.agencies} | set(raising) - {UNKNOWN_AGENCY})
    rare = Counter({n: raising[n] for n in names if raising[n] < threshold})
    return _counts("rarely_raise", f"Agencies that rarely raise (fewer than {threshold})", rare,
                   sorted(rare, key=lambda n: (rare[n], n)), "Every agency of the partnership's directory, "
                   "including those that raised none.", column="cases raised")


def build_report(records: Iterable[CaseRecord], p: Partnership, first: date, last: date, *,
                 threshold: int = DEFAULT_THRESHOLD, now: datetime | None = None,
                 on_record: Callable[[], None] | None = None) -> Report:
    """The report over ``records`` (the cases of ``p`` opened from ``first`` to ``last``)."""
    chosen = [r for r in records if r.partnership == p.id and first <= r.opened_at.astimezone(p.tz).date() <= last]
    now = now or max((e.at for r in chosen for e in r.events), default=datetime.combine(last, datetime.min.time(),
                                                                                          p.tz))
    tally = _Tally()
    for r in chosen:
        tally.add(r, p, now)
        if on_record is not None:
            on_record()
    endings_cols = ("outcome sought stated", "no outcome sought stated")
    theme_cols = ("tagged by staff", "read from the referral")
    tables = (
        _counts("per_month", "Escalations per month (opened)", tally.month, _months(first, last)),
        _counts("raising_agency", "By raising agency", tally.raising),
        _counts("receiving_agency", "By receiving agency (the agency the concern is about)", tally.receiving),
        _counts("stage_resolved", "Stage at which resolved (closed cases)", tally.stage),
        _counts("deadlines", "Stage deadlines met and breached (against the policy's timescales)", tally.deadlines,
                ("met", "breached"), f"{tally.breached_cases} case(s) breached at least one stage deadline.",
                column="stages"),
        _counts("breached_by", "Breached by how much", tally.late_by, ("up to 1 day", "1 to 5 days", "over 5 days"),
                column="stages"),
        _counts("child_status", "Child status", tally.status, ("CP plan", "Looked after", "CIN", "Other")),
        _grid("themes", "Themes", tally.themes, [t.label for t in Theme], theme_cols,
              f"The seeds' areas of disagreement ({THEME_CLAUSE}); tagged with a THEME reply, else read from the "
              "referral's concern."),
        _grid("outcomes", "Outcome sought and how the case ended", tally.endings, ENDINGS, endings_cols,
              "How each case ended; whether the outcome matched what was sought is for the reader."),
        _rare(p, tally.raising, threshold),
    )
    return Report(p.id, p.name, first, last, threshold, len(chosen), tables,
                  round(median(tally.days), 1) if tally.days else None, _learning(chosen, p))
