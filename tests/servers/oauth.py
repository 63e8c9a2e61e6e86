"""A small OAuth2 authorisation server on loopback, standing in for Microsoft Entra and Google.

Usage::

    def test_x(oauth_server: OAuthServer) -> None:
        app = oauth_server.register_app(mailboxes=("watcher",))     # an Entra app registration
        auth = oauth_server.m365_auth(app, tmp_path)               # AuthSettings for msal, pointed here
        oauth_server.token_lifetime = 3                            # tokens issued from now on expire fast
        oauth_server.revoke_all()                                  # every issued access token stops working
        oauth_server.introspect(token)                             # what Dovecot and the SMTP fixture ask

It speaks, over https (msal refuses anything else; the certificate is self-signed, ``ca_file``):

- ``GET /{tenant}/v2.0/.well-known/openid-configuration``: OIDC discovery as msal does it; an
  unknown tenant gets Entra's 400 with AADSTS90002.
- ``POST /{tenant}/oauth2/v2.0/token``: client credentials, with a client secret or a certificate's
  signed assertion (RFC 7523 client authentication, RS256 or PS256, audience = this URL);
  wrong secrets get ``invalid_client`` / AADSTS7000215 like Entra.
- ``POST /token``: the refresh-token grant (each use rotates the refresh token; a spent one is
  ``invalid_grant``) and the JWT-bearer grant of a Google service account (signature checked
  with its public key; domain-wide delegation as a registered set of scopes).
- ``POST /introspect[/imap|/smtp]`` (RFC 7662, form ``token=``), also on plain http at ``http_url``
  for Dovecot: ``{"active": true, "username": <mailbox>}``; for an app-only token the mailbox is
  the first one the app has FullAccess on, and under /imap or /smtp only if the token has the
  IMAP.AccessAsApp or SMTP.SendAsApp role.

Access tokens look like JWTs (claims readable, signature meaningless) so that the client side can
explain a refusal from the token's ``roles``, as it can with Entra's tokens.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from escalations.settings import AuthSettings
from tests.servers import free_port, unavailable

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
M365_ROLES = ("IMAP.AccessAsApp", "SMTP.SendAsApp")


@dataclass
class App:
    """An Entra app registration (and its Exchange service principal's mailbox permissions)."""

    client_id: str
    tenant: str
    secret: str | None = None
    certificate_pem: bytes | None = None
    roles: tuple[str, ...] = M365_ROLES
    mailboxes: tuple[str, ...] = ()


@dataclass
class Issued:
    client_id: str
    username: str
    roles: tuple[str, ...]
    expires_at: float
    grant: str


@dataclass
class OAuthServer:
    cert: Path
    key: Path
    host: str = "127.0.0.1"
    #: Lifetime of access tokens issued from now on (seconds).
    token_lifetime: float = 3600.0
    tenants: set[str] = field(default_factory=lambda: {"contoso-tenant"})
    apps: dict[str, App] = field(default_factory=dict)
    #: Google service accounts: client_email -> (public key PEM, delegated scopes)
    service_accounts: dict[str, tuple[bytes, set[str]]] = field(default_factory=dict)
    #: refresh token -> (client_id, client secret or None, username)
    refresh_tokens: dict[str, tuple[str, str | None, str]] = field(default_factory=dict)
    tokens: dict[str, Issued] = field(default_factory=dict)
    #: (grant type, outcome) of every token request, in order
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.https_port = free_port()
        self.http_port = free_port()
        self._servers: list[ThreadingHTTPServer] = []

    # ---- addresses ----------------------------------------------------------------------------

    @property
    def https_url(self) -> str:
        return f"https://{self.host}:{self.https_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def token_url(self) -> str:
        return f"{self.https_url}/token"

    @property
    def introspection_url(self) -> str:
        """For Dovecot: app-only tokens must carry IMAP.AccessAsApp."""
        return f"{self.http_url}/introspect/imap"

    @property
    def smtp_introspection_url(self) -> str:
        """For the XOAUTH2 relay: app-only tokens must carry SMTP.SendAsApp."""
        return f"{self.http_url}/introspect/smtp"

    # ---- what the tests set up ----------------------------------------------------------------

    def register_app(self, *, tenant: str = "contoso-tenant", secret: str | None = "app-secret-1",
                     certificate_pem: bytes | None = None, roles: tuple[str, ...] = M365_ROLES,
                     mailboxes: tuple[str, ...] = ("watcher",)) -> App:
        app = App(f"app-{secrets.token_hex(4)}", tenant, secret, certificate_pem, roles, mailboxes)
        with self.lock:
            self.tenants.add(tenant)
            self.apps[app.client_id] = app
        return app

    def m365_auth(self, app: App, directory: Path, *, secret: str | None = None, **extra: Any) -> AuthSettings:
        """An auth block for msal pointed at this server; the secret is written to a 0600 file."""
        values: dict[str, Any] = {"method": "oauth2_m365", "tenant_id": app.tenant, "client_id": app.client_id,
                                  "authority": self.https_url, "ca_file": self.cert}
        if app.certificate_pem is None or secret is not None:
            secret_file = directory / f"{app.client_id}.secret"
            secret_file.write_text((secret if secret is not None else app.secret or "") + "\n")
            secret_file.chmod(0o600)
            values["client_secret_file"] = secret_file
        values.update(extra)
        return AuthSettings.model_validate(values)

    def issue_refresh_token(self, client_id: str, username: str, client_secret: str | None = None) -> str:
        rt = "rt-" + secrets.token_urlsafe(16)
        with self.lock:
            self.refresh_tokens[rt] = (client_id, client_secret, username)
        return rt

    def add_service_account(self, directory: Path, *, delegated_scopes: set[str] | None = None) -> Path:
        """A service account key file (Google's JSON format) whose token_uri is this server."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        email = f"sa-{secrets.token_hex(3)}@project.iam.example.org"
        public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        with self.lock:
            self.service_accounts[email] = (public, set(delegated_scopes or {"https://mail.google.com/"}))
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        path = directory / f"{email.split('@')[0]}.json"
        path.write_text(json.dumps({"type": "service_account", "project_id": "project", "private_key_id": "k1",
                                    "private_key": private, "client_email": email, "client_id": "1234567890",
                                    "token_uri": self.token_url}))
        path.chmod(0o600)
        return path

    def revoke_all(self) -> None:
        with self.lock:
            self.tokens.clear()

    def grants(self, outcome: str | None = None) -> list[str]:
        with self.lock:
            return [g for g, o in self.requests if outcome is None or o == outcome]

    # ---- checks (what Dovecot and the SMTP fixture ask) -----------------------------------------

    def introspect(self, token: str, protocol: str | None = None) -> dict[str, Any]:
        """RFC 7662's answer; with ``protocol`` (imap, smtp) an app-only token also needs that role,
        as Exchange requires IMAP.AccessAsApp / SMTP.SendAsApp."""
        with self.lock:
            issued = self.tokens.get(token)
        if issued is None or issued.expires_at <= time.time():
            return {"active": False}
        role = {"imap": "IMAP.AccessAsApp", "smtp": "SMTP.SendAsApp"}.get(protocol or "")
        if issued.grant == "client_credentials" and role and role not in issued.roles:
            return {"active": False}
        return {"active": True, "username": issued.username, "client_id": issued.client_id,
                "roles": list(issued.roles), "exp": int(issued.expires_at)}

    # ---- issuing ----------------------------------------------------------------------------------

    def _issue(self, client_id: str, username: str, roles: tuple[str, ...], grant: str,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        lifetime = self.token_lifetime
        exp = time.time() + lifetime
        claims = {"aud": "https://outlook.office365.com", "appid": client_id, "roles": list(roles),
                  "exp": int(exp), "jti": secrets.token_hex(8)}
        header = _b64({"alg": "none", "typ": "JWT"})
        token = f"{header}.{_b64(claims)}.{secrets.token_urlsafe(16)}"
        with self.lock:
            self.tokens[token] = Issued(client_id, username, roles, exp, grant)
            self.requests.append((grant, "ok"))
        return {"token_type": "Bearer", "access_token": token, "expires_in": max(1, int(lifetime)), **(extra or {})}

    def _refused(self, grant: str, status: int, error: str, code: int | None = None,
                 description: str = "") -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests.append((grant, error))
        body: dict[str, Any] = {"error": error, "error_description": description}
        if code is not None:
            body["error_codes"] = [code]
            body["error_description"] = f"AADSTS{code}: {description}"
        return status, body

    def client_credentials(self, tenant: str, form: dict[str, str], url: str) -> tuple[int, dict[str, Any]]:
        grant = "client_credentials"
        if tenant not in self.tenants:
            return self._refused(grant, 400, "invalid_request", 90002, "Tenant not found.")
        app = self.apps.get(form.get("client_id", ""))
        if app is None or app.tenant != tenant:
            return self._refused(grant, 400, "unauthorized_client", 700016, "Application not found in the directory.")
        if "client_assertion" in form:
            if app.certificate_pem is None or not _assertion_ok(form["client_assertion"], app, url):
                return self._refused(grant, 401, "invalid_client", 700027, "Client assertion failed signature validation.")
        elif app.secret is None or not secrets.compare_digest(form.get("client_secret", ""), app.secret):
            return self._refused(grant, 401, "invalid_client", 7000215, "Invalid client secret provided.")
        if form.get("scope") != "https://outlook.office365.com/.default":
            return self._refused(grant, 400, "invalid_scope", 1002012, "The provided value for scope is not valid.")
        return 200, self._issue(app.client_id, app.mailboxes[0] if app.mailboxes else "", app.roles, grant)

    def token_grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type", "")
        if grant == "refresh_token":
            with self.lock:
                entry = self.refresh_tokens.pop(form.get("refresh_token", ""), None)  # one use: rotation
            if entry is None:
                return self._refused(grant, 400, "invalid_grant", description="Token has been expired or revoked.")
            client_id, secret, username = entry
            if form.get("client_id") != client_id or (secret is not None and form.get("client_secret") != secret):
                return self._refused(grant, 401, "invalid_client")
            rotated = self.issue_refresh_token(client_id, username, secret)
            return 200, self._issue(client_id, username, (), grant, {"refresh_token": rotated})
        if grant == JWT_BEARER:
            return self._jwt_bearer(form.get("assertion", ""))
        return self._refused(grant or "none", 400, "unsupported_grant_type")

    def _jwt_bearer(self, assertion: str) -> tuple[int, dict[str, Any]]:
        grant = "jwt_bearer"
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            public, scopes = self.service_accounts[unverified["iss"]]
            # google-auth always names Google's own token URI as the audience, whatever token_uri is
            claims = jwt.decode(assertion, public, algorithms=["RS256"],
                                audience=[self.token_url, "https://oauth2.googleapis.com/token"])
        except (KeyError, jwt.InvalidTokenError):
            return self._refused(grant, 400, "invalid_grant", description="Invalid JWT Signature.")
        wanted = set(str(claims.get("scope", "")).split())
        if not claims.get("sub") or not wanted or not wanted <= scopes:
            return self._refused(grant, 401, "unauthorized_client",
                                 description="Client is unauthorized to retrieve access tokens using this method.")
        return 200, self._issue(str(claims["iss"]), str(claims["sub"]), (), grant)

    # ---- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        handler = _handler(self)
        secure = ThreadingHTTPServer((self.host, self.https_port), handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        secure.socket = ctx.wrap_socket(secure.socket, server_side=True)
        plain = ThreadingHTTPServer((self.host, self.http_port), handler)
        for server in (secure, plain):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, name="oauth-test-server", daemon=True).start()
            self._servers.append(server)

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _assertion_ok(assertion: str, app: App, token_url: str) -> bool:
    assert app.certificate_pem is not None
    public = x509.load_pem_x509_certificate(app.certificate_pem).public_key()
    try:
        claims = jwt.decode(assertion, public, algorithms=["RS256", "PS256"],  # type: ignore[arg-type]
                            audience=token_url, issuer=app.client_id)
    except jwt.InvalidTokenError:
        return False
    return bool(claims.get("sub") == app.client_id)


def _handler(server: OAuthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _form(self) -> dict[str, str]:
            length = int(self.headers.get("Content-Length") or 0)
            parsed = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
            return {k: v[0] for k, v in parsed.items()}

        def _base(self) -> str:
            secure = self.server.server_address[1] == server.https_port
            return server.https_url if secure else server.http_url

        def do_GET(self) -> None:
            parts = self.path.split("?", 1)[0].strip("/").split("/")
            if len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
                tenant = parts[0]
                if tenant not in server.tenants:
                    self._reply(400, {"error": "invalid_tenant", "error_codes": [90002],
                                      "error_description": f"AADSTS90002: Tenant '{tenant}' not found."})
                    return
                base = f"{self._base()}/{tenant}"
                self._reply(200, {"issuer": f"{base}/v2.0", "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                                  "token_endpoint": f"{base}/oauth2/v2.0/token"})
                return
            self._reply(404, {"error": "not_found"})

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0].strip("/")
            parts = path.split("/")
            form = self._form()
            if parts[0] == "introspect" and len(parts) <= 2:
                self._reply(200, server.introspect(form.get("token", ""), parts[1] if len(parts) == 2 else None))
            elif path == "token":
                self._reply(*server.token_grant(form))
            elif len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
                self._reply(*server.client_credentials(parts[0], form, f"{self._base()}/{path}"))
            else:
                self._reply(404, {"error": "not_found"})

    return Handler


def make_certificate(directory: Path, cn: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA), as tests/intake/test_relay_tls.py makes."""
    if shutil.which("openssl") is None:
        unavailable("openssl not installed (a dependency of dovecot-core)")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    f"/CN={cn}", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="session")
def oauth_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("oauth-tls"))


@pytest.fixture
def oauth_server(oauth_certificate: tuple[Path, Path]) -> Iterator[OAuthServer]:
    server = OAuthServer(*oauth_certificate)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---- an SMTP relay that takes XOAUTH2 (aiosmtpd) ------------------------------------------------


@dataclass
class XOAuth2Relay:
    """aiosmtpd standing in for smtp.office365.com: AUTH XOAUTH2 only, each token introspected over
    HTTP at the token server, as Exchange checks them with Entra."""

    oauth: OAuthServer
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    auth_attempts: list[bool] = field(default_factory=list)

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> Any:
        import asyncio

        import requests
        from aiosmtpd.smtp import MISSING, AuthResult

        blob: Any = base64.b64decode(args[1]) if len(args) > 1 else await server.challenge_auth("")
        if blob is MISSING:
            return AuthResult(success=False, handled=True)
        fields = dict(p.split("=", 1) for p in blob.decode(errors="replace").split("\x01") if "=" in p)
        user, token = fields.get("user", ""), fields.get("auth", "").removeprefix("Bearer ")
        answer = await asyncio.get_running_loop().run_in_executor(None, lambda: requests.post(
            self.oauth.smtp_introspection_url, data={"token": token}, timeout=5).json())
        ok = bool(answer.get("active")) and answer.get("username") == user
        self.auth_attempts.append(ok)
        if not ok:
            # XOAUTH2: an error challenge first, the client answers with an empty line, then 535
            await server.challenge_auth(json.dumps({"status": "401", "schemes": "bearer"}))
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=user)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((str(session.auth_data), envelope.original_content or b""))
        return "250 OK"


@pytest.fixture
def xoauth2_relay(oauth_server: OAuthServer) -> Iterator[XOAuth2Relay]:
    from aiosmtpd.controller import Controller

    relay = XOAuth2Relay(oauth_server)
    # loopback without TLS: the tests are about the tokens (the TLS paths are in test_relay_tls.py)
    controller = Controller(relay, hostname=relay.host, port=relay.port, auth_require_tls=False,
                            auth_exclude_mechanism=["LOGIN", "PLAIN"])
    controller.start()
    try:
        yield relay
    finally:
        controller.stop()
