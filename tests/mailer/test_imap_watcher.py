"""The IMAP watcher against a real Dovecot on loopback (tests/servers/dovecot.py); no protocol mocks."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from escalations.cases.inbound import InboundArrival
from escalations.cases.store import Store, StoredInbound, imap_key, make_engine
from escalations.clock import SystemClock
from escalations.mailer.imap_watcher import ImapWatcher
from escalations.settings import MailboxSettings
from tests.servers import wait_until
from tests.servers.dovecot import DovecotServer

pytestmark = [pytest.mark.servers, pytest.mark.timeout(60)]

SUBJECT_SECRET = "Escalation re Jordan Example DOB 01/02/2015"
BODY_SECRET = "concern text that must never reach a log line"


def referral(n: int, *, subject: str = SUBJECT_SECRET) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Practitioner {n} <practitioner{n}@example.org>"
    msg["To"] = "partnership@example.net"
    msg["Subject"] = f"{subject} #{n}"
    msg["Date"] = format_datetime(datetime(2026, 11, 3, 9, n % 60, tzinfo=UTC))
    msg["Message-ID"] = f"<referral-{n}.{subject.split()[0].lower()}@example.org>"
    msg.set_content(f"Name of child(ren): Jordan Example\nConcern: {BODY_SECRET} ({n})\n")
    return msg.as_bytes().replace(b"\n", b"\r\n")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(make_engine(f"sqlite:///{tmp_path / 'imap.sqlite3'}"), SystemClock())
    s.create_schema()
    yield s
    s.engine.dispose()


def row_count(store: Store) -> int:
    return len(store.list_inbound())


class Running:
    """A watcher running in a thread, as `escalations run` does."""

    def __init__(self, watcher: ImapWatcher) -> None:
        self.watcher = watcher
        self.stop = threading.Event()
        self.thread = threading.Thread(target=watcher.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self, within: float = 5.0) -> float:
        started = time.monotonic()
        self.stop.set()
        self.thread.join(within)
        assert not self.thread.is_alive(), "watcher did not stop"
        return time.monotonic() - started


@pytest.fixture
def run_watcher() -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def start(mailbox: MailboxSettings, store: Store, **kwargs: Any) -> Running:
        r = Running(ImapWatcher(mailbox, store, **kwargs))
        running.append(r)
        return r

    yield start
    for r in running:
        r.stop.set()
    for r in running:
        r.thread.join(5)


# ---- the fixture itself -------------------------------------------------------------------


def test_dovecot_advertises_idle(dovecot: DovecotServer) -> None:
    with dovecot.client() as c:
        assert c.has_capability("IDLE")
        assert c.has_capability("MOVE") and c.has_capability("UIDPLUS")


def test_dovecot_without_idle(dovecot_factory: Callable[..., DovecotServer]) -> None:
    server = dovecot_factory(drop_capabilities={"IDLE"})
    with server.client() as c:
        assert not c.has_capability("IDLE")
        assert c.has_capability("UIDPLUS")


# ---- catch-up -----------------------------------------------------------------------------


def test_catch_up_stores_mail_that_arrived_while_stopped(dovecot: DovecotServer, store: Store) -> None:
    arrived = datetime(2026, 11, 2, 16, 45, tzinfo=UTC)
    uids = dovecot.append_many([referral(i) for i in range(3)], msg_time=arrived)
    woken: list[int] = []
    watcher = ImapWatcher(dovecot.mailbox_settings(), store, on_stored=woken.append)

    assert watcher.catch_up() == 3

    rows = store.list_inbound()
    assert [r.id for r in rows] == woken
    uidvalidity = dovecot.uidvalidity()
    assert [r.idempotency_key for r in rows] == [imap_key("test", "INBOX", uidvalidity, u) for u in uids]
    assert all(r.source == "imap" and r.account == "test" and r.folder == "INBOX" for r in rows)
    assert all(r.received_at == arrived for r in rows)  # INTERNALDATE, as aware UTC
    assert rows[0].raw.replace(b"\r\n", b"\n") == referral(0).replace(b"\r\n", b"\n")
    assert store.imap_cursor("test", "INBOX") == (uidvalidity, uids[-1])
    # after_store "none" and BODY.PEEK: nothing on the server changed
    assert all("\\Seen" not in f for f in dovecot.flags().values())


def test_catch_up_twice_stores_nothing_new(dovecot: DovecotServer, store: Store) -> None:
    dovecot.append_many([referral(i) for i in range(4)])
    watcher = ImapWatcher(dovecot.mailbox_settings(fetch_batch=3), store)
    assert watcher.catch_up() == 4
    assert watcher.catch_up() == 0
    assert row_count(store) == 4
    dovecot.append(referral(9))
    assert watcher.catch_up() == 1
    assert row_count(store) == 5


def test_uidvalidity_change_creates_no_duplicates(dovecot: DovecotServer, store: Store) -> None:
    dovecot.append_many([referral(i) for i in range(3)])
    watcher = ImapWatcher(dovecot.mailbox_settings(), store)
    assert watcher.catch_up() == 3
    old = dovecot.uidvalidity()

    dovecot.set_uidvalidity(old + 1000)  # same messages, same UIDs, new UIDVALIDITY

    assert watcher.catch_up() == 0
    assert row_count(store) == 3
    assert store.imap_cursor("test", "INBOX") == (old + 1000, 3)
    # the re-seen messages resolve to the stored rows under their new keys
    assert store.has_inbound_key(imap_key("test", "INBOX", old + 1000, 2))
    dovecot.append(referral(7))
    assert watcher.catch_up() == 1


def test_after_store_seen_flags_only_stored_messages(dovecot: DovecotServer, store: Store) -> None:
    dovecot.append_many([referral(i) for i in range(3)])
    watcher = ImapWatcher(dovecot.mailbox_settings(after_store="seen"), store)
    assert watcher.catch_up() == 3
    assert all("\\Seen" in f for f in dovecot.flags().values())
    # \Seen is not what decides "done": a person marking mail unread does not make it new again
    with dovecot.client() as c:
        c.select_folder("INBOX")
        c.remove_flags(c.search("ALL"), [b"\\Seen"])
    assert watcher.catch_up() == 0
    assert row_count(store) == 3


class Crash(BaseException):
    """The process dies (no handler of ours catches it)."""


def _die_before_flagging(settings: MailboxSettings, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A watcher that commits what it fetched, then dies before flagging or moving it."""
    dying = ImapWatcher(settings, store)

    def crash(*_args: object) -> None:
        raise Crash

    monkeypatch.setattr(dying, "_after_store", crash)
    with pytest.raises(Crash):
        dying.catch_up()


def test_mail_stored_just_before_a_crash_is_flagged_after_the_restart(
        dovecot: DovecotServer, store: Store, run_watcher: Callable[..., Running],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows are committed and the cursor has passed them, then the process dies before STORE
    +FLAGS: the restarted watcher finds them below the cursor and flags them; only those it stored."""
    uids = dovecot.append_many([referral(i) for i in range(4)])
    settings = dovecot.mailbox_settings(after_store="seen")
    _die_before_flagging(settings, store, monkeypatch)
    assert row_count(store) == 4
    # a message the store does not have, below the cursor (stored under a later UID's key)
    (unknown,) = dovecot.append_many([referral(10)])
    (later,) = dovecot.append_many([referral(11)])
    validity = dovecot.uidvalidity()
    store.store_inbound(referral(11), source="imap", idempotency_key=imap_key(settings.name, "INBOX", validity, later),
                        account=settings.name, folder="INBOX", imap_cursor=(validity, later))
    assert not any("\\Seen" in f for f in dovecot.flags().values())

    running = run_watcher(settings, store)
    wait_until(lambda: all("\\Seen" in dovecot.flags()[u] for u in [*uids, later]), timeout=20,
               what="stored messages flagged after the restart")
    assert "\\Seen" not in dovecot.flags()[unknown]
    (arriving,) = dovecot.append_many([referral(12)])
    wait_until(lambda: "\\Seen" in dovecot.flags().get(arriving, set()), timeout=20, what="new mail flagged")
    running.close()
    assert row_count(store) == 6
    assert "\\Seen" not in dovecot.flags()[unknown]


def test_mail_stored_just_before_a_crash_is_moved_after_the_restart(
        dovecot: DovecotServer, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    dovecot.append_many([referral(i) for i in range(3)])
    settings = dovecot.mailbox_settings(after_store="move")
    _die_before_flagging(settings, store, monkeypatch)
    assert len(dovecot.uids("INBOX")) == 3
    assert ImapWatcher(settings, store).catch_up() == 0
    assert dovecot.uids("INBOX") == []
    assert len(dovecot.uids("Escalations.Stored")) == 3


@pytest.mark.parametrize("drop", [set(), {"MOVE"}], ids=["MOVE", "COPY+UID-EXPUNGE"])
def test_after_store_move(dovecot_factory: Callable[..., DovecotServer], store: Store, drop: set[str]) -> None:
    server = dovecot_factory(drop_capabilities=drop)
    server.append_many([referral(i) for i in range(3)])
    watcher = ImapWatcher(server.mailbox_settings(after_store="move"), store)
    assert watcher.catch_up() == 3
    assert server.uids("INBOX") == []
    assert len(server.uids("Escalations.Stored")) == 3  # "/" became Dovecot's "." delimiter
    assert row_count(store) == 3
    server.append(referral(5))
    assert watcher.catch_up() == 1
    assert len(server.uids("Escalations.Stored")) == 4


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_tls_with_self_signed_certificate(dovecot_factory: Callable[..., DovecotServer], store: Store,
                                          security: str) -> None:
    server = dovecot_factory(tls=True)
    server.append(referral(0))
    with pytest.raises(ssl.SSLCertVerificationError):
        ImapWatcher(server.mailbox_settings(security=security, verify_tls=True), store).catch_up()
    assert ImapWatcher(server.mailbox_settings(security=security, verify_tls=False), store).catch_up() == 1


# ---- running: IDLE, polling, reconnecting --------------------------------------------------


def test_idle_delivers_new_mail_promptly(dovecot: DovecotServer, store: Store,
                                         run_watcher: Callable[..., Running]) -> None:
    dovecot.append(referral(0))
    woken: list[int] = []
    with structlog.testing.capture_logs() as logs:
        # idle_renew 60 s: only IDLE, not the periodic liveness wake-up, can deliver within the wait
        running = run_watcher(dovecot.mailbox_settings(idle_renew_seconds=60), store, on_stored=woken.append)
        wait_until(lambda: row_count(store) == 1, what="catch-up on connect")
        time.sleep(0.3)  # let it enter IDLE
        dovecot.append(referral(1))
        wait_until(lambda: row_count(store) == 2, timeout=10, what="IDLE delivery")
        dovecot.append_many([referral(2), referral(3)])
        wait_until(lambda: row_count(store) == 4, timeout=10, what="second IDLE delivery")
        running.close()
    assert len(woken) == 4
    events = [e["event"] for e in logs]
    assert "imap.connected" in events and "imap.stored" in events
    connected = next(e for e in logs if e["event"] == "imap.connected")
    assert connected["idle"] is True
    stored = [e for e in logs if e["event"] == "imap.stored"]
    # a line per fetch chunk, naming each message in it
    assert sum(len(e["uids"]) for e in stored) == 4 and sum(e["created"] for e in stored) == 4
    assert all(len(e["uids"]) == len(e["inbound_ids"]) == len(e["message_ids"]) == len(e["sizes"]) for e in stored)
    assert all(all(e["message_ids"]) and all(e["uids"]) and all(e["inbound_ids"]) for e in stored)
    # never a subject or a body in a log line (they carry a child's details)
    text = repr(logs)
    assert "Jordan" not in text and BODY_SECRET not in text and SUBJECT_SECRET not in text


@pytest.mark.parametrize("after_store", ["seen", "none"])
def test_mail_announced_during_catch_up_is_not_missed(dovecot: DovecotServer, store: Store,
                                                      run_watcher: Callable[..., Running], after_store: str) -> None:
    # Mail arriving while the watcher works is announced (EXISTS) in the replies to its own
    # commands, and not again once IDLE starts: it must look again before idling ("seen": the
    # STORE's reply carries it). Or it comes right behind "+ idling", in the same read, where
    # select() cannot see it ("none").
    dovecot.append(referral(0))
    appended: list[int] = []

    def deliver_more(_inbound_id: int) -> None:
        if not appended:
            appended.append(dovecot.append(referral(1)))
            time.sleep(0.6)  # Dovecot notices the other session's change within ~0.5 s

    run_watcher(dovecot.mailbox_settings(after_store=after_store, idle_renew_seconds=60), store,
                on_stored=deliver_more)
    wait_until(lambda: row_count(store) == 2, timeout=10, what="mail announced during catch-up")


def test_polls_when_server_has_no_idle(dovecot_factory: Callable[..., DovecotServer], store: Store,
                                       run_watcher: Callable[..., Running]) -> None:
    server = dovecot_factory(drop_capabilities={"IDLE"})
    with structlog.testing.capture_logs() as logs:
        running = run_watcher(server.mailbox_settings(poll_seconds=0.3), store)
        wait_until(lambda: any(e["event"] == "imap.connected" for e in logs), what="connect")
        server.append(referral(1))
        wait_until(lambda: row_count(store) == 1, what="poll delivery")
        server.append(referral(2))
        wait_until(lambda: row_count(store) == 2, what="second poll delivery")
        running.close()
    assert next(e for e in logs if e["event"] == "imap.connected")["idle"] is False


def test_reconnects_after_server_restart(dovecot: DovecotServer, store: Store,
                                         run_watcher: Callable[..., Running]) -> None:
    dovecot.append(referral(0))
    running = run_watcher(dovecot.mailbox_settings(), store)
    wait_until(lambda: row_count(store) == 1, what="first message")

    dovecot.stop()
    dovecot.deliver(referral(1))  # delivered locally during the IMAP outage
    time.sleep(0.5)  # the watcher retries against a closed port meanwhile
    dovecot.start()

    wait_until(lambda: row_count(store) == 2, what="mail from the outage")
    dovecot.append(referral(2))
    wait_until(lambda: row_count(store) == 3, what="IDLE after reconnect")
    running.close()
    assert len({r.message_id for r in store.list_inbound()}) == 3


def test_reconnects_after_server_crash(dovecot: DovecotServer, store: Store,
                                       run_watcher: Callable[..., Running]) -> None:
    running = run_watcher(dovecot.mailbox_settings(), store)
    dovecot.append(referral(0))
    wait_until(lambda: row_count(store) == 1, what="first message")
    dovecot.kill()
    dovecot.start()
    dovecot.append(referral(1))
    try:
        wait_until(lambda: row_count(store) == 2, timeout=30, what="message after crash")
    except AssertionError as exc:  # seen once in a full run: keep the server's side of the story
        raise AssertionError(f"{exc}\n--- dovecot log ---\n{dovecot.log()[-4000:]}") from None
    running.close()


def test_silent_dead_connection_is_noticed(dovecot: DovecotServer, store: Store,
                                           run_watcher: Callable[..., Running]) -> None:
    # Liveness is checked every idle_renew_seconds (capped); a frozen server must not answer DONE,
    # so the watcher gives up after response_timeout and reconnects to a fresh imap process.
    settings = dovecot.mailbox_settings(idle_renew_seconds=1.0, response_timeout_seconds=1.0)
    with structlog.testing.capture_logs() as logs:
        running = run_watcher(settings, store)
        dovecot.append(referral(0))
        wait_until(lambda: row_count(store) == 1, what="first message")
        assert dovecot.freeze_connections()
        dovecot.append(referral(1))  # a new connection gets a new, unfrozen process
        wait_until(lambda: row_count(store) == 2, what="delivery after dead connection")
        running.close()
    assert any(e["event"] == "imap.connection_lost" for e in logs)


class KickingStore(Store):
    """Kills every IMAP connection right after storing the Nth message (a network drop mid-fetch)."""

    def __init__(self, inner: Store, server: DovecotServer, after: int) -> None:
        super().__init__(inner.engine, inner.clock)
        self.server, self.after, self.calls = server, after, 0

    def store_inbound(self, raw: bytes, **kwargs: Any) -> StoredInbound:
        result = super().store_inbound(raw, **kwargs)
        self.calls += 1
        if self.calls == self.after:
            self.server.kick()
        return result

    def store_inbound_many(self, arrivals: Sequence[InboundArrival]) -> list[StoredInbound]:
        """The watcher stores a fetch batch a few messages per transaction: kick after the one with the Nth."""
        results = super().store_inbound_many(arrivals)
        before, self.calls = self.calls, self.calls + len(arrivals)
        if before < self.after <= self.calls:
            self.server.kick()
        return results


class FailingOnceStore(Store):
    """store_inbound raises for the Nth message once (a database hiccup)."""

    def __init__(self, inner: Store, after: int) -> None:
        super().__init__(inner.engine, inner.clock)
        self.after, self.calls = after, 0

    def store_inbound(self, raw: bytes, **kwargs: Any) -> StoredInbound:
        self.calls += 1
        if self.calls == self.after + 1:
            raise RuntimeError("database is locked")
        return super().store_inbound(raw, **kwargs)

    def store_inbound_many(self, arrivals: Sequence[InboundArrival]) -> list[StoredInbound]:
        """The transaction holding the (N+1)th message fails, once: none of its messages is stored."""
        before = self.calls
        self.calls += len(arrivals)
        if before <= self.after < self.calls:
            raise RuntimeError("database is locked")
        return super().store_inbound_many(arrivals)


def test_forced_disconnect_mid_fetch_leaves_no_duplicates(dovecot: DovecotServer, store: Store,
                                                         run_watcher: Callable[..., Running]) -> None:
    dovecot.append_many([referral(i) for i in range(10)])
    kicking = KickingStore(store, dovecot, after=3)
    settings = dovecot.mailbox_settings(after_store="move", fetch_batch=4)
    with structlog.testing.capture_logs() as logs:
        running = run_watcher(settings, kicking)
        wait_until(lambda: row_count(store) == 10 and dovecot.uids("INBOX") == [], what="recovery")
        running.close()
    assert any(e["event"] == "imap.connection_lost" for e in logs)
    assert any(e["event"] == "imap.leftovers" for e in logs)
    rows = store.list_inbound()
    assert len(rows) == 10 and len({r.message_id for r in rows}) == 10
    # the batch stored before the drop but not yet moved was moved after reconnecting
    assert len(dovecot.uids("Escalations.Stored")) == 10
    assert store.imap_cursor("test", "INBOX") == (dovecot.uidvalidity(), 10)


def test_store_failure_is_retried_without_crashing(dovecot: DovecotServer, store: Store,
                                                   run_watcher: Callable[..., Running]) -> None:
    dovecot.append_many([referral(i) for i in range(10)])
    failing = FailingOnceStore(store, after=3)
    with structlog.testing.capture_logs() as logs:
        running = run_watcher(dovecot.mailbox_settings(after_store="seen"), failing)
        wait_until(lambda: row_count(store) == 10, what="retry after store failure")
        wait_until(lambda: all("\\Seen" in f for f in dovecot.flags().values()), what="all flagged")
        running.close()
    assert any(e["event"] == "imap.store_failed" for e in logs)
    assert len({r.message_id for r in store.list_inbound()}) == 10


def test_wrong_password_is_logged_and_retried(dovecot: DovecotServer, store: Store,
                                              run_watcher: Callable[..., Running]) -> None:
    with structlog.testing.capture_logs() as logs:
        running = run_watcher(dovecot.mailbox_settings(password="wrong"), store)
        wait_until(lambda: sum(e["event"] == "imap.login_failed" for e in logs) >= 2, what="two attempts")
        running.close()
    assert "wrong" not in repr(logs)


# ---- stopping -----------------------------------------------------------------------------


def test_stop_is_honoured_promptly_while_idling(dovecot: DovecotServer, store: Store,
                                                run_watcher: Callable[..., Running]) -> None:
    dovecot.append(referral(0))
    running = run_watcher(dovecot.mailbox_settings(idle_renew_seconds=600), store)
    wait_until(lambda: row_count(store) == 1, what="connected")
    time.sleep(0.3)
    running.close(within=2.0)


def test_stop_is_honoured_promptly_while_polling(dovecot_factory: Callable[..., DovecotServer], store: Store,
                                                 run_watcher: Callable[..., Running]) -> None:
    server = dovecot_factory(drop_capabilities={"IDLE"})
    server.append(referral(0))
    running = run_watcher(server.mailbox_settings(poll_seconds=600), store)
    wait_until(lambda: row_count(store) == 1, what="connected")
    running.close(within=2.0)


def test_stop_is_honoured_promptly_while_server_is_down(dovecot: DovecotServer, store: Store,
                                                        run_watcher: Callable[..., Running]) -> None:
    dovecot.stop()
    running = run_watcher(dovecot.mailbox_settings(reconnect_initial_seconds=30, reconnect_max_seconds=60),
                          store)
    time.sleep(0.3)
    running.close(within=2.0)

