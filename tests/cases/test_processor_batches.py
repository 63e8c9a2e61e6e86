"""The processor claims fresh mail a batch at a time: a stop between two messages hands the rest of
the batch back at once, untouched, and the next run processes it; nothing is done twice."""

from __future__ import annotations

import threading

import pytest

from escalations.cases.models import Case
from escalations.parsers.message import ParsedMessage
from escalations.routing.workflow.events import StaffAction
from escalations.routing.workflow.staff import Action
from tests.conftest import AppFactory
from tests.workflow.conftest import referral
from tests.workflow.profiles import CH

pytestmark = pytest.mark.servers


def test_a_stop_mid_batch_hands_back_what_was_not_begun(make_app: AppFactory, database_url: str) -> None:
    app = make_app(database_url)
    ids = [app.ingest(referral(CH, message_id=f"<batch-{i}@example.org>")).id for i in range(4)]
    stop = threading.Event()
    parse = app.processor.parser

    def parse_then_stop(raw: bytes) -> ParsedMessage:
        stop.set()  # asked to stop while the first message is under way
        return parse(raw)

    app.processor.parser = parse_then_stop
    first = app.processor.process_pending(stop=stop)
    assert [o.status for o in first] == ["done"]
    rows = [app.store.get_inbound(i) for i in ids]
    assert [(r.status, r.claimed_by, r.attempts) for r in rows if r is not None] == \
        [("done", app.store.owner, 1)] + [("pending", None, 0)] * 3  # claimed in the batch, handed back
    app.processor.parser = parse
    rest = app.processor.process_pending()
    assert [o.status for o in rest] == ["done"] * 3
    assert len(app.store.list_cases()) == 4
    assert {r.attempts for r in (app.store.get_inbound(i) for i in ids) if r is not None} == {1}


def test_a_new_case_is_written_in_one_insert_and_later_steps_update_it(make_app: AppFactory,
                                                                       database_url: str) -> None:
    """The Opened step's row goes in as the step leaves it (Workflow.apply, _insert_case): one INSERT
    and no UPDATE of it in the opening transaction; the case is then an ordinary row for later steps."""
    from sqlalchemy import event

    app = make_app(database_url)
    app.ingest(referral(CH, message_id="<one-insert@example.org>"))
    written: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        words = statement.split()
        if words[:3] == ["INSERT", "INTO", "\"case\""] or words[:3] == ["INSERT", "INTO", "case"] \
                or words[:2] in (["UPDATE", "\"case\""], ["UPDATE", "case"]):
            written.append(words[0])

    event.listen(app.store.engine, "before_cursor_execute", record)
    try:
        [outcome] = app.processor.process_pending()
    finally:
        event.remove(app.store.engine, "before_cursor_execute", record)
    assert outcome.status == "done" and outcome.case_reference
    assert written == ["INSERT"]
    [case] = app.store.list_cases()
    assert case.reference == outcome.case_reference and case.status != "" and case.stage_index is not None
    # what the first step set is in the row (not only on the object the processor held)
    assert case.parties and case.due_at is not None
    with app.store.session() as s:
        row = s.get(Case, case.id)
        assert row is not None
        app.processor.workflow.handle(s, row, StaffAction("coordinator@example.org", "admin", Action.WITHDRAW,
                                                          "raised in error"), app.store.clock.now())
        s.commit()
    [after] = app.store.list_cases()
    assert after.status == "withdrawn"
