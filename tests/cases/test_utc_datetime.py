"""UTCDateTime on SQLite: its own bind processor writes exactly the text SQLAlchemy's DATETIME wrote."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite

from escalations.cases.models import UTCDateTime

SQLITE = sqlite.dialect()
OFFSETS = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
AWARE = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)
                     ).flatmap(lambda d: OFFSETS.map(lambda tz: d.astimezone(tz)))


def _sqlalchemys(value: datetime) -> str:
    """What the column stored before: process_bind_param, then SQLite DATETIME's own processor."""
    t = UTCDateTime()
    inner = sqlite.DATETIME(timezone=True).bind_processor(SQLITE)
    assert inner is not None
    return str(inner(t.process_bind_param(value, SQLITE)))


@settings(max_examples=500, deadline=None)
@given(AWARE)
def test_the_same_text_as_sqlalchemys_datetime(value: datetime) -> None:
    process = UTCDateTime().bind_processor(SQLITE)
    assert process is not None
    assert process(value) == _sqlalchemys(value)


def test_none_and_naive_values() -> None:
    process = UTCDateTime().bind_processor(SQLITE)
    assert process is not None
    assert process(None) is None
    with pytest.raises(ValueError, match="naive"):
        process(datetime(2026, 12, 4, 12, 0))
    assert process(datetime(2026, 12, 4, 12, 0, tzinfo=UTC)) == "2026-12-04 12:00:00.000000"  # microseconds kept


def test_other_backends_keep_sqlalchemys_processing() -> None:
    process = UTCDateTime().bind_processor(postgresql.dialect())
    assert process is not None
    bound = process(datetime(2026, 12, 4, 13, 0, tzinfo=timezone(timedelta(hours=1))))
    assert bound == datetime(2026, 12, 4, 12, 0, tzinfo=UTC) and bound.tzinfo is UTC  # psycopg binds datetimes


def test_round_trip_and_order_in_sqlite() -> None:
    engine = sa.create_engine("sqlite://")
    table = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("at", UTCDateTime()))
    table.metadata.create_all(engine)
    london = timezone(timedelta(hours=1))
    values = [datetime(2026, 6, 1, 9, 0, 0, 1, tzinfo=london), datetime(2026, 6, 1, 8, 0, tzinfo=UTC),
              datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime(2026, 6, 1, 7, 59, 59, tzinfo=UTC)]
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"at": v} for v in values])
        read = conn.execute(sa.select(table.c.at).order_by(table.c.at)).scalars().all()
        later = conn.execute(sa.select(sa.func.count()).select_from(table)
                             .where(table.c.at > datetime(2026, 6, 1, 8, 0, tzinfo=UTC))).scalar_one()
    assert read == sorted(values) and all(r.tzinfo is UTC for r in read)
    assert later == 1  # 09:00:00.000001 +01:00 is 08:00:00.000001 UTC
