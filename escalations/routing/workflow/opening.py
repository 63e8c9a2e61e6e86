"""Opening a case: the acknowledgement of a new referral (and the request for what is missing), and
the case's first step once it is complete enough to act on."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

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

__all__ = ["decide_new_referral", "initial_step"]


def decide_new_referral(
    parse: ReferralParse,
    partnership: Partnership,
    *,
    reference: str,
    sender: str | None,
    origin_message_id: str | None,
    may_answer: bool,
    practitioner: str | None = None,
    sender_problem: str | None = None,
) -> Step:
    """A referral opened a case: acknowledge it and ask for what is missing.

    ``sender`` is the strictly parsed From address (None when From was ambiguous), ``practitioner``
    the referral's own ``Email:`` when the service may write to it (see ``recipients.mailable``). A
    forwarded referral is acknowledged to the forwarder and to the practitioner.
    """
    f = parse.fields
    missing = list(parse.missing)
    events: list[EventRecord] = [
        EventRecord(
            "case_opened",
            {"missing": missing, "sources": list(parse.sources), "partnership": partnership.id,
             # fixed codes of what was skipped as over a limit (never a name from the message)
             **({"limits_hit": list(parse.limits_hit)} if parse.limits_hit else {})},
            clause=None,
            actor=sender,
        )
    ]
    notices: list[Notice] = []
    if sender_problem:
        events.append(EventRecord("sender_not_verified", {"reason": sender_problem}))
        notices.append(Notice("sender_not_verified", {"reason": sender_problem}))
    if f.raised_by_email and practitioner is None and (sender or "").lower() != f.raised_by_email.lower():
        # An address in the text whose domain is no agency's: not mailed until the coordinator confirms.
        events.append(EventRecord("address_unconfirmed", {"field": "raised_by_email"}))
        notices.append(Notice("address_unconfirmed", {"field": "raised_by_email"}))
    mails: list[OutgoingMail] = []
    recipients = list(dict.fromkeys(a for a in (sender, practitioner) if a))
    for n, raiser in enumerate(recipients if may_answer else []):
        mails.append(_acknowledgement(f, missing, partnership, reference, raiser, origin_message_id,
                                      key=f"ack:{reference}" if n == 0 else f"ack:{reference}:{raiser}"))
        events.append(EventRecord("acknowledgement_queued", {"template": mails[-1].template, "to": [raiser]}))
    if not may_answer:
        events.append(EventRecord("acknowledgement_suppressed", {"reason": "automated sender"}))
    status = CaseStatus.AWAITING_INFORMATION if missing else CaseStatus.OPEN
    return Step(change=CaseChange(status=status), events=tuple(events), mails=tuple(mails),
                notices=tuple(notices))


def _acknowledgement(f: ReferralFields, missing: list[str], partnership: Partnership, reference: str,
                     raiser: str, origin_message_id: str | None, *, key: str) -> OutgoingMail:
    context: dict[str, Any] = {
        **summary_context(reference, f, partnership, immediate_risk=bool(f.immediate_risk)),
        "missing": [FIELD_LABELS.get(m, m) for m in missing],
        "raised_by_name": f.raised_by_name or "",
    }
    return OutgoingMail(
        template="referral_incomplete.txt.j2" if missing else "referral_acknowledged.txt.j2",
        to=(raiser,),
        subject=case_subject(reference, "Information needed for your escalation" if missing
                             else "Escalation referral received"),
        context=context,
        dedupe_key=key,
        reason="acknowledge referral; ask for missing required fields" if missing else "acknowledge referral",
        in_reply_to=origin_message_id,
        auto_submitted="auto-replied",
        # The raiser may answer with INFO before any stage opens.
        token_stage=ACK_TOKEN_STAGE,
    )


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
