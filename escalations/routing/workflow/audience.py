"""Who a case mail is written for: the kind of recipient decides what the mail says is asked of them
and which reply commands it offers (the command registry's ``offers``).

Pure: no I/O; the kinds line up with the :class:`~escalations.routing.workflow.authority.Authority`
a reply from that recipient would have, so the help in a mail never offers what would be refused.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from escalations.routing.workflow.authority import Authority, acts_as, staff_addresses

if TYPE_CHECKING:
    from escalations.routing.policy.model import Partnership
    from escalations.routing.policy.plan import StagePlan
    from escalations.routing.workflow.state import CaseState, Party

__all__ = ["AUTHORITY", "Audience", "StageKind", "audience_for_address", "audience_of"]


class Audience(StrEnum):
    RAISER = "raiser"  # the practitioner who raised the concern
    ASKED = "asked"  # asked to act at the stage (a practitioner, a manager, a safeguarding lead)
    DECISION_MAKER = "decision_maker"  # the stage's decision maker (ICSC, Chair, WSCB representative)
    NOTIFIED = "notified"  # told for information, or expected to act without changing the case
    STAFF = "staff"  # partnership staff (the coordinator role)


class StageKind(StrEnum):
    """Where the case stands for the recipient: on the ladder (a next stage exists), at its end, or
    waiting for missing information or routing before any stage can act."""

    LADDER = "ladder"
    FINAL = "final"
    WAITING = "waiting"


#: The authority a reply from each kind of recipient has (``authority.role_of``); the registry's
#: import check keeps the help within what that authority may do.
AUTHORITY: dict[Audience, Authority] = {
    Audience.RAISER: Authority.RAISER,
    Audience.ASKED: Authority.PARTY,
    Audience.DECISION_MAKER: Authority.DECISION_MAKER,
    Audience.NOTIFIED: Authority.NOTIFIED,
    Audience.STAFF: Authority.STAFF,
}


def is_decision_maker(party: Party, plan: StagePlan | None) -> bool:
    return bool(plan and plan.decision_maker and party.asked and party.party == plan.decision_maker.party)


def audience_of(party: Party, plan: StagePlan | None) -> Audience:
    """The kind of recipient ``party`` is at ``plan``'s stage."""
    if party.party == "raiser":
        return Audience.RAISER
    if not party.asked:
        return Audience.NOTIFIED
    if is_decision_maker(party, plan):
        return Audience.DECISION_MAKER
    return Audience.ASKED


def audience_for_address(state: CaseState, p: Partnership, plan: StagePlan | None, address: str) -> Audience:
    """The kind of recipient ``address`` is on the case (the raiser, a party, staff, or told)."""
    sender = address.lower()
    if state.raiser and sender == state.raiser.lower():
        return Audience.RAISER
    kinds = [audience_of(x, plan) for x in state.parties if sender in acts_as(x)]
    for kind in (Audience.DECISION_MAKER, Audience.ASKED):
        if kind in kinds:
            return kind
    if sender in staff_addresses(p):
        return Audience.STAFF
    return Audience.NOTIFIED if kinds else Audience.ASKED
