"""Wake-ups across processes on PostgreSQL (LISTEN/NOTIFY): stored mail wakes every processor, and a
notification goes only with a transaction that commits."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from escalations.cases import wakeups
from escalations.cases.store import Store, make_engine
from escalations.clock import FakeClock

pytestmark = pytest.mark.servers

RAW = (b"Message-ID: <w1@example.org>\r\nFrom: a@example.org\r\nTo: chscp@hackney.gov.uk\r\n"
       b"Date: Tue, 03 Nov 2026 10:00:00 +0000\r\nSubject: escalation\r\n\r\nbody line\r\n")


@contextmanager
def listening(store: Store, wake: dict[str, threading.Event]) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=wakeups.listen, args=(store.engine, wake, stop),
                              kwargs={"poll_seconds": 0.1}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        assert not thread.is_alive()


def test_mail_stored_by_another_process_wakes_this_ones_processor(postgres_url: str, clock: FakeClock) -> None:
    here = Store(make_engine(postgres_url), clock)
    here.create_schema()
    there = Store(make_engine(postgres_url), clock)  # another process on the same database
    woken = threading.Event()
    with listening(here, {wakeups.INBOUND: woken}):
        assert woken.wait(5)  # set once on listening: whatever was announced before is looked at
        woken.clear()
        assert there.store_inbound(RAW, source="smtp").created
        assert woken.wait(5)


def test_a_notification_goes_only_with_a_commit(postgres_url: str, clock: FakeClock) -> None:
    store = Store(make_engine(postgres_url), clock)
    channel = f"escalations_test_{uuid.uuid4().hex[:12]}"  # no other test or process uses it
    woken = threading.Event()
    with listening(store, {channel: woken}):
        assert woken.wait(5)
        woken.clear()
        with store.engine.connect() as conn:
            wakeups.announce(conn, channel)
            conn.rollback()
        assert not woken.wait(1.0)
        with store.engine.begin() as conn:
            wakeups.announce(conn, channel)
        assert woken.wait(5)


def test_sqlite_has_no_listener_and_announcing_is_harmless(sqlite_url: str, clock: FakeClock) -> None:
    store = Store(make_engine(sqlite_url), clock)
    store.create_schema()
    woken = threading.Event()
    wakeups.listen(store.engine, {wakeups.INBOUND: woken}, threading.Event())  # returns at once
    assert store.store_inbound(RAW, source="smtp").created
    assert not woken.is_set()


def _notifies(engine: object) -> list[str]:
    """Every pg_notify statement the engine runs from now on (its channel)."""
    import sqlalchemy as sa

    sent: list[str] = []

    def before(_conn: object, _cursor: object, statement: str, parameters: object, _context: object,
               _many: bool) -> None:
        if "pg_notify" in statement:
            sent.append(str(parameters))

    sa.event.listen(engine, "before_cursor_execute", before)
    return sent


def test_a_transaction_announces_each_channel_once_and_a_savepoint_again(postgres_url: str,
                                                                           clock: FakeClock) -> None:
    store = Store(make_engine(postgres_url), clock)
    channel, other = (f"escalations_test_{uuid.uuid4().hex[:12]}" for _ in range(2))
    sent = _notifies(store.engine)
    woken, other_woken = threading.Event(), threading.Event()
    with listening(store, {channel: woken, other: other_woken}):
        assert woken.wait(5) and other_woken.wait(5)
        woken.clear()
        other_woken.clear()
        with store.engine.begin() as conn:
            wakeups.announce(conn, channel)
            wakeups.announce(conn, channel)   # a referral's second mail: nothing more to say
            wakeups.announce(conn, other)
        assert len(sent) == 2
        assert woken.wait(5) and other_woken.wait(5)
        woken.clear()
        # A savepoint rolled back takes its notification with it: announced again after it, it goes.
        with store.engine.begin() as conn:
            nested = conn.begin_nested()
            wakeups.announce(conn, channel)
            nested.rollback()
            wakeups.announce(conn, channel)
        assert len(sent) == 4
        assert woken.wait(5)
        woken.clear()
        # The next transaction on the same pooled connection announces for itself.
        with store.engine.begin() as conn:
            wakeups.announce(conn, channel)
        assert len(sent) == 5
        assert woken.wait(5)
