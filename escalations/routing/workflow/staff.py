"""Staff actions: what a signed-in coordinator does to a case from the web interface, as events
through the same ``transition`` as an e-mail reply — never a direct write to the case.

Each action is an entry of :data:`ACTIONS` (the statuses it applies in, and its handler). Who may act
is decided here, not by the page: only the ``coordinator`` and ``admin`` web roles change a case; a
``viewer`` or a ``practitioner`` is refused (recorded, nothing changed). Every action is a case event
naming the member of staff and their reason; a refused one is recorded with why.

Where an action means what a reply command means (a note, confirming an address, escalating,
recording a resolution, withdrawing), it is that command given with partnership-staff authority
(``commands.py``), so the order of checks and the policy's rules are the same as for mail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from escalations.routing.workflow.authority import Authority
from escalations.routing.workflow.events import Replied, StaffAction
from escalations.routing.workflow.reply import Reply
from escalations.routing.workflow.state import (
    TERMINAL,
    CaseChange,
    CaseState,
    CaseStatus,
    EventRecord,
    Side,
    Step,
)

if TYPE_CHECKING:
    from escalations.routing.policy.model import Partnership

__all__ = ["ACTING_ROLES", "ACTIONS", "CORRECTABLE", "PERSONAL_FIELDS", "Action", "StaffAction",
           "StaffReply", "may_act", "on_staff_action", "quarantine_refusal"]


class Action(StrEnum):
    NOTE = "note"
    CORRECT_FIELD = "correct_field"
    SET_AGENCY = "set_agency"
    CONFIRM_ADDRESS = "confirm_address"
    RESEND = "resend"
    ESCALATE = "escalate"
    RECORD_RESOLUTION = "record_resolution"
    CLOSE = "close"
    WITHDRAW = "withdraw"
    SET_LEGAL_HOLD = "set_legal_hold"
    LIFT_LEGAL_HOLD = "lift_legal_hold"
    # Outside a case: mail that could not be processed.
    REPLAY_QUARANTINED = "replay_quarantined"
    DISCARD_QUARANTINED = "discard_quarantined"


#: The web roles that may change a case or the quarantine (viewers read; practitioners act by mail).
ACTING_ROLES = frozenset({"coordinator", "admin"})

#: Fields whose values are the child's: a correction records the field's name, never the value.
PERSONAL_FIELDS = frozenset({"child_names", "child_dobs", "child_id", "concern"})

#: What staff may correct. Not the raiser's address: that decides who may act on the case by mail.
CORRECTABLE = frozenset({
    "child_names", "child_dobs", "child_id", "child_status", "raised_by_name", "raised_by_role",
    "raised_by_agency", "other_agency", "other_practitioner", "concern", "actions_taken", "outcome_sought",
    "needed_by", "borough",
})

_LIVE = frozenset(CaseStatus) - TERMINAL
_ANY = frozenset(CaseStatus)
_AT_STAGE = frozenset({CaseStatus.OPEN, CaseStatus.AWAITING_CONFIRMATION})
_WAITING = frozenset({CaseStatus.AWAITING_INFORMATION, CaseStatus.NEEDS_ROUTING})


def may_act(role: str) -> bool:
    return role in ACTING_ROLES


def quarantine_refusal(role: str, action: str) -> str | None:
    """Why this role may not replay or discard quarantined mail (None: it may)."""
    if action not in (Action.REPLAY_QUARANTINED, Action.DISCARD_QUARANTINED):
        return "not a quarantine action"
    if not may_act(role):
        return f"a {role} may not replay or discard quarantined mail"
    return None


@dataclass(frozen=True)
class StaffReply(Reply):
    """A staff action handled like a reply from partnership staff: its record names the action, the
    member of staff and the reason; a refusal is recorded and shown on the page, never mailed."""

    action: StaffAction

    @property
    def record(self) -> EventRecord:
        a = self.action
        return EventRecord(f"staff_{a.action}", {"reason": a.reason, "role": a.role, **_shown_arguments(a)},
                           actor=a.who)

    def illegal(self, why: str) -> Step:
        return Step(events=(self.record, EventRecord("staff_action_refused", {"action": self.action.action,
                                                                               "why": why},
                                                     actor=self.action.who)))


def _shown_arguments(a: StaffAction) -> dict[str, str]:
    """The action's arguments as the record keeps them: a child's details are not copied into history."""
    args = dict(a.arguments)
    if a.action == Action.CORRECT_FIELD and args.get("field") in PERSONAL_FIELDS:
        args["value"] = "(personal details: see the referral)"
    return args


def _as_reply(state: CaseState, a: StaffAction, p: Partnership, now: datetime, command: str | None,
              argument: str) -> StaffReply:
    event = Replied(sender=a.who, command=command, argument=argument, message_id=None,
                    authority=Authority.STAFF, side=Side.PARTNERSHIP)
    return StaffReply(state, event, p, now, a)


# ---- handlers ----------------------------------------------------------------------------------------

StaffHandler = Callable[[StaffReply], Step]


def _command(word: str, argument: Callable[[StaffAction], str]) -> StaffHandler:
    """The action is the reply command ``word`` given by partnership staff."""
    from escalations.routing.workflow.commands import on_verified_reply

    def handle(reply: StaffReply) -> Step:
        a = reply.action
        return on_verified_reply(_as_reply(reply.state, a, reply.p, reply.now, word, argument(a)))

    return handle


def _on_note(reply: StaffReply) -> Step:
    """Kept on the case, in any status (a note after closing is part of the record too)."""
    return reply.recorded()


def _outcome(a: StaffAction) -> str:
    return a.arguments.get("outcome") or a.reason


def _on_confirm_address(reply: StaffReply) -> Step:
    from escalations.parsers.sender import valid_address

    address = valid_address((reply.action.arguments.get("address") or "").strip())
    if address is None:
        return reply.illegal("give the address to confirm (one valid e-mail address)")
    return _command("CONFIRM", lambda a: address)(reply)


def _corrected(state: CaseState, name: str, value: str) -> CaseState | str:
    """The case with one field corrected, or why it cannot be."""
    from escalations.parsers.fields import ReferralFields

    if name not in CORRECTABLE:
        return f"the field {name or '(none)'} cannot be corrected here"
    data = state.fields.to_json()
    if name in ("child_names", "child_dobs"):
        data[name] = [v.strip() for v in value.replace("\n", ";").split(";") if v.strip()]
    else:
        data[name] = value.strip() or None
    fields = ReferralFields.from_json(data)
    if value.strip() and fields.is_empty(name):
        return f"the value given for {name} could not be read"
    return replace(state, fields=fields)


def _correct(reply: StaffReply, name: str, value: str) -> Step:
    from escalations.routing.workflow.opening import initial_step

    state, p, now = reply.state, reply.p, reply.now
    updated = _corrected(state, name, value)
    if isinstance(updated, str):
        return reply.illegal(updated)
    fields = updated.fields
    missing = tuple(m for m in p.all_required_fields() if fields.is_empty(m))
    updated = replace(updated, missing=missing)
    change = CaseChange(fields=fields, missing=missing)
    if name == "other_agency":
        agency = p.find_agency(fields.other_agency, borough=fields.borough)
        change = replace(change, other_agency=agency.id if agency else None)
    if state.status in _WAITING and not missing:
        step = initial_step(updated, p, now, "partnership staff completed the referral")
        return reply.done(replace(step, change=replace(step.change, fields=fields, missing=missing)))
    return reply.done(Step(change=change))


def _on_correct_field(reply: StaffReply) -> Step:
    args = reply.action.arguments
    return _correct(reply, args.get("field", ""), args.get("value", ""))


def _on_set_agency(reply: StaffReply) -> Step:
    text = (reply.action.arguments.get("agency") or "").strip()
    agency = reply.p.find_agency(text, borough=reply.state.fields.borough) if text else None
    if agency is None:
        return reply.illegal(f"no agency in the directory is called {text or '(nothing given)'}")
    return _correct(reply, "other_agency", agency.name)


def _on_resend(reply: StaffReply) -> Step:
    """The current stage's mails again, to the same people, with the same deadline."""
    from escalations.routing.workflow.stages import _party_mails, current_plan

    state, p, now = reply.state, reply.p, reply.now
    plan = current_plan(state, p, now)
    if plan is None or not state.parties:
        return reply.illegal("the case is at no stage whose mails could be sent again")
    because = f"partnership staff sent this again: {reply.action.reason}"
    mails = _party_mails(state, p, plan, state.parties, because)
    again = tuple(replace(m, dedupe_key=f"{m.dedupe_key}:resent:{now.isoformat()}") for m in mails)
    return reply.done(Step(events=(EventRecord("stage_mails_resent", {"stage_index": state.stage_index,
                                                                      "to": [m.to[0] for m in again]},
                                               clause=plan.clause),), mails=again))


def _on_close(reply: StaffReply) -> Step:
    from escalations.routing.workflow.resolution import close

    a = reply.action
    return reply.done(close(reply.state, reply.p, reply.now, outcome=_outcome(a),
                            how=f"closed by partnership staff ({a.who}): {a.reason}", by=a.who))


def _hold(on: bool) -> StaffHandler:
    def handle(reply: StaffReply) -> Step:
        if reply.state.legal_hold == on:
            return reply.illegal("the case is already on legal hold" if on else "the case is not on legal hold")
        return reply.done(Step(change=CaseChange(legal_hold=on)))

    return handle


@dataclass(frozen=True)
class StaffActionSpec:
    action: Action
    #: The case statuses the action applies in (anything else is refused, recorded).
    statuses: frozenset[CaseStatus]
    handler: StaffHandler
    #: What the form asks for besides the reason (the argument names).
    arguments: tuple[str, ...] = ()


ACTIONS: Mapping[Action, StaffActionSpec] = {s.action: s for s in (
    StaffActionSpec(Action.NOTE, _ANY, _on_note, ("text",)),
    StaffActionSpec(Action.CORRECT_FIELD, _LIVE, _on_correct_field, ("field", "value")),
    StaffActionSpec(Action.SET_AGENCY, _LIVE, _on_set_agency, ("agency",)),
    StaffActionSpec(Action.CONFIRM_ADDRESS, _LIVE, _on_confirm_address, ("address",)),
    StaffActionSpec(Action.RESEND, _AT_STAGE, _on_resend),
    StaffActionSpec(Action.ESCALATE, _AT_STAGE, _command("ESCALATE", lambda a: a.reason)),
    StaffActionSpec(Action.RECORD_RESOLUTION, _AT_STAGE, _command("RESOLVED", _outcome), ("outcome",)),
    StaffActionSpec(Action.CLOSE, _LIVE, _on_close, ("outcome",)),
    StaffActionSpec(Action.WITHDRAW, _LIVE, _command("WITHDRAW", lambda a: a.reason)),
    StaffActionSpec(Action.SET_LEGAL_HOLD, _ANY, _hold(True)),
    StaffActionSpec(Action.LIFT_LEGAL_HOLD, _ANY, _hold(False)),
)}


def _refusal(state: CaseState, a: StaffAction) -> str | None:
    """Why the action cannot be taken, before its handler is asked (None: it may be)."""
    if not may_act(a.role):
        return f"a {a.role or 'signed-in user'} may read this case but not act on it"
    if not a.reason.strip():
        return "give a reason: it is kept on the case's record"
    try:
        spec = ACTIONS.get(Action(a.action))
    except ValueError:
        spec = None
    if spec is None:
        return f"{a.action or '(none)'} is not an action on a case"
    if state.status not in spec.statuses:
        return f"the case is {state.status}: this action does not apply"
    return None


def on_staff_action(state: CaseState, a: StaffAction, p: Partnership, now: datetime) -> Step:
    """The transition handler for :class:`StaffAction` (registered in ``transition.HANDLERS``)."""
    reply = _as_reply(state, a, p, now, None, a.reason)
    why = _refusal(state, a)
    if why is not None:
        return reply.illegal(why)
    return ACTIONS[Action(a.action)].handler(reply)
