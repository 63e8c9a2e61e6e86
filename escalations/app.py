"""The one composition root: ``build_app(settings) -> App``. Nothing else reads settings.

The parts that handle mail (processor, workflow, outbox, operations, the parse worker and their
renderer) are made when first used, and their modules imported then: a read-only command
(``cases list``, ``status``) opens the store without importing the parsers, the outbox or the
relay's sign-in. Its configuration too is loaded when first read, if the validated-config cache
says it is valid already (a configuration with a mistake is never cached, so the mistake is still
reported before anything else). A build that may write makes every part at once, as the service
needs them, so nothing is made later in a thread of its own.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from escalations.cases import schema
from escalations.cases.store import Store, StoredInbound, content_key, make_engine
from escalations.clock import Clock, SystemClock
from escalations.private import make_private

if TYPE_CHECKING:
    from escalations.cases.operations import Operations
    from escalations.cases.processor import Outcome, Processor
    from escalations.cases.workflow import Workflow
    from escalations.mailer.outbox import OutboxDispatcher, Renderer
    from escalations.mailer.smtp_sender import MailSender
    from escalations.parsers.labels import LabelTable
    from escalations.parsers.limits import Limits
    from escalations.routing.policy.model import PolicyConfig
    from escalations.sandbox import BoundedParser
    from escalations.settings import Settings


@dataclass
class App:
    settings: Settings
    clock: Clock
    store: Store
    #: The relay (or the folder) the outbox sends through: None for the one the settings name.
    sender: MailSender | None = None
    wake_processor: threading.Event = field(default_factory=threading.Event)
    wake_outbox: threading.Event = field(default_factory=threading.Event)
    smtp_port: int | None = None
    _stopping: threading.Event | None = None

    # ---- the parts, each made (and its modules imported) when first used -----------------------

    @functools.cached_property
    def config(self) -> PolicyConfig:
        return _load_config(self.settings)

    @functools.cached_property
    def labels(self) -> LabelTable:
        return _load_labels(self.settings)

    @functools.cached_property
    def renderer(self) -> Renderer:
        from escalations.mailer.outbox import Renderer

        return Renderer(self.settings.web.public_url)

    @functools.cached_property
    def workflow(self) -> Workflow:
        from escalations.cases.workflow import Workflow

        s = self.settings
        return Workflow(self.store, self.config, self.renderer, s.token_secret(), s.message_id_domain,
                        subaddressing=s.reply_subaddressing)

    @functools.cached_property
    def parser(self) -> BoundedParser | None:
        """The parse worker (None: messages are parsed in this process)."""
        from escalations.sandbox import BoundedParser

        s = self.settings
        return BoundedParser(parse_limits(s), timeout_seconds=s.parse_timeout_seconds,
                             memory_bytes=s.parse_memory_bytes, labels=self.labels) if s.parse_in_worker else None

    @functools.cached_property
    def processor(self) -> Processor:
        from escalations.cases.processor import Processor
        from escalations.parsers.attachments import with_attachment_texts
        from escalations.parsers.message import parse_message

        s = self.settings
        limits = parse_limits(s)
        return Processor(self.store, self.config, self.renderer, self.clock, message_id_domain=s.message_id_domain,
                         workflow=self.workflow, auth_results={m.name: m.auth_results for m in s.mailboxes},
                         smtp_authserv_id=s.smtp_intake_authserv_id, ingest_auth_results=s.ingest_auth_results,
                         note_limit=s.max_notes_per_party_per_day, labels=self.labels,
                         on_queued=self.wake_outbox.set, new_mail=self.wake_processor,
                         parser=self.parser or (lambda raw: with_attachment_texts(parse_message(raw, limits), limits)))

    @functools.cached_property
    def outbox(self) -> OutboxDispatcher:
        from escalations.mailer.outbox import OutboxDispatcher

        s = self.settings
        return OutboxDispatcher(self.store, self.sender or mail_sender_for(s), max_attempts=s.outbox_max_attempts,
                                backoff_initial=s.outbox_backoff_initial_seconds,
                                backoff_max=s.outbox_backoff_max_seconds,
                                max_per_address_per_hour=s.max_mails_per_address_per_hour)

    @functools.cached_property
    def operations(self) -> Operations | None:
        from escalations.cases.operations import Operations

        s = self.settings
        return Operations(self.store, self.config, self.renderer, s.message_id_domain,
                          mailboxes=tuple(m.name for m in s.mailboxes),
                          mailbox_addresses={m.name: m.username for m in s.mailboxes},
                          admin_emails=tuple(s.admin_emails), admin_from=s.admin_from,
                          alert_after=timedelta(minutes=s.mailbox_alert_after_minutes),
                          digest_at=s.daily_digest_at)

    def make_parts(self) -> None:
        """Make every part now (a build that may write: the service, and commands that act)."""
        for part in ("workflow", "parser", "processor", "outbox", "operations"):
            getattr(self, part)

    def close(self) -> None:
        """Stop the parse worker (a later parse starts a new one) and close a kept relay connection; what was
        never made is left alone."""
        parser = self.__dict__.get("parser")
        if parser is not None:
            parser.close()
        outbox = self.__dict__.get("outbox")
        if outbox is not None:
            outbox.close()

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
            components: dict[str, Callable[[threading.Event], None]] | None = None,
            freeze_heap: bool = False) -> None:
        """Run the service until ``stop`` is set, with ``components`` (name -> run(stop), e.g. the web
        server) in threads beside it (see :class:`escalations.service.Service`; ``freeze_heap``: the
        process is the service's alone)."""
        from escalations.service import Service

        Service(self, components, freeze_heap=freeze_heap).run(stop, on_started=on_started)

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
    from escalations.mailer.smtp_sender import FileSender, SmtpRelaySender

    if settings.relay is not None:
        return SmtpRelaySender(settings.relay)
    return FileSender(settings.sent_dir)


def build_app(settings: Settings, *, clock: Clock | None = None, sender: MailSender | None = None,
              config: PolicyConfig | None = None, lease_clock: Clock | None = None,
              read_only: bool = False, schema_in_child: bool = False) -> App:
    """``read_only``: the command only reads, so the database must exist at this release's schema
    already (nothing is created); otherwise an empty database is created at it (``schema_in_child``:
    by a child process, as ``escalations run`` does, so the service never holds Alembic). Either way a
    database at another revision raises :class:`SchemaError` naming ``escalations db upgrade``.
    A read-only build makes the parts that handle mail only if the command uses them; any other
    build makes them all before it returns."""
    clock = clock or SystemClock()
    if config is None and not (read_only and _config_cached(settings)):
        config = _load_config(settings)  # a mistake in it before anything is opened or created
    labels = None if read_only else _load_labels(settings)
    if not read_only:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(make_engine(settings.effective_database_url), clock, lease_clock=lease_clock)
    try:
        if read_only:
            schema.require_current(store.engine)
        else:
            store.create_schema(in_child=schema_in_child)
    except Exception:
        store.engine.dispose()
        raise
    make_private(settings.data_dir, settings.effective_database_url)
    app = App(settings=settings, clock=clock, store=store, sender=sender)
    if config is not None:
        app.config = config
    if labels is not None:
        app.labels = labels
        app.make_parts()
    return app


def _load_config(settings: Settings) -> PolicyConfig:
    from escalations.policy_files import load_config

    return load_config(settings.config_dir, cache_dir=settings.data_dir)


def _config_cached(settings: Settings) -> bool:
    """The configuration is cached, so it is valid: it can be loaded when first read."""
    from escalations.policy_files import cache

    return cache.is_current(settings.data_dir, cache.cache_key(settings.config_dir))


def _load_labels(settings: Settings) -> LabelTable:
    from escalations.policy_files.labels import load_labels

    return load_labels(settings.config_dir)  # <config dir>/labels.yaml over the shipped vocabulary


def parse_limits(settings: Settings) -> Limits:
    from escalations.parsers.limits import Limits

    return Limits(max_mime_parts=settings.max_mime_parts, max_mime_depth=settings.max_mime_depth,
                  attachment_max_decompressed_bytes=settings.attachment_max_decompressed_bytes,
                  attachment_max_ratio=settings.attachment_max_ratio,
                  docx_max_elements=settings.docx_max_elements, html_max_chars=settings.html_max_chars)


def demo_messages() -> Iterable[tuple[str, Path]]:
    """The bundled sample referral of each partnership (escalations/demo/<id>.eml)."""
    folder = Path(__file__).resolve().parent / "demo"
    for path in sorted(folder.glob("*.eml")):
        yield path.stem, path


