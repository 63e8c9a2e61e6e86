"""Timers under concurrency and restarts, the CLI (`tick --now`, `cases show --json`), partnerships that
do not escalate automatically, cases waiting for routing, mail loops and the per-address cap."""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from escalations.app import App, build_app
from escalations.clock import FakeClock
from tests.servers.smtp import SmtpCapture
from tests.workflow.conftest import Harness, HarnessFactory, make_settings, out_of_office, referral, reply
from tests.workflow.profiles import CH, HAVERING, OPENED, SUTTON, TRI_BOROUGH, WILTSHIRE, at

pytestmark = pytest.mark.servers


def body(m: Any) -> str:
    return str(m.message.get_content()).replace("\r\n", "\n")


# ---- two processes ticking at once ------------------------------------------------------------------


def test_two_concurrent_tickers_send_each_reminder_once(database_url: str, tmp_path: Path,
                                                        smtp_capture: SmtpCapture) -> None:
    """Two service processes (two Apps, two connection pools) on one database tick at the same moment:
    every reminder and every escalation mail goes out exactly once (SQLite and PostgreSQL)."""
    clock = FakeClock(OPENED)
    settings = make_settings(tmp_path, database_url, smtp_capture, None)
    a, b = build_app(settings, clock=clock), build_app(settings, clock=clock)
    try:
        for p in (CH, HAVERING, TRI_BOROUGH, SUTTON):
            a.ingest(referral(p))
        a.process_pending()
        a.send_outbox()
        before = len(smtp_capture.messages)
        assert len(a.store.list_cases()) == 4

        def race(when: Any) -> list[dict[str, Any]]:
            clock.set(when)
            barrier = threading.Barrier(2)
            results: list[dict[str, Any]] = []
            errors: list[BaseException] = []

            def run(app: App) -> None:
                try:
                    barrier.wait(10)
                    results.append(app.tick(when))
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(x,)) for x in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors
            return results

        results = race(at(9))  # the day before every stage 1 deadline
        assert sum(r["timers_fired"] for r in results) == 4
        a.send_outbox()
        b.send_outbox()
        sent = smtp_capture.messages[before:]
        pairs = Counter((m.message["Subject"].split("]")[0], r) for m in sent for r in m.rcpt_tos)
        assert pairs and all(n == 1 for n in pairs.values()), pairs
        assert {m.message["X-Escalations-Template"] for m in sent} == {"reminder"}

        before = len(smtp_capture.messages)
        results = race(at(10))  # every stage 1 deadline: four escalations
        assert sum(r["timers_fired"] for r in results) == 4
        a.send_outbox()
        b.send_outbox()
        sent = smtp_capture.messages[before:]
        ids = [m.message["Message-ID"] for m in sent]
        assert len(ids) == len(set(ids))
        pairs = Counter((m.message["Subject"].split("]")[0], r) for m in sent for r in m.rcpt_tos)
        assert all(n == 1 for n in pairs.values()), pairs
        assert all(c.stage == 2 for c in a.store.list_cases())
        for c in a.store.list_cases():
            events = [e.kind for e in a.store.case_events(c.id or 0)]
            assert events.count("escalated") == 1 and events.count("reminder_sent") == 1
    finally:
        a.store.engine.dispose()
        b.store.engine.dispose()


# ---- the CLI ------------------------------------------------------------------------------------------


def test_cli_tick_and_cases_show(harness: Harness, smtp_capture: SmtpCapture) -> None:
    from escalations.cli import app as cli

    h = harness
    h.send(referral(CH))
    ref = h.case().reference
    h.stop()  # the CLI runs as a separate "process" on the same database
    s = h.settings
    env = {
        "ESCALATIONS_DATA_DIR": str(s.data_dir), "ESCALATIONS_DATABASE_URL": s.effective_database_url,
        "ESCALATIONS_SECRET_KEY": "workflow-tests-secret-key-0123456789",
        "ESCALATIONS_RELAY__HOST": smtp_capture.host, "ESCALATIONS_RELAY__PORT": str(smtp_capture.port),
        "ESCALATIONS_RELAY__SECURITY": "none",
    }
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    mark = h.mark()
    out = run("tick", "--now", "2026-11-09T16:59", "--json")  # naive = London time
    assert out["timers_fired"] == 0
    out = run("tick", "--now", "2026-11-09T17:00", "--json")
    assert out["timers_fired"] == 1 and out["sent"] == 2
    assert run("tick", "--now", "2026-11-09T17:00", "--json")["timers_fired"] == 0
    assert sorted(r for m in smtp_capture.messages[mark:] for r in m.rcpt_tos) == sorted(
        [CH.raiser, CH.other_practitioner_email])

    shown = run("cases", "show", ref, "--json")
    for key in ("reference", "partnership", "status", "stage", "due_at", "parties", "events"):
        assert key in shown
    assert (shown["reference"], shown["partnership"], shown["status"], shown["stage"]) == \
        (ref, "city-and-hackney", "open", 1)
    assert shown["due_at"] == "2026-11-10T17:00:00+00:00"  # C&H 1.4: 5 working days, 17:00
    parties = {p["email"]: p for p in shown["parties"]}
    assert parties[CH.raiser]["party"] == "raiser" and parties[CH.raiser]["side"] == "raising"
    assert parties[CH.other_practitioner_email]["side"] == "receiving" and parties[CH.other_practitioner_email]["asked"]
    kinds = [e["kind"] for e in shown["events"]]
    assert kinds[:2] == ["case_opened", "acknowledgement_queued"]
    assert "stage_opened" in kinds and kinds.count("reminder_sent") == 1
    opened = next(e for e in shown["events"] if e["kind"] == "stage_opened")
    assert opened["clause"] == "C&H 2.1-2.2"

    out = run("tick", "--now", "2026-11-10T17:00:00+00:00", "--json")
    assert out["timers_fired"] == 1
    shown = run("cases", "show", ref, "--json")
    assert shown["stage"] == 2 and shown["due_at"] == "2026-11-18T17:00:00+00:00"
    escalated = next(e for e in shown["events"] if e["kind"] == "escalated")
    assert escalated["clause"] == "C&H 1.4" and escalated["detail"]["to_stage"] == 2
    assert "ch.csc.line-manager@example.org" in [p["email"] for p in shown["parties"]]
    assert CH.other_practitioner_email in shown["mailed"]


# ---- auto_escalate: false --------------------------------------------------------------------------------


def test_without_auto_escalation_the_raiser_is_asked_to_confirm(harness_factory: HarnessFactory,
                                                               tmp_path: Path) -> None:
    """A partnership whose YAML says ``auto_escalate: false``: at the deadline the parties are reminded
    and the raiser is asked to confirm the escalation; their ESCALATE moves the case on."""
    from tests.conftest import CONFIG_DIR

    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config)
    yaml_path = config / "partnerships" / "havering.yaml"
    text = yaml_path.read_text(encoding="utf-8")
    assert "auto_escalate: true" in text
    yaml_path.write_text(text.replace("auto_escalate: true", "auto_escalate: false"), encoding="utf-8")
    h = harness_factory(config_dir=config)
    p = HAVERING
    h.send(referral(p))
    case = h.case()
    assert sorted(t.kind for t in h.timers(case)) == ["remind_before", "remind_due"]
    h.tick(at(9))
    mark = h.mark()
    h.tick(at(10))
    assert h.case().stage == 1  # not escalated
    ask = h.one("escalation_confirm_request", p.raiser, since=mark)
    assert "does not escalate automatically" in body(ask)
    assert "Tuesday 10 November 2026, 17:00" in body(ask)
    h.one("reminder", p.other_practitioner_email, since=mark)
    h.send(reply(ask, p.raiser, "ESCALATE still no assessment"), at_time=at(11, 9))
    case = h.case()
    assert case.stage == 2 and case.due_at == at(18)  # counted from Wednesday 11 November 09:00
    h.one("stage_request", "hav.csc.line-manager@example.org", since=mark)


# ---- unknown other agency: the coordinator routes it ------------------------------------------------


def test_unknown_agency_waits_for_routing(harness: Harness) -> None:
    h = harness
    h.send(referral(CH, other_agency="Acme Tutoring Ltd"))
    case = h.case()
    assert case.status == "needs_routing" and case.stage == 1
    ask = h.one("case_needs_routing", CH.coordinator)
    assert "Acme Tutoring Ltd" in body(ask)
    mark = h.mark()
    h.tick(at(4))  # one working day later: reminded
    h.tick(at(4))
    assert len(h.mails("case_needs_routing", to=CH.coordinator, since=mark)) == 1
    h.tick(at(5))
    assert len(h.mails("case_needs_routing", to=CH.coordinator, since=mark)) == 2
    # Replies on the case wait too.
    req = h.one("stage_request", CH.raiser)
    h.send(reply(req, CH.raiser, "ESCALATE"), at_time=at(5, 17, 30))
    assert h.case().status == "needs_routing" and h.case().stage == 1
    # The coordinator routes it with INFO.
    h.send(reply(ask, CH.coordinator, "INFO\nOther agency: Hackney Children's Social Care"), at_time=at(6, 9))
    case = h.case()
    assert case.status == "open" and case.other_agency == "hackney-csc" and case.stage == 1
    assert case.due_at == at(13)  # stage 1 counted from when it could start: Friday 6 November
    assert [t.kind for t in h.timers(case)] == ["remind_before", "escalate"]


# ---- no mail loops --------------------------------------------------------------------------------------


def test_no_mail_loops(harness: Harness) -> None:
    h = harness
    h.send(referral(WILTSHIRE))
    req = h.one("stage_request", WILTSHIRE.raiser)
    # Our own mail coming back to the mailbox (a forwarding rule, a list) is ignored.
    own = req.raw.replace(b"To: pc.jones@police.example.org", b"To: LSCBGCSX@wiltshire.gov.uk")
    mark = h.mark()
    h.send(own, at_time=at(3, 11))
    assert h.mails(since=mark) == []
    assert h.app.store.list_inbound()[-1].kind == "own_mail"
    # A help answer to a stray message, then that person's auto-reply to it: never answered.
    h.send(reply(req, WILTSHIRE.raiser, "Thanks!"), at_time=at(3, 12))
    help_mail = h.one("reply_help", WILTSHIRE.raiser, since=mark)
    mark = h.mark()
    h.send(out_of_office(help_mail, WILTSHIRE.raiser), at_time=at(3, 13))
    assert WILTSHIRE.raiser not in h.recipients(since=mark)
    # The raiser has no deputy: the coordinator hears once that they are away.
    h.one("deputy_takeover", WILTSHIRE.coordinator, since=mark)
    mark = h.mark()
    h.send(out_of_office(req, WILTSHIRE.raiser), at_time=at(3, 14))
    assert h.mails(since=mark) == []
    # A reply with no command, twice in a day: one answer.
    h.send(reply(req, WILTSHIRE.raiser, "Another thought."), at_time=at(3, 15))
    assert h.mails(since=mark) == []


# ---- the per-address cap ---------------------------------------------------------------------------------


def test_catch_up_after_an_outage_respects_the_per_address_cap(harness_factory: HarnessFactory) -> None:
    """The service was down for six weeks: one tick runs every due timer of the Sutton ladder at once.
    Mail beyond the cap for one address waits for the next hour, none is dropped, and it all goes."""
    h = harness_factory(max_mails_per_address_per_hour=4)
    p = SUTTON
    h.send(referral(p))
    before = h.mark()
    late = at(15, 9, month=12)
    result = h.tick(late)
    case = h.case()
    assert case.stage == 6 and result["timers_fired"] == 10  # 5 reminders + 5 escalations
    # Every stage moved at its own deadline, as if the service had been up ...
    opened = [e for e in h.events(case) if e.kind == "stage_opened"]
    assert [e.detail["due"] for e in opened] == [r.due.isoformat() if r.due else None for r in p.ladder]
    # ... but no "deadline tomorrow" reminder is sent weeks late.
    assert h.event_kinds(case).count("reminder_skipped") == 5 and not h.mails("reminder", since=before)
    # The raiser is copied on stages 2-6: four now, the fifth deferred to the next hour, not dropped.
    assert len(h.mails(to=p.raiser, since=before)) == 4
    waiting = [o for o in h.app.store.list_outbox("pending") if p.raiser in o.recipients]
    assert len(waiting) == 1 and waiting[0].attempts == 0 and "deferred" in (waiting[0].last_error or "")
    assert waiting[0].next_attempt_at == late + timedelta(hours=1)
    h.tick(late + timedelta(minutes=59))
    assert len(h.mails(to=p.raiser, since=before)) == 4
    h.tick(late + timedelta(hours=1))
    assert len(h.mails(to=p.raiser, since=before)) == 5
    assert [m.message["X-Escalations-Template"] for m in h.mails(to=p.raiser, since=before)] == ["stage_copy"] * 5
    assert not h.app.store.list_outbox("pending")
    assert not h.app.store.list_outbox("failed")
