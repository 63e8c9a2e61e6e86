"""The learning log: LEARNING and THEME replies (registry entries, through the workflow), and
`escalations cases learn` / `cases theme` (audited staff actions through the dispatcher)."""

from __future__ import annotations

from datetime import date

from typer.testing import CliRunner

from escalations.app import App
from escalations.cli import app as cli_app
from escalations.records.read import load_record, load_records
from escalations.records.report import build_report
from escalations.records.themes import Theme, inferred_themes, theme_of
from tests.conftest import CONFIG_DIR
from tests.records.conftest import BY_ID, CHILD, close, open_case, say


def cli(app: App, *args: str) -> tuple[int, str]:
    s = app.settings
    r = CliRunner().invoke(cli_app, ["--config", str(CONFIG_DIR), "--data-dir", str(s.data_dir),
                                     "--database-url", s.effective_database_url, *args])
    return r.exit_code, r.stdout + r.stderr


def test_theme_names() -> None:
    assert theme_of("levels of need") is Theme.LEVELS_OF_NEED
    assert theme_of("The need for action") is Theme.NEED_FOR_ACTION
    assert theme_of("Roles & responsibilities") is Theme.ROLES_AND_RESPONSIBILITIES
    assert theme_of("communication") is Theme.COMMUNICATION
    assert theme_of("weather") is None and theme_of("") is None
    assert inferred_themes("The threshold for a section 47 enquiry is met") == (Theme.LEVELS_OF_NEED,)
    assert inferred_themes(None) == ()


def test_learning_and_theme_replies_are_kept_on_the_case(app: App) -> None:
    p = BY_ID["sutton"]
    ref = open_case(app, p)
    say(app, ref, p.raiser, "THEME", "communication")
    say(app, ref, p.raiser, "LEARNING", f"Hospital and school should share discharge plans for {CHILD} sooner.")
    record = load_record(app.store, ref)
    assert record is not None
    assert record.themes == ("communication",)
    assert [e.detail["text"] for e in record.learning] == [
        f"Hospital and school should share discharge plans for {CHILD} sooner."]
    assert record.learning[0].actor == p.raiser
    assert next(e for e in record.events if e.kind == "theme").clause == "C&H 1.3; Havering 1.3"


def test_unknown_theme_and_empty_learning_are_answered_not_applied(app: App) -> None:
    p = BY_ID["havering"]
    ref = open_case(app, p)
    say(app, ref, p.raiser, "THEME", "weather")
    say(app, ref, p.raiser, "LEARNING", "")
    record = load_record(app.store, ref)
    assert record is not None and record.themes == () and record.learning == ()
    assert {"reply_theme", "reply_learning"} <= {e.kind for e in record.events}  # kept as received
    help_mails = [o for o in app.store.list_outbox() if o.template == "reply_help.txt.j2" and p.raiser in o.recipients]
    assert len(help_mails) == 1  # told what to say (one help mail a day per address)


def test_learning_after_the_case_closed(app: App) -> None:
    """Learning is drawn after resolution (Sutton 7.5): LEARNING and THEME are kept on a closed case."""
    p = BY_ID["city-and-hackney"]
    ref = open_case(app, p)
    close(app, ref, "Agreed.")
    say(app, ref, p.raiser, "LEARNING", "Use the professionals meeting earlier.")
    code, out = cli(app, "cases", "theme", ref, "levels of need", "--by", "coordinator@example.org")
    assert code == 0, out
    record = load_record(app.store, ref)
    assert record is not None and record.status == "closed"
    assert record.themes == ("levels_of_need",) and len(record.learning) == 1


def test_cases_learn_is_a_staff_action_in_the_history(app: App) -> None:
    p = BY_ID["tri-borough"]
    ref = open_case(app, p)
    code, out = cli(app, "cases", "learn", ref, "Agree lead agency at the first strategy meeting.",
                    "--by", "lscb-officer@example.org")
    assert code == 0 and f"{ref}: LEARNING recorded" in out, out
    code, out = cli(app, "cases", "theme", ref.lower(), "roles and responsibilities")
    assert code == 0, out
    record = load_record(app.store, ref)
    assert record is not None
    learned = record.learning[0]
    assert learned.actor == "lscb-officer@example.org" and learned.detail["text"].startswith("Agree lead agency")
    replies = [e for e in record.events if e.kind == "reply_learning"]
    assert replies and replies[0].detail["authority"] == "staff"  # performed by the dispatcher as staff
    theme = next(e for e in record.events if e.kind == "theme")
    assert theme.actor is not None and theme.actor.startswith("cli:")
    # the report lists it under its theme
    report = build_report(load_records(app.store, "tri-borough"), app.config.partnerships["tri-borough"],
                          date(2026, 11, 1), date(2026, 11, 30))
    assert [(t, [pt.text for pt in pts]) for t, pts in report.learning] == [
        ("Roles and responsibilities", ["Agree lead agency at the first strategy meeting."])]


def test_cases_learn_refusals_are_sentences(app: App) -> None:
    code, out = cli(app, "cases", "learn", "TRI-2026-0404", "text")
    assert code == 1 and "No case with reference TRI-2026-0404" in out
    ref = open_case(app, BY_ID["wiltshire"])
    code, out = cli(app, "cases", "theme", ref, "weather")
    assert code == 1 and "not applied" in out and "Traceback" not in out


def test_the_parser_reads_the_new_words() -> None:
    from email.message import EmailMessage

    from escalations.parsers.message import parse_message
    from escalations.parsers.reply import parse_reply

    for text, command, argument in (("LEARNING Share plans earlier.", "LEARNING", "Share plans earlier."),
                                    ("Lesson: agree the lead agency", "LEARNING", "agree the lead agency"),
                                    ("THEME need for action", "THEME", "need for action")):
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "a@example.org", "b@example.org", "RE: [SUT-2026-0001] x"
        msg.set_content(text + "\n")
        parsed = parse_reply(parse_message(bytes(msg)))
        assert (parsed.command, parsed.argument) == (command, argument), text
