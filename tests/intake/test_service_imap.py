"""End to end over real IMAP: a partnership's mailbox on Dovecot watched by `App.run` (the code
behind `escalations run`), acknowledgements out through a capturing relay — on SQLite and on
PostgreSQL. Watcher details (IDLE renewal, dead connections, polling) are in
tests/mailer/test_imap_watcher.py; this file checks the whole service keeps its promises."""

from __future__ import annotations

import smtplib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from escalations.app import App
from tests.conftest import AppFactory
from tests.intake.test_service_smtp import ACK, CHILD, referral
from tests.servers import wait_until
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import SmtpCapture

pytestmark = pytest.mark.servers


@contextmanager
def serving(app: App) -> Iterator[App]:
    stop = threading.Event()
    started = threading.Event()
    t = threading.Thread(target=app.run, args=(stop,), kwargs={"on_started": lambda _a: started.set()}, daemon=True)
    t.start()
    assert started.wait(20), "service did not start"
    try:
        yield app
    finally:
        stop.set()
        t.join(20)
        assert not t.is_alive(), "service did not stop"


def n_acks(app: App) -> int:
    return sum(1 for m in app.store.list_outbox() if m.template.startswith(ACK))


@pytest.fixture
def service(make_app: AppFactory, database_url: str, smtp_capture: SmtpCapture,
            dovecot: DovecotServer) -> Callable[..., App]:
    """A new App (as after a restart) on the same database, watching the Dovecot INBOX."""
    def build(**mailbox: object) -> App:
        # One sender's 100 referrals get 200 replies within the hour: above the per-address loop cap
        # (max_mails_per_address_per_hour, which defers the rest to later hours), so lift it here.
        return make_app(database_url, relay_port=smtp_capture.port, max_mails_per_address_per_hour=1000,
                        mailboxes=[dovecot.mailbox_settings(**{"after_store": "seen", **mailbox})])
    return build


def test_referral_in_the_mailbox_is_acknowledged_once(service: Callable[..., App], dovecot: DovecotServer,
                                                      smtp_capture: SmtpCapture,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    with serving(service()) as app:
        uid = dovecot.append(referral())  # arrives while the service idles on the folder
        (ack,) = smtp_capture.wait_for(1, template=ACK)
        assert ack.rcpt_tos == ["jo.bloggs@school.example.org"]
        subject = ack.message["Subject"]
        assert subject.startswith("[CH-2026-0001]") and "Testchild" not in subject
        # stored before flagged: the server's \Seen comes after the row is committed
        wait_until(lambda: "\\Seen" in dovecot.flags().get(uid, set()), timeout=20, what="\\Seen flag")
        # the same mail delivered over SMTP too (a practitioner who cc'd the direct address)
        assert app.smtp_port
        with smtplib.SMTP("127.0.0.1", app.smtp_port, timeout=20) as c:
            c.sendmail("jo.bloggs@school.example.org", ["chscp@hackney.gov.uk"],
                       referral().replace(b"\n", b"\r\n"))
        wait_until(lambda: all(m.status != "pending" for m in app.store.list_inbound()), timeout=20, what="processing")
        assert len(app.store.list_cases()) == 1
        assert n_acks(app) == 1
    assert CHILD not in caplog.text


def test_catch_up_after_downtime_and_restart(service: Callable[..., App], dovecot: DovecotServer,
                                             smtp_capture: SmtpCapture) -> None:
    with serving(service()) as app:
        dovecot.append(referral(message_id="<first@example.org>", child="Amy Testchild"))
        smtp_capture.wait_for(1, template=ACK)
    # the service is down: two referrals arrive, and the first one is delivered a second time
    dovecot.append(referral(message_id="<second@example.org>", child="Ben Testchild"))
    dovecot.append(referral(message_id="<third@example.org>", child="Cat Testchild"))
    dovecot.append(referral(message_id="<first@example.org>", child="Amy Testchild"))
    with serving(service()) as app:
        smtp_capture.wait_for(3, template=ACK)
        wait_until(lambda: all(m.status != "pending" for m in app.store.list_inbound()), timeout=20, what="processing")
        refs = sorted(c.reference for c in app.store.list_cases())
        assert refs == ["CH-2026-0001", "CH-2026-0002", "CH-2026-0003"]
        assert n_acks(app) == 3
        # the mailbox server restarts under a running service: it reconnects and keeps going
        dovecot.restart()
        dovecot.append(referral(message_id="<fourth@example.org>", child="Dan Testchild"))
        smtp_capture.wait_for(4, template=ACK, timeout=30)
        assert len(app.store.list_cases()) == 4
    assert len(smtp_capture.of_template(ACK)) == 4


def test_uidvalidity_change_makes_no_duplicate_cases(service: Callable[..., App], dovecot: DovecotServer,
                                                     smtp_capture: SmtpCapture) -> None:
    with serving(service()) as app:
        dovecot.append(referral(message_id="<a@example.org>", child="Amy Testchild"))
        dovecot.append(referral(message_id="<b@example.org>", child="Ben Testchild"))
        smtp_capture.wait_for(2, template=ACK)
    # the administrator rebuilds the mailbox: every UID is new, the messages are not
    before = dovecot.uidvalidity()
    dovecot.set_uidvalidity(before + 1000)
    assert dovecot.uidvalidity() != before
    with serving(service()) as app:
        dovecot.append(referral(message_id="<c@example.org>", child="Cat Testchild"))
        smtp_capture.wait_for(3, template=ACK)
        wait_until(lambda: all(m.status != "pending" for m in app.store.list_inbound()), timeout=20, what="processing")
        assert len(app.store.list_cases()) == 3
        assert n_acks(app) == 3


def test_forced_disconnect_mid_fetch_leaves_no_duplicates(service: Callable[..., App], dovecot: DovecotServer,
                                                          smtp_capture: SmtpCapture,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    raws = [referral(message_id=f"<batch-{i}@example.org>", child=f"Child{i} Testchild") for i in range(100)]
    dovecot.append_many(raws)
    with serving(service(fetch_batch=1)) as app:
        # kick the session while the catch-up is fetching; the watcher reconnects and resumes
        wait_until(lambda: len(app.store.list_inbound()) >= 1, timeout=20, what="first stored message")
        dovecot.kick()
        assert len(app.store.list_inbound()) < 100, "the catch-up finished before the disconnect"
        smtp_capture.wait_for(100, template=ACK, timeout=90)
        wait_until(lambda: all(m.status != "pending" for m in app.store.list_inbound()), timeout=20, what="processing")
        assert len(app.store.list_cases()) == 100
        assert n_acks(app) == 100
    assert "imap.connection_lost" in caplog.text
