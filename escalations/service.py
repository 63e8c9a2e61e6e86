"""The running service: intake threads, the processor and outbox loops, the scheduler, and any extra
components (the web server), until a stop event. ``app.py`` wires; this module runs."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from escalations.cases.store import HEARTBEAT_INTERVAL_SECONDS, Store
from escalations.private import make_private, private_umask

if TYPE_CHECKING:
    from escalations.app import App

log = structlog.get_logger("escalations.service")

#: Something else to run beside the service for as long as it runs: called in its own thread with the
#: stop event, it returns when the event is set (e.g. the web server).
Component = Callable[[threading.Event], None]


def safely(name: str, fn: Callable[[], object]) -> None:
    """A loop's one step: an error is logged (type and frames only) and the loop goes on."""
    try:
        fn()
    except Exception:
        log.exception(f"{name}.failed")


def heartbeat_loop(store: Store, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_INTERVAL_SECONDS):
        safely("heartbeat", store.heartbeat)


@contextmanager
def beating(store: Store) -> Iterator[None]:
    """This process's worker row stays alive while the block runs."""
    stop = threading.Event()
    store.heartbeat()
    thread = threading.Thread(target=heartbeat_loop, args=(store, stop), name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


#: The outbox runs at most this often (seconds between the starts of two runs): mail queued meanwhile
#: waits, and goes in the next run's batch. While a backlog is processed the processor wakes the outbox
#: for every message it finishes; each run claims what is due (a write transaction of its own), so a run
#: per message cost more CPU than sending the mail. A mail waits at most this long more.
OUTBOX_GAP_SECONDS = 0.1


def wake_loop(stop: threading.Event, wake: threading.Event, interval: float, fn: Callable[[], object],
              name: str, gap: float = 0.0) -> None:
    """Run ``fn`` when woken or every ``interval`` seconds, until stopped; at least ``gap`` seconds
    apart (a wake-up meanwhile is kept for the next run, never lost)."""
    last = float("-inf")
    while not stop.is_set():
        wake.wait(timeout=interval)
        rest = last + gap - time.monotonic()
        if rest > 0 and stop.wait(rest):
            break
        wake.clear()
        if stop.is_set():
            break
        last = time.monotonic()
        safely(name, fn)


class Service:
    """Runs an :class:`~escalations.app.App` until a stop event, with umask 077."""

    def __init__(self, app: App, components: dict[str, Component] | None = None, *,
                 freeze_heap: bool = False) -> None:
        self.app = app
        self.components = dict(components or {})
        #: The process is this service's alone (``escalations run``): once started, what exists is kept
        #: out of the garbage collector's full collections (gc.freeze). Not for a service in a test.
        self.freeze_heap = freeze_heap

    def run(self, stop: threading.Event, *, on_started: Callable[[App], None] | None = None) -> None:
        previous_umask = private_umask()
        try:
            self._run(stop, on_started)
        finally:
            os.umask(previous_umask)

    def _threads(self, stop: threading.Event) -> list[threading.Thread]:
        from escalations.cases.leases import run_exclusively
        from escalations.mailer.imap_watcher import ImapWatcher

        app, s = self.app, self.app.settings
        threads = [threading.Thread(target=heartbeat_loop, args=(app.store, stop), name="heartbeat", daemon=True)]
        for mb in s.mailboxes:
            watcher = ImapWatcher(mb, app.store, on_stored=app.on_stored)
            # one watcher per mailbox among the processes sharing a database (PostgreSQL)
            threads.append(threading.Thread(target=run_exclusively, args=(app.store.engine, f"imap:{mb.name}",
                                                                          watcher.run, stop),
                                            name=f"imap-{mb.name}", daemon=True))
        threads.append(threading.Thread(target=wake_loop, args=(stop, app.wake_processor,
                                        s.process_interval_seconds, app.process_pending, "processor"),
                                        name="processor", daemon=True))
        threads.append(threading.Thread(target=wake_loop, args=(stop, app.wake_outbox, 2.0, app.send_outbox,
                                        "outbox", OUTBOX_GAP_SECONDS), name="outbox", daemon=True))
        if app.store.engine.dialect.name == "postgresql":
            # other processes on this database wake ours (mail they stored, mail they queued)
            from escalations.cases import wakeups

            threads.append(threading.Thread(target=wakeups.listen, args=(app.store.engine, {
                wakeups.INBOUND: app.wake_processor, wakeups.OUTBOX: app.wake_outbox}, stop),
                name="wakeups", daemon=True))
        for name, component in self.components.items():
            threads.append(threading.Thread(target=component, args=(stop,), name=name, daemon=True))
        return threads

    def _scheduler(self) -> BackgroundScheduler:
        app = self.app
        scheduler = BackgroundScheduler(timezone="UTC")
        # The first tick at once: timers a dead predecessor was firing go now, not a tick interval later.
        scheduler.add_job(lambda: safely("tick", app.tick), "interval", seconds=app.settings.tick_interval_seconds,
                          id="tick", max_instances=1, coalesce=True, next_run_time=datetime.now(UTC))
        scheduler.add_job(lambda: safely("secret_expiry", app.warn_expiring_secrets), "interval", days=1,
                          id="secret_expiry", next_run_time=datetime.now(UTC), coalesce=True)
        return scheduler

    def _run(self, stop: threading.Event, on_started: Callable[[App], None] | None) -> None:
        from escalations.mailer.smtp_intake import start_smtp_intake
        from escalations.mailer.smtp_sender import KEEP_ALIVE_SECONDS

        app, s = self.app, self.app.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        make_private(s.data_dir, s.effective_database_url)
        # Registered before any loop claims: from now on this process's claims carry a live owner,
        # and a dead predecessor's claims are free to the first claim below.
        app.store.heartbeat()
        controller = None
        if s.smtp_intake_enabled:
            controller = start_smtp_intake(app.store, app.accepts, host=s.smtp_listen_host,
                                           port=s.smtp_listen_port, max_size=s.smtp_max_message_size,
                                           on_stored=app.on_stored)
            app.smtp_port = controller.port
        threads = self._threads(stop)
        if self.freeze_heap:
            # Everything made so far (modules, configuration, the engine, compiled statements) lives as
            # long as the process: out of the garbage collector's sight, a full collection no longer
            # walks it. Such collections had paused every thread for 100 ms and more now and then.
            gc.collect()
            gc.freeze()
        app.outbox.stopping = stop
        app.outbox.keep_connections(KEEP_ALIVE_SECONDS)
        app._stopping = stop
        scheduler = self._scheduler()
        for t in threads:
            t.start()
        scheduler.start()
        log.info("service.started", smtp_port=app.smtp_port, mailboxes=[m.name for m in s.mailboxes],
                 database=s.effective_database_url.split("@")[-1], relay=bool(s.relay))
        app.wake_processor.set()
        app.wake_outbox.set()  # mail committed before a restart goes out now, not at the next poll
        try:
            if on_started is not None:
                on_started(app)
            stop.wait()
        finally:
            log.info("service.stopping")
            if controller is not None:
                controller.stop()
            self._stop(threads, scheduler)

    def _stop(self, threads: list[threading.Thread], scheduler: BackgroundScheduler) -> None:
        app = self.app
        app.wake_processor.set()
        app.wake_outbox.set()
        for t in threads:
            t.join(timeout=10)
        scheduler.shutdown(wait=True)  # a tick under way finishes its timer (each stops early)
        busy = [t.name for t in threads if t.is_alive()]
        if not busy:  # a thread still working keeps its claims and worker row: the next start takes them back
            safely("retire", app.store.retire)
        app.close()
        log.info("service.stopped", still_busy=busy)
