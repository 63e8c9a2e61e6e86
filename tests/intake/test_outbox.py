"""The outbox against a real SMTP server (aiosmtpd): fixed Message-IDs, retries, file capture."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from escalations.cases.store import Store, make_engine
from escalations.clock import FakeClock
from escalations.mailer.outbox import OutboxDispatcher, Renderer, enqueue
from escalations.mailer.smtp_sender import FileSender, SmtpRelaySender
from escalations.routing.redact import Redactor
from escalations.routing.workflow.state import OutgoingMail
from escalations.settings import RelaySettings
from tests.servers.smtp import SmtpCapture

pytestmark = pytest.mark.servers


def _mail(key: str = "ack:1") -> OutgoingMail:
    ctx = {"reference": "CH-2026-0001", "partnership_name": "City & Hackney", "mailbox": "chscp@hackney.gov.uk",
           "child_initials": "A.T.", "child_count": 1, "other_agency": "Police", "other_practitioner": "",
           "concern_summary": "summary", "outcome_sought": "a strategy meeting", "immediate_risk": False,
           "missing": [], "raised_by_name": "Jo Bloggs"}
    return OutgoingMail(template="referral_acknowledged.txt.j2", to=("jo@example.org",),
                        subject="[CH-2026-0001] Escalation referral received", context=ctx, dedupe_key=key,
                        reason="test", in_reply_to="orig@example.org", auto_submitted="auto-replied")


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Store:
    s = Store(make_engine(f"sqlite:///{tmp_path / 'o.sqlite3'}"), clock)
    s.create_schema()
    return s


def _queue(store: Store, clock: FakeClock, key: str = "ack:1") -> int | None:
    with store.session() as s:
        row = enqueue(s, _mail(key), renderer=Renderer(), redactor=Redactor.identity(), from_address="chscp@hackney.gov.uk",
                      from_name="City & Hackney", case_id=None, now=clock.now(), message_id_domain="test.invalid")
        s.commit()
        return row.id if row else None


def test_same_dedupe_key_queues_once(store: Store, clock: FakeClock) -> None:
    assert _queue(store, clock) is not None
    assert _queue(store, clock) is None
    assert len(store.list_outbox()) == 1


def test_sent_over_smtp_with_fixed_headers(store: Store, clock: FakeClock, smtp_capture: SmtpCapture) -> None:
    _queue(store, clock)
    sender = SmtpRelaySender(RelaySettings(host=smtp_capture.host, port=smtp_capture.port, security="none"))
    assert OutboxDispatcher(store, sender).send_due() == 1
    (got,) = smtp_capture.wait_for(1)
    row = store.list_outbox()[0]
    assert row.status == "sent"
    msg = got.message
    assert msg["Message-ID"] == f"<{row.message_id}>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<orig@example.org>"
    assert msg["Subject"] == "[CH-2026-0001] Escalation referral received"
    assert got.rcpt_tos == ["jo@example.org"]
    assert "CH-2026-0001" in msg.get_content()


def test_transient_failure_retries_with_same_message_id(store: Store, clock: FakeClock,
                                                        smtp_capture: SmtpCapture) -> None:
    _queue(store, clock)
    smtp_capture.handler.fail_next = 1
    sender = SmtpRelaySender(RelaySettings(host=smtp_capture.host, port=smtp_capture.port, security="none"))
    dispatcher = OutboxDispatcher(store, sender, backoff_initial=60)
    assert dispatcher.send_due() == 0
    row = store.list_outbox()[0]
    assert row.status == "pending" and row.attempts == 1 and "451" in (row.last_error or "")
    assert dispatcher.send_due() == 0  # not due yet: backoff
    clock.advance(timedelta(minutes=2))
    assert dispatcher.send_due() == 1
    (got,) = smtp_capture.wait_for(1)
    assert got.message["Message-ID"] == f"<{row.message_id}>"


def test_permanent_failure_stops(store: Store, clock: FakeClock, smtp_capture: SmtpCapture) -> None:
    _queue(store, clock)
    smtp_capture.handler.fail_next = 1
    smtp_capture.handler.fail_reply = "554 5.7.1 Rejected"
    sender = SmtpRelaySender(RelaySettings(host=smtp_capture.host, port=smtp_capture.port, security="none"))
    OutboxDispatcher(store, sender).send_due()
    row = store.list_outbox()[0]
    assert row.status == "failed" and "554" in (row.last_error or "")


def test_unreachable_relay_is_retried_not_lost(store: Store, clock: FakeClock) -> None:
    from tests.servers import free_port

    _queue(store, clock)
    sender = SmtpRelaySender(RelaySettings(host="127.0.0.1", port=free_port(), security="none", timeout_seconds=2))
    OutboxDispatcher(store, sender, max_attempts=3).send_due()
    row = store.list_outbox()[0]
    assert row.status == "pending" and row.attempts == 1


def test_file_sender_writes_eml(store: Store, clock: FakeClock, tmp_path: Path) -> None:
    _queue(store, clock)
    OutboxDispatcher(store, FileSender(tmp_path / "sent")).send_due()
    files = list((tmp_path / "sent").glob("*.eml"))
    assert len(files) == 1
    assert b"Message-ID: <" in files[0].read_bytes()
    assert not list((tmp_path / "sent").glob(".*.tmp"))
