"""`escalations cases list / show`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from escalations.cli.base import (
    JsonOpt,
    app,
    build,
    console,
    err,
    iso,
    local,
    print_json,
)

if TYPE_CHECKING:
    from escalations.cases.store import Store

cases_app = typer.Typer(help="Cases: list and show.", no_args_is_help=True)
app.add_typer(cases_app, name="cases")


def cases_table(store: Store, partnership: str | None = None, status: str | None = None) -> Table:
    from escalations import views
    rows = views.case_rows(store, partnership, status)
    table = Table(title="Cases")
    # the reference is what a person types next (cases show): a narrow terminal wraps the others first
    table.add_column("Reference", no_wrap=True, min_width=max((len(r[0]) for r in rows), default=9))
    for col in ("Partnership", "Status", "Stage", "Opened (London)", "Missing", "Acknowledgement"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    return table


@cases_app.command("list")
def cases_list(
    ctx: typer.Context,
    partnership: Annotated[str | None, typer.Option(help="Only this partnership id")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List cases with stage, status and due time."""
    application = build(ctx, read_only=True)
    if as_json:
        rows = application.store.list_cases(partnership, status)
        print_json([{"reference": c.reference, "partnership": c.partnership, "status": c.status, "stage": c.stage,
                      "opened_at": iso(c.opened_at), "due_at": iso(c.due_at), "missing": c.missing} for c in rows])
        return
    console.print(cases_table(application.store, partnership, status))


@cases_app.command("show")
def cases_show(ctx: typer.Context, reference: Annotated[str, typer.Argument(help="e.g. CH-2026-0001")],
               as_json: JsonOpt = False) -> None:
    """Show one case with its event history and mail."""
    from escalations import views
    application = build(ctx, read_only=True)
    case = application.store.case_by_reference(reference)
    if case is None:
        err.print(f"No case with reference {reference}")
        raise typer.Exit(1)
    data = views.case_record(application.store, case)
    if as_json:
        print_json(data)
        return
    console.print(f"[bold]{data['reference']}[/bold]  {data['partnership']}  status={data['status']}  "
                  f"stage={data['stage'] or '-'}  due={local(case.due_at)}")
    processed = f" (received {local(origin_row.received_at)}, processed {local(origin_row.processed_at)})" \
        if case.origin_inbound_id is not None \
        and (origin_row := application.store.get_inbound(case.origin_inbound_id)) is not None else ""
    console.print(f"opened {local(case.opened_at)}{processed}; missing: {', '.join(data['missing']) or 'nothing'}")
    if data["unverified_correspondence"]:
        unverified = Table("received (London)", "from", "reason", "command", title="Unverified correspondence "
                           "(kept, never applied)")
        for u in data["unverified_correspondence"]:
            unverified.add_row(u["received_at"] or u["at"], u["from"] or "-", u["reason"] or "-", u["command"] or "-")
        console.print(unverified)
    events = Table("when (London)", "event", "actor", "clause", "detail", title="History")
    for e in application.store.case_events(case.id):
        events.add_row(local(e.at), e.kind, e.actor or "-", e.clause or "-", json.dumps(e.detail, default=str)[:120])
    console.print(events)
    mail = Table("created", "template", "to", "status", title="Mail")
    for m in data["mail"]:
        mail.add_row(m["created_at"], m["template"], ", ".join(m["to"]), m["status"])
    console.print(mail)

