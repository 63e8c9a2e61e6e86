"""Signing in with the council's OpenID Connect provider (Microsoft Entra ID, Google) through
authlib's Starlette client: the authorization code flow with PKCE, the id_token's signature, issuer,
audience and nonce checked by authlib against the provider's discovery document and keys.

Roles come from the claims named in ``web.oidc.claims`` (Entra ID app roles ``roles``, ``groups``)
mapped by ``web.oidc.role_claims``; the highest wins. Partnerships: ``web.oidc.partnerships`` plus
``web.oidc.partnership_claims``. A provider that sends no role claims (Google) can still sign people
in: an administrator gives the address a role with ``escalations users add EMAIL --role R --oidc``.

authlib (with joserfc, httpx and cryptography's JOSE parts: ~230 modules) is imported only when
OIDC is configured (:func:`client_for`) or a sign-in through it is under way."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from escalations.errors import SetupError
from escalations.settings import OidcSettings, WebSettings
from escalations.web.accounts import Accounts, Identity, normal_email
from escalations.web.context import web
from escalations.web.roles import STAFF, Role
from escalations.web.templating import render

log = structlog.get_logger("escalations.web.oidc")
CALLBACK = "/sign-in/oidc/callback"


def client_for(settings: WebSettings) -> Any:
    """authlib's registered client (None: OIDC not configured). Nothing is fetched until first use."""
    o = settings.oidc
    if o is None:
        return None
    try:
        secret = o.client_secret()
    except ValueError as exc:  # the named variable unset, the file unreadable
        setting = "ESCALATIONS_WEB__OIDC__CLIENT_SECRET_" + ("ENV" if o.client_secret_env else "FILE")
        raise SetupError(setting, f"{exc}: set it, or name where the app registration's secret is") from None
    from authlib.integrations.starlette_client import OAuth

    oauth = OAuth()
    return oauth.register(name="oidc", client_id=o.client_id, client_secret=secret or None,
                          server_metadata_url=o.issuer.rstrip("/") + "/.well-known/openid-configuration",
                          client_kwargs={"scope": o.scope, "code_challenge_method": "S256"})


@dataclass(frozen=True)
class Mapped:
    identity: Identity | None
    #: Why not (a fixed code for the log; the page says it in words).
    refusal: str | None = None


def _values(claims: Mapping[str, Any], names: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for name in names:
        value = claims.get(name)
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, list):
            found.update(str(v) for v in value)
    return found


def claims_email(claims: Mapping[str, Any], o: OidcSettings) -> str | None:
    email = claims.get("email") or claims.get("preferred_username")
    if not isinstance(email, str) or "@" not in email or claims.get("email_verified") is False:
        return None
    email = normal_email(email)
    if o.allowed_domains and email.rpartition("@")[2] not in {d.lower() for d in o.allowed_domains}:
        return None
    return email


def map_claims(claims: Mapping[str, Any], o: OidcSettings, accounts: Accounts) -> Mapped:
    """Who the provider says this is, as a session identity (pure but for the account row lookup)."""
    email = claims_email(claims, o)
    if email is None:
        return Mapped(None, "email")
    values = _values(claims, o.claims)
    roles = [o.role_claims[v] for v in values if v in o.role_claims and o.role_claims[v] in STAFF]
    partnerships = set(o.partnerships) | {o.partnership_claims[v] for v in values if v in o.partnership_claims}
    row = accounts.user(email)
    if row is not None and row.disabled_at is not None:
        return Mapped(None, "disabled")
    if not roles and row is not None:  # a role given by an administrator to this address
        roles, partnerships = [Role(row.role)], partnerships | set(row.partnerships)
    if not roles:
        return Mapped(None, "no_role")
    if not partnerships:
        return Mapped(None, "no_partnership")
    role = max(roles, key=lambda r: r.rank)
    user = accounts.upsert_oidc_user(email, role, sorted(partnerships))
    return Mapped(Identity(email=email, role=role, partnerships=frozenset(partnerships), user_id=user.id))


async def start(request: Request) -> Response:
    ctx = web(request)
    if ctx.oidc is None:
        return RedirectResponse("/sign-in", status_code=303)
    response: Response = await ctx.oidc.authorize_redirect(request, ctx.settings.base_url + CALLBACK)
    return response


async def callback(request: Request) -> Response:
    from authlib.integrations.starlette_client import OAuthError

    from escalations.web.signin import finish_sign_in

    ctx = web(request)
    if ctx.oidc is None or ctx.settings.oidc is None:
        return RedirectResponse("/sign-in", status_code=303)
    try:
        token = await ctx.oidc.authorize_access_token(request)
    except (OAuthError, ValueError) as exc:  # a stale or forged state, an invalid id_token
        log.warning("web.oidc.refused", reason=type(exc).__name__)
        return _refused(request, "The sign-in did not complete. Try again.")
    except Exception as exc:  # the provider unreachable or answering an error: its text is not for the log
        log.warning("web.oidc.provider_failed", reason=type(exc).__name__)
        return _refused(request, "The sign-in did not complete. Try again.")
    claims = token.get("userinfo") or {}
    mapped = await run_in_threadpool(map_claims, claims, ctx.settings.oidc, ctx.accounts)
    if mapped.identity is None:
        log.info("web.oidc.no_access", reason=mapped.refusal)
        return _refused(request, "Your account has not been given access to this service. Ask the partnership's "
                                 "business unit or an administrator.")
    return await run_in_threadpool(finish_sign_in, request, mapped.identity, "oidc")


def _refused(request: Request, line: str) -> Response:
    return render(request, "error.html.j2", {"heading": "You cannot sign in", "lines": [line]}, status_code=403)


routes: list[BaseRoute] = [
    Route("/sign-in/oidc", start, methods=["GET"], name="sign_in_oidc"),
    Route(CALLBACK, callback, methods=["GET"]),
]
