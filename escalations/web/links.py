"""Practitioners named on a case sign in with a one-time link mailed (through the outbox) to the
address the case holds for them; the session sees that case only.

A practitioner asks at /sign-in/practitioner (case reference + their address; the answer is the
same whether or not the address is on the case), or a coordinator's page calls
:func:`send_sign_in_link`. Opening the link shows a button: mail scanners that fetch links do not
spend it; pressing the button does, once, before it expires."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from escalations.mailer.outbox import enqueue
from escalations.routing.redact import Redactor
from escalations.routing.workflow.state import CASE_MAIL, OutgoingMail
from escalations.web.accounts import Identity, digest, normal_email
from escalations.web.auth import check_csrf
from escalations.web.context import WebContext, client_ip, web
from escalations.web.roles import Role
from escalations.web.templating import render

if TYPE_CHECKING:
    from escalations.cases.models import Case

log = structlog.get_logger("escalations.web.links")
TEMPLATE = "web/sign_in_link.txt.j2"


def case_addresses(case: Case) -> set[str]:
    """Every address the case holds for a person on it (parties, their deputies, who raised it)."""
    found = {case.raised_by_email or ""}
    for party in case.parties:
        found.update(str(party.get(k) or "") for k in ("email", "deputy_email"))
    return {normal_email(a) for a in found if "@" in a}


def send_sign_in_link(ctx: WebContext, case: Case, email: str) -> bool:
    """Queue a sign-in link to ``email`` if the case holds that address (False: it does not)."""
    email = normal_email(email)
    if email not in case_addresses(case):
        return False
    app = ctx.application
    partnership = app.config.partnerships.get(case.partnership)
    if partnership is None:
        return False
    with app.store.session() as s:
        token = ctx.accounts.create_link(s, email, case.reference)
        mail = OutgoingMail(template=TEMPLATE, to=(email,), subject=f"Your sign-in link for case {case.reference}",
                            context={"reference": case.reference, "partnership": partnership.name,
                                     "link": f"{ctx.settings.base_url}/sign-in/link/{token}",
                                     "minutes": int(ctx.settings.sign_in_link_minutes)},
                            dedupe_key=f"web-sign-in-link:{digest(token)[:32]}", reason="web.sign_in_link",
                            priority=CASE_MAIL)
        enqueue(s, mail, renderer=app.renderer, redactor=Redactor.identity(), from_address=partnership.primary_mailbox,
                from_name=partnership.name, case_id=case.id, now=ctx.accounts.clock.now(),
                message_id_domain=app.settings.message_id_domain)
        s.commit()
    app.wake_outbox.set()
    log.info("web.sign_in_link.sent", case=case.reference)
    return True


def request_page(request: Request) -> Response:
    return render(request, "sign_in_practitioner.html.j2", {"errors": [], "sent": False})


def _request_link(ctx: WebContext, reference: str, email: str, ip: str | None) -> None:
    if ctx.accounts.ip_refused(ip) or ctx.accounts.locked_until(email) is not None:
        return
    # Each request counts like a failed sign-in: a flood of links to one address stops at the lockout.
    ctx.accounts.record_attempt(email, ip, ok=False, kind="link")
    case = ctx.application.store.case_by_reference(reference)
    if case is not None and send_sign_in_link(ctx, case, email):
        ctx.accounts.audit(user_email=email, role=Role.PRACTITIONER.value, action="sign_in_link.sent",
                           case_ref=case.reference, ip=ip, route="/sign-in/practitioner")


async def request_submit(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form)
    reference = str(form.get("reference", "")).strip().upper()
    email = str(form.get("email", "")).strip()
    errors = [(f, m) for f, m in (("reference", "Enter the case reference, for example CH-2026-0001"),
                                  ("email", "Enter your email address"))
              if not (reference if f == "reference" else "@" in email)]
    if errors:
        return render(request, "sign_in_practitioner.html.j2", {"errors": errors, "sent": False}, status_code=400)
    await run_in_threadpool(_request_link, web(request), reference, email, client_ip(request))
    return render(request, "sign_in_practitioner.html.j2", {"errors": [], "sent": True})


def link_page(request: Request) -> Response:
    token = request.path_params["token"]
    if not web(request).accounts.link_usable(token):
        return render(request, "sign_in_link.html.j2", {"token": None}, status_code=410)
    return render(request, "sign_in_link.html.j2", {"token": token})


def link_submit_sync(request: Request, token: str) -> Response:
    from escalations.web.signin import finish_sign_in

    ctx = web(request)
    link = ctx.accounts.use_link(token)
    case = ctx.application.store.case_by_reference(link.case_ref) if link is not None else None
    if link is None or case is None:
        return render(request, "sign_in_link.html.j2", {"token": None}, status_code=410)
    ctx.accounts.record_attempt(link.email, client_ip(request), ok=True, kind="link")
    request.session["next"] = f"/cases/{case.reference}"
    who = Identity(email=link.email, role=Role.PRACTITIONER, partnerships=frozenset({case.partnership}),
                   case_refs=frozenset({case.reference}))
    return finish_sign_in(request, who, "link")


async def link_submit(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form)
    token = form.get("token")
    if not isinstance(token, str) or not token:
        raise HTTPException(400)
    return await run_in_threadpool(link_submit_sync, request, token)


routes: list[BaseRoute] = [
    Route("/sign-in/practitioner", request_page, methods=["GET"]),
    Route("/sign-in/practitioner", request_submit, methods=["POST"]),
    Route("/sign-in/link/{token}", link_page, methods=["GET"]),
    Route("/sign-in/link", link_submit, methods=["POST"]),
]
