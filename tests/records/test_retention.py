"""Retention purge: what is past its time goes, with its raw mail; a case under legal hold stays
whole; open cases and mail still to send stay; the audit line holds references and counts only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import col, select
from typer.testing import CliRunner

from escalations.app import App
from escalations.cases.models import Case, CaseEvent, InboundMessage, OutboxMessage
from escalations.cli import app as cli_app
from escalations.records.models import PurgeRun
from escalations.records.retention import add_months, purge
from tests.conftest import CONFIG_DIR
from tests.records.conftest import BY_ID, CHILD, close, open_case


def counts(app: App, reference: str) -> dict[str, int]:
    with app.store.reading() as s:
        case = s.exec(select(Case).where(Case.reference == reference)).first()
        if case is None:
            return {}
        return {"inbound": len(s.exec(select(InboundMessage.id).where(InboundMessage.case_id == case.id)).all()),
                "outbox": len(s.exec(select(OutboxMessage.id).where(OutboxMessage.case_id == case.id)).all()),
                "events": len(s.exec(select(CaseEvent.id).where(CaseEvent.case_id == case.id)).all())}


def cli(app: App, *args: str) -> tuple[int, str]:
    s = app.settings
    r = CliRunner().invoke(cli_app, ["--config", str(CONFIG_DIR), "--data-dir", str(s.data_dir),
                                     "--database-url", s.effective_database_url, *args])
    return r.exit_code, r.stdout + r.stderr


def three_closed_cases(app: App) -> list[str]:
    refs = []
    for pid in ("city-and-hackney", "havering", "wiltshire"):
        ref = open_case(app, BY_ID[pid])
        close(app, ref, "Agreed.")
        refs.append(ref)
    app.send_outbox()
    return refs


def inbound_of(app: App, reference: str) -> list[int]:
    case = app.store.case_by_reference(reference)
    assert case is not None
    return [i.id or 0 for i in app.store.list_inbound() if i.case_id == case.id]


def test_add_months() -> None:
    assert add_months(datetime(2026, 1, 31, 9, tzinfo=UTC), 1) == datetime(2026, 2, 28, 9, tzinfo=UTC)
    assert add_months(datetime(2026, 11, 3, tzinfo=UTC), 72) == datetime(2032, 11, 3, tzinfo=UTC)


def test_nothing_goes_before_its_time(app: App) -> None:
    refs = three_closed_cases(app)
    before = {r: counts(app, r) for r in refs}
    result = purge(app.store, app.config, app.clock.now() + timedelta(days=300))
    assert sum(result.counts.values()) == 0
    assert {r: counts(app, r) for r in refs} == before


def test_raw_mail_goes_after_twelve_months_the_record_stays(app: App) -> None:
    refs = three_closed_cases(app)
    result = purge(app.store, app.config, add_months(app.clock.now(), 13))
    assert sorted(result.references["raw_mail"]) == sorted(refs)
    assert sorted(result.references["outgoing_mail"]) == sorted(refs)
    assert result.references["case_record"] == []
    for r in refs:
        c = counts(app, r)
        assert c["inbound"] == 0 and c["outbox"] == 0 and c["events"] > 0  # the history stays
    case = app.store.case_by_reference(refs[0])
    assert case is not None and case.origin_inbound_id is None


def test_purge_keeps_the_held_case_and_removes_the_others_with_their_raw_mail(any_app: App) -> None:
    app = any_app
    held, *others = three_closed_cases(app)
    still_open = open_case(app, BY_ID["sutton"])
    code, out = cli(app, "retention", "hold", held, "--reason", "subject access request")
    assert code == 0 and "legal hold set" in out
    before_held = counts(app, held)
    raw_ids = {r: inbound_of(app, r) for r in others}
    assert all(raw_ids.values())
    app.clock.set(add_months(app.clock.now(), 73))  # type: ignore[attr-defined]
    later = app.clock.now().isoformat()
    code, out = cli(app, "retention", "purge", "--dry-run", "--now", later)
    assert code == 0 and "would delete cases 2" in out and "1 held case(s) kept" in out, out
    assert all(app.store.case_by_reference(r) is not None for r in others)  # a dry run deletes nothing
    code, out = cli(app, "retention", "purge", "--now", later)
    assert code == 0 and "deleted cases 2" in out, out
    assert CHILD not in out
    remaining = {i.id for i in app.store.list_inbound()}
    for r in others:
        assert app.store.case_by_reference(r) is None
        assert not remaining & set(raw_ids[r])
    assert counts(app, held) == before_held  # held: all of it kept
    assert counts(app, still_open)["inbound"] == 1  # an open case is never purged
    with app.store.reading() as s:
        runs = list(s.exec(select(PurgeRun).order_by(col(PurgeRun.id))).all())
    assert len(runs) == 1 and not runs[0].dry_run
    assert sorted(runs[0].references["case_record"]) == sorted(others)
    assert runs[0].counts["cases"] == 2 and runs[0].counts["raw_mail"] == sum(len(v) for v in raw_ids.values())
    text = str(runs[0].references) + str(runs[0].counts)
    assert "Testchild" not in text  # references and counts only
    # the hold lifted, the held case goes at the next run
    code, out = cli(app, "retention", "release", held)
    assert code == 0 and "released" in out
    result = purge(app.store, app.config, app.clock.now())
    assert result.references["case_record"] == [held] and app.store.case_by_reference(held) is None


def test_a_case_with_mail_still_to_send_keeps_its_record(app: App) -> None:
    ref = open_case(app, BY_ID["havering"])
    close(app, ref, "Agreed.")  # nothing sent: the outbox rows are pending
    result = purge(app.store, app.config, add_months(app.clock.now(), 100))
    assert result.references["case_record"] == [] and app.store.case_by_reference(ref) is not None
    assert counts(app, ref)["outbox"] > 0
