"""Persistence: sessions on the engine (cases/engine.py), and claims — the one rule by which a worker takes an
inbound message, an outgoing mail or a timer — with the workers' heartbeats.

The records themselves are read and written by the mixins :class:`~escalations.cases.inbound.InboundRecords`
(raw mail) and :class:`~escalations.cases.repository.Records` (cases, events, outbox rows, timers).
Every public method commits before it returns; nothing here decides what a message means.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import delete, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import defer
from sqlmodel import Session, col, select

from escalations.cases import schema
from escalations.cases.claims import (
    BEAT,
    INBOUND,
    INBOUND_LANE,
    OUTBOX,
    TIMER,
    Claimable,
    first_per_group,
    fresh_run,
    lease_params,
    statements_for,
)
from escalations.cases.engine import NO_WAIT, READ_ONLY, make_engine
from escalations.cases.inbound import (
    InboundRecords,
    StoredInbound,
    content_key,
    fingerprint,
    imap_key,
    message_id_of,
    split_raw,
)
from escalations.cases.models import (
    InboundMessage,
    OutboxMessage,
    Worker,
)
from escalations.cases.repository import Records
from escalations.clock import Clock

__all__ = ["HEARTBEAT_INTERVAL_SECONDS", "INBOUND_LANE", "LEASE", "MAX_UNFINISHED_ATTEMPTS", "READ_ONLY",
           "TOO_MANY_ATTEMPTS", "InboundClaim", "Store", "StoredInbound", "WorkerId", "content_key", "fingerprint",
           "imap_key", "make_engine", "message_id_of", "process_alive", "process_start_ticks", "split_raw"]

log = structlog.get_logger("escalations.store")

#: The fallback lease: a claim this old is free whoever holds it (an owner on another host that
#: still beats but has lost its work, or an owner with no worker row).
LEASE = timedelta(minutes=10)
#: A claim is free once its owner has not beaten for this long (dead, or frozen beyond use).
HEARTBEAT_STALE = timedelta(seconds=30)
#: How often a running service refreshes its heartbeat (well inside HEARTBEAT_STALE).
HEARTBEAT_INTERVAL_SECONDS = 5.0
#: Worker rows are forgotten this long after their last beat: any claim of theirs is past LEASE.
WORKER_RETENTION = timedelta(days=1)
#: Processing attempts of one inbound message that may go unfinished (crash, kill, timeout)
#: before it is quarantined instead of tried again (ARCHITECTURE: poison mail).
MAX_UNFINISHED_ATTEMPTS = 3
#: Fresh messages claimed in one transaction by the processor.
INBOUND_BATCH = 16
TOO_MANY_ATTEMPTS = "too_many_attempts"


@dataclass(frozen=True)
class InboundClaim:
    """Claimed inbound messages, in the order to process them."""

    ids: list[int]
    #: How many of the first ids to process before new mail may cut the batch short: the fresh lane's and
    #: the oldest ready message, so that both the new mail and the backlog move at every claim.
    first_run: int = 1


@dataclass(frozen=True)
class WorkerId:
    """Who holds a claim: ``host:pid:random``. ``start_ticks`` (when the process started, from
    /proc) tells a live owner from a later process that was given its PID: PIDs are reused, and a
    container's service is PID 1 after every restart."""

    host: str
    pid: int
    token: str
    start_ticks: int | None = None

    @property
    def owner(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"

    @classmethod
    def this_process(cls) -> WorkerId:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, secrets.token_hex(6), process_start_ticks(pid))


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return int(stat.rsplit(b")", 1)[1].split()[19])  # field 22, counting from the state (field 3)
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Is that process still running on this host (``kill(pid, 0)``: no signal is sent)? With
    ``start_ticks``, a process now holding the same PID but started at another time is not it."""
    if pid <= 0:
        return True  # not a real PID: no evidence it is dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        pass
    if start_ticks is None:
        return True
    now_ticks = process_start_ticks(pid)
    return now_ticks is None or now_ticks == start_ticks


def _inbound_claim(ids: list[int], lanes: Sequence[int]) -> InboundClaim:
    """The claim, with how many of its first ids hold its lane's messages and the oldest."""
    return InboundClaim(ids, min(len(ids), 1 + sum(1 for i in lanes if i in ids)))


class Store(InboundRecords, Records):
    def __init__(self, engine: Engine, clock: Clock, *, lease_clock: Clock | None = None,
                 worker: WorkerId | None = None, heartbeat_stale_after: timedelta = HEARTBEAT_STALE) -> None:
        #: Claims ("this process is working on it") and heartbeats are about processes, not
        #: deadlines: `tick --now` runs with a pretend clock for deadlines but real time for leases, so a
        #: running service never takes its claims for stale ones. Tests pass one fake clock for both.
        self.lease_clock = lease_clock or clock
        reading: dict[str, Any] = {READ_ONLY: True}
        if engine.dialect.name == "postgresql":
            # Reads run in autocommit: no BEGIN, and no ROLLBACK when the connection goes back to the
            # pool. psycopg forgets every prepared statement at a ROLLBACK (DEALLOCATE ALL), so a read
            # ending in one made every later statement be parsed and planned again (measured: 364 of
            # them in a 500-referral catch-up). The same snapshots: under READ COMMITTED each
            # statement of a transaction sees its own anyway, and a reading session never writes.
            reading["isolation_level"] = "AUTOCOMMIT"
        self._reader = engine.execution_options(**reading)
        self._no_wait = engine.execution_options(**{NO_WAIT: True})
        self.engine = engine
        self.clock = clock
        self.worker = worker or WorkerId.this_process()
        self.heartbeat_stale_after = heartbeat_stale_after
        #: The newest inbound id when this worker last claimed with a lane: its next claim's fresh lane holds
        #: mail stored after it (None: no claim yet, so all mail waiting is the backlog).
        self._lane_since: int | None = None
        self._registered = False
        self._register_lock = threading.Lock()

    @property
    def owner(self) -> str:
        return self.worker.owner

    def create_schema(self, *, in_child: bool = False) -> None:
        """Create an empty database at the schema's head; refuse one at another revision. ``in_child``:
        made by a child process (see :func:`schema.prepare`)."""
        schema.prepare(self.engine, in_child=in_child)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def transaction(self, *, wait: bool = True) -> AbstractContextManager[Connection]:
        return (self.engine if wait else self._no_wait).begin()

    def reading_connection(self) -> AbstractContextManager[Connection]:
        return self._reader.connect()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for queries only (no write lock on SQLite); never commit in it."""
        with Session(self._reader, expire_on_commit=False) as session:
            yield session

    def claim_next_inbound(self, stale_after: timedelta = LEASE) -> int | None:
        """Mark the oldest pending message as being processed by this worker; returns its id.

        The attempt is counted here, before it starts. A message whose previous
        MAX_UNFINISHED_ATTEMPTS attempts never finished (each one killed the process, or hung) is
        quarantined instead, and the next one is looked at.
        """
        ids = self.claim_inbound_batch(1, stale_after=stale_after)
        return ids[0] if ids else None

    def claim_inbound_batch(self, limit: int = INBOUND_BATCH, stale_after: timedelta = LEASE) -> list[int]:
        """:meth:`claim_inbound`'s ids."""
        return self.claim_inbound(limit, stale_after=stale_after).ids

    def claim_inbound(self, limit: int = INBOUND_BATCH, stale_after: timedelta = LEASE) -> InboundClaim:
        """Claim up to ``limit`` pending messages in one transaction; their ids in the order to process them.

        First the fresh lane: the ready messages stored since this worker's last claim (its newest id
        then), taken in the order they came, each from a sender (``sender_key``) with no older unfinished
        message — pending, whether ready or claimed by any worker — so new mail does not wait behind a
        backlog; then the oldest ready message; then the rest oldest first, as always. The lane holds all
        of that mail when there is room for it and the oldest (``limit - 1``); more than that came between
        two claims (a backlog being stored, not new mail, which comes a few at a time): its INBOUND_LANE
        newest, and the earlier is the backlog's from then on. Mail
        waiting at a worker's first claim is all backlog. Mail of one sender keeps its arrival order
        (a correction is never processed before the referral it follows: each lane message is its
        sender's oldest unfinished one, and the oldest ready message is older than all of them); mail with
        no sender key never takes the lane. A claim of one takes the oldest alone: every claim includes
        the oldest ready message, so the backlog always moves.

        Each claimed message has its attempt counted, as in :meth:`claim_next_inbound`. A batch holds
        only fresh mail: a message taken back from a worker that died (or whose lease ran out) is
        claimed alone, so that a message that kills the process counts its attempts against nobody
        else, and only it reaches MAX_UNFINISHED_ATTEMPTS. Claimed messages the caller does not get
        to are handed back with :meth:`release_inbound`; a crash leaves them to the next claimer.
        """
        self._ensure_registered()
        with self.session() as s:
            while True:
                lanes: list[int] = []
                attempts: dict[int, int] = {}
                ids = self._claim(s, INBOUND, limit=limit, stale_after=stale_after, taken_back_alone=True,
                                  lanes=lanes, counted=attempts)
                if not ids:
                    s.commit()
                    return InboundClaim([])
                spent = [i for i in ids if attempts.get(i, 0) > MAX_UNFINISHED_ATTEMPTS]
                if not spent:
                    s.commit()
                    return _inbound_claim(ids, lanes)
                for inbound_id in spent:
                    # this claim is not an attempt: it never starts
                    s.exec(update(InboundMessage).where(col(InboundMessage.id) == inbound_id)
                           .values(status="quarantined", error=TOO_MANY_ATTEMPTS, claimed_at=None, claimed_by=None,
                                   attempts=attempts[inbound_id] - 1, processed_at=self.clock.now()))
                    log.warning("inbound.quarantined", inbound_id=inbound_id, reason=TOO_MANY_ATTEMPTS,
                                attempts=attempts[inbound_id] - 1)
                ids = [i for i in ids if i not in spent]
                if ids:
                    s.commit()
                    return _inbound_claim(ids, lanes)

    def release_inbound(self, inbound_ids: Sequence[int], *, keep_attempt: bool = False) -> int:
        """Hand back claimed messages this worker did not begin (it is stopping, or a batch was cut
        short): pending again, their uncounted attempt taken off. ``keep_attempt``: one that was begun
        and stopped through no fault of its own (the database connection was lost): its attempt stays."""
        if not inbound_ids:
            return 0
        attempts = InboundMessage.attempts if keep_attempt else InboundMessage.attempts - 1
        with self.session() as s:
            n = s.exec(update(InboundMessage).where(col(InboundMessage.id).in_(list(inbound_ids)),
                                                    col(InboundMessage.claimed_by) == self.owner,
                                                    col(InboundMessage.status) == "pending")
                       .values(claimed_at=None, claimed_by=None, attempts=attempts)).rowcount
            s.commit()
        return int(n)

    def release_for_replay(self, inbound_id: int, *, claim: bool = False) -> bool:
        """Put a quarantined message back, its attempts count reset (the cause has been fixed).

        ``claim``: hand it back already claimed by this worker, its one attempt counted, for a caller
        that processes it at once (a running service must not take it meanwhile).
        """
        if claim:
            self._ensure_registered()
        with self.session() as s:
            s.connection()
            row = s.get(InboundMessage, inbound_id, options=[defer(InboundMessage.raw)])  # type: ignore[arg-type]
            if row is None or row.status != "quarantined":
                return False
            row.status, row.attempts, row.error = "pending", 0, None
            row.claimed_at, row.claimed_by = None, None
            if claim:
                row.claimed_at, row.claimed_by, row.attempts = self.lease_clock.now(), self.owner, 1
            s.commit()
            return True

    # ---- outbox ----------------------------------------------------------------------------

    def claim_due_outbox(self, limit: int = 20, stale_after: timedelta = LEASE) -> list[int]:
        """Rows due to be sent, by (priority, id), marked 'sending' so a second sender leaves them alone."""
        self._ensure_registered()
        with self.session() as s:
            claimed = self._claim(s, OUTBOX, limit=limit, stale_after=stale_after)
            s.commit()
        return claimed

    def claim_due_timer(self, now: datetime, stale_after: timedelta = LEASE) -> int | None:
        """Take the oldest timer due at ``now``; a conditional UPDATE makes it exclusive across processes."""
        ids = self.claim_due_timers(now, limit=1, stale_after=stale_after)
        return ids[0] if ids else None

    def claim_due_timers(self, now: datetime, *, limit: int = 50, stale_after: timedelta = LEASE) -> list[int]:
        """The oldest timers due at ``now``, at most one per case, in due order: one query for a batch."""
        self._ensure_registered()
        with self.session() as s:
            ids = self._claim(s, TIMER, limit=limit, stale_after=stale_after, now=now)
            s.commit()
        return ids

    # ---- claims and workers ----------------------------------------------------------------

    def _claim(self, s: Session, what: Claimable, *, limit: int, stale_after: timedelta,
               now: datetime | None = None, taken_back_alone: bool = False,
               lanes: list[int] | None = None, counted: dict[int, int] | None = None) -> list[int]:
        """The one claim rule, for inbound messages, outbox rows and timers, in the caller's transaction.

        Take the write lock first (BEGIN IMMEDIATE on SQLite), then read the clock: a "now" read before
        waiting behind another claimer could be older than that claimer's claim, and make its fresh claim
        look stale. A row is free when it is ready, or when its holder is gone: a dead worker (see
        :meth:`_dead_owners`) or a claim older than ``stale_after`` (the lease, whoever holds it).
        ``now`` is the deadline clock's time (a timer's tick); by default the store's clock after the lock.
        ``taken_back_alone``: a row taken back from a holder that is gone is claimed by itself, and a
        batch of ready rows stops before one (see :meth:`claim_inbound`). ``lanes`` gets the ids of those
        taken by the fresh lane; ``counted``, for a claimable that counts (an inbound message's attempts),
        each id taken and its count after this claim. The statements are prepared once
        (:mod:`escalations.cases.claims`).
        """
        conn = s.connection()
        lease_now = self.lease_clock.now()
        due_now = now if now is not None else self.clock.now()
        given = lease_params(due_now, lease_now, lease_now - stale_after, self.owner)
        BEAT.execute(conn, given)
        holders = [h for (h,) in statements_for(what).holders.all(conn, given)]
        dead = self._dead_owners(s, lease_now, [h for h in holders if h and h != self.owner])
        sql = statements_for(what, dead)
        given.update(sql.dead_params(dead), n=limit + 4)
        # (id, group, which condition) of the first rows meeting each condition, in claim order. One query per
        # condition, not one with OR: each is an index range (status first), where an OR read the whole
        # table in due order to find nothing due. A few more candidates than wanted: one another claimer
        # takes meanwhile is skipped, not the end.
        found = [(*row, number) for number, query in enumerate(sql.candidates) for row in query.all(conn, given)]
        found.sort(key=lambda row: tuple(row[2:-1]))
        candidates = [(row[0], row[1], row[-1]) for row in found]
        if taken_back_alone:
            candidates = fresh_run(candidates)
        rows = [(rid, group) for rid, group, _condition in candidates]
        lane: list[tuple[Any, Any]] = []
        # The lane's rows go first, in the order they came, then the oldest row (there is room: the lane is
        # at most limit - 1; a claim of one is the oldest alone), then the rest; never beside a taken-back
        # row. Its "older unfinished" test reads rows other claimers hold (a plain read, never skipped); only
        # the rows taken are locked.
        if sql.lane is not None and sql.newest is not None and limit > 1 and not (candidates and candidates[0][2] != 0):
            newest = (sql.newest.first(conn) or (None,))[0] or 0
            since = self._lane_since
            if since is not None:
                # The mail since, newest first. All of it when the claim holds it beside the oldest: new
                # mail comes a few at a time (a server announces it in bursts: Dovecot's IDLE about every
                # half second), and a burst one larger than the lane had left its first behind the whole
                # backlog. More than that is a backlog being stored: only its newest lane_size go first.
                came = sql.lane.all(conn, {**given, "lane_n": limit, "since": since})
                if len(came) > limit - 1:
                    came = came[:min(what.lane_size, limit - 1)]
                lane = [(row[0], row[1]) for row in came][::-1]  # in the order they came
                rows = lane + rows
            # Always the newest id: mail left out of a full lane is the backlog's now. (Ending the lane at its
            # last message instead walked the lane through a backlog still being stored, four at a time,
            # ahead of the new mail that came after it.)
            self._lane_since = int(newest)
        wanted = first_per_group(rows, limit)
        if not wanted:
            return []
        # The same condition again: under READ COMMITTED (PostgreSQL) a second claimer that waited on a
        # row re-checks it after the first commits, and must not take it too.
        take, ids = sql.take(wanted)
        returned = take.all(conn, {**given, **ids})
        taken = {int(row[0]) for row in returned}
        if counted is not None and what.counted is not None:
            counted.update((int(row[0]), int(row[1])) for row in returned)
        if lanes is not None:
            lanes.extend(int(rid) for rid, _group in lane if rid in taken)
        return [int(i) for i in wanted if i in taken]

    def _dead_owners(self, s: Session, lease_now: datetime, owners: Sequence[str]) -> list[str]:
        """Those of ``owners`` whose claims are free now: their heartbeat is older than
        heartbeat_stale_after, or they ran on this host and their process is gone. (An owner with no
        worker row is left to the lease.)"""
        if not owners:
            return []
        me = self.worker
        dead: list[str] = []
        for w in s.exec(select(Worker).where(col(Worker.owner).in_(list(owners)))).all():
            if w.heartbeat_at < lease_now - self.heartbeat_stale_after or (
                    w.host == me.host and not process_alive(w.pid, w.start_ticks)):
                dead.append(w.owner)
        return dead

    def _ensure_registered(self) -> None:
        if not self._registered:
            with self._register_lock:
                if not self._registered:
                    self.heartbeat()

    def heartbeat(self) -> None:
        """Say this worker is alive (the service calls it every HEARTBEAT_INTERVAL_SECONDS; every claim
        beats too). The first call registers it and forgets long-dead workers."""
        with self.session() as s:
            s.connection()
            now = self.lease_clock.now()
            res = s.exec(update(Worker).where(col(Worker.owner) == self.owner).values(heartbeat_at=now))
            if res.rowcount != 1:
                s.exec(delete(Worker).where(col(Worker.heartbeat_at) < now - WORKER_RETENTION))
                w = self.worker
                s.add(Worker(owner=w.owner, host=w.host, pid=w.pid, start_ticks=w.start_ticks, started_at=now,
                             heartbeat_at=now))
            s.commit()
        self._registered = True

    def release_outbox(self, outbox_ids: Sequence[int]) -> int:
        """Hand back sends this process claimed but did not begin (it is stopping): due again at once."""
        if not outbox_ids:
            return 0
        with self.session() as s:
            n = s.exec(update(OutboxMessage).where(col(OutboxMessage.id).in_(list(outbox_ids)),
                                                   col(OutboxMessage.claimed_by) == self.owner,
                                                   col(OutboxMessage.status) == "sending")
                       .values(status="pending", claimed_by=None, next_attempt_at=self.clock.now())).rowcount
            s.commit()
        return int(n)

    def retire(self) -> None:
        """A clean exit: this worker holds nothing any more, so its row goes."""
        with self.session() as s:
            s.exec(delete(Worker).where(col(Worker.owner) == self.owner))
            s.commit()
        self._registered = False

    def list_workers(self) -> list[Worker]:
        with self.reading() as s:
            return list(s.exec(select(Worker).order_by(col(Worker.started_at))).all())
