"""Signing in with a local account (password, then a TOTP code; enrolment the first time) and
signing out. Failures count towards the address's lockout and the client's rate limit; only a
finished sign-in (both factors) clears them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from escalations.web import audit, links
from escalations.web.accounts import Identity
from escalations.web.auth import StaffUser, check_csrf, current_user
from escalations.web.context import WebContext, client_ip, web
from escalations.web.models import WebUser
from escalations.web.passwords import new_totp_secret, totp_qr_svg, totp_step, totp_uri, verify_password
from escalations.web.roles import Role
from escalations.web.sessions import end_session, start_session
from escalations.web.templating import render

log = structlog.get_logger("escalations.web.signin")

#: Between the right password and the code.
PENDING_SECONDS = 5 * 60
BAD_PASSWORD = "Enter a correct email address and password"
LOCKED = ("Too many failed attempts to sign in with this account. Wait {minutes} minutes and try again, "
          "or ask an administrator")
RATE_LIMITED = "Too many failed attempts to sign in from your network. Try again later"


@dataclass(frozen=True)
class Refusal:
    message: str
    status: int = 429


def sign_in_page(request: Request, errors: list[tuple[str, str]] | None = None, email: str = "",
                 status_code: int = 200) -> Response:
    if current_user(request) is not None and not errors:
        return RedirectResponse("/", status_code=303)
    return render(request, "sign_in.html.j2", {"errors": errors or [], "email": email}, status_code=status_code)


def refused(ctx: WebContext, email: str, ip: str | None) -> Refusal | None:
    """Locked out, or the client over its rate limit (checked before any password is)."""
    if ctx.accounts.ip_refused(ip):
        return Refusal(RATE_LIMITED)
    until = ctx.accounts.locked_until(email)
    if until is not None:
        minutes = max(1, int((until - ctx.accounts.clock.now()).total_seconds() // 60) + 1)
        return Refusal(LOCKED.format(minutes=minutes))
    return None


def _check_password(ctx: WebContext, email: str, password: str, ip: str | None) -> WebUser | Refusal:
    refusal = refused(ctx, email, ip)
    if refusal is not None:
        return refusal
    user = ctx.accounts.user(email) if email else None
    usable = user is not None and user.disabled_at is None and user.password_hash is not None
    if verify_password(user.password_hash if usable and user is not None else None, password) and user is not None:
        return user
    ctx.accounts.record_attempt(email or "(none)", ip, ok=False, kind="password")
    return Refusal(BAD_PASSWORD, 400)


async def sign_in_submit(request: Request) -> Response:
    ctx = web(request)
    form = await request.form()
    check_csrf(request, form)
    if not ctx.settings.local_accounts:
        raise HTTPException(404)
    email, password = str(form.get("email", "")).strip(), str(form.get("password", ""))
    result = await run_in_threadpool(_check_password, ctx, email, password, client_ip(request))
    if isinstance(result, Refusal):
        field = "email" if result.status == 400 else ""
        return sign_in_page(request, [(field, result.message)], email=email, status_code=result.status)
    request.session["pending"] = {"uid": result.id, "at": time.time()}
    return RedirectResponse("/sign-in/code" if result.totp_confirmed_at else "/sign-in/enrol", status_code=303)


def _pending(request: Request) -> WebUser | None:
    pending: Any = request.session.get("pending")
    if not isinstance(pending, dict) or time.time() - float(pending.get("at", 0)) > PENDING_SECONDS:
        return None
    user = web(request).accounts.user_by_id(int(pending["uid"]))
    return user if user is not None and user.disabled_at is None else None


def code_page(request: Request) -> Response:
    user = _pending(request)
    if user is None or user.totp_confirmed_at is None:
        return RedirectResponse("/sign-in", status_code=303)
    return render(request, "sign_in_code.html.j2", {"errors": []})


def _check_code(ctx: WebContext, user: WebUser, code: str, ip: str | None, *, enrolling: bool) -> Refusal | None:
    refusal = refused(ctx, user.email, ip)
    if refusal is not None:
        return refusal
    secret = ctx.accounts.totp_secret(user)
    step = totp_step(secret, code) if secret else None
    assert user.id is not None
    if step is not None and ctx.accounts.accept_totp_step(user.id, step, confirm=enrolling):
        ctx.accounts.record_attempt(user.email, ip, ok=True, kind="totp")
        return None
    ctx.accounts.record_attempt(user.email, ip, ok=False, kind="totp")
    return Refusal("Enter the 6-digit code your authenticator app shows now", 400)


async def code_submit(request: Request) -> Response:
    return await _second_factor(request, enrolling=False)


async def enrol_submit(request: Request) -> Response:
    return await _second_factor(request, enrolling=True)


async def _second_factor(request: Request, *, enrolling: bool) -> Response:
    ctx = web(request)
    form = await request.form()
    check_csrf(request, form)
    user = await run_in_threadpool(_pending, request)
    if user is None or (user.totp_confirmed_at is None) != enrolling:
        return RedirectResponse("/sign-in", status_code=303)
    refusal = await run_in_threadpool(_check_code, ctx, user, str(form.get("code", "")), client_ip(request),
                                      enrolling=enrolling)
    if refusal is not None:
        if enrolling:
            return await run_in_threadpool(_enrolment, request, user, [("code", refusal.message)], refusal.status)
        return render(request, "sign_in_code.html.j2", {"errors": [("code", refusal.message)]},
                      status_code=refusal.status)
    who = Identity(email=user.email, role=Role(user.role), partnerships=frozenset(user.partnerships),
                   user_id=user.id)
    return await run_in_threadpool(finish_sign_in, request, who, "local", "totp.enrolled" if enrolling else None)


def finish_sign_in(request: Request, who: Identity, method: str, extra_audit: str | None = None) -> Response:
    """The new session, the audit rows, and on to where the person was going."""
    nxt = request.session.get("next")
    target = nxt if isinstance(nxt, str) and nxt.startswith("/") and not nxt.startswith("//") else "/"
    response = RedirectResponse(target, status_code=303)
    start_session(request, response, who, method=method)
    user = StaffUser(who.email, who.role, who.partnerships, who.case_refs)
    if extra_audit:
        audit.record(request, user, extra_audit)
    audit.record(request, user, "sign_in", detail=method)
    log.info("web.sign_in", method=method, role=who.role.value)
    return response


def enrol_page(request: Request) -> Response:
    user = _pending(request)
    if user is None or user.totp_confirmed_at is not None:
        return RedirectResponse("/sign-in", status_code=303)
    return _enrolment(request, user, [], 200)


def _enrolment(request: Request, user: WebUser, errors: list[tuple[str, str]], status: int) -> Response:
    """A new secret each time the page is shown: one is shown once, and only a confirmed one counts."""
    assert user.id is not None
    secret = new_totp_secret()
    web(request).accounts.set_pending_totp(user.id, secret)
    uri = totp_uri(secret, user.email)
    grouped = " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))
    return render(request, "sign_in_enrol.html.j2", {"errors": errors, "secret": grouped, "qr": totp_qr_svg(uri)},
                  status_code=status)


async def sign_out(request: Request) -> Response:
    form = await request.form()
    check_csrf(request, form)
    user = current_user(request)
    response = RedirectResponse("/sign-in", status_code=303)
    if user is not None:
        await run_in_threadpool(audit.record, request, user, "sign_out")
    await run_in_threadpool(end_session, request, response)
    return response


routes: list[BaseRoute] = [
    Route("/sign-in", sign_in_page, methods=["GET"], name="sign_in"),
    Route("/sign-in", sign_in_submit, methods=["POST"]),
    Route("/sign-in/code", code_page, methods=["GET"]),
    Route("/sign-in/code", code_submit, methods=["POST"]),
    Route("/sign-in/enrol", enrol_page, methods=["GET"]),
    Route("/sign-in/enrol", enrol_submit, methods=["POST"]),
    Route("/sign-out", sign_out, methods=["POST"], name="sign_out"),
    *links.routes,
]
