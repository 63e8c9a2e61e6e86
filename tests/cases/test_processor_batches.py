"""The processor claims fresh mail a batch at a time: a stop between two messages hands the rest of
the batch back at once, untouched, and the next run processes it; nothing is done twice."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest

from escalations.cases.models import Case
from escalations.cases.store import InboundClaim
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


def _from(i: int) -> bytes:
    """A referral of its own practitioner (a sender of its own: no order with the others)."""
    return referral(replace(CH, raiser=f"raiser{i}@school.example.org", raiser_name=f"Raiser {i}"),
                    message_id=f"<lane-{i}@example.org>")


@pytest.mark.parametrize(("stored_during", "goes_at"), [(1, 1), (7, 7)])
def test_mail_stored_mid_batch_goes_before_the_rest_of_the_batch(make_app: AppFactory, database_url: str,
                                                                 stored_during: int, goes_at: int) -> None:
    """A backlog of ten is claimed as one batch, oldest first (at the processor's first claim all mail
    waiting is backlog). A referral stored while the batch's ``stored_during``-th message is under way
    is processed next, not after the batch: it is the next claim's fresh lane."""
    app = make_app(database_url)
    backlog = [app.ingest(_from(i)).id for i in range(10)]
    parse = app.processor.parser
    seen: list[bytes] = []
    new: list[int] = []

    def parse_and_store(raw: bytes) -> ParsedMessage:
        seen.append(raw)
        if len(seen) == stored_during:
            new.append(app.ingest(_from(99)).id)  # the intake stores it and wakes the processor
        return parse(raw)

    app.processor.parser = parse_and_store
    outcomes = app.processor.process_pending()
    batch = backlog
    order = [o.inbound_id for o in outcomes]
    assert order[:goes_at + 1] == [*batch[:goes_at], *new]
    assert sorted(order) == sorted([*backlog, *new]) and [o.status for o in outcomes] == ["done"] * 11
    rows = [app.store.get_inbound(i) for i in [*backlog, *new]]
    # handed back when the batch was cut short, claimed again: each processed once, one attempt each
    assert [(r.status, r.attempts) for r in rows if r is not None] == [("done", 1)] * 11
    assert not app.wake_processor.is_set()  # cleared before the claim that found it, nothing left unseen


def test_a_wake_up_is_never_lost(make_app: AppFactory, database_url: str) -> None:
    """Mail stored while the last message is under way is claimed in the same run; mail stored just after
    the run's last (empty) claim leaves the event set, so the processor's loop runs again at once rather
    than at the next poll (the event is cleared before each claim, never after one)."""
    app = make_app(database_url)
    first = app.ingest(_from(0)).id
    parse = app.processor.parser
    during: list[int] = []

    def parse_and_store(raw: bytes) -> ParsedMessage:
        if not during:
            during.append(app.ingest(_from(1)).id)
        return parse(raw)

    after: list[int] = []
    claim = app.store.claim_inbound

    def claim_then_store(limit: int = 16, **kwargs: Any) -> InboundClaim:
        claimed = claim(limit, **kwargs)
        if not claimed.ids and not after:
            after.append(app.ingest(_from(2)).id)  # arrives as the last claim comes back empty
        return claimed

    app.processor.parser = parse_and_store
    app.store.claim_inbound = claim_then_store  # type: ignore[method-assign]
    assert [o.inbound_id for o in app.processor.process_pending()] == [first, *during]
    assert app.wake_processor.is_set()  # the loop will look again
    assert [o.inbound_id for o in app.processor.process_pending()] == after


def test_without_new_mail_a_batch_runs_to_its_end(make_app: AppFactory, database_url: str) -> None:
    app = make_app(database_url)
    ids = [app.ingest(_from(i)).id for i in range(4)]
    app.wake_processor.set()  # set before the run (by the stores): cleared before the first claim
    claims: list[list[int]] = []
    claim = app.store.claim_inbound

    def recorded(limit: int = 16, **kwargs: Any) -> InboundClaim:
        claimed = claim(limit, **kwargs)
        claims.append(claimed.ids)
        return claimed

    app.store.claim_inbound = recorded  # type: ignore[method-assign]
    batch = ids  # the first claim: all backlog, oldest first
    assert [o.inbound_id for o in app.processor.process_pending()] == batch
    assert claims == [batch, []]  # one batch, not cut short


def test_a_new_cases_redactor_is_compiled_before_its_write_transaction(make_app: AppFactory, sqlite_url: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Its pattern is the largest piece of CPU in opening a case; compiled inside the transaction it kept every
    other writer of the process (the outbox, committing each mail it sent) waiting. Compiled once: the opening
    step's mail finds it kept."""
    from escalations.cases.engine import _write_lock_for
    from escalations.routing import redact

    app = make_app(sqlite_url)
    app.ingest(referral(CH, message_id="<redactor-first@example.org>"))
    lock = _write_lock_for(str(app.store.engine.url.render_as_string(hide_password=False)))
    compiled_under_lock: list[bool] = []
    for_case = redact.Redactor.for_case

    def recording(*args: Any, **kwargs: Any) -> redact.Redactor:
        compiled_under_lock.append(lock.locked())
        return for_case(*args, **kwargs)

    monkeypatch.setattr(redact.Redactor, "for_case", recording)
    redact._cached_redactor.cache_clear()
    [outcome] = app.processor.process_pending()
    assert outcome.status == "done" and outcome.case_reference
    assert compiled_under_lock == [False]
    assert len(app.store.list_outbox()) >= 2  # the acknowledgement and the stage's mail, both redacted by it


def test_a_lost_database_connection_hands_the_message_back_counted_rather_than_quarantining_it(
        make_app: AppFactory, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server restart or failover under the processor is not the message's fault: nothing of it was
    committed, it is pending again at once (not after the lease), its attempt counted, and the next run
    processes it; the batch's others are handed back untouched."""
    import sqlalchemy as sa

    from escalations.cases.processor import DatabaseLost

    app = make_app(database_url)
    ids = [app.ingest(referral(CH, message_id=f"<lost-{i}@example.org>")).id for i in range(3)]
    dispatch = app.processor._dispatch
    calls = []

    def lost_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise sa.exc.OperationalError("INSERT", {}, Exception("server closed the connection"),
                                          connection_invalidated=True)
        return dispatch(*args, **kwargs)

    monkeypatch.setattr(app.processor, "_dispatch", lost_once)
    with pytest.raises(DatabaseLost):
        app.processor.process_pending()
    rows = [app.store.get_inbound(i) for i in ids]
    assert [(r.status, r.claimed_by, r.attempts) for r in rows if r is not None] == \
        [("pending", None, 1), ("pending", None, 0), ("pending", None, 0)]
    assert app.store.list_cases() == []
    done = app.processor.process_pending()
    assert [o.status for o in done] == ["done"] * 3 and len(app.store.list_cases()) == 3
    # Any other database error is the message's: quarantined as before, with a fixed code.
    other = app.ingest(referral(CH, message_id="<lost-other@example.org>")).id

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise sa.exc.IntegrityError("INSERT", {}, Exception("constraint"))

    monkeypatch.setattr(app.processor, "_dispatch", broken)
    [outcome] = app.processor.process_pending()
    assert outcome.inbound_id == other and outcome.status == "quarantined" and outcome.detail == "processing_error"
