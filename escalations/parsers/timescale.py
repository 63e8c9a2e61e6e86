"""A protective timescale in words ("by Friday", "within 48 hours", "before Ava returns home at the
weekend"), read relative to when the partnership received the referral.

Pure: no I/O. ``received`` is naive local time (the partnership's timezone); the result is a date
(the end of that day applies) or a naive local datetime, as ``values.parse_datetime`` gives.

The rules tried first, because practitioners write them and a general date parser reads them
differently or not at all:

* a written date ("12/11/2026", "17:00 on 12 Nov 2026") — ``values.parse_datetime``;
* "within N hours" -> received + N hours; "within N days" -> received date + N days; "within N
  working days" -> N weekdays on (bank holidays are the policy's calendar's business, not ours);
* "today", "tomorrow", "end of the day";
* "the weekend" (by, before, at, this) -> the Friday before it: the last working day on which the
  agencies can act before the child's weekend (on a Saturday or Sunday: that day);
* "end of the week", "this week" -> this week's Friday;
* a weekday ("by Friday", "before Tuesday") -> its next occurrence, today included.

Anything else goes to ``dateparser`` (future dates preferred, UK day-first). A timescale that none of
them reads is reported as unread (``read_timescale`` returns None), so the caller can ask for a date
rather than silently ignore it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, timedelta

from escalations.parsers.values import norm, parse_datetime

__all__ = ["find_timescale", "first_readable", "in_letter", "read_timescale"]

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "ten": 10,
            "twelve": 12, "fourteen": 14, "twenty four": 24, "twenty-four": 24, "forty eight": 48,
            "forty-eight": 48, "seventy two": 72, "seventy-two": 72, "a": 1, "an": 1}
_WITHIN = re.compile(r"\bwithin\s+(?:the\s+next\s+)?(\d{1,3}|twenty[ -]four|forty[ -]eight|seventy[ -]two|[a-z]+)\s+"
                     r"(working\s+days?|days?|hours?|hrs?|weeks?)\b", re.I)

Reading = date | datetime


def _within(text: str, received: datetime) -> Reading | None:
    m = _WITHIN.search(text)
    if not m:
        return None
    word = m.group(1).lower()
    amount = int(word) if word.isdigit() else _NUMBERS.get(word)
    if amount is None:
        return None
    unit = m.group(2).lower()
    if unit.startswith(("hour", "hr")):
        return received + timedelta(hours=amount)
    if unit.startswith("working"):
        return _weekdays_on(received.date(), amount)
    if unit.startswith("week"):
        return received.date() + timedelta(weeks=amount)
    return received.date() + timedelta(days=amount)


def _weekdays_on(start: date, n: int) -> date:
    day = start
    while n > 0:
        day += timedelta(days=1)
        if day.weekday() < 5:
            n -= 1
    return day


def _friday_of(day: date) -> date:
    """This week's Friday (a Saturday or Sunday: that day — the weekend has come)."""
    if day.weekday() >= 5:
        return day
    return day + timedelta(days=4 - day.weekday())


def _words(text: str, received: datetime) -> Reading | None:
    n = norm(text)
    day = received.date()
    if re.search(r"\b(weekend|week end)\b", n) or re.search(r"\b(end of (the |this )?week|this week)\b", n):
        return _friday_of(day)
    if re.search(r"\btomorrow\b", n):
        return day + timedelta(days=1)
    if re.search(r"\b(today|end of (the )?day|close of business|cob|eod)\b", n):
        return day
    return _weekday(n, day)


def _weekday(n: str, day: date) -> date | None:
    if re.search(r"\bnext (week|month)\b", n):
        return None  # "next Friday" and friends: dateparser's reading
    for i, name in enumerate(_WEEKDAYS):
        if re.search(rf"\b(?<!next ){name}\b", n):
            return day + timedelta(days=(i - day.weekday()) % 7)
    return None


def _dateparser(text: str, received: datetime) -> Reading | None:
    import dateparser
    from dateparser.search import search_dates

    settings = {"RELATIVE_BASE": received, "PREFER_DATES_FROM": "future", "DATE_ORDER": "DMY",
                "RETURN_AS_TIMEZONE_AWARE": False}
    phrase = re.sub(r"^\s*(?:by|before|no later than|not later than|on|until|for)\s+", "", text.strip(), flags=re.I)
    found = dateparser.parse(phrase, languages=["en"], settings=settings)
    if found is None:
        hits = search_dates(phrase, languages=["en"], settings=settings)
        # "now", "on" or a bare number read as a date are no timescale
        hits = [(s, d) for s, d in hits or [] if re.search(r"[a-z]{3,}.*|\d+\D+\d+", s.lower())
                and norm(s) not in ("now", "on", "at", "in")]
        found = hits[0][1] if hits else None
    if not isinstance(found, datetime) or found < received - timedelta(days=1):
        return None
    has_time = bool(re.search(r"\d\s*(?:am|pm)\b|\d[:.]\d{2}\b|\bnoon\b|\bmidday\b|\bhours?\b", text, re.I))
    return found if has_time else found.date()


_RULES: tuple[Callable[[str, datetime], Reading | None], ...] = (
    lambda t, _r: parse_datetime(t), _within, _words, _dateparser)


def read_timescale(text: str, received: datetime) -> Reading | None:
    """The deadline ``text`` sets, relative to ``received`` (naive local), or None when unread."""
    if not text or not text.strip() or len(text) > 400:
        return None
    for rule in _RULES:
        found = rule(text, received)
        if found is not None:
            return found
    return None


def _read(text: str, received: datetime | None) -> Reading | None:
    return read_timescale(text, received) if received is not None else parse_datetime(text)


def first_readable(texts: list[str], received: datetime | None) -> tuple[Reading | None, str | None]:
    """(the first of ``texts`` that reads, None) or (None, the first one written) when none reads.
    Without ``received`` only a written date reads."""
    for text in texts:
        found = _read(text, received)
        if found is not None:
            return found, None
    return None, (texts[0] if texts else None)


_SETS_TIMESCALE = re.compile(r"(?:need|deadline|timescale|within|no later)", re.I)


def in_letter(phrase: str, received: datetime | None) -> tuple[Reading | None, str | None]:
    """A timescale written in a letter rather than under a label ("we need this by Friday"), as
    (reading, unread phrase). A date already past is some other date the letter mentions; "before the
    meeting last week" is history, "needed by the next core group" is a timescale not read."""
    found = _read(phrase, received)
    if found is None:
        return None, (phrase if _SETS_TIMESCALE.match(phrase) or "home" in phrase.lower() else None)
    day = found.date() if isinstance(found, datetime) else found
    return (found if received is None or day >= received.date() else None), None


# ---- a timescale in free text --------------------------------------------------------------------

_TIME_WORDS = (r"(?:mon|tues|wednes|thurs|fri|satur|sun)day|weekend|week end|end of (?:the |this )?week|"
               r"this week|today|tomorrow|end of (?:the )?day|\d{1,2}[/.-]\d{1,2}(?:[/.-]\d{2,4})?|"
               r"\d{1,2}(?:st|nd|rd|th)? (?:of )?(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*|"
               r"\d{1,3} (?:working )?(?:hours?|hrs?|days?|weeks?)|returns? home|court|conference|"
               r"discharge|meeting|hearing")
_PHRASE = re.compile(rf"\b(?:needed by|need(?:s|ed)? (?:this |it )?(?:resolved |sorted |to happen )?by|by|before|"
                     rf"within|no later than|deadline(?: is| of)?:?|timescale(?: is| of)?:?)\b[^.\n;!?]{{0,80}}?"
                     rf"\b(?:{_TIME_WORDS})\b[^.\n;!?,]{{0,30}}", re.I)


def find_timescale(text: str) -> str | None:
    """The first phrase of ``text`` that sets a timescale ("by Friday", "within 48 hours", "before
    the child returns home at the weekend"), or None."""
    m = _PHRASE.search(text or "")
    return m.group(0).strip() if m else None
