"""Read models for the staff web pages: what needs a person today, the filtered case list, and a
case's record in order. Read-only, through the store's reading sessions (the pages never query the
database themselves); times stay UTC-aware and the templates show them in London time.

Personal data (the referral's fields) is only in :class:`CaseRecord.fields`, which the case page
shows after the audited "show personal details" request.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlmodel import col, select

from escalations.cases.holds import on_legal_hold
from escalations.cases.models import Case, CaseEvent, InboundMessage, OutboxMessage
from escalations.cases.operations import quarantine_code
from escalations.cases.store import Store

__all__ = ["CaseFilter", "CaseList", "CaseRecord", "CaseRow", "MailView", "QuarantineRow", "StageView",
           "TodaySection", "TodayView", "case_list", "case_record", "today"]

LIVE = ("awaiting_information", "open", "needs_routing", "awaiting_confirmation")
AT_STAGE = ("open", "awaiting_confirmation")
#: Bounces shown on Today: the last week's.
BOUNCE_WINDOW = timedelta(days=7)
#: Referrals shown as new on Today.
NEW_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class CaseRow:
    """One line of a case list: no child's details."""

    reference: str
    partnership: str
    status: str
    stage: int | None
    opened_at: datetime
    due_at: datetime | None
    raising_agency: str | None
    receiving_agency: str | None
    child_status: str | None
    immediate_risk: bool
    updated_at: datetime
    missing: tuple[str, ...] = ()

    @classmethod
    def of(cls, c: Case) -> CaseRow:
        return cls(reference=c.reference, partnership=c.partnership, status=c.status, stage=c.stage,
                   opened_at=c.opened_at, due_at=c.due_at,
                   raising_agency=c.raising_agency or _text(c.fields.get("raised_by_agency")),
                   receiving_agency=c.other_agency or _text(c.fields.get("other_agency")),
                   child_status=_text(c.fields.get("child_status")), immediate_risk=c.immediate_risk,
                   updated_at=c.updated_at, missing=tuple(c.missing))


def _text(v: object) -> str | None:
    return str(v) if v not in (None, "") else None


@dataclass(frozen=True)
class QuarantineRow:
    id: int
    received_at: datetime
    reason: str
    source: str
    size: int


@dataclass(frozen=True)
class TodaySection:
    key: str
    title: str
    hint: str
    cases: tuple[CaseRow, ...] = ()
    quarantined: tuple[QuarantineRow, ...] = ()
    #: (reference, address, when) of hard bounces.
    bounces: tuple[tuple[str, str, datetime], ...] = ()

    @property
    def count(self) -> int:
        return len(self.cases) + len(self.quarantined) + len(self.bounces)


@dataclass(frozen=True)
class TodayView:
    partnership: str
    sections: tuple[TodaySection, ...]

    @property
    def total(self) -> int:
        return sum(s.count for s in self.sections)


def _is_due_today(c: Case, today_local: date, now: datetime, tz: Any) -> bool:
    return c.due_at is not None and c.due_at >= now and c.due_at.astimezone(tz).date() == today_local


def _unconfirmed(events: Iterable[CaseEvent], c: Case) -> bool:
    """An address in the referral waits for the coordinator to confirm it may be mailed."""
    confirmed = {a.lower() for a in c.confirmed_addresses or ()}
    return any(e.kind == "address_unconfirmed" and str(e.detail.get("address", "")).lower() not in confirmed
               and "@" in str(e.detail.get("address", "")) for e in events)


@dataclass
class _TodayRows:
    cases: list[Case]
    by_case: dict[int, list[CaseEvent]]
    refs: dict[int, str]
    owner_of: dict[int, str]
    bounces: list[CaseEvent]
    quarantined: list[InboundMessage]


def _load_today(store: Store, wanted: list[str], now: datetime) -> _TodayRows:
    with store.reading() as s:
        cases = list(s.exec(select(Case).where(col(Case.partnership).in_(wanted), col(Case.status).in_(LIVE))
                            .order_by(col(Case.due_at), col(Case.opened_at))).all())
        ids = [c.id for c in cases]
        events = list(s.exec(select(CaseEvent).where(col(CaseEvent.case_id).in_(ids),
                                                     CaseEvent.kind == "address_unconfirmed")).all()) if ids else []
        owned = s.exec(select(Case.id, Case.reference, Case.partnership).where(col(Case.partnership).in_(wanted))).all()
        refs = {i: r for i, r, _ in owned if i is not None}
        bounces = list(s.exec(select(CaseEvent).where(
            CaseEvent.kind == "contact_flagged", col(CaseEvent.at) >= now - BOUNCE_WINDOW,
            col(CaseEvent.case_id).in_(list(refs)))).all()) if refs else []
        quarantined = list(s.exec(select(InboundMessage).where(InboundMessage.status == "quarantined")
                                  .order_by(col(InboundMessage.received_at))).all())
        for q in quarantined:
            s.expunge(q)
    by_case: dict[int, list[CaseEvent]] = {}
    for e in events:
        by_case.setdefault(e.case_id, []).append(e)
    return _TodayRows(cases, by_case, refs, {i: p for i, _, p in owned if i is not None}, bounces, quarantined)


def _case_sections(mine: list[Case], by_case: Mapping[int, list[CaseEvent]], now: datetime,
                   tz: Any) -> tuple[TodaySection, ...]:
    at_stage = [c for c in mine if c.status in AT_STAGE]
    today_local = now.astimezone(tz).date()
    return (
        TodaySection("new", "New referrals", "Opened in the last 24 hours.",
                     cases=_rows(c for c in mine if c.opened_at >= now - NEW_WINDOW)),
        TodaySection("due_today", "Due today", "A stage's deadline falls today.",
                     cases=_rows(c for c in at_stage if _is_due_today(c, today_local, now, tz))),
        TodaySection("overdue", "Overdue", "The deadline has passed and the case is still at that stage.",
                     cases=_rows(c for c in at_stage if c.due_at is not None and c.due_at < now)),
        TodaySection("awaiting_confirmation", "Awaiting confirmation",
                     "A resolution was recorded; the other side has been asked to confirm it.",
                     cases=_rows(c for c in mine if c.status == "awaiting_confirmation")),
        TodaySection("needs_routing", "Waiting for routing",
                     "The other agency is not in the directory, or an address needs confirming.",
                     cases=_rows(c for c in mine if c.status == "needs_routing"
                                 or _unconfirmed(by_case.get(c.id or 0, ()), c))),
        TodaySection("incomplete", "Incomplete referrals", "Waiting for missing information.",
                     cases=_rows(c for c in mine if c.status == "awaiting_information")),
    )


def today(store: Store, partnerships: Iterable[str], now: datetime, tz: Any,
          quarantine_owner: Callable[[InboundMessage], str | None] | None = None) -> list[TodayView]:
    """Per partnership: new referrals, due today, overdue, awaiting confirmation, waiting for routing,
    incomplete referrals, quarantined mail, bounces. ``quarantine_owner(row) -> partnership id`` tells
    whose a quarantined message is (the service's Operations knows the mailboxes)."""
    wanted = sorted(set(partnerships))
    data = _load_today(store, wanted, now)
    views = []
    for pid in wanted:
        qrows = tuple(QuarantineRow(q.id or 0, q.received_at, quarantine_code(q.error), q.source, q.size)
                      for q in data.quarantined
                      if (quarantine_owner(q) if quarantine_owner is not None else q.partnership) == pid)
        brows = tuple((data.refs[e.case_id], str(e.detail.get("address") or ""), e.at) for e in data.bounces
                      if data.owner_of.get(e.case_id) == pid and e.detail.get("why") == "hard bounce")
        sections = (*_case_sections([c for c in data.cases if c.partnership == pid], data.by_case, now, tz),
                    TodaySection("quarantined", "Quarantined mail", "Mail that could not be processed.",
                                 quarantined=qrows),
                    TodaySection("bounces", "Bounces", "Mail to a contact bounced in the last 7 days.",
                                 bounces=brows))
        views.append(TodayView(pid, sections))
    return views


def _rows(cases: Iterable[Case]) -> tuple[CaseRow, ...]:
    return tuple(CaseRow.of(c) for c in cases)


# ---- the case list -------------------------------------------------------------------------------

SORTS: Mapping[str, str] = {"reference": "reference", "opened": "opened_at", "due": "due_at", "status": "status",
                            "stage": "stage", "updated": "updated_at", "partnership": "partnership"}
PAGE_SIZE = 25


@dataclass(frozen=True)
class CaseFilter:
    partnerships: frozenset[str]
    partnership: str | None = None
    status: str | None = None
    stage: int | None = None
    raising_agency: str | None = None
    receiving_agency: str | None = None
    child_status: str | None = None
    opened_from: date | None = None
    opened_to: date | None = None
    reference: str | None = None
    sort: str = "opened"
    descending: bool = True
    page: int = 1
    #: A practitioner: only these references.
    only: frozenset[str] | None = None

    def matches(self, r: CaseRow, tz: Any) -> bool:
        checks: tuple[tuple[object, Callable[[], bool]], ...] = (
            (self.partnership, lambda: r.partnership == self.partnership),
            (self.status, lambda: r.status == self.status),
            (self.stage is not None or None, lambda: r.stage == self.stage),
            (self.raising_agency, lambda: r.raising_agency == self.raising_agency),
            (self.receiving_agency, lambda: r.receiving_agency == self.receiving_agency),
            (self.child_status, lambda: (r.child_status or "none") == self.child_status),
            (self.opened_from, lambda: self.opened_from is not None
             and r.opened_at.astimezone(tz).date() >= self.opened_from),
            (self.opened_to, lambda: self.opened_to is not None and r.opened_at.astimezone(tz).date() <= self.opened_to),
            (self.reference, lambda: (self.reference or "").strip().upper() in r.reference.upper()),
            (self.only is not None or None, lambda: self.only is not None and r.reference in self.only),
        )
        return all(check() for given, check in checks if given)


@dataclass(frozen=True)
class CaseList:
    rows: tuple[CaseRow, ...]
    total: int
    page: int
    pages: int
    #: Values to offer in the filters (from the cases this person may see): (agency, its partnership).
    agencies: tuple[tuple[str, str], ...]
    statuses: tuple[str, ...]


def _sort_key(name: str) -> Any:
    attr = SORTS.get(name, "opened_at")

    def key(r: CaseRow) -> tuple[bool, Any]:
        v = getattr(r, attr)
        return (v is None, v if v is not None else 0)

    return key


def case_list(store: Store, f: CaseFilter, tz: Any, *, paginate: bool = True) -> CaseList:
    with store.reading() as s:
        cases = list(s.exec(select(Case).where(col(Case.partnership).in_(sorted(f.partnerships)))).all())
        everything = [CaseRow.of(c) for c in cases]
    rows = sorted((r for r in everything if f.matches(r, tz)), key=_sort_key(f.sort), reverse=f.descending)
    pages = max(1, -(-len(rows) // PAGE_SIZE))
    page = min(max(1, f.page), pages)
    shown = rows[(page - 1) * PAGE_SIZE: page * PAGE_SIZE] if paginate else rows
    agencies = sorted({a: r.partnership for r in everything for a in (r.raising_agency, r.receiving_agency)
                       if a}.items())
    return CaseList(rows=tuple(shown), total=len(rows), page=page, pages=pages, agencies=tuple(agencies),
                    statuses=tuple(sorted({r.status for r in everything})))


# ---- one case's record ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MailView:
    at: datetime
    to: tuple[str, ...]
    subject: str
    template: str
    status: str
    sent_at: datetime | None
    body: str


@dataclass(frozen=True)
class StageView:
    number: int
    name: str
    opened_at: datetime
    due: datetime | None
    asked: tuple[str, ...]
    notified: tuple[str, ...]
    clause: str | None
    ended_at: datetime | None
    #: met | missed | open | overdue | no deadline
    outcome: str


@dataclass(frozen=True)
class EventView:
    """One case event as people read it (the case page, the forms and the report)."""

    at: datetime
    kind: str
    actor: str | None
    clause: str | None
    detail: Mapping[str, Any]


@dataclass(frozen=True)
class CaseRecord:
    row: CaseRow
    id: int
    route: str | None
    stage_index: int | None
    stage_opened_at: datetime | None
    raiser: str | None
    parties: tuple[Mapping[str, Any], ...]
    resolution: Mapping[str, Any]
    legal_hold: bool
    #: The referral as understood: personal data, shown only after the audited request.
    fields: Mapping[str, Any]
    stages: tuple[StageView, ...]
    mails: tuple[MailView, ...]
    replies: tuple[EventView, ...]
    unverified: tuple[EventView, ...]
    notes: tuple[EventView, ...]
    events: tuple[EventView, ...] = field(default_factory=tuple)


_CLOSING = ("closed", "withdrawn")


def _outcome(events: Sequence[CaseEvent], i: int, due: datetime | None, now: datetime) -> tuple[datetime | None, str]:
    """When the stage opened at events[i] ended, and how: met (closed in time), escalated early (a
    person moved it on before its deadline), missed (its deadline passed first), open, overdue."""
    end = next((x for x in events[i + 1:] if x.kind == "stage_opened" or x.kind in _CLOSING), None)
    if due is None:
        return (end.at if end else None), "no deadline"
    if end is None:
        return None, "overdue" if now > due else "open"
    if end.at > due:
        return end.at, "missed"
    if end.kind in _CLOSING:
        return end.at, "met"
    return end.at, "escalated early"


def _stages(events: Sequence[CaseEvent], now: datetime) -> tuple[StageView, ...]:
    out: list[StageView] = []
    for i, e in enumerate(events):
        if e.kind != "stage_opened":
            continue
        due_text = e.detail.get("due")
        due = datetime.fromisoformat(due_text) if isinstance(due_text, str) else None
        ended, outcome = _outcome(events, i, due, now)
        out.append(StageView(number=int(e.detail.get("stage") or 0), name=str(e.detail.get("name") or ""),
                             opened_at=e.at, due=due, asked=tuple(e.detail.get("asked") or ()),
                             notified=tuple(e.detail.get("notified") or ()), clause=e.clause, ended_at=ended,
                             outcome=outcome))
    return tuple(out)


def _body(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    part = msg.get_body(preferencelist=("plain",)) if hasattr(msg, "get_body") else None
    if part is None:
        return ""
    try:
        return str(part.get_content())
    except (LookupError, ValueError):
        return ""


def event_view(e: CaseEvent) -> EventView:
    return EventView(at=e.at, kind=e.kind, actor=e.actor, clause=e.clause, detail=dict(e.detail))


def case_record(store: Store, reference: str, now: datetime) -> CaseRecord | None:
    with store.reading() as s:
        case = s.exec(select(Case).where(Case.reference == reference)).first()
        if case is None or case.id is None:
            return None
        events = list(s.exec(select(CaseEvent).where(CaseEvent.case_id == case.id)
                             .order_by(col(CaseEvent.at), col(CaseEvent.id))).all())
        outbox = list(s.exec(select(OutboxMessage).where(OutboxMessage.case_id == case.id)
                             .order_by(col(OutboxMessage.created_at), col(OutboxMessage.id))).all())
        mails = tuple(MailView(at=o.created_at, to=tuple(o.recipients), subject=o.subject, template=o.template,
                               status=o.status, sent_at=o.sent_at, body=_body(o.raw)) for o in outbox)
        views = tuple(event_view(e) for e in events)
        return CaseRecord(
            row=CaseRow.of(case), id=case.id, route=case.route, stage_index=case.stage_index,
            stage_opened_at=case.stage_opened_at, raiser=case.raised_by_email, parties=tuple(case.parties),
            resolution=dict(case.resolution or {}), legal_hold=on_legal_hold(case),
            fields=dict(case.fields), stages=_stages(events, now), mails=mails,
            replies=tuple(v for v in views if v.kind.startswith("reply_") and v.kind != "reply_not_applied"),
            unverified=tuple(v for v in views if v.kind == "reply_not_applied"),
            notes=tuple(v for v in views if v.kind in ("reply_note", "staff_note")),
            events=views)
