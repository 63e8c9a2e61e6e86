"""One process at a time watches a mailbox (PostgreSQL advisory lock); when the holder dies, another
takes over."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest
import sqlalchemy as sa

from escalations.cases.leases import lock_key, run_exclusively
from escalations.cases.store import make_engine

pytestmark = pytest.mark.servers


def hold_forever(url: str, name: str, ready: object) -> None:
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_key(name)}).scalar()
        conn.commit()
        ready.set()  # type: ignore[attr-defined]
        time.sleep(600)


def test_the_watcher_waits_for_the_holder_and_takes_over_when_it_dies(postgres_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=hold_forever, args=(postgres_url, "imap:hackney", ready))
    holder.start()
    engine = make_engine(postgres_url)
    stop, started, finished = threading.Event(), threading.Event(), threading.Event()

    def work(done: threading.Event) -> None:
        started.set()
        done.wait()
        finished.set()

    runner = threading.Thread(target=run_exclusively, args=(engine, "imap:hackney", work, stop),
                              kwargs={"check_seconds": 0.05})
    try:
        assert ready.wait(60)
        runner.start()
        assert not started.wait(1.0)  # the other process holds it
        os.kill(holder.pid or 0, signal.SIGKILL)
        holder.join(30)
        assert started.wait(30)  # its connection closed with it, and the lock with that
    finally:
        stop.set()
        if runner.is_alive():
            runner.join(30)
        if holder.is_alive():
            holder.kill()
        engine.dispose()
    assert finished.is_set()


def test_without_postgresql_the_work_just_runs(tmp_path: object) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/l.sqlite3")
    stop = threading.Event()
    ran: list[bool] = []
    run_exclusively(engine, "imap:x", lambda e: ran.append(e is stop), stop)
    assert ran == [True]
