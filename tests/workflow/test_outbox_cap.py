"""The per-address hourly cap (``max_mails_per_address_per_hour``): loop protection that defers, never drops."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from escalations.cases.store import Store, make_engine
from escalations.clock import FakeClock
from escalations.mailer.outbox import OutboxDispatcher, Renderer, enqueue
from escalations.routing.redact import Redactor
from escalations.routing.workflow.state import OutgoingMail
from tests.conftest import AppFactory
from tests.servers.smtp import SmtpCapture

pytestmark = pytest.mark.servers


def _enqueue(s: Session, renderer: Renderer, to: str, subject: str, dedupe_key: str, now: datetime) -> None:
    """One help mail to ``to`` into the outbox, in the open session ``s``."""
    enqueue(s, OutgoingMail(template="reply_help.txt.j2", to=(to,), subject=subject,
                            context={"reference": "CH-2026-0001", "partnership_name": "P", "mailbox": "m@x",
                                     "note": "n", "commands": (), "recipient_name": ""},
                            dedupe_key=dedupe_key, reason="test"),
            renderer=renderer, redactor=Redactor.identity(), from_address="chscp@hackney.gov.uk", from_name="CHSCP",
            case_id=None, now=now, message_id_domain="escalations.invalid")


def _queue(app: object, to: str, n: int, tag: str) -> None:
    from escalations.app import App

    assert isinstance(app, App)
    with app.store.session() as s:
        for i in range(n):
            _enqueue(s, app.renderer, to, f"[CH-2026-0001] {tag} {i}", f"{tag}:{to}:{i}", app.clock.now())
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


class _HeldSender:
    """A sender whose first send waits, inside the send, until released: a mail the relay is taking."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        self.sent: list[list[str]] = []

    def send(self, sender: str, recipients: list[str], raw: bytes, *, name_hint: str) -> None:
        if not self.inside.is_set():
            self.inside.set()
            assert self.release.wait(10), "never released"
        self.sent.append(recipients)


def test_two_threads_sending_at_once_share_the_cap(tmp_path: Path, clock: FakeClock) -> None:
    """The service's outbox thread and its tick (which sends what the tick queued) send at once with one
    dispatcher. The first takes the address's last place in the hour while its mail is still with the
    relay; the second must see it taken and defer, not pass the cap too (a flaky catch-up test found it:
    the check and the count were two steps, with the send between them)."""
    store = Store(make_engine(f"sqlite:///{tmp_path / 'cap.sqlite3'}"), clock)
    store.create_schema()
    sender = _HeldSender()
    outbox = OutboxDispatcher(store, sender, max_per_address_per_hour=1)
    renderer = Renderer()

    def queue_one(tag: str) -> None:
        with store.session() as s:
            _enqueue(s, renderer, "loud@example.org", f"[X] {tag}", f"held:{tag}", clock.now())
            s.commit()

    queue_one("first")
    first = threading.Thread(target=outbox.send_due)
    first.start()
    assert sender.inside.wait(10)
    queue_one("second")  # queued while the first is with the relay: the other thread claims it
    second = threading.Thread(target=outbox.send_due)
    second.start()
    second.join(10)
    sender.release.set()
    first.join(10)
    assert not first.is_alive() and not second.is_alive()
    assert sender.sent == [["loud@example.org"]]
    waiting = store.list_outbox("pending")
    assert len(waiting) == 1 and waiting[0].subject == "[X] second" and "deferred" in (waiting[0].last_error or "")


def test_a_send_that_fails_gives_its_place_back(tmp_path: Path, clock: FakeClock) -> None:
    """The place is taken before the send; a send the relay refuses was not a mail to the address, so the
    next mail to it may go in the same hour."""
    from escalations.mailer.smtp_sender import DeliveryError

    class FailsFirst:
        def __init__(self) -> None:
            self.calls = 0
            self.sent: list[str] = []

        def send(self, sender: str, recipients: list[str], raw: bytes, *, name_hint: str) -> None:
            self.calls += 1
            if self.calls == 1:
                raise DeliveryError("451 try again later")
            self.sent.append(name_hint)

    store = Store(make_engine(f"sqlite:///{tmp_path / 'cap.sqlite3'}"), clock)
    store.create_schema()
    sender = FailsFirst()
    outbox = OutboxDispatcher(store, sender, max_per_address_per_hour=1)
    with store.session() as s:
        for tag in ("a", "b"):
            _enqueue(s, Renderer(), "loud@example.org", f"[X] {tag}", f"fails:{tag}", clock.now())
        s.commit()
    assert outbox.send_due() == 1
    assert sender.calls == 2 and len(sender.sent) == 1  # the second went: the failed one held no place
    [retry] = store.list_outbox("pending")
    assert retry.subject == "[X] a" and retry.attempts == 1 and "deferred" not in (retry.last_error or "")


def test_addresses_not_mailed_again_are_forgotten_after_the_hour(tmp_path: Path, clock: FakeClock) -> None:
    """The window holds the addresses mailed in about the last two hours, not every address ever mailed
    (a deque per address, kept for good, grew with every new practitioner); the cap still holds."""

    class Sends:
        def __init__(self) -> None:
            self.sent: list[list[str]] = []

        def send(self, sender: str, recipients: list[str], raw: bytes, *, name_hint: str) -> None:
            self.sent.append(recipients)

    store = Store(make_engine(f"sqlite:///{tmp_path / 'cap.sqlite3'}"), clock)
    store.create_schema()
    sender = Sends()
    outbox = OutboxDispatcher(store, sender, max_per_address_per_hour=2)

    def queue(to: str, tag: str) -> None:
        with store.session() as s:
            _enqueue(s, Renderer(), to, f"[X] {tag}", f"sweep:{to}:{tag}", clock.now())
            s.commit()

    for i in range(50):
        queue(f"practitioner{i}@example.org", "a")
    queue("loud@example.org", "a")
    queue("loud@example.org", "b")
    assert outbox.send_due() == 52
    window = outbox._window
    assert window is not None and len(window) == 51
    clock.advance(timedelta(minutes=30))
    queue("loud@example.org", "c")  # the cap still counts the first two sends: deferred by 30 minutes
    assert outbox.send_due() == 0
    assert len(window) == 51
    clock.advance(timedelta(minutes=31))  # every send so far has left the hour
    queue("new@example.org", "a")
    assert outbox.send_due() == 2  # loud's deferred mail and the new one
    assert set(window) == {"loud@example.org", "new@example.org"}
    assert len(sender.sent) == 54 and sender.sent.count(["loud@example.org"]) == 3


def test_a_restarted_sender_counts_the_hours_sends_from_the_outbox(make_app: AppFactory, database_url: str,
                                                                   smtp_capture: SmtpCapture, clock: FakeClock) -> None:
    """The window is read back from the outbox (in chunks on SQLite) by a new dispatcher: the cap holds
    across a restart, for an address mailed many times among many others."""
    app = make_app(database_url, relay_port=smtp_capture.port, max_mails_per_address_per_hour=3)
    for i in range(40):
        _queue(app, f"other{i}@example.org", 1, "o")
    _queue(app, "loud@example.org", 3, "a")
    assert app.send_outbox() == 43
    restarted = OutboxDispatcher(app.store, app.outbox.sender, max_per_address_per_hour=3)
    clock.advance(timedelta(minutes=10))
    _queue(app, "loud@example.org", 1, "b")
    _queue(app, "other0@example.org", 1, "b")
    assert restarted.send_due() == 1  # other0 has had one of its three; loud has none left this hour
    (waiting,) = app.store.list_outbox("pending")
    assert waiting.recipients == ["loud@example.org"] and waiting.next_attempt_at == clock.now() + timedelta(minutes=50)
