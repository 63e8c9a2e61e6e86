"""Two processes on one PostgreSQL schema share processing, sending and timers: no case, mail or
timer twice; a process that dies holding a batch of claims loses nothing (the other takes them).

Each process is a real App (build_app) in its own interpreter, sending through a real aiosmtpd
relay; the referrals are stored first, as the watchers store them.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, func, select

from escalations.app import build_app
from escalations.cases.models import Case, InboundMessage, OutboxMessage, Timer
from escalations.clock import FakeClock
from escalations.settings import RelaySettings, Settings
from tests.conftest import CONFIG_DIR
from tests.servers.smtp import SmtpCapture
from tests.workflow.conftest import referral
from tests.workflow.profiles import CH

pytestmark = pytest.mark.servers

T0 = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)
#: Late enough for every reminder and escalation of the first stage to be due.
LATER = T0 + timedelta(days=40)
REFERRALS = 30


def settings(url: str, data_dir: Path, relay_port: int) -> Settings:
    return Settings(data_dir=data_dir, config_dir=CONFIG_DIR, database_url=url, smtp_listen_port=0,
                    relay=RelaySettings(host="127.0.0.1", port=relay_port, security="none"),
                    max_mails_per_address_per_hour=0, outbox_backoff_initial_seconds=0.01,
                    outbox_backoff_max_seconds=0.05)


def work(url: str, data_dir: str, relay_port: int) -> None:
    """A service's work in a child process, until nothing is left: mail, sends, then the due timers."""
    clock = FakeClock(T0)
    app = build_app(settings(url, Path(data_dir), relay_port), clock=clock)
    while app.process_pending() or app.send_outbox():
        pass
    clock.set(LATER)
    while app.tick(LATER)["timers_fired"] or app.send_outbox():
        pass
    app.close()


def die_holding_claims(url: str, data_dir: str, relay_port: int) -> None:
    """Claim a batch of stored mail and of outgoing mail, then die without a word (SIGKILL-like)."""
    app = build_app(settings(url, Path(data_dir), relay_port), clock=FakeClock(T0))
    app.process_pending()  # some cases, and their outgoing mail
    app.ingest(referral(CH, message_id="<after-crash@example.org>"))
    assert app.store.claim_next_inbound() is not None
    assert app.store.claim_due_outbox(limit=20)
    os._exit(17)


def run_children(target: object, url: str, tmp_path: Path, relay: SmtpCapture, count: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    children = [ctx.Process(target=target, args=(url, str(tmp_path / f"var{i}"), relay.port))  # type: ignore[arg-type]
                for i in range(count)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=240)
        assert child.exitcode is not None, "a child process hung"


def assert_each_once(url: str, tmp_path: Path, relay: SmtpCapture, referrals: int) -> None:
    app = build_app(settings(url, tmp_path / "check", relay.port), clock=FakeClock(T0), read_only=True)
    try:
        with app.store.reading() as r:
            cases = list(r.exec(select(Case)).all())
            sent = list(r.exec(select(OutboxMessage.message_id).where(OutboxMessage.status == "sent")).all())
            unsent = r.exec(select(func.count()).select_from(OutboxMessage)
                            .where(OutboxMessage.status != "sent")).one()
            inbound_left = r.exec(select(func.count()).select_from(InboundMessage)
                                  .where(InboundMessage.status != "done")).one()
            timers = list(r.exec(select(Timer.status, Timer.due_at).where(col(Timer.due_at) <= LATER)).all())
    finally:
        app.store.engine.dispose()
    assert len(cases) == referrals
    assert len({c.origin_inbound_id for c in cases}) == referrals
    assert inbound_left == 0 and unsent == 0
    captured = Counter(m.message["Message-ID"].strip("<>") for m in relay.messages)
    assert all(n == 1 for n in captured.values()), "a mail was sent twice"
    assert set(captured) == set(sent)
    assert {status for status, _ in timers} <= {"done", "cancelled"}
    assert any(status == "done" for status, _ in timers), "no timer fired"
    templates = Counter(m.message["X-Escalations-Template"] for m in relay.messages)
    assert templates["referral_acknowledged"] == referrals
    assert set(templates) - {"referral_acknowledged", "stage_request"}, "the timers sent nothing"


def test_two_processes_share_the_work_once(postgres_url: str, tmp_path: Path, smtp_capture: SmtpCapture) -> None:
    parent = build_app(settings(postgres_url, tmp_path / "parent", smtp_capture.port), clock=FakeClock(T0))
    for i in range(REFERRALS):
        parent.ingest(referral(CH, message_id=f"<two-{i}@example.org>"))
    parent.close()
    parent.store.engine.dispose()
    run_children(work, postgres_url, tmp_path, smtp_capture, 2)
    assert_each_once(postgres_url, tmp_path, smtp_capture, REFERRALS)


def test_a_process_dying_in_the_middle_of_a_batch_loses_nothing(postgres_url: str, tmp_path: Path,
                                                               smtp_capture: SmtpCapture) -> None:
    parent = build_app(settings(postgres_url, tmp_path / "parent", smtp_capture.port), clock=FakeClock(T0))
    for i in range(REFERRALS):
        parent.ingest(referral(CH, message_id=f"<crash-{i}@example.org>"))
    parent.close()
    parent.store.engine.dispose()
    run_children(die_holding_claims, postgres_url, tmp_path, smtp_capture, 1)
    with parent.store.reading() as r:
        held = r.exec(select(func.count()).select_from(OutboxMessage)
                      .where(OutboxMessage.status == "sending")).one()
    assert held > 0  # the dead process left claims behind
    run_children(work, postgres_url, tmp_path, smtp_capture, 2)  # the restart, and a second process
    assert_each_once(postgres_url, tmp_path, smtp_capture, REFERRALS + 1)
