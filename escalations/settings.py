"""Runtime settings (pydantic-settings): everything the service reads from its environment.

Environment variables are prefixed ``ESCALATIONS_``; nested values use ``__``
(``ESCALATIONS_RELAY__HOST=smtp.example.org``). Mailboxes to watch can be given as JSON in
``ESCALATIONS_MAILBOXES`` or in a YAML file named by ``ESCALATIONS_MAILBOXES_FILE``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from datetime import date, time
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from escalations.web.roles import Role

Security = Literal["ssl", "starttls", "none"]


def default_config_dir() -> Path:
    """The repository's ``config/`` folder (beside the package in a source checkout)."""
    return Path(__file__).resolve().parent.parent / "config"


class AuthMethod(StrEnum):
    PASSWORD = "password"
    #: Microsoft 365 app-only (client credentials, a client secret or a certificate), through msal.
    OAUTH2_M365 = "oauth2_m365"
    #: Google Workspace service account with domain-wide delegation (RFC 7523 JWT bearer grant).
    OAUTH2_GOOGLE_SERVICE_ACCOUNT = "oauth2_google_service_account"
    #: A refresh token from an installed-app consent (RFC 6749 section 6), rotated tokens kept.
    OAUTH2_REFRESH_TOKEN = "oauth2_refresh_token"


#: What each method needs, beside ``method`` itself.
_REQUIRED: dict[AuthMethod, tuple[tuple[str, ...], ...]] = {
    AuthMethod.PASSWORD: (),
    AuthMethod.OAUTH2_M365: (("tenant_id",), ("client_id",),
                             ("client_secret_env", "client_secret_file", "certificate_file")),
    AuthMethod.OAUTH2_GOOGLE_SERVICE_ACCOUNT: (("service_account_file",),),
    AuthMethod.OAUTH2_REFRESH_TOKEN: (("client_id",), ("refresh_token_file",)),
}

DEFAULT_SCOPES: dict[AuthMethod, str] = {
    AuthMethod.OAUTH2_M365: "https://outlook.office365.com/.default",
    AuthMethod.OAUTH2_GOOGLE_SERVICE_ACCOUNT: "https://mail.google.com/",
    AuthMethod.OAUTH2_REFRESH_TOKEN: "https://mail.google.com/",
}


class AuthSettings(BaseModel):
    """How a mailbox or the relay signs in. Secrets are named (an environment variable or a file),
    never written here, so a mailboxes.yaml can be read, copied and shown without leaking one."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    method: AuthMethod = AuthMethod.PASSWORD
    #: method password: where the password is (else the mailbox's legacy ``password``).
    password_env: str | None = None
    password_file: Path | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None
    client_secret_file: Path | None = None
    #: PEM holding the private key and its certificate (the one uploaded to the app registration).
    certificate_file: Path | None = None
    #: SHA-1 thumbprint of that certificate; default: computed from the certificate in the file.
    thumbprint: str | None = None
    #: Microsoft identity platform host (sovereign clouds: https://login.microsoftonline.us).
    authority: str = "https://login.microsoftonline.com"
    #: Token endpoint for the Google and refresh-token methods (default: Google's, or the one in
    #: the service account file).
    token_endpoint: str | None = None
    scope: str | None = None
    service_account_file: Path | None = None
    refresh_token_file: Path | None = None
    #: PEM CA bundle to trust for the token endpoint (an inspecting proxy's CA); default: the system's.
    ca_file: Path | None = None
    #: When the client secret or certificate expires: warned about from 30 days ahead.
    secret_expires_on: date | None = None

    @model_validator(mode="after")
    def _complete(self) -> AuthSettings:
        for alternatives in _REQUIRED[self.method]:
            if not any(getattr(self, name) for name in alternatives):
                raise ValueError(f"auth method {self.method.value} needs {' or '.join(alternatives)}")
        return self

    @property
    def is_oauth2(self) -> bool:
        return self.method is not AuthMethod.PASSWORD

    @property
    def effective_scope(self) -> str:
        return self.scope or DEFAULT_SCOPES.get(self.method, "")


def read_secret(env: str | None, file: Path | None, what: str) -> str:
    """A secret from the environment variable or file named in the settings (read when needed)."""
    if env:
        value = os.environ.get(env)
        if not value:
            raise ValueError(f"{what}: environment variable {env} is not set")
        return value
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"{what}: cannot read {file} ({type(exc).__name__})") from exc
    raise ValueError(f"{what}: no environment variable or file given")


class MailboxSettings(BaseModel):
    """One IMAP mailbox the service watches (a partnership's existing shared mailbox)."""

    # A misspelt key (``securty:``) would otherwise silently mean the default; an input may be a password.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str = Field(description="Short account name, part of the idempotency key")
    host: str
    port: int = 993
    security: Security = "ssl"
    username: str
    #: Legacy inline password; prefer ``auth: {method: password, password_env: ...}``.
    password: SecretStr | None = None
    auth: AuthSettings = Field(default_factory=AuthSettings)
    folder: str = "INBOX"
    #: After a message is durably stored: leave it, mark it \\Seen, or move it to a folder.
    after_store: Literal["none", "seen", "move"] = "seen"
    move_to: str = "Escalations/Stored"
    #: Re-issue IDLE before the 29-minute limit of RFC 2177.
    idle_renew_seconds: float = 25 * 60
    #: Without IDLE, poll this often.
    poll_seconds: float = 30.0
    #: A connection that answers nothing (NOOP/IDLE done) within this is dead.
    response_timeout_seconds: float = 30.0
    reconnect_initial_seconds: float = 1.0
    reconnect_max_seconds: float = 300.0
    fetch_batch: int = 100
    verify_tls: bool = True
    #: Which Authentication-Results header to believe: ``first`` (Microsoft 365, Google: the topmost
    #: header is the provider's own), ``none``, or the authserv-id of an MTA you run.
    auth_results: str = "first"

    @model_validator(mode="after")
    def _has_credentials(self) -> MailboxSettings:
        a = self.auth
        if not a.is_oauth2 and self.password is None and not (a.password_env or a.password_file):
            raise ValueError(f"mailbox {self.name}: no password (auth.password_env or auth.password_file) "
                             "and no OAuth2 auth method")
        return self

    def login_password(self) -> str:
        return _password(self.password, self.auth, f"mailbox {self.name}")


class RelaySettings(BaseModel):
    """Outgoing SMTP relay. Without one, outgoing mail is written to ``<data-dir>/sent``."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    host: str
    port: int = 587
    security: Security = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    auth: AuthSettings = Field(default_factory=AuthSettings)
    timeout_seconds: float = 30.0
    verify_tls: bool = True
    #: PEM file of the CA(s) to trust for the relay's certificate (an in-house CA); default: the system's.
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _oauth_needs_user(self) -> RelaySettings:
        if self.auth.is_oauth2 and not self.username:
            raise ValueError("relay: OAuth2 needs the username (the sending mailbox) to sign in as")
        return self

    def login_password(self) -> str:
        return _password(self.password, self.auth, "relay")


def _password(inline: SecretStr | None, auth: AuthSettings, what: str) -> str:
    if auth.password_env or auth.password_file:
        return read_secret(auth.password_env, auth.password_file, f"{what} password")
    return inline.get_secret_value() if inline is not None else ""


class OidcSettings(BaseModel):
    """Sign-in with the council's OpenID Connect provider (Microsoft Entra ID, Google)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: The issuer; its discovery document is ``<issuer>/.well-known/openid-configuration``
    #: (Entra ID: https://login.microsoftonline.com/<tenant>/v2.0, Google: https://accounts.google.com).
    issuer: str
    client_id: str
    client_secret_env: str | None = None
    client_secret_file: Path | None = None
    #: The button's words: "Sign in with <name>".
    name: str = "your organisation's account"
    scope: str = "openid email profile"
    #: Claims holding app roles or group ids (Entra ID: ``roles``, ``groups``).
    claims: list[str] = Field(default_factory=lambda: ["roles", "groups"])
    #: A claim value (an app role's value or a group's object id) -> the role it gives.
    #: The highest role any value gives is the person's role; none: sign-in is refused.
    role_claims: dict[str, Role] = Field(default_factory=dict)
    #: A claim value -> a partnership id it gives access to.
    partnership_claims: dict[str, str] = Field(default_factory=dict)
    #: Partnerships everyone signing in this way sees (a deployment serving one partnership).
    partnerships: list[str] = Field(default_factory=list)
    #: Only ``email_verified`` addresses in these domains (empty: any verified address).
    allowed_domains: list[str] = Field(default_factory=list)

    def client_secret(self) -> str:
        if not (self.client_secret_env or self.client_secret_file):
            return ""
        return read_secret(self.client_secret_env, self.client_secret_file, "web.oidc client secret")


class WebSettings(BaseModel):
    """The staff web interface (``escalations run`` serves it beside the mail service)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    enabled: bool = True
    #: host:port to listen on (behind a TLS-terminating reverse proxy in production).
    bind: str = "127.0.0.1:8080"
    #: The address people use (https://escalations.example.gov.uk): links in mail, the OIDC
    #: redirect, and Secure cookies when it is https. Unset: http://<bind>.
    public_url: str | None = None
    oidc: OidcSettings | None = None
    #: Local accounts (password + TOTP); off where everyone signs in through OIDC.
    local_accounts: bool = True
    session_idle_minutes: float = 30.0
    session_absolute_hours: float = 12.0
    #: Wrong passwords or codes for one address within ``lockout_window_minutes`` that lock it...
    lockout_failures: int = 5
    lockout_window_minutes: float = 15.0
    #: ... for this long (from the last failure).
    lockout_minutes: float = 15.0
    #: Failed sign-ins from one address (IP) within the window before it is refused.
    max_failures_per_ip: int = 50
    #: How long a practitioner's mailed sign-in link works (once).
    sign_in_link_minutes: float = 60.0
    #: Access log lines (route templates, status, time; never query strings).
    access_log: bool = True

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"must be host:port, for example 127.0.0.1:8080 (not {value!r})")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit

        url = urlsplit(value) if value is not None else None
        if url is not None and (url.scheme not in ("http", "https") or not url.netloc or url.path not in ("", "/")
                                or url.query):
            raise ValueError("must be the site's address with no path, for example https://escalations.council.example")
        return value

    @property
    def host(self) -> str:
        return self.bind.rpartition(":")[0] or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.bind.rpartition(":")[2])

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.bind}").rstrip("/")

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ESCALATIONS_", env_nested_delimiter="__", extra="ignore",
                                      hide_input_in_errors=True)

    data_dir: Path = Path("var")
    config_dir: Path = Field(default_factory=default_config_dir, alias="ESCALATIONS_CONFIG")
    database_url: str | None = None

    smtp_listen_host: str = "127.0.0.1"
    smtp_listen_port: int = 8025
    smtp_intake_enabled: bool = True
    #: Largest message the SMTP listener accepts (bytes).
    smtp_max_message_size: int = 50 * 1024 * 1024

    relay: RelaySettings | None = None
    mailboxes: list[MailboxSettings] = Field(default_factory=list)
    mailboxes_file: Path | None = None

    #: The domain in the Message-IDs we create.
    message_id_domain: str = "escalations.invalid"
    #: Secret that signs reply tokens. Unset: a random key is created once in
    #: ``<data-dir>/secret.key`` (mode 0600) and reused, so tokens survive restarts.
    secret_key: SecretStr | None = None

    #: Direct SMTP intake: the authserv-id of the MTA in front of the listener whose
    #: Authentication-Results header to believe; unset, none is believed (a sender can write any).
    smtp_intake_authserv_id: str | None = None
    #: ``escalations ingest`` of saved mail: ``none``, ``first`` or an authserv-id (as for a mailbox).
    ingest_auth_results: str = "none"
    #: Per party and case, NOTEs beyond this many a day are kept as unverified correspondence.
    max_notes_per_party_per_day: int = 20
    #: Put reply tokens in Reply-To as mailbox+TOKEN@domain (the mailbox must accept sub-addresses).
    reply_subaddressing: bool = True
    #: At most this many messages to one address per hour (loop protection); the rest wait.
    max_mails_per_address_per_hour: int = 20

    outbox_max_attempts: int = 8
    outbox_backoff_initial_seconds: float = 30.0
    outbox_backoff_max_seconds: float = 3600.0
    #: How often the processor re-checks for work if nobody wakes it.
    process_interval_seconds: float = 5.0
    tick_interval_seconds: float = 60.0
    log_format: Literal["json", "console"] = "console"

    # Parsing and attachment reading run in a worker process within these limits. Over one, that
    # part is skipped, the rest of the mail is used, and a fixed code goes on the case or quarantine.
    #: Off: parse in the service's own process (same part limits, no time or memory limit).
    parse_in_worker: bool = True
    parse_timeout_seconds: float = 10.0
    #: The worker's address-space limit (RLIMIT_AS).
    parse_memory_bytes: int = 512 * 1024 * 1024
    attachment_max_decompressed_bytes: int = 20 * 1000 * 1000
    attachment_max_ratio: int = 100
    max_mime_parts: int = 500
    max_mime_depth: int = 20
    docx_max_elements: int = 50_000
    html_max_chars: int = 2_000_000
    #: Who hears that a mailbox stopped answering (and that it recovered): the service's administrators.
    admin_emails: list[str] = Field(default_factory=list)
    #: The From of administrators' mail; default: the first partnership's mailbox.
    admin_from: str | None = None
    #: A mailbox with no successful contact for this long is an incident (one alert, one recovery mail).
    mailbox_alert_after_minutes: float = 15.0
    #: Local time (each partnership's time zone) of the coordinator's daily digest of what needs a person.
    daily_digest_at: time = time(8, 0)
    #: The staff web interface (ESCALATIONS_WEB__BIND, ESCALATIONS_WEB__PUBLIC_URL, ...).
    web: WebSettings = Field(default_factory=WebSettings)

    model_config["populate_by_name"] = True

    @model_validator(mode="after")
    def _load_mailboxes_file(self) -> Settings:
        if self.mailboxes_file is not None:
            self.mailboxes = [*self.mailboxes, *load_mailboxes_file(self.mailboxes_file)]
        return self

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'escalations.sqlite3').resolve()}"

    def token_secret(self) -> bytes:
        """The reply-token key: the configured one, else the data dir's persisted random key."""
        if self.secret_key is not None and self.secret_key.get_secret_value():
            return self.secret_key.get_secret_value().encode()
        path = self.data_dir / "secret.key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # Written in full under a private name, then linked into place (which fails if the name
            # exists): a process killed half-way leaves no empty key behind, which would stop every
            # later start; two processes starting at once both end up with the first one's key.
            tmp = self.data_dir / f".secret.key.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_urlsafe(48))
                    f.flush()
                    os.fsync(f.fileno())
                with contextlib.suppress(FileExistsError):  # another process created it first: use theirs
                    os.link(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        key = path.read_text(encoding="ascii").strip()
        if not key:
            from escalations.errors import SetupError

            raise SetupError("ESCALATIONS_SECRET_KEY", f"{path} is empty: restore it from a backup (replies to "
                                                       "mail already sent need it), else delete it or set the key")
        return key.encode()

    @property
    def sent_dir(self) -> Path:
        return self.data_dir / "sent"


def load_mailboxes_file(path: Path) -> list[MailboxSettings]:
    """The mailboxes of a YAML file (a list, or a mapping with ``mailboxes:``). Mistakes are
    :class:`~escalations.errors.SetupError` naming the file and line."""
    import yaml  # only when there is a mailboxes file: not for every command's settings
    from pydantic import ValidationError

    from escalations.errors import SetupError, pydantic_reason
    from escalations.policy_files.yamlfile import format_loc, line_for

    setting = "ESCALATIONS_MAILBOXES_FILE"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SetupError(setting, f"{path} does not exist: create it (docs/operations.md) or unset "
                                  f"{setting}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SetupError(setting, f"cannot read {path} ({type(exc).__name__}): check its owner and "
                                  "permissions") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SetupError(where, f"not valid YAML: {getattr(exc, 'problem', None) or 'syntax error'}") from None
    prefix: tuple[str | int, ...] = ()
    if isinstance(data, dict):
        data, prefix = data.get("mailboxes", []), ("mailboxes",)
    if not isinstance(data, list):
        raise SetupError(f"{path}:1", "expected a list of mailboxes (or mailboxes: followed by one)")
    mailboxes, errors = [], []
    for i, item in enumerate(data or []):
        try:
            mailboxes.append(MailboxSettings.model_validate(item))
        except ValidationError as exc:
            for e in exc.errors():
                loc = (*prefix, i, *(p for p in e["loc"] if isinstance(p, (str, int))))
                # a validator's own loc parts are not keys in the file
                loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
                errors.append(SetupError(f"{path}:{line_for(root, loc)}", f"{format_loc(loc)}: {pydantic_reason(e)}"))
    if errors:
        raise SetupError.of(errors)
    return mailboxes
