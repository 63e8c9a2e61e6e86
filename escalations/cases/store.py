"""Persistence: engine setup, idempotent raw-mail storage, claims, references, outbox rows.

Every public method commits before it returns; nothing here decides what a message means.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import ColumnElement, and_, delete, event, func, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import defer
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, col, create_engine, select

from escalations.cases import schema
from escalations.cases.models import (
    Case,
    CaseEvent,
    ImapCursor,
    InboundAlias,
    InboundMessage,
    MailboxHealth,
    OutboxMessage,
    ReferenceCounter,
    Timer,
    Worker,
)
from escalations.clock import Clock

log = structlog.get_logger("escalations.store")

_HEADER_SPLIT = re.compile(rb"\r?\n\r?\n")
_FINGERPRINT_HEADERS = (b"message-id", b"from", b"date", b"subject")


#: Execution option marking a read-only transaction (plain BEGIN on SQLite).
READ_ONLY = "escalations_read_only"


def _compact_json(value: Any) -> str:
    # no spaces after separators: JSON columns are a good part of every case's rows
    return json.dumps(value, separators=(",", ":"))


def make_engine(url: str) -> Engine:
    """An engine for SQLite (WAL, busy timeout, usable across threads) or PostgreSQL (psycopg 3)."""
    if url.startswith("sqlite"):
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if url in ("sqlite://", "sqlite:///:memory:"):
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, hide_parameters=True, json_serializer=_compact_json, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, issue BEGIN, so "BEGIN IMMEDIATE" below takes effect.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writers serialise at BEGIN instead of failing on lock upgrade mid-transaction; pure
            # reads (Store.reading) take no write lock, so they never wait behind a writer (WAL).
            if conn.get_execution_options().get(READ_ONLY):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # hide_parameters: a database error must never echo a message body (child data) into a log.
    return create_engine(url, pool_pre_ping=True, hide_parameters=True, json_serializer=_compact_json)



def split_raw(raw: bytes) -> tuple[bytes, bytes]:
    parts = _HEADER_SPLIT.split(raw, maxsplit=1)
    return (parts[0], parts[1] if len(parts) > 1 else b"")


def _header_values(header_block: bytes) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    current: bytes | None = None
    for line in header_block.splitlines():
        if line[:1] in (b" ", b"\t") and current is not None:
            found[current] += b" " + line.strip()
            continue
        name, sep, value = line.partition(b":")
        current = None
        if sep:
            key = name.strip().lower()
            if key in _FINGERPRINT_HEADERS and key not in found:
                found[key] = value.strip()
                current = key
    return found


def fingerprint(raw: bytes) -> str:
    """Identity of a message independent of transit headers and line-ending changes."""
    header_block, body = split_raw(raw)
    values = _header_values(header_block)
    h = hashlib.sha256()
    if not values:  # not a recognisable message: only its exact bytes identify it
        h.update(b"raw=" + raw)
    for name in _FINGERPRINT_HEADERS:
        h.update(name + b"=" + b" ".join(values.get(name, b"").split()) + b"\n")
    h.update(b"\n".join(line.rstrip() for line in body.replace(b"\r\n", b"\n").split(b"\n")).rstrip())
    return h.hexdigest()


def message_id_of(raw: bytes) -> str | None:
    mid = _header_values(split_raw(raw)[0]).get(b"message-id")
    if not mid:
        return None
    return mid.decode("ascii", "replace").strip().strip("<>").strip() or None


def content_key(raw: bytes) -> str:
    """Idempotency key for mail that did not come from IMAP: SHA-256 of the bytes plus Message-ID."""
    return f"sha256:{hashlib.sha256(raw).hexdigest()}|mid:{message_id_of(raw) or '-'}"


def imap_key(account: str, folder: str, uidvalidity: int, uid: int) -> str:
    return f"imap:{account}:{folder}:{uidvalidity}:{uid}"


@dataclass(frozen=True)
class StoredInbound:
    id: int
    created: bool


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
TOO_MANY_ATTEMPTS = "too_many_attempts"


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


@dataclass(frozen=True)
class _Claimable:
    """One kind of claimable row, described for :meth:`Store._claim`."""

    table: Any
    id: Any
    claimed_by: Any
    #: Free rows that are due, given the deadline clock's "now".
    ready: Callable[[datetime], ColumnElement[bool]]
    #: Rows someone holds, given the deadline clock's "now".
    held: Callable[[datetime], ColumnElement[bool]]
    #: When the holder took it.
    held_since: Any
    order_by: tuple[Any, ...]
    #: Columns the claim sets, given the lease clock's "now" (claimed_by is set by _claim).
    values: Callable[[datetime], dict[str, Any]]


_INBOUND = _Claimable(
    table=InboundMessage,
    id=col(InboundMessage.id),
    claimed_by=col(InboundMessage.claimed_by),
    ready=lambda _now: (col(InboundMessage.status) == "pending") & col(InboundMessage.claimed_at).is_(None),
    held=lambda _now: (col(InboundMessage.status) == "pending") & col(InboundMessage.claimed_at).is_not(None),
    held_since=col(InboundMessage.claimed_at),
    order_by=(col(InboundMessage.id),),
    values=lambda lease_now: {"claimed_at": lease_now, "attempts": InboundMessage.attempts + 1},
)

_OUTBOX = _Claimable(
    table=OutboxMessage,
    id=col(OutboxMessage.id),
    claimed_by=col(OutboxMessage.claimed_by),
    ready=lambda now: (col(OutboxMessage.status) == "pending") & (col(OutboxMessage.next_attempt_at) <= now),
    held=lambda _now: col(OutboxMessage.status) == "sending",
    # while sending, next_attempt_at is when the claim was taken
    held_since=col(OutboxMessage.next_attempt_at),
    order_by=(col(OutboxMessage.priority), col(OutboxMessage.id)),
    values=lambda lease_now: {"status": "sending", "next_attempt_at": lease_now},
)

_TIMER = _Claimable(
    table=Timer,
    id=col(Timer.id),
    claimed_by=col(Timer.claimed_by),
    ready=lambda now: (col(Timer.due_at) <= now) & (col(Timer.status) == "pending"),
    held=lambda now: (col(Timer.due_at) <= now) & (col(Timer.status) == "firing"),
    held_since=col(Timer.claimed_at),
    order_by=(col(Timer.due_at), col(Timer.id)),
    values=lambda lease_now: {"status": "firing", "claimed_at": lease_now},
)


class Store:
    def __init__(self, engine: Engine, clock: Clock, *, lease_clock: Clock | None = None,
                 worker: WorkerId | None = None, heartbeat_stale_after: timedelta = HEARTBEAT_STALE) -> None:
        #: Claims ("this process is working on it") and heartbeats are about processes, not
        #: deadlines: `tick --now` runs with a pretend clock for deadlines but real time for leases, so a
        #: running service never takes its claims for stale ones. Tests pass one fake clock for both.
        self.lease_clock = lease_clock or clock
        self._reader = engine.execution_options(**{READ_ONLY: True})
        self.engine = engine
        self.clock = clock
        self.worker = worker or WorkerId.this_process()
        self.heartbeat_stale_after = heartbeat_stale_after
        self._registered = False
        self._register_lock = threading.Lock()

    @property
    def owner(self) -> str:
        return self.worker.owner

    def create_schema(self) -> None:
        """Create an empty database at the schema's head; refuse one at another revision."""
        schema.prepare(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for queries only (no write lock on SQLite); never commit in it."""
        with Session(self._reader, expire_on_commit=False) as session:
            yield session

    # ---- inbound -------------------------------------------------------------------------

    def store_inbound(
        self,
        raw: bytes,
        *,
        source: str,
        idempotency_key: str | None = None,
        account: str | None = None,
        folder: str | None = None,
        envelope_sender: str | None = None,
        envelope_recipients: Sequence[str] = (),
        received_at: datetime | None = None,
        imap_cursor: tuple[int, int] | None = None,
    ) -> StoredInbound:
        """Commit the raw bytes once. Returns the existing row for a key or fingerprint seen before.

        ``imap_cursor=(uidvalidity, uid)`` advances the folder's cursor in the same transaction.
        """
        key = idempotency_key or content_key(raw)
        fp = fingerprint(raw)
        for _attempt in range(5):
            try:
                with self.session() as s:
                    existing = self._find_inbound(s, key, fp)
                    if existing is not None:
                        if existing.idempotency_key != key and s.get(InboundAlias, key) is None:
                            s.add(InboundAlias(idempotency_key=key, inbound_id=existing.id or 0,
                                               created_at=self.clock.now()))
                        if imap_cursor and account and folder:
                            self._advance_cursor(s, account, folder, *imap_cursor)
                        s.commit()
                        return StoredInbound(existing.id or 0, False)
                    row = InboundMessage(
                        source=source,
                        idempotency_key=key,
                        fingerprint=fp,
                        account=account,
                        folder=folder,
                        message_id=message_id_of(raw),
                        envelope_sender=envelope_sender,
                        envelope_recipients=list(envelope_recipients),
                        raw=raw,
                        size=len(raw),
                        received_at=received_at or self.clock.now(),
                    )
                    s.add(row)
                    if imap_cursor and account and folder:
                        self._advance_cursor(s, account, folder, *imap_cursor)
                    s.commit()
                    return StoredInbound(row.id or 0, True)
            except IntegrityError:
                continue  # a concurrent writer stored it first: look again
        raise RuntimeError("could not store inbound message after concurrent conflicts")

    @staticmethod
    def _find_inbound(s: Session, key: str, fp: str) -> InboundMessage | None:
        row = s.exec(select(InboundMessage).where(InboundMessage.idempotency_key == key)).first()
        if row is not None:
            return row
        alias = s.get(InboundAlias, key)
        if alias is not None:
            return s.get(InboundMessage, alias.inbound_id)
        return s.exec(select(InboundMessage).where(InboundMessage.fingerprint == fp)).first()

    def has_inbound_key(self, key: str) -> bool:
        with self.reading() as s:
            if s.exec(select(InboundMessage.id).where(InboundMessage.idempotency_key == key)).first():
                return True
            return s.get(InboundAlias, key) is not None

    def stored_imap_uids(self, account: str, folder: str, uidvalidity: int, uids: Sequence[int]) -> set[int]:
        """Which of these UIDs of a folder are stored (under their own key or as an alias)."""
        found: set[int] = set()
        uid_list = list(uids)
        with self.reading() as s:
            for start in range(0, len(uid_list), 500):
                keys = {imap_key(account, folder, uidvalidity, u): u for u in uid_list[start:start + 500]}
                hits = [*s.exec(select(InboundMessage.idempotency_key)
                                .where(col(InboundMessage.idempotency_key).in_(list(keys)))).all(),
                        *s.exec(select(InboundAlias.idempotency_key)
                                .where(col(InboundAlias.idempotency_key).in_(list(keys)))).all()]
                found.update(keys[k] for k in hits)
        return found

    def _advance_cursor(self, s: Session, account: str, folder: str, uidvalidity: int, uid: int) -> None:
        cur = s.exec(select(ImapCursor).where(ImapCursor.account == account, ImapCursor.folder == folder)).first()
        now = self.clock.now()
        if cur is None:
            s.add(ImapCursor(account=account, folder=folder, uidvalidity=uidvalidity, last_uid=uid, updated_at=now))
        elif cur.uidvalidity != uidvalidity:
            cur.uidvalidity, cur.last_uid, cur.updated_at = uidvalidity, uid, now
        elif uid > cur.last_uid:
            cur.last_uid, cur.updated_at = uid, now

    def imap_cursor(self, account: str, folder: str) -> tuple[int, int] | None:
        with self.reading() as s:
            cur = s.exec(
                select(ImapCursor).where(ImapCursor.account == account, ImapCursor.folder == folder)
            ).first()
            return (cur.uidvalidity, cur.last_uid) if cur else None

    def reset_imap_cursor(self, account: str, folder: str, uidvalidity: int) -> None:
        """UIDVALIDITY changed: start the folder again; fingerprints stop re-stored mail duplicating."""
        with self.session() as s:
            cur = s.exec(
                select(ImapCursor).where(ImapCursor.account == account, ImapCursor.folder == folder)
            ).first()
            if cur is None:
                s.add(ImapCursor(account=account, folder=folder, uidvalidity=uidvalidity, last_uid=0,
                                 updated_at=self.clock.now()))
            else:
                cur.uidvalidity, cur.last_uid, cur.updated_at = uidvalidity, 0, self.clock.now()
            s.commit()

    def record_mailbox_contact(self, name: str, *, idle: bool | None = None, error_code: str | None = None) -> None:
        """A watcher's successful contact (``error_code`` None) or failure, for status and alerts."""
        now = self.lease_clock.now()  # about the process and the server, not a case's deadlines
        for _ in range(2):  # a concurrent first insert: update the row it made
            with self.session() as s:
                row = s.get(MailboxHealth, name)
                if row is None:
                    row = MailboxHealth(name=name, since_at=now)
                if error_code is None:
                    row.last_ok_at, row.idle = now, idle
                else:
                    row.last_error_at, row.last_error_code = now, error_code[:64]
                s.add(row)
                try:
                    s.commit()
                    return
                except IntegrityError:
                    s.rollback()

    def claim_next_inbound(self, stale_after: timedelta = LEASE) -> int | None:
        """Mark the oldest pending message as being processed by this worker; returns its id.

        The attempt is counted here, before it starts. A message whose previous
        MAX_UNFINISHED_ATTEMPTS attempts never finished (each one killed the process, or hung) is
        quarantined instead, and the next one is looked at.
        """
        self._ensure_registered()
        with self.session() as s:
            while True:
                ids = self._claim(s, _INBOUND, limit=1, stale_after=stale_after)
                if not ids:
                    s.commit()
                    return None
                attempts = s.exec(select(InboundMessage.attempts).where(InboundMessage.id == ids[0])).one()
                if attempts <= MAX_UNFINISHED_ATTEMPTS:
                    s.commit()
                    return ids[0]
                # this claim is not an attempt: it never starts
                s.exec(update(InboundMessage).where(col(InboundMessage.id) == ids[0])
                       .values(status="quarantined", error=TOO_MANY_ATTEMPTS, claimed_at=None, claimed_by=None,
                               attempts=attempts - 1, processed_at=self.clock.now()))
                log.warning("inbound.quarantined", inbound_id=ids[0], reason=TOO_MANY_ATTEMPTS,
                            attempts=attempts - 1)

    def pending_inbound_count(self) -> int:
        with self.reading() as s:
            return s.exec(
                select(func.count()).select_from(InboundMessage).where(InboundMessage.status == "pending")
            ).one()

    def quarantine(self, inbound_id: int, error: str) -> None:
        with self.session() as s:
            row = s.get(InboundMessage, inbound_id)
            if row is None:
                return
            row.status, row.error, row.claimed_at, row.claimed_by = "quarantined", error, None, None
            row.processed_at = self.clock.now()
            s.commit()

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

    def list_inbound(self, status: str | None = None) -> list[InboundMessage]:
        with self.reading() as s:
            q = select(InboundMessage).order_by(col(InboundMessage.id))
            if status:
                q = q.where(InboundMessage.status == status)
            return list(s.exec(q).all())

    def get_inbound(self, inbound_id: int) -> InboundMessage | None:
        with self.reading() as s:
            return s.get(InboundMessage, inbound_id)

    # ---- cases -----------------------------------------------------------------------------

    @staticmethod
    def allocate_reference(s: Session, prefix: str, year: int) -> str:
        """Next reference such as CH-2026-0001, inside the caller's transaction."""
        counter = s.exec(
            select(ReferenceCounter)
            .where(ReferenceCounter.prefix == prefix, ReferenceCounter.year == year)
            .with_for_update()
        ).first()
        if counter is None:
            counter = ReferenceCounter(prefix=prefix, year=year, last=0)
            s.add(counter)
        counter.last += 1
        s.flush()
        return f"{prefix}-{year}-{counter.last:04d}"

    def list_cases(self, partnership: str | None = None, status: str | None = None) -> list[Case]:
        with self.reading() as s:
            q = select(Case).order_by(col(Case.id))
            if partnership:
                q = q.where(Case.partnership == partnership)
            if status:
                q = q.where(Case.status == status)
            return list(s.exec(q).all())

    def case_by_reference(self, reference: str) -> Case | None:
        with self.reading() as s:
            return s.exec(select(Case).where(func.upper(Case.reference) == reference.upper())).first()

    def case_events(self, case_id: int) -> list[CaseEvent]:
        with self.reading() as s:
            return list(s.exec(select(CaseEvent).where(CaseEvent.case_id == case_id)
                               .order_by(col(CaseEvent.at), col(CaseEvent.id))).all())

    @staticmethod
    def case_for_message_ids(s: Session, message_ids: Sequence[str]) -> Case | None:
        """The case one of our sent messages (or the referral itself) belongs to."""
        ids = [m for m in message_ids if m]
        if not ids:
            return None
        out = s.exec(select(OutboxMessage).where(col(OutboxMessage.message_id).in_(ids),
                                                 col(OutboxMessage.case_id).is_not(None))).first()
        if out is not None and out.case_id is not None:
            return s.get(Case, out.case_id)
        return s.exec(select(Case).where(col(Case.origin_message_id).in_(ids))).first()

    # ---- outbox ----------------------------------------------------------------------------

    def claim_due_outbox(self, limit: int = 20, stale_after: timedelta = LEASE) -> list[int]:
        """Rows due to be sent, by (priority, id), marked 'sending' so a second sender leaves them alone."""
        self._ensure_registered()
        with self.session() as s:
            claimed = self._claim(s, _OUTBOX, limit=limit, stale_after=stale_after)
            s.commit()
        return claimed

    def get_outbox(self, outbox_id: int) -> OutboxMessage | None:
        with self.reading() as s:
            return s.get(OutboxMessage, outbox_id)

    def mark_outbox_sent(self, outbox_id: int) -> None:
        with self.session() as s:
            row = s.get(OutboxMessage, outbox_id)
            if row is not None:
                row.status, row.sent_at, row.last_error = "sent", self.clock.now(), None
                row.attempts += 1
                s.commit()

    def mark_outbox_failed(self, outbox_id: int, error: str, retry_at: datetime | None) -> None:
        with self.session() as s:
            row = s.get(OutboxMessage, outbox_id)
            if row is not None:
                row.attempts += 1
                row.last_error = error
                if retry_at is None:
                    row.status = "failed"
                else:
                    row.status, row.next_attempt_at = "pending", retry_at
                s.commit()

    def list_outbox(self, status: str | None = None) -> list[OutboxMessage]:
        with self.reading() as s:
            q = select(OutboxMessage).order_by(col(OutboxMessage.id))
            if status:
                q = q.where(OutboxMessage.status == status)
            return list(s.exec(q).all())

    def next_outbox_due(self) -> datetime | None:
        with self.reading() as s:
            return s.exec(
                select(func.min(OutboxMessage.next_attempt_at)).where(OutboxMessage.status == "pending")
            ).one()

    # ---- timers ----------------------------------------------------------------------------

    @staticmethod
    def schedule_timer(s: Session, *, case_id: int, stage: int | None, kind: str, due_at: datetime,
                       now: datetime, key: str | None = None) -> Timer | None:
        """Add a timer in the caller's transaction unless one with the same key exists."""
        key = key or f"{case_id}:{stage}:{kind}"
        if s.exec(select(Timer.id).where(Timer.key == key)).first() is not None:
            return None
        timer = Timer(key=key, case_id=case_id, stage=stage, kind=kind, due_at=due_at, created_at=now)
        s.add(timer)
        return timer

    @staticmethod
    def cancel_timers(s: Session, case_id: int, *, kinds: Sequence[str] | None = None) -> int:
        q = update(Timer).where(col(Timer.case_id) == case_id, col(Timer.status) == "pending")
        if kinds:
            q = q.where(col(Timer.kind).in_(list(kinds)))
        result = s.exec(q.values(status="cancelled"))
        return int(result.rowcount or 0)

    def claim_due_timer(self, now: datetime, stale_after: timedelta = LEASE) -> int | None:
        """Take the oldest timer due at ``now``; a conditional UPDATE makes it exclusive across processes."""
        self._ensure_registered()
        with self.session() as s:
            ids = self._claim(s, _TIMER, limit=1, stale_after=stale_after, now=now)
            s.commit()
        return ids[0] if ids else None

    def list_timers(self, case_id: int | None = None, status: str | None = None) -> list[Timer]:
        with self.reading() as s:
            q = select(Timer).order_by(col(Timer.due_at), col(Timer.id))
            if case_id is not None:
                q = q.where(Timer.case_id == case_id)
            if status:
                q = q.where(Timer.status == status)
            return list(s.exec(q).all())

    def retry_timer(self, timer_id: int) -> bool:
        """Put a failed timer back to pending (after the cause is fixed); the next tick fires it."""
        with self.session() as s:
            res = s.exec(
                update(Timer)
                .where(col(Timer.id) == timer_id, col(Timer.status) == "failed")
                .values(status="pending", claimed_at=None, claimed_by=None, fired_at=None)
            )
            s.commit()
            return bool(res.rowcount == 1)

    # ---- claims and workers ----------------------------------------------------------------

    def _claim(self, s: Session, what: _Claimable, *, limit: int, stale_after: timedelta,
               now: datetime | None = None) -> list[int]:
        """The one claim rule, for inbound messages, outbox rows and timers, in the caller's transaction.

        Take the write lock first (BEGIN IMMEDIATE on SQLite), then read the clock: a "now" read before
        waiting behind another claimer could be older than that claimer's claim, and make its fresh claim
        look stale. A row is free when it is ready, or when its holder is gone: a dead worker (see
        :meth:`_dead_owners`) or a claim older than ``stale_after`` (the lease, whoever holds it).
        ``now`` is the deadline clock's time (a timer's tick); by default the store's clock after the lock.
        """
        s.connection()
        lease_now = self.lease_clock.now()
        due_now = now if now is not None else self.clock.now()
        self._beat(s, lease_now)
        abandoned: ColumnElement[bool] = what.held_since < lease_now - stale_after
        holders = s.exec(select(what.claimed_by).where(what.held(due_now), what.claimed_by.is_not(None))
                         .distinct()).all()
        dead = self._dead_owners(s, lease_now, [h for h in holders if h and h != self.owner])
        if dead:
            abandoned = or_(abandoned, what.claimed_by.in_(dead))
        takeable = or_(what.ready(due_now), and_(what.held(due_now), abandoned))
        # a few more candidates than wanted: one another claimer takes meanwhile is skipped, not the end
        ids = s.exec(select(what.id).where(takeable).order_by(*what.order_by).limit(limit + 4)).all()
        claimed: list[int] = []
        for rid in ids:
            if len(claimed) == limit:
                break
            # The same condition again: under READ COMMITTED (PostgreSQL) a second claimer that waited
            # on this row re-checks it after the first commits, and must not take it too.
            res = s.exec(update(what.table).where(what.id == rid, takeable)
                         .values(claimed_by=self.owner, **what.values(lease_now)))
            if res.rowcount == 1:
                claimed.append(int(rid))
        return claimed

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

    def _beat(self, s: Session, lease_now: datetime) -> None:
        s.exec(update(Worker).where(col(Worker.owner) == self.owner).values(heartbeat_at=lease_now))

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
