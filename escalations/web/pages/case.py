"""The case page: the record in order — the referral as understood (the child's details behind an
audited "show personal details" request: a POST with the form's CSRF token, never a URL), each stage
(who was asked, when, the deadline and whether it was met), every mail sent with its body, every
reply (unverified ones flagged), notes, forms, and what happens next if nobody replies.

A case of another partnership, or not a practitioner's own, is answered as one that does not exist."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from escalations import views
from escalations.parsers.fields import ReferralFields
from escalations.routing.policy.model import Partnership
from escalations.routing.policy.plan import StagePlan, timeline
from escalations.routing.workflow.state import FIELD_LABELS, TERMINAL
from escalations.views.pages import CaseRecord, case_record
from escalations.web import audit
from escalations.web.auth import check_csrf, require_case
from escalations.web.context import application
from escalations.web.pages.common import CHILD_STATUS, flash, page
from escalations.web.pages.forms import forms_for
from escalations.web.pages.staff_forms import action_forms

#: Shown before the personal details are asked for: about the concern, not the child.
OPEN_FIELDS = ("child_status", "raised_by_name", "raised_by_role", "raised_by_agency", "raised_by_email",
               "other_agency", "other_practitioner", "actions_taken", "outcome_sought", "needed_by",
               "immediate_risk", "stage", "borough")
#: Shown only after the audited request.
PERSONAL = ("child_names", "child_dobs", "child_id", "concern")


def _value(v: Any) -> str:
    if v in (None, "", []):
        return "Not given"
    if isinstance(v, list):
        return ", ".join(str(x) for x in v)
    if isinstance(v, bool):
        return "Yes" if v else "No"
    return str(v)


def field_rows(fields: Mapping[str, Any], names: tuple[str, ...]) -> list[tuple[str, str]]:
    def shown(n: str) -> str:
        v = fields.get(n)
        return CHILD_STATUS.get(str(v), _value(v)) if n == "child_status" and v else _value(v)

    return [(FIELD_LABELS.get(n, n.replace("_", " ").capitalize()), shown(n)) for n in names]


def next_steps(record: CaseRecord, p: Partnership | None) -> list[StagePlan]:
    """The stages still to come if nobody replies (``policy timeline`` from the current stage)."""
    if p is None or record.row.status in TERMINAL or record.stage_index is None or record.stage_index < 0 \
            or record.stage_opened_at is None:
        return []
    f = ReferralFields.from_json(record.fields)
    try:
        return timeline(p, record.stage_opened_at, route_id=record.route, child_status=f.child_status,
                        needed_by=f.needed_by, raising_agency=f.raised_by_agency, other_agency=f.other_agency,
                        borough=f.borough, start_stage=record.stage_index)
    except (KeyError, IndexError, ValueError):
        return []


def load(request: Request) -> tuple[CaseRecord, Any]:
    """The case named in the path, if this person may see it (else 404, as for no such case)."""
    ref = request.path_params["ref"]
    app = application(request)
    record = case_record(app.store, ref, app.clock.now())
    user = require_case(request, ref, record.row.partnership if record else None)
    assert record is not None
    return record, user


def render_case(request: Request, record: CaseRecord, *, personal: bool = False,
                errors: list[tuple[str, str]] | None = None, open_action: str | None = None,
                status_code: int = 200) -> Response:
    app = application(request)
    p = views.case_policy(app, record.id)
    now: datetime = app.clock.now()
    return page(request, "pages/case.html.j2", "cases", {
        "case": record, "personal": personal, "open_rows": field_rows(record.fields, OPEN_FIELDS),
        "personal_rows": field_rows(record.fields, PERSONAL) if personal else [],
        "next_steps": next_steps(record, p), "now": now, "forms": forms_for(record, p),
        "actions": action_forms(record), "errors": errors or [], "open_action": open_action,
        "flash": flash(request)}, status_code=status_code)


def case_page(request: Request) -> Response:
    record, user = load(request)
    audit.record(request, user, "case.view", case_ref=record.row.reference)
    return render_case(request, record)


async def personal_details(request: Request) -> Response:
    record, user = load(request)
    check_csrf(request, await request.form())
    audit.record(request, user, "case.personal_details", case_ref=record.row.reference)
    return render_case(request, record, personal=True)


routes = [Route("/cases/{ref}", case_page, name="case"),
          Route("/cases/{ref}/personal-details", personal_details, methods=["POST"], name="case_personal")]
