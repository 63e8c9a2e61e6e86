"""`escalations tick`, `outbox`, `timers` and `quarantine`: the work waiting."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.table import Table

from escalations.cli.base import (
    JsonOpt,
    app,
    build,
    console,
    err,
    get_settings,
    local_iso,
    parse_when,
    print_json,
)
from escalations.logs import configure_logging

outbox_app = typer.Typer(help="Outgoing mail waiting or sent.", no_args_is_help=True)
timers_app = typer.Typer(help="Deadlines, reminders and escalations waiting to fire (and any that failed).",
                         no_args_is_help=True)
quarantine_app = typer.Typer(help="Mail that could not be processed, and replaying it.", no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")
app.add_typer(timers_app, name="timers")
app.add_typer(quarantine_app, name="quarantine")


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
    application = build_app(get_settings(ctx), clock=clock, lease_clock=SystemClock())
    with application.keep_alive():
        result = application.tick(clock.now())
    if as_json:
        print_json(result)
    else:
        console.print(", ".join(f"{k}: {v}" for k, v in result.items()))


@outbox_app.command("list")
def outbox_list(ctx: typer.Context,
                status: Annotated[str | None, typer.Option(help="pending | sending | sent | failed")] = None,
                as_json: JsonOpt = False) -> None:
    """What is waiting to go out, and what went."""
    from escalations import views
    application = build(ctx, read_only=True)
    data = views.outbox_rows(application.store, status)
    if as_json:
        print_json(data)
        return
    table = Table("id", "subject", "to", "status", "attempts", "next attempt", "last error", title="Outbox")
    for d in data:
        table.add_row(str(d["id"]), d["subject"], ", ".join(d["to"]), d["status"], str(d["attempts"]),
                      local_iso(d["next_attempt_at"]) if d["status"] == "pending" else "-",
                      (d["last_error"] or "")[:60])
    console.print(table)


@timers_app.command("list")
def timers_list(ctx: typer.Context,
                status: Annotated[str | None, typer.Option(help="pending | firing | done | cancelled | failed")] = None,
                case: Annotated[str | None, typer.Option("--case", help="Only this case reference")] = None,
                as_json: JsonOpt = False) -> None:
    """Timers by due time. A `failed` timer raised while firing: fix the cause, then `timers retry ID`."""
    from escalations import views
    application = build(ctx, read_only=True)
    case_id = None
    if case:
        found = application.store.case_by_reference(case)
        if found is None:
            err.print(f"No case with reference {case}")
            raise typer.Exit(1)
        case_id = found.id
    data = views.timer_rows(application.store, case_id, status)
    if as_json:
        print_json(data)
        return
    table = Table("id", "case", "kind", "due (London)", "status", title="Timers")
    for d in data:
        table.add_row(str(d["id"]), d["case"] or "-", d["kind"], local_iso(d["due_at"]), d["status"])
    console.print(table)


@timers_app.command("retry")
def timers_retry(ctx: typer.Context, timer_ids: Annotated[list[int], typer.Argument(help="Failed timer ids")]) -> None:
    """Put failed timers back in the queue; the next tick (or the running service) fires them."""
    application = build(ctx)
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
    from escalations import views
    application = build(ctx, read_only=True)
    data = views.quarantine_rows(application.store)
    if as_json:
        print_json(data)
        return
    table = Table("id", "received (London)", "source", "partnership", "reason", title="Quarantine")
    for d in data:
        table.add_row(str(d["id"]), local_iso(d["received_at"]), d["source"], d["partnership"] or "-", d["reason"])
    console.print(table)


@quarantine_app.command("replay")
def quarantine_replay(ctx: typer.Context,
                      ids: Annotated[list[int], typer.Argument(help="Quarantined message id(s)")],
                      as_json: JsonOpt = False) -> None:
    """Process quarantined messages again (after fixing configuration or code)."""
    from escalations.cases.processor import DatabaseLost

    application = build(ctx)
    results = []
    with application.keep_alive():
        for inbound_id in ids:
            # handed back claimed by this command (its attempt counted): a running service leaves it alone
            if not application.store.release_for_replay(inbound_id, claim=True):
                results.append({"id": inbound_id, "status": "not-quarantined"})
                continue
            try:
                outcome = application.processor.process_one(inbound_id)
            except DatabaseLost:
                # nothing of it committed; handed back pending for the service (or the next replay)
                results.append({"id": inbound_id, "status": "database_lost"})
                break
            results.append({"id": inbound_id, "status": outcome.status, "kind": outcome.kind,
                            "case": outcome.case_reference, "detail": outcome.detail})
        sent = application.send_outbox()
    if as_json:
        print_json({"replayed": results, "sent": sent})
    else:
        for r in results:
            console.print(", ".join(f"{k}={v}" for k, v in r.items() if v is not None))
    if any(r["status"] != "done" for r in results):
        raise typer.Exit(1)

