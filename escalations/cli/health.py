"""`escalations status` and `mailbox test`: is the service well."""

from __future__ import annotations

from datetime import UTC, datetime
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
    local,
    print_json,
)

mailbox_app = typer.Typer(help="The IMAP mailboxes the service watches.", no_args_is_help=True)
app.add_typer(mailbox_app, name="mailbox")


@app.command()
def status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Mailboxes' last contact, backlogs, the next timers and secret expiry. Read-only. Exit 1 if
    something needs a person (the `problems` list), for health checks."""
    from escalations import views
    data = views.health(get_settings(ctx), datetime.now(UTC))
    if as_json:
        print_json(data)
    else:
        relay = data["relay"]
        console.print("outgoing mail: " + (f"relay {relay['host']}:{relay['port']} ({relay['security']})" if relay
                                           else f"no relay: written to {data['sent_dir']}"), highlight=False)
        table = Table("mailbox", "last contact (London)", "mode", "last error", "waiting", title="Mailboxes")
        for m in data["mailboxes"]:
            last = local(datetime.fromisoformat(m["last_ok_at"])) if m["last_ok_at"] else "never"
            table.add_row(m["name"], last + (" [red]ALERT[/red]" if m["no_contact_alert"] else ""), m["mode"] or "-",
                          m["last_error_code"] or "-", str(m["waiting"]))
        console.print(table)
        q = data["quarantine"]
        console.print(f"quarantine: {q['count']}" + (" (" + ", ".join(f"{k}: {v}" for k, v in q["by_reason"].items())
                                                     + ")" if q["by_reason"] else ""), highlight=False)
        console.print("outbox: " + ", ".join(f"{k} {v}" for k, v in data["outbox"].items()), highlight=False)
        console.print(f"inbound waiting to be processed: {data['inbound_waiting']}", highlight=False)
        console.print("next timers: " + ("; ".join(f"{t['case']} {t['kind']} {local(datetime.fromisoformat(t['due_at']))}"
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
    from escalations.cases.schema import database_exists
    from escalations.mailer.mailbox_check import check_mailbox

    settings = get_settings(ctx)
    mailbox = next((m for m in settings.mailboxes if m.name == name), None)
    if mailbox is None:
        known = ", ".join(m.name for m in settings.mailboxes) or "none configured"
        err.print(f"No mailbox named {name!r} (mailboxes: {known}).", markup=False, highlight=False)
        raise typer.Exit(2)
    cursor = None  # no database yet (a first sign-in before the service ever ran): everything is to fetch
    if database_exists(settings.effective_database_url):
        cursor = build(ctx, read_only=True).store.imap_cursor(mailbox.name, mailbox.folder)
    result = check_mailbox(mailbox, cursor, subaddressing=settings.reply_subaddressing)
    if as_json:
        print_json(result.as_dict())
    elif result.ok:
        console.print(f"[green]OK[/green] {result.name}: signed in to {result.host}:{result.port} "
                      f"({result.security}, {result.auth_method})", highlight=False)
        if result.token_expires_at is not None:
            console.print(f"  token valid until {local(result.token_expires_at)} (London)", highlight=False)
        console.print(f"  folder {result.folder}: {result.messages} message(s), {result.to_fetch} to fetch; "
                      f"IDLE {'supported' if result.idle else 'not supported (polling)'}", highlight=False)
    for note in result.notes:
        if not as_json:
            console.print(f"  note: {note}", markup=False, highlight=False, soft_wrap=True)
    if not result.ok:
        if not as_json:
            err.print(f"{result.name}: {result.problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)

