"""The queries a tick and a claim run use indexes (SQLite's plan names no full scan of the table), so
their cost follows the rows due, not the number of open cases."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event

from escalations.cases.models import Case, Timer
from escalations.cases.store import Store, make_engine
from escalations.clock import FakeClock


def statements_of(store: Store, action: Any) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    return seen


def plans(store: Store, statements: list[tuple[str, Any]], table: str) -> list[str]:
    """How SQLite reads ``table`` in each statement ("SEARCH timer USING INDEX ...", "SCAN timer")."""
    steps = []
    with store.engine.connect() as conn:
        for statement, parameters in statements:
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            steps += [str(row[-1]) for row in plan if str(row[-1]).split(" ")[1:2] == [table]]
    return steps


def test_the_due_timers_query_uses_the_status_and_due_index(tmp_path: Path, clock: FakeClock) -> None:
    store = Store(make_engine(f"sqlite:///{tmp_path / 'p.sqlite3'}"), clock)
    store.create_schema()
    with store.session() as s:
        for i in range(200):
            case = Case(reference=f"CH-2026-{i:04d}", partnership="city-and-hackney", status="open",
                        opened_at=clock.now(), updated_at=clock.now())
            s.add(case)
            s.flush()
            s.add(Timer(key=f"{case.id}:0:escalate", case_id=case.id or 0, kind="escalate",
                        due_at=clock.now() + timedelta(days=5 + i), created_at=clock.now()))
            # the history: timers long done, which a query by due time alone would read again and again
            for k in range(5):
                s.add(Timer(key=f"{case.id}:{k}:remind", case_id=case.id or 0, kind="remind_due", status="done",
                            due_at=clock.now() - timedelta(days=k + 1), created_at=clock.now()))
        s.commit()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    queries = statements_of(store, lambda: store.claim_due_timers(clock.now()))
    assert any("FROM timer" in q for q, _ in queries)
    steps = plans(store, queries, "timer")
    assert steps and all("ix_timer_status_due_at" in step for step in steps), steps


def test_the_inbound_claim_and_its_fresh_lane_use_indexes(tmp_path: Path, clock: FakeClock) -> None:
    """A long history of done mail and a backlog: the claim (its fresh lane's "older unfinished mail of
    this sender?" included) searches indexes, never the whole table."""
    store = Store(make_engine(f"sqlite:///{tmp_path / 'p.sqlite3'}"), clock)
    store.create_schema()
    for i in range(300):
        store.store_inbound(f"From: p{i % 40}@example.org\r\nMessage-ID: <{i}@example.org>\r\n\r\nbody {i}".encode(),
                            source="smtp")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE inbound_message SET status = 'done' WHERE id <= 200")
        conn.exec_driver_sql("ANALYZE")
    assert len(store.claim_inbound_batch(16)) == 16  # this worker's first claim: the backlog's oldest
    for i in range(300, 310):  # mail new to it, for the next claim's fresh lane
        store.store_inbound(f"From: p{i % 40}@example.org\r\nMessage-ID: <{i}@example.org>\r\n\r\nbody".encode(),
                            source="smtp")
    queries = statements_of(store, lambda: store.claim_inbound_batch(16))
    assert any("EXISTS" in q for q, _ in queries)  # the lane's query ran
    steps = plans(store, queries, "inbound_message")
    assert steps and not [step for step in steps if step.startswith("SCAN")], steps
    older = plans(store, queries, "inbound_message_1")  # the lane's correlated subquery
    assert older and all("ix_inbound_message_sender_key_status_id" in step for step in older), older
