"""`escalations parse` and `ingest`: one saved message at a time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from escalations.cli.base import (
    JsonOpt,
    app,
    build,
    console,
    get_settings,
    parse_when,
    print_json,
)


@app.command()
def parse(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A saved .eml message")],
    as_json: JsonOpt = False,
) -> None:
    """Parse one message and show what was understood. No side effects."""
    from escalations.inspect import inspect_message
    from escalations.policy_files import load_config

    config = load_config(get_settings(ctx).config_dir)
    result = inspect_message(file.read_bytes(), config)
    if as_json:
        print_json(result)
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
    application = build(ctx)
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
        print_json({"messages": results, "sent": sent})
        return
    table = Table("file", "inbound", "kind", "status", "case", "detail")
    for r in results:
        table.add_row(r["file"], str(r["inbound_id"]), str(r["kind"]), str(r["status"]), str(r["case"] or "-"),
                      str(r["detail"]))
    console.print(table)
    console.print(f"{sent} message(s) sent")

