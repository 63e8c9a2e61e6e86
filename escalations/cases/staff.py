"""Performing what staff do in the web interface: a :class:`StaffAction` handed to the dispatcher
(``Workflow.handle``, the one place that performs a Step) in one transaction, and the quarantine's
replay and discard. The web layer calls these; it never writes a case itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlmodel import select

from escalations.cases.models import Case, InboundMessage
from escalations.cases.store import Store
from escalations.cases.workflow import Workflow
from escalations.routing.workflow.events import StaffAction
from escalations.routing.workflow.staff import quarantine_refusal

log = structlog.get_logger("escalations.staff")

__all__ = ["StaffOutcome", "discard_quarantined", "perform", "replay_quarantined"]


@dataclass(frozen=True)
class StaffOutcome:
    #: The action changed or recorded something beyond its own refusal.
    applied: bool
    #: Why it was refused (shown to the member of staff), None when applied.
    why: str | None
    events: tuple[str, ...]
    mails: int


def perform(store: Store, workflow: Workflow, reference: str, action: StaffAction, now: datetime,
            on_queued: Callable[[], None] | None = None) -> StaffOutcome | None:
    """The action on case ``reference`` through the dispatcher; None when there is no such case."""
    with store.session() as s:
        case = s.exec(select(Case).where(Case.reference == reference).with_for_update()).first()
        if case is None:
            return None
        step = workflow.handle(s, case, action, now)
        s.commit()
    refused = next((e for e in step.events if e.kind == "staff_action_refused"), None)
    log.info("staff.action", case=reference, action=action.action, refused=refused is not None,
             mails=len(step.mails))
    if step.mails and on_queued is not None:
        on_queued()
    return StaffOutcome(applied=refused is None, why=str(refused.detail.get("why")) if refused else None,
                        events=tuple(e.kind for e in step.events), mails=len(step.mails))


def replay_quarantined(store: Store, inbound_id: int, role: str) -> str | None:
    """Put a quarantined message back to be processed again; why not, or None when done."""
    why = quarantine_refusal(role, "replay_quarantined")
    if why is not None:
        return why
    if not store.release_for_replay(inbound_id):
        return "that message is not in quarantine"
    log.info("quarantine.replayed", inbound_id=inbound_id)
    return None


def discard_quarantined(store: Store, inbound_id: int, role: str, now: datetime) -> str | None:
    """Mark a quarantined message as dealt with by a person (its raw bytes are kept: nothing is lost)."""
    why = quarantine_refusal(role, "discard_quarantined")
    if why is not None:
        return why
    with store.session() as s:
        row = s.get(InboundMessage, inbound_id)
        if row is None or row.status != "quarantined":
            return "that message is not in quarantine"
        row.status, row.processed_at = "discarded", now
        s.commit()
    log.info("quarantine.discarded", inbound_id=inbound_id)
    return None
