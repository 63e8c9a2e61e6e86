"""The workflow dispatcher: turns rows into :class:`CaseState`, asks :func:`transition`, and applies
the :class:`Step` — case columns, events, outbox rows (with reply tokens) and timers — in the
caller's transaction. ``tick`` fires due timers, each in its own transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlmodel import Session

from escalations.cases.models import Case, CaseEvent, InboundMessage, Timer
from escalations.cases.store import Store
from escalations.mailer.outbox import Renderer, enqueue
from escalations.parsers.referral import ReferralFields
from escalations.routing.decide import (
    CaseState,
    Party,
    Step,
    WorkflowEvent,
    transition,
)
from escalations.routing.policy import Partnership, PolicyConfig
from escalations.routing.redact import redactor_for
from escalations.routing.tokens import footer_line, issue_token, plus_address, token_message_id

log = structlog.get_logger("escalations.workflow")

#: How long a reply token stays valid after the mail that carries it.
TOKEN_LIFETIME = timedelta(days=90)


def case_state(case: Case) -> CaseState:
    return CaseState(
        id=case.id or 0,
        reference=case.reference,
        partnership=case.partnership,
        status=case.status,
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
        resolution=dict(case.resolution),
    )


def policy_of(case: Case, config: PolicyConfig) -> Partnership:
    """The policy the case was opened under (its snapshot), so YAML edits don't move running deadlines."""
    live = config.partnerships.get(case.partnership)
    if live is not None and case.policy_version and live.policy_version == case.policy_version:
        # The version fingerprints the whole effective policy: same version, same content, and no
        # need to re-validate the snapshot (which checks every address) on each event.
        return live
    if case.policy_snapshot:
        try:
            return Partnership.model_validate(case.policy_snapshot)
        except Exception:  # an old snapshot no longer valid under a newer schema
            log.warning("workflow.snapshot_invalid", case=case.reference)
    return config.partnerships[case.partnership]


@dataclass
class Workflow:
    store: Store
    config: PolicyConfig
    renderer: Renderer
    secret: bytes
    message_id_domain: str
    subaddressing: bool = True

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
            case.resolution = dict(c.resolution)
        if c.fields is not None:
            case.fields = c.fields.to_json()
        if c.missing is not None:
            case.missing = list(c.missing)
        case.updated_at = now
        s.add(case)
        for e in step.events:
            s.add(CaseEvent(case_id=case.id or 0, at=now, kind=e.kind, actor=e.actor,
                            inbound_id=inbound.id if inbound else None, clause=e.clause, detail=dict(e.detail)))
        if step.cancel_timers:
            Store.cancel_timers(s, case.id or 0)
            s.flush()
        for t in step.timers:
            Store.schedule_timer(s, case_id=case.id or 0, stage=t.stage_index, kind=t.kind, due_at=t.due_at,
                                 now=now, key=f"{case.id}:{t.stage_index}:{t.kind}:{t.due_at.isoformat()}")
        redactor = redactor_for(ReferralFields.from_json(case.fields), partnership)
        for mail in step.mails:
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
        partnership = policy_of(case, self.config)
        step = transition(case_state(case), event, partnership, now)
        self.apply(s, case, step, partnership, now, inbound)
        return step

    # ---- timers -----------------------------------------------------------------------------------

    def tick(self, now: datetime) -> list[dict[str, Any]]:
        """Fire every timer due at ``now``; each in its own transaction; safe to run concurrently."""
        from escalations.routing.decide import TimerFired

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


def staff_addresses(p: Partnership) -> set[str]:
    """The partnership's staff (its coordinator role, e.g. the business unit, and their deputies): they
    may change any case of theirs. Other partnership roles (CP Chair, IRO, the Independent Chair) act
    on a case only where the policy makes them a party of its current stage."""
    out: set[str] = set()
    role = p.roles.get(p.coordinator_role)
    for c in role.contacts if role else ():
        out.add(c.email.lower())
        if c.deputy:
            out.add(c.deputy.email.lower())
    return out


def config_addresses(p: Partnership) -> set[str]:
    """Everyone the partnership's configuration names in a role."""
    out: set[str] = set()
    for role in p.roles.values():
        for c in role.contacts:
            out.add(c.email.lower())
            if c.deputy:
                out.add(c.deputy.email.lower())
    return out


def known_addresses(case: Case, p: Partnership) -> set[str]:
    """Addresses that came from config or the case: the only ones we ever write to."""
    out = config_addresses(p)
    for party in case.parties:
        out.add(str(party["email"]).lower())
        if party.get("deputy_email"):
            out.add(str(party["deputy_email"]).lower())
    if case.raised_by_email:
        out.add(case.raised_by_email.lower())
    return out


