"""A verified reply being handled: the case, the reply, the policy and the time, with the record
every outcome starts with, and the one way to refuse it (recorded and answered, never applied)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from escalations.routing.workflow.mail import help_mail
from escalations.routing.workflow.state import CaseState, EventRecord, Step, with_record

if TYPE_CHECKING:
    from escalations.routing.policy.model import Partnership
    from escalations.routing.workflow.events import Replied

__all__ = ["Reply"]


@dataclass(frozen=True)
class Reply:
    state: CaseState
    event: Replied
    p: Partnership
    now: datetime

    @property
    def sender(self) -> str:
        return self.event.sender

    @property
    def record(self) -> EventRecord:
        r = self.event
        return EventRecord(f"reply_{(r.command or 'none').lower()}",
                           {"text": r.argument, "message_id": r.message_id, "authority": r.authority},
                           actor=r.sender)

    def done(self, step: Step) -> Step:
        """``step``, with the reply's record first."""
        return with_record(self.record, step)

    def recorded(self) -> Step:
        """Kept on the case, nothing else."""
        return Step(events=(self.record,))

    def illegal(self, why: str) -> Step:
        """Recorded, not applied; the sender is told why and what they can say."""
        return Step(events=(self.record, EventRecord("illegal_command", {"command": self.event.command,
                                                                         "why": why}, actor=self.sender)),
                    mails=(help_mail(self.state, self.p, self.sender, self.now, why),))
