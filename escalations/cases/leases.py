"""Work that one process at a time may do, such as watching a mailbox: on PostgreSQL the holder keeps
a session advisory lock on its own connection, the others wait their turn and take over when the
holder dies (its connection closes, and the lock with it). On SQLite (one host) nobody waits.

Correctness never rests on it (stored mail is idempotent by key and fingerprint); it keeps two
processes from fetching the same mailbox twice over.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

log = structlog.get_logger("escalations.leases")

#: How often a waiting process tries for the lock, and the holder checks that its connection lives.
CHECK_SECONDS = 5.0


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``name`` (pg_advisory_lock's bigint)."""
    return int.from_bytes(hashlib.blake2b(f"escalations:{name}".encode(), digest_size=8).digest(), "big", signed=True)


def run_exclusively(engine: Engine, name: str, work: Callable[[threading.Event], None], stop: threading.Event,
                    *, check_seconds: float = CHECK_SECONDS) -> None:
    """Run ``work(event)`` while this process holds ``name``; until ``stop`` is set."""
    if engine.dialect.name != "postgresql":
        work(stop)
        return
    key = lock_key(name)
    while not stop.is_set():
        try:
            with engine.connect() as conn:
                if _try_lock(conn, key):
                    log.info("lease.acquired", name=name)
                    _hold(conn, key, work, stop, check_seconds)
                    continue
        except sa.exc.DBAPIError as exc:  # the lock's connection is gone: so is the lock
            log.warning("lease.lost", name=name, error_type=type(exc).__name__)
        stop.wait(check_seconds)


def _try_lock(conn: Connection, key: int) -> bool:
    got = bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
    conn.commit()
    return got


def _hold(conn: Connection, key: int, work: Callable[[threading.Event], None], stop: threading.Event,
          check_seconds: float) -> None:
    """Run the work in a thread while the lock's connection answers; stop it when it does not."""
    done = threading.Event()
    worker = threading.Thread(target=work, args=(done,), name=f"{threading.current_thread().name}-held",
                              daemon=True)
    worker.start()
    try:
        while worker.is_alive() and not stop.wait(check_seconds):
            conn.execute(sa.text("SELECT 1"))
            conn.commit()
    finally:
        done.set()
        worker.join()
    conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    conn.commit()
