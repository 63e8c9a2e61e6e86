"""The web interface's tables: staff accounts, server-side sessions, practitioners' sign-in links,
sign-in attempts (lockout) and the audit trail. Secrets are stored as hashes: a session cookie or a
mailed link is only ever in the browser or the mail, the database holds its SHA-256."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, Column, ForeignKey, Integer, String, Text
from sqlmodel import Field, SQLModel

from escalations.cases.models import nullable_utc, utc_column


class WebUser(SQLModel, table=True):
    """A member of staff. Local accounts have a password hash (argon2) and a TOTP secret; people who
    sign in through OpenID Connect may have a row too (made on first sign-in, or by an administrator
    to give a role a provider does not send)."""

    __tablename__ = "web_user"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(sa_column=Column(String(320), nullable=False, unique=True))
    role: str = Field(sa_column=Column(String(16), nullable=False))
    partnerships: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    password_hash: str | None = Field(default=None, sa_column=Column(String(255)))
    #: The TOTP secret, sealed (escalations.web.passwords.TotpSealer); ``totp_confirmed_at`` unset: an enrolment not finished (shown once, replaced
    #: each time the enrolment page is shown, used only after a code from it is entered).
    totp_secret: str | None = Field(default=None, sa_column=Column(String(255)))
    totp_confirmed_at: datetime | None = nullable_utc()
    #: The last TOTP time step accepted: a code is good once.
    totp_last_step: int | None = Field(default=None, sa_column=Column(Integer))
    created_at: datetime = utc_column()
    last_sign_in_at: datetime | None = nullable_utc()
    disabled_at: datetime | None = nullable_utc()


class WebSession(SQLModel, table=True):
    """A signed-in browser. ``id`` is the SHA-256 of the cookie's random value."""

    __tablename__ = "web_session"

    id: str = Field(sa_column=Column(String(64), primary_key=True))
    user_id: int | None = Field(default=None, sa_column=Column(Integer, ForeignKey("web_user.id"), index=True))
    email: str = Field(sa_column=Column(String(320), nullable=False))
    role: str = Field(sa_column=Column(String(16), nullable=False))
    partnerships: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    #: A practitioner's session: the cases it may see (staff: empty).
    case_refs: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    #: oidc | local | link
    method: str = Field(sa_column=Column(String(16), nullable=False))
    csrf: str = Field(sa_column=Column(String(64), nullable=False))
    created_at: datetime = utc_column()
    last_seen_at: datetime = utc_column()
    #: Absolute expiry; idle expiry is ``last_seen_at`` + the idle limit.
    expires_at: datetime = utc_column(index=True)
    ip: str | None = Field(default=None, sa_column=Column(String(64)))


class WebSignInLink(SQLModel, table=True):
    """A one-time sign-in link mailed to an address a case holds: that case only."""

    __tablename__ = "web_sign_in_link"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    email: str = Field(sa_column=Column(String(320), nullable=False))
    case_ref: str = Field(sa_column=Column(String(32), nullable=False, index=True))
    created_at: datetime = utc_column()
    expires_at: datetime = utc_column()
    used_at: datetime | None = nullable_utc()


class WebLoginAttempt(SQLModel, table=True):
    """One sign-in attempt (password, code or link): what lockout and rate limits count."""

    __tablename__ = "web_login_attempt"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = utc_column(index=True)
    email: str = Field(sa_column=Column(String(320), nullable=False, index=True))
    ip: str | None = Field(default=None, sa_column=Column(String(64), index=True))
    ok: bool = Field(sa_column=Column(Boolean, nullable=False))
    #: password | totp | link | oidc | locked
    kind: str = Field(sa_column=Column(String(16), nullable=False))


class WebAudit(SQLModel, table=True):
    """Who did or saw what, when, from where: every view of personal data and every action."""

    __tablename__ = "web_audit"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = utc_column(index=True)
    user_email: str = Field(sa_column=Column(String(320), nullable=False, index=True))
    role: str = Field(sa_column=Column(String(16), nullable=False))
    #: A fixed code: sign_in, sign_out, case.view, case.personal_details, case.note, ...
    action: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    case_ref: str | None = Field(default=None, sa_column=Column(String(32), index=True))
    #: Words for the reader (a reason given, a field name) — never a child's details.
    detail: str | None = Field(default=None, sa_column=Column(Text))
    ip: str | None = Field(default=None, sa_column=Column(String(64)))
    #: The route (a path template, never a query string).
    route: str | None = Field(default=None, sa_column=Column(String(200)))
