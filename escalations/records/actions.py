"""Staff actions of the records package: a learning point or theme added to a case (through the
dispatcher, as a staff reply command: an audited case event, never a direct write), and legal holds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlmodel import select

from escalations.cases.models import Case, CaseEvent
from escalations.cases.workflow import Workflow
from escalations.records.models import LegalHold
from escalations.routing.workflow.events import Replied
from escalations.routing.workflow.state import Step

__all__ = ["ActionRefused", "NoSuchCase", "hold", "release", "staff_command"]


class NoSuchCase(LookupError):
    pass


@dataclass(frozen=True)
class ActionRefused(Exception):
    """The workflow did not apply the command; ``why`` is its own sentence (no case content)."""

    why: str


def _case(s: object, reference: str) -> Case:
    from sqlmodel import Session

    assert isinstance(s, Session)
    case = s.exec(select(Case).where(func.upper(Case.reference) == reference.upper())).first()
    if case is None:
        raise NoSuchCase(reference)
    return case


def staff_command(workflow: Workflow, reference: str, command: str, text: str, *, by: str,
                  now: datetime, expect: str) -> Step:
    """``command`` (LEARNING, THEME...) given by partnership staff ``by``, performed by the dispatcher
    in one transaction; raises :class:`ActionRefused` when the workflow recorded it without the
    ``expect`` event (what it does when applied)."""
    event = Replied(sender=by, command=command, argument=text, message_id=None, authority="staff",
                    side="partnership")
    with workflow.store.session() as s:
        case = _case(s, reference)
        step = workflow.handle(s, case, event, now)
        s.commit()
    refused = next((e for e in step.events if e.kind == "illegal_command"), None)
    if refused is not None:
        raise ActionRefused(str(refused.detail.get("why") or "not applied"))
    if not any(e.kind == expect for e in step.events):  # recorded only, the sender told what to say
        raise ActionRefused(f"{command} was recorded but not applied: say what it is after the word")
    return step


def hold(workflow: Workflow, reference: str, *, by: str, reason: str, now: datetime) -> bool:
    """Put a legal hold on the case (False: it had one); recorded in its history."""
    with workflow.store.session() as s:
        case = _case(s, reference)
        if s.get(LegalHold, case.id) is not None:
            return False
        s.add(LegalHold(case_id=case.id or 0, set_at=now, set_by=by, reason=reason))
        s.add(CaseEvent(case_id=case.id or 0, at=now, kind="legal_hold_set", actor=by, detail={}))
        s.commit()
    return True


def release(workflow: Workflow, reference: str, *, by: str, now: datetime) -> bool:
    """Lift the case's legal hold (False: it had none); recorded in its history."""
    with workflow.store.session() as s:
        case = _case(s, reference)
        row = s.get(LegalHold, case.id)
        if row is None:
            return False
        s.delete(row)
        s.add(CaseEvent(case_id=case.id or 0, at=now, kind="legal_hold_released", actor=by, detail={}))
        s.commit()
    return True
