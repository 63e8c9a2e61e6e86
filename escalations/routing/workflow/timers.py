"""Timers: each kind is one handler in :data:`TIMERS`, applying in the statuses it lists; a timer
for another stage, a finished case or a status its kind does not apply in is recorded and ignored."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from escalations.routing.workflow.audience import audience_of
from escalations.routing.workflow.mail import answer, case_subject, local, mail, stage_context
from escalations.routing.workflow.resolution import ask_confirmation, close_unconfirmed
from escalations.routing.workflow.stages import asked_at_stage, current_plan, escalate, next_day_end
from escalations.routing.workflow.state import (
    TERMINAL,
    CaseState,
    CaseStatus,
    EventRecord,
    Step,
    TimerKind,
    TimerSpec,
)
from escalations.routing.workflow.wording import action_for

if TYPE_CHECKING:
    from escalations.routing.policy.model import Partnership
    from escalations.routing.workflow.events import TimerFired

__all__ = ["TIMERS", "TimerHandler", "on_timer"]


def _reminder(state: CaseState, p: Partnership, kind: str, now: datetime) -> Step:
    plan = current_plan(state, p, now)
    if plan is None:
        return Step()
    ctx = stage_context(state, p, plan)
    ctx["due_local"] = local(state.due_at, p)
    ctx["kind"] = kind
    ctx["auto_escalate"] = p.auto_escalate and not plan.is_final
    subject = case_subject(state.reference, f"Reminder: stage {plan.number} deadline {local(state.due_at, p)}"
                           if kind == TimerKind.REMIND_BEFORE else f"Stage {plan.number} deadline reached")
    mails = []
    for x in asked_at_stage(state.parties):
        # auto_escalate: false (YAML) -> at the deadline the raiser is asked to confirm the escalation.
        template = "escalation_confirm_request.txt.j2" if (kind == TimerKind.REMIND_DUE and x.party == "raiser"
                                                            and not p.auto_escalate and not plan.is_final) \
            else "reminder.txt.j2"
        audience = audience_of(x, plan)
        own = {**ctx, "immediate_note": ""}
        own["stage_action"], own["stage_clause"] = action_for(p, plan, audience)
        mails.append(mail(template, x.active_email, subject, own,
                          f"{state.reference}:s{state.stage_index}:{kind}:{x.active_email}",
                          plan.due_clause or plan.clause, token_stage=state.stage_index,
                          recipient_name=x.active_name, role=x.role_name, audience=audience))
    return Step(events=(EventRecord("reminder_sent", {"kind": kind, "to": [m.to[0] for m in mails]},
                                    clause=plan.due_clause),), mails=tuple(mails))


def _remind_before(state: CaseState, t: TimerFired, p: Partnership, now: datetime) -> Step:
    return _reminder(state, p, TimerKind.REMIND_BEFORE, now)


def _remind_due(state: CaseState, t: TimerFired, p: Partnership, now: datetime) -> Step:
    return _reminder(state, p, TimerKind.REMIND_DUE, now)


def _escalate(state: CaseState, t: TimerFired, p: Partnership, now: datetime) -> Step:
    plan = current_plan(state, p, now)
    if plan is None:
        return _ignored(state, t)
    because = ("the immediate-risk step's deadline passed" if plan.number == 0
               else f"the deadline for stage {plan.number} passed without a confirmed resolution")
    # At the final stage there is nowhere to go: everyone asked is reminded instead.
    return escalate(state, p, now, because, plan.due_clause) or _reminder(state, p, TimerKind.REMIND_DUE, now)


def _routing_reminder(state: CaseState, t: TimerFired, p: Partnership, now: datetime) -> Step:
    coord = [c.email for c in p.coordinator()]
    day = p.calendar.local(now).date().isoformat()
    mails = tuple(answer(state, p, c, "case_needs_routing.txt.j2", f"{state.reference}:routing:{day}:{c}",
                         {"unresolved": ["the case is still waiting to be routed"], "blocking": True,
                          "recipient_name": "", "recipient_role": "", "because": "daily reminder",
                          "stage_number": "", "stage_name": "", "due_local": "", "stage_action": ""},
                         "Reminder: routing needed") for c in coord)
    return Step(events=(EventRecord("routing_reminder", {"to": coord}),), mails=mails,
                timers=(TimerSpec(TimerKind.ROUTING_REMINDER, next_day_end(p, now), state.stage_index),))


def _confirm_reminder(state: CaseState, t: TimerFired, p: Partnership, now: datetime) -> Step:
    return ask_confirmation(state, p, now, reminder=True)


def _confirm_close(state: CaseState, t: TimerFired, p: Partnership, now: datetime) -> Step:
    return close_unconfirmed(state, p, now)


TimerHandler = Callable[[CaseState, "TimerFired", "Partnership", datetime], Step]


@dataclass(frozen=True)
class Timer:
    statuses: frozenset[CaseStatus]
    handler: TimerHandler
    #: Fired after the stage's deadline had passed (a late tick): recorded, not sent, in any status.
    skip_when_late: bool = False


_OPEN = frozenset({CaseStatus.OPEN})
_AWAITING = frozenset({CaseStatus.AWAITING_CONFIRMATION})

TIMERS: Mapping[str, Timer] = {
    TimerKind.REMIND_BEFORE: Timer(_OPEN, _remind_before, skip_when_late=True),
    TimerKind.REMIND_DUE: Timer(_OPEN, _remind_due),
    TimerKind.ESCALATE: Timer(_OPEN, _escalate),
    TimerKind.ROUTING_REMINDER: Timer(frozenset({CaseStatus.NEEDS_ROUTING}), _routing_reminder),
    TimerKind.CONFIRM_REMINDER: Timer(_AWAITING, _confirm_reminder),
    TimerKind.CONFIRM_CLOSE: Timer(_AWAITING, _confirm_close),
}


def _ignored(state: CaseState, t: TimerFired) -> Step:
    return Step(events=(EventRecord("timer_ignored", {"kind": t.kind, "status": state.status}),))


def on_timer(state: CaseState, t: TimerFired, p: Partnership, now: datetime) -> Step:
    if t.stage_index != state.stage_index or state.status in TERMINAL:
        return Step(events=(EventRecord("timer_ignored", {"kind": t.kind, "stage_index": t.stage_index}),))
    timer = TIMERS.get(t.kind)
    if timer is not None and timer.skip_when_late and t.late:
        return Step(events=(EventRecord("reminder_skipped", {"kind": t.kind, "why": "the deadline had already "
                                                             "passed when the timer ran"}),))
    if timer is None or state.status not in timer.statuses:
        return _ignored(state, t)
    return timer.handler(state, t, p, now)
