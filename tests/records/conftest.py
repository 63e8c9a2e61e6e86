"""Cases for the records tests, made the way the service makes them: a referral mail stored and
processed by the App (real store, SQLite or PostgreSQL), replies performed by the dispatcher."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest

from escalations.app import App
from escalations.cases.models import Case
from escalations.routing.workflow.events import Replied
from tests.conftest import AppFactory
from tests.workflow.conftest import CHILD, referral
from tests.workflow.profiles import PROFILES, Profile

__all__ = ["CHILD", "PROFILES", "close", "open_case", "say"]

BY_ID = {p.id: p for p in PROFILES}


def open_case(app: App, p: Profile, **kwargs: Any) -> str:
    stored = app.ingest(referral(p, **kwargs))
    app.process_pending()
    row = app.store.get_inbound(stored.id)
    assert row is not None and row.case_id is not None, row.error if row else None
    with app.store.reading() as s:
        case = s.get(Case, row.case_id)
        assert case is not None
        return case.reference


def party(app: App, reference: str, side: str) -> Mapping[str, Any]:
    case = app.store.case_by_reference(reference)
    assert case is not None
    on_side = [x for x in case.parties if x.get("side") == side and x.get("asked", True)]
    return next((x for x in on_side if x.get("party") != "raiser"), on_side[0])


def say(app: App, reference: str, sender: str, command: str, text: str = "", *, side: str = "raising",
        authority: str = "party", after: timedelta = timedelta(hours=1)) -> None:
    """A verified reply from ``sender`` (the dispatcher performs it, as for a mail with a valid token)."""
    app.clock.advance(after)  # type: ignore[attr-defined]
    with app.store.session() as s:
        case = app.store.case_by_reference(reference)
        assert case is not None
        row = s.get(Case, case.id)
        assert row is not None
        app.workflow.handle(s, row, Replied(sender=sender, command=command, argument=text, message_id=None,
                                            authority=authority, side=side), app.clock.now())
        s.commit()


def close(app: App, reference: str, outcome: str) -> None:
    """RESOLVED by the raising side's party, ACCEPT by the receiving side's: the case closes."""
    raising, receiving = party(app, reference, "raising"), party(app, reference, "receiving")
    say(app, reference, raising["email"], "RESOLVED", outcome, side="raising")
    say(app, reference, receiving["email"], "ACCEPT", side="receiving")


@pytest.fixture
def app(make_app: AppFactory) -> App:
    return make_app()


@pytest.fixture
def any_app(make_app: AppFactory, database_url: str) -> App:
    """The App on SQLite and on PostgreSQL (skipped, with the reason, where there is none)."""
    return make_app(database_url)
