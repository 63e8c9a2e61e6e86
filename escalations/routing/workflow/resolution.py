"""Resolution: a RESOLVED asks the other side to confirm in writing, ACCEPT confirms it, and the case
closes (on confirmation, on the decision maker's word, or after the time allowed for confirming).

The policies require written confirmation between the parties (C&H 3.1, Wiltshire "Documenting
discussions", Tri-borough §4, Sutton 7.6).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from escalations.routing.workflow.audience import audience_of
from escalations.routing.workflow.authority import Authority, acts_as
from escalations.routing.workflow.mail import (
    base_context,
    case_subject,
    duration,
    mail,
    stage_number,
)
from escalations.routing.workflow.stages import asked_at_stage, current_plan
from escalations.routing.workflow.state import (
    CaseChange,
    CaseState,
    CaseStatus,
    EventRecord,
    Party,
    PendingResolution,
    Side,
    Step,
    TimerKind,
    TimerSpec,
)
from escalations.routing.workflow.wording import display_name

if TYPE_CHECKING:
    from escalations.routing.policy.model import OutcomeNotice, Partnership
    from escalations.routing.policy.plan import StagePlan
    from escalations.routing.workflow.reply import Reply

__all__ = ["ask_confirmation", "close", "close_unconfirmed", "confirming",
           "on_accept", "on_resolved"]

@dataclass(frozen=True)
class Told:
    """Someone sent the written record of the outcome."""

    email: str
    name: str
    role: str

    def to_json(self) -> dict[str, str]:
        return {"email": self.email, "name": self.name, "role": self.role}


def _add(told: dict[str, Told], email: str, name: str, role: str) -> None:
    told.setdefault(email.lower(), Told(email, name, role))


def _outcome_notice(p: Partnership, plan: StagePlan | None) -> OutcomeNotice | None:
    if plan is None or plan.stage_index < 0:
        return None
    return p.route(plan.route_id).stages[plan.stage_index].outcome_to


def _outcome_to(state: CaseState, p: Partnership, notice: OutcomeNotice) -> tuple[list[Told], list[str]]:
    """The parties the policy says get the final decision, from the directory (and the other worker
    from the referral, where it gives an address the service may write to); and who could not be found."""
    from escalations.routing.policy.directory import recipients
    from escalations.routing.workflow.recipients import mailable
    from escalations.routing.workflow.stages import referral_practitioner

    f = state.fields
    b = p.find_borough(f.borough)
    borough = b.id if b else f.borough
    raising, other = p.find_agency(f.raised_by_agency, borough=borough), p.find_agency(f.other_agency, borough=borough)
    told: list[Told] = []
    missing: list[str] = []
    for party in notice.parties:
        found, from_referral, unresolved = recipients(p, party, raising, other, b.id if b else None)
        told += [Told(r.email, r.name, r.role_name) for r in found]
        missing += [u.reason for u in unresolved]
        if "receiving.practitioner" in from_referral:
            written = referral_practitioner(f.other_practitioner)
            address = mailable(written[1], p, state.confirmed_addresses) if written else None
            if written and address:
                told.append(Told(address, written[0], "Practitioner (other agency)"))
            else:
                missing.append("the other practitioner has no address on the case the service may write to")
    return told, missing


def _told(state: CaseState, p: Partnership, plan: StagePlan | None,
          status: CaseStatus) -> tuple[list[Told], list[str], OutcomeNotice | None]:
    """Everyone on the stage, the raiser, and (for a decision or a confirmed resolution) the parties the
    stage's ``outcome_to`` names: both agencies (Wiltshire Stage Three, Sutton 7.4; 7.6, C&H 3.1...)."""
    told: dict[str, Told] = {}
    for x in state.parties:
        _add(told, x.active_email, x.active_name, x.role_name)
    if state.raiser:
        _add(told, state.raiser, state.fields.raised_by_name or "", "Practitioner who raised the concern")
    notice = _outcome_notice(p, plan) if status == CaseStatus.CLOSED else None
    missing: list[str] = []
    if notice is not None:
        extra, missing = _outcome_to(state, p, notice)
        for t in extra:
            _add(told, t.email, t.name, t.role)
    return sorted(told.values(), key=lambda t: t.email.lower()), missing, notice


def _closing_context(state: CaseState, p: Partnership, now: datetime, plan: StagePlan | None,
                     status: CaseStatus) -> dict[str, Any]:
    ctx = base_context(state, p)
    ctx.update({"stage_number": plan.number if plan else stage_number(state), "stage_name": plan.name if plan else "",
                "time_taken": duration(state.opened_at, now), "closed_status": status,
                "forms": [f"{fm.name}: {fm.note or 'complete it now'} ({fm.clause})" for fm in plan.forms
                          if fm.when == "on_resolution"] if plan else []})
    return ctx


def close(state: CaseState, p: Partnership, now: datetime, *, outcome: str, how: str, by: str,
          status: CaseStatus = CaseStatus.CLOSED, clause: str | None = None) -> Step:
    """Close (or withdraw) the case; everyone on it, the raiser and the parties the policy names get the
    record, and the closing event says who was told."""
    try:
        plan = current_plan(state, p, now)
    except (KeyError, IndexError, ValueError):
        plan = None
    told, missing, notice = _told(state, p, plan, status)
    ctx = _closing_context(state, p, now, plan, status)
    ctx.update({"outcome": outcome, "how": how, "told": [f"{t.name}, {t.role}" if t.name else t.role for t in told],
                "outcome_reason": notice.reason if notice else "", "outcome_clause": notice.clause if notice else ""})
    subject = case_subject(state.reference, "Escalation closed" if status == CaseStatus.CLOSED
                           else "Escalation withdrawn")
    reason = clause or p.resolution.record_clause
    mails = [mail("case_closed.txt.j2", t.email, subject, ctx, f"{state.reference}:closed:{t.email}",
                  reason, recipient_name=t.name, role=t.role) for t in told]
    detail: dict[str, Any] = {"outcome": outcome, "how": how, "time_taken": ctx["time_taken"],
                              "told": [t.to_json() for t in told]}
    if missing:
        detail["not_told"] = missing
    events = [EventRecord("outcome_shared", {"to": [t.email for t in told], "not_found": missing},
                          clause=notice.clause)] if notice is not None else []
    events.append(EventRecord(str(status), detail, clause=reason, actor=by))
    return Step(change=CaseChange(status=status, closed_at=now, clear_due=True, clear_resolution=True),
                events=tuple(events), mails=tuple(mails), cancel_timers=True)


def confirming(state: CaseState) -> list[Party]:
    """The parties asked to confirm the pending resolution (whoever acts for them now)."""
    wanted = {a.lower() for a in state.resolution.confirm_by} if state.resolution else set()
    return [x for x in state.parties if acts_as(x) & wanted]


def decision_maker_parties(state: CaseState, plan: StagePlan | None) -> list[Party]:
    if plan is None or plan.decision_maker is None:
        return []
    dm = plan.decision_maker.party
    return [x for x in state.parties if x.asked and x.party == dm]


def is_decision_maker_of(state: CaseState, p: Partnership, now: datetime, address: str) -> bool:
    """Is ``address`` (or the deputy acting for them) the decision maker of the case's current stage?"""
    a = address.lower()
    return any(a in acts_as(x) for x in decision_maker_parties(state, current_plan(state, p, now)))


def _confirmers(state: CaseState, p: Partnership, resolver: str, side: str | None) -> list[Party]:
    """Who must confirm a RESOLVED: the stage's decision maker where the policy names one (C&H 2.12,
    Havering 2.10, Wiltshire Stage Three, Tri-borough ¶6, Sutton 7.4), else everyone asked on the other
    side (C&H 3.1, Wiltshire "Documenting discussions", Tri-borough §4, Sutton 7.6)."""
    plan = current_plan(state, p, state.opened_at)
    resolver = resolver.lower()
    dms = [x for x in decision_maker_parties(state, plan) if x.active_email.lower() != resolver]
    if dms:
        return dms
    return [x for x in asked_at_stage(state.parties) if x.side not in (side, Side.NOTIFIED)
            and x.active_email.lower() != resolver]


def _record_wording(p: Partnership) -> str:
    """The policy's own words on the written record (quoted in the mail, so nothing is put in its mouth)."""
    interp = p.resolution.confirm_within.interpretation
    return interp.wording if interp else ""


def ask_confirmation(state: CaseState, p: Partnership, now: datetime, *, reminder: bool = False) -> Step:
    r = state.resolution
    ctx = base_context(state, p)
    plan = current_plan(state, p, state.opened_at)
    ctx.update({"outcome": r.outcome if r else "", "resolved_by": display_name(state, p, r.by) if r else "",
                "reminder": reminder, "confirm_days": p.resolution.confirm_within.amount,
                "record_wording": _record_wording(p), "is_final": bool(plan and plan.is_final)})
    kind = "confirm_reminder" if reminder else "confirm_request"
    mails = tuple(mail("resolution_confirm_request.txt.j2", x.active_email,
                       case_subject(state.reference, "Please confirm the resolution"), ctx,
                       f"{state.reference}:s{state.stage_index}:{kind}:{x.active_email}",
                       p.resolution.record_clause, token_stage=state.stage_index,
                       recipient_name=x.active_name, role=x.role_name, audience=audience_of(x, plan))
                  for x in confirming(state))
    timers: tuple[TimerSpec, ...] = ()
    if not reminder:
        timers = (TimerSpec(TimerKind.CONFIRM_REMINDER, p.calendar.add_working_days(now, 1), state.stage_index),
                  TimerSpec(TimerKind.CONFIRM_CLOSE, p.calendar.add_working_days(now, p.resolution.confirm_within.amount),
                            state.stage_index))
    return Step(events=(EventRecord(kind, {"to": [m.to[0] for m in mails]},
                                    clause=p.resolution.record_clause),), mails=mails, timers=timers)


def close_unconfirmed(state: CaseState, p: Partnership, now: datetime) -> Step:
    """Nobody confirmed or disputed in time: the resolution stands as recorded."""
    r = state.resolution
    by = r.by if r else ""
    return close(state, p, now, outcome=r.outcome if r else "", by=by,
                 how=f"resolved by {display_name(state, p, by) if by else 'nobody recorded'}; not confirmed or disputed within "
                     f"{p.resolution.confirm_within.amount} working days of the request and a reminder, so the "
                     "resolution stands as recorded")


# ---- the RESOLVED and ACCEPT commands -------------------------------------------------------------


def _roles(reply: Reply) -> tuple[StagePlan | None, bool, bool]:
    """The stage's plan; is the sender its decision maker; were they asked to confirm the pending resolution."""
    state = reply.state
    plan = current_plan(state, reply.p, reply.now)
    sender = reply.sender.lower()
    is_dm = any(sender in acts_as(x) for x in decision_maker_parties(state, plan))
    confirmer = state.status == CaseStatus.AWAITING_CONFIRMATION and \
        any(sender in acts_as(x) for x in confirming(state))
    return plan, is_dm, confirmer


def _dm_clause(plan: StagePlan | None, is_dm: bool) -> str | None:
    return plan.decision_maker.clause if is_dm and plan and plan.decision_maker else None


def _may_confirm(reply: Reply, is_dm: bool, confirmer: bool) -> bool:
    return reply.state.status == CaseStatus.AWAITING_CONFIRMATION and \
        (confirmer or is_dm or reply.event.authority == Authority.STAFF)


def _confirm_and_close(reply: Reply, plan: StagePlan | None, is_dm: bool, confirmer: bool) -> Step:
    """The pending resolution confirmed: the confirmer's words are added to the record."""
    res = reply.state.resolution
    outcome = res.outcome if res else ""
    arg = reply.event.argument
    label = "Confirmed with" if reply.event.command == "RESOLVED" else "Outstanding issues"
    if arg:
        outcome = f"{outcome}\n{label}: {arg}" if outcome else arg
    state, p = reply.state, reply.p
    how = ("decided by the decision maker" if is_dm and not confirmer else
           f"resolved by {display_name(state, p, res.by) if res else 'nobody recorded'} and confirmed in "
           f"writing by {display_name(state, p, reply.sender)}")
    return reply.done(close(reply.state, reply.p, reply.now, outcome=outcome, by=reply.sender, how=how,
                            clause=_dm_clause(plan, is_dm)))


def on_accept(reply: Reply) -> Step:
    plan, is_dm, confirmer = _roles(reply)
    if _may_confirm(reply, is_dm, confirmer):
        return _confirm_and_close(reply, plan, is_dm, confirmer)
    if reply.state.status != CaseStatus.AWAITING_CONFIRMATION:
        return reply.illegal("there is no resolution waiting for confirmation")
    return reply.illegal("the resolution must be confirmed by the people asked to confirm it")


def on_resolved(reply: Reply) -> Step:
    state, r, p, now = reply.state, reply.event, reply.p, reply.now
    plan, is_dm, confirmer = _roles(reply)
    if _may_confirm(reply, is_dm, confirmer):
        return _confirm_and_close(reply, plan, is_dm, confirmer)
    if is_dm or r.authority == Authority.STAFF:
        # The decision maker's written decision closes the case (Sutton 7.4: final; Wiltshire Stage
        # Three: communicated to all parties); partnership staff may record it on their behalf.
        return reply.done(close(state, p, now, outcome=r.argument, by=r.sender,
                                how="decided by " + ("the decision maker" if is_dm else "partnership staff"),
                                clause=_dm_clause(plan, is_dm)))
    if state.status == CaseStatus.AWAITING_CONFIRMATION:
        return reply.illegal("a resolution was already recorded; the other side has been asked to confirm it")
    confirm = _confirmers(state, p, r.sender, r.side)
    if not confirm:
        # Nobody on the other side can be asked (e.g. stage 1 when the referral gives no address for
        # the other worker): the record stands on the sender's word and everyone gets it.
        return reply.done(close(state, p, now, outcome=r.argument, by=r.sender,
                                how=f"resolved by {display_name(state, p, r.sender)} (nobody on the other side has an "
                                    "address on the case to confirm it)"))
    pending = PendingResolution(by=r.sender, side=r.side, outcome=r.argument, at=now.isoformat(),
                                stage_index=state.stage_index, confirm_by=tuple(x.active_email for x in confirm))
    ask = ask_confirmation(replace(state, status=CaseStatus.AWAITING_CONFIRMATION, resolution=pending), p, now)
    return Step(change=CaseChange(status=CaseStatus.AWAITING_CONFIRMATION, resolution=pending),
                events=(reply.record, *ask.events), mails=ask.mails, timers=ask.timers)
