"""Out-of-office replies and bounces from someone on the case: never answered (no loops); a stage
contact's deputy takes over and the coordinator is told."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from escalations.routing.workflow.audience import audience_of
from escalations.routing.workflow.mail import answer, case_subject, local, mail, stage_context, stage_number
from escalations.routing.workflow.resolution import ask_confirmation, confirming
from escalations.routing.workflow.stages import current_plan
from escalations.routing.workflow.state import (
    TERMINAL,
    CaseChange,
    CaseState,
    CaseStatus,
    EventRecord,
    OutgoingMail,
    Party,
    Step,
)
from escalations.routing.workflow.wording import action_for

if TYPE_CHECKING:
    from escalations.routing.policy.model import Partnership
    from escalations.routing.workflow.events import Automated

__all__ = ["on_automated"]


def on_automated(state: CaseState, a: Automated, p: Partnership, now: datetime) -> Step:
    party = state.party_for(a.address)
    events: list[EventRecord] = [EventRecord(a.kind, {"address": a.address, "permanent": a.permanent},
                                             actor=a.address)]
    if a.kind == "bounce" and a.permanent:
        events.append(EventRecord("contact_flagged", {"address": a.address, "why": "hard bounce"}))
    if party is None or state.status in TERMINAL or (a.kind == "bounce" and not a.permanent):
        return Step(events=tuple(events))
    if not a.verified:
        # Anyone can write "Auto-Submitted: auto-replied": without our token it moves nobody.
        events.append(EventRecord("automated_unverified", {"address": a.address, "reason": "no_token"}))
        return Step(events=tuple(events))
    address = a.address.lower()
    takes_over = bool(party.deputy_email and not party.using_deputy and party.email.lower() == address
                      and party.asked)
    deputy_away = party.using_deputy and (party.deputy_email or "").lower() == address
    if party.using_deputy and not deputy_away:
        # The original contact's auto-reply to an older mail: their deputy already acts.
        events.append(EventRecord("automated_ignored", {"address": a.address, "why": "deputy already acting"}))
        return Step(events=tuple(events))
    mails = _tell_coordinator(state, a, p, party, takes_over, deputy_away)
    if not takes_over:
        return Step(events=tuple(events), mails=tuple(mails))
    return _deputy_takes_over(state, a, p, now, party, events, mails)


def _tell_coordinator(state: CaseState, a: Automated, p: Partnership, party: Party, takes_over: bool,
                      deputy_away: bool) -> list[OutgoingMail]:
    ctx = {"address": a.address, "kind": a.kind, "role": party.role_name,
           "deputy": (f"{party.deputy_name} <{party.deputy_email}>" if party.deputy_name else party.deputy_email or "")
                     if takes_over else "", "deputy_away": deputy_away,
           "original": party.email if deputy_away else "", "stage_number": stage_number(state),
           "recipient_name": "", "recipient_role": ""}
    return [answer(state, p, c.email, "deputy_takeover.txt.j2",
                   f"{state.reference}:s{state.stage_index}:{a.kind}:{a.address}:{c.email}", ctx,
                   "Contact unavailable" if not takes_over else "Deputy now asked") for c in p.coordinator()]


def _deputy_takes_over(state: CaseState, a: Automated, p: Partnership, now: datetime, party: Party,
                       events: list[EventRecord], mails: list[OutgoingMail]) -> Step:
    parties = tuple(replace(x, using_deputy=True) if x is party else x for x in state.parties)
    deputy = replace(party, using_deputy=True)
    events.append(EventRecord("deputy_took_over", {"from": party.email, "to": deputy.active_email,
                                                   "role": party.role_name}))
    plan = current_plan(state, p, now)
    if plan is not None:
        ctx = stage_context(state, p, plan)
        ctx["due_local"] = local(state.due_at, p)
        audience = audience_of(party, plan)
        ctx["stage_action"], ctx["stage_clause"] = action_for(p, plan, audience)
        ctx["because"] = f"{party.name or party.role_name} is unavailable ({a.kind.replace('_', ' ')}); you are " \
                         f"their deputy"
        mails.append(mail("stage_request.txt.j2", deputy.active_email,
                          case_subject(state.reference, f"Stage {plan.number}: {plan.name} (as deputy)"), ctx,
                          f"{state.reference}:s{state.stage_index}:request:{deputy.active_email}", plan.clause,
                          token_stage=state.stage_index, recipient_name=deputy.active_name,
                          role=party.role_name, audience=audience))
    if state.status == CaseStatus.AWAITING_CONFIRMATION and party in confirming(state):
        # They were asked to confirm a resolution: the deputy is asked instead.
        ask = ask_confirmation(replace(state, parties=parties), p, now)
        mails.extend(m for m in ask.mails if m.to[0].lower() == deputy.active_email.lower())
    return Step(change=CaseChange(parties=parties), events=tuple(events), mails=tuple(mails))
