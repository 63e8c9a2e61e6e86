"""Command line (typer). Thin: parses arguments, builds the app, prints results."""

from __future__ import annotations

import json
import logging
import re
import signal
import smtplib
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn
from zoneinfo import ZoneInfo

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import OperationalError
from typer.core import TyperGroup

from escalations.errors import EXIT_SETUP, SetupError, as_setup_errors, report
from escalations.logs import FramesOnly, configure_logging
from escalations.private import FILE_MODE, make_private, private_umask
from escalations.settings import Settings


class _SetupErrorsAsSentences(TyperGroup):
    """The one error printer: every command's set-up mistakes become a sentence and exit 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as exc:
            errors = as_setup_errors(exc)
            if errors is None or ctx.meta.get("escalations.debug"):
                raise
            report(errors, lambda line: err.print(line, markup=False, highlight=False, soft_wrap=True))
            ctx.exit(EXIT_SETUP)


app = typer.Typer(help="Resolving professional differences: the partnership escalation service.",
                  no_args_is_help=True, pretty_exceptions_enable=False, cls=_SetupErrorsAsSentences)
cases_app = typer.Typer(help="Cases: list and show.", no_args_is_help=True)
outbox_app = typer.Typer(help="Outgoing mail waiting or sent.", no_args_is_help=True)
timers_app = typer.Typer(help="Deadlines, reminders and escalations waiting to fire (and any that failed).",
                         no_args_is_help=True)
quarantine_app = typer.Typer(help="Mail that could not be processed, and replaying it.", no_args_is_help=True)
mailbox_app = typer.Typer(help="The IMAP mailboxes the service watches.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema: upgrade it to this release, show its revision.", no_args_is_help=True)
app.add_typer(cases_app, name="cases")
app.add_typer(outbox_app, name="outbox")
app.add_typer(timers_app, name="timers")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(mailbox_app, name="mailbox")
app.add_typer(db_app, name="db")

try:  # the policy-engine commands (config check, policy show/timeline)
    from escalations.policy_cli import config_app, policy_app

    app.add_typer(config_app, name="config")
    app.add_typer(policy_app, name="policy")
except ImportError:  # pragma: no cover - only while the module is being written
    pass

console = Console()
err = Console(stderr=True)
LONDON = ZoneInfo("Europe/London")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@app.callback()
def main_callback(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="ESCALATIONS_DATA_DIR",
                        help="SQLite database and captured mail [default: ./var]")] = None,
    config: Annotated[Path | None, typer.Option("--config", envvar="ESCALATIONS_CONFIG",
                      help="Configuration folder [default: the repository's config/]")] = None,
    database_url: Annotated[str | None, typer.Option("--database-url", envvar="ESCALATIONS_DATABASE_URL",
                            help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db [default: SQLite]")] = None,
    debug: Annotated[bool, typer.Option("--debug", envvar="ESCALATIONS_DEBUG",
                     help="Show the full traceback of set-up errors.")] = False,
) -> None:
    private_umask()  # raw mail and children's details: nothing any command writes is for other users
    ctx.meta["escalations.debug"] = debug
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if config is not None:
        overrides["config_dir"] = config
    if database_url is not None:
        overrides["database_url"] = database_url
    try:
        ctx.obj = Settings(**overrides)
    except (ValidationError, SetupError, SettingsError) as exc:
        # field and reason only: pydantic's own text repeats the input, which may be a secret
        errors = as_setup_errors(exc) or [SetupError("ESCALATIONS_*", "not valid")]
        if ctx.invoked_subcommand == "config":  # config check reports them with everything else
            ctx.obj = SettingsNotValid(overrides.get("config_dir"), errors)
            return
        if debug:
            raise
        raise SetupError.of(errors) from None


@dataclass
class SettingsNotValid:
    """What `config check` gets when the settings themselves are wrong."""

    config_dir: Path | None
    errors: list[SetupError]


def _settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    if isinstance(obj, SettingsNotValid):
        raise SetupError.of(obj.errors)
    assert isinstance(obj, Settings)
    return obj


def _build(ctx: typer.Context, log_format: str = "console", level: int = logging.WARNING, *,
           read_only: bool = False) -> Any:
    """``read_only`` commands never create or alter a schema: they need one at this release's head."""
    from escalations.app import build_app

    configure_logging("json" if log_format == "json" else "console", level)
    # ConfigError, SchemaError and the like: printed as sentences by _SetupErrorsAsSentences
    return build_app(_settings(ctx), read_only=read_only)


def _schema_refused(exc: Exception) -> NoReturn:
    err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def _local(dt: datetime | None) -> str:
    return dt.astimezone(LONDON).strftime("%a %d %b %Y %H:%M") if dt else "-"


def parse_when(value: str) -> datetime:
    """ISO date/time; a naive one is Europe/London local time."""
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO date/time: {value!r}") from exc
    return (dt.replace(tzinfo=LONDON) if dt.tzinfo is None else dt).astimezone(UTC)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# ---- run ---------------------------------------------------------------------------------------


@app.command()
def run(
    ctx: typer.Context,
    demo: Annotated[bool, typer.Option("--demo", help="Submit each partnership's sample referral and show cases.")] = False,
    smtp_port: Annotated[int | None, typer.Option("--smtp-port", help="SMTP intake port [default: 8025]")] = None,
) -> None:
    """Run the service: IMAP watchers, SMTP intake, processor, outbox sender, scheduler."""
    settings = _settings(ctx)
    if smtp_port is not None:
        settings.smtp_listen_port = smtp_port
    if demo:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        configure_logging("json", logging.INFO)
        _log_to_file(settings.data_dir / "escalations.log")
    else:
        configure_logging(settings.log_format if settings.log_format != "console" else "json", logging.INFO)
    from escalations.app import build_app

    application = build_app(settings)
    stop = threading.Event()

    def _stop(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    drive = _demo_driver(stop) if demo else None

    def on_started(started: Any) -> None:
        for line in startup_lines(started):
            err.print(line, markup=False, highlight=False, soft_wrap=True)
        if drive is not None:
            drive(started)

    application.run(stop, on_started=on_started)


def startup_lines(application: Any) -> list[str]:
    """Where mail goes, what is watched, where mail comes in: the first thing an operator needs."""
    s = application.settings
    lines = []
    if s.relay is not None:
        r = s.relay
        lines.append(f"outgoing mail: relay {r.host}:{r.port} ({r.security}, {r.auth.method.value})")
        problem = _relay_unreachable(r.host, r.port, min(r.timeout_seconds, 5.0))
        if problem:
            lines.append(f"warning: relay {r.host}:{r.port} is not reachable now ({problem}); mail waits in the "
                         "outbox and is retried. Check ESCALATIONS_RELAY__HOST and ESCALATIONS_RELAY__PORT")
    else:
        lines.append(f"outgoing mail: no relay: mail is written to {s.sent_dir} (set ESCALATIONS_RELAY__HOST)")
    if s.mailboxes:
        lines.append("watching: " + ", ".join(f"{m.name} ({m.username} on {m.host}:{m.port}, {m.folder})"
                                              for m in s.mailboxes))
    else:
        lines.append("watching: no IMAP mailboxes (set ESCALATIONS_MAILBOXES_FILE)")
    if s.smtp_intake_enabled:
        lines.append(f"SMTP intake: {s.smtp_listen_host}:{application.smtp_port or s.smtp_listen_port}")
    else:
        lines.append("SMTP intake: off")
    return lines


def _relay_unreachable(host: str, port: int, timeout: float) -> str | None:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _log_to_file(path: Path) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_escalations", False):
            root.removeHandler(h)
    handler = logging.FileHandler(path, encoding="utf-8")
    path.chmod(FILE_MODE)  # it may be older than our umask
    handler.setFormatter(logging.Formatter("%(message)s"))
    # The same filter as stderr's: another library's exception keeps its type and frames, not its text.
    handler.addFilter(FramesOnly())
    handler._escalations = True  # type: ignore[attr-defined]
    root.addHandler(handler)


def _demo_driver(stop: threading.Event) -> Any:
    from rich.live import Live

    from escalations.app import App, demo_messages

    def drive(application: App) -> None:
        s = application.settings
        console.print(f"[bold]escalations demo[/bold] — SMTP intake on {s.smtp_listen_host}:{application.smtp_port}, "
                      f"database {s.effective_database_url}, mail written to {s.sent_dir}/, log in "
                      f"{s.data_dir / 'escalations.log'}")
        for pid, path in demo_messages():
            partnership = application.config.partnerships.get(pid)
            if partnership is None:
                continue
            # SMTP lines end in CRLF (RFC 5321 2.3.8); the samples are stored with Unix line ends.
            raw = re.sub(rb"\r?\n", b"\r\n", path.read_bytes())
            with smtplib.SMTP(s.smtp_listen_host, application.smtp_port or s.smtp_listen_port, timeout=30) as c:
                c.sendmail("practitioner@example.org", [partnership.primary_mailbox], raw)
            console.print(f"  submitted the sample referral of [cyan]{partnership.name}[/cyan] over SMTP")
        console.print("Watching cases (Ctrl-C to stop; send more mail to the SMTP port to see it arrive)…")

        def watch() -> None:
            if console.is_terminal:
                with Live(_cases_table(application), console=console, refresh_per_second=2) as live:
                    while not stop.is_set():
                        live.update(_cases_table(application))
                        time.sleep(0.5)
                return
            # Not a terminal (piped, logged): one line per change instead of a redrawn table.
            seen: set[tuple[str, ...]] = set()
            console.print("Cases (reference, partnership, status, stage, acknowledgement):")
            while not stop.is_set():
                for row in _case_rows(application):
                    if row not in seen:
                        seen.add(row)
                        console.print("  " + "  ".join(row), markup=False, soft_wrap=True)
                time.sleep(0.5)

        threading.Thread(target=watch, name="demo-view", daemon=True).start()

    return drive


def _case_rows(application: Any) -> list[tuple[str, ...]]:
    """Reference, partnership, status, stage, opened (London), missing fields, acknowledgement status."""
    sent_by_case: dict[int, str] = {}
    for row in application.store.list_outbox():
        if row.case_id is not None and row.template.startswith("referral_"):
            sent_by_case[row.case_id] = row.status
    return [(case.reference, case.partnership, case.status, str(case.stage or "-"), _local(case.opened_at),
             ", ".join(case.missing) or "-", "ack " + sent_by_case.get(case.id or 0, "-"))
            for case in application.store.list_cases()]


def _cases_table(application: Any) -> Table:
    table = Table(title="Cases")
    for col in ("Reference", "Partnership", "Status", "Stage", "Opened (London)", "Missing", "Acknowledgement"):
        table.add_column(col)
    for row in _case_rows(application):
        table.add_row(*row)
    return table


# ---- parse / ingest ------------------------------------------------------------------------------


@app.command()
def parse(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A saved .eml message")],
    as_json: JsonOpt = False,
) -> None:
    """Parse one message and show what was understood. No side effects."""
    from escalations.inspect import inspect_message
    from escalations.policy_files import load_config

    config = load_config(_settings(ctx).config_dir)
    result = inspect_message(file.read_bytes(), config)
    if as_json:
        _print_json(result)
        return
    console.print(f"kind: [bold]{result['kind']}[/bold]   partnership: {result['partnership'] or '(none)'}")
    if result.get("reason"):
        console.print(f"reason: {result['reason']}")
    table = Table("field", "value")
    for name, value in result["fields"].items():
        if value not in (None, [], ""):
            table.add_row(name, json.dumps(value) if isinstance(value, list) else str(value))
    console.print(table)
    console.print(f"missing: {', '.join(result['missing']) or 'nothing'}")


@app.command()
def ingest(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True, help=".eml files")],
    received: Annotated[str | None, typer.Option("--received", help="When they arrived (ISO; default now)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Store and process saved messages exactly as if they had arrived."""
    application = _build(ctx)
    when = parse_when(received) if received else None
    results = []
    with application.keep_alive():
        for path in files:
            stored = application.ingest(path.read_bytes(), received_at=when)
            results.append({"file": str(path), "inbound_id": stored.id, "new": stored.created})
        outcomes = {o.inbound_id: o for o in application.process_pending()}
        sent = application.send_outbox()
    for r in results:
        o = outcomes.get(r["inbound_id"])
        row = application.store.get_inbound(r["inbound_id"])
        r["kind"] = o.kind if o else (row.kind if row else None)
        r["status"] = o.status if o else (row.status if row else None)
        r["case"] = o.case_reference if o else None
        if r["case"] is None and row is not None and row.case_id is not None:
            r["case"] = next((c.reference for c in application.store.list_cases() if c.id == row.case_id), None)
        r["detail"] = o.detail if o else ("already received" if not r["new"] else "")
    if as_json:
        _print_json({"messages": results, "sent": sent})
        return
    table = Table("file", "inbound", "kind", "status", "case", "detail")
    for r in results:
        table.add_row(r["file"], str(r["inbound_id"]), str(r["kind"]), str(r["status"]), str(r["case"] or "-"),
                      str(r["detail"]))
    console.print(table)
    console.print(f"{sent} message(s) sent")


# ---- cases -------------------------------------------------------------------------------------------


def _party_json(p: dict[str, Any]) -> dict[str, Any]:
    deputy = bool(p.get("using_deputy") and p.get("deputy_email"))
    return {"email": p.get("deputy_email") if deputy else p.get("email"),
            "name": p.get("deputy_name") if deputy else p.get("name"),
            "role": p.get("role_name"), "party": p.get("party"), "side": p.get("side"),
            "asked": bool(p.get("asked", True)), "deputy_for": p.get("email") if deputy else None}


def case_json(application: Any, case: Any) -> dict[str, Any]:
    events = application.store.case_events(case.id)
    outbox = [o for o in application.store.list_outbox() if o.case_id == case.id]
    # When the partnership received each message (the event's time) and when we processed it.
    inbound = {i: application.store.get_inbound(i) for i in {e.inbound_id for e in events} | {case.origin_inbound_id}
               if i is not None}
    origin = inbound.get(case.origin_inbound_id)

    def times(inbound_id: int | None) -> dict[str, str | None]:
        row = inbound.get(inbound_id) if inbound_id is not None else None
        return {"received_at": _iso(row.received_at) if row else None,
                "processed_at": _iso(row.processed_at) if row else None}

    return {
        "reference": case.reference,
        "partnership": case.partnership,
        "status": case.status,
        "stage": case.stage,
        "route": case.route,
        "opened_at": _iso(case.opened_at),
        "received_at": _iso(origin.received_at) if origin else None,
        "processed_at": _iso(origin.processed_at) if origin else None,
        "updated_at": _iso(case.updated_at),
        "due_at": _iso(case.due_at),
        "immediate_risk": case.immediate_risk,
        "raised_by_email": case.raised_by_email,
        "missing": case.missing,
        "policy_version": case.policy_version,
        # the people the case involves at its current stage (deputies in place of absent contacts)
        "parties": [_party_json(p) for p in case.parties],
        "mailed": sorted({r for o in outbox for r in o.recipients}),
        "fields": case.fields,
        "events": [{"at": _iso(e.at), "kind": e.kind, "actor": e.actor, "clause": e.clause, "detail": e.detail,
                    "inbound_id": e.inbound_id, **times(e.inbound_id)} for e in events],
        # Mail kept on the case but never applied (no valid reply code, ambiguous sender, DMARC fail...).
        "unverified_correspondence": [
            {"at": _iso(e.at), "from": e.detail.get("from"), "reason": e.detail.get("reason"),
             "command": e.detail.get("command"), "text": e.detail.get("text"), "inbound_id": e.inbound_id,
             **times(e.inbound_id)}
            for e in events if e.kind == "reply_not_applied"],
        "mail": [{"message_id": o.message_id, "template": o.template, "to": o.recipients, "status": o.status,
                  "subject": o.subject, "created_at": _iso(o.created_at), "sent_at": _iso(o.sent_at)} for o in outbox],
    }


@cases_app.command("list")
def cases_list(
    ctx: typer.Context,
    partnership: Annotated[str | None, typer.Option(help="Only this partnership id")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List cases with stage, status and due time."""
    application = _build(ctx, read_only=True)
    rows = application.store.list_cases(partnership, status)
    if as_json:
        _print_json([{"reference": c.reference, "partnership": c.partnership, "status": c.status, "stage": c.stage,
                      "opened_at": _iso(c.opened_at), "due_at": _iso(c.due_at), "missing": c.missing} for c in rows])
        return
    console.print(_cases_table(application))


@cases_app.command("show")
def cases_show(ctx: typer.Context, reference: Annotated[str, typer.Argument(help="e.g. CH-2026-0001")],
               as_json: JsonOpt = False) -> None:
    """Show one case with its event history and mail."""
    application = _build(ctx, read_only=True)
    case = application.store.case_by_reference(reference)
    if case is None:
        err.print(f"No case with reference {reference}")
        raise typer.Exit(1)
    data = case_json(application, case)
    if as_json:
        _print_json(data)
        return
    console.print(f"[bold]{data['reference']}[/bold]  {data['partnership']}  status={data['status']}  "
                  f"stage={data['stage'] or '-'}  due={_local(case.due_at)}")
    processed = f" (received {_local(origin_row.received_at)}, processed {_local(origin_row.processed_at)})" \
        if case.origin_inbound_id is not None \
        and (origin_row := application.store.get_inbound(case.origin_inbound_id)) is not None else ""
    console.print(f"opened {_local(case.opened_at)}{processed}; missing: {', '.join(data['missing']) or 'nothing'}")
    if data["unverified_correspondence"]:
        unverified = Table("received (London)", "from", "reason", "command", title="Unverified correspondence "
                           "(kept, never applied)")
        for u in data["unverified_correspondence"]:
            unverified.add_row(u["received_at"] or u["at"], u["from"] or "-", u["reason"] or "-", u["command"] or "-")
        console.print(unverified)
    events = Table("when (London)", "event", "actor", "clause", "detail", title="History")
    for e in application.store.case_events(case.id):
        events.add_row(_local(e.at), e.kind, e.actor or "-", e.clause or "-", json.dumps(e.detail, default=str)[:120])
    console.print(events)
    mail = Table("created", "template", "to", "status", title="Mail")
    for m in data["mail"]:
        mail.add_row(m["created_at"], m["template"], ", ".join(m["to"]), m["status"])
    console.print(mail)


# ---- tick / outbox / quarantine ------------------------------------------------------------------


@app.command()
def tick(ctx: typer.Context,
         now: Annotated[str | None, typer.Option("--now", help="Pretend it is this time (ISO)")] = None,
         as_json: JsonOpt = False) -> None:
    """Run due reminders and escalations once (and process/send anything waiting)."""
    from escalations.app import build_app
    from escalations.clock import FakeClock, SystemClock

    configure_logging("console", logging.WARNING)
    clock = FakeClock(parse_when(now)) if now else SystemClock()
    # the pretend time is for deadlines only: claims use real time, so a service running on
    # the same database never mistakes this process's work in progress for abandoned work
    application = build_app(_settings(ctx), clock=clock, lease_clock=SystemClock())
    with application.keep_alive():
        result = application.tick(clock.now())
    if as_json:
        _print_json(result)
    else:
        console.print(", ".join(f"{k}: {v}" for k, v in result.items()))


@outbox_app.command("list")
def outbox_list(ctx: typer.Context,
                status: Annotated[str | None, typer.Option(help="pending | sending | sent | failed")] = None,
                as_json: JsonOpt = False) -> None:
    """What is waiting to go out, and what went."""
    application = _build(ctx, read_only=True)
    rows = application.store.list_outbox(status)
    data = [{"id": o.id, "case_id": o.case_id, "template": o.template, "to": o.recipients, "subject": o.subject,
             "status": o.status, "attempts": o.attempts, "next_attempt_at": _iso(o.next_attempt_at),
             "sent_at": _iso(o.sent_at), "last_error": o.last_error, "message_id": o.message_id} for o in rows]
    if as_json:
        _print_json(data)
        return
    table = Table("id", "subject", "to", "status", "attempts", "next attempt", "last error", title="Outbox")
    for d, o in zip(data, rows, strict=True):
        table.add_row(str(d["id"]), d["subject"], ", ".join(d["to"]), d["status"], str(d["attempts"]),
                      _local(o.next_attempt_at) if o.status == "pending" else "-", (d["last_error"] or "")[:60])
    console.print(table)


@timers_app.command("list")
def timers_list(ctx: typer.Context,
                status: Annotated[str | None, typer.Option(help="pending | firing | done | cancelled | failed")] = None,
                case: Annotated[str | None, typer.Option("--case", help="Only this case reference")] = None,
                as_json: JsonOpt = False) -> None:
    """Timers by due time. A `failed` timer raised while firing: fix the cause, then `timers retry ID`."""
    application = _build(ctx, read_only=True)
    case_id = None
    if case:
        found = application.store.case_by_reference(case)
        if found is None:
            err.print(f"No case with reference {case}")
            raise typer.Exit(1)
        case_id = found.id
    refs = {c.id: c.reference for c in application.store.list_cases()}
    rows = application.store.list_timers(case_id, status)
    data = [{"id": t.id, "case": refs.get(t.case_id), "stage": t.stage, "kind": t.kind, "due_at": _iso(t.due_at),
             "status": t.status, "fired_at": _iso(t.fired_at)} for t in rows]
    if as_json:
        _print_json(data)
        return
    table = Table("id", "case", "kind", "due (London)", "status", title="Timers")
    for d, t in zip(data, rows, strict=True):
        table.add_row(str(d["id"]), d["case"] or "-", d["kind"], _local(t.due_at), d["status"])
    console.print(table)


@timers_app.command("retry")
def timers_retry(ctx: typer.Context, timer_ids: Annotated[list[int], typer.Argument(help="Failed timer ids")]) -> None:
    """Put failed timers back in the queue; the next tick (or the running service) fires them."""
    application = _build(ctx)
    bad = [tid for tid in timer_ids if not application.store.retry_timer(tid)]
    for tid in timer_ids:
        if tid not in bad:
            console.print(f"timer {tid}: pending again")
    if bad:
        err.print(f"not a failed timer: {', '.join(map(str, bad))}")
        raise typer.Exit(1)


@quarantine_app.command("list")
def quarantine_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Messages that could not be processed, with the reason."""
    application = _build(ctx, read_only=True)
    rows = application.store.list_inbound("quarantined")
    data = [{"id": r.id, "source": r.source, "received_at": _iso(r.received_at), "message_id": r.message_id,
             "partnership": r.partnership, "size": r.size, "attempts": r.attempts,
             "reason": (r.error or "").split("\n", 1)[0]} for r in rows]
    if as_json:
        _print_json(data)
        return
    table = Table("id", "received (London)", "source", "partnership", "reason", title="Quarantine")
    for d, r in zip(data, rows, strict=True):
        table.add_row(str(d["id"]), _local(r.received_at), d["source"], d["partnership"] or "-", d["reason"])
    console.print(table)


@quarantine_app.command("replay")
def quarantine_replay(ctx: typer.Context,
                      ids: Annotated[list[int], typer.Argument(help="Quarantined message id(s)")],
                      as_json: JsonOpt = False) -> None:
    """Process quarantined messages again (after fixing configuration or code)."""
    application = _build(ctx)
    results = []
    with application.keep_alive():
        for inbound_id in ids:
            # handed back claimed by this command (its attempt counted): a running service leaves it alone
            if not application.store.release_for_replay(inbound_id, claim=True):
                results.append({"id": inbound_id, "status": "not-quarantined"})
                continue
            outcome = application.processor.process_one(inbound_id)
            results.append({"id": inbound_id, "status": outcome.status, "kind": outcome.kind,
                            "case": outcome.case_reference, "detail": outcome.detail})
        sent = application.send_outbox()
    if as_json:
        _print_json({"replayed": results, "sent": sent})
    else:
        for r in results:
            console.print(", ".join(f"{k}={v}" for k, v in r.items() if v is not None))
    if any(r["status"] != "done" for r in results):
        raise typer.Exit(1)


# ---- status ---------------------------------------------------------------------------------------------


def status_data(settings: Settings, now: datetime) -> dict[str, Any]:
    """Health for people and monitoring, read without writing anything (no schema, no claims)."""
    from sqlalchemy import func, inspect
    from sqlmodel import col, select

    from escalations.cases.models import Case, InboundMessage, MailboxHealth, OutboxMessage, Timer
    from escalations.cases.operations import quarantine_code
    from escalations.cases.store import Store, make_engine
    from escalations.clock import SystemClock
    from escalations.mailer.oauth import secret_expiry_note

    url = settings.effective_database_url
    if url.startswith("sqlite:///") and not settings.database_url and \
            not (settings.data_dir / "escalations.sqlite3").exists():
        raise SetupError("ESCALATIONS_DATA_DIR (--data-dir)", f"no database in {settings.data_dir}: start the "
                                                              "service (escalations run) or point to its data folder")
    engine = make_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
        store = Store(engine, SystemClock())
        alert_after = settings.mailbox_alert_after_minutes * 60
        with store.reading() as s:
            health = {h.name: h for h in s.exec(select(MailboxHealth)).all()} if "mailbox_health" in tables else {}
            waiting = dict(s.exec(select(InboundMessage.account, func.count()).where(
                InboundMessage.status == "pending").group_by(InboundMessage.account)).all())
            quarantined = s.exec(select(InboundMessage.error).where(InboundMessage.status == "quarantined")).all()
            outbox = dict(s.exec(select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)).all())
            timer_counts = dict(s.exec(select(Timer.status, func.count()).group_by(Timer.status)).all())
            next_timers = s.exec(select(Timer.due_at, Timer.kind, Case.reference).join(Case, col(Case.id) == col(Timer.case_id))
                                 .where(Timer.status == "pending").order_by(col(Timer.due_at)).limit(5)).all()
    finally:
        engine.dispose()
    mailboxes = []
    problems = []
    for m in settings.mailboxes:
        h = health.get(m.name)
        last_ok = h.last_ok_at if h else None
        silent = (now - (last_ok or h.since_at)).total_seconds() if h else None
        alerting = bool(h and h.down_alerted_at) or (silent is not None and silent >= alert_after)
        mailboxes.append({"name": m.name, "host": m.host, "folder": m.folder, "last_ok_at": _iso(last_ok),
                          "seconds_since_ok": round(silent) if silent is not None and last_ok else None,
                          "mode": None if not h or h.idle is None else ("idle" if h.idle else "polling"),
                          "last_error_code": h.last_error_code if h else None,
                          "last_error_at": _iso(h.last_error_at) if h else None,
                          "waiting": int(waiting.get(m.name, 0)), "no_contact_alert": alerting})
        if alerting:
            problems.append(f"mailbox {m.name}: no successful contact for over "
                            f"{settings.mailbox_alert_after_minutes:g} minutes")
    by_code: dict[str, int] = {}
    for error in quarantined:
        code = quarantine_code(error)
        by_code[code] = by_code.get(code, 0) + 1
    accounts = [(m.name, m.auth) for m in settings.mailboxes] + ([("relay", settings.relay.auth)]
                                                                  if settings.relay else [])
    secrets = []
    for name, auth in accounts:
        if auth.secret_expires_on is not None:
            note = secret_expiry_note(auth, now.date())
            secrets.append({"account": name, "expires_on": auth.secret_expires_on.isoformat(),
                            "days_left": (auth.secret_expires_on - now.date()).days, "warning": note})
            if note:
                problems.append(f"{name}: {note}")
    if outbox.get("failed"):
        problems.append(f"outbox: {outbox['failed']} message(s) failed for good (escalations outbox list --status failed)")
    if timer_counts.get("failed"):
        problems.append(f"timers: {timer_counts['failed']} failed (escalations timers list --status failed)")
    r = settings.relay
    return {
        "now": now.isoformat(),
        "ok": not problems,
        "problems": problems,
        "relay": {"host": r.host, "port": r.port, "security": r.security} if r else None,
        "sent_dir": None if r else str(settings.sent_dir),
        "mailboxes": mailboxes,
        "inbound_waiting": int(sum(waiting.values())),
        "quarantine": {"count": len(quarantined), "by_reason": dict(sorted(by_code.items()))},
        "outbox": {k: int(outbox.get(k, 0)) for k in ("pending", "sending", "sent", "failed")},
        "timers": {"pending": int(timer_counts.get("pending", 0)), "failed": int(timer_counts.get("failed", 0)),
                   "next": [{"case": ref, "kind": kind, "due_at": _iso(due)} for due, kind, ref in next_timers]},
        "secrets": secrets,
    }


@app.command()
def status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Mailboxes' last contact, backlogs, the next timers and secret expiry. Read-only. Exit 1 if
    something needs a person (the `problems` list), for health checks."""
    data = status_data(_settings(ctx), datetime.now(UTC))
    if as_json:
        _print_json(data)
    else:
        relay = data["relay"]
        console.print("outgoing mail: " + (f"relay {relay['host']}:{relay['port']} ({relay['security']})" if relay
                                           else f"no relay: written to {data['sent_dir']}"), highlight=False)
        table = Table("mailbox", "last contact (London)", "mode", "last error", "waiting", title="Mailboxes")
        for m in data["mailboxes"]:
            last = _local(datetime.fromisoformat(m["last_ok_at"])) if m["last_ok_at"] else "never"
            table.add_row(m["name"], last + (" [red]ALERT[/red]" if m["no_contact_alert"] else ""), m["mode"] or "-",
                          m["last_error_code"] or "-", str(m["waiting"]))
        console.print(table)
        q = data["quarantine"]
        console.print(f"quarantine: {q['count']}" + (" (" + ", ".join(f"{k}: {v}" for k, v in q["by_reason"].items())
                                                     + ")" if q["by_reason"] else ""), highlight=False)
        console.print("outbox: " + ", ".join(f"{k} {v}" for k, v in data["outbox"].items()), highlight=False)
        console.print(f"inbound waiting to be processed: {data['inbound_waiting']}", highlight=False)
        console.print("next timers: " + ("; ".join(f"{t['case']} {t['kind']} {_local(datetime.fromisoformat(t['due_at']))}"
                                                  for t in data["timers"]["next"]) or "none"), highlight=False)
        for sec in data["secrets"]:
            console.print(f"secret of {sec['account']}: expires {sec['expires_on']} ({sec['days_left']} days)",
                          highlight=False)
        for p in data["problems"]:
            err.print(f"problem: {p}", markup=False, highlight=False, soft_wrap=True)
    if data["problems"]:
        raise typer.Exit(1)


# ---- mailbox -------------------------------------------------------------------------------------------


@mailbox_app.command("test")
def mailbox_test(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The mailbox's `name`")],
                 as_json: JsonOpt = False) -> None:
    """Sign in to one mailbox now: token, login, folder, IDLE, what would be fetched. Changes nothing."""
    from escalations.mailer.mailbox_check import check_mailbox

    application = _build(ctx)
    settings = application.settings
    mailbox = next((m for m in settings.mailboxes if m.name == name), None)
    if mailbox is None:
        known = ", ".join(m.name for m in settings.mailboxes) or "none configured"
        err.print(f"No mailbox named {name!r} (mailboxes: {known}).", markup=False, highlight=False)
        raise typer.Exit(2)
    result = check_mailbox(mailbox, application.store.imap_cursor(mailbox.name, mailbox.folder),
                           subaddressing=settings.reply_subaddressing)
    if as_json:
        _print_json(result.as_dict())
    elif result.ok:
        console.print(f"[green]OK[/green] {result.name}: signed in to {result.host}:{result.port} "
                      f"({result.security}, {result.auth_method})", highlight=False)
        if result.token_expires_at is not None:
            console.print(f"  token valid until {_local(result.token_expires_at)} (London)", highlight=False)
        console.print(f"  folder {result.folder}: {result.messages} message(s), {result.to_fetch} to fetch; "
                      f"IDLE {'supported' if result.idle else 'not supported (polling)'}", highlight=False)
    for note in result.notes:
        if not as_json:
            console.print(f"  note: {note}", markup=False, highlight=False, soft_wrap=True)
    if not result.ok:
        if not as_json:
            err.print(f"{result.name}: {result.problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)


# ---- db -------------------------------------------------------------------------------------------------


def _unreachable(url: str, exc: OperationalError) -> Exception:
    from escalations.cases.schema import shown_url

    # the driver's own text may quote the server's reply: the exception type is enough to act on
    return Exception(f"cannot open the database at {shown_url(url)}: {type(exc.orig).__name__}")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Bring the database schema to this release (creating it in an empty database). Back up first."""
    from escalations.cases import schema
    from escalations.cases.store import make_engine

    configure_logging("console", logging.WARNING)
    settings = _settings(ctx)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.effective_database_url
    engine = make_engine(url)
    try:
        result = schema.upgrade(engine)
    except schema.SchemaError as exc:
        _schema_refused(exc)
    except OperationalError as exc:
        _schema_refused(_unreachable(url, exc))
    finally:
        engine.dispose()
    make_private(settings.data_dir, settings.effective_database_url)
    if result.stamped:
        console.print(f"found tables made before migrations, with no recorded schema revision: they are "
                      f"revision {result.stamped}, recorded", highlight=False)
    if result.before == result.after:
        console.print(f"already at {result.after} (head)", highlight=False)
    else:
        console.print(f"upgraded {result.before or '(empty)'} -> {result.after} (head)", highlight=False)


@db_app.command("current")
def db_current(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Show the database's schema revision and whether it is this release's (exit 1 if not). Changes nothing."""
    from escalations.cases import schema
    from escalations.cases.store import make_engine

    url = _settings(ctx).effective_database_url
    missing = schema.no_database(url)
    if not schema.database_exists(url):
        _schema_refused(missing)
    engine = make_engine(url)
    try:
        st = schema.status(engine)
    except OperationalError as exc:
        _schema_refused(_unreachable(url, exc))
    finally:
        engine.dispose()
    if st.state is schema.SchemaState.EMPTY:
        _schema_refused(missing)
    if as_json:
        _print_json({"revision": st.revision, "head": st.head, "state": st.state.value,
                     "is_head": st.state is schema.SchemaState.CURRENT})
    else:
        problem = schema.refusal(st, url)
        console.print(f"revision {st.revision or '(none)'}"
                      + (" (head)" if problem is None else f"; head is {st.head}: {problem}"),
                      markup=False, highlight=False, soft_wrap=True)
    if st.state is not schema.SchemaState.CURRENT:
        raise typer.Exit(1)


# the records commands: cases export/learn/theme, report, retention
from escalations.records.cli import register as _register_records  # noqa: E402

_register_records(app, cases_app, _build)


def main() -> None:
    private_umask()
    app()
