"""Delivery edges: an SMTP relay (STARTTLS/SSL, AUTH) or, with no relay configured, .eml files."""

from __future__ import annotations

import os
import re
import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from escalations.mailer.oauth import TokenError, TokenProvider, provider_for, xoauth2_string
from escalations.settings import RelaySettings


class DeliveryError(Exception):
    """A send failed. ``permanent`` errors are not retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class MailSender(Protocol):
    def send(self, sender: str, recipients: list[str], raw: bytes, *, name_hint: str) -> None: ...


@contextmanager
def batch_of(sender: MailSender) -> Iterator[MailSender]:
    """A sender for several mails in a row: the same connection for all of them where the sender
    keeps one (the SMTP relay), the sender itself otherwise."""
    batch = getattr(sender, "batch", None)
    if batch is None:
        yield sender
        return
    with batch() as connected:
        yield connected


class FileSender:
    """Writes each message as ``<dir>/<name_hint>.eml``, atomically (write then rename)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, sender: str, recipients: list[str], raw: bytes, *, name_hint: str) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name_hint)[:120]
        final = self.directory / f"{safe}.eml"
        tmp = self.directory / f".{safe}.tmp"
        envelope = f"X-Envelope-From: <{sender}>\r\nX-Envelope-To: {', '.join(recipients)}\r\n".encode()
        # 0600 whatever the umask: a sent mail names the child (initials) and the case
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(envelope + raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)


class SmtpRelaySender:
    def __init__(self, relay: RelaySettings, *, tokens: TokenProvider | None = None) -> None:
        self.relay = relay
        #: OAuth2 (AUTH XOAUTH2) sign-in; None: username and password.
        self.tokens = tokens if tokens is not None else provider_for(relay.auth, relay.username or "",
                                                                     account="relay")

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.relay.ca_file) if self.relay.ca_file else None)
        if not self.relay.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def send(self, sender: str, recipients: list[str], raw: bytes, *, name_hint: str) -> None:
        with self.batch() as connected:
            connected.send(sender, recipients, raw, name_hint=name_hint)

    @contextmanager
    def batch(self) -> Iterator[_Connection]:
        """Sends over one connection, opened at the first send and again after a failure."""
        connection = _Connection(self)
        try:
            yield connection
        finally:
            connection.close()

    def connect(self) -> smtplib.SMTP:
        r = self.relay
        client: smtplib.SMTP
        if r.security == "ssl":
            client = smtplib.SMTP_SSL(r.host, r.port, timeout=r.timeout_seconds, context=self._context())
        else:
            client = smtplib.SMTP(r.host, r.port, timeout=r.timeout_seconds)
        try:
            client.ehlo()
            if r.security == "starttls":
                client.starttls(context=self._context())
                client.ehlo()
            if self.tokens is not None:
                self._xoauth2(client)
            elif r.username:
                client.login(r.username, r.login_password())
        except BaseException:
            client.close()
            raise
        return client

    def _xoauth2(self, client: smtplib.SMTP) -> None:
        assert self.tokens is not None
        user = self.relay.username or ""
        try:
            _auth_xoauth2(client, user, self.tokens.token().value)
        except smtplib.SMTPAuthenticationError:
            # The relay refused a token we still thought valid: one fresh one, same session.
            try:
                _auth_xoauth2(client, user, self.tokens.token(force_refresh=True).value)
            except smtplib.SMTPAuthenticationError as exc:
                # A fresh token refused is the app's permissions, not this message: keep it queued
                # while the administrator fixes them (Exchange applies changes within an hour).
                raise DeliveryError(f"relay refused the OAuth2 token: SMTP {exc.smtp_code}") from exc


def _auth_xoauth2(client: smtplib.SMTP, user: str, token: str) -> None:
    # On failure the server sends a 334 with a JSON error; the client answers with an empty line
    # and the server then gives the 535 (the SASL XOAUTH2 exchange).
    client.auth("XOAUTH2", lambda challenge=None: xoauth2_string(user, token) if challenge is None else "",
                initial_response_ok=True)


class _Connection:
    """One relay connection for a batch of sends. Any failure but a refusal of recipients drops it
    (the next send connects again): its state after an error is not worth guessing."""

    def __init__(self, relay: SmtpRelaySender) -> None:
        self.relay = relay
        self.client: smtplib.SMTP | None = None

    def send(self, sender: str, recipients: list[str], raw: bytes, *, name_hint: str) -> None:
        try:
            if self.client is None:
                self.client = self.relay.connect()
            refused = self.client.sendmail(sender, recipients, raw)
        except smtplib.SMTPRecipientsRefused as exc:
            permanent = all(code >= 500 for code, _ in exc.recipients.values())
            raise DeliveryError(f"all recipients refused: {sorted(exc.recipients)}", permanent=permanent) from exc
        except Exception as exc:
            self.close()
            error = _delivery_error(exc)
            if error is exc:
                raise
            raise error from exc
        if refused:
            # Partial refusal: the accepted ones have it; retrying would send twice to them.
            codes = {addr: code for addr, (code, _msg) in refused.items()}
            raise DeliveryError(f"recipients refused: {codes}", permanent=True)

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()


def _delivery_error(exc: Exception) -> Exception:
    """What a failed send is, for the outbox: a DeliveryError (retried unless permanent), or the
    exception itself if it is none of ours to judge."""
    if isinstance(exc, smtplib.SMTPResponseException):
        return DeliveryError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", permanent=exc.smtp_code >= 500)
    if isinstance(exc, (OSError, smtplib.SMTPException)):
        return DeliveryError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, TokenError):  # retried with backoff: the administrator may be fixing the app
        return DeliveryError(f"no OAuth2 token: {exc.code}")
    if isinstance(exc, ValueError):  # a secret's variable or file is missing
        return DeliveryError(f"relay credentials: {exc}")
    return exc
