"""End to end over real SMTP: referral in through aiosmtpd intake, acknowledgement out through a
capturing relay — on SQLite and on PostgreSQL."""

from __future__ import annotations

import smtplib
import threading
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from escalations.app import App
from tests.conftest import AppFactory
from tests.servers.smtp import SmtpCapture

pytestmark = pytest.mark.servers

CHILD = "Poppy Testchild"
ACK = "referral_acknowledged"


def referral(mailbox: str = "chscp@hackney.gov.uk", *, message_id: str = "<ref-1@example.org>",
             child: str = CHILD) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Jo Bloggs <jo.bloggs@school.example.org>"
    msg["To"] = mailbox
    msg["Subject"] = f"Escalation about {child}"  # practitioners do put names in subjects
    msg["Message-ID"] = message_id
    msg["Date"] = "Tue, 03 Nov 2026 09:55:00 +0000"
    msg.set_content(
        f"Name of child(ren): {child}\n"
        "Date of birth: 02/03/2015\n"
        "Name of practitioner and agency with which there is a concern: Sam Smith, Hackney Children's Social Care\n"
        "Brief description of nature of concern: Referral closed with no assessment despite repeated disclosures.\n"
        "Outcome sought: A strategy discussion and a child and family assessment.\n"
        "Name of referrer: Jo Bloggs\n"
    )
    return bytes(msg)


@pytest.fixture
def running(make_app: AppFactory, database_url: str, smtp_capture: SmtpCapture) -> Iterator[App]:
    app = make_app(database_url, relay_port=smtp_capture.port)
    stop = threading.Event()
    started = threading.Event()
    t = threading.Thread(target=app.run, args=(stop,), kwargs={"on_started": lambda _a: started.set()}, daemon=True)
    t.start()
    assert started.wait(20), "service did not start"
    yield app
    stop.set()
    t.join(20)


def submit(app: App, raw: bytes, rcpt: str = "chscp@hackney.gov.uk") -> None:
    assert app.smtp_port
    with smtplib.SMTP("127.0.0.1", app.smtp_port, timeout=20) as c:
        c.sendmail("jo.bloggs@school.example.org", [rcpt], raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def test_referral_is_acknowledged_once(running: App, smtp_capture: SmtpCapture,
                                       caplog: pytest.LogCaptureFixture) -> None:
    submit(running, referral())
    (ack,) = smtp_capture.wait_for(1, template=ACK)
    msg = ack.message
    assert ack.rcpt_tos == ["jo.bloggs@school.example.org"]
    assert msg["Subject"].startswith("[CH-") and "Testchild" not in msg["Subject"]
    body = msg.get_content()
    assert "P.T." in body and CHILD not in body
    assert "Hackney Children's Social Care" in body
    assert msg["Auto-Submitted"] == "auto-replied"
    # the same mail again (client retry) — still one case, one acknowledgement
    submit(running, referral())
    running.wake_processor.set()
    cases = running.store.list_cases()
    assert len(cases) == 1 and cases[0].status == "open"
    acks = [m for m in running.store.list_outbox() if m.template.startswith(ACK)]
    assert len(acks) == 1
    # every mail of the case carries the reference and never the child's name
    for m in smtp_capture.wait_for(2):
        assert m.message["Subject"].startswith(msg["Subject"][:14]) and CHILD not in m.message["Subject"]
        assert CHILD.encode() not in m.raw
    assert CHILD not in caplog.text and "Testchild" not in caplog.text


def test_unknown_recipient_is_refused(running: App) -> None:
    assert running.smtp_port
    with smtplib.SMTP("127.0.0.1", running.smtp_port, timeout=20) as c, pytest.raises(
        smtplib.SMTPRecipientsRefused
    ):
        c.sendmail("x@example.org", ["someone@example.net"], referral())


def test_sub_addressed_mailbox_is_accepted(running: App, smtp_capture: SmtpCapture) -> None:
    submit(running, referral("chscp@hackney.gov.uk"), rcpt="chscp+abc@hackney.gov.uk")
    smtp_capture.wait_for(1, template=ACK)
    assert len(running.store.list_cases()) == 1


def test_incomplete_referral_asks_for_missing_fields(running: App, smtp_capture: SmtpCapture) -> None:
    msg = EmailMessage()
    msg["From"] = "pc.jones@police.example.org"
    msg["To"] = "suttonLSCP@sutton.gov.uk.cjsm.net"
    msg["Subject"] = "Escalation"
    msg["Message-ID"] = "<sutton-1@example.org>"
    msg.set_content("Name of child/ children: Kai Testchild\nName of practitioner and agency with which there is a "
                    "concern: Sutton CSC\nBrief description of nature of concern: No strategy meeting held.\n")
    submit(running, bytes(msg), rcpt="suttonlscp@sutton.gov.uk.cjsm.net")
    (ack,) = smtp_capture.wait_for(1, template="referral_incomplete")
    body = ack.message.get_content()
    assert ack.message["Subject"].startswith("[SUT-")
    for label in ("Outcome sought", "Mosaic ID no.", "Date of birth"):
        assert label in body
    case = running.store.list_cases()[0]
    assert case.status == "awaiting_information"
    assert set(case.missing) == {"outcome_sought", "child_id", "child_dobs"}
