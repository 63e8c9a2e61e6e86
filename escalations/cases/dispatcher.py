"""The workflow dispatcher: turns rows into :class:`CaseState`, asks :func:`transition`, and applies
the :class:`Step` — case columns, events, outbox rows (with reply tokens) and timers — in the
caller's transaction. ``tick`` fires due timers, each in its own transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import insert
from sqlalchemy.orm import make_transient_to_detached
from sqlmodel import Session, col

from escalations.cases.holds import set_legal_hold
from escalations.cases.inbound import InboundRow
from escalations.cases.mapping import TimerStatus, apply_change, case_state
from escalations.cases.models import Case, CaseEvent, CoordinatorNotice, InboundMessage, Timer
from escalations.cases.policies import PolicyVersions
from escalations.cases.prepared import Prepared
from escalations.cases.store import Store
from escalations.mailer.outbox import Queued, Renderer, enqueue
from escalations.parsers.fields import ReferralFields
from escalations.parsers.sender import valid_address
from escalations.routing.policy.model import Partnership, PolicyConfig
from escalations.routing.redact import Redactor, redactor_for
from escalations.routing.tokens import footer_line, issue_token, plus_address, token_message_id
from escalations.routing.workflow.events import WorkflowEvent
from escalations.routing.workflow.state import EventRecord, Notice, OutgoingMail, Step
from escalations.routing.workflow.transition import transition

log = structlog.get_logger("escalations.workflow")

#: How long a reply token stays valid after the mail that carries it.
TOKEN_LIFETIME = timedelta(days=90)


def _deliverable(mails: Sequence[OutgoingMail]) -> tuple[list[OutgoingMail], list[EventRecord]]:
    """The last line of defence for outgoing headers: an address that is not a valid mailbox is a case
    event, never a header we write (nor an exception that quarantines the message)."""
    ok: list[OutgoingMail] = []
    refused: list[EventRecord] = []
    for mail in mails:
        if all(valid_address(a) for a in (*mail.to, *mail.cc)):
            ok.append(mail)
        else:
            refused.append(EventRecord("recipient_invalid", {"template": mail.template, "reason": "invalid_address"}))
    return ok, refused


def _insert_case(s: Session, case: Case) -> None:
    """Write a new case row as its first step left it, in one INSERT, and attach it to the session as
    a loaded row (later steps' changes are UPDATEs). Not the ORM's unit of work: its flush of a new
    row, and then an UPDATE of it, cost more than the rest of opening a case."""
    if s.new or s.dirty or s.deleted:
        s.flush()  # whatever the row may refer to goes first, as the unit of work would order it
    values = {c: getattr(case, c) for c in _CASE_COLUMNS}
    new_id = _INSERT_CASE.execute(s.connection(), values).fetchone()[0]
    assert new_id is not None  # RETURNING the primary key
    case.id = int(new_id)
    make_transient_to_detached(case)
    s.add(case)


_CASE_COLUMNS = tuple(c.key for c in Case.__table__.columns if c.key != "id")  # type: ignore[attr-defined]
_INSERT_CASE = Prepared(insert(Case).returning(col(Case.id)), _CASE_COLUMNS)
_EVENT_COLUMNS = ("case_id", "at", "kind", "actor", "inbound_id", "clause", "detail")
_INSERT_EVENTS = Prepared(insert(CaseEvent), _EVENT_COLUMNS)
_NOTICE_COLUMNS = ("partnership", "case_id", "kind", "detail", "created_at")
_INSERT_NOTICES = Prepared(insert(CoordinatorNotice), _NOTICE_COLUMNS)


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
              inbound: InboundMessage | InboundRow | None = None, *, new: bool = False) -> None:
        """Perform the step on the case in the caller's transaction: its columns, events, notices,
        timers and outgoing mail. ``new``: the case row was made in this transaction (it has no timers
        to cancel)."""
        apply_change(case, step.change, now)
        if new and case.id is None:
            _insert_case(s, case)
        else:
            s.add(case)
        if step.change.legal_hold is not None:
            set_legal_hold(s, case, step.change.legal_hold, step, now)
        mails, refused = _deliverable(step.mails)
        self._record(s, case, (*step.events, *refused), step.notices, now, inbound)
        if step.cancel_timers and not new:
            Store.cancel_timers(s, case.id or 0)
            s.flush()
        Store.schedule_timers(s, [{"key": f"{case.id}:{t.stage_index}:{t.kind}:{t.due_at.isoformat()}",
                                   "case_id": case.id or 0, "stage": t.stage_index, "kind": t.kind,
                                   "due_at": t.due_at, "created_at": now} for t in step.timers])
        redactor = redactor_for(ReferralFields.from_json(case.fields), partnership)
        # the partnership's forms: attached on a secure route, else offered to staff (records/attach.py)
        from escalations.records.attach import plan_forms

        forms = plan_forms(s, case, step, mails, partnership, now)
        mails.extend(forms.copies)
        for mail in mails:
            row = self._enqueue(s, case, mail, partnership, redactor, now, **forms.extras(mail))
            forms.enqueued(s, mail, row, now)

    @staticmethod
    def _record(s: Session, case: Case, events: Sequence[EventRecord], notices: Sequence[Notice], now: datetime,
                inbound: InboundMessage | InboundRow | None) -> None:
        """The step's events and notices, each kind in one statement (they are only ever appended)."""
        conn = s.connection()
        if events:
            _INSERT_EVENTS.executemany(conn, [
                {"case_id": case.id or 0, "at": now, "kind": e.kind, "actor": e.actor,
                 "inbound_id": inbound.id if inbound else None, "clause": e.clause, "detail": dict(e.detail)}
                for e in events])
        if notices:
            _INSERT_NOTICES.executemany(conn, [
                {"partnership": case.partnership, "case_id": case.id, "kind": n.kind, "detail": dict(n.detail),
                 "created_at": now} for n in notices])

    def _enqueue(self, s: Session, case: Case, mail: OutgoingMail, partnership: Partnership, redactor: Redactor,
                 now: datetime, **extras: Any) -> Queued | None:
        """One outgoing mail as an outbox row; a mail that asks for an answer carries a reply token."""
        reply_to, footer, message_id = None, "", None
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
        return enqueue(s, mail, renderer=self.renderer, redactor=redactor, secure_route=partnership.secure_route,
                       from_address=partnership.primary_mailbox, from_name=partnership.name, case_id=case.id,
                       now=now, message_id_domain=self.message_id_domain, reply_to=reply_to, footer=footer,
                       message_id=message_id, **extras)

    def handle(self, s: Session, case: Case, event: WorkflowEvent, now: datetime,
               inbound: InboundMessage | InboundRow | None = None, *, new: bool = False) -> Step:
        """``new``: the case row was made in this transaction (see :meth:`apply`)."""
        partnership = self.policy_of(s, case)
        step = transition(case_state(case, new=new), event, partnership, now)
        self.apply(s, case, step, partnership, now, inbound, new=new)
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
        """Fire every timer due at ``now``, claimed a batch at a time (one due query per batch, not per
        timer), each fired in its own transaction; safe to run concurrently."""
        fired: list[dict[str, Any]] = []
        while batch := self.store.claim_due_timers(now):
            for tid in batch:
                done = self._fire(tid, now)
                if done is not None:
                    fired.append(done)
        return fired

    def _fire(self, tid: int, now: datetime) -> dict[str, Any] | None:
        from escalations.routing.workflow.events import TimerFired

        with self.store.session() as s:
            timer = s.get(Timer, tid)
            if timer is None or timer.status != TimerStatus.FIRING or timer.claimed_by != self.store.owner:
                return None
            case = s.get(Case, timer.case_id)
            if case is None:
                timer.status = TimerStatus.DONE
                s.commit()
                return None
            # The step is computed at the timer's own time, so a late tick (after an outage) moves the
            # case exactly as a punctual one would have; only reminders for deadlines already past
            # are not sent.
            late = case.due_at is not None and case.due_at <= now and timer.due_at < case.due_at
            try:
                step = self.handle(s, case, TimerFired(timer.kind, timer.stage, late=late), timer.due_at)
            except Exception:
                s.rollback()
                log.exception("timer.failed", timer_id=tid, case=case.reference, kind=timer.kind)
                self._timer_failed(tid, now)
                return None
            if timer.status == TimerStatus.FIRING:
                timer.status, timer.fired_at = TimerStatus.DONE, now
            s.commit()
        log.info("timer.fired", case=case.reference, timer_id=tid, mails=len(step.mails))
        return {"case": case.reference, "kind": step.events[0].kind if step.events else "", "timer": tid,
                "mails": len(step.mails)}

    def _timer_failed(self, tid: int, now: datetime) -> None:
        with self.store.session() as s:
            timer = s.get(Timer, tid)
            if timer is not None:
                timer.status, timer.fired_at = TimerStatus.FAILED, now
                s.commit()




