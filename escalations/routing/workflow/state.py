"""The values the workflow reads and writes: a case's state, its parties, and a :class:`Step` (what
one transition does). Frozen values only; statuses, timer kinds and sides are ``StrEnum``s, so the
database and the templates see the same strings as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from escalations.parsers.fields import ReferralFields

__all__ = ["ACK_TOKEN_STAGE", "CASE_MAIL", "FIELD_LABELS", "NOTICE_MAIL", "TERMINAL", "CaseChange", "CaseState",
           "CaseStatus", "EventRecord", "Notice", "OutgoingMail", "Party", "PendingResolution", "Side", "Step",
           "TimerKind", "TimerSpec"]

#: Outbox priorities: case mail always goes before notices about mail that was not applied.
CASE_MAIL = 0
NOTICE_MAIL = 1

#: The stage index the acknowledgement's reply token is issued for (before any stage opens).
ACK_TOKEN_STAGE = -1


class CaseStatus(StrEnum):
    AWAITING_INFORMATION = "awaiting_information"
    OPEN = "open"
    NEEDS_ROUTING = "needs_routing"
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    CLOSED = "closed"
    WITHDRAWN = "withdrawn"


#: A case in these never changes status again.
TERMINAL = frozenset({CaseStatus.CLOSED, CaseStatus.WITHDRAWN})


class TimerKind(StrEnum):
    REMIND_BEFORE = "remind_before"
    REMIND_DUE = "remind_due"
    ESCALATE = "escalate"
    ROUTING_REMINDER = "routing_reminder"
    CONFIRM_REMINDER = "confirm_reminder"
    CONFIRM_CLOSE = "confirm_close"


class Side(StrEnum):
    RAISING = "raising"
    RECEIVING = "receiving"
    PARTNERSHIP = "partnership"
    NOTIFIED = "notified"


#: How required fields are named to a practitioner (and in the acknowledgement).
FIELD_LABELS: Mapping[str, str] = {
    "child_names": "Name of child(ren)",
    "child_dobs": "Date of birth",
    "child_id": "Mosaic ID no.",
    "child_status": "Child status (CP plan / looked after / child in need / none)",
    "raised_by_name": "Name of referrer",
    "raised_by_role": "Role of referrer",
    "raised_by_agency": "Referrer's agency",
    "raised_by_email": "Referrer's email",
    "other_agency": "Agency with which there is a concern",
    "other_practitioner": "Name of practitioner with whom there is a concern",
    "concern": "Brief description of nature of concern",
    "actions_taken": "Action taken to resolve the issue",
    "outcome_sought": "Outcome sought",
    "needed_by": "Timescale that protects the child (date)",
    "immediate_risk": "Is the child at immediate risk? (yes/no)",
    "stage": "Stage already reached (1-4)",
    "borough": "Borough",
}


@dataclass(frozen=True)
class OutgoingMail:
    """A message the dispatcher must queue: template + recipients + context, and why."""

    template: str
    to: tuple[str, ...]
    subject: str
    context: Mapping[str, Any]
    #: Unique per logical send: a second Decision asking for the same key queues nothing.
    dedupe_key: str
    reason: str
    cc: tuple[str, ...] = ()
    in_reply_to: str | None = None
    #: RFC 3834: "auto-replied" for answers to a message, "auto-generated" otherwise.
    auto_submitted: str = "auto-generated"
    #: Sign a reply token for the recipient at this stage index (Reply-To, Message-ID, footer).
    token_stage: int | None = None
    #: Lower is sent first (CASE_MAIL, NOTICE_MAIL).
    priority: int = CASE_MAIL


@dataclass(frozen=True)
class EventRecord:
    kind: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    clause: str | None = None
    actor: str | None = None


@dataclass(frozen=True)
class Notice:
    """Something the coordinator should know but need not act on at once (mail that was not
    applied, an address to confirm later): gathered into one digest an hour, never a mail each."""

    kind: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Party:
    """Someone involved in the case at its current stage (from the directory or the referral)."""

    email: str
    name: str
    role_name: str
    party: str  # e.g. "raising.line_manager", "partnership.coordinator", "raiser"
    side: str  # a Side value
    asked: bool = True
    deputy_email: str | None = None
    deputy_name: str | None = None
    using_deputy: bool = False
    #: Asked by the immediate-risk step that runs alongside the stage (not reminded of its deadline).
    immediate: bool = False

    @property
    def active_email(self) -> str:
        return self.deputy_email if self.using_deputy and self.deputy_email else self.email

    @property
    def active_name(self) -> str:
        return (self.deputy_name or self.deputy_email or "") if self.using_deputy else self.name

    def to_json(self) -> dict[str, Any]:
        return {"email": self.email, "name": self.name, "role_name": self.role_name, "party": self.party,
                "side": self.side, "asked": self.asked, "deputy_email": self.deputy_email,
                "deputy_name": self.deputy_name, "using_deputy": self.using_deputy, "immediate": self.immediate}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Party:
        return cls(email=str(d["email"]), name=str(d.get("name") or ""), role_name=str(d.get("role_name") or ""),
                   party=str(d.get("party") or ""), side=str(d.get("side") or ""), asked=bool(d.get("asked", True)),
                   deputy_email=d.get("deputy_email"), deputy_name=d.get("deputy_name"),
                   using_deputy=bool(d.get("using_deputy", False)), immediate=bool(d.get("immediate", False)))


@dataclass(frozen=True)
class PendingResolution:
    """A RESOLVED waiting for the other side's written confirmation (stored as the case's JSON
    ``resolution``; an empty object there means none)."""

    by: str
    side: str | None
    outcome: str
    at: str
    stage_index: int | None
    #: The addresses asked to confirm (whoever acts for them now may).
    confirm_by: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"by": self.by, "side": self.side, "outcome": self.outcome, "at": self.at,
                "stage_index": self.stage_index, "confirm_by": list(self.confirm_by)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PendingResolution | None:
        if not d:
            return None
        return cls(by=str(d.get("by") or ""), side=d.get("side"), outcome=str(d.get("outcome") or ""),
                   at=str(d.get("at") or ""), stage_index=d.get("stage_index"),
                   confirm_by=tuple(str(a) for a in d.get("confirm_by", ())))


@dataclass(frozen=True)
class CaseState:
    id: int
    reference: str
    partnership: str
    status: CaseStatus
    route: str | None
    stage_index: int | None
    opened_at: datetime
    stage_opened_at: datetime | None
    due_at: datetime | None
    immediate_risk: bool
    fields: ReferralFields
    missing: tuple[str, ...]
    raiser: str | None
    parties: tuple[Party, ...] = ()
    resolution: PendingResolution | None = None
    #: Addresses from the referral's text that the coordinator confirmed may be mailed.
    confirmed_addresses: tuple[str, ...] = ()
    #: Kept past its retention period until staff lift the hold.
    legal_hold: bool = False

    def party_for(self, address: str) -> Party | None:
        a = address.lower()
        return next((p for p in self.parties if a in (p.email.lower(), (p.deputy_email or "").lower())), None)


@dataclass(frozen=True)
class TimerSpec:
    kind: TimerKind
    due_at: datetime
    stage_index: int | None


@dataclass(frozen=True)
class CaseChange:
    """Column updates for the case row (None: unchanged)."""

    status: CaseStatus | None = None
    route: str | None = None
    stage_index: int | None = None
    stage_number: int | None = None
    stage_opened_at: datetime | None = None
    due_at: datetime | None = None
    clear_due: bool = False
    parties: tuple[Party, ...] | None = None
    resolution: PendingResolution | None = None
    #: The pending resolution is gone (the case closed or moved to another stage).
    clear_resolution: bool = False
    fields: ReferralFields | None = None
    missing: tuple[str, ...] | None = None
    immediate_risk: bool | None = None
    raising_agency: str | None = None
    other_agency: str | None = None
    closed_at: datetime | None = None
    confirmed_addresses: tuple[str, ...] | None = None
    legal_hold: bool | None = None


@dataclass(frozen=True)
class Step:
    """What one transition does: case changes, history, mail, timers (applied in one transaction)."""

    change: CaseChange = field(default_factory=CaseChange)
    events: tuple[EventRecord, ...] = ()
    mails: tuple[OutgoingMail, ...] = ()
    timers: tuple[TimerSpec, ...] = ()
    cancel_timers: bool = False
    notices: tuple[Notice, ...] = ()


def with_record(record: EventRecord, step: Step) -> Step:
    """``step``, with the reply's own record first in its history."""
    return replace(step, events=(record, *step.events))
