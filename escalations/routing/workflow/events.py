"""What the workflow reacts to: a case opened, a verified-or-not reply, a timer, automated mail."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from escalations.parsers.fields import ReferralFields
    from escalations.routing.workflow.authority import ReplyFacts

__all__ = ["Automated", "Opened", "Replied", "StaffAction", "TimerFired", "WorkflowEvent"]


@dataclass(frozen=True)
class Opened:
    """A referral became a case (complete, or incomplete but urgent)."""


@dataclass(frozen=True)
class Replied:
    sender: str
    command: str | None
    argument: str
    message_id: str | None
    #: raiser | party | staff | decision_maker | notified (an Authority value)
    authority: str
    side: str | None
    info: ReferralFields | None = None
    #: What the processor found out about the reply; with it, transition decides who may act.
    facts: ReplyFacts | None = None


@dataclass(frozen=True)
class TimerFired:
    kind: str  # a TimerKind value
    stage_index: int | None
    #: The tick runs after the stage's deadline (the service was down): a "deadline tomorrow"
    #: reminder would be wrong, so it is recorded and not sent.
    late: bool = False


@dataclass(frozen=True)
class Automated:
    kind: str  # auto_reply | bounce
    address: str
    permanent: bool = False
    #: It answers one of our mails to ``address`` (the reply token in the Message-ID it refers to
    #: verified for that address). Only then may it hand the address's part to a deputy.
    verified: bool = True


@dataclass(frozen=True)
class StaffAction:
    """A signed-in member of staff acting on a case from the web interface (handled in ``staff.py``).

    ``role`` is the web role (viewer, coordinator, admin, practitioner): whether it may act is decided
    by ``transition``, not by the page that sent it."""

    who: str
    role: str
    action: str  # a staff.Action value
    reason: str
    arguments: Mapping[str, str] = field(default_factory=dict)


WorkflowEvent = Opened | Replied | TimerFired | Automated | StaffAction
