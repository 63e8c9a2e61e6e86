"""The hostile-mail corpus through the whole service: every fixture becomes a case, is attached to
one, or is quarantined with a reason — none crashes the processor, none is answered when it must
not be, and no child's name reaches a log line, a quarantine reason or a subject."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest
from sqlmodel import select

from escalations.app import App
from escalations.cases.models import CaseEvent, InboundMessage
from escalations.parsers.message import parse_message
from tests.conftest import AppFactory
from tests.parsers.conftest import MAIL, manifest

FIXTURES = manifest()


def _child_names() -> set[str]:
    names: set[str] = set()
    for f in FIXTURES:
        for name in (f.get("expect") or {}).get("child_names") or []:
            names.add(name)
            names.update(part for part in name.split() if part != "Testchild")
    return names


def run_corpus(app: App) -> tuple[App, dict[str, Any]]:
    outcomes: dict[str, Any] = {}
    for fixture in FIXTURES:  # in MANIFEST order: the plain referral (CH-2026-0001) comes first
        raw = (MAIL / fixture["file"]).read_bytes()
        stored = app.ingest(raw)
        (outcome,) = [o for o in app.process_pending() if o.inbound_id == stored.id]
        outcomes[fixture["file"]] = outcome
    app.send_outbox()
    return app, outcomes


def test_every_fixture_has_a_definite_outcome(make_app: AppFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app, outcomes = run_corpus(make_app())
    by_status = Counter(o.status for o in outcomes.values())
    assert set(by_status) <= {"done", "quarantined"}, by_status
    with app.store.session() as s:
        rows = {m.id: m for m in s.exec(select(InboundMessage)).all()}
        events = s.exec(select(CaseEvent)).all()
    assert len(rows) == len(FIXTURES)
    assert all(r.status in ("done", "quarantined") for r in rows.values())
    cases = {c.reference: c for c in app.store.list_cases()}
    outbox = app.store.list_outbox()
    automated_senders: set[str] = set()

    for fixture in FIXTURES:
        name, kind = fixture["file"], fixture["kind"]
        o = outcomes[name]
        row = rows[o.inbound_id]
        if o.status == "quarantined":
            assert row.status == "quarantined" and row.error, name
        if kind == "referral":
            assert o.status == "done" and o.case_reference in cases, (name, o)
            case = cases[o.case_reference]
            assert case.partnership == fixture["partnership"], name
            expected_missing = fixture["missing"]
            if expected_missing and not (fixture.get("expect") or {}).get("immediate_risk"):
                assert case.status == "awaiting_information", name
            assert set(case.missing) == set(expected_missing), name
            # the sender is answered: an acknowledgement, or a request for the missing fields
            first = [m for m in outbox if m.case_id == case.id and m.template.startswith("referral_")]
            # a forwarded referral: the forwarder and (from an agency's domain) the practitioner
            assert len(first) == fixture.get("acknowledgements", 1), name
            assert first[0].template.startswith("referral_incomplete" if expected_missing
                                                else "referral_acknowledged"), name
        elif kind == "reply":
            # replies name CH-2026-0001, which the corpus's first referral opened: attached to it
            assert o.case_reference == fixture["reference"], (name, o)
            assert any(e.inbound_id == o.inbound_id for e in events), name
        elif kind in ("auto_reply", "bounce", "list"):
            automated_senders.add((parse_message(row.raw).from_address or "").lower())
            assert o.status in ("done", "quarantined"), name
        elif kind == "not_email":
            assert o.status == "quarantined", name
    # never an answer to an automated message (RFC 3834 5.1); our only mail goes to people
    for m in outbox:
        assert not ({a.lower() for a in m.recipients} & automated_senders - {""}), m.template
        assert m.subject.startswith("["), m.subject

    # no child's name anywhere an operator or a mail server would see it
    names = _child_names()
    assert len(names) > 5
    assert "inbound.quarantined" in caplog.text  # the service's log lines are really captured here
    quarantine_reasons = " ".join(r.error or "" for r in rows.values())
    subjects = " ".join(m.subject for m in outbox)
    for child in names:
        assert child not in caplog.text, child
        assert child not in quarantine_reasons, child
        assert child not in subjects, child


def test_replaying_the_corpus_changes_nothing(make_app: AppFactory) -> None:
    app, _ = run_corpus(make_app())
    cases_before = len(app.store.list_cases())
    outbox_before = len(app.store.list_outbox())
    for fixture in FIXTURES:
        stored = app.ingest((MAIL / fixture["file"]).read_bytes())
        assert not stored.created, fixture["file"]
    assert app.process_pending() == []
    assert len(app.store.list_cases()) == cases_before
    assert len(app.store.list_outbox()) == outbox_before


def test_huge_attachment_becomes_a_case(make_app: AppFactory) -> None:
    """A referral with a multi-megabyte attachment (a scanned form) is stored and opened, not choked on."""
    from tests.fixtures.make_fixtures import huge_attachment_eml

    raw = huge_attachment_eml()
    assert len(raw) > 5_000_000
    app = make_app()
    stored = app.ingest(raw)
    (outcome,) = app.process_pending()
    assert outcome.inbound_id == stored.id
    assert outcome.status == "done" and outcome.kind == "referral", outcome
    assert app.send_outbox() >= 1


def test_a_crash_is_quarantined_without_the_data_in_its_message(make_app: AppFactory, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """An exception whose text quotes the message (here the child's name) must not carry it into
    the quarantine record or the log; the loop goes on and replay works once the bug is gone."""
    import escalations.cases.processor as processor
    from tests.intake.test_service_smtp import CHILD, referral

    real = processor.redactor_for

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError(f"cannot read date of birth for {CHILD}")

    monkeypatch.setattr(processor, "redactor_for", broken)
    caplog.set_level(logging.DEBUG)
    app = make_app()
    stored = app.ingest(referral())
    (outcome,) = app.process_pending()
    assert outcome.status == "quarantined" and outcome.detail == "processing_error"
    row = app.store.get_inbound(stored.id)
    assert row is not None and row.error and "ValueError" in row.error and "processor.py" in row.error
    assert CHILD not in row.error and CHILD not in caplog.text
    monkeypatch.setattr(processor, "redactor_for", real)
    assert app.store.release_for_replay(stored.id)
    (again,) = app.process_pending()
    assert again.status == "done" and again.case_reference
