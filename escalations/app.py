"""The one composition root: ``build_app(settings) -> App``. Nothing else reads settings."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from escalations.cases import schema
from escalations.cases.operations import Operations
from escalations.cases.processor import Outcome, Processor
from escalations.cases.store import Store, StoredInbound, content_key, make_engine
from escalations.cases.workflow import Workflow
from escalations.clock import Clock, SystemClock
from escalations.mailer.outbox import OutboxDispatcher, Renderer
from escalations.mailer.smtp_sender import FileSender, MailSender, SmtpRelaySender
from escalations.parsers.attachments import with_attachment_texts
from escalations.parsers.limits import Limits
from escalations.parsers.message import parse_message
from escalations.policy_files import load_config
from escalations.private import make_private
from escalations.routing.policy.model import PolicyConfig
from escalations.sandbox import BoundedParser
from escalations.settings import Settings

log = structlog.get_logger("escalations.app")


@dataclass
class App:
    settings: Settings
    clock: Clock
    config: PolicyConfig
    store: Store
    renderer: Renderer
    processor: Processor
    outbox: OutboxDispatcher
    workflow: Workflow
    wake_processor: threading.Event = field(default_factory=threading.Event)
    wake_outbox: threading.Event = field(default_factory=threading.Event)
    smtp_port: int | None = None
    operations: Operations | None = None
    _stopping: threading.Event | None = None
    parser: BoundedParser | None = None

    def close(self) -> None:
        """Stop the parse worker (a later parse starts a new one)."""
        if self.parser is not None:
            self.parser.close()

    # ---- intake --------------------------------------------------------------------------

    def accepts(self, address: str) -> bool:
        """Is this envelope recipient one of our partnership mailboxes (sub-addresses included)?"""
        a = address.strip().strip("<>").lower()
        local, _, domain = a.partition("@")
        mailboxes = self.config.all_mailboxes()
        return a in mailboxes or f"{local.split('+', 1)[0]}@{domain}" in mailboxes

    def on_stored(self, _inbound_id: int) -> None:
        self.wake_processor.set()

    def ingest(self, raw: bytes, *, received_at: datetime | None = None) -> StoredInbound:
        """Store a saved message exactly as if it had arrived (``escalations ingest``)."""
        from escalations.mailer.intake import Arrival, RawMailSink

        return RawMailSink(self.store, self.on_stored).accept(
            Arrival(raw, source="cli", idempotency_key=content_key(raw), received_at=received_at))

    def process_pending(self) -> list[Outcome]:
        # a stop waits for the message under way, not the whole backlog (nor the rest of a batch)
        outcomes = self.processor.process_pending(stop=self._stopping)
        if any(o.status == "done" for o in outcomes):
            self.wake_outbox.set()
        return outcomes

    def send_outbox(self) -> int:
        return self.outbox.send_due()

    def tick(self, now: datetime | None = None) -> dict[str, Any]:
        """Process waiting mail, run due reminders and escalations once, then send what is waiting."""
        now = now or self.clock.now()
        processed = self.process_pending()
        fired = self.workflow.tick(now)
        digests = self.workflow.send_digests(now)
        alerts = daily = 0
        if self.operations is not None:
            # real time, as the watchers record it: `tick --now` pretends for deadlines only
            alerts = self.operations.check_mailboxes(self.store.lease_clock.now())
            daily = self.operations.send_daily_digests(now)
        sent = self.send_outbox()
        return {"now": now.isoformat(), "processed": len(processed), "timers_fired": len(fired),
                "fired": fired, "digests": digests, "mailbox_alerts": alerts, "daily_digests": daily, "sent": sent}

    # ---- the service (escalations/service.py runs the threads) ------------------------------

    def run(self, stop: threading.Event, *, on_started: Callable[[App], None] | None = None,
            components: dict[str, Callable[[threading.Event], None]] | None = None) -> None:
        """Run the service until ``stop`` is set, with ``components`` (name -> run(stop), e.g. the web
        server) in threads beside it (see :class:`escalations.service.Service`)."""
        from escalations.service import Service

        Service(self, components).run(stop, on_started=on_started)

    @contextmanager
    def keep_alive(self) -> Iterator[None]:
        """Beat while a one-off command works, so a running service never takes its claims for a dead
        process's, however long one message or one send takes."""
        from escalations.service import beating

        with beating(self.store):
            yield

    def warn_expiring_secrets(self) -> int:
        """Warn about client secrets and certificates that expire within 30 days (daily while running)."""
        from escalations.mailer.oauth import warn_if_secret_expiring

        today = self.clock.now().date()
        accounts = [(m.auth, m.name) for m in self.settings.mailboxes]
        if self.settings.relay is not None:
            accounts.append((self.settings.relay.auth, "relay"))
        return sum(warn_if_secret_expiring(auth, name, today) for auth, name in accounts)


def mail_sender_for(settings: Settings) -> MailSender:
    if settings.relay is not None:
        return SmtpRelaySender(settings.relay)
    return FileSender(settings.sent_dir)


def build_app(settings: Settings, *, clock: Clock | None = None, sender: MailSender | None = None,
              config: PolicyConfig | None = None, lease_clock: Clock | None = None,
              read_only: bool = False) -> App:
    """``read_only``: the command only reads, so the database must exist at this release's schema
    already (nothing is created); otherwise an empty database is created at it. Either way a
    database at another revision raises :class:`SchemaError` naming ``escalations db upgrade``."""
    clock = clock or SystemClock()
    config = config or load_config(settings.config_dir, cache_dir=settings.data_dir)
    from escalations.policy_files.labels import load_labels

    labels = load_labels(settings.config_dir)  # <config dir>/labels.yaml over the shipped vocabulary
    if not read_only:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(make_engine(settings.effective_database_url), clock, lease_clock=lease_clock)
    try:
        if read_only:
            schema.require_current(store.engine)
        else:
            store.create_schema()
    except Exception:
        store.engine.dispose()
        raise
    make_private(settings.data_dir, settings.effective_database_url)
    renderer = Renderer(settings.web.public_url)
    app_ref: list[App] = []
    workflow = Workflow(store, config, renderer, settings.token_secret(),
                        settings.message_id_domain, subaddressing=settings.reply_subaddressing)
    limits = parse_limits(settings)
    parser = BoundedParser(limits, timeout_seconds=settings.parse_timeout_seconds,
                           memory_bytes=settings.parse_memory_bytes) if settings.parse_in_worker else None
    processor = Processor(store, config, renderer, clock, message_id_domain=settings.message_id_domain,
                          workflow=workflow, auth_results={m.name: m.auth_results for m in settings.mailboxes},
                          smtp_authserv_id=settings.smtp_intake_authserv_id,
                          ingest_auth_results=settings.ingest_auth_results,
                          note_limit=settings.max_notes_per_party_per_day, labels=labels,
                          on_queued=lambda: app_ref[0].wake_outbox.set() if app_ref else None,
                          parser=parser or (lambda raw: with_attachment_texts(parse_message(raw, limits), limits)))
    outbox = OutboxDispatcher(store, sender or mail_sender_for(settings), max_attempts=settings.outbox_max_attempts,
                              backoff_initial=settings.outbox_backoff_initial_seconds,
                              backoff_max=settings.outbox_backoff_max_seconds,
                              max_per_address_per_hour=settings.max_mails_per_address_per_hour)
    operations = Operations(store, config, renderer, settings.message_id_domain,
                            mailboxes=tuple(m.name for m in settings.mailboxes),
                            mailbox_addresses={m.name: m.username for m in settings.mailboxes},
                            admin_emails=tuple(settings.admin_emails), admin_from=settings.admin_from,
                            alert_after=timedelta(minutes=settings.mailbox_alert_after_minutes),
                            digest_at=settings.daily_digest_at)
    app = App(settings=settings, clock=clock, config=config, store=store, renderer=renderer,
              processor=processor, outbox=outbox, workflow=workflow, parser=parser, operations=operations)
    app_ref.append(app)
    return app


def parse_limits(settings: Settings) -> Limits:
    return Limits(max_mime_parts=settings.max_mime_parts, max_mime_depth=settings.max_mime_depth,
                  attachment_max_decompressed_bytes=settings.attachment_max_decompressed_bytes,
                  attachment_max_ratio=settings.attachment_max_ratio,
                  docx_max_elements=settings.docx_max_elements, html_max_chars=settings.html_max_chars)


def demo_messages() -> Iterable[tuple[str, Path]]:
    """The bundled sample referral of each partnership (escalations/demo/<id>.eml)."""
    folder = Path(__file__).resolve().parent / "demo"
    for path in sorted(folder.glob("*.eml")):
        yield path.stem, path


