"""SMTP intake (aiosmtpd): accepts mail for the partnership mailboxes and answers 250 only after
the raw bytes are committed to the database. Any failure to store answers 451 so the client retries.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from escalations.cases.store import Store, StoredInbound, content_key
from escalations.mailer.intake import Arrival, RawMailSink

log = structlog.get_logger("escalations.smtp_intake")


class IntakeHandler:
    def __init__(
        self,
        store: Store,
        accepts: Callable[[str], bool],
        on_stored: Callable[[int], None] = lambda _id: None,
    ) -> None:
        self.sink = RawMailSink(store, on_stored)
        self.accepts = accepts

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.accepts(address):
            return "550 5.1.1 Mailbox unavailable: not a partnership escalation mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or (
            envelope.content if isinstance(envelope.content, bytes) else str(envelope.content or "").encode()
        )
        if not raw:
            return "554 5.6.0 Empty message"
        loop = asyncio.get_running_loop()
        try:
            stored = await loop.run_in_executor(None, self._store, raw, envelope)
        except Exception:
            log.exception("smtp.store_failed", peer=str(session.peer[0]) if session.peer else None)
            return "451 4.3.0 Could not store the message; please try again later"
        log.info("smtp.stored", inbound_id=stored.id, created=stored.created, size=len(raw))
        return "250 2.0.0 Message accepted for delivery"

    def _store(self, raw: bytes, envelope: Envelope) -> StoredInbound:
        return self.sink.accept(Arrival(raw, source="smtp", idempotency_key=content_key(raw),
                                        envelope_sender=envelope.mail_from,
                                        envelope_recipients=[str(r) for r in envelope.rcpt_tos]))


def start_smtp_intake(
    store: Store,
    accepts: Callable[[str], bool],
    *,
    host: str,
    port: int,
    max_size: int,
    on_stored: Callable[[int], None] = lambda _id: None,
) -> Controller:
    handler = IntakeHandler(store, accepts, on_stored)
    if port == 0:  # aiosmtpd's readiness check needs the real port: pick a free one
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
    controller = Controller(
        handler,
        hostname=host,
        port=port,
        data_size_limit=max_size,
        decode_data=False,
        server_hostname="escalations.local",
        ready_timeout=10.0,
    )
    controller.start()
    log.info("smtp.listening", host=host, port=controller.port)
    return controller
