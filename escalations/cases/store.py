"""Persistence: engine setup, idempotent raw-mail storage, claims, references, outbox rows.

Every public method commits before it returns; nothing here decides what a message means.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event, func, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, col, create_engine, select

from escalations.cases.models import (
    Case,
    CaseEvent,
    ImapCursor,
    InboundAlias,
    InboundMessage,
    OutboxMessage,
    ReferenceCounter,
    Timer,
)
from escalations.clock import Clock

_HEADER_SPLIT = re.compile(rb"\r?\n\r?\n")
_FINGERPRINT_HEADERS = (b"message-id", b"from", b"date", b"subject")


#: Execution option marking a read-only transaction (plain BEGIN on SQLite).
READ_ONLY = "escalations_read_only"


def make_engine(url: str) -> Engine:
    """An engine for SQLite (WAL, busy timeout, usable across threads) or PostgreSQL (psycopg 3)."""
    if url.startswith("sqlite"):
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if url in ("sqlite://", "sqlite:///:memory:"):
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, hide_parameters=True, **kwargs)

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
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)



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


class Store:
    def __init__(self, engine: Engine, clock: Clock, *, lease_clock: Clock | None = None) -> None:
        #: Claims ("this process is working on it"; stale after 10 minutes) are about processes, not
        #: deadlines: `tick --now` runs with a pretend clock for deadlines but real time for leases, so a
        #: running service never takes its claims for stale ones. Tests pass one fake clock for both.
        self.lease_clock = lease_clock or clock
        self._reader = engine.execution_options(**{READ_ONLY: True})
        self.engine = engine
        self.clock = clock

    def create_schema(self) -> None:
        SQLModel.metadata.create_all(self.engine)

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

    def claim_next_inbound(self, stale_after: timedelta = timedelta(minutes=10)) -> int | None:
        """Atomically mark the oldest pending message as being processed; returns its id."""
        with self.session() as s:
            s.connection()  # the write lock before the clock (see claim_due_outbox)
            now = self.lease_clock.now()
            candidates = s.exec(
                select(InboundMessage.id)
                .where(
                    col(InboundMessage.status) == "pending",
                    or_(col(InboundMessage.claimed_at).is_(None), col(InboundMessage.claimed_at) < now - stale_after),
                )
                .order_by(col(InboundMessage.id))
                .limit(5)
            ).all()
            for cid in candidates:
                result = s.exec(
                    update(InboundMessage)
                    .where(
                        col(InboundMessage.id) == cid,
                        col(InboundMessage.status) == "pending",
                        or_(col(InboundMessage.claimed_at).is_(None),
                            col(InboundMessage.claimed_at) < now - stale_after),
                    )
                    .values(claimed_at=now, attempts=InboundMessage.attempts + 1)
                )
                if result.rowcount == 1:
                    s.commit()
                    return cid
            s.commit()
        return None

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
            row.status, row.error, row.claimed_at = "quarantined", error, None
            row.processed_at = self.clock.now()
            s.commit()

    def release_for_replay(self, inbound_id: int) -> bool:
        with self.session() as s:
            row = s.get(InboundMessage, inbound_id)
            if row is None or row.status != "quarantined":
                return False
            row.status, row.claimed_at = "pending", None
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

    def claim_due_outbox(self, limit: int = 20, stale_after: timedelta = timedelta(minutes=10)) -> list[int]:
        """Rows due to be sent, marked 'sending' so a second sender leaves them alone."""
        claimed: list[int] = []
        with self.session() as s:
            # Take the write lock first (BEGIN IMMEDIATE on SQLite), then read the clock: a "now" read
            # before waiting behind another sender could be older than that sender's claim, and make
            # its fresh claim look stale (a second send of the same row).
            s.connection()
            now = self.clock.now()
            lease_now = self.lease_clock.now()
            ids = s.exec(
                select(OutboxMessage.id)
                .where(
                    or_(
                        (col(OutboxMessage.status) == "pending") & (col(OutboxMessage.next_attempt_at) <= now),
                        (col(OutboxMessage.status) == "sending") & (col(OutboxMessage.next_attempt_at) < lease_now - stale_after),
                    )
                )
                .order_by(col(OutboxMessage.priority), col(OutboxMessage.id))
                .limit(limit)
            ).all()
            for oid in ids:
                # The same condition again: under READ COMMITTED (PostgreSQL) a second sender that
                # waited on this row re-checks it after the first commits, and must not take it too.
                res = s.exec(
                    update(OutboxMessage)
                    .where(
                        col(OutboxMessage.id) == oid,
                        or_(
                            (col(OutboxMessage.status) == "pending") & (col(OutboxMessage.next_attempt_at) <= now),
                            (col(OutboxMessage.status) == "sending")
                            & (col(OutboxMessage.next_attempt_at) < lease_now - stale_after),
                        ),
                    )
                    .values(status="sending", next_attempt_at=lease_now)
                )
                if res.rowcount == 1:
                    claimed.append(oid or 0)
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

    def claim_due_timer(self, now: datetime, stale_after: timedelta = timedelta(minutes=10)) -> int | None:
        """Take the oldest due timer; a conditional UPDATE makes it exclusive across processes."""
        with self.session() as s:
            ids = s.exec(
                select(Timer.id)
                .where(
                    col(Timer.due_at) <= now,
                    or_(col(Timer.status) == "pending",
                        (col(Timer.status) == "firing") & (col(Timer.claimed_at) < self.lease_clock.now() - stale_after)),
                )
                .order_by(col(Timer.due_at), col(Timer.id))
                .limit(5)
            ).all()
            for tid in ids:
                res = s.exec(
                    update(Timer)
                    .where(col(Timer.id) == tid,
                           or_(col(Timer.status) == "pending",
                               (col(Timer.status) == "firing")
                               & (col(Timer.claimed_at) < self.lease_clock.now() - stale_after)))
                    .values(status="firing", claimed_at=self.lease_clock.now())
                )
                if res.rowcount == 1:
                    s.commit()
                    return tid
            s.commit()
        return None

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
                .values(status="pending", claimed_at=None, fired_at=None)
            )
            s.commit()
            return bool(res.rowcount == 1)
