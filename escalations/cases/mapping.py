"""Rows to workflow values and back: a :class:`Case` row read as a :class:`CaseState` (its parties
decoded once, its pending resolution a frozen value), a :class:`CaseChange` written onto the row,
and the statuses of the claimable rows as StrEnums."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from escalations.cases.holds import on_legal_hold
from escalations.cases.models import Case
from escalations.parsers.fields import ReferralFields
from escalations.routing.workflow.state import CaseChange, CaseState, CaseStatus, Party, PendingResolution


class InboundStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    QUARANTINED = "quarantined"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class TimerStatus(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


def case_state(case: Case, *, new: bool = False) -> CaseState:
    """The workflow's view of the row; ``new``: the case was created in this transaction (nothing can
    hold it yet, so its legal hold is not looked up)."""
    return CaseState(
        id=case.id or 0,
        reference=case.reference,
        partnership=case.partnership,
        status=CaseStatus(case.status),
        route=case.route,
        stage_index=case.stage_index,
        opened_at=case.opened_at,
        stage_opened_at=case.stage_opened_at,
        due_at=case.due_at,
        immediate_risk=case.immediate_risk,
        fields=ReferralFields.from_json(case.fields),
        missing=tuple(case.missing),
        raiser=case.raised_by_email,
        parties=tuple(Party.from_json(p) for p in case.parties),
        resolution=PendingResolution.from_json(case.resolution or {}),
        confirmed_addresses=tuple(case.confirmed_addresses or ()),
        legal_hold=False if new else on_legal_hold(case),
    )


#: Columns a change sets when it names a value (None: unchanged).
_PLAIN_COLUMNS = ("status", "route", "stage_index", "stage_opened_at", "due_at", "immediate_risk",
                  "raising_agency", "other_agency", "closed_at")


def apply_change(case: Case, c: CaseChange, now: datetime) -> None:
    """Write what the step changes onto the case row."""
    for name in _PLAIN_COLUMNS:
        value = getattr(c, name)
        if value is not None:
            setattr(case, name, value)
    if c.stage_number is not None:
        case.stage = c.stage_number
    if c.clear_due:
        case.due_at = None
    if c.parties is not None:
        case.parties = [p.to_json() for p in c.parties]
    if c.resolution is not None:
        case.resolution = c.resolution.to_json()
    elif c.clear_resolution:
        case.resolution = {}
    _apply_referral(case, c)
    case.updated_at = now


def _apply_referral(case: Case, c: CaseChange) -> None:
    if c.fields is not None:
        case.fields = c.fields.to_json()
    if c.missing is not None:
        case.missing = list(c.missing)
    if c.confirmed_addresses is not None:
        case.confirmed_addresses = list(c.confirmed_addresses)
