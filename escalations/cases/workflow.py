"""The workflow dispatcher: turns rows into :class:`CaseState`, asks :func:`transition`, and applies
the :class:`Step` — case columns, events, outbox rows (with reply tokens) and timers — in the
caller's transaction. ``tick`` fires due timers, each in its own transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlmodel import Session

from escalations.cases.models import Case, CaseEvent, CoordinatorNotice, InboundMessage, Timer
from escalations.cases.policies import PolicyVersions
from escalations.cases.store import Store
from escalations.mailer.outbox import Renderer, enqueue
from escalations.parsers.fields import ReferralFields
from escalations.parsers.sender import valid_address
from escalations.routing.policy.model import Partnership, PolicyConfig
from escalations.routing.redact import Redactor, redactor_for
from escalations.routing.tokens import footer_line, issue_token, plus_address, token_message_id
from escalations.routing.workflow.events import WorkflowEvent
from escalations.routing.workflow.state import (
    CaseState,
    CaseStatus,
    EventRecord,
    Party,
    PendingResolution,
    Step,
)
from escalations.routing.workflow.transition import transition

log = structlog.get_logger("escalations.workflow")

#: How long a reply token stays valid after the mail that carries it.
TOKEN_LIFETIME = timedelta(days=90)


def case_state(case: Case) -> CaseState:
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
    )


@dataclass
class Workflow:
    store: Store
    config: PolicyConfig
    renderer: Renderer
    secret: bytes
    message_id_domain: str
    subaddressing: bool = True
    versions: PolicyVersions = field(default_factory=PolicyVersions)

    def policy_of(self, s: Session, case: Case) -> Partnership:
        return self.versions.policy_of(s, case, self.config)

    def apply(self, s: Session, case: Case, step: Step, partnership: Partnership, now: datetime,
              inbound: InboundMessage | None = None) -> None:
        c = step.change
        for name in ("status", "route", "stage_index", "stage_opened_at", "due_at", "immediate_risk",
                     "raising_agency", "other_agency", "closed_at"):
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
        if c.fields is not None:
            case.fields = c.fields.to_json()
        if c.missing is not None:
            case.missing = list(c.missing)
        if c.confirmed_addresses is not None:
            case.confirmed_addresses = list(c.confirmed_addresses)
        case.updated_at = now
        s.add(case)
        events = list(step.events)
        mails = []
        for mail in step.mails:
            # The last line of defence for outgoing headers: an address that is not a valid mailbox is
            # a case event, never a header we write (nor an exception that quarantines the message).
            if all(valid_address(a) for a in (*mail.to, *mail.cc)):
                mails.append(mail)
            else:
                events.append(EventRecord("recipient_invalid", {"template": mail.template,
                                                                "reason": "invalid_address"}))
        for e in events:
            s.add(CaseEvent(case_id=case.id or 0, at=now, kind=e.kind, actor=e.actor,
                            inbound_id=inbound.id if inbound else None, clause=e.clause, detail=dict(e.detail)))
        for n in step.notices:
            s.add(CoordinatorNotice(partnership=case.partnership, case_id=case.id, kind=n.kind,
                                    detail=dict(n.detail), created_at=now))
        if step.cancel_timers:
            Store.cancel_timers(s, case.id or 0)
            s.flush()
        for t in step.timers:
            Store.schedule_timer(s, case_id=case.id or 0, stage=t.stage_index, kind=t.kind, due_at=t.due_at,
                                 now=now, key=f"{case.id}:{t.stage_index}:{t.kind}:{t.due_at.isoformat()}")
        redactor = redactor_for(ReferralFields.from_json(case.fields), partnership)
        for mail in mails:
            reply_to = None
            footer = ""
            message_id = None
            if mail.token_stage is not None:
                token = issue_token(self.secret, case_id=case.id or 0, recipient=mail.to[0].lower(),
                                    stage=mail.token_stage + 1, expires_at=now + TOKEN_LIFETIME)
                message_id = token_message_id(token, self.message_id_domain)
                footer = footer_line(token)
                if self.subaddressing:
                    try:
                        reply_to = plus_address(partnership.primary_mailbox, token)
                    except ValueError:
                        reply_to = None
            enqueue(s, mail, renderer=self.renderer, redactor=redactor, secure_route=partnership.secure_route,
                    from_address=partnership.primary_mailbox,
                    from_name=partnership.name, case_id=case.id, now=now,
                    message_id_domain=self.message_id_domain, reply_to=reply_to, footer=footer,
                    message_id=message_id)

    def handle(self, s: Session, case: Case, event: WorkflowEvent, now: datetime,
               inbound: InboundMessage | None = None) -> Step:
        partnership = self.policy_of(s, case)
        step = transition(case_state(case), event, partnership, now)
        self.apply(s, case, step, partnership, now, inbound)
        return step

    # ---- the coordinator's digest -----------------------------------------------------------------

    def send_digests(self, now: datetime) -> int:
        """Queue each partnership's digest of pending notices, at most one an hour; returns how many."""
        from sqlalchemy import func, update
        from sqlmodel import col, select

        from escalations.routing.workflow.digest import DIGEST_EVERY, DigestItem, compose_digest

        queued = 0
        for pid, partnership in self.config.partnerships.items():
            with self.store.session() as s:
                pending = list(s.exec(select(CoordinatorNotice).where(
                    CoordinatorNotice.partnership == pid, col(CoordinatorNotice.digested_at).is_(None))
                    .order_by(col(CoordinatorNotice.id))).all())
                if not pending:
                    continue
                last = s.exec(select(func.max(CoordinatorNotice.digested_at))
                              .where(CoordinatorNotice.partnership == pid)).one()
                if last is not None and now - last < DIGEST_EVERY:
                    continue
                ids = [n.id for n in pending]
                taken = s.exec(update(CoordinatorNotice).where(col(CoordinatorNotice.id).in_(ids),
                                                               col(CoordinatorNotice.digested_at).is_(None))
                               .values(digested_at=now))
                if taken.rowcount != len(ids):  # another process is sending this digest
                    s.rollback()
                    continue
                refs = dict(s.exec(select(Case.id, Case.reference).where(
                    col(Case.id).in_({n.case_id for n in pending if n.case_id}))).all())
                items = [DigestItem(n.kind, refs.get(n.case_id) if n.case_id else None, n.created_at, n.detail)
                         for n in pending]
                for mail in compose_digest(partnership, items, now):
                    # A digest spans cases and holds references, codes and addresses, no case's fields.
                    enqueue(s, mail, renderer=self.renderer, redactor=Redactor.identity(),
                            from_address=partnership.primary_mailbox, from_name=partnership.name, case_id=None, now=now,
                            message_id_domain=self.message_id_domain)
                    queued += 1
                s.commit()
                log.info("digest.queued", partnership=pid, notices=len(pending))
        return queued

    def add_notice(self, s: Session, partnership: str, kind: str, detail: dict[str, Any], now: datetime,
                   case_id: int | None = None) -> None:
        """A notice for the digest that belongs to no case step (e.g. mail that matched no case)."""
        s.add(CoordinatorNotice(partnership=partnership, case_id=case_id, kind=kind, detail=detail,
                                created_at=now))

    # ---- timers -----------------------------------------------------------------------------------

    def tick(self, now: datetime) -> list[dict[str, Any]]:
        """Fire every timer due at ``now``; each in its own transaction; safe to run concurrently."""
        from escalations.routing.workflow.events import TimerFired

        fired: list[dict[str, Any]] = []
        while True:
            tid = self.store.claim_due_timer(now)
            if tid is None:
                break
            with self.store.session() as s:
                timer = s.get(Timer, tid)
                if timer is None:
                    continue
                case = s.get(Case, timer.case_id)
                if case is None:
                    timer.status = "done"
                    s.commit()
                    continue
                # The step is computed at the timer's own time, so a late tick (after an outage) moves the
                # case exactly as a punctual one would have; only reminders for deadlines already past
                # are not sent.
                late = case.due_at is not None and case.due_at <= now and timer.due_at < case.due_at
                try:
                    step = self.handle(s, case, TimerFired(timer.kind, timer.stage, late=late), timer.due_at)
                except Exception:
                    s.rollback()
                    log.exception("timer.failed", timer_id=tid, case=case.reference, kind=timer.kind)
                    with self.store.session() as s2:
                        t2 = s2.get(Timer, tid)
                        if t2 is not None:
                            t2.status, t2.fired_at = "failed", now
                            s2.commit()
                    continue
                timer = s.get(Timer, tid)
                if timer is not None and timer.status == "firing":
                    timer.status, timer.fired_at = "done", now
                s.commit()
                fired.append({"case": case.reference, "kind": step.events[0].kind if step.events else "",
                              "timer": tid, "mails": len(step.mails)})
                log.info("timer.fired", case=case.reference, timer_id=tid, mails=len(step.mails))
        return fired




