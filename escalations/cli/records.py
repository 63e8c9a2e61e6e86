"""`escalations cases export / learn / theme`, `report`, `retention purge / hold / release`.

Files written hold personal data: private modes, and never a child's detail in what is printed.
Heavy modules (python-docx, matplotlib) are imported when a command runs.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from escalations.cli.base import app, build, err
from escalations.cli.base import console as out
from escalations.cli.cases import cases_app
from escalations.records.files import ExportFormat, write_private

__all__ = ["register"]


def _staff_id(by: str | None) -> str:
    return by or f"cli:{getpass.getuser()}"


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(f"--now must be an ISO date/time, not {value!r}", 2) from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def register(app: typer.Typer, cases_app: typer.Typer, build: Callable[..., Any]) -> None:
    _register_cases(cases_app, build)
    _register_report(app, build)
    _register_retention(app, build)


def _register_export(cases_app: typer.Typer, build: Callable[..., Any]) -> None:
    @cases_app.command("export")
    def cases_export(
        ctx: typer.Context,
        reference: Annotated[str, typer.Argument(help="e.g. TRI-2026-0001")],
        fmt: Annotated[ExportFormat, typer.Option("--format", help="docx, pdf or json")] = ExportFormat.DOCX,
        out_file: Annotated[Path | None, typer.Option("--out", help="File to write (default: named after "
                                                                     "the case, in the current folder)")] = None,
        form: Annotated[str | None, typer.Option(help="Which form (default: the partnership's first)")] = None,
    ) -> None:
        """Write the case's form (Word or PDF) or its whole record (JSON) to a private file."""
        from escalations import views
        from escalations.records.export import ExportError, export_case
        from escalations.records.forms import FormKind
        from escalations.records.read import load_record

        application = build(ctx, read_only=True)
        record = load_record(application.store, reference)
        if record is None:
            raise _fail(f"No case with reference {reference}")
        kind = None
        if form is not None:
            try:
                kind = FormKind(form)
            except ValueError:
                raise _fail(f"--form must be one of: {', '.join(k.value for k in FormKind)}") from None
        p = application.config.partnerships[record.partnership]
        case = application.store.case_by_reference(record.reference)
        view = views.case_record(application.store, case) if case is not None and fmt is ExportFormat.JSON else None
        try:
            exported = export_case(record, p, fmt, application.clock.now().astimezone(p.tz).date(), kind, view)
        except ExportError as exc:
            raise _fail(str(exc), 2) from None
        target = out_file or Path(exported.filename)
        write_private(target, exported.data)
        out.print(f"{record.reference}: wrote {target} ({len(exported.data)} bytes)", markup=False, highlight=False)


def _register_cases(cases_app: typer.Typer, build: Callable[..., Any]) -> None:
    _register_export(cases_app, build)

    def _staff(ctx: typer.Context, reference: str, command: str, text: str, by: str | None, expect: str) -> None:
        from escalations.records.actions import ActionRefused, NoSuchCase, staff_command

        application = build(ctx)
        try:
            staff_command(application.workflow, reference, command, text, by=_staff_id(by),
                          now=application.clock.now(), expect=expect)
        except NoSuchCase:
            raise _fail(f"No case with reference {reference}") from None
        except ActionRefused as exc:
            raise _fail(f"{reference}: not applied: {exc.why}") from None
        application.send_outbox()
        out.print(f"{reference.upper()}: {command} recorded", markup=False, highlight=False)

    @cases_app.command("learn")
    def cases_learn(ctx: typer.Context, reference: Annotated[str, typer.Argument(help="e.g. SUT-2026-0001")],
                    text: Annotated[str, typer.Argument(help="The learning point")],
                    by: Annotated[str | None, typer.Option(help="Who is recording it (default: cli:<user>)")] = None
                    ) -> None:
        """Add a learning point to the case (a staff action, in its history)."""
        _staff(ctx, reference, "LEARNING", text, by, "learning")

    @cases_app.command("theme")
    def cases_theme(ctx: typer.Context, reference: Annotated[str, typer.Argument(help="e.g. SUT-2026-0001")],
                    theme: Annotated[str, typer.Argument(help="levels of need | roles and responsibilities | "
                                                              "need for action | communication")],
                    by: Annotated[str | None, typer.Option(help="Who is tagging it (default: cli:<user>)")] = None
                    ) -> None:
        """Tag what the disagreement is about (a staff action, in its history)."""
        _staff(ctx, reference, "THEME", theme, by, "theme")


def _register_report(app: typer.Typer, build: Callable[..., Any]) -> None:
    @app.command("report")
    def report(
        ctx: typer.Context,
        partnership: Annotated[str, typer.Argument(help="Partnership id, e.g. sutton")],
        date_from: Annotated[str, typer.Option("--from", help="First day (YYYY-MM-DD), cases opened on or after")],
        date_to: Annotated[str, typer.Option("--to", help="Last day (YYYY-MM-DD), included")],
        out_dir: Annotated[Path, typer.Option("--out", help="Folder to write report.html, CSV, JSON and charts")],
        threshold: Annotated[int, typer.Option(help="Counts below this are shown as '<N'")] = 5,
    ) -> None:
        """The partnership's escalations report: HTML, the same figures as CSV and JSON, PNG charts."""
        from escalations.records.report.write import write_report

        try:
            first, last = date.fromisoformat(date_from), date.fromisoformat(date_to)
        except ValueError:
            raise _fail("--from and --to must be dates as YYYY-MM-DD", 2) from None
        if last < first:
            raise _fail("--to must not be before --from", 2)
        application = build(ctx, read_only=True)
        if partnership not in application.config.partnerships:
            raise _fail(f"No partnership {partnership} (known: {', '.join(sorted(application.config.partnerships))})")
        written = write_report(application.store, application.config.partnerships[partnership], first, last,
                               out_dir, threshold=threshold, progress=True)
        out.print(f"{partnership}: {written.cases} case(s); wrote {len(written.files)} files to {out_dir}",
                  markup=False, highlight=False)


def _register_retention(app: typer.Typer, build: Callable[..., Any]) -> None:
    retention_app = typer.Typer(help="Retention: delete records past their time; legal holds.",
                                no_args_is_help=True)
    app.add_typer(retention_app, name="retention")

    @retention_app.command("purge")
    def purge(ctx: typer.Context,
              dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go; delete nothing")] = False,
              now: Annotated[str | None, typer.Option("--now", help="Judge as at this time (ISO, UTC if no "
                                                                    "offset): what a later run would delete")] = None,
              ) -> None:
        """Delete raw mail, outgoing mail, forms and case records past their retention (held cases kept)."""
        from escalations.records.retention import purge as run_purge

        when = _when(now)
        application = build(ctx, read_only=dry_run)
        result = run_purge(application.store, application.config, when or application.clock.now(), dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
        out.print(f"retention: {verb} {counts}; {len(result.held)} held case(s) kept", markup=False,
                  highlight=False)

    @retention_app.command("hold")
    def hold(ctx: typer.Context, reference: Annotated[str, typer.Argument(help="e.g. CH-2026-0001")],
             reason: Annotated[str, typer.Option(help="Why (kept with the hold)")] = "",
             by: Annotated[str | None, typer.Option(help="Who (default: cli:<user>)")] = None) -> None:
        """Put a legal hold on a case: retention never deletes it or its mail."""
        from escalations.records.actions import NoSuchCase
        from escalations.records.actions import hold as set_hold

        application = build(ctx)
        try:
            new = set_hold(application.workflow, reference, by=_staff_id(by), reason=reason,
                           now=application.clock.now())
        except NoSuchCase:
            raise _fail(f"No case with reference {reference}") from None
        out.print(f"{reference.upper()}: legal hold {'set' if new else 'already set'}", markup=False, highlight=False)

    @retention_app.command("release")
    def release(ctx: typer.Context, reference: Annotated[str, typer.Argument(help="e.g. CH-2026-0001")],
                by: Annotated[str | None, typer.Option(help="Who (default: cli:<user>)")] = None) -> None:
        """Lift a case's legal hold."""
        from escalations.records.actions import NoSuchCase
        from escalations.records.actions import release as lift

        application = build(ctx)
        try:
            lifted = lift(application.workflow, reference, by=_staff_id(by), now=application.clock.now())
        except NoSuchCase:
            raise _fail(f"No case with reference {reference}") from None
        out.print(f"{reference.upper()}: legal hold {'released' if lifted else 'was not set'}", markup=False,
                  highlight=False)


register(app, cases_app, build)
