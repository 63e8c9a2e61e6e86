"""Who is asking: the signed-in person of a request, the checks pages make, CSRF tokens.

The session is loaded once per request by :class:`escalations.web.sessions.SessionLoader` (a
database row, named by a random cookie); these functions only read what it found, so they are cheap
and safe to call from async and sync endpoints alike.

Pages use::

    user = require(request, Role.COORDINATOR, Role.ADMIN)   # anonymous: to sign-in; other role: 403
    user = require_case(request, ref, case_partnership)     # staff of the case's partnership, or its practitioner
    check_csrf(request, form)                                # every POST, before anything else
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from escalations.web.roles import STAFF, Role

__all__ = ["STAFF", "CaseNotFound", "Forbidden", "Role", "SignInRequired", "StaffUser", "can_see_case",
           "check_csrf", "csrf_token", "current_user", "require", "require_case"]

#: Where the request's session row is kept (set by the session loader).
SESSION_KEY = "escalations.web.session"
#: The form field every POST carries.
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class StaffUser:
    email: str
    role: Role
    #: The partnerships whose cases this person sees (a practitioner: the one of their case).
    partnerships: frozenset[str]
    #: A practitioner's cases (staff: empty; they see every case of their partnerships).
    case_refs: frozenset[str] = frozenset()

    @property
    def is_practitioner(self) -> bool:
        return self.role is Role.PRACTITIONER

    def can_act(self) -> bool:
        return self.role in (Role.COORDINATOR, Role.ADMIN)


class SignInRequired(Exception):
    """Nobody is signed in: the handler sends the browser to the sign-in page."""


class Forbidden(Exception):
    """Signed in, but not allowed (a role, a bad CSRF token): the handler shows the 403 page."""

    def __init__(self, reason: str = "forbidden") -> None:
        super().__init__(reason)
        self.reason = reason


class CaseNotFound(Exception):
    """A case this person may not see is answered exactly as one that does not exist (404)."""


def current_user(request: Request) -> StaffUser | None:
    row = request.scope.get(SESSION_KEY)
    if row is None:
        return None
    return StaffUser(email=row.email, role=Role(row.role), partnerships=frozenset(row.partnerships),
                     case_refs=frozenset(row.case_refs))


def require(request: Request, *roles: Role) -> StaffUser:
    """The signed-in person, if their role is one of ``roles`` (none given: any staff role)."""
    user = current_user(request)
    if user is None:
        raise SignInRequired()
    if user.role not in (roles or STAFF):
        raise Forbidden("role")
    return user


def can_see_case(user: StaffUser, case_ref: str, partnership: str) -> bool:
    if user.is_practitioner:
        return case_ref in user.case_refs
    return partnership in user.partnerships


def require_case(request: Request, case_ref: str, partnership: str | None, *roles: Role) -> StaffUser:
    """The signed-in person, if they may see this case (``partnership`` None: no such case) and
    their role is one of ``roles`` (none given: any role, practitioners included)."""
    user = current_user(request)
    if user is None:
        raise SignInRequired()
    if partnership is None or not can_see_case(user, case_ref, partnership):
        raise CaseNotFound()
    if roles and user.role not in roles:
        raise Forbidden("role")
    return user


def csrf_token(request: Request) -> str:
    """The token forms carry: the session's, or before sign-in the signed pre-session cookie's."""
    row = request.scope.get(SESSION_KEY)
    if row is not None:
        return str(row.csrf)
    pre: dict[str, Any] = request.session
    token = pre.get("csrf")
    if not isinstance(token, str):
        token = pre["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf(request: Request, form: Mapping[str, Any]) -> None:
    """Refuse (403) a form whose token is not this browser's."""
    given = form.get(CSRF_FIELD)
    row = request.scope.get(SESSION_KEY)
    expected = row.csrf if row is not None else request.session.get("csrf")
    if not isinstance(given, str) or not isinstance(expected, str) or not hmac.compare_digest(
            given.encode(), expected.encode()):
        raise Forbidden("csrf")
