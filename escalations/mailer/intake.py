"""The intake seam. Every channel (IMAP watcher, SMTP listener, ``escalations ingest``, later Microsoft
Graph) turns what it received into an :class:`Arrival` and hands it to :meth:`RawMailSink.accept`,
which commits the raw bytes (idempotently) before the channel tells its server anything, then wakes the
processor. Nothing here parses or decides.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

from escalations.cases.store import Store, StoredInbound

log = structlog.get_logger("escalations.intake")


class Intake(Protocol):
    """A channel that watches somewhere for mail until stopped (e.g. one IMAP folder)."""

    @property
    def name(self) -> str: ...

    def run(self, stop: threading.Event) -> None: ...


@dataclass(frozen=True)
class Arrival:
    """One message as a channel received it: the raw bytes, the channel's idempotency key (IMAP:
    account, folder, UIDVALIDITY, UID; otherwise a hash of the bytes) and the received time."""

    raw: bytes
    source: str
    idempotency_key: str
    received_at: datetime | None = None
    account: str | None = None
    folder: str | None = None
    envelope_sender: str | None = None
    envelope_recipients: Sequence[str] = ()
    #: (UIDVALIDITY, UID): the folder's cursor advances in the same transaction as the row.
    imap_cursor: tuple[int, int] | None = None


class RawMailSink:
    """Stores arrivals durably, then wakes whoever processes them."""

    def __init__(self, store: Store, on_stored: Callable[[int], None] = lambda _id: None) -> None:
        self.store = store
        self.on_stored = on_stored

    def accept(self, arrival: Arrival) -> StoredInbound:
        """Commit the raw bytes once; a key or fingerprint seen before returns the existing row.
        Raises when the database refuses: the channel must then not acknowledge the message."""
        stored = self.store.store_inbound(
            arrival.raw, source=arrival.source, idempotency_key=arrival.idempotency_key,
            account=arrival.account, folder=arrival.folder, envelope_sender=arrival.envelope_sender,
            envelope_recipients=arrival.envelope_recipients, received_at=arrival.received_at,
            imap_cursor=arrival.imap_cursor)
        self._woken([stored], arrival.source)
        return stored

    def accept_many(self, arrivals: Sequence[Arrival]) -> list[StoredInbound]:
        """:meth:`accept` for several at once, committed in one transaction (an IMAP fetch batch)."""
        stored = self.store.store_inbound_many(arrivals)
        self._woken(stored, arrivals[0].source if arrivals else "")
        return stored

    def _woken(self, stored: Sequence[StoredInbound], source: str) -> None:
        for one in stored:
            if one.created:
                try:
                    self.on_stored(one.id)
                except Exception:  # the row is committed; a failing wake-up must not make anyone resend it
                    log.exception("intake.on_stored_failed", inbound_id=one.id, source=source)
