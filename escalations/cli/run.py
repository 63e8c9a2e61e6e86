"""`escalations run`: the service, its start-up lines and the demo."""

from __future__ import annotations

import logging
import re
import signal
import smtplib
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from escalations.cli.base import (
    app,
    console,
    get_settings,
)
from escalations.logs import FramesOnly, configure_logging
from escalations.private import FILE_MODE


@app.command()
def run(
    ctx: typer.Context,
    demo: Annotated[bool, typer.Option("--demo", help="Submit each partnership's sample referral and show cases.")] = False,
    smtp_port: Annotated[int | None, typer.Option("--smtp-port", help="SMTP intake port [default: 8025]")] = None,
) -> None:
    """Run the service: IMAP watchers, SMTP intake, processor, outbox sender, scheduler, web interface."""
    settings = get_settings(ctx)
    if smtp_port is not None:
        settings.smtp_listen_port = smtp_port
    if demo:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        configure_logging("json", logging.INFO)
        _log_to_file(settings.data_dir / "escalations.log")
    else:
        configure_logging(settings.log_format if settings.log_format != "console" else "json", logging.INFO)
    from escalations.app import build_app

    application = build_app(settings, schema_in_child=True)
    from escalations.cli.web import DEMO_EMAIL, demo_account, web_lines, web_server

    server = web_server(application) if settings.web.enabled else None
    stop = threading.Event()

    def _stop(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    drive = _demo_driver(stop) if demo else None

    def on_started(started: Any) -> None:
        for line in [*startup_lines(started), *(web_lines(server) if server is not None else [])]:
            print(line, file=sys.stderr, flush=True)  # plain lines: the service never loads rich for them
        if demo and server is not None:
            console.print(f"demo sign-in: {server.url}/sign-in as {DEMO_EMAIL} with password {demo_account(started)} "
                          "(the first sign-in sets up an authenticator app)", markup=False, highlight=False,
                          soft_wrap=True)
        if drive is not None:
            drive(started)

    application.run(stop, on_started=on_started, components={"web": server.run} if server is not None else None,
                    freeze_heap=True)


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

    from escalations import views
    from escalations.app import App, demo_messages
    from escalations.cli.cases import cases_table

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
                with Live(cases_table(application.store), console=console, refresh_per_second=2) as live:
                    while not stop.is_set():
                        live.update(cases_table(application.store))
                        time.sleep(0.5)
                return
            # Not a terminal (piped, logged): one line per change instead of a redrawn table.
            seen: set[tuple[str, ...]] = set()
            console.print("Cases (reference, partnership, status, stage, acknowledgement):")
            while not stop.is_set():
                for row in views.case_rows(application.store):
                    if row not in seen:
                        seen.add(row)
                        console.print("  " + "  ".join(row), markup=False, soft_wrap=True)
                time.sleep(0.5)

        threading.Thread(target=watch, name="demo-view", daemon=True).start()

    return drive
