"""The next message of a claim, read and handed to the parse worker while the current one is dispatched.

The processor parses message k, then (before dispatching it) reads message k+1's row and hands its raw
mail to the parse worker (:meth:`BoundedParser.prefetch`), so the worker parses k+1 while k's write
transaction runs. The worker also reads k+1 as a referral, with the service's label vocabulary and
against the local time the processor would use, when it can (see :meth:`ReadAhead.worker_reading`);
the processor then only adds the partnership's missing required fields.

The row read ahead is used only for its own id; a message is still finished only while it is pending
(the processor's ``_FINISH``), so a row quarantined or replayed meanwhile keeps what was done to it.
A failure reading ahead is logged and never quarantines the message under way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

import structlog

from escalations.cases.inbound import InboundRow
from escalations.cases.store import Store
from escalations.clock import Clock
from escalations.parsers.fields import ReferralParse
from escalations.parsers.labels import LabelTable
from escalations.parsers.message import ParsedMessage
from escalations.parsers.referral import extract_referral, missing_of
from escalations.routing.calendar import WorkingCalendar
from escalations.routing.policy.model import Partnership, PolicyConfig
from escalations.sandbox import BoundedParser

log = structlog.get_logger("escalations.cases.processor")

__all__ = ["ReadAhead"]


class ReadAhead:
    """Per processing thread, the row of the message it processes next, its mail already handed over.

    ``parser`` and ``labels``: the processor's parser and label vocabulary as they are now (tests and
    the CLI replace the parser); only a :class:`BoundedParser` takes a message ahead."""

    def __init__(self, store: Store, clock: Clock, config: PolicyConfig,
                 parser: Callable[[], Callable[[bytes], ParsedMessage]],
                 labels: Callable[[], LabelTable | None]) -> None:
        self.store = store
        self.clock = clock
        self._parser = parser
        self._labels = labels
        self._local = threading.local()
        # The worker reads a referral against one local time: that of every partnership's timezone,
        # so only when they share one (the calendar the processor converts with in _dispatch).
        calendars = {p.calendar.timezone: p.calendar for p in config.partnerships.values()}
        self._calendar: WorkingCalendar | None = next(iter(calendars.values())) if len(calendars) == 1 else None

    def row(self, inbound_id: int) -> InboundRow | None:
        """The message's row: the one read ahead when it is this id's, else read now. Either way no row
        is held afterwards."""
        ahead: InboundRow | None = getattr(self._local, "ahead", None)
        self._local.ahead = None
        return ahead if ahead is not None and ahead.id == inbound_id else self.store.inbound_for_processing(inbound_id)

    def event_time(self, row: InboundRow) -> datetime:
        """Every event happens at its own time: the message's when the partnership received it (never
        later than now: a server clock ahead of ours must not put mail and deadlines in the future)."""
        now = self.clock.now()
        return min(row.received_at, now) if row.received_at else now

    def worker_reading(self) -> BoundedParser | None:
        """The parser, when its worker reads referrals as the processor would (the same vocabulary,
        every partnership in one timezone)."""
        parser, labels = self._parser(), self._labels()
        if (isinstance(parser, BoundedParser) and labels is not None and parser.labels is labels
                and self._calendar is not None):
            return parser
        return None

    def _local_time(self, now: datetime) -> datetime | None:
        """``now`` as the naive local time the worker reads a referral's timescale against."""
        return None if self._calendar is None else self._calendar.local(now).replace(tzinfo=None)

    def parse(self, raw: bytes, now: datetime) -> ParsedMessage:
        """The message parsed (by the worker's answer to its hand-over, when it was handed ahead)."""
        worker = self.worker_reading()
        if worker is not None:
            return worker.parse(raw, read_referral=True, received=self._local_time(now))
        return self._parser()(raw)

    def referral(self, msg: ParsedMessage, partnership: Partnership, received: datetime) -> ReferralParse:
        """``msg`` read as a referral of ``partnership`` at the naive local time ``received``: the
        worker's reading when it read it against that same time, else read here."""
        required = partnership.all_required_fields()
        ahead = msg.referral_ahead if self.worker_reading() is not None else None
        if ahead is not None and ahead[0] == received and isinstance(ahead[1], ReferralParse):
            return replace(ahead[1], missing=missing_of(ahead[1].fields, required))
        return extract_referral(msg, required, self._labels(), received=received)

    def hand_over(self, following: int | None) -> None:
        """Read the next message's row and hand its raw mail to the parse worker now, so that it is
        parsed while the current one is dispatched."""
        parser = self._parser()
        if following is None or not isinstance(parser, BoundedParser):
            return
        try:
            row = self.store.inbound_for_processing(following)
        except Exception as exc:
            # not this message's failure: the next one is read again, and fails there if it must
            log.warning("inbound.read_ahead_failed", inbound_id=following, error_type=type(exc).__name__)
            return
        if row is None or row.status != "pending":
            return
        self._local.ahead = row
        if self.worker_reading() is not None:
            parser.prefetch(row.raw, read_referral=True, received=self._local_time(self.event_time(row)))
        else:
            parser.prefetch(row.raw)
