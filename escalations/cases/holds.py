"""Legal holds as the dispatcher reads and writes them: the records package's ``legal_hold`` row, read
into a case's state and set or lifted with the step of a staff action (never by a page directly)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import object_session
from sqlmodel import Session

from escalations.cases.models import Case
from escalations.records.models import LegalHold
from escalations.routing.workflow.state import Step

__all__ = ["on_legal_hold", "set_legal_hold"]


def on_legal_hold(case: Case) -> bool:
    """Is the case on legal hold (read in the case's own session)?"""
    s = object_session(case)
    return s is not None and case.id is not None and s.get(LegalHold, case.id) is not None


def set_legal_hold(s: Session, case: Case, on: bool, step: Step, now: datetime) -> None:
    """A staff action set or lifted the hold: the row retention reads, in the step's transaction; who
    and why are the action's own record (the step's first event)."""
    row = s.get(LegalHold, case.id)
    first = step.events[0] if step.events else None
    if on and row is None:
        s.add(LegalHold(case_id=case.id or 0, set_at=now, set_by=(first.actor if first else None) or "staff",
                        reason=str(first.detail.get("reason") or "") if first else ""))
    elif not on and row is not None:
        s.delete(row)
