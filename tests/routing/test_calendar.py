"""Working-day arithmetic (ARCHITECTURE.md, Deadlines): examples across bank holidays and clock changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from escalations.routing.calendar import WorkingCalendar, format_local

LONDON = ZoneInfo("Europe/London")
CAL = WorkingCalendar()


def L(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=LONDON)


def local(t: datetime) -> datetime:
    return t.astimezone(LONDON)


@pytest.mark.parametrize(
    ("d", "working"),
    [
        (date(2026, 12, 24), True),
        (date(2026, 12, 25), False),   # Christmas Day
        (date(2026, 12, 28), False),   # Boxing Day (substitute, 26th is a Saturday)
        (date(2027, 1, 1), False),     # New Year's Day
        (date(2026, 4, 3), False),     # Good Friday
        (date(2026, 4, 6), False),     # Easter Monday
        (date(2026, 5, 25), False),    # Spring bank holiday
        (date(2026, 8, 31), False),    # Summer bank holiday
        (date(2027, 5, 31), False),
        (date(2027, 8, 30), False),
        (date(2027, 12, 27), False),   # Christmas (substitute)
        (date(2027, 12, 28), False),   # Boxing Day (substitute)
        (date(2026, 4, 4), False),     # Saturday
        (date(2026, 4, 7), True),
    ],
)
def test_working_days_england_and_wales(d: date, working: bool) -> None:
    assert CAL.is_working_day(d) is working


def test_scotland_has_its_own_holidays() -> None:
    scot = WorkingCalendar(division="scotland")
    assert not scot.is_working_day(date(2026, 1, 2))   # 2 January
    assert CAL.is_working_day(date(2026, 1, 2))
    assert scot.is_working_day(date(2026, 4, 6))       # no Easter Monday in Scotland
    assert not WorkingCalendar(division="northern-ireland").is_working_day(date(2026, 3, 17))  # St Patrick's


def test_counting_date_rules() -> None:
    assert CAL.counting_date(L(2026, 4, 2, 10)) == date(2026, 4, 2)            # working day, before 17:00
    assert CAL.counting_date(L(2026, 4, 2, 17, 0)) == date(2026, 4, 7)         # at day end: next working day
    assert CAL.counting_date(L(2026, 12, 23, 17, 30)) == date(2026, 12, 24)
    assert CAL.counting_date(L(2026, 12, 25, 9)) == date(2026, 12, 29)         # holiday


def test_city_and_hackney_christmas_example() -> None:
    """Wed 23 Dec 2026 17:30 is after day end → D = Thu 24 Dec; working days after it: Tue 29, Wed 30,
    Thu 31 Dec, Mon 4, Tue 5 Jan (25, 28 Dec and 1 Jan are bank holidays) → Tue 5 Jan 2027 17:00 GMT."""
    due = CAL.add_working_days(L(2026, 12, 23, 17, 30), 5)
    assert due == datetime(2027, 1, 5, 17, 0, tzinfo=UTC)
    assert format_local(due, LONDON) == "Tuesday 5 January 2027, 17:00"


def test_tri_borough_easter_example() -> None:
    """Thu 2 Apr 2026 10:00 → D = Thu 2 Apr; after it: Tue 7, Wed 8, Thu 9, Fri 10, Mon 13 → 17:00 BST = 16:00Z."""
    due = CAL.add_working_days(L(2026, 4, 2, 10), 5)
    assert due == datetime(2026, 4, 13, 16, 0, tzinfo=UTC)
    assert local(due) == L(2026, 4, 13, 17)


@pytest.mark.parametrize(
    ("start", "n", "expected"),
    [
        (L(2026, 5, 22, 9), 1, L(2026, 5, 26, 17)),      # Fri before Spring bank holiday → Tue
        (L(2026, 8, 28, 16, 59), 2, L(2026, 9, 2, 17)),   # Summer bank holiday Mon 31 Aug skipped
        (L(2027, 3, 25, 12), 1, L(2027, 3, 30, 17)),      # Easter 2027: Good Fri 26, Easter Mon 29
        (L(2027, 12, 24, 9), 1, L(2027, 12, 29, 17)),     # 27 and 28 Dec 2027 are substitute holidays
        (L(2026, 3, 27, 9), 1, L(2026, 3, 30, 17)),       # across the spring clock change (GMT → BST)
        (L(2026, 10, 23, 9), 1, L(2026, 10, 26, 17)),     # across the autumn clock change (BST → GMT)
        (L(2026, 4, 4, 9), 0, L(2026, 4, 7, 17)),         # 0 working days from a weekend: day end of D
    ],
)
def test_add_working_days_examples(start: datetime, n: int, expected: datetime) -> None:
    assert CAL.add_working_days(start, n) == expected.astimezone(UTC)


def test_day_end_follows_the_clock() -> None:
    assert CAL.day_end_at(date(2026, 3, 27)) == datetime(2026, 3, 27, 17, tzinfo=UTC)   # GMT
    assert CAL.day_end_at(date(2026, 3, 30)) == datetime(2026, 3, 30, 16, tzinfo=UTC)   # BST
    assert WorkingCalendar(day_end=time(16, 30)).day_end_at(date(2026, 1, 5)) == datetime(2026, 1, 5, 16, 30,
                                                                                          tzinfo=UTC)


def test_calendar_days_keep_local_clock_time_across_dst() -> None:
    # Sat 28 Mar 2026 10:00 GMT + 1 day = Sun 29 Mar 10:00 BST: only 23 elapsed hours.
    t = L(2026, 3, 28, 10)
    assert local(CAL.add_calendar_days(t, 1)) == L(2026, 3, 29, 10)
    assert CAL.add_calendar_days(t, 1) - t.astimezone(UTC) == timedelta(hours=23)
    # Autumn: 25 hours.
    t = L(2026, 10, 24, 10)
    assert CAL.add_calendar_days(t, 1) - t.astimezone(UTC) == timedelta(hours=25)


def test_hours_are_elapsed_time_across_dst() -> None:
    t = L(2026, 3, 28, 12)
    assert CAL.add_hours(t, 24) == t.astimezone(UTC) + timedelta(hours=24)
    assert local(CAL.add_hours(t, 24)) == L(2026, 3, 29, 13)


def test_same_working_day() -> None:
    assert CAL.deadline(L(2026, 4, 2, 10), None, "same_working_day") == L(2026, 4, 2, 17).astimezone(UTC)
    assert CAL.deadline(L(2026, 4, 2, 18), None, "same_working_day") == L(2026, 4, 7, 17).astimezone(UTC)


def test_naive_input_is_local_and_needed_by_dates_are_day_end() -> None:
    assert CAL.add_working_days(datetime(2026, 4, 2, 10), 5) == CAL.add_working_days(L(2026, 4, 2, 10), 5)
    assert CAL.needed_by_at(date(2026, 7, 1)) == L(2026, 7, 1, 17).astimezone(UTC)
    assert CAL.needed_by_at(datetime(2026, 7, 1, 9)) == L(2026, 7, 1, 9).astimezone(UTC)


def test_bad_amounts() -> None:
    with pytest.raises(ValueError):
        CAL.deadline(L(2026, 4, 2), None, "working_days")
    with pytest.raises(ValueError):
        CAL.add_working_days(L(2026, 4, 2), -1)


# -- properties ------------------------------------------------------------------------------

instants = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC))
counts = st.integers(min_value=0, max_value=30)


@settings(max_examples=300, deadline=None)
@given(instants, counts)
def test_result_is_always_a_working_day_end(t: datetime, n: int) -> None:
    due = CAL.add_working_days(t, n)
    lt = local(due)
    assert CAL.is_working_day(lt.date())
    assert lt.time() == CAL.day_end
    assert due.tzinfo is not None and due.utcoffset() == timedelta(0)
    if n >= 1:
        assert due > t


@settings(max_examples=300, deadline=None)
@given(instants, instants, counts)
def test_monotone_in_start_time(a: datetime, b: datetime, n: int) -> None:
    a, b = min(a, b), max(a, b)
    assert CAL.add_working_days(a, n) <= CAL.add_working_days(b, n)
    assert CAL.add_calendar_days(a, n) <= CAL.add_calendar_days(b, n)
    assert CAL.same_working_day(a) <= CAL.same_working_day(b)


@settings(max_examples=300, deadline=None)
@given(instants, counts)
def test_strictly_monotone_in_count(t: datetime, n: int) -> None:
    assert CAL.add_working_days(t, n) < CAL.add_working_days(t, n + 1)


@settings(max_examples=200, deadline=None)
@given(instants, counts)
def test_exactly_n_working_days_between(t: datetime, n: int) -> None:
    """Between the counting date (exclusive) and the due date (inclusive) lie exactly N working days."""
    d = CAL.counting_date(t)
    end = local(CAL.add_working_days(t, n)).date()
    days = [d + timedelta(days=i) for i in range(1, (end - d).days + 1)]
    assert sum(CAL.is_working_day(x) for x in days) == n
