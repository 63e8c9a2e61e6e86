"""A year of cases for one partnership, written through the real store, with the figures the report
must find for them worked out here by the builder's own rules (not by the report's code)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from escalations.cases.models import Case, CaseEvent
from escalations.cases.store import Store
from escalations.routing.policy.model import Partnership

YEAR = 2025
#: The report is run as at this moment (cases still open count their overdue stage up to it).
NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
CHILD = "Ava Testchild"
STATUSES = ("cp_plan", "looked_after", "child_in_need", None, "none")
STATUS_LABEL = {"cp_plan": "CP plan", "looked_after": "Looked after", "child_in_need": "CIN"}
MAIN_RAISERS = ("sutton-csc", "met-police", "esth", "sutton-health-and-care", "swlstg", "cognus")
RECEIVERS = ("sutton-csc", "esth", "met-police")
STAGE_DAYS = 5  # each stage's deadline: 5 days after it opens
STAGE_GAP = 7  # an escalation comes 7 days after the stage opened: 2 days late


@dataclass
class Expected:
    total: int = 0
    month: Counter[str] = field(default_factory=Counter)
    raising: Counter[str] = field(default_factory=Counter)
    receiving: Counter[str] = field(default_factory=Counter)
    stage: Counter[int] = field(default_factory=Counter)
    status: Counter[str] = field(default_factory=Counter)
    endings: Counter[str] = field(default_factory=Counter)
    themes_tagged: Counter[str] = field(default_factory=Counter)
    themes_read: Counter[str] = field(default_factory=Counter)
    met: int = 0
    breached: int = 0
    late_by: Counter[str] = field(default_factory=Counter)
    learning: list[str] = field(default_factory=list)


def _late(exp: Expected, days: float) -> None:
    if days <= 0:
        exp.met += 1
        return
    exp.breached += 1
    exp.late_by["up to 1 day" if days <= 1 else "1 to 5 days" if days <= 5 else "over 5 days"] += 1


def _raiser(i: int) -> str:
    if i < 3:
        return "probation"  # raises 3: shown as <5 among the agencies that rarely raise
    if i == 3:
        return "swl-icb"  # raises 1
    return MAIN_RAISERS[i % len(MAIN_RAISERS)]  # sutton-housing raises none


def _ending(i: int) -> tuple[str, str | None]:
    k = i % 10
    if k <= 5:
        return "closed", "confirmed by the other side"
    if k == 6:
        return "closed", "decided by the decision maker"
    if k == 7:
        return "withdrawn", "withdrawn by the referrer"
    return "open", None


def _events(i: int, case_id: int, opened: datetime, stages: int, status: str, how: str | None,
            exp: Expected) -> list[CaseEvent]:
    events = []
    for k in range(stages):
        at = opened + timedelta(days=STAGE_GAP * k)
        due = at + timedelta(days=STAGE_DAYS)
        events.append(CaseEvent(case_id=case_id, at=at, kind="stage_opened", clause="Sutton 7",
                                detail={"stage": k + 1, "name": f"Stage {k + 1} name", "due": due.isoformat()}))
        if k < stages - 1:
            _late(exp, (STAGE_GAP - STAGE_DAYS))
    last_open = opened + timedelta(days=STAGE_GAP * (stages - 1))
    end = last_open + timedelta(days=2 if i % 4 else 6, hours=1 if i % 4 else 0)
    if status == "open":
        overdue = (NOW - (last_open + timedelta(days=STAGE_DAYS))).total_seconds() / 86400
        if overdue > 0:  # a stage still open and not yet due is neither met nor breached
            _late(exp, overdue)
    else:
        _late(exp, (end - (last_open + timedelta(days=STAGE_DAYS))).total_seconds() / 86400)
        events.append(CaseEvent(case_id=case_id, at=end, kind=status, actor="someone@example.org",
                                detail={"outcome": "agreed", "how": how}))
    return events


def _themes(i: int, case_id: int, opened: datetime, exp: Expected) -> tuple[str, list[CaseEvent]]:
    if i % 5 == 0:
        exp.themes_tagged["Progressing plans and communication"] += 1
        return "Professional disagreement.", [CaseEvent(case_id=case_id, at=opened + timedelta(hours=1),
                                                        kind="theme", detail={"theme": "communication"})]
    if i % 5 == 1:
        exp.themes_read["Levels of need"] += 1
        return "We think the threshold is met.", []
    return "Professional disagreement.", []


def build_year(store: Store, p: Partnership, n: int = 300) -> Expected:
    """``n`` cases opened through the year, across agencies, statuses, stages and endings."""
    exp = Expected(total=n)
    with store.session() as s:
        for i in range(n):
            opened = datetime(YEAR, 1, 1, 10, 0, tzinfo=UTC) + timedelta(days=i * 360 // n)
            status, how = _ending(i)
            stages = 1 + i % 3
            child_status = STATUSES[i % len(STATUSES)]
            fields: dict[str, Any] = {"child_names": [CHILD], "child_status": child_status,
                                      "outcome_sought": "A meeting." if i % 3 else None}
            case = Case(reference=Store.allocate_reference(s, p.reference_prefix, YEAR), partnership=p.id,
                        status=status, stage=stages, stage_index=stages - 1, opened_at=opened, updated_at=opened,
                        raising_agency=_raiser(i), other_agency=RECEIVERS[i % len(RECEIVERS)], fields=fields)
            s.add(case)
            s.flush()
            cid = case.id or 0
            concern, theme_events = _themes(i, cid, opened, exp)
            case.fields = {**fields, "concern": concern}
            events = _events(i, cid, opened, stages, status, how, exp) + theme_events
            if status != "open":
                case.closed_at = max(e.at for e in events if e.kind == status)
            if i % 50 == 0:
                events.append(CaseEvent(case_id=cid, at=opened + timedelta(hours=2), kind="learning",
                                        actor="staff@example.org",
                                        detail={"text": f"Tell {CHILD}'s school sooner (case {i})."}))
                exp.learning.append(f"Tell A.T.'s school sooner (case {i}).")
            s.add_all(events)
            exp.month[opened.strftime("%Y-%m")] += 1
            exp.raising[p.agency(_raiser(i)).name] += 1  # type: ignore[union-attr]
            exp.receiving[p.agency(RECEIVERS[i % len(RECEIVERS)]).name] += 1  # type: ignore[union-attr]
            exp.status[STATUS_LABEL.get(child_status or "", "Other")] += 1
            if status == "closed":
                exp.stage[stages] += 1
            exp.endings[{"confirmed by the other side": "Agreed and confirmed",
                         "decided by the decision maker": "Decided by the decision maker or partnership",
                         "withdrawn by the referrer": "Withdrawn"}.get(how or "", "Still open")] += 1
        s.commit()
    return exp
