"""The coordinator's action forms on the case page: each action of ``routing/workflow/staff.py``
with its words and the fields it asks for (a reason always). Which apply is the workflow's table."""

from __future__ import annotations

from dataclasses import dataclass

from escalations.routing.workflow.staff import ACTIONS, CORRECTABLE, Action
from escalations.routing.workflow.state import FIELD_LABELS
from escalations.views.pages import CaseRecord


@dataclass(frozen=True)
class Input:
    name: str
    label: str
    kind: str = "text"  # text | textarea | select | email
    hint: str = ""
    options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ActionForm:
    action: str
    title: str
    button: str
    inputs: tuple[Input, ...]
    warning: bool = False
    reason_label: str = "Reason (kept on the case's record)"


_FIELD_OPTIONS = tuple(sorted(((n, FIELD_LABELS.get(n, n)) for n in CORRECTABLE), key=lambda o: o[1]))

FORMS: tuple[ActionForm, ...] = (
    ActionForm(Action.NOTE, "Add a note", "Add note", (Input("text", "Note", "textarea"),),
               reason_label="Why it matters (kept with the note)"),
    ActionForm(Action.CORRECT_FIELD, "Correct a field of the referral", "Correct field", (
        Input("field", "Field", "select", options=_FIELD_OPTIONS),
        Input("value", "Correct value", "textarea", hint="For several children or dates, separate them with ;"))),
    ActionForm(Action.SET_AGENCY, "Set the other agency", "Set agency", (
        Input("agency", "Agency (its name in the directory)"),)),
    ActionForm(Action.CONFIRM_ADDRESS, "Confirm an address may be mailed", "Confirm address", (
        Input("address", "E-mail address", "email"),)),
    ActionForm(Action.RESEND, "Send this stage's mails again", "Resend", ()),
    ActionForm(Action.ESCALATE, "Escalate now", "Escalate to the next stage", (), warning=True),
    ActionForm(Action.RECORD_RESOLUTION, "Record a resolution", "Record resolution", (
        Input("outcome", "What was agreed", "textarea"),)),
    ActionForm(Action.CLOSE, "Close the case", "Close case", (Input("outcome", "Outcome", "textarea"),),
               warning=True),
    ActionForm(Action.WITHDRAW, "Withdraw the case", "Withdraw case", (), warning=True),
    ActionForm(Action.SET_LEGAL_HOLD, "Set a legal hold", "Set legal hold", ()),
    ActionForm(Action.LIFT_LEGAL_HOLD, "Lift the legal hold", "Lift legal hold", ()),
)

BY_ACTION = {f.action: f for f in FORMS}


def action_forms(record: CaseRecord) -> list[ActionForm]:
    """The forms whose action applies to the case now (the workflow refuses the others anyway)."""
    out = []
    for form in FORMS:
        spec = ACTIONS[Action(form.action)]
        if record.row.status not in spec.statuses:
            continue
        if form.action == Action.SET_LEGAL_HOLD and record.legal_hold:
            continue
        if form.action == Action.LIFT_LEGAL_HOLD and not record.legal_hold:
            continue
        out.append(form)
    return out
