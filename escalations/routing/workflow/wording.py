"""What a mail says to the person who gets it: what is asked of them, why they are told, and how
people on the case are named in it (by name and role, never by bare address).

The words come from the partnership's YAML (a stage's ``action``, its decision maker's ``asked``, the
immediate step's ``asked_action``, a notification's ``reason`` and ``expects``); this module picks the
ones that are true for each kind of recipient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from escalations.routing.workflow.audience import Audience
from escalations.routing.workflow.authority import acts_as

if TYPE_CHECKING:
    from escalations.routing.policy.model import Notification, Partnership
    from escalations.routing.policy.plan import StagePlan
    from escalations.routing.workflow.state import CaseState

__all__ = ["action_for", "display_name", "notification_context", "notification_for"]


def action_for(p: Partnership, plan: StagePlan, audience: Audience) -> tuple[str, str]:
    """(what is asked, clause) in words addressed to ``audience`` at ``plan``'s stage."""
    from escalations.routing.policy.plan import IMMEDIATE

    dm = plan.decision_maker
    if audience is Audience.DECISION_MAKER and dm is not None and dm.asked:
        return dm.asked, plan.clause
    ir = p.immediate_risk
    if plan.stage_index == IMMEDIATE and audience is Audience.ASKED and ir is not None and ir.asked_action:
        return ir.asked_action, plan.clause
    return plan.action, plan.clause


def _matches(notify: str, party: str) -> bool:
    if notify == party:
        return True
    side, _, role = notify.partition(".")
    return side == "both" and party.split(".", 1)[-1] == role


def notification_for(p: Partnership, plan: StagePlan, party: str) -> Notification | None:
    """The notification of ``plan``'s stage that tells ``party`` (one that applied to this case)."""
    if plan.stage_index < 0:
        return None
    stage = p.route(plan.route_id).stages[plan.stage_index]
    for note in stage.notifications:
        if note.clause in plan.notification_clauses and any(_matches(n, party) for n in note.notify):
            return note
    return None


def notification_context(p: Partnership, plan: StagePlan, party: str) -> dict[str, Any]:
    """Why a party told at this stage is told, and what (if anything) the policy expects of them."""
    note = notification_for(p, plan, party)
    return {
        "told_reason": note.reason if note else "",
        "told_clause": note.clause if note else "; ".join(plan.notification_clauses),
        "told_expects": note.expects if note else "",
        "responsible_for_child": bool(note and note.responsible_for_child),
    }


def display_name(state: CaseState, p: Partnership, address: str) -> str:
    """How ``address`` is named in a mail: "Name, role" from the case or the configuration."""
    a = address.lower()
    if state.raiser and a == state.raiser.lower():
        return _named(state.fields.raised_by_name or "", "the practitioner who raised the concern")
    for x in state.parties:
        if a in acts_as(x):
            name = x.deputy_name if x.using_deputy and x.deputy_name and a != x.email.lower() else x.name
            return _named(name or "", x.role_name)
    for role in p.roles.values():
        for c in role.contacts:
            if a == c.email.lower() or (c.deputy is not None and a == c.deputy.email.lower()):
                return _named(c.name if a == c.email.lower() else c.deputy.name if c.deputy else "", role.name)
    return "someone on the case"


def _named(name: str, role: str) -> str:
    return f"{name}, {role}" if name else role[:1].upper() + role[1:]
