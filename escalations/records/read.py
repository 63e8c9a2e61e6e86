"""A case as its records need it: the referral's fields, its history, who was told, how it ended.

Read-only, from the store (one query per table for many cases at once). Personal data stays in
these values: they go into forms, exports and staff-only pages, never into logs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from escalations.cases.engine import in_chunks
from escalations.cases.models import Case, CaseEvent, OutboxMessage, PolicyVersion
from escalations.cases.store import Store
from escalations.parsers.fields import ReferralFields
from escalations.records.models import LegalHold
from escalations.views.pages import EventView, event_view

__all__ = ["CaseRecord", "EventView", "StageView", "load_record", "load_records"]

#: Event kinds that end a case.
ENDINGS = ("closed", "withdrawn")


@dataclass(frozen=True)
class StageView:
    number: int | None
    name: str
    opened_at: datetime
    due: str | None
    asked: tuple[str, ...]
    notified: tuple[str, ...]
    clause: str | None


@dataclass(frozen=True)
class CaseRecord:
    id: int
    reference: str
    partnership: str
    status: str
    stage: int | None
    route: str | None
    opened_at: datetime
    closed_at: datetime | None
    due_at: datetime | None
    raising_agency: str | None
    other_agency: str | None
    raised_by_email: str | None
    immediate_risk: bool
    fields: ReferralFields
    parties: tuple[Mapping[str, Any], ...]
    events: tuple[EventView, ...]
    #: Everyone the service mailed about the case.
    mailed: tuple[str, ...] = ()
    legal_hold: bool = False
    policy_snapshot: Mapping[str, Any] = field(default_factory=dict)

    @property
    def stages(self) -> tuple[StageView, ...]:
        return tuple(StageView(number=e.detail.get("stage"), name=str(e.detail.get("name") or ""), opened_at=e.at,
                               due=e.detail.get("due"), asked=tuple(e.detail.get("asked") or ()),
                               notified=tuple(e.detail.get("notified") or ()), clause=e.clause)
                     for e in self.events if e.kind == "stage_opened")

    @property
    def ending(self) -> EventView | None:
        return next((e for e in reversed(self.events) if e.kind in ENDINGS), None)

    @property
    def outcome(self) -> str:
        end = self.ending
        return str(end.detail.get("outcome") or "") if end else ""

    @property
    def resolved_by(self) -> str | None:
        """Who recorded the resolution (the RESOLVED), else who closed the case."""
        end = self.ending
        if end is None or end.kind != "closed":
            return end.actor if end else None
        resolved = [e for e in self.events if e.kind == "reply_resolved" and e.at <= end.at]
        return resolved[-1].actor if resolved else end.actor

    @property
    def learning(self) -> tuple[EventView, ...]:
        return tuple(e for e in self.events if e.kind == "learning")

    @property
    def themes(self) -> tuple[str, ...]:
        """Themes staff tagged (THEME replies, in order, once each)."""
        return tuple(dict.fromkeys(str(e.detail.get("theme")) for e in self.events
                                   if e.kind == "theme" and e.detail.get("theme")))

    @property
    def decisions(self) -> tuple[EventView, ...]:
        """What was decided along the way: escalations, resolutions recorded, confirmations, the ending."""
        kinds = {"escalated", "resolution_recorded", "reply_resolved", "reply_accept", "reply_escalate",
                 "bypassed", "immediate_risk_route", *ENDINGS}
        return tuple(e for e in self.events if e.kind in kinds)


def _record(case: Case, events: Sequence[CaseEvent], mailed: Iterable[str], held: bool,
            policy: Mapping[str, Any]) -> CaseRecord:
    return CaseRecord(
        id=case.id or 0, reference=case.reference, partnership=case.partnership, status=case.status,
        stage=case.stage, route=case.route, opened_at=case.opened_at, closed_at=case.closed_at, due_at=case.due_at,
        raising_agency=case.raising_agency, other_agency=case.other_agency, raised_by_email=case.raised_by_email,
        immediate_risk=case.immediate_risk, fields=ReferralFields.from_json(case.fields),
        parties=tuple(case.parties), policy_snapshot=policy,
        events=tuple(event_view(e) for e in events),
        mailed=tuple(sorted(set(mailed))), legal_hold=held)


def load_records(store: Store, partnership: str | None = None, *, opened_from: datetime | None = None,
                 opened_to: datetime | None = None, references: Sequence[str] | None = None) -> list[CaseRecord]:
    """Cases (by id), with their events, recipients and holds, in four queries."""
    with store.reading() as s:
        return _load(s, partnership, opened_from, opened_to, references)


def record_in_session(s: Session, case: Case) -> CaseRecord:
    """The case as the caller's transaction sees it (its step's events included, before commit)."""
    s.flush()
    return _load(s, None, None, None, None, ids=[case.id or 0])[0]


def _cases(s: Session, partnership: str | None, opened_from: datetime | None, opened_to: datetime | None,
           references: Sequence[str] | None, ids: Sequence[int] | None) -> list[Case]:
    q = select(Case).order_by(col(Case.id))
    if partnership:
        q = q.where(Case.partnership == partnership)
    if opened_from is not None:
        q = q.where(col(Case.opened_at) >= opened_from)
    if opened_to is not None:
        q = q.where(col(Case.opened_at) < opened_to)
    if references is not None:
        q = q.where(col(Case.reference).in_(list(references)))
    if ids is not None:
        q = q.where(col(Case.id).in_(list(ids)))
    return list(s.exec(q).all())


def _load(s: Session, partnership: str | None, opened_from: datetime | None, opened_to: datetime | None,
          references: Sequence[str] | None, ids: Sequence[int] | None = None) -> list[CaseRecord]:
    cases = _cases(s, partnership, opened_from, opened_to, references, ids)
    case_ids = [c.id for c in cases]
    events: dict[int, list[CaseEvent]] = defaultdict(list)
    mailed: dict[int, set[str]] = defaultdict(set)
    held: set[int] = set()
    for chunk in in_chunks(case_ids):
        for e in s.exec(select(CaseEvent).where(col(CaseEvent.case_id).in_(chunk))
                        .order_by(col(CaseEvent.at), col(CaseEvent.id))).all():
            events[e.case_id].append(e)
        for cid, recips in s.exec(select(OutboxMessage.case_id, OutboxMessage.recipients)
                                  .where(col(OutboxMessage.case_id).in_(chunk))).all():
            mailed[cid or 0].update(recips)
        held.update(s.exec(select(LegalHold.case_id).where(col(LegalHold.case_id).in_(chunk))).all())
    # each policy version once, however many cases were opened under it
    version_ids = list({c.policy_version_id for c in cases if c.policy_version_id is not None})
    policies = dict(s.exec(select(PolicyVersion.id, PolicyVersion.policy)
                           .where(col(PolicyVersion.id).in_(version_ids))).all()) if version_ids else {}
    return [_record(c, events[c.id or 0], mailed[c.id or 0], (c.id or 0) in held,
                    policies.get(c.policy_version_id) or {}) for c in cases]


def load_record(store: Store, reference: str) -> CaseRecord | None:
    case = store.case_by_reference(reference)
    if case is None:
        return None
    found = load_records(store, references=[case.reference])
    return found[0] if found else None
