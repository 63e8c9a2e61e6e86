"""The immediate-risk route (C&H/Havering 1.5, Wiltshire Timescales ¶1, Tri-borough §2 ¶1, Sutton 5/7.3),
from a referral or an URGENT reply, and the bypass to the senior officer (Tri-borough §2 ¶7)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from escalations.routing.workflow.audience import Audience
from escalations.routing.workflow.mail import mail, stage_context, stage_subject
from escalations.routing.workflow.stages import open_stage, plan_for, side_of
from escalations.routing.workflow.state import CaseChange, CaseState, EventRecord, OutgoingMail, Party, Step
from escalations.routing.workflow.wording import action_for, display_name

if TYPE_CHECKING:
    from escalations.routing.policy.model import Partnership
    from escalations.routing.policy.plan import StagePlan

__all__ = ["bypass", "bypass_target", "immediate_step"]


def continue_at(ir_plan: StagePlan) -> int:
    """The stage index the ladder stands at alongside (or after) the immediate-risk step."""
    return ir_plan.next_stage_index if ir_plan.next_stage_index is not None else 0


def bypass_target(p: Partnership) -> int | None:
    """The stage index a second URGENT may go straight to, where the policy offers a bypass."""
    ir = p.immediate_risk
    if ir is None or not ir.bypass_to or ir.bypass_mandatory:
        return None
    ids = [s.id for s in p.default_route.stages]
    return ids.index(ir.bypass_to) if ir.bypass_to in ids else None


def _bypass_text(p: Partnership) -> str:
    target = bypass_target(p)
    ir = p.immediate_risk
    if target is None or ir is None:
        return ""
    return (f"{ir.bypass_note or 'You may bypass the structures.'} If the risks are so great and "
            f"immediate, reply URGENT again to go straight to stage {target + 1} "
            f"({p.default_route.stages[target].name}).")


def immediate_step(state: CaseState, p: Partnership, now: datetime, because: str) -> Step:
    """Where the policy runs the immediate step alongside the ladder (``parallel``), the ladder stands
    at the stage it continues at (or stays where it is if already further up) and the immediate step's
    people are asked at once beside it. Otherwise (Wiltshire: a mandatory direct referral) the
    immediate step is the case's stage and, when it falls due, the ladder continues where the policy says.
    """
    from escalations.routing.policy.plan import IMMEDIATE

    ir = p.immediate_risk
    assert ir is not None
    urgent = replace(state, immediate_risk=True)
    ir_plan = plan_for(urgent, p, IMMEDIATE, now)
    default = p.default_route
    target = continue_at(ir_plan)
    current = state.stage_index if state.route in (None, default.id) else None
    ev = EventRecord("immediate_risk_route", {
        "asked": [r.email for r in ir_plan.asked], "due": ir_plan.due.isoformat() if ir_plan.due else None,
        "parallel": ir.parallel, "continue_at": ir.continue_at, "bypass_to": ir.bypass_to,
        "bypass_mandatory": ir.bypass_mandatory}, clause=ir_plan.clause)
    sequential = not ir.parallel or (ir.bypass_mandatory and ir.bypass_to)
    if sequential and (current is None or current == IMMEDIATE or current < target):
        step = open_stage(replace(urgent, route=default.id), p, ir_plan, now, because=because, extra_events=(ev,))
        return replace(step, change=replace(step.change, immediate_risk=True))
    if current is not None and current != IMMEDIATE and current >= target:
        # Already at (or past) where the policy continues: stay, and ask the immediate step's people now.
        return _alongside(state, urgent, p, ir_plan, Step(change=CaseChange(immediate_risk=True), events=(ev,)),
                          current, because)
    stage_state = replace(urgent, route=default.id)
    base = open_stage(stage_state, p, plan_for(stage_state, p, target, now), now,
                      because=f"{because}; the escalation continues at this stage alongside ({ir.clause})",
                      extra_events=(ev,))
    base = replace(base, change=replace(base.change, immediate_risk=True))
    return _alongside(state, stage_state, p, ir_plan, base, target, because)


def _alongside(state: CaseState, stage_state: CaseState, p: Partnership, ir_plan: StagePlan, base: Step,
               stage_index: int, because: str) -> Step:
    """Ask the immediate step's people beside the stage ``base`` leaves the case at."""
    parties = list(base.change.parties if base.change.parties is not None else stage_state.parties)
    already = {x.active_email.lower() for x in parties if x.asked}
    ctx = stage_context(stage_state, p, ir_plan)
    ctx["because"] = because
    ctx["bypass"] = _bypass_text(p)
    # Someone asked both at the stage and by the immediate step gets one mail that says both, in the
    # words addressed to them (the raiser is told what to do; a safeguarding lead what is asked of them).
    raiser = (state.raiser or "").lower()
    due = ctx["due_local"]
    note_for = {aud: f"{action_for(p, ir_plan, aud)[0]} ({ir_plan.clause}); by {due}."
                for aud in (Audience.RAISER, Audience.ASKED)}
    both = {r.email.lower() for r in ir_plan.asked}
    mails: list[OutgoingMail] = [
        replace(m, context={**m.context, "bypass": ctx["bypass"],
                            "immediate_note": note_for[Audience.RAISER if m.to[0].lower() == raiser
                                                       else Audience.ASKED]})
        if m.to[0].lower() in both or m.to[0].lower() == raiser else m
        for m in base.mails]
    subject = stage_subject(state, ir_plan)
    asked_ctx = {**ctx, "stage_action": action_for(p, ir_plan, Audience.ASKED)[0]}
    for r in ir_plan.asked:
        if r.email.lower() in already:
            continue  # asked at the stage itself: one mail, whose "why now" says the child is at risk
        parties.append(Party(email=r.email, name=r.name, role_name=r.role_name, party=r.party,
                             side=side_of(r.party), deputy_email=r.deputy_email, deputy_name=r.deputy_name,
                             immediate=True))
        mails.append(mail("stage_request.txt.j2", r.email, subject, asked_ctx,
                          f"{state.reference}:immediate:request:{r.email}", ir_plan.clause,
                          token_stage=stage_index, recipient_name=r.name, role=r.role_name,
                          audience=Audience.ASKED))
    if state.raiser and base.change.parties is None:  # the raiser is copied on every step
        mails.append(mail("stage_copy.txt.j2", state.raiser, subject,
                          {**ctx, "asked_roles": [r.role_name for r in ir_plan.asked]},
                          f"{state.reference}:immediate:copy:{state.raiser}", "copy the raiser",
                          token_stage=stage_index, recipient_name=state.fields.raised_by_name or "",
                          role="Practitioner who raised the concern", audience=Audience.RAISER))
    return replace(base, change=replace(base.change, parties=tuple(parties)), mails=tuple(mails))


def bypass(state: CaseState, p: Partnership, now: datetime, sender: str) -> Step | None:
    """Tri-borough §2 ¶7: where the risks are so great and immediate, the referring agency may bypass the
    structures to the senior officer. Asked for with a second URGENT on an immediate-risk case."""
    target = bypass_target(p)
    ir = p.immediate_risk
    route = p.default_route
    if target is None or ir is None or state.route not in (None, route.id):
        return None
    if state.stage_index is not None and state.stage_index >= target:
        return None
    moved = replace(state, route=route.id)
    plan = plan_for(moved, p, target, now, previous_due=state.due_at)
    because = (f"{display_name(state, p, sender)} asked to bypass to the senior officer: "
               f"{ir.bypass_note or 'the risks are immediate'}")
    return open_stage(moved, p, plan, now, because=because,
                      extra_events=(EventRecord("bypassed", {"from_stage_index": state.stage_index,
                                                             "to_stage": plan.number, "by": sender},
                                                clause=ir.clause),))
