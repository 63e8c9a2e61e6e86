"""Stages: who is involved at a stage, opening it (requests, copies, notifications, timers), and
moving a case on to the next one.

Every deadline comes from the policy engine (:func:`plan_for`), never from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from escalations.routing.workflow.audience import Audience, audience_of
from escalations.routing.workflow.mail import (
    base_context,
    case_subject,
    local,
    mail,
    stage_context,
    stage_subject,
)
from escalations.routing.workflow.recipients import mailable
from escalations.routing.workflow.state import (
    CaseChange,
    CaseState,
    CaseStatus,
    EventRecord,
    OutgoingMail,
    Party,
    Side,
    Step,
    TimerKind,
    TimerSpec,
)
from escalations.routing.workflow.wording import action_for, notification_context

if TYPE_CHECKING:
    from escalations.routing.policy.model import Partnership
    from escalations.routing.policy.plan import StagePlan

__all__ = ["asked_at_stage", "escalate", "next_day_end", "open_stage", "other_practitioner", "plan_for",
           "referral_practitioner", "side_of", "stage_parties"]


def plan_for(state: CaseState, p: Partnership, index: int, at: datetime,
             previous_due: datetime | None = None) -> StagePlan:
    """The policy engine's plan for stage ``index`` of the case's route, opened at ``at``."""
    from escalations.routing.policy.plan import stage_plan

    f = state.fields
    return stage_plan(
        p, state.route, index, at,
        child_status=f.child_status, immediate_risk=state.immediate_risk, needed_by=f.needed_by,
        raising_agency=f.raised_by_agency, other_agency=f.other_agency, borough=f.borough,
        previous_due=previous_due,
    )


def current_plan(state: CaseState, p: Partnership, now: datetime) -> StagePlan | None:
    """The plan of the stage the case is at (as it was when the stage opened)."""
    if state.stage_index is None:
        return None
    return plan_for(state, p, state.stage_index, state.stage_opened_at or now)


def side_of(party: str) -> str:
    side = party.split(".", 1)[0]
    return {"both": Side.PARTNERSHIP}.get(side, side)


def asked_at_stage(parties: Iterable[Party]) -> list[Party]:
    """Who the stage itself asks to act (not those told for information, nor the immediate-risk
    step's people asked alongside it): reminded of its deadline, asked to confirm a resolution."""
    return [x for x in parties if x.asked and not x.immediate]


def working_day_before(p: Partnership, t: datetime) -> datetime:
    """The day end of the working day before ``t``'s local date (for "one working day before")."""
    cal = p.calendar
    d = cal.local(t).date() - timedelta(days=1)
    while not cal.is_working_day(d):
        d -= timedelta(days=1)
    return cal.day_end_at(d)


def next_day_end(p: Partnership, t: datetime) -> datetime:
    """The end of the next working day after ``t``'s local date (daily reminders)."""
    cal = p.calendar
    return cal.day_end_at(cal.next_working_day(cal.local(t).date()))


_EMAIL_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def referral_practitioner(text: str | None) -> tuple[str, str] | None:
    """(name, address) of the other practitioner when the referral gives their e-mail address."""
    if not text:
        return None
    m = _EMAIL_RE.search(text)
    if m is None:
        return None
    name = (text[:m.start()] + text[m.end():]).replace("<", " ").replace(">", " ").replace("()", " ")
    name = " ".join(name.replace(",", " ").split()).strip(" -;:")
    return name, m.group(0)


def other_practitioner(state: CaseState, p: Partnership, plan: StagePlan) -> tuple[str, str] | None:
    """(name, address) of the other worker, asked where the stage asks practitioners and the referral
    gives an address the service may write to (an agency's domain, or confirmed by the coordinator)."""
    if "receiving.practitioner" not in plan.from_referral:
        return None
    other = referral_practitioner(state.fields.other_practitioner)
    if other is None:
        return None
    address = mailable(other[1], p, state.confirmed_addresses)
    if address is None or address == (state.raiser or "").lower():
        return None
    return other[0], address


def other_practitioner_party(name: str, address: str) -> Party:
    return Party(email=address, name=name, role_name="Practitioner (other agency)",
                 party="receiving.practitioner", side=Side.RECEIVING)


def _unconfirmed_practitioner(state: CaseState, p: Partnership, plan: StagePlan) -> str | None:
    """The other worker's address as written, when the stage would ask them but it may not be mailed yet."""
    if "receiving.practitioner" not in plan.from_referral:
        return None
    other = referral_practitioner(state.fields.other_practitioner)
    if other is None or other_practitioner(state, p, plan) is not None:
        return None
    return other[1] if mailable(other[1], p, state.confirmed_addresses) is None else None


def stage_parties(state: CaseState, p: Partnership, plan: StagePlan) -> list[Party]:
    """Who is involved at ``plan``'s stage: the directory's contacts, the practitioners named in the
    referral, those the policy says to notify, and the raiser (copied on every step)."""
    parties: list[Party] = []
    for r in plan.asked:
        if not any(x.email == r.email and x.party == r.party for x in parties):
            parties.append(Party(email=r.email, name=r.name, role_name=r.role_name, party=r.party,
                                 side=side_of(r.party), deputy_email=r.deputy_email, deputy_name=r.deputy_name))
    # The practitioners come from the referral, not the directory: the raiser is always known; the
    # other worker only when the referral gives their address (else only the raiser is asked).
    other = other_practitioner(state, p, plan)
    if other is not None and not any(x.email.lower() == other[1] for x in parties):
        parties.append(other_practitioner_party(*other))
    for r in plan.notified:
        if not any(x.email.lower() == r.email.lower() for x in parties):
            parties.append(Party(email=r.email, name=r.name, role_name=r.role_name, party=r.party,
                                 side=Side.NOTIFIED, asked=False, deputy_email=r.deputy_email,
                                 deputy_name=r.deputy_name))
    if state.raiser and not any(x.email.lower() == state.raiser.lower() for x in parties):
        parties.append(Party(email=state.raiser, name=state.fields.raised_by_name or "",
                             role_name="Practitioner who raised the concern", party="raiser", side=Side.RAISING))
    return parties


def _recipient_context(state: CaseState, p: Partnership, plan: StagePlan, ctx: dict[str, Any], party: Party,
                       audience: Audience) -> dict[str, Any]:
    """The stage's context as it is true for one recipient: what is asked of them, why they are told."""
    own = dict(ctx)
    own["stage_action"], own["stage_clause"] = action_for(p, plan, audience)
    if audience is Audience.NOTIFIED:
        own.update(notification_context(p, plan, party.party))
    return own


def _notification_subject(state: CaseState, plan: StagePlan, ctx: dict[str, Any]) -> str:
    where = f"stage {plan.number}" if plan.number else "the immediate-risk step"
    if ctx.get("responsible_for_child"):
        return case_subject(state.reference, f"For information: escalation about a child you are responsible "
                                             f"for, at {where}")
    if ctx.get("told_expects"):
        return case_subject(state.reference, f"Your part: escalation at {where}")
    return case_subject(state.reference, f"For information: escalation at {where}")


def _party_mails(state: CaseState, p: Partnership, plan: StagePlan, parties: Sequence[Party],
                 because: str) -> list[OutgoingMail]:
    """The stage's request to those asked, a copy to the raiser, a notification to those told."""
    ctx = stage_context(state, p, plan)
    ctx["because"] = because
    ctx["asked_roles"] = [x.role_name for x in parties if x.asked and x.party != "raiser"]
    idx = plan.stage_index
    subject = stage_subject(state, plan)
    raiser_asked = "raising.practitioner" in plan.from_referral
    mails: list[OutgoingMail] = []
    for party in parties:
        audience = audience_of(party, plan)
        own = _recipient_context(state, p, plan, ctx, party, audience)
        if party.party == "raiser":
            mails.append(mail("stage_request.txt.j2" if raiser_asked else "stage_copy.txt.j2", party.email,
                              subject, own, f"{state.reference}:s{idx}:copy:{party.email}",
                              f"copy the raiser ({p.resolution.record_clause})", token_stage=idx,
                              recipient_name=party.name, role=party.role_name, audience=audience))
        elif party.asked:
            mails.append(mail("stage_request.txt.j2", party.active_email, subject, own,
                              f"{state.reference}:s{idx}:request:{party.active_email}", plan.clause,
                              token_stage=idx, recipient_name=party.active_name, role=party.role_name,
                              audience=audience))
        else:
            mails.append(mail("stage_notification.txt.j2", party.active_email,
                              _notification_subject(state, plan, own),
                              own, f"{state.reference}:s{idx}:notify:{party.active_email}",
                              "; ".join(plan.notification_clauses), token_stage=idx,
                              recipient_name=party.active_name, role=party.role_name, audience=audience))
    return mails


def _coordinator_mails(state: CaseState, p: Partnership, plan: StagePlan, blocking: bool,
                       because: str) -> tuple[list[OutgoingMail], list[EventRecord]]:
    """The coordinator is asked to route the case, to fill missing contacts, or to confirm an address."""
    ctx = stage_context(state, p, plan)
    ctx["because"] = because
    idx = plan.stage_index
    mails: list[OutgoingMail] = []
    if plan.unresolved or blocking:
        rctx = dict(ctx)
        rctx["unresolved"] = [u.reason for u in plan.unresolved] or \
            [f"the other agency ({state.fields.other_agency or 'not given'}) is not in the agencies directory"]
        rctx["blocking"] = blocking
        mails.extend(mail("case_needs_routing.txt.j2", c.email,
                          case_subject(state.reference, "Routing needed" if blocking
                                       else "Contacts missing for a stage"),
                          rctx, f"{state.reference}:s{idx}:routing:{c.email}",
                          "the directory cannot name every party", token_stage=idx, recipient_name=c.name,
                          role=c.role_name) for c in plan.coordinator)
    unconfirmed = _unconfirmed_practitioner(state, p, plan)
    if unconfirmed is None:
        return mails, []
    from escalations.parsers.sender import valid_address

    shown = valid_address(unconfirmed) or "(not a valid address)"
    cctx = dict(ctx)
    cctx["address"] = shown
    mails.extend(mail("address_confirm_request.txt.j2", c.email, case_subject(state.reference, "Address to confirm"),
                      cctx, f"{state.reference}:s{idx}:confirm-address:{shown}:{c.email}",
                      "recipients come from the directory", token_stage=idx, recipient_name=c.name,
                      role=c.role_name) for c in plan.coordinator)
    return mails, [EventRecord("address_unconfirmed", {"field": "other_practitioner", "address": shown})]


def _stage_timers(p: Partnership, plan: StagePlan, now: datetime, blocking: bool) -> list[TimerSpec]:
    idx = plan.stage_index
    if blocking:
        return [TimerSpec(TimerKind.ROUTING_REMINDER, next_day_end(p, now), idx)]
    if plan.due is None:
        return []
    timers: list[TimerSpec] = []
    before = working_day_before(p, plan.due)
    if before > now:
        timers.append(TimerSpec(TimerKind.REMIND_BEFORE, before, idx))
    final_kind = TimerKind.REMIND_DUE if plan.is_final or not p.auto_escalate else TimerKind.ESCALATE
    timers.append(TimerSpec(final_kind, plan.due, idx))
    return timers


def _stage_events(plan: StagePlan, parties: Sequence[Party], because: str, blocking: bool) -> list[EventRecord]:
    told = [x.active_email for x in parties if not x.asked]
    events = [EventRecord("stage_opened", {
        "stage": plan.number, "stage_index": plan.stage_index, "name": plan.name, "route": plan.route_id,
        "due": plan.due.isoformat() if plan.due else None, "due_rule": plan.due_rule,
        "asked": [x.active_email for x in parties if x.asked and x.party != "raiser"],
        "notified": told, "unresolved": [u.reason for u in plan.unresolved], "because": because,
        "shortened_by_needed_by": plan.shortened_by_needed_by,
    }, clause=plan.clause)]
    if plan.due_clause:
        events.append(EventRecord("deadline_set", {"due": plan.due.isoformat() if plan.due else None},
                                  clause=plan.due_clause))
    if plan.notification_clauses:
        events.append(EventRecord("notified", {"to": told}, clause="; ".join(plan.notification_clauses)))
    if blocking:
        events.append(EventRecord("needs_routing", {"unresolved": [u.reason for u in plan.unresolved]}))
    return events


def open_stage(state: CaseState, p: Partnership, plan: StagePlan, now: datetime, *, because: str,
               extra_events: Sequence[EventRecord] = ()) -> Step:
    """Open ``plan``'s stage: ask its parties, copy the raiser, notify, set the deadline's timers."""
    parties = stage_parties(state, p, plan)
    # Unknown other agency -> the coordinator routes it (the case waits in needs_routing).
    f = state.fields
    other = p.find_agency(f.other_agency, borough=f.borough)
    raising = p.find_agency(f.raised_by_agency, borough=f.borough)
    blocking = other is None
    mails = _party_mails(state, p, plan, parties, because)
    coordinator, unconfirmed = _coordinator_mails(state, p, plan, blocking, because)
    events = [*extra_events, *_stage_events(plan, parties, because, blocking), *unconfirmed]
    change = CaseChange(status=CaseStatus.NEEDS_ROUTING if blocking else CaseStatus.OPEN, route=plan.route_id,
                        stage_index=plan.stage_index, stage_number=plan.number, stage_opened_at=now,
                        due_at=plan.due, clear_due=plan.due is None, parties=tuple(parties), clear_resolution=True,
                        raising_agency=raising.id if raising else None, other_agency=other.id if other else None)
    return Step(change=change, events=tuple(events), mails=(*mails, *coordinator),
                timers=tuple(_stage_timers(p, plan, now, blocking)), cancel_timers=True)


def escalate(state: CaseState, p: Partnership, now: datetime, because: str, clause: str | None) -> Step | None:
    """Move the case to the stage the policy says comes next (None at the final stage)."""
    from escalations.routing.policy.plan import IMMEDIATE, next_step

    if state.stage_index is None:
        return None
    f = state.fields
    nxt = next_step(p, state.route, state.stage_index, "deadline_passed", now,
                    child_status=f.child_status, immediate_risk=state.immediate_risk, needed_by=f.needed_by,
                    raising_agency=f.raised_by_agency, other_agency=f.other_agency, borough=f.borough,
                    previous_due=state.due_at)
    if nxt is None:
        return None
    if state.stage_index == IMMEDIATE:
        because = f"{because}; after the immediate-risk step the policy continues at stage {nxt.number}"
    step = open_stage(state, p, nxt, now, because=because,
                      extra_events=(EventRecord("escalated", {"from_stage_index": state.stage_index,
                                                              "to_stage": nxt.number, "because": because},
                                                clause=clause),))
    # Everyone asked at the stage that ends is told why it moved on, and that they no longer need to act.
    new = {x.active_email.lower() for x in (step.change.parties or ())}
    ctx = base_context(state, p)
    ctx.update({"from_stage_number": state.stage_index + 1 if state.stage_index >= 0 else 0,
                "to_stage_number": nxt.number, "to_stage_name": nxt.name, "to_stage_clause": nxt.clause,
                "because": because, "due_local": local(nxt.due, p),
                "asked_now": sorted({r.role_name for r in nxt.asked})})
    told = tuple(mail("stage_escalated.txt.j2", x.active_email,
                      case_subject(state.reference, f"Escalated to stage {nxt.number}"), ctx,
                      f"{state.reference}:s{state.stage_index}:escalated:{x.active_email}", clause or nxt.clause,
                      recipient_name=x.active_name, role=x.role_name)
                 for x in state.parties if x.asked and x.active_email.lower() not in new)
    return replace(step, mails=(*step.mails, *told))
