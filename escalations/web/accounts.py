"""The web interface's own records: staff accounts, sessions, sign-in links, sign-in attempts and
the audit trail. Case data is never read or written here (pages read through the read models and
act through the dispatcher); these are the tables of escalations/web/models.py only."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from escalations.clock import Clock
from escalations.settings import WebSettings
from escalations.web.models import WebAudit, WebLoginAttempt, WebSession, WebSignInLink, WebUser
from escalations.web.passwords import TotpSealer
from escalations.web.roles import Role

#: A session's last-seen time is written at most this often (not on every request).
TOUCH_EVERY = timedelta(seconds=60)


def digest(token: str) -> str:
    """What the database keeps of a cookie or link secret."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def normal_email(email: str) -> str:
    return email.strip().lower()


class AccountError(ValueError):
    """A user-management request that cannot be done (one sentence)."""


@dataclass(frozen=True)
class Identity:
    """Who a new session is for."""

    email: str
    role: Role
    partnerships: frozenset[str]
    case_refs: frozenset[str] = frozenset()
    user_id: int | None = None


@dataclass(frozen=True)
class AuditFilter:
    case_ref: str | None = None
    user_email: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 200
    offset: int = 0


class Accounts:
    def __init__(self, engine: Engine, clock: Clock, settings: WebSettings, *, service_secret: bytes) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings
        self._sealer = TotpSealer(service_secret)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # ---- users ---------------------------------------------------------------------------

    def add_user(self, email: str, role: Role, partnerships: Sequence[str], *,
                 password_hash: str | None = None) -> WebUser:
        email = normal_email(email)
        with self._session() as s:
            if s.exec(select(WebUser).where(WebUser.email == email)).first() is not None:
                raise AccountError(f"{email} already has an account")
            user = WebUser(email=email, role=role.value, partnerships=sorted(set(partnerships)),
                           password_hash=password_hash, created_at=self.clock.now())
            s.add(user)
            s.commit()
            return user

    def user(self, email: str) -> WebUser | None:
        with self._session() as s:
            return s.exec(select(WebUser).where(WebUser.email == normal_email(email))).first()

    def user_by_id(self, user_id: int) -> WebUser | None:
        with self._session() as s:
            return s.get(WebUser, user_id)

    def users(self) -> list[WebUser]:
        with self._session() as s:
            return list(s.exec(select(WebUser).order_by(col(WebUser.email))))

    def disable_user(self, email: str) -> bool:
        """Disable the account and end its sessions at once."""
        with self._session() as s:
            user = s.exec(select(WebUser).where(WebUser.email == normal_email(email))).first()
            if user is None:
                return False
            user.disabled_at = user.disabled_at or self.clock.now()
            s.add(user)
            s.exec(delete(WebSession).where(or_(col(WebSession.user_id) == user.id,
                                                   col(WebSession.email) == user.email)))
            s.commit()
            return True

    def set_password_hash(self, user_id: int, password_hash: str) -> None:
        with self._session() as s:
            s.exec(update(WebUser).where(col(WebUser.id) == user_id).values(password_hash=password_hash))
            s.commit()

    def reset_local(self, user_id: int, password_hash: str) -> None:
        """A new password and a new TOTP enrolment at the next sign-in; its sessions end."""
        with self._session() as s:
            s.exec(update(WebUser).where(col(WebUser.id) == user_id).values(
                password_hash=password_hash, totp_secret=None, totp_confirmed_at=None))
            s.exec(delete(WebSession).where(col(WebSession.user_id) == user_id))
            s.commit()

    def set_pending_totp(self, user_id: int, secret: str) -> None:
        """A new enrolment secret, replacing one not confirmed (an enrolled secret stays)."""
        with self._session() as s:
            s.exec(update(WebUser).where(col(WebUser.id) == user_id, col(WebUser.totp_confirmed_at).is_(None))
                   .values(totp_secret=self._sealer.seal(secret, user_id)))
            s.commit()

    def totp_secret(self, user: WebUser) -> str | None:
        """The account's TOTP secret (unsealed), if it has one."""
        return self._sealer.unseal(user.totp_secret, user.id) if user.id is not None else None

    def accept_totp_step(self, user_id: int, step: int, *, confirm: bool = False) -> bool:
        """Use a TOTP time step once: False if it (or a later one) was used already."""
        values: dict[str, object] = {"totp_last_step": step}
        if confirm:
            values["totp_confirmed_at"] = self.clock.now()
        with self._session() as s:
            done = s.exec(update(WebUser).where(
                col(WebUser.id) == user_id,
                or_(col(WebUser.totp_last_step).is_(None), col(WebUser.totp_last_step) < step))
                .values(**values))
            s.commit()
            return bool(done.rowcount == 1)

    def upsert_oidc_user(self, email: str, role: Role, partnerships: Sequence[str]) -> WebUser:
        """The row of someone signing in through OIDC: created, or its role and partnerships refreshed
        from the provider's claims (a disabled row stays disabled)."""
        email = normal_email(email)
        with self._session() as s:
            user = s.exec(select(WebUser).where(WebUser.email == email)).first()
            if user is None:
                user = WebUser(email=email, role=role.value, partnerships=sorted(set(partnerships)),
                               created_at=self.clock.now())
            else:
                user.role, user.partnerships = role.value, sorted(set(partnerships))
            s.add(user)
            s.commit()
            return user

    # ---- sessions ------------------------------------------------------------------------

    def create_session(self, who: Identity, *, method: str, ip: str | None) -> str:
        """A new session (a new random id every sign-in: no fixation). Returns the cookie value."""
        token = secrets.token_urlsafe(32)
        now = self.clock.now()
        row = WebSession(id=digest(token), user_id=who.user_id, email=who.email, role=who.role.value,
                         partnerships=sorted(who.partnerships), case_refs=sorted(who.case_refs), method=method,
                         csrf=secrets.token_urlsafe(32), created_at=now, last_seen_at=now,
                         expires_at=now + timedelta(hours=self.settings.session_absolute_hours), ip=ip)
        with self._session() as s:
            s.add(row)
            if who.user_id is not None:
                s.exec(update(WebUser).where(col(WebUser.id) == who.user_id).values(last_sign_in_at=now))
            s.commit()
        return token

    def load_session(self, token: str) -> WebSession | None:
        """The live session of this cookie value: None if unknown, idle too long, past its absolute
        expiry, or its account disabled (an expired one is deleted)."""
        now = self.clock.now()
        with self._session() as s:
            row = s.get(WebSession, digest(token))
            if row is None:
                return None
            idle_limit = row.last_seen_at + timedelta(minutes=self.settings.session_idle_minutes)
            if now >= row.expires_at or now >= idle_limit or self._disabled(s, row):
                s.delete(row)
                s.commit()
                return None
            if now - row.last_seen_at >= TOUCH_EVERY:
                row.last_seen_at = now
                s.add(row)
                s.commit()
            return row

    @staticmethod
    def _disabled(s: Session, row: WebSession) -> bool:
        if row.user_id is None:
            return False
        user = s.get(WebUser, row.user_id)
        return user is None or user.disabled_at is not None

    def end_session(self, token: str) -> None:
        with self._session() as s:
            s.exec(delete(WebSession).where(col(WebSession.id) == digest(token)))
            s.commit()

    def purge_expired_sessions(self) -> int:
        now = self.clock.now()
        idle = now - timedelta(minutes=self.settings.session_idle_minutes)
        with self._session() as s:
            done = s.exec(delete(WebSession).where(or_(col(WebSession.expires_at) <= now,
                                                          col(WebSession.last_seen_at) <= idle)))
            s.commit()
            return int(done.rowcount or 0)

    def housekeeping(self, keep_attempts: timedelta = timedelta(days=30)) -> dict[str, int]:
        """Delete expired sessions, spent or expired links, and sign-in attempts older than
        ``keep_attempts`` (far longer than any lockout window; the audit trail is kept)."""
        now = self.clock.now()
        with self._session() as s:
            links = s.exec(delete(WebSignInLink).where(col(WebSignInLink.expires_at) <= now))
            attempts = s.exec(delete(WebLoginAttempt).where(col(WebLoginAttempt.at) <= now - keep_attempts))
            s.commit()
        return {"sessions": self.purge_expired_sessions(), "links": int(links.rowcount or 0),
                "attempts": int(attempts.rowcount or 0)}

    # ---- sign-in attempts (lockout, rate limit) -----------------------------------------

    def record_attempt(self, email: str, ip: str | None, *, ok: bool, kind: str) -> None:
        with self._session() as s:
            s.add(WebLoginAttempt(at=self.clock.now(), email=normal_email(email), ip=ip, ok=ok, kind=kind))
            s.commit()

    def locked_until(self, email: str) -> datetime | None:
        """Locked: ``lockout_failures`` failures within the window since the last success; the lock
        lasts ``lockout_minutes`` from the last of them."""
        w = self.settings
        now = self.clock.now()
        email = normal_email(email)
        with self._session() as s:
            last_ok = s.exec(select(func.max(WebLoginAttempt.at)).where(
                WebLoginAttempt.email == email, col(WebLoginAttempt.ok).is_(True))).one()
            since = now - timedelta(minutes=w.lockout_window_minutes + w.lockout_minutes)
            if last_ok is not None and last_ok > since:
                since = last_ok
            failures = list(s.exec(select(WebLoginAttempt.at).where(
                WebLoginAttempt.email == email, col(WebLoginAttempt.ok).is_(False),
                col(WebLoginAttempt.at) > since).order_by(col(WebLoginAttempt.at))))
        window = timedelta(minutes=w.lockout_window_minutes)
        for i in range(len(failures) - w.lockout_failures + 1):  # N failures within one window
            run = failures[i:i + w.lockout_failures]
            if run[-1] - run[0] <= window:
                until = failures[-1] + timedelta(minutes=w.lockout_minutes)
                return until if until > now else None
        return None

    def ip_refused(self, ip: str | None) -> bool:
        if ip is None:
            return False
        since = self.clock.now() - timedelta(minutes=self.settings.lockout_window_minutes)
        with self._session() as s:
            failures = s.exec(select(func.count()).select_from(WebLoginAttempt).where(
                WebLoginAttempt.ip == ip, col(WebLoginAttempt.ok).is_(False),
                col(WebLoginAttempt.at) > since)).one()
        return int(failures) >= self.settings.max_failures_per_ip

    # ---- practitioners' sign-in links -----------------------------------------------------

    def create_link(self, s: Session, email: str, case_ref: str) -> str:
        """A one-time link secret, in the caller's transaction (with the mail that carries it)."""
        token = secrets.token_urlsafe(32)
        now = self.clock.now()
        s.add(WebSignInLink(token_hash=digest(token), email=normal_email(email), case_ref=case_ref,
                            created_at=now, expires_at=now + timedelta(minutes=self.settings.sign_in_link_minutes)))
        return token

    def link_usable(self, token: str) -> bool:
        with self._session() as s:
            row = s.exec(select(WebSignInLink).where(WebSignInLink.token_hash == digest(token))).first()
            return row is not None and row.used_at is None and row.expires_at > self.clock.now()

    def use_link(self, token: str) -> WebSignInLink | None:
        """Spend the link (once, before it expires): its address and case, else None."""
        now = self.clock.now()
        with self._session() as s:
            done = s.exec(update(WebSignInLink).where(
                col(WebSignInLink.token_hash) == digest(token), col(WebSignInLink.used_at).is_(None),
                col(WebSignInLink.expires_at) > now).values(used_at=now))
            s.commit()
            if done.rowcount != 1:
                return None
            return s.exec(select(WebSignInLink).where(WebSignInLink.token_hash == digest(token))).first()

    # ---- audit -----------------------------------------------------------------------------

    def audit(self, *, user_email: str, role: str, action: str, case_ref: str | None = None,
              detail: str | None = None, ip: str | None = None, route: str | None = None) -> None:
        with self._session() as s:
            s.add(WebAudit(at=self.clock.now(), user_email=normal_email(user_email), role=role, action=action,
                           case_ref=case_ref, detail=detail, ip=ip, route=route))
            s.commit()

    def audit_rows(self, f: AuditFilter = AuditFilter()) -> list[WebAudit]:
        q = select(WebAudit)
        if f.case_ref:
            q = q.where(WebAudit.case_ref == f.case_ref.strip().upper())
        if f.user_email:
            q = q.where(WebAudit.user_email == normal_email(f.user_email))
        if f.action:
            q = q.where(WebAudit.action == f.action)
        if f.since is not None:
            q = q.where(col(WebAudit.at) >= f.since)
        if f.until is not None:
            q = q.where(col(WebAudit.at) < f.until)
        q = q.order_by(col(WebAudit.at).desc(), col(WebAudit.id).desc()).offset(f.offset).limit(f.limit)
        with self._session() as s:
            return list(s.exec(q))
