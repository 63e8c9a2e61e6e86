"""Wake-ups across processes sharing one PostgreSQL database (LISTEN/NOTIFY).

Within a process, storing mail wakes the processor and queuing mail wakes the outbox through
``threading.Event`` s. A second ``escalations run`` on the same database would only learn of that
work at its next poll (``process_interval_seconds``, the outbox's 2 s). So on PostgreSQL the
transaction that stores mail or queues it also sends a notification (delivered only when it commits,
never for a rollback), and every process listens on a connection of its own and sets its events.
A missed notification costs nothing but a poll: the events are only ever hints.

SQLite is one process's database: there :func:`announce` does nothing and :func:`listen` returns.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

__all__ = ["INBOUND", "OUTBOX", "announce", "listen"]

log = structlog.get_logger("escalations.wakeups")

#: Mail was stored (wakes processors).
INBOUND = "escalations_inbound"
#: Mail was queued (wakes outboxes).
OUTBOX = "escalations_outbox"

_NOTIFY = text("SELECT pg_notify(:channel, '')")
#: In the connection's info: (the transaction, the channels it has announced).
_ANNOUNCED = "escalations_announced"


def announce(conn: Connection, channel: str) -> None:
    """Notify the other processes, when the caller's transaction commits, that there is work."""
    if conn.dialect.name != "postgresql":
        return
    # Once per channel and transaction (or savepoint: one rolled back drops its notifications, so a
    # savepoint announces again): PostgreSQL delivers one notification for the lot anyway, and a
    # referral queues two mails.
    scope = conn.get_nested_transaction() or conn.get_transaction()
    kept: tuple[object, set[str]] | None = conn.info.get(_ANNOUNCED)
    if scope is not None and kept is not None and kept[0] is scope:
        if channel in kept[1]:
            return
    else:
        kept = (scope, set())
        conn.info[_ANNOUNCED] = kept
    conn.execute(_NOTIFY, {"channel": channel})
    kept[1].add(channel)


def listen(engine: Engine, wake: Mapping[str, threading.Event], stop: threading.Event, *,
           poll_seconds: float = 1.0, retry_seconds: float = 5.0) -> None:
    """Until ``stop``: set ``wake[channel]`` for every notification on one of its channels. A lost
    connection is opened again after ``retry_seconds`` (the loops poll meanwhile)."""
    if engine.dialect.name != "postgresql":
        return
    while not stop.is_set():
        raw: Any = None
        try:
            raw = engine.raw_connection()
            pg = raw.driver_connection
            pg.autocommit = True
            for channel in wake:
                pg.execute(f'LISTEN "{channel}"')
            log.info("wakeups.listening", channels=sorted(wake))
            for event in wake.values():  # anything announced before we listened is picked up now
                event.set()
            while not stop.is_set():
                for note in pg.notifies(timeout=poll_seconds):
                    target = wake.get(note.channel)
                    if target is not None:
                        target.set()
        except Exception as exc:
            log.warning("wakeups.connection_lost", error_type=type(exc).__name__)
            stop.wait(retry_seconds)
        finally:
            if raw is not None:
                # never back into the pool: it is in autocommit and LISTENing
                raw.invalidate()
