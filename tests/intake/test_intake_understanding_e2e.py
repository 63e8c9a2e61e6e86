"""Referrals as practitioners write them, through the running service over real SMTP: a letter with
no form labels, a timescale in words (read, and unreadable), a Word form filled in with content
controls, and a signature under the concern. Each asserts the case, the mail that went out (to whom,
with no child's name in it) and what the coordinator was told."""

from __future__ import annotations

import io
import smtplib
import threading
from collections.abc import Iterator
from datetime import date
from email.message import EmailMessage

import pytest
from sqlmodel import select

from escalations.app import App
from escalations.cases.models import CoordinatorNotice
from tests.conftest import AppFactory
from tests.parsers.docx_forms import content_control_form
from tests.servers.smtp import Captured, SmtpCapture

pytestmark = pytest.mark.servers

CHSCP = "chscp@hackney.gov.uk"
SENDER = "jo.bloggs@school.example.org"
COORDINATOR = "chscp.business-manager@example.org"


@pytest.fixture
def running(make_app: AppFactory, smtp_capture: SmtpCapture) -> Iterator[App]:
    app = make_app(relay_port=smtp_capture.port)
    stop = threading.Event()
    started = threading.Event()
    t = threading.Thread(target=app.run, args=(stop,), kwargs={"on_started": lambda _a: started.set()}, daemon=True)
    t.start()
    assert started.wait(20), "service did not start"
    yield app
    stop.set()
    t.join(20)


def submit(app: App, msg: EmailMessage, rcpt: str = CHSCP) -> None:
    assert app.smtp_port
    raw = bytes(msg).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    with smtplib.SMTP("127.0.0.1", app.smtp_port, timeout=20) as c:
        c.sendmail(SENDER, [rcpt], raw)


def letter(body: str, *, message_id: str, subject: str = "Escalation") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Jo Bloggs <{SENDER}>"
    msg["To"] = CHSCP
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    msg["Date"] = "Tue, 03 Nov 2026 09:55:00 +0000"
    msg.set_content(body)
    return msg


def notices(app: App) -> list[CoordinatorNotice]:
    with app.store.session() as s:
        return list(s.exec(select(CoordinatorNotice)).all())


def no_name(m: Captured, *names: str) -> None:
    for name in names:
        assert name.encode() not in m.raw, name


FREE_TEXT = (
    "Hello,\n\n"
    "I want to escalate our disagreement with CSC about their decision to close the referral for Ava "
    "Testchild without an assessment. Her mother has told us twice that the new partner hits her.\n\n"
    "Kind regards\nJo Bloggs\nHealth Visitor, Homerton\n07700 900123\n"
)


def test_free_text_escalation_opens_an_incomplete_case(running: App, smtp_capture: SmtpCapture) -> None:
    submit(running, letter(FREE_TEXT, message_id="<free-1@example.org>"))
    (ack,) = smtp_capture.wait_for(1, template="referral_incomplete")
    (case,) = running.store.list_cases()
    assert case.status == "incomplete"
    assert ack.rcpt_tos == [SENDER]
    body = ack.message.get_content()
    assert case.reference in body and case.reference in ack.message["Subject"]
    assert "CSC" in body  # what was understood
    for label in ("Name of child(ren): ...", "Outcome sought: ...", "Role of referrer: ..."):
        assert label in body
    no_name(ack, "Ava", "Testchild")
    # the coordinator hears of it in the digest (not a mail of its own: nobody said immediate risk)
    assert [n.kind for n in notices(running)] == ["free_text_referral"]
    assert not smtp_capture.of_template("referral_urgent_alert")
    # queued now, unless the running service's own tick (App.tick) has just queued it: once either way
    queued = running.workflow.send_digests(running.clock.now())
    running.wake_outbox.set()
    (digest,) = smtp_capture.wait_for(1, template="coordinator_digest")
    assert queued in (0, 1) and all(n.digested_at is not None for n in notices(running))
    assert running.workflow.send_digests(running.clock.now()) == 0  # at most one an hour
    assert digest.rcpt_tos == [COORDINATOR]
    assert "written without the form" in digest.message.get_content()
    no_name(digest, "Ava", "Testchild")
    # the sender answers with the form's labels; the case opens at its first stage
    reply = letter("INFO\nName of child(ren): Ava Testchild\nOutcome sought: A child and family assessment.\n",
                   message_id="<free-2@example.org>", subject=f"Re: {ack.message['Subject']}")
    reply["In-Reply-To"] = ack.message["Message-ID"]
    submit(running, reply, rcpt=ack.message["Reply-To"] or CHSCP)
    smtp_capture.wait_for(1, template="stage_request")
    (case,) = running.store.list_cases()
    assert case.status == "open"
    for m in smtp_capture.messages:
        no_name(m, "Ava Testchild", "Testchild")


def test_free_text_saying_immediate_risk_tells_the_coordinator_at_once(running: App,
                                                                      smtp_capture: SmtpCapture) -> None:
    body = ("We need to escalate a disagreement with Hackney Children's Social Care today: Ava Testchild is at "
            "immediate risk of harm if she goes home tonight and nobody has acted.\n\nJo Bloggs\n")
    submit(running, letter(body, message_id="<urgent-free-1@example.org>"))
    (alert,) = smtp_capture.wait_for(1, template="referral_urgent_alert")
    (ack,) = smtp_capture.wait_for(1, template="referral_incomplete")
    (case,) = running.store.list_cases()
    assert case.status != "awaiting_information" and case.immediate_risk
    assert alert.rcpt_tos == [COORDINATOR] and ack.rcpt_tos == [SENDER]
    assert "immediate risk" in alert.message.get_content()
    assert "immediate risk" in ack.message.get_content()
    (notice,) = notices(running)
    assert notice.kind == "free_text_referral" and notice.detail == {"immediate_risk": True}
    for m in smtp_capture.messages:
        no_name(m, "Ava", "Testchild")


FORM = (
    "Name of child(ren): Ava Testchild\n"
    "Name of practitioner and agency with which there is a concern: Sam Smith, Hackney Children's Social Care\n"
    "Brief description of nature of concern: Referral closed with no assessment.\n"
    "Outcome sought: A strategy discussion.\n"
)


def test_timescale_in_words_sets_the_deadline(running: App, smtp_capture: SmtpCapture) -> None:
    body = FORM + "Timescale: before Ava returns home at the weekend\n"
    submit(running, letter(body, message_id="<words-1@example.org>"))
    (ack,) = smtp_capture.wait_for(1, template="referral_acknowledged")
    (case,) = running.store.list_cases()
    # received Tuesday 3 November 2026: the Friday before the weekend
    assert case.fields["needed_by"] == "2026-11-06"
    assert case.status == "open" and case.due_at is not None
    assert case.due_at.date() <= date(2026, 11, 6)
    assert "Friday 06 November 2026" in ack.message.get_content()
    assert not [n for n in notices(running) if n.kind == "timescale_unread"]
    for m in smtp_capture.messages:
        no_name(m, "Ava", "Testchild")


def test_unreadable_timescale_is_quoted_redacted_and_asked_for(running: App, smtp_capture: SmtpCapture) -> None:
    body = FORM + "Timescale: before Ava's next contact with Marcus\n"
    submit(running, letter(body, message_id="<words-2@example.org>"))
    (ack,) = smtp_capture.wait_for(1, template="referral_acknowledged")
    (case,) = running.store.list_cases()
    assert case.fields["needed_by"] is None
    text = ack.message.get_content()
    assert "could not read as a date" in text
    assert "before A.T.'s next contact with M." in text or "before A. next contact with M." in text
    assert "Timescale that protects the child (date): ..." in text
    no_name(ack, "Ava", "Testchild", "Marcus")
    assert [n.kind for n in notices(running)] == ["timescale_unread"]
    # queued now, unless the running service's own tick (App.tick) has just queued it: once either way
    queued = running.workflow.send_digests(running.clock.now())
    running.wake_outbox.set()
    (digest,) = smtp_capture.wait_for(1, template="coordinator_digest")
    assert queued in (0, 1) and all(n.digested_at is not None for n in notices(running))
    assert running.workflow.send_digests(running.clock.now()) == 0  # at most one an hour
    assert "could not be read as a date" in digest.message.get_content()
    no_name(digest, "Ava", "Marcus")


def test_word_form_with_content_controls_and_a_signature(running: App, smtp_capture: SmtpCapture) -> None:
    msg = letter("Please see the attached escalation form.\n\nJo Bloggs\n", message_id="<docx-sdt-1@example.org>")
    buf = io.BytesIO()
    content_control_form(concern="Referral closed with no assessment.\nJo Bloggs\nHealth Visitor, Homerton"
                         ).save(buf)
    msg.add_attachment(buf.getvalue(), maintype="application",
                       subtype="vnd.openxmlformats-officedocument.wordprocessingml.document", filename="form.docx")
    submit(running, msg)
    (ack,) = smtp_capture.wait_for(1, template="referral_acknowledged")
    (case,) = running.store.list_cases()
    assert case.status == "open"
    assert case.fields["child_names"] == ["Ava Testchild"]
    assert case.fields["concern"] == "Referral closed with no assessment."
    assert case.fields["other_agency"] == "Hackney Children's Social Care"
    assert case.fields["head_of_service_contacted"] is False
    assert ack.rcpt_tos == [SENDER]
    assert "Homerton" not in ack.message.get_content()
    for m in smtp_capture.messages:
        no_name(m, "Ava", "Testchild")


def test_signature_under_the_concern_does_not_reach_the_field(running: App, smtp_capture: SmtpCapture) -> None:
    body = FORM.replace("Brief description of nature of concern: Referral closed with no assessment.\n",
                        "Brief description of nature of concern: Referral closed with no assessment.\n"
                        "Jo Bloggs Health Visitor, Homerton\n")
    submit(running, letter(body, message_id="<sig-1@example.org>"))
    (ack,) = smtp_capture.wait_for(1, template="referral_acknowledged")
    (case,) = running.store.list_cases()
    assert case.fields["concern"] == "Referral closed with no assessment."
    assert case.status == "open" and ack.rcpt_tos == [SENDER]
    assert "Homerton" not in ack.message.get_content()
    assert not notices(running)
    for m in smtp_capture.messages:
        no_name(m, "Ava", "Testchild")
