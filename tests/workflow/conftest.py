"""End-to-end harness for the case workflow: mail in through a real Dovecot (the App's IMAP watcher),
mail out through a capturing aiosmtpd relay, time moved by hand with a FakeClock and ``App.tick``.

No test sleeps for a deadline: ``Harness.tick(when)`` sets the clock and runs one tick; the small
waits in ``settle`` are for the service's own threads (IMAP IDLE wake-up, processor, outbox) to
finish with mail that has already arrived.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, func, select

from escalations.app import App, build_app
from escalations.cases.models import Case, CaseEvent, InboundMessage, OutboxMessage, Timer
from escalations.clock import FakeClock
from escalations.settings import RelaySettings, Settings
from tests.conftest import CONFIG_DIR
from tests.servers import wait_until
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp import Captured, SmtpCapture
from tests.workflow.profiles import OPENED, Profile

CHILD = "Poppy Testchild"


# ---- building mail the way practitioners' clients do ---------------------------------------------


def referral(p: Profile, *, child: str = CHILD, immediate: bool = False, status: str | None = None,
             stage: int | None = None, other_email: bool = True, needed_by: str | None = None,
             other_agency: str | None = None, message_id: str | None = None) -> bytes:
    """A referral e-mailed to the partnership mailbox, labelled like the policies' forms."""
    msg = EmailMessage()
    msg["From"] = f"{p.raiser_name} <{p.raiser}>"
    msg["To"] = p.mailbox
    msg["Subject"] = f"Escalation about {child}"  # practitioners do put names in subjects
    msg["Message-ID"] = message_id or f"<ref-{uuid.uuid4().hex[:12]}@example.org>"
    msg["Date"] = format_datetime(OPENED - timedelta(minutes=5))
    other = p.other_practitioner + (f" <{p.other_practitioner_email}>" if other_email else "")
    lines = [
        f"Name of child(ren): {child}",
        "Date of birth: 02/03/2015",
        *(f"{k}: {v}" for k, v in p.extra_fields.items()),
        f"Name of referrer: {p.raiser_name}",
        f"Referrer's agency: {p.raising_agency}",
        f"Email: {p.raiser}",
        f"Other agency: {other_agency or p.other_agency}",
        f"Other practitioner: {other}",
        "Brief description of nature of concern: Referral closed with no assessment despite repeated disclosures.",
        "Action taken to resolve the issue: Telephoned the duty team twice; no call back.",
        "Outcome sought: A strategy discussion and a child and family assessment.",
    ]
    if p.borough:
        lines.append(f"Borough: {p.borough}")
    if status:
        lines.append(f"Child status: {status}")
    if stage:
        lines.append(f"Stage reached: {stage}")
    if immediate:
        lines.append("Is the child at immediate risk? Yes")
    nb = needed_by if needed_by is not None else p.needed_by
    if nb:
        lines.append(f"Timescale that protects the child: {nb}")
    msg.set_content("\n".join(lines) + "\n")
    return bytes(msg)


def outlook_quote(original: EmailMessage, *, earlier: str | None = None, earlier_from: str = "") -> str:
    """Outlook's "reply above": a rule, a From/Sent/To/Subject block, the original body below."""
    parts = []
    if earlier is not None:  # the sender's own earlier reply in the same thread, quoted again
        parts.append(
            "________________________________\n"
            f"From: {earlier_from}\nSent: 02 November 2026 16:12\nTo: {original['From']}\n"
            f"Subject: RE: {original['Subject']}\n\n{earlier}\n"
        )
    parts.append(
        "________________________________\n"
        f"From: {original['From']}\nSent: {original['Date']}\nTo: {original['To']}\n"
        f"Subject: {original['Subject']}\n\n{original.get_content()}"
    )
    return "\n".join(parts)


def gt_quote(original: EmailMessage) -> str:
    """Thunderbird/Gmail style: "On ... wrote:" and "> " before every line."""
    body = "\n".join(f"> {ln}" if ln else ">" for ln in original.get_content().splitlines())
    return f"On Tue, 3 Nov 2026 at 10:00, {original['From']} wrote:\n{body}\n"


def reply(original: Captured | EmailMessage, sender: str, text: str, *, style: str = "outlook",
          earlier: str | None = None, sender_name: str = "", to: str | None = None) -> bytes:
    """A reply as a mail client builds it: To = our Reply-To, In-Reply-To/References = our Message-ID,
    "RE:" subject, the new text on top and the original quoted below."""
    m = original.message if isinstance(original, Captured) else original
    msg = EmailMessage()
    msg["From"] = f"{sender_name} <{sender}>" if sender_name else sender
    msg["To"] = to or m["Reply-To"] or m["From"]
    msg["Subject"] = f"RE: {m['Subject']}"
    msg["Message-ID"] = f"<reply-{uuid.uuid4().hex[:12]}@example.org>"
    msg["In-Reply-To"] = m["Message-ID"]
    msg["References"] = m["Message-ID"]
    msg["Date"] = "Tue, 03 Nov 2026 11:00:00 +0000"
    if style == "outlook":
        msg["Thread-Topic"] = m["Subject"]
        msg["X-Mailer"] = "Microsoft Outlook 16.0"
        quoted = outlook_quote(m, earlier=earlier, earlier_from=msg["From"])
    elif style == "gt":
        quoted = gt_quote(m)
    else:
        quoted = ""
    msg.set_content(f"{text}\n\nKind regards,\n{sender_name or sender}\n\n{quoted}")
    return bytes(msg)


def out_of_office(original: Captured, sender: str) -> bytes:
    """An Exchange automatic reply to one of our mails (sent to our envelope sender, the mailbox)."""
    m = original.message
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = m["From"]
    msg["Subject"] = f"Automatic reply: {m['Subject']}"
    msg["Message-ID"] = f"<ooo-{uuid.uuid4().hex[:12]}@example.org>"
    msg["In-Reply-To"] = m["Message-ID"]
    msg["References"] = m["Message-ID"]
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["Date"] = "Tue, 03 Nov 2026 11:00:00 +0000"
    msg.set_content("I am out of the office until Monday 30 November with no access to e-mail.\n"
                    "For urgent matters contact my deputy.\n")
    return bytes(msg)


# ---- the harness -----------------------------------------------------------------------------------


@dataclass
class Harness:
    settings: Settings
    clock: FakeClock
    smtp: SmtpCapture
    dovecot: DovecotServer | None
    app: App = field(init=False)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _thread: threading.Thread | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.app = build_app(self.settings, clock=self.clock)

    # -- lifecycle --
    def start(self) -> None:
        self._stop = threading.Event()
        started = threading.Event()
        self._thread = threading.Thread(target=self.app.run, args=(self._stop,),
                                        kwargs={"on_started": lambda _a: started.set()}, daemon=True)
        self._thread.start()
        assert started.wait(20), "service did not start"

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(20)
            assert not self._thread.is_alive(), "service did not stop"
            self._thread = None

    def restart(self, *, build: Callable[[], App] | None = None) -> None:
        """A new process on the same database and mail servers (the old one is gone)."""
        self.stop()
        self.app.store.engine.dispose()
        self.app = build() if build else build_app(self.settings, clock=self.clock)
        self.start()

    # -- mail in --
    def send(self, raw: bytes, *, at_time: datetime | None = None, via: str = "imap") -> None:
        """Deliver one message (into Dovecot for the IMAP watcher; or ``via="ingest"``) and wait until it
        is processed and whatever it caused is sent."""
        if at_time is not None:
            self.clock.set(at_time)
        before = self._inbound_count()
        if via == "imap" and self.dovecot is not None and self._thread is not None:
            self.dovecot.append(raw, msg_time=self.clock.now())  # INTERNALDATE: the received time
        else:
            self.app.ingest(raw)
            self.app.process_pending()
        self._wait(lambda: self._inbound_count() > before and self._pending_inbound() == 0, "inbound processed")
        self.settle()

    # -- time --
    def tick(self, when: datetime) -> dict[str, Any]:
        self.clock.set(when)
        result = self.app.tick(when)
        self.settle()
        return result

    # -- waiting --
    def settle(self, timeout: float = 20.0) -> None:
        """Until every outbox row due now is sent and the relay has received it."""
        def done() -> bool:
            with self.app.store.session() as s:
                now = self.clock.now()
                waiting = s.exec(select(func.count()).select_from(OutboxMessage).where(
                    (col(OutboxMessage.status) == "sending")
                    | ((col(OutboxMessage.status) == "pending") & (col(OutboxMessage.next_attempt_at) <= now))
                )).one()
                sent = s.exec(select(func.count()).select_from(OutboxMessage)
                              .where(col(OutboxMessage.status) == "sent")).one()
            if waiting and self._thread is None:
                self.app.send_outbox()
            return waiting == 0 and len(self.smtp.messages) >= sent
        self._wait(done, "outbox drained", timeout)

    @staticmethod
    def _wait(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        wait_until(cond, timeout, what, interval=0.02)

    def _inbound_count(self) -> int:
        with self.app.store.session() as s:
            return int(s.exec(select(func.count()).select_from(InboundMessage)).one())

    def _pending_inbound(self) -> int:
        return self.app.store.pending_inbound_count()

    # -- looking --
    def case(self, reference: str | None = None) -> Case:
        if reference is None:
            cases = self.app.store.list_cases()
            assert len(cases) == 1, f"expected one case, found {len(cases)}"
            return cases[0]
        found = self.app.store.case_by_reference(reference)
        assert found is not None, reference
        return found

    def events(self, case: Case) -> list[CaseEvent]:
        return self.app.store.case_events(case.id or 0)

    def event_kinds(self, case: Case) -> list[str]:
        return [e.kind for e in self.events(case)]

    def timers(self, case: Case, status: str | None = "pending") -> list[Timer]:
        return self.app.store.list_timers(case.id, status)

    def mails(self, template: str | None = None, to: str | None = None, since: int = 0) -> list[Captured]:
        out = self.smtp.messages[since:]
        if template is not None:
            out = [m for m in out if m.message["X-Escalations-Template"] == template]
        if to is not None:
            out = [m for m in out if to.lower() in [r.lower() for r in m.rcpt_tos]]
        return out

    def one(self, template: str, to: str, since: int = 0) -> Captured:
        found = self.mails(template, to, since)
        assert len(found) == 1, (f"expected one {template} to {to}, got {len(found)}; sent: "
                                 f"{[(m.message['X-Escalations-Template'], m.rcpt_tos) for m in self.mails(since=since)]}")
        return found[0]

    def mark(self) -> int:
        """Index into the captured mail: ``mails(since=mark)`` is what was sent after it."""
        return len(self.smtp.messages)

    def recipients(self, since: int = 0, template: str | None = None) -> list[str]:
        return sorted(r.lower() for m in self.mails(template, since=since) for r in m.rcpt_tos)


def make_settings(tmp_path: Path, database_url: str, smtp: SmtpCapture, dovecot: DovecotServer | None,
                  **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "var",
        "config_dir": CONFIG_DIR,
        "database_url": database_url,
        "smtp_intake_enabled": False,
        "relay": RelaySettings(host=smtp.host, port=smtp.port, security="none", timeout_seconds=10),
        "mailboxes": [dovecot.mailbox_settings(poll_seconds=0.05)] if dovecot is not None else [],
        "outbox_backoff_initial_seconds": 0.01,
        "outbox_backoff_max_seconds": 0.05,
        "process_interval_seconds": 0.2,
        # The scheduler must not tick on its own while a test moves the clock: tests call tick().
        "tick_interval_seconds": 3600.0,
        "secret_key": "workflow-tests-secret-key-0123456789",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def wf_clock() -> FakeClock:
    return FakeClock(OPENED)


@pytest.fixture
def wf_dovecot(dovecot_factory: Callable[..., DovecotServer]) -> DovecotServer:
    """Dovecot without IDLE, so the watcher polls every 50 ms: Dovecot delays IDLE news by about half a
    second, which over a few hundred test messages would be minutes of waiting (IDLE itself is
    covered by tests/mailer/test_imap_watcher.py)."""
    return dovecot_factory(drop_capabilities={"IDLE"})


HarnessFactory = Callable[..., Harness]


@pytest.fixture
def harness_factory(tmp_path: Path, wf_clock: FakeClock, smtp_capture: SmtpCapture,
                    wf_dovecot: DovecotServer) -> Iterator[HarnessFactory]:
    """``harness_factory(**settings_overrides)``: the service running for real (IMAP watcher on Dovecot,
    outbox to aiosmtpd, SQLite unless ``database_url`` is given)."""
    made: list[Harness] = []

    def factory(**overrides: Any) -> Harness:
        assert not made, "one running service per test"
        url = overrides.pop("database_url", f"sqlite:///{tmp_path / 'wf.sqlite3'}")
        settings = make_settings(tmp_path, url, smtp_capture, wf_dovecot, **overrides)
        h = Harness(settings, wf_clock, smtp_capture, wf_dovecot)
        made.append(h)
        h.start()
        return h

    try:
        yield factory
    finally:
        for h in made:
            h.stop()
            h.app.store.engine.dispose()


@pytest.fixture
def harness(harness_factory: HarnessFactory) -> Harness:
    """The service running for real: IMAP watcher on Dovecot, outbox to aiosmtpd, SQLite."""
    return harness_factory()
