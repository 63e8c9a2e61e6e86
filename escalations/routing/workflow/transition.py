"""``transition(state, event, policy, now) -> Step``: every legal move of a case, pure (ARCHITECTURE:
"Decide, don't do"). A table from the event's type to its handler; illegal events are recorded and
answered, never applied."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from escalations.routing.workflow.authority import authority
from escalations.routing.workflow.commands import on_verified_reply
from escalations.routing.workflow.deputies import on_automated
from escalations.routing.workflow.events import (
    Automated,
    Opened,
    Replied,
    StaffAction,
    TimerFired,
    WorkflowEvent,
)
from escalations.routing.workflow.opening import initial_step
from escalations.routing.workflow.refusals import refused
from escalations.routing.workflow.reply import Reply
from escalations.routing.workflow.staff import on_staff_action
from escalations.routing.workflow.state import CaseState, Step
from escalations.routing.workflow.timers import on_timer

if TYPE_CHECKING:
    from escalations.routing.policy.model import Partnership

__all__ = ["HANDLERS", "transition"]


def _on_opened(state: CaseState, event: Opened, p: Partnership, now: datetime) -> Step:
    return initial_step(state, p, now, "a referral was received")


def _on_reply(state: CaseState, r: Replied, p: Partnership, now: datetime) -> Step:
    """Who may act is decided first (``authority``); a refused reply changes nothing."""
    if r.facts is not None:
        verdict = authority(state, r.facts, p, r.command)
        if not verdict.allowed:
            return refused(state, r, r.facts, verdict, p, now)
        assert verdict.authority is not None
        r = replace(r, authority=verdict.authority.value, side=verdict.side)
    return on_verified_reply(Reply(state, r, p, now))


#: Each event type's handler, (state, event, partnership, now) -> Step.
HANDLERS: Mapping[type, Callable[[CaseState, Any, Partnership, datetime], Step]] = {
    Opened: _on_opened,
    Replied: _on_reply,
    TimerFired: on_timer,
    Automated: on_automated,
    StaffAction: on_staff_action,
}


def transition(state: CaseState, event: WorkflowEvent, p: Partnership, now: datetime) -> Step:
    """Every legal move of a case. Illegal events are recorded and answered, never applied."""
    return HANDLERS[type(event)](state, event, p, now)
