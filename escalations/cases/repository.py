"""Queries and writes of cases, their events, outgoing mail rows and timers. The functions that take
a ``Session`` work in the caller's transaction; the others open their own. Mixed into
:class:`~escalations.cases.store.Store`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, bindparam, func, update
from sqlalchemy import select as core_select
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from escalations.cases.claims import padded, padded_params
from escalations.cases.engine import WriteLockBusy, in_chunks
from escalations.cases.models import Case, CaseEvent, OutboxMessage, ReferenceCounter, Timer
from escalations.cases.prepared import Prepared, dialect_insert
from escalations.clock import Clock


class SessionSource:
    """What the record mixins need of the store: its clocks and its two kinds of session."""

    clock: Clock
    lease_clock: Clock

    def session(self) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def reading(self) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def transaction(self, *, wait: bool = True) -> AbstractContextManager[Connection]:
        """A write transaction on a plain connection (no ORM session), committed on exit. ``wait=False``:
        on SQLite, begun only if no other writer of this process has the write lock now, else
        :class:`~escalations.cases.engine.WriteLockBusy` is raised."""
        raise NotImplementedError

    def reading_connection(self) -> AbstractContextManager[Connection]:
        """A plain connection for queries only (no write lock on SQLite, no ORM session)."""
        raise NotImplementedError


class Records(SessionSource):
    # ---- cases -----------------------------------------------------------------------------

    @staticmethod
    def allocate_reference(s: Session, prefix: str, year: int) -> str:
        """Next reference such as CH-2026-0001, inside the caller's transaction: one atomic increment
        (the year's first referral, in two processes at once, makes its counter once)."""
        conn = s.connection()
        which = {"of_prefix": prefix, "of_year": year}
        bumped = _BUMP_REFERENCE.execute(conn, which).fetchone()
        if bumped is None:
            insert = dialect_insert(conn.dialect.name)
            conn.execute(insert(ReferenceCounter).values(prefix=prefix, year=year, last=0)
                         .on_conflict_do_nothing(index_elements=["prefix", "year"]))
            bumped = _BUMP_REFERENCE.execute(conn, which).fetchone()
        return f"{prefix}-{year}-{bumped[0]:04d}"

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

    def get_outbox(self, outbox_id: int) -> OutboxMessage | None:
        with self.reading() as s:
            return s.get(OutboxMessage, outbox_id)

    def get_outboxes(self, outbox_ids: Sequence[int]) -> list[OutboxToSend]:
        """What the dispatcher needs of the rows, in the order asked (those that exist). Not ORM objects:
        building them was most of reading a batch."""
        found: dict[int, OutboxToSend] = {}
        with self.reading_connection() as conn:
            for chunk in in_chunks(dict.fromkeys(outbox_ids)):
                slots = padded(chunk)
                for row in _to_send(slots).all(conn, padded_params("id", chunk, slots)):
                    found[row[0]] = OutboxToSend(*row)
        return [found[i] for i in outbox_ids if i in found]

    def mark_outbox_sent(self, outbox_id: int) -> None:
        self.mark_outboxes_sent([outbox_id])

    def mark_outboxes_sent(self, outbox_ids: Sequence[int], *, wait: bool = True) -> bool:
        """Sent, all in one update (a batch sent over one connection). ``wait=False``: only if the write
        lock is free now (SQLite); False when it was not, and nothing was written."""
        if not outbox_ids:
            return True
        now = self.clock.now()
        try:
            with self.transaction(wait=wait) as conn:
                _MARK_SENT.executemany(conn, [{"outbox": i, "sent_now": now} for i in outbox_ids])
        except WriteLockBusy:
            return False
        return True

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

    def outbox_of_case(self, case_id: int) -> list[OutboxMessage]:
        """One case's mail, oldest first."""
        with self.reading() as s:
            return list(s.exec(select(OutboxMessage).where(OutboxMessage.case_id == case_id)
                               .order_by(col(OutboxMessage.id))).all())

    def acknowledgement_statuses(self, case_ids: Iterable[int]) -> dict[int, str]:
        """The status of the latest acknowledgement (``referral_*`` mail) of each of these cases that
        has one."""
        out: dict[int, str] = {}
        with self.reading() as s:
            for chunk in in_chunks(dict.fromkeys(case_ids)):
                q = (select(OutboxMessage.case_id, OutboxMessage.status)
                     .where(col(OutboxMessage.case_id).in_(chunk),
                            col(OutboxMessage.template).startswith("referral_", autoescape=True))
                     .order_by(col(OutboxMessage.id)))
                for case_id, status in s.exec(q).all():
                    if case_id is not None:
                        out[case_id] = status
        return out

    def next_outbox_due(self) -> datetime | None:
        with self.reading() as s:
            return s.exec(
                select(func.min(OutboxMessage.next_attempt_at)).where(OutboxMessage.status == "pending")
            ).one()

    # ---- timers ----------------------------------------------------------------------------

    @staticmethod
    def schedule_timer(s: Session, *, case_id: int, stage: int | None, kind: str, due_at: datetime,
                       now: datetime, key: str | None = None) -> bool:
        """Add a timer in the caller's transaction unless one with the same key exists (True: added)."""
        row = {"key": key or f"{case_id}:{stage}:{kind}", "case_id": case_id, "stage": stage, "kind": kind,
               "due_at": due_at, "created_at": now}
        return Records.schedule_timers(s, [row]) == 1

    @staticmethod
    def schedule_timers(s: Session, rows: Sequence[Mapping[str, Any]]) -> int:
        """Add these timers (key, case_id, stage, kind, due_at, created_at) in one statement, those whose
        key exists left as they are; returns how many were added."""
        if not rows:
            return 0
        conn = s.connection()
        # one row at a time: RETURNING says which were added (executemany returns nothing)
        return sum(_INSERT_TIMER.execute(conn, {**r, "status": "pending"}).fetchone() is not None for r in rows)

    @staticmethod
    def cancel_timers(s: Session, case_id: int, *, kinds: Sequence[str] | None = None) -> int:
        if not kinds:
            return int(s.connection().execute(_CANCEL_TIMERS, {"of_case": case_id}).rowcount or 0)
        q = update(Timer).where(col(Timer.case_id) == case_id, col(Timer.status) == "pending",
                                col(Timer.kind).in_(list(kinds)))
        result = s.exec(q.values(status="cancelled"))
        return int(result.rowcount or 0)

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


@dataclass(frozen=True)
class OutboxToSend:
    """An outbox row as the dispatcher sends it (:meth:`Records.get_outboxes`)."""

    id: int
    sender: str
    recipients: list[str]
    raw: bytes
    message_id: str
    attempts: int


_TO_SEND: dict[int, Prepared] = {}


def _to_send(slots: int) -> Prepared:
    """SELECT of the columns of :class:`OutboxToSend` for ``slots`` ids (padded: few statements)."""
    statement = _TO_SEND.get(slots)
    if statement is None:
        o = OutboxMessage
        statement = Prepared(core_select(col(o.id), col(o.sender), col(o.recipients), col(o.raw), col(o.message_id),
                                    col(o.attempts))
                             .where(col(o.id).in_([bindparam(f"id{k}", type_=Integer) for k in range(slots)])))
        statement = _TO_SEND.setdefault(slots, statement)
    return statement


# Statements of the hot path, built once (building one costs more than running it).
_BUMP_REFERENCE = Prepared(update(ReferenceCounter).where(col(ReferenceCounter.prefix) == bindparam("of_prefix"),
                                                 col(ReferenceCounter.year) == bindparam("of_year")) \
    .values(last=ReferenceCounter.last + 1).returning(col(ReferenceCounter.last)))
_MARK_SENT = Prepared(update(OutboxMessage).where(col(OutboxMessage.id) == bindparam("outbox"))
                      .values(status="sent", sent_at=bindparam("sent_now"), last_error=None,
                              attempts=OutboxMessage.attempts + 1))
_CANCEL_TIMERS = update(Timer).where(col(Timer.case_id) == bindparam("of_case"), col(Timer.status) == "pending") \
    .values(status="cancelled")


def _insert_timer(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (key) DO NOTHING RETURNING id, for this dialect (a row back: it was added)."""
    insert = dialect_insert(dialect)
    return insert(Timer).on_conflict_do_nothing(index_elements=["key"]).returning(col(Timer.id))


_INSERT_TIMER = Prepared(_insert_timer, ("key", "case_id", "stage", "kind", "due_at", "created_at", "status"))


