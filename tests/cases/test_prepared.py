"""cases/prepared.Prepared: the hot statements, run on the DB-API cursor, write what Connection.execute writes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, col

from escalations.cases.engine import make_engine
from escalations.cases.models import InboundMessage, OutboxMessage, Timer
from escalations.cases.prepared import Prepared

WHEN = datetime(2026, 11, 3, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    SQLModel.metadata.create_all(eng)
    yield eng
    eng.dispose()


def _inbound(key: str, raw: bytes) -> dict[str, object]:
    return {"source": "smtp", "idempotency_key": key, "fingerprint": key, "account": None, "folder": None,
            "message_id": f"<{key}@example.org>", "envelope_sender": None, "envelope_recipients": ["a@example.org"],
            "sender_key": "a@example.org", "raw": raw, "size": len(raw), "received_at": WHEN, "status": "pending",
            "kind": None, "partnership": None, "case_id": None, "attempts": 0, "claimed_at": None,
            "claimed_by": None, "processed_at": None, "error": None}


_COLUMNS = tuple(c.key for c in InboundMessage.__table__.columns if c.key != "id")  # type: ignore[attr-defined]


def test_a_row_is_stored_as_connection_execute_stores_it(engine: Engine) -> None:
    """Datetimes (to UTC), JSON and the compressed raw column go through SQLAlchemy's bind processors:
    the stored values, read back as the database has them, are the same for both ways of writing."""
    prepared = Prepared(insert(InboundMessage).returning(col(InboundMessage.id)), _COLUMNS)
    raw = b"Subject: x\r\n\r\n" + b"body line\r\n" * 200
    with engine.begin() as conn:
        mine = prepared.execute(conn, _inbound("p", raw)).fetchone()[0]
        theirs = conn.execute(insert(InboundMessage).returning(col(InboundMessage.id)), _inbound("c", raw)).scalar_one()
    assert mine != theirs
    columns = "received_at, envelope_recipients, raw, size, status, attempts"
    with engine.connect() as conn:
        stored = {i: tuple(conn.execute(text(f"SELECT {columns} FROM inbound_message WHERE id = :i"), {"i": i}).one())
                  for i in (mine, theirs)}
        assert stored[mine] == stored[theirs]
        back = conn.execute(select(InboundMessage.raw, InboundMessage.received_at, InboundMessage.envelope_recipients)
                            .where(col(InboundMessage.id) == mine)).one()
    assert tuple(back) == (raw, WHEN.astimezone(UTC), ["a@example.org"])


def test_fixed_values_rowcount_and_a_name_used_twice(engine: Engine) -> None:
    """An UPDATE's literal values are sent as compiled; rowcount is the database's; executemany counts all."""
    add = Prepared(insert(InboundMessage).returning(col(InboundMessage.id)), _COLUMNS)
    finish = Prepared(update(InboundMessage).where(col(InboundMessage.id) == bindparam("which"),
                                                   col(InboundMessage.status) == "pending")
                      .values(status="done", error=None, processed_at=bindparam("at"), claimed_at=bindparam("at")))
    with engine.begin() as conn:
        ids = [add.execute(conn, _inbound(k, b"x")).fetchone()[0] for k in ("a", "b", "c")]
        assert finish.execute(conn, {"which": ids[0], "at": WHEN}).rowcount == 1
        assert finish.execute(conn, {"which": ids[0], "at": WHEN}).rowcount == 0  # not pending any more
        assert finish.executemany(conn, [{"which": i, "at": WHEN} for i in ids]) == 2
        assert finish.executemany(conn, []) == 0
    with engine.connect() as conn:
        rows = conn.execute(select(InboundMessage.status, InboundMessage.processed_at, InboundMessage.claimed_at)).all()
    assert {tuple(r) for r in rows} == {("done", WHEN.astimezone(UTC), WHEN.astimezone(UTC))}


def test_a_missing_parameter_is_an_error_not_a_null(engine: Engine) -> None:
    finish = Prepared(update(Timer).where(col(Timer.id) == bindparam("which")).values(status="done"))
    with engine.begin() as conn, pytest.raises(Exception, match="which"):
        finish.execute(conn, {})


def test_driver_errors_are_sqlalchemys_and_hide_parameters(engine: Engine) -> None:
    """A duplicate key is an IntegrityError as Connection.execute raises it (callers retry on it), and
    the message carries no parameter (they can be a child's details)."""
    add = Prepared(insert(InboundMessage).returning(col(InboundMessage.id)), _COLUMNS)
    with engine.begin() as conn:
        add.execute(conn, _inbound("dup", b"Ava Testchild"))
    with engine.connect() as conn, pytest.raises(IntegrityError) as raised:
        add.execute(conn, _inbound("dup", b"Ava Testchild"))
    assert "Ava" not in str(raised.value) and "dup@example.org" not in str(raised.value)


def test_statements_that_cannot_be_prepared_are_refused(engine: Engine) -> None:
    """What would need SQLAlchemy at each execution is refused when first run, never run otherwise."""
    expanding = Prepared(update(OutboxMessage).where(col(OutboxMessage.id).in_(bindparam("ids", expanding=True)))
                         .values(status="sent"))
    # a column default computed in Python: an INSERT without the column would need SQLAlchemy to fill it in
    table = Table("with_default", MetaData(), Column("id", Integer, primary_key=True),
                  Column("made", String(8), default=lambda: "now"))
    defaulted = Prepared(insert(table), ("id",))
    complete = Prepared(insert(table), ("id", "made"))
    with engine.begin() as conn:
        table.create(conn)
        with pytest.raises(TypeError, match="expanding"):
            expanding.execute(conn, {"ids": [1]})
        with pytest.raises(TypeError, match="default computed in Python"):
            defaulted.execute(conn, {"id": 1})
        complete.execute(conn, {"id": 2, "made": "given"})
        assert conn.execute(select(table.c.made)).scalar_one() == "given"


def test_cursor_events_see_each_statement(engine: Engine) -> None:
    """Listeners on the engine (statement counts, tracing) see prepared statements as any other."""
    add = Prepared(insert(InboundMessage), _COLUMNS)
    seen: list[tuple[str, bool]] = []

    def before(_c: object, _cur: object, statement: str, _p: object, _ctx: object, many: bool) -> None:
        seen.append((statement.split()[0], many))

    event.listen(engine, "before_cursor_execute", before)
    try:
        with engine.begin() as conn:
            assert add.executemany(conn, [_inbound("e1", b"x"), _inbound("e2", b"y")]) == 2
    finally:
        event.remove(engine, "before_cursor_execute", before)
    assert ("INSERT", True) in seen
    # run for many rows, an INSERT has no RETURNING (PostgreSQL's compiler adds one for a single row)
    assert "RETURNING" not in add._plan(engine.dialect, True).sql


def test_a_select_returns_values_as_sqlalchemy_does_and_begins_as_execute_would(engine: Engine) -> None:
    """first(): decompressed bytes, UTC datetimes and decoded JSON, as Connection.execute's rows have
    them; on a connection with no transaction yet it begins one (autobegin), like Connection.execute."""
    add = Prepared(insert(InboundMessage).returning(col(InboundMessage.id)), _COLUMNS)
    columns = (InboundMessage.raw, InboundMessage.received_at, InboundMessage.envelope_recipients,
               InboundMessage.status, InboundMessage.case_id)
    query = select(*(col(c) for c in columns)).where(col(InboundMessage.id) == bindparam("wanted"))
    read = Prepared(query)
    raw = b"Subject: y\r\n\r\n" + b"text\r\n" * 100
    with engine.begin() as conn:
        new_id = add.execute(conn, _inbound("s", raw)).fetchone()[0]
    with engine.connect() as conn:
        assert not conn.in_transaction()
        mine = read.first(conn, {"wanted": new_id})
        assert conn.in_transaction()
        theirs = conn.execute(query, {"wanted": new_id}).one()
        assert read.first(conn, {"wanted": new_id + 100}) is None
    assert mine == tuple(theirs) == (raw, WHEN.astimezone(UTC), ["a@example.org"], "pending", None)


def test_all_rows_come_back_as_sqlalchemys_in_order_and_none_is_an_empty_list(engine: Engine) -> None:
    """all(): every row, each value as Connection.execute's rows have it (the claims read datetimes of
    many rows to order them); a statement with RETURNING gives its rows too."""
    add = Prepared(insert(InboundMessage).returning(col(InboundMessage.id)), _COLUMNS)
    query = (select(col(InboundMessage.id), col(InboundMessage.received_at))
             .where(col(InboundMessage.status) == bindparam("status")).order_by(col(InboundMessage.id).desc()))
    read = Prepared(query)
    mark = Prepared(update(InboundMessage).where(col(InboundMessage.status) == "pending")
                    .values(attempts=InboundMessage.attempts + 1).returning(col(InboundMessage.id),
                                                                             col(InboundMessage.attempts)))
    with engine.begin() as conn:
        ids = [add.execute(conn, _inbound(f"a{n}", b"Subject: a\r\n\r\nx")).fetchone()[0] for n in range(3)]
    with engine.begin() as conn:
        mine = read.all(conn, {"status": "pending"})
        theirs = [tuple(r) for r in conn.execute(query, {"status": "pending"}).all()]
        assert read.all(conn, {"status": "done"}) == []
        returned = sorted(mark.all(conn))
    assert mine == theirs == [(i, WHEN.astimezone(UTC)) for i in reversed(ids)]
    assert returned == [(i, 1) for i in ids]
