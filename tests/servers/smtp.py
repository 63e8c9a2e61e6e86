"""aiosmtpd fixtures: a capturing SMTP server standing in for the outbound relay."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.servers import free_port


@dataclass
class Captured:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        msg = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class CapturingHandler:
    messages: list[Captured] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Answer the next N DATA commands with this reply instead of 250 (tests of retries).
    fail_next: int = 0
    fail_reply: str = "451 4.3.0 Try again later"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return self.fail_reply
            raw = envelope.original_content or b""
            self.messages.append(Captured(str(envelope.mail_from), [str(r) for r in envelope.rcpt_tos], raw))
        return "250 OK"


class SmtpCapture:
    def __init__(self) -> None:
        self.handler = CapturingHandler()
        self.host = "127.0.0.1"
        self.port = free_port()
        self.controller = Controller(self.handler, hostname=self.host, port=self.port, decode_data=False)

    @property
    def messages(self) -> list[Captured]:
        with self.handler.lock:
            return list(self.handler.messages)

    def of_template(self, template: str | None) -> list[Captured]:
        """Captured mail, optionally only that rendered from ``template`` (X-Escalations-Template)."""
        msgs = self.messages
        if template is None:
            return msgs
        return [m for m in msgs if m.message["X-Escalations-Template"] == template]

    def wait_for(self, count: int, timeout: float = 20.0, *, template: str | None = None) -> list[Captured]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msgs = self.of_template(template)
            if len(msgs) >= count:
                return msgs
            time.sleep(0.05)
        raise AssertionError(f"expected {count} captured messages (template {template}), "
                             f"got {len(self.of_template(template))}")


@pytest.fixture
def smtp_capture() -> Iterator[SmtpCapture]:
    server = SmtpCapture()
    server.controller.start()
    try:
        yield server
    finally:
        server.controller.stop()
