"""The processor claims fresh mail a batch at a time: a stop between two messages hands the rest of
the batch back at once, untouched, and the next run processes it; nothing is done twice."""

from __future__ import annotations

import threading

import pytest

from escalations.parsers.message import ParsedMessage
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
