"""The store on both backends: raw-first idempotency, fingerprints, claims, references."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from escalations.cases.store import Store, content_key, fingerprint, imap_key, make_engine
from escalations.clock import FakeClock

pytestmark = pytest.mark.servers

RAW = (b"Message-ID: <m1@example.org>\r\nFrom: a@example.org\r\nTo: chscp@hackney.gov.uk\r\n"
       b"Date: Tue, 03 Nov 2026 10:00:00 +0000\r\nSubject: escalation\r\n\r\nbody line\r\n")


@pytest.fixture
def store(database_url: str, clock: FakeClock) -> Store:
    s = Store(make_engine(database_url), clock)
    s.create_schema()
    return s


def test_same_bytes_twice_is_one_row(store: Store) -> None:
    first = store.store_inbound(RAW, source="smtp")
    second = store.store_inbound(RAW, source="smtp")
    assert first.created and not second.created
    assert first.id == second.id
    assert len(store.list_inbound()) == 1


def test_same_mail_over_imap_and_smtp_is_one_row(store: Store) -> None:
    # The IMAP copy has delivery headers prepended and LF line ends; it is still the same message.
    imap_copy = b"Return-Path: <a@example.org>\nDelivered-To: chscp@hackney.gov.uk\n" + RAW.replace(b"\r\n", b"\n")
    a = store.store_inbound(RAW, source="smtp", idempotency_key=content_key(RAW))
    b = store.store_inbound(imap_copy, source="imap", idempotency_key=imap_key("hackney", "INBOX", 7, 1),
                            account="hackney", folder="INBOX", imap_cursor=(7, 1))
    assert a.id == b.id and not b.created
    assert store.imap_cursor("hackney", "INBOX") == (7, 1)
    # the alias makes the IMAP key known without recomputing anything
    assert store.has_inbound_key(imap_key("hackney", "INBOX", 7, 1))


def test_uidvalidity_change_rekeys_without_duplicates(store: Store) -> None:
    store.store_inbound(RAW, source="imap", idempotency_key=imap_key("h", "INBOX", 1, 5), account="h",
                        folder="INBOX", imap_cursor=(1, 5))
    store.reset_imap_cursor("h", "INBOX", 2)
    assert store.imap_cursor("h", "INBOX") == (2, 0)
    again = store.store_inbound(RAW, source="imap", idempotency_key=imap_key("h", "INBOX", 2, 1), account="h",
                                folder="INBOX", imap_cursor=(2, 1))
    assert not again.created
    assert store.imap_cursor("h", "INBOX") == (2, 1)
    assert len(store.list_inbound()) == 1


def test_different_messages_differ() -> None:
    other = RAW.replace(b"body line", b"another body")
    assert fingerprint(RAW) != fingerprint(other)
    assert fingerprint(RAW) == fingerprint(RAW.replace(b"\r\n", b"\n"))


def test_claims_are_exclusive_and_stale_claims_return(store: Store, clock: FakeClock) -> None:
    store.store_inbound(RAW, source="smtp")
    first = store.claim_next_inbound()
    assert first is not None
    assert store.claim_next_inbound() is None  # claimed by "another worker"
    clock.advance(timedelta(minutes=11))  # that worker died
    assert store.claim_next_inbound() == first


def test_concurrent_stores_make_one_row(store: Store) -> None:
    results = []

    def worker() -> None:
        results.append(store.store_inbound(RAW, source="smtp"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.created for r in results) == 1
    assert len({r.id for r in results}) == 1


def test_references_count_per_prefix_and_year(store: Store) -> None:
    with store.session() as s:
        refs = [Store.allocate_reference(s, "CH", 2026) for _ in range(3)]
        refs.append(Store.allocate_reference(s, "SUT", 2026))
        refs.append(Store.allocate_reference(s, "CH", 2027))
        s.commit()
    assert refs == ["CH-2026-0001", "CH-2026-0002", "CH-2026-0003", "SUT-2026-0001", "CH-2027-0001"]


def test_datetimes_come_back_aware_utc(store: Store, clock: FakeClock) -> None:
    stored = store.store_inbound(RAW, source="smtp")
    row = store.get_inbound(stored.id)
    assert row is not None
    assert row.received_at == clock.now()
    assert row.received_at.utcoffset() == timedelta(0)


def test_a_claim_waiting_behind_another_writer_reads_the_clock_after_the_lock(tmp_path: object,
                                                                                clock: FakeClock) -> None:
    """Found by the workflow restart test: a sender that read "now" before waiting for SQLite's write
    lock claimed rows with that older time; once the clock had moved on 10 minutes, a second sender
    took the fresh claim for stale and sent the same rows again."""
    from sqlmodel import Session

    from escalations.cases.models import OutboxMessage

    store = Store(make_engine(f"sqlite:///{tmp_path}/claim.sqlite3"), clock)
    store.create_schema()
    with store.session() as s:
        for i in range(3):
            s.add(OutboxMessage(dedupe_key=f"k{i}", message_id=f"m{i}@example.org", template="t", sender="a@example.org",
                                recipients=["b@example.org"], subject="[CH-2026-0001]", raw=b"x",
                                next_attempt_at=clock.now(), created_at=clock.now()))
        s.commit()
    first: list[int] = []
    with Session(store.engine) as holder:
        holder.connection()  # another writer holds the lock
        waiting = threading.Thread(target=lambda: first.extend(store.claim_due_outbox()))
        waiting.start()
        waiting.join(0.3)  # it is now blocked on the lock
        clock.advance(timedelta(minutes=11))
        holder.commit()
    waiting.join(10)
    assert sorted(first) == [1, 2, 3]
    assert store.claim_due_outbox() == []  # the claim is fresh at the clock's current time


def test_claims_use_the_lease_clock_not_the_pretend_time(tmp_path: object, clock: FakeClock) -> None:
    """`tick --now` in the past, against a live database: its claims are leased in real time, so the
    running service does not take them for abandoned (stale) ones and send the rows again."""
    from escalations.cases.models import OutboxMessage

    engine = make_engine(f"sqlite:///{tmp_path}/lease.sqlite3")
    service = Store(engine, clock)
    service.create_schema()
    with service.session() as s:
        s.add(OutboxMessage(dedupe_key="k", message_id="m@example.org", template="t", sender="a@example.org",
                            recipients=["b@example.org"], subject="[CH-2026-0001]", raw=b"x",
                            next_attempt_at=clock.now() - timedelta(days=2), created_at=clock.now()))
        s.commit()
    preview = Store(engine, FakeClock(clock.now() - timedelta(days=1)), lease_clock=clock)
    assert preview.claim_due_outbox() == [1]
    assert service.claim_due_outbox() == []  # a fresh claim, in real time
    clock.advance(timedelta(minutes=11))
    assert service.claim_due_outbox() == [1]  # abandoned for 10 minutes: taken over
