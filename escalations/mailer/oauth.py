"""OAuth2 access tokens for IMAP and SMTP sign-in (SASL XOAUTH2), one provider per mailbox or relay.

Microsoft 365 and Google Workspace no longer take passwords over IMAP/SMTP. Every method here ends
in the same thing, an :class:`AccessToken`, behind one small protocol (:class:`TokenProvider`):

``oauth2_m365``
    App-only client credentials (a client secret or a certificate) through msal's
    ``ConfidentialClientApplication.acquire_token_for_client``, scope
    ``https://outlook.office365.com/.default``. ``authority`` may name another identity host
    (sovereign clouds, or the loopback endpoint of the tests: msal then skips its Microsoft-only
    instance discovery but still does OIDC discovery, over https).
``oauth2_google_service_account``
    A service account with domain-wide delegation: an RFC 7523 JWT, signed with the account's key
    and naming the mailbox as ``sub``, exchanged at the token endpoint (google-auth).
``oauth2_refresh_token``
    An RFC 6749 section 6 refresh grant; a rotated refresh token is written back to its file
    (mode 0600) before the new access token is used, so a restart never holds a spent one.

Tokens are cached and fetched again ``REFRESH_MARGIN`` before expiry (half the lifetime for
short-lived tokens), or at once with ``token(force_refresh=True)`` after the server refused one.
A :class:`TokenError` carries a short ``code`` (for logs) and a ``hint`` in words (for the
``mailbox test`` command); neither ever contains a secret or a token.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

import structlog

from escalations.settings import AuthMethod, AuthSettings, read_secret

if TYPE_CHECKING:
    import requests

#: Fetch a new token this long before the cached one expires.
REFRESH_MARGIN = timedelta(minutes=5)
#: Warn about a client secret or certificate expiring from this many days ahead.
SECRET_WARNING_DAYS = 30
HTTP_TIMEOUT_SECONDS = 30.0

log = structlog.get_logger("escalations.oauth")


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    expires_at: datetime


class TokenProvider(Protocol):
    def token(self, force_refresh: bool = False) -> AccessToken: ...


class TokenError(Exception):
    """No token could be had. ``code`` is safe to log; ``hint`` says what to do, in words."""

    def __init__(self, code: str, hint: str) -> None:
        super().__init__(f"{code}: {hint}")
        self.code = code
        self.hint = hint


def xoauth2_string(username: str, token: str) -> str:
    """The SASL XOAUTH2 initial client response (before base64), as Google and Microsoft define it."""
    return f"user={username}\x01auth=Bearer {token}\x01\x01"


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT access token, unverified (diagnostics only); {} if it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


# ---- caching -----------------------------------------------------------------------------------


class CachedTokenProvider:
    """Caches what ``fetch(force_refresh)`` returns; thread-safe (the watcher and a CLI check may share one)."""

    def __init__(self, fetch: Callable[[bool], AccessToken], *, account: str,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._fetch = fetch
        self.account = account
        self._now = now
        self._lock = threading.Lock()
        self._cached: AccessToken | None = None
        self._refresh_at: datetime | None = None

    def token(self, force_refresh: bool = False) -> AccessToken:
        with self._lock:
            now = self._now()
            if (not force_refresh and self._cached is not None and self._refresh_at is not None
                    and now < self._refresh_at):
                return self._cached
            fresh = self._fetch(force_refresh)
            lifetime = max(fresh.expires_at - now, timedelta(0))
            self._cached = fresh
            self._refresh_at = now + max(lifetime - min(REFRESH_MARGIN, lifetime / 2), timedelta(0))
            log.info("oauth.token_obtained", account=self.account, forced=force_refresh,
                     expires_in=int(lifetime.total_seconds()))
            return fresh


def warn_if_secret_expiring(auth: AuthSettings, account: str, today: date) -> bool:
    """Log a warning (the account name and days left only) from SECRET_WARNING_DAYS before
    ``secret_expires_on``: an expired secret otherwise shows only as mail that stopped. The service
    calls this daily for every mailbox and the relay."""
    expires = auth.secret_expires_on
    if expires is None:
        return False
    days = (expires - today).days
    if days > SECRET_WARNING_DAYS:
        return False
    log.warning("oauth.secret_expired" if days < 0 else "oauth.secret_expiring", account=account, days_left=days)
    return True


def secret_expiry_note(auth: AuthSettings, today: date) -> str | None:
    """Words about a secret that expires within the warning window (for status output)."""
    if auth.secret_expires_on is None:
        return None
    days = (auth.secret_expires_on - today).days
    if days < 0:
        return f"the client secret/certificate expired on {auth.secret_expires_on.isoformat()}"
    if days <= SECRET_WARNING_DAYS:
        return f"the client secret/certificate expires on {auth.secret_expires_on.isoformat()} ({days} days)"
    return None


# ---- transport errors (shared) -------------------------------------------------------------------


def _requests() -> ModuleType:
    """requests, imported when a token is first fetched: a service whose mailboxes sign in with a
    password never loads it (about 8 MiB)."""
    import requests

    return requests


def _transport_error(exc: BaseException, endpoint: str) -> TokenError:
    text = str(exc)
    host = urlparse(endpoint).netloc or endpoint
    errors = _requests().exceptions
    if isinstance(exc, errors.SSLError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return TokenError("token_endpoint_untrusted",
                          f"the certificate of {host} is not trusted (an inspecting proxy? set auth.ca_file)")
    if isinstance(exc, errors.Timeout):
        return TokenError("token_endpoint_timeout", f"{host} did not answer in time")
    return TokenError("token_endpoint_unreachable", f"cannot reach {host} ({type(exc).__name__})")


@functools.cache
def _session_class() -> type[requests.Session]:
    session_base: type[requests.Session] = _requests().Session

    class _Session(session_base):  # type: ignore[valid-type,misc]
        """requests lets REQUESTS_CA_BUNDLE beat ``Session.verify``: a configured ``ca_file`` must win.
        Proxy variables are still honoured (a council's egress proxy)."""

        def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any,
                                       cert: Any) -> Any:
            merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if isinstance(self.verify, str) and (verify is None or verify is True):
                merged["verify"] = self.verify
            return merged

        def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
            kwargs.setdefault("timeout", HTTP_TIMEOUT_SECONDS)
            response: requests.Response = super().request(method, url, *args, **kwargs)
            return response

    return _Session


def _session(auth: AuthSettings) -> requests.Session:
    session = _session_class()()
    session.verify = str(auth.ca_file) if auth.ca_file else True
    return session


def _expires(seconds: object, now: datetime) -> datetime:
    try:
        return now + timedelta(seconds=int(str(seconds)))
    except ValueError:
        return now + timedelta(minutes=5)  # the endpoint did not say: assume short-lived


# ---- Microsoft 365 app-only (msal) ---------------------------------------------------------------

#: Entra error codes (AADSTS…) that have a plain explanation.
_ENTRA_HINTS: dict[int, tuple[str, str]] = {
    7000215: ("invalid_client_secret", "the client secret was refused: it is wrong, or belongs to another app"),
    7000222: ("client_secret_expired", "the client secret has expired: create a new one in Entra"),
    700016: ("app_not_in_tenant", "no app with this client_id in this tenant (wrong client_id or tenant_id, "
                                  "or the app is not consented in the tenant)"),
    90002: ("tenant_not_found", "the tenant_id is not a known tenant"),
    900023: ("tenant_not_found", "the tenant_id is not a valid tenant id or domain"),
    700027: ("certificate_refused", "the certificate was refused: upload it to the app registration "
                                    "(or check the thumbprint)"),
    7000112: ("app_disabled", "the application is disabled in the tenant"),
    500011: ("resource_not_in_tenant", "Exchange Online is not available in this tenant"),
}


class M365AppTokens:
    """Client-credentials tokens from the Microsoft identity platform, through msal."""

    def __init__(self, auth: AuthSettings) -> None:
        self.auth = auth
        self._app: Any = None

    def _credential(self) -> str | dict[str, str]:
        a = self.auth
        if a.certificate_file is None:
            return read_secret(a.client_secret_env, a.client_secret_file, "client secret")
        try:
            pem = a.certificate_file.read_text(encoding="ascii")
        except (OSError, ValueError) as exc:
            raise TokenError("certificate_unreadable", f"cannot read {a.certificate_file}") from exc
        key = _pem_block(pem, "PRIVATE KEY")
        if key is None:
            raise TokenError("certificate_unreadable", f"{a.certificate_file} holds no private key")
        if a.thumbprint:
            return {"private_key": key, "thumbprint": a.thumbprint.replace(":", "")}
        cert = _pem_block(pem, "CERTIFICATE")
        if cert is None:
            raise TokenError("certificate_unreadable",
                             f"{a.certificate_file} holds no certificate: add it or give auth.thumbprint")
        return {"private_key": key, "public_certificate": cert}

    def _application(self) -> Any:
        if self._app is not None:
            return self._app
        import msal

        a = self.auth
        authority = f"{a.authority.rstrip('/')}/{a.tenant_id}"
        microsoft_host = urlparse(a.authority).hostname in msal.authority.WELL_KNOWN_AUTHORITY_HOSTS
        try:
            credential = self._credential()
        except ValueError as exc:
            raise TokenError("secret_missing", str(exc)) from exc
        try:
            self._app = msal.ConfidentialClientApplication(
                a.client_id, client_credential=credential, authority=authority,
                # another host (a sovereign cloud's, or the tests'): not in Microsoft's instance list
                validate_authority=microsoft_host, instance_discovery=None if microsoft_host else False,
                http_client=_session(a), timeout=HTTP_TIMEOUT_SECONDS, token_cache=msal.TokenCache())
        except _requests().exceptions.RequestException as exc:
            raise _transport_error(exc, authority) from exc
        except ValueError as exc:
            # msal's OIDC discovery of {authority}/v2.0/.well-known/openid-configuration failed
            if "authority configuration" in str(exc) or "OIDC" in str(exc):
                raise TokenError("tenant_not_found",
                                 f"the tenant {a.tenant_id} is not known to {urlparse(a.authority).netloc}") from exc
            raise TokenError("m365_configuration", f"msal refused the configuration ({type(exc).__name__})") from exc
        return self._app

    def fetch(self, force_refresh: bool = False) -> AccessToken:
        app = self._application()
        if force_refresh:
            app.remove_tokens_for_client()
        now = datetime.now(UTC)
        try:
            result = app.acquire_token_for_client(scopes=[self.auth.effective_scope])
        except _requests().exceptions.RequestException as exc:
            raise _transport_error(exc, self.auth.authority) from exc
        if "access_token" in result:
            return AccessToken(result["access_token"], _expires(result.get("expires_in"), now))
        codes = [int(c) for c in result.get("error_codes") or [] if str(c).isdigit()]
        for c in codes:
            if c in _ENTRA_HINTS:
                code, hint = _ENTRA_HINTS[c]
                raise TokenError(code, f"{hint} (AADSTS{c})")
        error = str(result.get("error") or "unknown_error")
        if error == "invalid_client":
            raise TokenError("invalid_client", "the client secret or certificate was refused")
        suffix = f" (AADSTS{codes[0]})" if codes else ""
        raise TokenError(error[:60], f"the token endpoint refused: {error[:60]}{suffix}")


def _pem_block(pem: str, label: str) -> str | None:
    """The first PEM block whose label ends with ``label`` ("PRIVATE KEY" matches "RSA PRIVATE KEY")."""
    lines: list[str] = []
    inside = False
    for line in pem.splitlines():
        if line.startswith("-----BEGIN ") and line.rstrip("-").endswith(label):
            inside = True
        if inside:
            lines.append(line)
            if line.startswith("-----END "):
                return "\n".join(lines) + "\n"
    return None


# ---- Google service account (domain-wide delegation) ---------------------------------------------

_GOOGLE_HINTS: dict[str, tuple[str, str]] = {
    "unauthorized_client": ("delegation_not_granted",
                            "domain-wide delegation is not granted for this client id and scope "
                            "https://mail.google.com/ (Admin console > Security > API controls)"),
    "invalid_grant": ("service_account_refused",
                      "the service account key or the mailbox address was refused (key deleted, clock skew, "
                      "or the user does not exist)"),
    "access_denied": ("access_denied", "the mailbox may not be accessed by this service account"),
}


class GoogleServiceAccountTokens:
    def __init__(self, auth: AuthSettings, username: str) -> None:
        self.auth = auth
        self.username = username

    def fetch(self, force_refresh: bool = False) -> AccessToken:
        import google.auth.exceptions
        import google.auth.transport.requests
        from google.oauth2 import service_account

        a = self.auth
        assert a.service_account_file is not None
        try:
            creds = service_account.Credentials.from_service_account_file(
                str(a.service_account_file), scopes=[a.effective_scope], subject=self.username)  # type: ignore[no-untyped-call]
        except (OSError, ValueError, KeyError) as exc:
            raise TokenError("service_account_unreadable",
                             f"cannot read the service account key {a.service_account_file}") from exc
        if a.token_endpoint:
            creds = creds.with_token_uri(a.token_endpoint)
        try:
            creds.refresh(google.auth.transport.requests.Request(_session(a)))
        except google.auth.exceptions.RefreshError as exc:
            data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
            error = str(data.get("error") or "refused")
            code, hint = _GOOGLE_HINTS.get(error, (error[:60], f"the token endpoint refused: {error[:60]}"))
            raise TokenError(code, hint) from exc
        except google.auth.exceptions.TransportError as exc:
            raise _transport_error(exc, creds._token_uri) from exc
        expiry = creds.expiry.replace(tzinfo=UTC) if creds.expiry else datetime.now(UTC) + timedelta(minutes=5)
        return AccessToken(str(creds.token), expiry)


# ---- refresh token (installed-app consent) -------------------------------------------------------

GOOGLE_TOKEN_ENDPOINT = "https://oauth2.googleapis.com/token"


class RefreshTokenTokens:
    def __init__(self, auth: AuthSettings) -> None:
        self.auth = auth
        self._lock = threading.Lock()

    def fetch(self, force_refresh: bool = False) -> AccessToken:
        a = self.auth
        assert a.refresh_token_file is not None
        endpoint = a.token_endpoint or GOOGLE_TOKEN_ENDPOINT
        with self._lock:
            try:
                refresh_token = a.refresh_token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise TokenError("refresh_token_unreadable", f"cannot read {a.refresh_token_file}") from exc
            body = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": a.client_id or ""}
            if a.client_secret_env or a.client_secret_file:
                try:
                    body["client_secret"] = read_secret(a.client_secret_env, a.client_secret_file, "client secret")
                except ValueError as exc:
                    raise TokenError("secret_missing", str(exc)) from exc
            if a.scope:
                body["scope"] = a.scope
            now = datetime.now(UTC)
            try:
                resp = _session(a).post(endpoint, data=body, timeout=HTTP_TIMEOUT_SECONDS)
            except _requests().exceptions.RequestException as exc:
                raise _transport_error(exc, endpoint) from exc
            try:
                data = resp.json()
            except ValueError:
                data = {}
            if resp.status_code != 200 or "access_token" not in data:
                error = str(data.get("error") or f"http_{resp.status_code}")
                if error == "invalid_grant":
                    raise TokenError("refresh_token_refused",
                                     "the refresh token was refused (revoked, expired or already used): "
                                     "consent again and store the new refresh token")
                raise TokenError(error[:60], f"the token endpoint refused: {error[:60]}")
            rotated = data.get("refresh_token")
            if isinstance(rotated, str) and rotated and rotated != refresh_token:
                write_private(a.refresh_token_file, rotated)
            return AccessToken(str(data["access_token"]), _expires(data.get("expires_in"), now))


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600 from the first byte."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---- building ------------------------------------------------------------------------------------


def provider_for(auth: AuthSettings, username: str, *, account: str) -> TokenProvider | None:
    """The token provider an auth block describes; None for password sign-in."""
    fetchers: dict[AuthMethod, Callable[[], Callable[[bool], AccessToken]]] = {
        AuthMethod.OAUTH2_M365: lambda: M365AppTokens(auth).fetch,
        AuthMethod.OAUTH2_GOOGLE_SERVICE_ACCOUNT: lambda: GoogleServiceAccountTokens(auth, username).fetch,
        AuthMethod.OAUTH2_REFRESH_TOKEN: lambda: RefreshTokenTokens(auth).fetch,
    }
    make = fetchers.get(auth.method)
    if make is None:
        return None
    return CachedTokenProvider(make(), account=account)
