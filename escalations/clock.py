"""The injected clock: production uses the system time, tests a fake one they move by hand."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

#: Times shown to people (tables, CLI); mail uses each partnership's own time zone.
LONDON = ZoneInfo("Europe/London")


def iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def local(dt: datetime | None) -> str:
    """A UTC time as London local time for a table, e.g. "Tue 01 Dec 2026 13:00"; "-" for none."""
    return dt.astimezone(LONDON).strftime("%a %d %b %Y %H:%M") if dt else "-"


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A settable clock (tests, `tick --now`). Always timezone-aware UTC."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when.astimezone(UTC)

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._now += delta
