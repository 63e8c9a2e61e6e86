"""The database engine: SQLite (WAL, busy timeout, writers taking turns on one lock in this process,
usable across threads) or PostgreSQL (psycopg 3); JSON written compactly."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.pool import StaticPool
from sqlmodel import create_engine

from escalations.cases.prepared import run_driver_sql

#: Execution option marking a read-only transaction (plain BEGIN on SQLite).
READ_ONLY = "escalations_read_only"
#: Execution option of a writer that does not wait for its turn: on SQLite, BEGIN raises
#: :class:`WriteLockBusy` at once when another writer of this process holds the write lock. (PostgreSQL
#: has no such lock: there the option changes nothing.)
NO_WAIT = "escalations_no_wait"


T = TypeVar("T")

#: Values in one ``IN (...)`` list at most: SQLite allowed 999 bound parameters per statement before 3.32.
IN_LIST_MAX = 500


def in_chunks(items: Iterable[T]) -> Iterator[list[T]]:
    """``items`` in lists of at most :data:`IN_LIST_MAX`, in order: one ``IN (...)`` query each."""
    values = list(items)
    for start in range(0, len(values), IN_LIST_MAX):
        yield values[start:start + IN_LIST_MAX]


class WriteLockBusy(Exception):
    """A :data:`NO_WAIT` transaction did not begin: another writer of this process has the write lock."""


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy, not pysqlite, issue BEGIN, so "BEGIN IMMEDIATE" below takes effect.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


#: One write lock per SQLite database in this process, shared by every engine on it.
_WRITE_LOCKS: dict[str, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()
#: How long a writer waits for its turn (SQLite's own busy timeout is the same).
WRITE_WAIT_SECONDS = 30.0
_HOLDS_WRITE_LOCK = "escalations_holds_write_lock"


def _write_lock_for(url: str) -> threading.Lock:
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(url, threading.Lock())


def _serialise_writers(engine: Engine, lock: threading.Lock) -> None:
    """Writers take their turn on a lock in this process before BEGIN IMMEDIATE. Without it the
    threads met in SQLite's busy handler, which sleeps and retries: the outbox waited most of its
    time there, and new mail could lose the race to backlog traffic again and again. A waiter on a
    lock is woken when it is released. Pure reads (Store.reading) take neither (WAL)."""

    def begin(conn: Any) -> None:
        # On the driver's cursor (cases/prepared.py): exec_driver_sql's execution context cost more
        # than the BEGIN, once per transaction.
        options = conn.get_execution_options()
        if options.get(READ_ONLY):
            run_driver_sql(conn, "BEGIN")
            return
        if options.get(NO_WAIT):
            if not lock.acquire(blocking=False):
                raise WriteLockBusy
        elif not lock.acquire(timeout=WRITE_WAIT_SECONDS):
            raise OperationalError("BEGIN IMMEDIATE", None, Exception("database is locked (write lock)"))
        conn.info[_HOLDS_WRITE_LOCK] = True
        try:
            # Writers serialise at BEGIN instead of failing on lock upgrade mid-transaction.
            run_driver_sql(conn, "BEGIN IMMEDIATE")
        except BaseException:
            release(conn)
            raise

    def release(conn: Any, *_args: Any) -> None:
        if conn.info.pop(_HOLDS_WRITE_LOCK, False):
            lock.release()

    def reset(_dbapi_conn: Any, record: Any, _reset_state: Any) -> None:
        # a connection given back to the pool without a rollback of ours (e.g. a session left to the GC)
        if record.info.pop(_HOLDS_WRITE_LOCK, False):
            lock.release()

    event.listen(engine, "begin", begin)
    event.listen(engine, "commit", release)
    event.listen(engine, "rollback", release)
    event.listen(engine.pool, "reset", reset)


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
        event.listen(engine, "connect", _sqlite_pragmas)
        _serialise_writers(engine, _write_lock_for(url))
        return engine
    # hide_parameters: a database error must never echo a message body (child data) into a log.
    engine = create_engine(url, hide_parameters=True, json_serializer=_compact_json)
    _ping_after_idle(engine)
    return engine


#: A pooled PostgreSQL connection that has been idle in the pool longer than this is pinged before it
#: is handed out, and replaced if the server is gone (a restart, an idle timeout, a failover).
PING_AFTER_IDLE_SECONDS = 2.0
_IDLE_SINCE = "escalations_idle_since"


def _ping_after_idle(engine: Engine) -> None:
    """``pool_pre_ping``, but only for a connection that was idle for :data:`PING_AFTER_IDLE_SECONDS`.

    The pool's own pre-ping is a round trip at every checkout, and the service checks a connection out
    for every short transaction: it was 4.6 round trips per referral. A connection given back less
    than two seconds ago is used as it is. If the server went away within those two seconds, the
    statement fails as any statement does when the server goes away during work (the loops retry,
    the pool replaces every connection it had); an idle service's connections are always pinged."""

    def checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    def checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop(_IDLE_SINCE, None)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return  # new, or back in the pool only just now
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool drops this connection and checks out a new one (SQLAlchemy's disconnect handling).
            raise DisconnectionError("the pooled connection no longer answers") from exc

    event.listen(engine.pool, "checkin", checkin)
    event.listen(engine.pool, "checkout", checkout)
