"""What a worker claims — inbound messages, outgoing mails, timers — and the statements that claim them.

:meth:`Store._claim <escalations.cases.store.Store._claim>` holds the one claim rule. This module
describes each kind of claimable row (:class:`Claimable`) and prepares its statements once
(:class:`ClaimStatements`, run through :class:`~escalations.cases.prepared.Prepared`). Built and run
through SQLAlchemy each time, a claim of one message cost about 5 ms of statement building, cache-key
walks and result objects for a quarter of a millisecond of SQL; and the processor claims again each
time new mail cuts a batch short, so that cost was new mail's wait.

Every value a claim depends on is a bound parameter (:data:`DUE`, :data:`STALE_BEFORE`,
:data:`LEASE_NOW`, :data:`OWNER`, :data:`LIMIT`, :data:`LANE_LIMIT`); lists (the ids taken, the owners
found dead) are sent as a fixed number of parameters, padded by repeating the last value (``IN`` does
not mind a value twice), so each statement has a few compiled shapes, not one per length.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    exists,
    func,
    or_,
    update,
)
from sqlalchemy import select as core_select
from sqlalchemy.orm import aliased
from sqlmodel import col

from escalations.cases.models import InboundMessage, OutboxMessage, Timer, Worker
from escalations.cases.prepared import Prepared

__all__ = ["BEAT", "INBOUND", "INBOUND_LANE", "OUTBOX", "TIMER", "ClaimStatements", "Claimable", "first_per_group",
           "fresh_run", "lease_params", "padded", "padded_params", "statements_for"]

#: Of a claim of inbound mail, this many by the fresh lane (mail stored since the claimer's last claim, in
#: the order it came) when more came than the claim holds: a backlog being stored. Less came: all of it
#: (see Store.claim_inbound).
INBOUND_LANE = 4

#: The deadline clock's "now" (a row is due by it); typed by the column it is compared with.
DUE: BindParameter[Any] = bindparam("due_now")
#: A claim taken before this is over (the lease clock's now less the lease).
STALE_BEFORE: BindParameter[Any] = bindparam("stale_before")
#: The lease clock's now: when the claim is taken.
LEASE_NOW: BindParameter[Any] = bindparam("lease_now")
#: This worker.
OWNER = bindparam("owner", type_=String)
#: How many candidates to read, and how many of the fresh lane.
LIMIT = bindparam("n", type_=Integer)
LANE_LIMIT = bindparam("lane_n", type_=Integer)
#: The fresh lane holds mail stored after this id (see :func:`_inbound_lane`).
LANE_SINCE = bindparam("since", type_=Integer)

#: This worker's heartbeat, which every claim beats.
BEAT = Prepared(update(Worker).where(col(Worker.owner) == OWNER).values(heartbeat_at=LEASE_NOW))


@dataclass(frozen=True)
class Claimable:
    """One kind of claimable row, described for :meth:`Store._claim`."""

    name: str
    table: Any
    id: Any
    claimed_by: Any
    #: Free rows that are due, given the deadline clock's "now" (:data:`DUE`).
    ready: Callable[[Any], ColumnElement[bool]]
    #: Rows someone holds, given the deadline clock's "now".
    held: Callable[[Any], ColumnElement[bool]]
    #: When the holder took it.
    held_since: Any
    order_by: tuple[Any, ...]
    #: Columns the claim sets, given the lease clock's "now" (:data:`LEASE_NOW`; claimed_by is set too).
    values: Callable[[Any], dict[str, Any]]
    #: At most one row per value of this column in one claim (a timer's case: what one timer's step
    #: does, such as cancelling the case's other timers, must be seen before the next is taken).
    one_per: Any = None
    #: The fresh lane: given the ready condition and how many, a query of the (id, group) of ready rows
    #: stored since this worker's last claim, to take first, ahead of the rest in order_by (see
    #: :meth:`Store.claim_inbound`).
    lane: Callable[[ColumnElement[bool], Any], Select[Any, Any]] | None = None
    #: How many rows of a claim come by the fresh lane when more came since the last claim than it holds.
    lane_size: int = 0
    #: A column the claim counts in (an inbound message's attempts), returned beside each id taken.
    counted: Any = None


def _inbound_lane(ready: ColumnElement[bool], n: Any) -> Select[Any, Any]:
    """The ``n`` newest ready messages stored after :data:`LANE_SINCE` (the newest id when this worker
    last claimed) whose sender has no older unfinished one (pending: ready, claimed by anyone, or taken
    back), newest first: each the oldest unfinished mail of its sender, so of ``n`` senders.
    Mail of one sender keeps its arrival order; mail of different senders has no order between them (a
    reply answers an acknowledgement already sent: what it follows is processed)."""
    older = aliased(InboundMessage)
    blocked = exists().where(col(older.sender_key) == col(InboundMessage.sender_key),
                             col(older.status) == "pending", col(older.id) < col(InboundMessage.id))
    return (core_select(col(InboundMessage.id), col(InboundMessage.id))
            .where(ready, col(InboundMessage.id) > LANE_SINCE, col(InboundMessage.sender_key).is_not(None), ~blocked)
            .order_by(col(InboundMessage.id).desc()).limit(n))


INBOUND = Claimable(
    name="inbound",
    table=InboundMessage,
    id=col(InboundMessage.id),
    claimed_by=col(InboundMessage.claimed_by),
    ready=lambda _now: (col(InboundMessage.status) == "pending") & col(InboundMessage.claimed_at).is_(None),
    held=lambda _now: (col(InboundMessage.status) == "pending") & col(InboundMessage.claimed_at).is_not(None),
    held_since=col(InboundMessage.claimed_at),
    order_by=(col(InboundMessage.id),),
    values=lambda lease_now: {"claimed_at": lease_now, "attempts": InboundMessage.attempts + 1},
    lane=_inbound_lane,
    lane_size=INBOUND_LANE,
    counted=col(InboundMessage.attempts),
)

OUTBOX = Claimable(
    name="outbox",
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

TIMER = Claimable(
    name="timer",
    table=Timer,
    id=col(Timer.id),
    claimed_by=col(Timer.claimed_by),
    ready=lambda now: (col(Timer.due_at) <= now) & (col(Timer.status) == "pending"),
    held=lambda now: (col(Timer.due_at) <= now) & (col(Timer.status) == "firing"),
    held_since=col(Timer.claimed_at),
    order_by=(col(Timer.due_at), col(Timer.id)),
    values=lambda lease_now: {"status": "firing", "claimed_at": lease_now},
    one_per=col(Timer.case_id),
)


def padded(values: Sequence[Any]) -> int:
    """How many parameters a list of ``len(values)`` is sent as: the next power of two (1, 2, 4 ...)."""
    n = 1
    while n < len(values):
        n *= 2
    return n


def padded_params(prefix: str, values: Sequence[Any], slots: int) -> dict[str, Any]:
    """``values`` as the parameters ``prefix0`` ... of a list of ``slots``, the last value repeated."""
    return {f"{prefix}{k}": values[min(k, len(values) - 1)] for k in range(slots)}


class ClaimStatements:
    """A claimable's statements for one number of owners found dead (``dead``, padded: see
    :func:`padded`; 0 when none), each compiled once per dialect.

    ``holders``: the owners of rows held now; ``candidates``: the first rows of each condition (ready,
    abandoned), in claim order, a few more than wanted; ``lane``: the fresh lane's rows; :meth:`take`:
    the conditional UPDATE that claims the wanted ones, returning each id taken (and what it counts)."""

    def __init__(self, what: Claimable, dead: int) -> None:
        self.what = what
        self.dead = dead
        ready = what.ready(DUE)
        held = what.held(DUE)
        abandoned: ColumnElement[bool] = what.held_since < STALE_BEFORE
        if dead:
            abandoned = or_(abandoned, what.claimed_by.in_([bindparam(f"dead{k}", type_=String) for k in range(dead)]))
        abandoned = and_(held, abandoned)
        self._takeable = or_(ready, abandoned)
        self.holders = Prepared(core_select(what.claimed_by).where(held, what.claimed_by.is_not(None)).distinct())
        self.candidates = (self._candidates(ready), self._candidates(abandoned))
        self.lane = self._lane(ready) if what.lane is not None else None
        #: The newest id there is: what the next claim's lane holds mail stored after.
        self.newest = Prepared(core_select(func.max(what.id))) if what.lane is not None else None
        self._take: dict[int, Prepared] = {}
        self._guard = threading.Lock()

    def _candidates(self, condition: ColumnElement[bool]) -> Prepared:
        what = self.what
        group = what.one_per if what.one_per is not None else what.id

        def made(dialect: str) -> Any:
            q = core_select(what.id, group, *what.order_by).where(condition).order_by(*what.order_by).limit(LIMIT)
            if dialect == "postgresql":
                # rows another claimer is taking right now are passed over, not waited for
                q = q.with_for_update(skip_locked=True)
            return q

        return Prepared(made)

    def _lane(self, ready: ColumnElement[bool]) -> Prepared:
        what = self.what
        assert what.lane is not None
        lane = what.lane

        def made(dialect: str) -> Any:
            q = lane(ready, LANE_LIMIT)
            if dialect == "postgresql":
                q = q.with_for_update(skip_locked=True, of=what.table)
            return q

        return Prepared(made)

    def take(self, ids: Sequence[int]) -> tuple[Prepared, dict[str, Any]]:
        """The UPDATE that takes ``ids`` if they are still takeable, and its id parameters."""
        slots = padded(ids)
        statement = self._take.get(slots)
        if statement is None:
            with self._guard:
                statement = self._take.get(slots)
                if statement is None:
                    what = self.what
                    returned = (what.id,) if what.counted is None else (what.id, what.counted)
                    statement = Prepared(
                        update(what.table)
                        .where(what.id.in_([bindparam(f"id{k}", type_=Integer) for k in range(slots)]), self._takeable)
                        .values(claimed_by=OWNER, **what.values(LEASE_NOW)).returning(*returned))
                    self._take[slots] = statement
        return statement, padded_params("id", ids, slots)

    def dead_params(self, owners: Sequence[str]) -> dict[str, Any]:
        return padded_params("dead", owners, self.dead) if self.dead else {}


_STATEMENTS: dict[tuple[str, int], ClaimStatements] = {}
_STATEMENTS_GUARD = threading.Lock()


def statements_for(what: Claimable, dead: Sequence[str] = ()) -> ClaimStatements:
    """The claimable's statements, for the owners found dead (none: the usual case)."""
    key = (what.name, padded(dead) if dead else 0)
    found = _STATEMENTS.get(key)
    if found is None:
        with _STATEMENTS_GUARD:
            found = _STATEMENTS.get(key)
            if found is None:
                found = _STATEMENTS[key] = ClaimStatements(what, key[1])
    return found


def fresh_run(candidates: Sequence[tuple[Any, Any, int]]) -> list[tuple[Any, Any, int]]:
    """The first candidate alone if it is taken back (condition 1), else the ready ones before the
    first taken-back one."""
    if not candidates:
        return []
    if candidates[0][2] != 0:
        return [candidates[0]]
    run: list[tuple[Any, Any, int]] = []
    for c in candidates:
        if c[2] != 0:
            break
        run.append(c)
    return run


def first_per_group(rows: Sequence[Any], limit: int) -> list[Any]:
    """Up to ``limit`` ids of (id, group) rows, the first of each group, in order."""
    wanted: list[Any] = []
    seen: set[Any] = set()
    for rid, key in rows:
        if len(wanted) == limit:
            break
        if key not in seen:
            seen.add(key)
            wanted.append(rid)
    return wanted


def lease_params(due_now: datetime, lease_now: datetime, stale_before: datetime, owner: str) -> dict[str, Any]:
    """The parameters every claim statement takes."""
    return {"due_now": due_now, "lease_now": lease_now, "stale_before": stale_before, "owner": owner}
