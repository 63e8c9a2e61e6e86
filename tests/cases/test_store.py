"""The store on both backends: raw-first idempotency, fingerprints, claims, references."""

from __future__ import annotations

import os
import threading
from datetime import timedelta

import pytest
from sqlmodel import select

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


# ---- owners, heartbeats and fast reclaim -------------------------------------------------------------


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _outbox_row(store: Store, key: str, *, priority: int = 0) -> int:
    from escalations.cases.models import OutboxMessage

    with store.session() as s:
        row = OutboxMessage(dedupe_key=key, message_id=f"{key}@example.org", template="t", sender="a@example.org",
                            recipients=["b@example.org"], subject="[CH-2026-0001]", raw=b"x", priority=priority,
                            next_attempt_at=store.clock.now(), created_at=store.clock.now())
        s.add(row)
        s.commit()
        return row.id or 0


def _timer_row(store: Store) -> int:
    from escalations.cases.models import Case, Timer

    now = store.clock.now()
    with store.session() as s:
        case = Case(reference="CH-2026-0001", partnership="city-and-hackney", status="open", opened_at=now,
                    updated_at=now)
        s.add(case)
        s.flush()
        timer = Timer(key="t1", case_id=case.id or 0, kind="escalate", due_at=now, created_at=now)
        s.add(timer)
        s.commit()
        return timer.id or 0


def _other(store: Store, *, host: str | None = None, pid: int | None = None, start_ticks: int | None = None) -> Store:
    """A second worker on the same database: another process (by default: this host, a dead PID)."""
    from escalations.cases.store import WorkerId

    worker = WorkerId(host or store.worker.host, _dead_pid() if pid is None else pid, "other", start_ticks)
    return Store(store.engine, store.clock, worker=worker)


def test_claims_of_a_dead_process_on_this_host_are_taken_back_at_once(store: Store) -> None:
    """kill -9, restart: the new process takes the inbound message, the outbox row and the timer its
    predecessor held, without waiting for the 10-minute lease."""
    store.store_inbound(RAW, source="smtp")
    oid = _outbox_row(store, "ack")
    tid = _timer_row(store)
    dead = _other(store)
    inbound = dead.claim_next_inbound()
    assert inbound is not None
    assert dead.claim_due_outbox() == [oid]
    assert dead.claim_due_timer(store.clock.now()) == tid
    # the same instant: no lease has run out, and the dead worker's heartbeat is fresh
    assert store.claim_next_inbound() == inbound
    assert store.claim_due_outbox() == [oid]
    assert store.claim_due_timer(store.clock.now()) == tid
    row = store.get_inbound(inbound)
    assert row is not None and row.claimed_by == store.owner and row.attempts == 2
    assert {w.owner for w in store.list_workers()} == {store.owner, dead.owner}


def test_rows_of_several_dead_owners_are_taken_back_and_a_live_owners_are_not(store: Store) -> None:
    """Three dead processes and a live one hold outbox rows: one claim takes back the dead ones' (the
    owners are sent as a list of four, padded) and the free ones (five ids, sent as eight), never the
    live owner's; the claim statements are prepared once, so each list length is a shape of its own."""
    from sqlalchemy import update

    from escalations.cases.models import OutboxMessage, Worker
    from escalations.cases.store import WorkerId

    # each on a host of its own, alive while it claims its row; then their heartbeats stop
    owners = [_other(store, host=f"host{n}.example.org", pid=1000 + n) for n in range(3)]
    dead_rows = []
    for n, owner in enumerate(owners):
        dead_rows.append(_outbox_row(store, f"dead{n}"))
        assert owner.claim_due_outbox() == [dead_rows[-1]]
    live = Store(store.engine, store.clock, worker=WorkerId(store.worker.host, os.getpid(), "live"))
    live_row = _outbox_row(store, "live")
    assert live.claim_due_outbox() == [live_row]
    with store.session() as s:
        s.exec(update(Worker).where(Worker.owner.in_([o.owner for o in owners]))  # type: ignore[attr-defined]
               .values(heartbeat_at=store.clock.now() - timedelta(hours=1)))
        s.commit()
    free = [_outbox_row(store, f"free{n}") for n in range(2)]
    assert store.claim_due_outbox() == [*dead_rows, *free]
    assert store.claim_due_outbox() == []
    with store.session() as s:
        owner_of = {r.id: r.claimed_by for r in s.exec(select(OutboxMessage)).all()}
    assert owner_of[live_row] == live.owner
    assert {owner_of[i] for i in [*dead_rows, *free]} == {store.owner}


def test_a_restarted_process_with_its_predecessors_pid_takes_its_claims(store: Store) -> None:
    """In a container the service is PID 1 after every restart: same host, same PID, another owner."""
    import os

    from escalations.cases.store import process_start_ticks

    store.store_inbound(RAW, source="smtp")
    mine = process_start_ticks(os.getpid())
    assert mine is not None
    predecessor = _other(store, pid=os.getpid(), start_ticks=mine - 100)
    assert predecessor.claim_next_inbound() is not None
    assert store.claim_next_inbound() is not None


def test_a_live_owner_keeps_its_claims_until_its_heartbeat_is_stale(store: Store, clock: FakeClock) -> None:
    import os

    store.store_inbound(RAW, source="smtp")
    oid = _outbox_row(store, "ack")
    from escalations.cases.store import process_start_ticks

    alive_here = _other(store, pid=os.getppid(), start_ticks=process_start_ticks(os.getppid()))  # alive, here
    inbound = alive_here.claim_next_inbound()
    assert alive_here.claim_due_outbox() == [oid]
    clock.advance(timedelta(seconds=20))
    alive_here.heartbeat()
    clock.advance(timedelta(seconds=20))
    assert store.claim_next_inbound() is None and store.claim_due_outbox() == []  # beat 20 s ago
    clock.advance(timedelta(seconds=11))  # no beat for 31 s: hung or gone
    assert store.claim_next_inbound() == inbound
    assert store.claim_due_outbox() == [oid]


def test_an_owner_on_another_host_is_judged_by_its_heartbeat_and_the_lease(store: Store,
                                                                          clock: FakeClock) -> None:
    store.store_inbound(RAW, source="smtp")
    elsewhere = _other(store, host="other-host.example.org", pid=_dead_pid())  # its PID means nothing here
    inbound = elsewhere.claim_next_inbound()
    assert store.claim_next_inbound() is None
    for _ in range(12):  # it keeps beating, but holds the claim for longer than the lease
        clock.advance(timedelta(minutes=1))
        elsewhere.heartbeat()
    assert store.claim_next_inbound() == inbound


def test_own_claims_are_not_retaken_before_the_lease(store: Store, clock: FakeClock) -> None:
    store.store_inbound(RAW, source="smtp")
    assert store.claim_next_inbound() is not None
    clock.advance(timedelta(minutes=5))  # our own heartbeat says nothing about our own threads
    assert store.claim_next_inbound() is None


def test_outbox_claims_go_by_priority_then_id(store: Store) -> None:
    notice = _outbox_row(store, "notice", priority=1)
    case_mail = _outbox_row(store, "case-mail")
    later_case_mail = _outbox_row(store, "case-mail-2")
    assert store.claim_due_outbox(limit=2) == [case_mail, later_case_mail]
    assert store.claim_due_outbox() == [notice]
    row = store.get_outbox(notice)
    assert row is not None and row.claimed_by == store.owner


# ---- bounded retries --------------------------------------------------------------------------------


def test_a_message_whose_three_attempts_never_finished_is_quarantined(store: Store) -> None:
    """Each attempt killed the process: the fourth claim quarantines it instead of trying again."""
    from escalations.cases.store import TOO_MANY_ATTEMPTS

    poison = store.store_inbound(RAW, source="smtp").id
    for _ in range(3):
        assert _other(store).claim_next_inbound() == poison  # ... and dies
    fine = store.store_inbound(RAW.replace(b"m1@", b"m2@").replace(b"body line", b"other"), source="smtp").id
    assert store.claim_next_inbound() == fine  # the poison is skipped, the next message goes on
    row = store.get_inbound(poison)
    assert row is not None
    assert (row.status, row.error, row.attempts, row.claimed_by) == ("quarantined", TOO_MANY_ATTEMPTS, 3, None)
    # an administrator fixed the cause: replay resets the count
    assert store.release_for_replay(poison)
    row = store.get_inbound(poison)
    assert row is not None and (row.status, row.attempts, row.error) == ("pending", 0, None)
    assert store.claim_next_inbound() == poison
    assert store.release_for_replay(poison) is False  # not quarantined


def test_replay_for_immediate_processing_hands_the_message_over_claimed(store: Store) -> None:
    poison = store.store_inbound(RAW, source="smtp").id
    store.quarantine(poison, "ValueError")
    replayer = Store(store.engine, store.clock)
    assert replayer.release_for_replay(poison, claim=True)
    row = store.get_inbound(poison)
    assert row is not None and (row.status, row.attempts, row.claimed_by) == ("pending", 1, replayer.owner)
    assert store.claim_next_inbound() is None  # the replaying command is processing it


# ---- batches ----------------------------------------------------------------------------------------


def _raw(n: int) -> bytes:
    return RAW.replace(b"m1@", f"m{n}@".encode()).replace(b"body line", f"body {n}".encode())


def test_a_batch_claims_fresh_mail_in_order_and_hands_back_what_it_did_not_begin(store: Store) -> None:
    ids = [store.store_inbound(_raw(n), source="smtp").id for n in range(5)]
    assert store.claim_inbound_batch(3) == ids[:3]
    assert store.claim_inbound_batch(10) == ids[3:]
    assert store.release_inbound(ids[1:3]) == 2  # stopping: two of the first batch never began
    rows = {i: store.get_inbound(i) for i in ids}
    assert [(r.claimed_by, r.attempts) for r in rows.values() if r is not None] == \
        [(store.owner, 1), (None, 0), (None, 0), (store.owner, 1), (store.owner, 1)]
    assert store.claim_inbound_batch(10) == ids[1:3]  # at once, not after a lease
    assert store.release_inbound(ids[1:2]) == 1
    assert _other(store).release_inbound(ids[2:3]) == 0  # only the holder can hand a claim back


def test_mail_taken_back_from_a_dead_worker_is_claimed_alone(store: Store) -> None:
    """A batch's worker died (perhaps killed by one of its messages): each message it held comes back
    on its own, so the one that kills the process reaches its last attempt alone."""
    from escalations.cases.store import TOO_MANY_ATTEMPTS

    ids = [store.store_inbound(_raw(n), source="smtp").id for n in range(4)]
    assert _other(store).claim_inbound_batch(3) == ids[:3]  # ... and dies on ids[0]
    poison = ids[0]
    assert store.claim_inbound_batch(10) == [poison]  # taken back alone, not with fresh ids[3]
    store.release_inbound([poison])
    for _ in range(2):  # it kills two more workers
        assert _other(store).claim_inbound_batch(10) == [poison]
    assert store.claim_inbound_batch(10) == [ids[1]]  # the poison is quarantined, its neighbours go on
    assert store.claim_inbound_batch(10) == [ids[2]]
    assert store.claim_inbound_batch(10) == [ids[3]]  # fresh again: a batch
    rows = [store.get_inbound(i) for i in ids]
    assert [(r.status, r.attempts) for r in rows if r is not None] == \
        [("quarantined", 3), ("pending", 2), ("pending", 2), ("pending", 1)]
    first = rows[0]
    assert first is not None and first.error == TOO_MANY_ATTEMPTS


def test_a_fetch_batch_is_stored_in_one_transaction_as_one_by_one_would(store: Store) -> None:
    from escalations.mailer.intake import Arrival

    before = store.store_inbound(_raw(0), source="imap", idempotency_key=imap_key("h", "INBOX", 1, 1),
                                 account="h", folder="INBOX", imap_cursor=(1, 1))
    arrivals = [Arrival(raw, source="imap", idempotency_key=imap_key("h", "INBOX", 1, uid), account="h",
                        folder="INBOX", imap_cursor=(1, uid))
                for uid, raw in ((1, _raw(0)), (2, _raw(1)), (3, _raw(1)), (4, _raw(2)))]
    stored = store.store_inbound_many(arrivals)
    # uid 1 again: the row there; uid 3 is uid 2's message copied in the folder: an alias, not a row
    assert [s.created for s in stored] == [False, True, False, True]
    assert stored[0].id == before.id and stored[2].id == stored[1].id
    assert len(store.list_inbound()) == 3
    assert store.has_inbound_key(imap_key("h", "INBOX", 1, 3))
    assert store.imap_cursor("h", "INBOX") == (1, 4)
    assert store.store_inbound_many(arrivals) == [type(s)(s.id, False) for s in stored]  # again: nothing new


def test_the_processors_read_of_a_message_is_the_stored_row(store: Store) -> None:
    stored = store.store_inbound(RAW, source="imap", idempotency_key=imap_key("hackney", "INBOX", 7, 3),
                                 account="hackney", folder="INBOX", envelope_sender="a@example.org",
                                 envelope_recipients=["chscp@hackney.gov.uk"])
    row = store.get_inbound(stored.id)
    read = store.inbound_for_processing(stored.id)
    assert row is not None and read is not None
    assert (read.id, read.status, read.kind, read.raw, read.received_at, read.envelope_recipients,
            read.envelope_sender, read.source, read.account, read.partnership) == \
        (row.id, "pending", None, RAW, row.received_at, ["chscp@hackney.gov.uk"], "a@example.org", "imap",
         "hackney", None)
    assert read.received_at is not None and read.received_at.tzinfo is not None
    assert store.inbound_for_processing(stored.id + 1000) is None
