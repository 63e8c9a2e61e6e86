"""Working-day arithmetic for policy deadlines (ARCHITECTURE.md, "Deadlines").

The rules, exactly as the design contract states them:

- A working day is Monday–Friday that is not a bank holiday of the partnership's division; it ends
  at ``day_end`` local time (17:00 unless configured).
- An event at time T *counts from* T's local date if that is a working day and T is before the
  day's end; otherwise from the next working day (the "counting date" D).
- ``N working_days`` → the day end of the Nth working day strictly after D.
- ``N calendar_days`` → T + N days at the same local clock time.
- ``N hours`` → T + N hours (elapsed time).
- ``same_working_day`` → the day end of D.

Everything here is pure. Inputs must be timezone-aware; results are UTC-aware datetimes.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo


def _countries_without_their_index() -> None:
    """Let ``holidays`` load the United Kingdom alone, not its 250 countries.

    ``holidays.country_holidays("GB")`` imports ``holidays.countries.united_kingdom``, and a module
    of a package cannot be imported without running the package's ``__init__``: there,
    ``holidays/countries/__init__.py`` imports every country module, for its names (about 255
    modules, 7 MiB and 50 ms here, in every process that computes a deadline). Nothing in
    ``holidays`` uses those names: its registry and its financial calendars import each country by
    its module path. So the package is registered here as it is found but not run, which such
    imports need (its ``__path__``); the country modules are then imported as asked, unchanged.
    Done when this module is imported, before any calendar is made or unpickled from the config
    cache (finding the spec imports ``holidays`` itself, which does not import the countries); not
    done if something imported the countries' package first (then it is whole).
    """
    name = "holidays.countries"
    if name in sys.modules:
        return
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:  # holidays not installed: the import below says so
        return
    if spec is not None and spec.submodule_search_locations is not None:
        sys.modules[name] = importlib.util.module_from_spec(spec)


_countries_without_their_index()

import holidays  # noqa: E402  (after the line above)

Division = Literal["england-and-wales", "scotland", "northern-ireland"]
Unit = Literal["hours", "working_days", "calendar_days", "same_working_day"]

DIVISIONS: tuple[str, ...] = get_args(Division)
UNITS: tuple[str, ...] = get_args(Unit)

#: ``holidays`` subdivision codes for the UK bank-holiday divisions (England and Wales share a list).
_SUBDIVISION: dict[str, str] = {"england-and-wales": "ENG", "scotland": "SCT", "northern-ireland": "NIR"}

#: A working-day count far beyond anything a policy asks for; guards against runaway loops.
_MAX_SCAN_DAYS = 3660


def ensure_aware(t: datetime, tz: ZoneInfo) -> datetime:
    """A naive datetime is read as local time in ``tz``; an aware one is kept as is."""
    return t.replace(tzinfo=tz) if t.tzinfo is None else t


@dataclass(frozen=True)
class WorkingCalendar:
    """Working days of one partnership: its timezone, bank-holiday division and day end."""

    timezone: str = "Europe/London"
    division: Division = "england-and-wales"
    day_end: time = time(17, 0)
    _holidays: holidays.HolidayBase = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        subdiv = _SUBDIVISION[self.division]
        object.__setattr__(self, "_holidays", holidays.country_holidays("GB", subdiv=subdiv))

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    # -- days -------------------------------------------------------------------------------

    def is_bank_holiday(self, d: date) -> bool:
        return d in self._holidays

    def holiday_name(self, d: date) -> str | None:
        name = self._holidays.get(d)
        return str(name) if name is not None else None

    def is_working_day(self, d: date) -> bool:
        return d.weekday() < 5 and not self.is_bank_holiday(d)

    def next_working_day(self, d: date) -> date:
        """The first working day strictly after ``d``."""
        for _ in range(_MAX_SCAN_DAYS):
            d += timedelta(days=1)
            if self.is_working_day(d):
                return d
        raise ValueError(f"no working day within {_MAX_SCAN_DAYS} days after {d}")  # pragma: no cover

    def local(self, t: datetime) -> datetime:
        return ensure_aware(t, self.tz).astimezone(self.tz)

    def day_end_at(self, d: date) -> datetime:
        """The end of working day ``d`` as a UTC-aware datetime."""
        return datetime.combine(d, self.day_end, tzinfo=self.tz).astimezone(UTC)

    def counting_date(self, t: datetime) -> date:
        """T's local date if a working day and T is before its end; otherwise the next working day."""
        lt = self.local(t)
        d = lt.date()
        if self.is_working_day(d) and lt.timetz().replace(tzinfo=None) < self.day_end:
            return d
        return self.next_working_day(d)

    # -- deadlines --------------------------------------------------------------------------

    def add_working_days(self, t: datetime, n: int) -> datetime:
        """Day end of the Nth working day strictly after the counting date of ``t``."""
        if n < 0:
            raise ValueError("working days must not be negative")
        d = self.counting_date(t)
        for _ in range(n):
            d = self.next_working_day(d)
        return self.day_end_at(d)

    def same_working_day(self, t: datetime) -> datetime:
        return self.day_end_at(self.counting_date(t))

    def add_calendar_days(self, t: datetime, n: int) -> datetime:
        """T + N days at the same local clock time (a day across a clock change is 23 or 25 hours)."""
        if n < 0:
            raise ValueError("calendar days must not be negative")
        lt = self.local(t)
        wall = datetime.combine(lt.date() + timedelta(days=n), lt.timetz().replace(tzinfo=None))
        # Round-trip through UTC so that a wall time skipped by the spring change is normalised.
        return wall.replace(tzinfo=self.tz, fold=lt.fold).astimezone(UTC)

    def add_hours(self, t: datetime, n: float) -> datetime:
        if n < 0:
            raise ValueError("hours must not be negative")
        return ensure_aware(t, self.tz).astimezone(UTC) + timedelta(hours=n)

    def deadline(self, t: datetime, amount: float | None, unit: Unit) -> datetime:
        """The deadline for a timescale of ``amount`` ``unit`` starting at event time ``t``."""
        if unit == "same_working_day":
            return self.same_working_day(t)
        if amount is None:
            raise ValueError(f"a timescale in {unit} needs an amount")
        if unit == "hours":
            return self.add_hours(t, amount)
        if int(amount) != amount:
            raise ValueError(f"{unit} must be a whole number, not {amount}")
        if unit == "working_days":
            return self.add_working_days(t, int(amount))
        return self.add_calendar_days(t, int(amount))

    def needed_by_at(self, value: date | datetime) -> datetime:
        """The referral's ``needed_by``: a date means the day end of that date; naive datetimes are local."""
        if isinstance(value, datetime):
            return ensure_aware(value, self.tz).astimezone(UTC)
        return datetime.combine(value, self.day_end, tzinfo=self.tz).astimezone(UTC)


def format_local(t: datetime, tz: ZoneInfo) -> str:
    """'Tuesday 5 January 2027, 17:00' — how deadlines are shown in mail."""
    lt = t.astimezone(tz)
    return f"{lt:%A} {lt.day} {lt:%B %Y, %H:%M}"
