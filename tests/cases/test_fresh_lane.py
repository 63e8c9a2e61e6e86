"""The claim's fresh lane: new mail does not wait behind a backlog, and mail of one sender is still
processed in arrival order (a correction never before the referral it follows)."""

from __future__ import annotations

import os

import pytest

from escalations.cases.inbound import sender_key_of
from escalations.cases.store import Store, WorkerId, make_engine
from escalations.clock import FakeClock
from escalations.mailer.intake import Arrival

pytestmark = pytest.mark.servers


@pytest.fixture
def store(database_url: str, clock: FakeClock) -> Store:
    s = Store(make_engine(database_url), clock)
    s.create_schema()
    return s


def mail(n: int, sender: str | None) -> bytes:
    """A distinct message from ``sender`` (None: no From header at all)."""
    head = f"From: Practitioner {n} <{sender}>\r\n" if sender else ""
    return (f"Message-ID: <lane-{n}@example.org>\r\n{head}To: chscp@hackney.gov.uk\r\n"
            f"Date: Tue, 03 Nov 2026 10:00:00 +0000\r\nSubject: escalation {n}\r\n\r\nbody {n}\r\n").encode()


def stored(store: Store, *senders: str | None) -> list[int]:
    return [store.store_inbound(mail(n, s), source="smtp").id for n, s in enumerate(senders)]


def worker(store: Store, *, alive: bool) -> Store:
    """Another worker on the same database: a live process (this one's PID) or a dead one."""
    pid = os.getpid() if alive else _dead_pid()
    return Store(store.engine, store.clock, worker=WorkerId(store.worker.host, pid, "other-alive" if alive
                                                           else "other-dead"))


def _dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# ---- the sender key ---------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "key"), [
    (b"From: A Practitioner <A.Practitioner@Example.ORG>\r\n", "a.practitioner@example.org"),
    (b"From:\r\n Folded Name\r\n <folded@example.org>\r\n", "folded@example.org"),
    (b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.org>\r\n", "jorg@example.org"),
    (b"From: \"x@example.net\" <real@example.org>\r\n", "real@example.org"),
    (b"From: one@example.org, two@example.org\r\n", None),  # not one sender
    (b"From: one@example.org\r\nFrom: two@example.org\r\n", None),
    (b"From: undisclosed\r\n", None),
    (b"From: <>\r\n", None),
    (b"Subject: no From at all\r\n", None),
])
def test_the_sender_key_is_the_one_from_address_lower_cased(header: bytes, key: str | None) -> None:
    assert sender_key_of(header + b"To: chscp@hackney.gov.uk\r\n\r\nFrom: body@example.org\r\n") == key


def test_a_hostile_from_gives_no_key_and_a_long_header_block_still_gives_one() -> None:
    """The key is read in the watcher's thread: From values over 4 KiB in all are not parsed at all."""
    assert sender_key_of(b"From: " + b"a" * 100_000 + b"@example.org\r\n\r\nbody") is None
    folded = b"From: " + b"\r\n ".join([b"x"] * 5000) + b" <a@example.org>\r\n\r\nbody"
    assert sender_key_of(folded) is None
    many = b"".join(b"X-Header-%d: %s\r\n" % (i, b"v" * 40) for i in range(5000))
    assert sender_key_of(many + b"From: Some One <Some.One@example.org>\r\n" + many + b"\r\nbody") == \
        "some.one@example.org"


def test_the_sender_key_never_holds_what_the_database_cannot_store() -> None:
    for raw in (b"From: \xed\xa0\x80@example.org\r\n\r\n", b"From: a\x00b@example.org\r\n\r\n", b"garbage"):
        key = sender_key_of(raw)
        assert key is None or ("\x00" not in key and key.encode("utf-8"))


def test_every_intake_path_stores_the_sender_key(store: Store) -> None:
    one = store.store_inbound(mail(0, "Some.One@Example.org"), source="smtp")
    many = store.store_inbound_many([Arrival(mail(1, "two@example.org"), source="imap", idempotency_key="k1"),
                                     Arrival(mail(2, None), source="imap", idempotency_key="k2")])
    keys = [r.sender_key for r in (store.get_inbound(i) for i in [one.id, *(m.id for m in many)]) if r]
    assert keys == ["some.one@example.org", "two@example.org", None]


# ---- the claim ------------------------------------------------------------------------------


def new_mail(store: Store, *senders: str | None, first: int = 100) -> list[int]:
    """Mail stored now (after the claims before), numbered from ``first`` so each is distinct."""
    return [store.store_inbound(mail(first + n, s), source="smtp").id for n, s in enumerate(senders)]


def test_at_a_workers_first_claim_all_mail_waiting_is_backlog_oldest_first(store: Store) -> None:
    ids = stored(store, "a@example.org", "b@example.org", "c@example.org")
    claim = store.claim_inbound(2)
    assert claim.ids == ids[:2] and claim.first_run == 1


def test_mail_stored_since_the_workers_last_claim_goes_first_in_the_order_it_came(store: Store) -> None:
    backlog = stored(store, "a@example.org", "b@example.org", "c@example.org", "d@example.org")
    assert store.claim_inbound_batch(2) == backlog[:2]
    new = new_mail(store, "e@example.org", "f@example.org")
    claim = store.claim_inbound(4)
    # the new mail in the order it came, then the backlog's oldest, then the rest
    assert claim.ids == [*new, backlog[2], backlog[3]]
    assert claim.first_run == 3  # new mail may cut the batch short only after those
    assert store.claim_inbound_batch(10) == []


def test_more_new_mail_than_the_lane_holds_the_newest_go_in_the_order_they_came(store: Store) -> None:
    """The earlier of the new mail is the backlog's from then on: the next claim's lane is what came
    after this claim."""
    from escalations.cases.store import INBOUND_LANE

    backlog = stored(store, *[f"b{i}@example.org" for i in range(8)])
    assert store.claim_inbound_batch(2) == backlog[:2]
    new = new_mail(store, *[f"n{i}@example.org" for i in range(INBOUND_LANE + 2)])
    claim = store.claim_inbound(INBOUND_LANE + 2)
    assert claim.ids == [*new[2:], backlog[2], backlog[3]]
    assert claim.first_run == INBOUND_LANE + 1
    later = new_mail(store, "m@example.org", first=200)
    claim = store.claim_inbound(4)
    assert claim.ids == [*later, *backlog[4:7]] and claim.first_run == 2


def test_a_burst_of_new_mail_that_the_claim_holds_goes_first_whole(store: Store) -> None:
    """Dovecot announces new mail to IDLE about every half second, so new mail is stored a few at a time:
    a burst of six (more than INBOUND_LANE) all goes before the backlog, none of it left behind the whole
    backlog (bench/ingest.py's latency under load had every sixth message wait ~4.5 s for that)."""
    from escalations.cases.store import INBOUND_LANE

    backlog = stored(store, *[f"b{i}@example.org" for i in range(20)])
    assert store.claim_inbound_batch(2) == backlog[:2]
    burst = new_mail(store, *[f"n{i}@example.org" for i in range(INBOUND_LANE + 2)])
    claim = store.claim_inbound(16)
    assert claim.ids[:len(burst) + 1] == [*burst, backlog[2]]
    assert claim.first_run == len(burst) + 1
    assert claim.ids[len(burst) + 1:] == backlog[3:3 + 16 - len(burst) - 1]


def test_mail_after_a_backlog_still_being_stored_goes_before_it(store: Store) -> None:
    """A backlog stored a chunk at a time while the processor claims (a mailbox catching up): each
    claim's lane is the newest of what came since the last, so a message that comes after the backlog
    is in the next claim's lane, not behind the rest of the backlog."""
    assert store.claim_inbound_batch(2) == []
    chunks = [new_mail(store, *[f"c{k}-{i}@example.org" for i in range(20)], first=100 * k) for k in range(3)]
    claims = [store.claim_inbound(16)]
    single = new_mail(store, "single@example.org", first=900)[0]
    claims.append(store.claim_inbound(16))
    assert single == claims[1].ids[0] and claims[1].first_run == 2
    assert claims[0].ids[:5] == [*chunks[2][-4:], chunks[0][0]]  # the lane then: the newest four of the chunks


def test_a_claim_of_one_is_the_oldest(store: Store) -> None:
    ids = stored(store, "a@example.org", "b@example.org", "c@example.org")
    assert store.claim_next_inbound() == ids[0]
    assert store.claim_inbound_batch(1) == [ids[1]]
    new_mail(store, "d@example.org")
    assert store.claim_inbound_batch(1) == [ids[2]]  # no lane in a claim of one


def test_mail_never_jumps_an_older_pending_message_of_its_sender(store: Store) -> None:
    ids = stored(store, "x@example.org", "y@example.org", "a@example.org")  # a's referral, in the backlog
    assert store.claim_inbound_batch(2) == ids[:2]
    correction, other = new_mail(store, "A@Example.org", "b@example.org")  # a's correction, then b's mail
    # the correction is new but a's referral is unfinished: b's takes the lane, then the oldest (a's)
    assert store.claim_inbound_batch(2) == [other, ids[2]]
    assert store.claim_inbound_batch(2) == [correction]


def test_mail_never_jumps_an_older_message_of_its_sender_that_another_worker_holds(store: Store) -> None:
    ids = stored(store, "a@example.org")
    other = worker(store, alive=True)
    assert other.claim_inbound_batch(1) == [ids[0]]  # under way in the other process
    assert store.claim_inbound_batch(2) == []  # this worker's claim: nothing for it
    more = new_mail(store, "a@example.org", "b@example.org")
    # a's second message came first, but a's first is unfinished: b's takes the lane, a's waits its turn
    assert store.claim_inbound_batch(2) == [more[1], more[0]]
    row = store.get_inbound(ids[0])
    assert row is not None and row.claimed_by == other.owner  # the live worker keeps its claim


def test_a_finished_older_message_no_longer_holds_its_sender_back(store: Store) -> None:
    ids = stored(store, "a@example.org", "b@example.org", "c@example.org")
    assert store.claim_inbound_batch(2) == ids[:2]
    store.quarantine(ids[0], "test")  # finished (not pending): a's next message may take the lane
    later = new_mail(store, "a@example.org")
    assert store.claim_inbound_batch(2) == [later[0], ids[2]]


def test_mail_with_no_sender_key_never_jumps(store: Store) -> None:
    ids = stored(store, "x@example.org", "y@example.org", "z@example.org")
    assert store.claim_inbound_batch(2) == ids[:2]
    nameless, known = new_mail(store, None, "b@example.org")
    assert store.claim_inbound_batch(2) == [known, ids[2]]  # the first new one has no sender: b's takes the lane
    assert store.claim_inbound_batch(2) == [nameless]
    old = new_mail(store, *[None] * 3, first=200)  # rows from before sender keys (NULL): oldest first, as before
    assert store.claim_inbound_batch(2) == old[:2]


def test_mail_taken_back_from_a_dead_worker_is_still_claimed_alone(store: Store) -> None:
    ids = stored(store, "a@example.org", "b@example.org")
    dead = worker(store, alive=False)
    assert dead.claim_inbound_batch(10) == ids  # ... and dies on the first
    assert store.claim_inbound_batch(10) == [ids[0]]  # the oldest taken back: alone, no lane beside it
    new = new_mail(store, "c@example.org")[0]
    assert store.claim_inbound_batch(10) == [ids[1]]
    assert store.claim_inbound_batch(10) == [new]
    assert [r.attempts for r in (store.get_inbound(i) for i in (*ids, new)) if r] == [2, 2, 1]


def test_the_lane_comes_before_a_taken_back_message_it_may_pass(store: Store) -> None:
    """A fresh batch stops before a taken-back message; the lane's message (a sender with nothing
    unfinished) still comes in it."""
    assert store.claim_inbound_batch(2) == []  # this worker has claimed: what comes now is new to it
    ids = stored(store, "a@example.org", "b@example.org")
    dead = worker(store, alive=False)
    assert dead.claim_inbound_batch(2) == ids
    assert dead.release_inbound([ids[0]]) == 1  # it held b's only when it died
    new = new_mail(store, "c@example.org")[0]
    assert store.claim_inbound_batch(10) == [ids[0], new]  # the lane (a's, c's), not b's taken back
    assert store.claim_inbound_batch(10) == [ids[1]]


def test_on_postgresql_a_claim_under_way_in_another_process_holds_its_senders_mail_back(
        postgres_url: str, clock: FakeClock) -> None:
    """Two processes: the other one's claim transaction has taken a's first message and not committed
    yet. Our claim neither waits for it nor skips it in the lane's check: a's second message, the newest,
    does not jump; b's takes the lane."""
    from sqlalchemy import update

    from escalations.cases.models import InboundMessage

    store = Store(make_engine(postgres_url), clock)
    store.create_schema()
    assert store.claim_inbound_batch(2) == []  # this worker has claimed: what comes now is new to it
    ids = stored(store, "a@example.org", "b@example.org", "a@example.org")
    other = worker(store, alive=True)
    other.heartbeat()
    with other.session() as s:
        # the other process's claim of a's first message, as _claim writes it, not yet committed
        taken = s.exec(update(InboundMessage).where(InboundMessage.id == ids[0])  # type: ignore[arg-type]
                       .values(claimed_by=other.owner, claimed_at=clock.now(), attempts=1)).rowcount
        assert taken == 1
        claimed = store.claim_inbound(2)  # meanwhile (that row locked): no wait
        s.commit()
    assert claimed.ids == [ids[1], ids[2]]
    assert claimed.first_run == 2
    row = store.get_inbound(ids[0])
    assert row is not None and row.claimed_by == other.owner
