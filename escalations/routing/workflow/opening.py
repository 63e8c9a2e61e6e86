"""Opening a case: the acknowledgement of a new referral (and the request for what is missing), and
the case's first step once it is complete enough to act on — one ``Opened`` event, one step."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from escalations.routing.redact import names_as_initials
from escalations.routing.workflow.immediate import immediate_step
from escalations.routing.workflow.mail import case_subject, summary_context
from escalations.routing.workflow.stages import open_stage, plan_for
from escalations.routing.workflow.state import (
    ACK_TOKEN_STAGE,
    FIELD_LABELS,
    CaseChange,
    CaseState,
    CaseStatus,
    EventRecord,
    Notice,
    OutgoingMail,
    Step,
)

if TYPE_CHECKING:
    from escalations.parsers.fields import ReferralFields, ReferralParse
    from escalations.routing.policy.model import Partnership
    from escalations.routing.workflow.events import NewReferral, Opened

__all__ = ["acknowledge", "initial_step", "on_opened"]

#: Besides the missing required fields, what a letter written without the form is asked for: the
#: labels that let the partnership act (and route) on it.
_FREE_TEXT_ASKS = ("raised_by_name", "raised_by_role", "raised_by_agency", "needed_by", "immediate_risk")


def on_opened(state: CaseState, event: Opened, p: Partnership, now: datetime) -> Step:
    """A new case: with the intake, its acknowledgement; for a complete referral (or an incomplete one
    whose child is at immediate risk: the missing fields are asked for in parallel) its first step too."""
    because = "a referral was received"
    if event.intake is None:
        return initial_step(state, p, now, because)
    ack = acknowledge(state, event.intake, p)
    if not state.missing or state.immediate_risk:
        return combine(ack, initial_step(state, p, now, because))
    return ack


def combine(first: Step, then: Step) -> Step:
    """Two steps as one: ``then``'s case changes win where it makes any."""
    defaults = CaseChange()
    change = replace(first.change, **{f.name: getattr(then.change, f.name) for f in fields(CaseChange)
                                       if getattr(then.change, f.name) != getattr(defaults, f.name)})
    return Step(change=change, events=(*first.events, *then.events), mails=(*first.mails, *then.mails),
                timers=(*first.timers, *then.timers), cancel_timers=first.cancel_timers or then.cancel_timers,
                notices=(*first.notices, *then.notices))


def _status(parse: ReferralParse) -> CaseStatus:
    if not parse.missing:
        return CaseStatus.OPEN
    return CaseStatus.INCOMPLETE if parse.free_text else CaseStatus.AWAITING_INFORMATION


def _opened_record(parse: ReferralParse, p: Partnership, sender: str | None) -> EventRecord:
    return EventRecord(
        "case_opened",
        {"missing": list(parse.missing), "sources": list(parse.sources), "partnership": p.id,
         # fixed codes and field names only (never a word from the message)
         **({"limits_hit": list(parse.limits_hit)} if parse.limits_hit else {}),
         **({"fuzzy_labels": list(parse.fuzzy_labels)} if parse.fuzzy_labels else {}),
         **({"free_text": True} if parse.free_text else {}),
         **({"timescale_unread": True} if parse.timescale_unread else {})},
        clause=None, actor=sender)


def _flags(state: CaseState, intake: NewReferral) -> tuple[list[EventRecord], list[Notice]]:
    """What the coordinator hears of in the digest: codes and field names, never the sender's words."""
    parse, f = intake.parse, state.fields
    flags: list[tuple[str, dict[str, Any]]] = []
    if intake.sender_problem:
        flags.append(("sender_not_verified", {"reason": intake.sender_problem}))
    if f.raised_by_email and intake.practitioner is None and \
            (intake.sender or "").lower() != f.raised_by_email.lower():
        # An address in the text whose domain is no agency's: not mailed until the coordinator confirms.
        flags.append(("address_unconfirmed", {"field": "raised_by_email"}))
    if parse.free_text:
        flags.append(("free_text_referral", {"immediate_risk": state.immediate_risk}))
    if parse.timescale_unread:
        flags.append(("timescale_unread", {"field": "needed_by"}))
    return [EventRecord(k, d) for k, d in flags], [Notice(k, d) for k, d in flags]


def acknowledge(state: CaseState, intake: NewReferral, p: Partnership) -> Step:
    """A referral opened a case: acknowledge it and ask for what is missing (a forwarded referral is
    acknowledged to the forwarder and to the practitioner). A letter with no form labels opens an
    incomplete case; the coordinator is told in the digest, or at once when it says the child is at
    immediate risk. A timescale that could not be read is quoted back and asked for as a date."""
    parse = intake.parse
    events, notices = _flags(state, intake)
    events.insert(0, _opened_record(parse, p, intake.sender))
    mails: list[OutgoingMail] = []
    recipients = list(dict.fromkeys(a for a in (intake.sender, intake.practitioner) if a))
    for n, raiser in enumerate(recipients if intake.may_answer else []):
        key = f"ack:{state.reference}" if n == 0 else f"ack:{state.reference}:{raiser}"
        mails.append(_acknowledgement(state, parse, p, raiser, intake.origin_message_id, key=key))
        events.append(EventRecord("acknowledgement_queued", {"template": mails[-1].template, "to": [raiser]}))
    if not intake.may_answer:
        events.append(EventRecord("acknowledgement_suppressed", {"reason": "automated sender"}))
    if parse.free_text and state.immediate_risk:
        alerts = _urgent_alerts(state, p)
        mails.extend(alerts)
        events.extend(EventRecord("coordinator_alerted", {"to": list(m.to), "why": "immediate risk, no form"})
                      for m in alerts)
    return Step(change=CaseChange(status=_status(parse)), events=tuple(events), mails=tuple(mails),
                notices=tuple(notices))


def _asks(parse: ReferralParse, f: ReferralFields) -> list[str]:
    """The fields the acknowledgement asks for, as the form's labels."""
    names = list(parse.missing)
    if parse.free_text:
        names += [n for n in _FREE_TEXT_ASKS if f.is_empty(n) and n not in names]
    if parse.timescale_unread and "needed_by" not in names:
        names.append("needed_by")
    return [FIELD_LABELS.get(n, n) for n in names]


def _understood(state: CaseState, parse: ReferralParse, p: Partnership) -> dict[str, Any]:
    f = state.fields
    context: dict[str, Any] = {
        **summary_context(state.reference, f, p, immediate_risk=state.immediate_risk),
        "raised_by_name": f.raised_by_name or "",
        "free_text": parse.free_text,
        # Capitalised words become initials: the children of a new referral may not be known yet.
        "timescale_unread": names_as_initials(parse.timescale_unread) if parse.timescale_unread else "",
        "needed_by_local": _needed_by(f.needed_by),
    }
    if parse.free_text:
        # The letter itself stays on the case record: it may name children the redaction does not know yet.
        context["concern_summary"] = ""
    return context


def _needed_by(value: date | datetime | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%H:%M on %A %d %B %Y")
    return value.strftime("%A %d %B %Y")


def _acknowledgement(state: CaseState, parse: ReferralParse, p: Partnership, raiser: str,
                     origin_message_id: str | None, *, key: str) -> OutgoingMail:
    asks = _asks(parse, state.fields)
    context = {**_understood(state, parse, p), "missing": asks}
    incomplete = bool(parse.missing)
    return OutgoingMail(
        template="referral_incomplete.txt.j2" if incomplete else "referral_acknowledged.txt.j2",
        to=(raiser,),
        subject=case_subject(state.reference, "Information needed for your escalation" if incomplete
                             else "Escalation referral received"),
        context=context,
        dedupe_key=key,
        reason="acknowledge referral; ask for missing required fields" if incomplete else "acknowledge referral",
        in_reply_to=origin_message_id,
        auto_submitted="auto-replied",
        # The raiser may answer with INFO before any stage opens.
        token_stage=ACK_TOKEN_STAGE,
    )


def _urgent_alerts(state: CaseState, p: Partnership) -> list[OutgoingMail]:
    """A letter without the form that says a child is at immediate risk: the coordinator at once."""
    ctx = {**summary_context(state.reference, state.fields, p, immediate_risk=True), "concern_summary": "",
           "immediate_route": p.immediate_risk is not None}
    return [OutgoingMail(template="referral_urgent_alert.txt.j2", to=(c.email,),
                         subject=case_subject(state.reference, "Urgent: escalation received without the form"),
                         context={**ctx, "recipient_name": c.name}, dedupe_key=f"{state.reference}:urgent-alert:"
                         f"{c.email}", reason="free-text referral says a child is at immediate risk")
            for c in p.coordinator()]


def initial_step(state: CaseState, p: Partnership, now: datetime, because: str) -> Step:
    """The case's first step: the immediate-risk route if the child is at risk and the policy has one,
    else the stage the referral says was reached (or the first) of the route its concern chooses."""
    if state.immediate_risk and p.immediate_risk is not None:
        return immediate_step(state, p, now, because + " — the child is at immediate risk")
    route = p.route(state.route) if state.route else p.choose_route(state.fields.concern)
    state = replace(state, route=route.id)
    n = len(route.stages)
    reached = state.fields.stage
    index = reached - 1 if reached and 1 <= reached <= n else 0
    return open_stage(state, p, plan_for(state, p, index, now), now, because=because)
