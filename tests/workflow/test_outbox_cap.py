"""The per-address hourly cap (``max_mails_per_address_per_hour``): loop protection that defers, never drops."""

from __future__ import annotations

from datetime import timedelta

import pytest

from escalations.clock import FakeClock
from escalations.mailer.outbox import enqueue
from escalations.routing.redact import Redactor
from escalations.routing.workflow.state import OutgoingMail
from tests.conftest import AppFactory
from tests.servers.smtp import SmtpCapture

pytestmark = pytest.mark.servers


def _queue(app: object, to: str, n: int, tag: str) -> None:
    from escalations.app import App

    assert isinstance(app, App)
    with app.store.session() as s:
        for i in range(n):
            enqueue(s, OutgoingMail(template="reply_help.txt.j2", to=(to,), subject=f"[CH-2026-0001] {tag} {i}",
                                    context={"reference": "CH-2026-0001", "partnership_name": "P", "mailbox": "m@x",
                                             "note": "n", "commands": (), "recipient_name": ""},
                                    dedupe_key=f"{tag}:{to}:{i}", reason="test"),
                    renderer=app.renderer, redactor=Redactor.identity(), from_address="chscp@hackney.gov.uk", from_name="CHSCP", case_id=None,
                    now=app.clock.now(), message_id_domain="escalations.invalid")
        s.commit()


def test_mail_beyond_the_cap_waits_for_the_next_hour(make_app: AppFactory, database_url: str,
                                                     smtp_capture: SmtpCapture, clock: FakeClock) -> None:
    app = make_app(database_url, relay_port=smtp_capture.port, max_mails_per_address_per_hour=3)
    loud, quiet = "loud@example.org", "quiet@example.org"
    _queue(app, loud, 5, "a")
    _queue(app, quiet, 1, "b")
    t0 = clock.now()
    assert app.send_outbox() == 4
    got = [r for m in smtp_capture.messages for r in m.rcpt_tos]
    assert got.count(loud) == 3 and got.count(quiet) == 1
    waiting = app.store.list_outbox("pending")
    assert [w.recipients for w in waiting] == [[loud], [loud]]
    for w in waiting:  # deferred, not failed: no attempt counted, the reason recorded
        assert w.attempts == 0 and w.next_attempt_at == t0 + timedelta(hours=1)
        assert "deferred" in (w.last_error or "")
    clock.advance(timedelta(minutes=30))
    _queue(app, quiet, 1, "c")  # other addresses are not held up
    assert app.send_outbox() == 1
    clock.advance(timedelta(minutes=30))
    assert app.send_outbox() == 2
    assert [r for m in smtp_capture.messages for r in m.rcpt_tos].count(loud) == 5
    assert not app.store.list_outbox("pending") and not app.store.list_outbox("failed")


def test_the_cap_is_a_sliding_hour(make_app: AppFactory, sqlite_url: str, smtp_capture: SmtpCapture,
                                   clock: FakeClock) -> None:
    app = make_app(sqlite_url, relay_port=smtp_capture.port, max_mails_per_address_per_hour=2)
    to = "someone@example.org"
    _queue(app, to, 1, "a")
    assert app.send_outbox() == 1
    clock.advance(timedelta(minutes=40))
    _queue(app, to, 3, "b")
    assert app.send_outbox() == 1  # one more fits in the hour
    (w1, w2) = app.store.list_outbox("pending")
    # the first send leaves the window at +60 min: then one more may go
    assert w1.next_attempt_at == w2.next_attempt_at == clock.now() + timedelta(minutes=20)
    clock.advance(timedelta(minutes=20))
    assert app.send_outbox() == 1
    (w,) = app.store.list_outbox("pending")
    assert w.next_attempt_at == clock.now() + timedelta(minutes=40)  # when the second send leaves it
    clock.advance(timedelta(minutes=40))
    assert app.send_outbox() == 1
    assert len(smtp_capture.messages) == 4
