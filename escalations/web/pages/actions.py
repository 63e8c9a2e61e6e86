"""Coordinator actions: each a form with a reason and the CSRF token; coordinators and admins only;
the action becomes a :class:`StaffAction` event through the dispatcher (never a write from here), and
an audit row. Also the quarantine's replay and discard."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from escalations.cases.staff import discard_quarantined, perform, replay_quarantined
from escalations.routing.workflow.events import StaffAction
from escalations.routing.workflow.staff import Action
from escalations.web import audit
from escalations.web.auth import CaseNotFound, Role, check_csrf, require, require_case
from escalations.web.context import application
from escalations.web.pages.case import load, render_case
from escalations.web.pages.common import flash
from escalations.web.pages.staff_forms import BY_ACTION

ACTORS = (Role.COORDINATOR, Role.ADMIN)


async def case_action(request: Request) -> Response:
    record, _ = load(request)  # 404 before anything else for a case this person may not see
    ref = record.row.reference
    user = require_case(request, ref, record.row.partnership, *ACTORS)
    form = await request.form()
    check_csrf(request, form)
    name = request.path_params["action"]
    spec = BY_ACTION.get(name)
    if spec is None:
        raise CaseNotFound()
    reason = str(form.get("reason") or "").strip()
    arguments = {i.name: str(form.get(i.name) or "").strip() for i in spec.inputs}
    errors = [("reason-" + name, "Enter a reason")] if not reason else []
    errors += [(f"{i.name}-{name}", f"Enter {i.label.lower()}") for i in spec.inputs if not arguments[i.name]]
    if errors:
        return render_case(request, record, errors=errors, open_action=name, status_code=400)
    app = application(request)
    action = StaffAction(who=user.email, role=user.role.value, action=name, reason=reason, arguments=arguments)
    outcome = perform(app.store, app.workflow, ref, action, app.clock.now(), on_queued=app.wake_outbox.set)
    if outcome is None:
        raise CaseNotFound()
    audit.record(request, user, f"case.action.{name}", case_ref=ref,
                 detail=reason if outcome.applied else f"refused: {outcome.why}")
    if not outcome.applied:
        fresh, _ = load(request)
        return render_case(request, fresh, errors=[("", f"Not done: {outcome.why}")], open_action=name,
                           status_code=409)
    flash(request, f"Done: {spec.title.lower()}.")
    return RedirectResponse(f"/cases/{ref}", status_code=303)


async def quarantine_action(request: Request) -> Response:
    user = require(request, *ACTORS)
    form = await request.form()
    check_csrf(request, form)
    app = application(request)
    inbound_id = int(request.path_params["id"])
    row = app.store.get_inbound(inbound_id)
    owner = app.operations.partnership_of(row) if row is not None and app.operations is not None else \
        (row.partnership if row is not None else None)
    if row is None or owner not in user.partnerships:
        raise CaseNotFound()
    action = str(form.get("action") or "")
    reason = str(form.get("reason") or "").strip()
    if not reason:
        why: str | None = "enter a reason"
    elif action == Action.REPLAY_QUARANTINED:
        why = replay_quarantined(app.store, inbound_id, user.role.value)
        if why is None:
            app.wake_processor.set()
    elif action == Action.DISCARD_QUARANTINED:
        why = discard_quarantined(app.store, inbound_id, user.role.value, app.clock.now())
    else:
        why = "not a quarantine action"
    audit.record(request, user, f"quarantine.{action or 'none'}", detail=f"message {inbound_id}: "
                 + (reason if why is None else f"refused: {why}"))
    flash(request, f"Message #{inbound_id}: " + ("done." if why is None else f"not done: {why}."))
    return RedirectResponse("/#quarantine", status_code=303)


routes = [Route("/cases/{ref}/actions/{action}", case_action, methods=["POST"], name="case_action"),
          Route("/quarantine/{id:int}", quarantine_action, methods=["POST"], name="quarantine_action")]
