"""Replies that may not act: kept on the case as unverified correspondence, never applied.

Whom we tell: a sender whose token verified (wrong case, old stage, too many notes) is told
directly; otherwise only the genuine party the From line names (an address the case or the
configuration holds), with a fresh copy of their request, so a forger learns and gets nothing.
Each at most once a day. The coordinator hears of it in the hourly digest.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from escalations.routing.workflow.authority import (
    REFUSAL_TEXT,
    VERIFIED_REFUSALS,
    Refusal,
    ReplyFacts,
    Verdict,
    role_of,
)
from escalations.routing.workflow.mail import answer, base_context, case_subject, local, stage_number
from escalations.routing.workflow.state import (
    ACK_TOKEN_STAGE,
    NOTICE_MAIL,
    TERMINAL,
    CaseState,
    EventRecord,
    Notice,
    OutgoingMail,
    Step,
)

if TYPE_CHECKING:
    from escalations.routing.policy.model import Partnership
    from escalations.routing.workflow.events import Replied

__all__ = ["refused"]


def refused(state: CaseState, r: Replied, facts: ReplyFacts, verdict: Verdict, p: Partnership,
            now: datetime) -> Step:
    """The step for a reply ``authority()`` refused: a record, at most one mail, a notice."""
    assert verdict.refusal is not None
    code = verdict.refusal
    claimed = (facts.sender or facts.claimed_sender or "").lower()
    record = EventRecord("reply_not_applied", {
        "reason": code.value, "from": claimed, "command": r.command, "text": r.argument,
        "message_id": r.message_id, "unverified": code not in VERIFIED_REFUSALS,
        "sender_problem": facts.sender_problem}, actor=claimed or None)
    mails: list[OutgoingMail] = []
    if code in VERIFIED_REFUSALS and facts.sender:
        mails.append(_tell_sender(state, p, facts.sender, code, now))
    elif claimed and role_of(state, p, claimed)[0] is not None and state.status not in TERMINAL:
        mails.append(_tell_genuine(state, p, claimed, code, now))
    notices: tuple[Notice, ...] = (Notice("reply_not_applied", {"reason": code.value, "from": claimed}),)
    if code is Refusal.NOTE_LIMIT and facts.notes_refused_today > 0:
        notices = ()  # the coordinator was told when the limit was first reached
    return Step(events=(record,), mails=tuple(mails), notices=notices)


def _base(code: Refusal, claimed: str) -> dict[str, str]:
    return {"reason": REFUSAL_TEXT[code], "sender": claimed, "recipient_name": "", "recipient_role": ""}


def _tell_sender(state: CaseState, p: Partnership, sender: str, code: Refusal, now: datetime) -> OutgoingMail:
    day = p.calendar.local(now).date().isoformat()
    return replace(answer(state, p, sender, "reply_not_applied.txt.j2",
                          f"{state.reference}:notapplied:{sender}:{code.value}:{day}",
                          _base(code, sender.lower()), "Your reply was not applied"), priority=NOTICE_MAIL)


def _tell_genuine(state: CaseState, p: Partnership, claimed: str, code: Refusal, now: datetime) -> OutgoingMail:
    day = p.calendar.local(now).date().isoformat()
    genuine = _genuine_address(state, claimed)
    ctx = base_context(state, p)
    ctx.update(_base(code, claimed))
    ctx.update({"status": state.status, "due_local": local(state.due_at, p), "stage_number": stage_number(state)})
    return OutgoingMail(
        template="reply_not_verified.txt.j2", to=(genuine,),
        subject=case_subject(state.reference, "We could not verify a message from you"), context=ctx,
        dedupe_key=f"{state.reference}:unverified:{genuine}:{day}", reason="unverified reply",
        auto_submitted="auto-generated",
        token_stage=state.stage_index if state.stage_index is not None else ACK_TOKEN_STAGE,
        priority=NOTICE_MAIL)


def _genuine_address(state: CaseState, claimed: str) -> str:
    """The address as the case or configuration spells it (never the spelling a forger chose)."""
    if state.raiser and state.raiser.lower() == claimed:
        return state.raiser
    for x in state.parties:
        for a in (x.email, x.deputy_email):
            if a and a.lower() == claimed:
                return a
    return claimed
