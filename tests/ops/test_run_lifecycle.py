"""`escalations run` as systemd runs it: start-up says where mail goes; SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlmodel import Session, create_engine, select

from escalations.app import build_app
from escalations.cases.models import InboundMessage, OutboxMessage, Timer, Worker
from escalations.settings import Settings
from tests.conftest import CONFIG_DIR
from tests.intake.test_service_smtp import referral
from tests.servers import free_port, wait_until


def test_sigterm_finishes_and_releases_claims(tmp_path: Path) -> None:
    data = tmp_path / "var"
    url = f"sqlite:///{data / 'escalations.sqlite3'}"
    seeded = build_app(Settings(data_dir=data, config_dir=CONFIG_DIR))
    for i in range(60):  # a backlog, so SIGTERM arrives with work left
        seeded.ingest(referral(message_id=f"<r{i}@example.org>", child=f"Child{i} Testchild"))
    seeded.store.engine.dispose()
    relay_port = free_port()  # nothing listens: the relay is down at start
    env = {**os.environ, "ESCALATIONS_DATA_DIR": str(data), "ESCALATIONS_CONFIG": str(CONFIG_DIR),
           "ESCALATIONS_DATABASE_URL": "", "ESCALATIONS_RELAY__HOST": "127.0.0.1",
           "ESCALATIONS_RELAY__PORT": str(relay_port), "ESCALATIONS_RELAY__SECURITY": "none"}
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "escalations", "run", "--smtp-port", "0"], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    engine = create_engine(url)
    try:
        wait_until(lambda: "SMTP intake: 127.0.0.1:" in log.read_text(), timeout=30, what="start-up lines")

        def processed() -> int:
            with Session(engine) as s:
                return len(s.exec(select(InboundMessage).where(InboundMessage.status == "done")).all())

        wait_until(lambda: processed() >= 1, timeout=30, what="processing begun")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "Traceback" not in text
    assert f"outgoing mail: relay 127.0.0.1:{relay_port} (none, password)" in text
    assert f"warning: relay 127.0.0.1:{relay_port} is not reachable now" in text
    assert "watching: no IMAP mailboxes" in text
    time.sleep(0.1)
    with Session(engine) as s:
        assert not s.exec(select(OutboxMessage).where(OutboxMessage.status == "sending")).all()
        assert not s.exec(select(InboundMessage).where(InboundMessage.claimed_by.is_not(None),  # type: ignore[union-attr]
                                                       InboundMessage.status == "pending")).all()
        assert not s.exec(select(Timer).where(Timer.status == "firing")).all()
        assert not s.exec(select(Worker)).all()
        # it stopped with work left (the backlog was not all processed before it exited)
        assert s.exec(select(InboundMessage).where(InboundMessage.status == "pending")).all()
    engine.dispose()
