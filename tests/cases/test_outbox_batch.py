"""A batch of outgoing mail goes over one SMTP connection, each mail marked sent as the relay takes it (or, while
another writer has the write lock, with the next few); a failure in the middle of it is that row's alone (the
connection is opened again for the rest)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from escalations.cases.store import Store, make_engine
from escalations.clock import FakeClock
from escalations.mailer import smtp_sender
from escalations.mailer.outbox import UNMARKED_MAX, OutboxDispatcher, Renderer, enqueue
from escalations.mailer.smtp_sender import SmtpRelaySender
from escalations.routing.redact import Redactor
from escalations.routing.workflow.state import OutgoingMail
from escalations.settings import RelaySettings
from tests.servers import free_port

pytestmark = pytest.mark.servers


class SessionCounting:
    """Records which connection each mail came over; fails the DATA of the subjects it is told to."""

    def __init__(self, fail_subjects: frozenset[str] = frozenset()) -> None:
        self.lock = threading.Lock()
        self.mails: list[tuple[int, bytes]] = []
        self.fail_subjects = fail_subjects
        self.quits = 0
        self.connections = 0

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.quits += 1
        return "221 Bye"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if any(s.encode() in raw for s in self.fail_subjects):
            return "451 4.3.0 Try again later"
        with self.lock:
            # A number of its own for each connection: id(session) can be an earlier, closed one's again.
            serial = getattr(session, "test_serial", None)
            if serial is None:
                serial = self.connections = self.connections + 1
                setattr(session, "test_serial", serial)  # noqa: B010
            self.mails.append((serial, raw))
        return "250 OK"


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Store:
    s = Store(make_engine(f"sqlite:///{tmp_path / 'o.sqlite3'}"), clock)
    s.create_schema()
    return s


def queue(store: Store, clock: FakeClock, n: int, start: int = 0) -> None:
    with store.session() as s:
        for i in range(start, start + n):
            mail = OutgoingMail(template="reply_help.txt.j2", to=(f"p{i}@example.org",), subject=f"[CH-2026-0001] m{i}",
                                context={"reference": "CH-2026-0001", "partnership_name": "P", "mailbox": "m@x",
                                         "note": "n", "commands": (), "recipient_name": ""},
                                dedupe_key=f"batch:{i}", reason="test")
            enqueue(s, mail, renderer=Renderer(), redactor=Redactor.identity(), from_address="chscp@hackney.gov.uk",
                    from_name="CHSCP", case_id=None, now=clock.now(), message_id_domain="test.invalid")
        s.commit()


def relay(handler: SessionCounting, **smtp: float) -> Controller:
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), decode_data=False, **smtp)
    controller.start()
    return controller


def test_a_batch_goes_over_one_connection(store: Store, clock: FakeClock) -> None:
    handler = SessionCounting()
    controller = relay(handler)
    try:
        queue(store, clock, 6)
        sender = SmtpRelaySender(RelaySettings(host="127.0.0.1", port=controller.port, security="none"))
        assert OutboxDispatcher(store, sender).send_due() == 6
    finally:
        controller.stop()
    assert len(handler.mails) == 6 and len({session for session, _ in handler.mails}) == 1
    rows = store.list_outbox()
    assert {r.status for r in rows} == {"sent"} and {r.attempts for r in rows} == {1}
    assert all(r.sent_at == clock.now() for r in rows)


def test_a_failure_in_a_batch_is_that_rows_alone(store: Store, clock: FakeClock) -> None:
    handler = SessionCounting(frozenset({"[CH-2026-0001] m2"}))
    controller = relay(handler)
    try:
        queue(store, clock, 5)
        sender = SmtpRelaySender(RelaySettings(host="127.0.0.1", port=controller.port, security="none"))
        assert OutboxDispatcher(store, sender, backoff_initial=60).send_due() == 4
    finally:
        controller.stop()
    assert len(handler.mails) == 4
    # the connection after the failure is a new one: its state after an error is not guessed at
    assert len({session for session, _ in handler.mails}) == 2
    by_subject = {r.subject: r for r in store.list_outbox()}
    failed = by_subject.pop("[CH-2026-0001] m2")
    assert failed.status == "pending" and failed.attempts == 1 and "451" in (failed.last_error or "")
    assert {r.status for r in by_subject.values()} == {"sent"}


class _Crash(BaseException):
    """The process dying in the middle of a batch (not an error the outbox may catch)."""


def test_a_crash_in_a_batch_leaves_only_the_mail_under_way_to_send_again(store: Store, clock: FakeClock) -> None:
    """What is on disk while the third mail is with the relay is what a SIGKILL then would leave."""
    handler = SessionCounting()
    controller = relay(handler)
    seen: list[list[str]] = []
    try:
        queue(store, clock, 5)
        real = SmtpRelaySender(RelaySettings(host="127.0.0.1", port=controller.port, security="none"))

        class DiesOnTheThird:
            def send(self, sender: str, recipients: list[str], raw: bytes, *, name_hint: str = "") -> None:
                real.send(sender, recipients, raw, name_hint=name_hint)
                if len(handler.mails) == 3:  # the relay has the third mail; we die before recording it
                    seen.append([r.status for r in sorted(store.list_outbox(), key=lambda r: r.id or 0)])
                    raise _Crash

        with pytest.raises(_Crash):
            OutboxDispatcher(store, DiesOnTheThird()).send_due()  # type: ignore[arg-type]
    finally:
        controller.stop()
    # the first two were recorded as sent before the third went: a restart re-sends only the third
    assert seen == [["sent", "sent", "sending", "sending", "sending"]]


def test_while_another_writer_has_the_lock_the_outbox_sends_on_and_waits_only_after_the_bound(
        store: Store, clock: FakeClock) -> None:
    """The processor holding the write lock (a case being opened) does not stop the outbox after every mail: it
    sends up to UNMARKED_MAX unrecorded, then waits for its turn, and records them all once it has it."""
    handler = SessionCounting()
    controller = relay(handler)
    n = UNMARKED_MAX + 2
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store.transaction():  # BEGIN IMMEDIATE: the write lock, as the processor takes it
            held.set()
            release.wait(30)

    holder = threading.Thread(target=writer)
    real = SmtpRelaySender(RelaySettings(host="127.0.0.1", port=controller.port, security="none"))

    class LockTakenAfterTheClaim:
        """The batch is claimed; then, before its first mail, another writer takes the lock."""

        def send(self, sender: str, recipients: list[str], raw: bytes, *, name_hint: str = "") -> None:
            if not holder.is_alive() and not held.is_set():
                holder.start()
                assert held.wait(10)
            real.send(sender, recipients, raw, name_hint=name_hint)

    outbox = OutboxDispatcher(store, LockTakenAfterTheClaim())  # type: ignore[arg-type]
    sender = threading.Thread(target=outbox.send_due)
    try:
        queue(store, clock, n)
        sender.start()
        deadline = time.monotonic() + 10
        while len(handler.mails) < UNMARKED_MAX and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # time enough for one more mail, if the outbox were not waiting now
        assert len(handler.mails) == UNMARKED_MAX
        # none recorded yet (the lock is held): a crash now would send these again, and no others
        assert [r.status for r in store.list_outbox()] == ["sending"] * n
        assert sender.is_alive()
        release.set()
        sender.join(10)
        assert not sender.is_alive()
    finally:
        release.set()
        if holder.is_alive():
            holder.join(10)
        controller.stop()
    assert len(handler.mails) == n
    assert [r.status for r in store.list_outbox()] == ["sent"] * n


def _runs(store: Store, clock: FakeClock, sender: SmtpRelaySender, sizes: list[int], pause: float = 0.0,
          start: int = 0) -> int:
    """Queue and send ``sizes[i]`` mails in run i (as the outbox thread does, one run per wake-up)."""
    dispatcher, sent = OutboxDispatcher(store, sender), 0
    for n in sizes:
        queue(store, clock, n, start)
        start += n
        sent += dispatcher.send_due()
        time.sleep(pause)
    return sent


def _sessions(handler: SessionCounting) -> list[int]:
    """Which connection each mail came over, numbered in order of first use."""
    order: dict[int, int] = {}
    return [order.setdefault(session, len(order)) for session, _ in handler.mails]


def test_the_service_keeps_its_connection_for_the_next_run(store: Store, clock: FakeClock) -> None:
    handler = SessionCounting()
    controller = relay(handler)
    try:
        settings = RelaySettings(host="127.0.0.1", port=controller.port, security="none")
        kept = SmtpRelaySender(settings, keep_alive=30)
        assert _runs(store, clock, kept, [2, 1, 3]) == 6
        assert kept._kept is not None and handler.quits == 0
        dispatcher = OutboxDispatcher(store, kept)
        dispatcher.close()  # the service stopping (App.close): QUIT, as a one-off command's run ends
        assert kept._kept is None
        deadline = time.monotonic() + 5
        while handler.quits < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handler.quits == 1
    finally:
        controller.stop()
    assert _sessions(handler) == [0] * 6
    assert {r.status for r in store.list_outbox()} == {"sent"}


def test_without_keep_alive_each_run_connects(store: Store, clock: FakeClock) -> None:
    handler = SessionCounting()
    controller = relay(handler)
    try:
        sender = SmtpRelaySender(RelaySettings(host="127.0.0.1", port=controller.port, security="none"))
        assert _runs(store, clock, sender, [2, 1]) == 3
    finally:
        controller.stop()
    assert _sessions(handler) == [0, 0, 1]


def test_a_kept_connection_the_relay_closed_is_opened_again_and_nothing_fails(store: Store, clock: FakeClock) -> None:
    """The relay drops a connection idle 0.3 s; the next run's NOOP finds it gone and connects again."""
    handler = SessionCounting()
    controller = relay(handler, timeout=0.3)
    try:
        sender = SmtpRelaySender(RelaySettings(host="127.0.0.1", port=controller.port, security="none"),
                                 keep_alive=30)
        assert _runs(store, clock, sender, [2, 2], pause=0.8) == 4
    finally:
        controller.stop()
    assert _sessions(handler) == [0, 0, 1, 1]
    rows = store.list_outbox()
    assert {r.status for r in rows} == {"sent"} and {r.attempts for r in rows} == {1} and not any(r.last_error for r in rows)


def test_an_idle_connection_is_closed_and_a_long_used_one_replaced(store: Store, clock: FakeClock,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    handler = SessionCounting()
    controller = relay(handler)
    try:
        sender = SmtpRelaySender(RelaySettings(host="127.0.0.1", port=controller.port, security="none"),
                                 keep_alive=0.2)
        assert _runs(store, clock, sender, [1]) == 1
        assert sender._kept is not None  # just used: kept
        time.sleep(0.3)
        sender.close_idle()  # what the outbox does after every run
        assert sender._kept is None
        monkeypatch.setattr(smtp_sender, "MAX_PER_CONNECTION", 2)
        sender.keep_alive = 30
        assert _runs(store, clock, sender, [1, 1, 1, 1, 1], start=1) == 5
        # and one signed in too long ago (an access token lives about an hour) is replaced too
        monkeypatch.setattr(smtp_sender, "MAX_PER_CONNECTION", 100)
        monkeypatch.setattr(smtp_sender, "MAX_CONNECTION_SECONDS", 0.0)
        assert _runs(store, clock, sender, [1, 1], start=6) == 2
    finally:
        controller.stop()
    assert _sessions(handler) == [0, 1, 1, 2, 2, 3, 4, 5]


def test_the_rows_read_for_sending_are_the_rows_written(database_url: str, clock: FakeClock) -> None:
    """get_outboxes reads the columns it sends with on the DB-API cursor (no ORM objects): in the order
    asked, unknown and repeated ids passed over, raw mail inflated and the recipients decoded as the ORM
    reads them, and more ids than a batch (padded to a power of two, as the claims' lists are)."""
    store = Store(make_engine(database_url), clock)
    store.create_schema()
    queue(store, clock, 40)
    stored = {r.id: r for r in store.list_outbox()}
    ids = sorted(i for i in stored if i is not None)
    asked = [ids[5], ids[0], 10_000_000, *ids[6:], ids[0]]
    got = store.get_outboxes(asked)
    assert [r.id for r in got] == [ids[5], ids[0], *ids[6:], ids[0]]
    for r in got:
        orm = stored[r.id]
        assert (r.sender, r.recipients, r.raw, r.message_id, r.attempts) == \
            (orm.sender, orm.recipients, orm.raw, orm.message_id, orm.attempts)
        assert r.raw.startswith(b"From: ") and isinstance(r.recipients, list)
    assert store.get_outboxes([]) == []
