"""The dispatcher of mail about the service: mailbox alerts to the administrators and each
coordinator's daily digest. Called from ``App.tick``; the composers are pure
(escalations/routing/workflow/operations.py); everything goes through the outbox."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from email.utils import getaddresses
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import update
from sqlmodel import Session, col, select

from escalations.cases.models import Case, CaseEvent, InboundMessage, MailboxHealth
from escalations.cases.store import Store
from escalations.mailer.outbox import Renderer, enqueue
from escalations.routing.policy.model import PolicyConfig
from escalations.routing.redact import Redactor
from escalations.routing.workflow.operations import DailyDigest, compose_daily_digest, compose_mailbox_alert
from escalations.routing.workflow.state import OutgoingMail

log = structlog.get_logger("escalations.operations")

LONDON = ZoneInfo("Europe/London")
#: The daily digest goes out in this window after its time (a service restarted at 08:20 still sends it).
DIGEST_WINDOW = timedelta(hours=1)
#: Quarantine reasons are our fixed codes; anything else is shown as this, never as text.
_CODE = re.compile(r"^[a-z0-9_.:-]{1,64}$")


def quarantine_code(error: str | None) -> str:
    first = (error or "").split("\n", 1)[0].strip()
    return first if _CODE.match(first) else "processing_error"


@dataclass
class Operations:
    store: Store
    config: PolicyConfig
    renderer: Renderer
    message_id_domain: str
    mailboxes: tuple[str, ...] = ()
    #: Mailbox name -> its address, to tell whose a quarantined message from that mailbox is.
    mailbox_addresses: dict[str, str] = field(default_factory=dict)
    admin_emails: tuple[str, ...] = ()
    admin_from: str | None = None
    alert_after: timedelta = timedelta(minutes=15)
    digest_at: time = time(8, 0)

    # ---- mailbox alerts -------------------------------------------------------------------

    def check_mailboxes(self, now: datetime) -> int:
        """Queue one alert per mailbox incident and one recovery mail; returns how many were queued."""
        queued = 0
        for name in self.mailboxes:
            with self.store.session() as s:
                row = s.get(MailboxHealth, name)
                if row is None:  # watching begins now: an incident is counted from here
                    s.add(MailboxHealth(name=name, since_at=now))
                    s.commit()
                    continue
                since_contact = now - (row.last_ok_at or row.since_at)
                down = since_contact >= self.alert_after
                if down == (row.down_alerted_at is not None):
                    continue  # no change: no mail, whatever the number of ticks or restarts
                # Only the process whose update changes the row sends the mail.
                taken = s.exec(update(MailboxHealth).where(
                    col(MailboxHealth.name) == name,
                    col(MailboxHealth.down_alerted_at).is_(None) if down else
                    col(MailboxHealth.down_alerted_at) == row.down_alerted_at)
                    .values(down_alerted_at=now if down else None))
                if taken.rowcount != 1:
                    s.rollback()
                    continue
                incident = (row.down_alerted_at or now).strftime("%Y%m%dT%H%M%S")
                log.warning("mailbox.no_contact" if down else "mailbox.recovered", account=name,
                            minutes=int(since_contact.total_seconds() // 60), error_code=row.last_error_code)
                if self.admin_emails:
                    mail = compose_mailbox_alert(mailbox=name, admins=self.admin_emails, down=down,
                                                 last_ok_at=row.last_ok_at, since=row.since_at,
                                                 error_code=row.last_error_code, now=now, tz=LONDON,
                                                 incident=incident)
                    queued += self._enqueue_admin(s, mail, now)
                s.commit()
        return queued

    def _enqueue_admin(self, s: Session, mail: OutgoingMail, now: datetime) -> int:
        sender = self.admin_from or next((p.primary_mailbox for p in self.config.partnerships.values()), None)
        if sender is None:
            return 0
        # No case data in it: nothing to redact.
        row = enqueue(s, mail, renderer=self.renderer, redactor=Redactor.identity(), from_address=sender,
                      from_name="Escalation service", case_id=None, now=now,
                      message_id_domain=self.message_id_domain)
        return 1 if row is not None else 0

    # ---- the daily digest -----------------------------------------------------------------

    def send_daily_digests(self, now: datetime) -> int:
        """Each partnership's digest once a day, in the hour after ``digest_at`` local time."""
        queued = 0
        for pid, p in self.config.partnerships.items():
            local = now.astimezone(p.tz)
            start = datetime.combine(local.date(), self.digest_at, tzinfo=p.tz)
            if not start <= local < start + DIGEST_WINDOW:
                continue
            with self.store.session() as s:
                digest = self.digest_for(s, pid, now)
                for mail in compose_daily_digest(p, digest, now):
                    if enqueue(s, mail, renderer=self.renderer, redactor=Redactor.identity(),
                               from_address=p.primary_mailbox, from_name=p.name, case_id=None, now=now,
                               message_id_domain=self.message_id_domain) is not None:
                        queued += 1
                s.commit()
        if queued:
            log.info("daily_digest.queued", mails=queued)
        return queued

    def partnership_of(self, row: InboundMessage) -> str | None:
        """Whose a quarantined message is: processing stopped before it said, mostly. The mailbox it
        came through, the SMTP envelope, else the partnership addresses in its To, Cc or Delivered-To."""
        if row.partnership:
            return row.partnership
        candidates = [*row.envelope_recipients]
        if row.account in self.mailbox_addresses:
            candidates.insert(0, self.mailbox_addresses[row.account])
        if not candidates:
            try:
                headers = BytesHeaderParser(policy=default_policy).parsebytes(row.raw, headersonly=True)
                fields = [str(v) for name in ("Delivered-To", "To", "Cc") for v in headers.get_all(name) or []]
                candidates = [a for _, a in getaddresses(fields)]
            except Exception:  # a header too broken to read: nobody's
                candidates = []
        for address in candidates:
            local, _, domain = address.partition("@")
            p = self.config.partnership_for_address(f"{local.split('+', 1)[0]}@{domain}")  # reply tokens ride on +
            if p is not None:
                return p.id
        return None

    def digest_for(self, s: Session, pid: str, now: datetime) -> DailyDigest:
        quarantined = [(r.received_at, quarantine_code(r.error)) for r in s.exec(
            select(InboundMessage).where(InboundMessage.status == "quarantined")
            .order_by(col(InboundMessage.received_at))).all() if self.partnership_of(r) == pid]
        cases = s.exec(select(Case).where(Case.partnership == pid, col(Case.status).in_(
            ["awaiting_information", "needs_routing"])).order_by(col(Case.opened_at))).all()
        refs = {c.id: c.reference for c in s.exec(select(Case).where(Case.partnership == pid)).all()}
        bounces = [(refs[e.case_id], str(e.detail.get("address") or ""), e.at) for e in s.exec(
            select(CaseEvent).where(CaseEvent.kind == "contact_flagged", col(CaseEvent.at) >= now - timedelta(days=1),
                                    col(CaseEvent.case_id).in_(list(refs)))).all()
            if e.detail.get("why") == "hard bounce"]
        return DailyDigest(
            quarantined=quarantined,
            incomplete=[(c.reference, c.opened_at, tuple(c.missing)) for c in cases
                        if c.status == "awaiting_information"],
            needs_routing=[(c.reference, c.opened_at) for c in cases if c.status == "needs_routing"],
            bounces=bounces)
