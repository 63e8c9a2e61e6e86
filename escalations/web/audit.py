"""The audit trail: who (the signed-in person), when, what (a fixed action code, a case reference,
words of detail), from where (the client address and the route template).

Every view of a page with personal data and every action is recorded::

    audit.record(request, user, "case.personal_details", case_ref=ref)

``detail`` is for the reader (a reason given, a field's name): never a child's details."""

from __future__ import annotations

from starlette.requests import Request

from escalations.web.auth import StaffUser
from escalations.web.context import client_ip, route_template, web


def record(request: Request, user: StaffUser, action: str, case_ref: str | None = None,
           detail: str | None = None) -> None:
    web(request).accounts.audit(user_email=user.email, role=user.role.value, action=action, case_ref=case_ref,
                                detail=detail, ip=client_ip(request), route=route_template(request))
