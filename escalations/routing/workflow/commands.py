"""The reply commands: each one an entry of :data:`COMMANDS` — who may give it, in which statuses it
applies, where in the order of checks it is dispatched, and its handler. Its words and help line are
in ``parsers/commands_vocabulary.py`` (the parser reads them there; the registry must cover exactly
those words, checked at import).

The order of the checks is :data:`CHECKS`: LEARNING and THEME are kept whatever the case's status; a
finished case refuses everything else; NOTE and CONFIRM come
before the refusal of those told for information (a CP Chair's comment is kept); WITHDRAW, INFO and
URGENT before the refusal of a case still waiting for information or routing; the rest (ESCALATE,
RESOLVED, ACCEPT, a reply with no command) only on an open case or one awaiting confirmation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from escalations.parsers.commands_vocabulary import VOCABULARY, Word
from escalations.routing.workflow.audience import AUTHORITY, Audience, StageKind
from escalations.routing.workflow.authority import Authority, acts_as
from escalations.routing.workflow.immediate import bypass, immediate_step
from escalations.routing.workflow.mail import (
    base_context,
    case_subject,
    help_mail,
    local,
    mail,
    stage_context,
    stage_subject,
)
from escalations.routing.workflow.opening import initial_step
from escalations.routing.workflow.reply import Reply
from escalations.routing.workflow.resolution import (
    close,
    confirming,
    is_decision_maker_of,
    on_accept,
    on_resolved,
)
from escalations.routing.workflow.stages import (
    escalate,
    other_practitioner,
    other_practitioner_party,
    plan_for,
)
from escalations.routing.workflow.state import (
    FIELD_LABELS,
    TERMINAL,
    CaseChange,
    CaseState,
    CaseStatus,
    EventRecord,
    OutgoingMail,
    Step,
)
from escalations.routing.workflow.wording import display_name

__all__ = ["CHECKS", "COMMANDS", "NO_COMMAND", "Command", "Offer", "Phase", "help_lines", "on_verified_reply"]


class Phase(StrEnum):
    """Where in :data:`CHECKS` a command is dispatched."""

    #: Before anything else: learning and themes are kept on a finished case too (learning is drawn
    #: after resolution: Sutton 7.5, Tri-borough Appendix A "monitor the effectiveness").
    ANY_TIME = "any_time"
    ANY_SENDER = "any_sender"  # before the refusal of those told for information
    ANY_STATUS = "any_status"  # before the refusal of a case waiting for information or routing
    AT_STAGE = "at_stage"  # an open case, or one awaiting confirmation of a resolution


Handler = Callable[[Reply], Step]

_EVERY_STAGE = frozenset(StageKind)


@dataclass(frozen=True)
class Offer:
    """A line of a mail's "How to reply" list: to whom, at which kind of stage, in which words
    (empty: the vocabulary's usage and help text)."""

    to: frozenset[Audience]
    at: frozenset[StageKind] = _EVERY_STAGE
    usage: str = ""
    text: str = ""


@dataclass(frozen=True)
class Command:
    word: Word
    #: Who may give it (anyone else is told ``refused``; nothing changes).
    who: frozenset[Authority]
    statuses: frozenset[CaseStatus]
    phase: Phase
    handler: Handler
    refused: str = ""
    #: Whom the mails offer it to; the first offer that fits a recipient gives its line.
    offers: tuple[Offer, ...] = ()

    @property
    def name(self) -> str:
        return self.word.name

    @property
    def synonyms(self) -> tuple[str, ...]:
        return self.word.synonyms

    @property
    def help_text(self) -> str:
        return self.word.help_text


_ANYONE = frozenset(Authority)
_LIVE = frozenset(CaseStatus) - TERMINAL
_AT_STAGE = frozenset({CaseStatus.OPEN, CaseStatus.AWAITING_CONFIRMATION})
_WAITING = frozenset({CaseStatus.AWAITING_INFORMATION, CaseStatus.NEEDS_ROUTING})


# ---- handlers ----------------------------------------------------------------------------------------


def _on_note(reply: Reply) -> Step:
    return reply.recorded()


def _on_confirm(reply: Reply) -> Step:
    """Staff confirm that an address written in the referral may be mailed; the other worker is then
    asked at the current stage (its deadline unchanged)."""
    from escalations.parsers.sender import valid_address

    state, p, now = reply.state, reply.p, reply.now
    words = reply.event.argument.split()
    address = valid_address(words[0].strip("<>,;")) if words else None
    if address is None:
        return Step(events=(reply.record,), mails=(help_mail(state, p, reply.sender, now,
                                                             "CONFIRM needs the address to confirm after it"),))
    confirmed = tuple(dict.fromkeys((*state.confirmed_addresses, address)))
    updated = replace(state, confirmed_addresses=confirmed)
    change = CaseChange(confirmed_addresses=confirmed)
    events = (reply.record, EventRecord("address_confirmed", {"address": address}, actor=reply.sender))
    if state.stage_index is None or state.status in TERMINAL:
        return Step(change=change, events=events)
    plan = plan_for(updated, p, state.stage_index, state.stage_opened_at or now)
    other = other_practitioner(updated, p, plan)
    if other is None or other[1] != address or any(address in acts_as(x) for x in state.parties):
        return Step(change=change, events=events)
    party = other_practitioner_party(*other)
    ctx = stage_context(updated, p, plan)
    ctx["because"] = "the partnership confirmed your address for this case"
    ctx["due_local"] = local(state.due_at, p)
    request = mail("stage_request.txt.j2", address, stage_subject(state, plan), ctx,
                   f"{state.reference}:s{state.stage_index}:request:{address}", plan.clause,
                   token_stage=state.stage_index, recipient_name=party.name, role=party.role_name,
                   audience=Audience.ASKED)
    return Step(change=replace(change, parties=(*state.parties, party)), events=events, mails=(request,))


def _on_withdraw(reply: Reply) -> Step:
    return reply.done(close(reply.state, reply.p, reply.now, outcome=reply.event.argument or "withdrawn by the "
                            "referrer", how=f"withdrawn by {display_name(reply.state, reply.p, reply.sender)}",
                            by=reply.sender,
                            status=CaseStatus.WITHDRAWN))


def _on_info(reply: Reply) -> Step:
    """Missing fields answered ("Label: value" lines): once complete, the case's first step opens."""
    state, r, p, now = reply.state, reply.event, reply.p, reply.now
    if r.info is None:
        return reply.done(Step(events=(EventRecord("info_empty", {}, actor=r.sender),), mails=(help_mail(
            state, p, r.sender, now, "no 'Label: value' lines were found in your reply"),)))
    routing = state.status == CaseStatus.NEEDS_ROUTING
    fields = r.info.merged_with(state.fields) if routing else state.fields.merged_with(r.info)
    missing = tuple(m for m in p.all_required_fields() if fields.is_empty(m))
    updated = replace(state, fields=fields, missing=missing,
                      immediate_risk=state.immediate_risk or bool(fields.immediate_risk))
    change = CaseChange(fields=fields, missing=missing, immediate_risk=updated.immediate_risk)
    ev = EventRecord("information_added", {"fields": sorted(k for k, v in r.info.to_json().items()
                                                            if v not in (None, [], "")),
                                           "still_missing": list(missing)}, actor=r.sender)
    if state.status == CaseStatus.AWAITING_INFORMATION and missing:
        return reply.done(Step(change=change, events=(ev,), mails=(_still_missing(reply, updated, missing),)))
    if state.status in _WAITING:
        step = initial_step(updated, p, now, "the missing information was provided")
        return reply.done(replace(step, change=replace(step.change, fields=fields, missing=missing,
                                                       immediate_risk=updated.immediate_risk),
                                  events=(ev, *step.events)))
    return reply.done(Step(change=change, events=(ev,)))


def _still_missing(reply: Reply, updated: CaseState, missing: tuple[str, ...]) -> OutgoingMail:
    ctx = base_context(updated, reply.p)
    ctx.update({"missing": [FIELD_LABELS.get(m, m) for m in missing],
                "raised_by_name": updated.fields.raised_by_name or ""})
    ref = reply.state.reference
    return OutgoingMail(template="referral_incomplete.txt.j2", to=(reply.sender,),
                        subject=case_subject(ref, "Information still needed"), context=ctx,
                        dedupe_key=f"{ref}:info:{'+'.join(missing)}", reason="missing fields",
                        auto_submitted="auto-replied")


#: Who may ask for the bypass with a second URGENT (Tri-borough §2 ¶7: the referring agency; staff).
_BYPASS_WHO = frozenset({Authority.RAISER, Authority.STAFF, Authority.PARTY})


def _on_urgent(reply: Reply) -> Step:
    state, p, now = reply.state, reply.p, reply.now
    if p.immediate_risk is None:
        return Step(change=CaseChange(immediate_risk=True), events=(reply.record,))
    if state.immediate_risk and state.status in _AT_STAGE:
        step = bypass(state, p, now, reply.sender) if reply.event.authority in _BYPASS_WHO else None
        if step is None:
            return reply.recorded()  # already on the immediate-risk route
        return reply.done(replace(step, change=replace(step.change, immediate_risk=True)))
    because = (f"{display_name(state, p, reply.sender)} said URGENT: "
               f"{reply.event.argument or 'the child is at immediate risk'}")
    return reply.done(immediate_step(replace(state, immediate_risk=True), p, now, because))


def _on_escalate(reply: Reply) -> Step:
    state, r = reply.state, reply.event
    res = state.resolution
    if state.status == CaseStatus.AWAITING_CONFIRMATION and (res.side if res else None) == r.side and \
            not any(r.sender.lower() in acts_as(x) for x in confirming(state)):
        return reply.illegal("a resolution was recorded on your side; the other side has been asked to confirm it")
    escalated = escalate(state, reply.p, reply.now, f"{display_name(state, reply.p, r.sender)} asked to "
                                                     f"escalate: {r.argument or 'no reason given'}", None)
    if escalated is None:
        if is_decision_maker_of(state, reply.p, reply.now, r.sender):
            return reply.illegal("this is the final stage: there is no stage to escalate to, and your written "
                                 "decision (reply RESOLVED with it) closes the case")
        return reply.illegal("this is the final stage: the decision maker's written decision closes the case")
    return reply.done(escalated)


def _on_learning(reply: Reply) -> Step:
    """A learning point for the partnership's learning log (the report lists them by theme)."""
    text = reply.event.argument.strip()
    if not text:
        return Step(events=(reply.record,), mails=(help_mail(reply.state, reply.p, reply.sender, reply.now,
                                                             "LEARNING needs the learning point after it"),))
    return reply.done(Step(events=(EventRecord("learning", {"text": text}, actor=reply.sender),)))


def _on_theme(reply: Reply) -> Step:
    """Tag the case with one of the seeds' themes of disagreement."""
    from escalations.records.themes import THEME_CLAUSE, Theme, theme_of

    theme = theme_of(reply.event.argument)
    if theme is None:
        names = ", ".join(t.label.lower() for t in Theme)
        return Step(events=(reply.record,), mails=(help_mail(reply.state, reply.p, reply.sender, reply.now,
                                                             f"THEME needs one of: {names}"),))
    return reply.done(Step(events=(EventRecord("theme", {"theme": str(theme)}, clause=THEME_CLAUSE,
                                               actor=reply.sender),)))


def _on_no_command(reply: Reply) -> Step:
    """Kept as a note; the sender is told what they can say."""
    return Step(events=(reply.record,), mails=(help_mail(reply.state, reply.p, reply.sender, reply.now,
                                                         "your message was recorded as a note"),))


# ---- the registry -----------------------------------------------------------------------------------

_WORDS = {w.name: w for w in VOCABULARY}

_A = Audience
_PARTIES = frozenset({_A.RAISER, _A.ASKED})
_LADDER = frozenset({StageKind.LADDER})
_FINAL = frozenset({StageKind.FINAL})
_WAITING_KIND = frozenset({StageKind.WAITING})

#: Who is offered what. A final stage's decision maker decides: RESOLVED is their decision and there is
#: no next stage (C&H 2.12, Havering 2.10, Wiltshire Stage Three, Tri-borough §2 Process ¶6, Sutton 7.4).
_OFFERS: Mapping[str, tuple[Offer, ...]] = {
    "RESOLVED": (
        Offer(frozenset({_A.DECISION_MAKER}), usage="RESOLVED <your decision>",
              text="your written decision: it closes the case and is sent to every party"),
        Offer(frozenset({_A.STAFF}), usage="RESOLVED <outcome or decision>",
              text="record the agreed outcome or the decision maker's decision: it closes the case and is "
                   "sent to every party"),
        Offer(_PARTIES, _FINAL, text="the disagreement is resolved; say what was agreed and how outstanding "
                                     "issues will be pursued (the decision maker is asked to confirm)"),
        Offer(_PARTIES, _LADDER),
    ),
    "ACCEPT": (
        Offer(frozenset({_A.DECISION_MAKER}),
              text="confirm a resolution the parties have recorded: it closes the case"),
        Offer(_PARTIES),
    ),
    "ESCALATE": (Offer(frozenset({*_PARTIES, _A.STAFF}), _LADDER),),
    "NOTE": (Offer(frozenset(Audience)),),
    "URGENT": (Offer(frozenset({*_PARTIES, _A.STAFF})),),
    "WITHDRAW": (
        Offer(frozenset({_A.RAISER}), text="withdraw your escalation: it closes the case"),
        Offer(frozenset({_A.STAFF}), text="withdraw the escalation on the referrer's behalf: it closes the case"),
    ),
    "INFO": (Offer(frozenset({_A.RAISER, _A.STAFF}), _WAITING_KIND),),
    "CONFIRM": (Offer(frozenset({_A.STAFF}),
                      text="confirm an address written in the referral may be mailed"),),
    # For the partnership's learning (Tri-borough monitoring; Sutton 7.5), also once a case is closed.
    "LEARNING": (Offer(frozenset({*_PARTIES, _A.DECISION_MAKER, _A.STAFF})),),
    "THEME": (Offer(frozenset({_A.STAFF})),),
}


def _command(name: str, who: frozenset[Authority], statuses: frozenset[CaseStatus], phase: Phase,
             handler: Handler, refused: str = "") -> Command:
    return Command(_WORDS[name], who, statuses, phase, handler, refused, _OFFERS.get(name, ()))


COMMANDS: Mapping[str, Command] = {c.name: c for c in (
    _command("NOTE", _ANYONE, _LIVE, Phase.ANY_SENDER, _on_note),
    _command("CONFIRM", frozenset({Authority.STAFF}), _LIVE, Phase.ANY_SENDER, _on_confirm,
             refused="only partnership staff can confirm an address"),
    _command("WITHDRAW", frozenset({Authority.RAISER, Authority.STAFF}), _LIVE, Phase.ANY_STATUS,
             _on_withdraw, refused="only the practitioner who raised the concern can withdraw it"),
    _command("INFO", _ANYONE, _LIVE, Phase.ANY_STATUS, _on_info),
    _command("URGENT", _ANYONE, _LIVE, Phase.ANY_STATUS, _on_urgent),
    _command("ESCALATE", _ANYONE, _AT_STAGE, Phase.AT_STAGE, _on_escalate),
    _command("RESOLVED", _ANYONE, _AT_STAGE, Phase.AT_STAGE, on_resolved),
    _command("ACCEPT", _ANYONE, _AT_STAGE, Phase.AT_STAGE, on_accept),
    _command("LEARNING", _ANYONE, frozenset(CaseStatus), Phase.ANY_TIME, _on_learning),
    _command("THEME", _ANYONE, frozenset(CaseStatus), Phase.ANY_TIME, _on_theme),
)}


def may_use(command: Command, who: Authority) -> bool:
    """Would :data:`CHECKS` let ``who`` give ``command`` (on a case in one of its statuses)?"""
    return who in command.who and (command.phase is Phase.ANY_SENDER or who is not Authority.NOTIFIED)


def help_lines(audience: Audience, at: StageKind) -> tuple[tuple[str, str], ...]:
    """The "How to reply" list for one kind of recipient at one kind of stage (``_commands.txt.j2``)."""
    lines: list[tuple[str, str]] = []
    for c in (COMMANDS[w.name] for w in VOCABULARY):
        if at is StageKind.WAITING and not c.statuses & _WAITING:
            continue  # refused while the case waits (_refuse_status)
        offer = next((o for o in c.offers if audience in o.to and at in o.at), None)
        if offer is not None:
            lines.append((offer.usage or c.word.usage, offer.text or c.word.help_text))
    return tuple(lines)


_offered_beyond_authority = sorted(f"{c.name} to {a}" for c in COMMANDS.values() for o in c.offers for a in o.to
                                   if not may_use(c, AUTHORITY[a]))
if _offered_beyond_authority:  # the help never offers what the checks would refuse
    raise RuntimeError(f"commands offered to those who may not give them: {_offered_beyond_authority}")

#: A reply whose first line is no command (or an unknown word).
NO_COMMAND = Command(Word("", (), "", ""), _ANYONE, _AT_STAGE, Phase.AT_STAGE, _on_no_command)

if set(COMMANDS) != set(_WORDS):  # every word the parser reads has exactly one entry
    raise RuntimeError(f"command registry and vocabulary differ: {sorted(set(COMMANDS) ^ set(_WORDS))}")


# ---- the order of checks ------------------------------------------------------------------------------

Check = Callable[[Reply, Command], "Step | None"]


def _refuse_finished(reply: Reply, command: Command) -> Step | None:
    state = reply.state
    if state.status in TERMINAL:
        return reply.illegal(f"case {state.reference} is already {state.status}; nothing was changed")
    return None


def _refuse_notified(reply: Reply, command: Command) -> Step | None:
    if reply.event.authority == Authority.NOTIFIED:
        # Told for information (CP Chair/IRO, partnership members): their comments are kept, nothing more.
        return reply.illegal("you were told about this case for information: your message was kept as a note, "
                             "and only the people asked at this stage can change the case")
    return None


_WAITING_WHY = {
    CaseStatus.AWAITING_INFORMATION: "the case is waiting for missing information; reply with INFO and the "
                                     "missing fields",
    CaseStatus.NEEDS_ROUTING: "the case is waiting for the partnership to route it to the other agency",
}


def _refuse_status(reply: Reply, command: Command) -> Step | None:
    status = reply.state.status
    if status not in command.statuses:
        return reply.illegal(_WAITING_WHY.get(CaseStatus(status), f"the case is {status}"))
    return None


def _dispatch(phase: Phase) -> Check:
    def dispatch(reply: Reply, command: Command) -> Step | None:
        if command.phase is not phase:
            return None
        if reply.event.authority not in command.who:
            return reply.illegal(command.refused)
        return command.handler(reply)

    return dispatch


CHECKS: tuple[Check, ...] = (
    _dispatch(Phase.ANY_TIME),
    _refuse_finished,
    _dispatch(Phase.ANY_SENDER),
    _refuse_notified,
    _dispatch(Phase.ANY_STATUS),
    _refuse_status,
    _dispatch(Phase.AT_STAGE),
)


def command_for(reply: Reply) -> Command:
    """The registry's entry for the reply; "Label: value" lines with no command answer a request for
    missing information."""
    r = reply.event
    command = COMMANDS.get(r.command or "")
    if command is not None:
        return command
    if r.command is None and r.info is not None and reply.state.status in _WAITING:
        return COMMANDS["INFO"]
    return NO_COMMAND


def on_verified_reply(reply: Reply) -> Step:
    """A reply whose sender may act on the case (``authority`` allowed it): the first check that
    answers decides."""
    command = command_for(reply)
    for check in CHECKS:
        step = check(reply, command)
        if step is not None:
            return step
    raise AssertionError("the last check dispatches every command")
