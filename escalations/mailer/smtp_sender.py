"""Delivery edges: an SMTP relay (STARTTLS/SSL, AUTH) or, with no relay configured, .eml files."""

from __future__ import annotations

import os
import re
import smtplib
import ssl
import threading
import time
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


#: How long the service keeps its relay connection open after a batch, for the next one: a burst of
#: mail (a backlog, the morning's digests) then goes over one connection instead of a connection, TLS
#: handshake and sign-in per outbox run (every 0.1 s while mail keeps coming). Well under relays' own
#: idle limits (Postfix: 300 s). One-off commands keep none (``keep_alive`` 0).
KEEP_ALIVE_SECONDS = 30.0
#: After this many mails a kept connection is closed and the next batch opens a new one: some relays
#: limit the messages of one session.
MAX_PER_CONNECTION = 100
#: Nor is one kept longer than this since it signed in, however steadily mail comes: an OAuth2 access
#: token lives about an hour, and a relay may refuse a session whose sign-in has expired.
MAX_CONNECTION_SECONDS = 300.0


class SmtpRelaySender:
    def __init__(self, relay: RelaySettings, *, tokens: TokenProvider | None = None,
                 keep_alive: float = 0.0) -> None:
        self.relay = relay
        #: OAuth2 (AUTH XOAUTH2) sign-in; None: username and password.
        self.tokens = tokens if tokens is not None else provider_for(relay.auth, relay.username or "",
                                                                     account="relay")
        #: Seconds a connection is kept after a batch for the next (0: closed after each batch).
        self.keep_alive = keep_alive
        self._kept: _Connection | None = None
        #: The kept connection is one thread's at a time; a batch that finds it taken opens its own.
        self._kept_lock = threading.Lock()

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
        """Sends over one connection, opened at the first send and again after a failure. With
        ``keep_alive``, the connection stays open afterwards for the next batch, which first checks
        it (:meth:`_Connection.resume`)."""
        if self.keep_alive <= 0 or not self._kept_lock.acquire(blocking=False):
            connection = _Connection(self)
            try:
                yield connection
            finally:
                connection.close()
            return
        try:
            connection, self._kept = self._kept or _Connection(self), None
            connection.resume(self.keep_alive)
            try:
                yield connection
            except BaseException:
                connection.close()
                raise
            connection.idle_since = time.monotonic()
            self._kept = connection if connection.client is not None else None
        finally:
            self._kept_lock.release()

    def close_idle(self) -> None:
        """Close the kept connection if it has been idle ``keep_alive`` seconds (the outbox asks after
        every run, so a quiet service holds no connection for long)."""
        if not self._kept_lock.acquire(blocking=False):
            return
        try:
            if self._kept is not None and time.monotonic() - self._kept.idle_since >= self.keep_alive:
                self._kept.close()
                self._kept = None
        finally:
            self._kept_lock.release()

    def close(self) -> None:
        """Close the kept connection (QUIT), if any: the service is stopping. A batch still under way
        (a thread that did not stop in time) is not waited for: its connection goes with the process."""
        if not self._kept_lock.acquire(blocking=False):
            return
        try:
            if self._kept is not None:
                self._kept.close()
                self._kept = None
        finally:
            self._kept_lock.release()

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
        #: Mails sent since this connection was opened, and when (time.monotonic()) it was.
        self.sent = 0
        self.opened_at = 0.0
        #: time.monotonic() when its last batch ended (a kept connection).
        self.idle_since = 0.0

    def resume(self, keep_alive: float) -> None:
        """Before a kept connection carries another batch: closed if it sat idle too long or has
        carried its share (:data:`MAX_PER_CONNECTION`, :data:`MAX_CONNECTION_SECONDS`), else asked for a
        NOOP. Any answer but 250 (the relay closed it meanwhile, or is closing it) closes it, and the
        first send connects again: a NOOP carries no mail, so nothing can be sent twice."""
        if self.client is None:
            return
        now = time.monotonic()
        if now - self.idle_since >= keep_alive or self.sent >= MAX_PER_CONNECTION \
                or now - self.opened_at >= MAX_CONNECTION_SECONDS:
            self.close()
            return
        try:
            code = self.client.noop()[0]
        except (OSError, smtplib.SMTPException):
            code = 0
        if code != 250:
            self.close()

    def send(self, sender: str, recipients: list[str], raw: bytes, *, name_hint: str) -> None:
        try:
            if self.client is None:
                self.client = self.relay.connect()
                self.sent, self.opened_at = 0, time.monotonic()
            refused = self.client.sendmail(sender, recipients, raw)
            self.sent += 1
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
