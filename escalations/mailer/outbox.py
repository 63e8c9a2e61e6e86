"""The outbox: outgoing mail becomes a row in the caller's transaction, and is sent after commit.

The Message-ID is fixed when the row is created, so a retry after a crash re-sends the same
message, which the recipient's client shows once.
"""

from __future__ import annotations

import bisect
import contextlib
import email.policy
import functools
import random
import re
import threading
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import quoprimime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from typing import TYPE_CHECKING, Any

import structlog
from jinja2 import Environment, PackageLoader, StrictUndefined
from sqlmodel import Session, col, select

from escalations.cases.models import OutboxMessage
from escalations.cases.prepared import Prepared, dialect_insert
from escalations.cases.repository import OutboxToSend
from escalations.cases.store import Store
from escalations.cases.wakeups import OUTBOX, announce
from escalations.mailer.smtp_sender import DeliveryError, MailSender, SmtpRelaySender, batch_of
from escalations.routing.policy.model import SecureRoute
from escalations.routing.redact import Redactor
from escalations.routing.workflow.state import OutgoingMail

if TYPE_CHECKING:
    from escalations.records.attach import Attachment

log = structlog.get_logger("escalations.outbox")


class Renderer:
    """Jinja2 mail bodies under escalations/templates; undefined variables are errors, not blanks."""

    def __init__(self, case_page_base: str | None = None) -> None:
        self.env = Environment(
            loader=PackageLoader("escalations", "templates"),
            undefined=StrictUndefined,
            autoescape=False,  # plain-text mail
            keep_trailing_newline=True,
            trim_blocks=False,
            # Templates are read once: files replaced under a running service (a deploy before the
            # restart) must not meet code that gives them a different context.
            auto_reload=False,
        )
        # web.public_url: every case mail's footer links to the case page (the reference only).
        self.env.globals["case_page_base"] = (case_page_base or "").rstrip("/")

    def render(self, template: str, context: Mapping[str, Any]) -> str:
        return self.env.get_template(template).render(**context)


def new_message_id(domain: str) -> str:
    return f"{uuid.uuid4().hex}@{domain}"


_WIRE = SMTP.clone(max_line_length=200)


def build_message(
    *,
    mail: OutgoingMail,
    body: str,
    from_address: str,
    from_name: str,
    message_id: str,
    date: datetime,
    reply_to: str | None = None,
    attachments: Sequence[Attachment] = (),
) -> bytes:
    headers = _headers(mail, from_address=from_address, from_name=from_name, message_id=message_id, date=date,
                       reply_to=reply_to)
    if not attachments and all(_plain_header(v) for _, v in headers):
        return _plain_message(headers, body)
    msg = EmailMessage()
    for name, value in headers:
        msg[name] = value
    msg.set_content(body, charset="utf-8", cte="quoted-printable")
    for a in attachments:  # forms, only on a secure route (records/attach.py decides)
        msg.add_attachment(a.data, maintype=a.maintype, subtype=a.subtype, filename=a.filename)
    # CRLF line ends, as sent on the wire. Headers fold at 200, not 78: Python folds a 70-odd
    # character subject onto a continuation line of its own, which some readers show with a
    # leading space; RFC 5322 2.1.1 allows up to 998 (78 is a SHOULD for display).
    return msg.as_bytes(policy=_WIRE)


def _headers(mail: OutgoingMail, *, from_address: str, from_name: str, message_id: str, date: datetime,
             reply_to: str | None) -> list[tuple[str, str]]:
    headers = [("From", formataddr((from_name, from_address))), ("To", ", ".join(mail.to))]
    if mail.cc:
        headers.append(("Cc", ", ".join(mail.cc)))
    if reply_to:
        headers.append(("Reply-To", reply_to))
    headers += [("Subject", mail.subject), ("Date", format_datetime(date)), ("Message-ID", f"<{message_id}>")]
    if mail.in_reply_to:
        headers += [("In-Reply-To", f"<{mail.in_reply_to}>"), ("References", f"<{mail.in_reply_to}>")]
    # RFC 3834: mark our mail so well-behaved responders do not answer it.
    headers += [("Auto-Submitted", mail.auto_submitted),
                ("X-Escalations-Template", mail.template.removesuffix(".txt.j2"))]
    return headers


#: A header value the stdlib would write out exactly as it is: printable ASCII, single spaces, short.
_PLAIN_VALUE = re.compile(r"[!-~]+(?: [!-~]+)*")


def _plain_header(value: str) -> bool:
    return len(value) <= 150 and _PLAIN_VALUE.fullmatch(value) is not None and '"' not in value \
        and "=?" not in value


def _plain_message(headers: list[tuple[str, str]], body: str) -> bytes:
    """What ``EmailMessage`` + ``set_content(cte="quoted-printable")`` + ``as_bytes(policy=_WIRE)`` make
    of headers that need no encoding or folding, without building the objects (most of a mail's cost)."""
    lines = b"\n".join(body.encode("utf-8").splitlines()) + b"\n"
    encoded = _qp_body(lines.decode("latin-1"), _BODY_LINE_LENGTH)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (head + _CONTENT_HEADERS + encoded.replace("\n", "\r\n")).encode("ascii")


#: What quoted-printable writes as "=XX" in a body (all but tab, line feed, space and printable ASCII
#: other than "=").
_QP_ESCAPED = re.compile(r"[^\t\n !-<>-~]")


@functools.lru_cache(maxsize=4)
def _qp_long_or_trailing(maxlinelen: int) -> re.Pattern[str]:
    """A line longer than ``maxlinelen``, or one ending in a space or tab."""
    return re.compile(rf"[^\n]{{{maxlinelen + 1}}}|[ \t]$", re.MULTILINE)


def _qp_body(text: str, maxlinelen: int) -> str:
    """``quoprimime.body_encode(text, maxlinelen)`` for a text of latin-1 characters split by "\n" only:
    the characters to escape found by a pattern (a few in a mail; the stdlib translates every character
    of the body, most of its cost), and a line left as it is when it is short and ends in no space or tab,
    which the stdlib leaves as it is too. Any other line, the stdlib encodes (lines are encoded one by
    one)."""
    escaped = _QP_ESCAPED.sub(lambda m: quoprimime.quote(m[0]), text)
    if _qp_long_or_trailing(maxlinelen).search(escaped) is None:
        return escaped
    out = []
    for line, original in zip(escaped.split("\n"), text.split("\n"), strict=True):
        if len(line) <= maxlinelen and line[-1:] not in (" ", "\t"):
            out.append(line)
        else:
            out.append(quoprimime.body_encode(original, maxlinelen))
    return "\n".join(out)


_CONTENT_HEADERS = ('Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n'
                    "MIME-Version: 1.0\r\n\r\n")
#: set_content encodes the body under the message's own policy (email.policy.default).
_BODY_LINE_LENGTH = email.policy.default.max_line_length or 78


def enqueue(
    session: Session,
    mail: OutgoingMail,
    *,
    renderer: Renderer,
    redactor: Redactor,
    secure_route: SecureRoute | None = None,
    from_address: str,
    from_name: str,
    case_id: int | None,
    now: datetime,
    message_id_domain: str,
    reply_to: str | None = None,
    footer: str = "",
    message_id: str | None = None,
    attachments: Sequence[Attachment] = (),
    note: str = "",
) -> Queued | None:
    """Add the row to the caller's transaction. Returns None if this dedupe key was queued before.

    The rendered body is redacted with ``redactor`` (the case's children as initials, no date of
    birth or ID), whatever the template's context quoted, unless every recipient is on the
    partnership's ``secure_route``. The footer's reply-code line is added after redaction, and so is
    ``note`` (about the forms: fixed wording, no case details). ``attachments`` go with the message as
    they are: the caller attaches only what the recipients may receive.
    """
    message_id = message_id or new_message_id(message_id_domain)
    full_details = secure_route is not None and secure_route.covers([*mail.to, *mail.cc])
    # The footer (in every template) says which of the two the body is.
    body = renderer.render(mail.template, {**mail.context, "full_details": full_details})
    if not full_details:
        body = redactor.redact(body)
    if note:
        body = body.rstrip("\n") + "\n\n" + note + "\n"
    if footer:
        body = body.rstrip("\n") + "\n" + footer + "\n"
    raw = build_message(mail=mail, body=body, from_address=from_address, from_name=from_name,
                        message_id=message_id, date=now, reply_to=reply_to, attachments=attachments)
    recipients = [*mail.to, *mail.cc]
    # Not the ORM's unit of work (the row is only ever written once, here; building a table model
    # cost more than the INSERT): a prepared INSERT; a dedupe key queued before (the same step
    # retried) inserts nothing.
    conn = session.connection()
    returned = _INSERT_OUTBOX.execute(conn, {
        "dedupe_key": mail.dedupe_key, "message_id": message_id, "case_id": case_id, "template": mail.template,
        "sender": from_address, "recipients": recipients, "subject": mail.subject, "raw": raw, "status": "pending",
        "priority": mail.priority, "attempts": 0, "next_attempt_at": now, "created_at": now}).fetchone()
    if returned is None or returned[0] is None:
        return None
    announce(conn, OUTBOX)  # other processes' outboxes, once this commits (PostgreSQL)
    return Queued(int(returned[0]), mail.dedupe_key, message_id, case_id, mail.template, from_address,
                  tuple(recipients), mail.subject, raw, mail.priority)


@dataclass(frozen=True)
class Queued:
    """The outbox row :func:`enqueue` wrote (status pending, no attempt yet), as written."""

    id: int
    dedupe_key: str
    message_id: str
    case_id: int | None
    template: str
    sender: str
    recipients: tuple[str, ...]
    subject: str
    raw: bytes
    priority: int


_OUTBOX_COLUMNS = ("dedupe_key", "message_id", "case_id", "template", "sender", "recipients", "subject", "raw",
                   "status", "priority", "attempts", "next_attempt_at", "created_at")


def _insert_outbox(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, for this dialect."""
    return dialect_insert(dialect)(OutboxMessage).on_conflict_do_nothing(index_elements=["dedupe_key"]) \
        .returning(col(OutboxMessage.id))


_INSERT_OUTBOX = Prepared(_insert_outbox, _OUTBOX_COLUMNS)


#: Rows claimed at a time; send_due keeps claiming until a batch comes back short.
BATCH = 20

#: Mails the relay has taken that may wait for their "sent" commit. Each is committed as soon as it is
#: sent, unless another writer of this process has the write lock (SQLite: the processor, opening a
#: case): then the next mail goes first, and after this many the outbox waits for its turn. Waiting
#: after every mail had held the outbox to one mail per case the processor opened while it made two,
#: so a backlog's acknowledgements went out late. A crash (the process killed in the middle of a
#: batch) re-sends at most this many, the one under way included, each with its own Message-ID.
UNMARKED_MAX = 4


def _addresses(recipients: Sequence[object]) -> set[str]:
    """The addresses a mail counts against the cap for: each once, however often it is listed."""
    return {str(r).strip().lower() for r in recipients}


#: The window of the per-address cap (ARCHITECTURE / issue 5: "cap mails per address per hour").
CAP_WINDOW = timedelta(hours=1)


class OutboxDispatcher:
    """Sends due rows, one at a time, with exponential backoff; a permanent failure stops retries.

    Loop protection: at most ``max_per_address_per_hour`` messages go to any one address in any
    hour. A row that would exceed it for one of its recipients is deferred, never dropped: it stays
    pending with ``next_attempt_at`` moved to when the oldest counted send leaves the window, and
    its attempts are not counted as failures. Threads of one process sending at once (the service's
    outbox thread and its tick, which sends what it queued) share the count, taken and checked in one
    step; two processes on one database each keep their own, so together they may pass it.
    """

    def __init__(
        self,
        store: Store,
        sender: MailSender,
        *,
        max_attempts: int = 8,
        backoff_initial: float = 30.0,
        backoff_max: float = 3600.0,
        max_per_address_per_hour: int | None = None,
    ) -> None:
        self.store = store
        self.sender = sender
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_per_address_per_hour = max_per_address_per_hour
        # Sends per address in the last hour, oldest first: loaded from the outbox once, then kept in
        # memory (querying every recent row before each send made a burst quadratic). An address is
        # dropped once its last send has left the hour (see _sweep), so this holds only the addresses
        # mailed in about the last two hours, however many a service mails over the years.
        self._window: dict[str, list[datetime]] | None = None
        self._window_lock = threading.Lock()
        self._swept_at: datetime | None = None
        #: Set at shutdown: the send under way finishes, the rest of the batch stays for the next start.
        self.stopping = threading.Event()

    def _recent(self, now: datetime) -> dict[str, list[datetime]]:
        if self._window is None:
            window: dict[str, list[datetime]] = defaultdict(list)
            # On SQLite, read in chunks: after a busy hour (a catch-up) that is thousands of rows, and
            # holding them all at once left ~4 MiB more in the process for good (fragmentation). On
            # PostgreSQL chunks would need a server-side cursor, in a transaction this read does not open.
            chunks = {"yield_per": 500} if self.store.engine.dialect.name == "sqlite" else {}
            with self.store.reading() as s:
                rows = s.exec(select(OutboxMessage.recipients, OutboxMessage.sent_at)
                              .where(OutboxMessage.status == "sent", col(OutboxMessage.sent_at) > now - CAP_WINDOW)
                              .order_by(col(OutboxMessage.sent_at)).execution_options(**chunks))
                for recips, sent in rows:
                    if sent is not None:
                        for address in _addresses(recips):
                            window[address].append(sent)
            self._window = window
        return self._window

    def _deferral(self, recipients: list[str], now: datetime) -> datetime | None:
        """When a message to ``recipients`` may go without passing the cap; None if it may go now (the
        caller holds the window's lock)."""
        cap = self.max_per_address_per_hour
        if not cap or cap <= 0:
            return None
        later: datetime | None = None
        window = self._recent(now)
        for address in _addresses(recipients):
            times = window.get(address)
            if not times:
                continue
            del times[:bisect.bisect_right(times, now - CAP_WINDOW)]
            if len(times) >= cap:
                free_at = times[len(times) - cap] + CAP_WINDOW
                later = free_at if later is None else max(later, free_at)
        return later

    def _reserve(self, recipients: list[str]) -> tuple[datetime | None, datetime]:
        """Count a send to ``recipients`` now if the cap lets it go now, else say when it may (first),
        and the time it was counted at (second): in one step, so that two threads sending at once (the
        service's outbox thread and a tick, which sends what it queued) cannot both take an address's
        last place in the hour. The clock is read under the lock, so each address's times stay in order.
        A send that then fails gives its place back (:meth:`_unreserve`)."""
        with self._window_lock:
            now = self.store.clock.now()
            if not self.max_per_address_per_hour:
                return None, now
            later = self._deferral(recipients, now)
            if later is None:
                window = self._recent(now)
                for address in _addresses(recipients):
                    window[address].append(now)
            self._sweep(now)
            return later, now

    def _sweep(self, now: datetime) -> None:
        """Once an hour, forget the addresses with no send left in the hour (the caller holds the lock).
        Each address's own times are trimmed when it is mailed again (_deferral); this drops the
        addresses that are not, which would otherwise stay for good, one entry per address ever mailed."""
        if self._window is None or (self._swept_at is not None and now - self._swept_at < CAP_WINDOW):
            return
        self._swept_at = now
        horizon = now - CAP_WINDOW
        for address in [a for a, times in self._window.items() if not times or times[-1] <= horizon]:
            del self._window[address]

    def _unreserve(self, recipients: list[str], at: datetime) -> None:
        if not self.max_per_address_per_hour:
            return
        with self._window_lock:
            window = self._recent(at)
            for address in _addresses(recipients):
                with contextlib.suppress(ValueError):
                    window[address].remove(at)

    def _defer(self, outbox_id: int, until: datetime) -> None:
        with self.store.session() as s:
            row = s.get(OutboxMessage, outbox_id)
            if row is not None and row.status == "sending":
                row.status, row.next_attempt_at = "pending", until
                row.last_error = f"deferred: more than {self.max_per_address_per_hour} messages to one address " \
                                 "in an hour"
                s.commit()

    def retry_delay(self, attempts: int) -> timedelta:
        base = min(self.backoff_max, self.backoff_initial * (2 ** max(0, attempts - 1)))
        return timedelta(seconds=base * random.uniform(0.8, 1.0))

    def send_due(self) -> int:
        """Send everything due now, batch after batch, so a burst is not paced by the caller's loop."""
        sent = 0
        while True:
            batch = self.store.claim_due_outbox(limit=BATCH)
            sent += self._send_batch(batch)
            if len(batch) < BATCH or self.stopping.is_set():
                break
        close_idle = getattr(self.sender, "close_idle", None)  # a relay connection kept for the next run
        if close_idle is not None:
            close_idle()
        return sent

    def keep_connections(self, seconds: float) -> None:
        """Keep the relay connection open this long after a run, for the next (the service does)."""
        if isinstance(self.sender, SmtpRelaySender):  # files need no connection
            self.sender.keep_alive = seconds

    def close(self) -> None:
        """Close a relay connection kept for the next run."""
        close = getattr(self.sender, "close", None)
        if close is not None:
            close()

    def _send_batch(self, batch: list[int]) -> int:
        """Send the claimed rows over one connection, each marked sent as soon as the relay took it and
        the write lock is free (see :data:`UNMARKED_MAX`); a failed one is marked as it fails."""
        rows = self.store.get_outboxes(batch)
        sent: list[OutboxToSend] = []
        unmarked: list[int] = []
        try:
            with batch_of(self.sender) as connection:
                for i, row in enumerate(rows):
                    if self.stopping.is_set():
                        released = self.store.release_outbox([r.id for r in rows[i:]])
                        log.info("outbox.released_at_stop", count=released)
                        break
                    if self._send_one(connection, row):
                        sent.append(row)
                        unmarked.append(row.id)
                        # the next mail goes while another writer has the lock, up to the bound
                        if self.store.mark_outboxes_sent(unmarked, wait=len(unmarked) >= UNMARKED_MAX):
                            unmarked.clear()
        finally:
            # an error after a send (the connection's QUIT, a failure's own mark) must not leave a sent
            # mail to be sent again
            self.store.mark_outboxes_sent(unmarked)
        if sent:
            log.info("outbox.sent", count=len(sent), outbox_ids=[r.id for r in sent])
        return len(sent)

    def _send_one(self, connection: MailSender, row: OutboxToSend) -> bool:
        oid = row.id
        until, reserved_at = self._reserve(list(row.recipients))
        if until is not None:
            self._defer(oid, until)
            log.warning("outbox.deferred", outbox_id=oid, message_id=row.message_id, until=until.isoformat(),
                        reason="per-address hourly cap")
            return False
        try:
            connection.send(row.sender, list(row.recipients), row.raw, name_hint=f"{oid:06d}-{row.message_id}")
        except DeliveryError as exc:
            self._unreserve(list(row.recipients), reserved_at)
            attempts = row.attempts + 1
            final = exc.permanent or attempts >= self.max_attempts
            retry_at = None if final else self.store.clock.now() + self.retry_delay(attempts)
            self.store.mark_outbox_failed(oid, str(exc), retry_at)
            log.warning("outbox.send_failed", outbox_id=oid, message_id=row.message_id, attempts=attempts,
                        permanent=exc.permanent, final=final, error=str(exc))
            return False
        except Exception as exc:  # never lose the row to an unexpected error
            self._unreserve(list(row.recipients), reserved_at)
            attempts = row.attempts + 1
            self.store.mark_outbox_failed(oid, f"{type(exc).__name__}: {exc}",
                                          self.store.clock.now() + self.retry_delay(attempts))
            log.exception("outbox.send_error", outbox_id=oid, message_id=row.message_id)
            return False
        return True
