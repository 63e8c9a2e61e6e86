"""Administrators hear once that a mailbox went silent and once that it is back, across restarts;
coordinators get a daily digest of what needs a person."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from escalations.cases.models import MailboxHealth
from escalations.clock import FakeClock
from escalations.mailer.outbox import Renderer
from escalations.policy_files import load_config
from escalations.routing.workflow.operations import DailyDigest, compose_daily_digest
from tests.conftest import CONFIG_DIR, AppFactory
from tests.intake.test_service_imap import serving
from tests.intake.test_service_smtp import CHILD, referral
from tests.servers import wait_until
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import SmtpCapture

ALERT = "admin_mailbox_alert"
ADMIN = "it-service-desk@council.example.org"


def last_ok(app: object) -> datetime | None:
    with app.store.reading() as s:  # type: ignore[attr-defined]
        row = s.exec(select(MailboxHealth).where(MailboxHealth.name == "test")).first()
        return row.last_ok_at if row else None


@pytest.mark.servers
def test_one_alert_and_one_recovery_per_incident_across_restart(
        make_app: AppFactory, sqlite_url: str, smtp_capture: SmtpCapture, dovecot: DovecotServer,
        clock: FakeClock) -> None:
    def service() -> object:
        return make_app(sqlite_url, relay_port=smtp_capture.port, admin_emails=[ADMIN],
                        mailboxes=[dovecot.mailbox_settings(reconnect_initial_seconds=0.1,
                                                            reconnect_max_seconds=0.3)])

    with serving(service()) as app:  # type: ignore[arg-type]
        wait_until(lambda: last_ok(app) is not None, timeout=20, what="first contact")
        dovecot.stop()
        clock.advance(timedelta(minutes=16))
        app.tick()
        app.tick()
        smtp_capture.wait_for(1, template=ALERT)
    with serving(service()) as app:  # type: ignore[arg-type]  # a restart while the mailbox is still down
        app.tick()
        clock.advance(timedelta(minutes=30))
        app.tick()
        assert len(smtp_capture.of_template(ALERT)) == 1
        down = smtp_capture.of_template(ALERT)[0]
        assert down.rcpt_tos == [ADMIN] and "no contact" in down.message["Subject"]
        dovecot.start()
        back = clock.now()
        wait_until(lambda: (last_ok(app) or back - timedelta(1)) >= back, timeout=30, what="contact again")
        app.tick()
        app.tick()
        smtp_capture.wait_for(2, template=ALERT)
    alerts = smtp_capture.of_template(ALERT)
    assert len(alerts) == 2 and "recovered" in alerts[1].message["Subject"]


def test_daily_digest_renders_and_lists_quarantine_by_code() -> None:
    p = load_config(CONFIG_DIR).partnerships["city-and-hackney"]
    now = datetime(2026, 11, 4, 8, 5, tzinfo=UTC)
    digest = DailyDigest(quarantined=[(now - timedelta(hours=3), "not_a_referral"),
                                      (now - timedelta(hours=2), "not_a_referral"),
                                      (now - timedelta(hours=1), "automated_no_case:bounce")],
                         incomplete=[("CH-2026-0007", now - timedelta(days=2), ("child_dobs", "consent"))],
                         needs_routing=[("CH-2026-0008", now - timedelta(days=1))],
                         bounces=[("CH-2026-0003", "someone@agency.example.org", now - timedelta(hours=5))])
    mails = compose_daily_digest(p, digest, now)
    assert [m.to for m in mails] == [(c.email,) for c in p.coordinator()]
    body = Renderer().render(mails[0].template, {**mails[0].context, "full_details": False})
    assert "not_a_referral: 2" in body and "automated_no_case:bounce: 1" in body
    assert "CH-2026-0007" in body and "missing: Date of birth, consent" in body
    assert "CH-2026-0008" in body and "someone@agency.example.org" in body
    assert mails[0].subject == "Escalations: 6 items need a person (2026-11-04)"
    assert compose_daily_digest(p, DailyDigest([], [], [], []), now) == []


def test_daily_digest_sent_once_at_its_time(make_app: AppFactory, clock: FakeClock) -> None:
    app = make_app()
    app.ingest(referral(mailbox="chscp@hackney.gov.uk").replace(b"Subject:", b"X-Old-Subject:", 1))
    app.ingest(b"From: a@example.org\r\nTo: chscp@hackney.gov.uk\r\nSubject: hi\r\nList-Id: <x.example.org>\r\n"
               b"\r\nhello\r\n")
    app.process_pending()
    clock.set(datetime(2026, 11, 4, 7, 59, tzinfo=UTC))  # GMT in November: 07:59 local
    assert app.tick()["daily_digests"] == 0
    clock.set(datetime(2026, 11, 4, 8, 1, tzinfo=UTC))
    assert app.tick()["daily_digests"] >= 1
    assert app.tick()["daily_digests"] == 0
    mails = [m for m in app.store.list_outbox() if m.template == "daily_digest.txt.j2"]
    assert mails and all(CHILD not in m.subject for m in mails)
    body = mails[0].raw.decode()
    assert "mailing_list: 1" in body
    assert CHILD not in body
