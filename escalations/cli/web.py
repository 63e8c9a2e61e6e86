"""`escalations web` (the staff web interface alone), `users` (staff accounts) and `audit` (who saw
and did what in the web interface)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Annotated, Any

import typer

from escalations.cli.base import JsonOpt, app, build, console, err, get_settings, local, print_json
from escalations.logs import configure_logging
from escalations.web.roles import Role

if TYPE_CHECKING:
    from escalations.app import App
    from escalations.web.accounts import Accounts
    from escalations.web.models import WebUser
    from escalations.web.server import WebServer

users_app = typer.Typer(help="Staff accounts of the web interface.", no_args_is_help=True)
audit_app = typer.Typer(help="The web interface's audit trail: who saw or did what, when, from where.",
                        no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(audit_app, name="audit")

#: The demo's coordinator (`escalations run --demo`).
DEMO_EMAIL = "demo-coordinator@example.org"


def accounts_of(application: App) -> Accounts:
    from escalations.web.accounts import Accounts

    return Accounts(application.store.engine, application.store.lease_clock, application.settings.web,
                    service_secret=application.settings.token_secret())


def web_server(application: App) -> WebServer:
    from escalations.web.server import WebServer

    return WebServer(application, application.settings)


def web_lines(server: WebServer) -> list[str]:
    s = server.asgi.state.web.settings
    where = s.public_url or server.url
    how = ", ".join([*(["OpenID Connect"] if s.oidc is not None else []),
                     *(["local accounts (escalations users add)"] if s.local_accounts else [])]) or "nobody"
    return [f"web interface: {where} (listening on {server.host}:{server.port}; sign-in: {how})"]


def demo_account(application: App) -> str:
    """The demo coordinator (every partnership), with a new random password: returned to print once."""
    from escalations.web.passwords import hash_password, new_password

    accounts = accounts_of(application)
    password = new_password()
    user = accounts.user(DEMO_EMAIL)
    if user is None or user.id is None:
        accounts.add_user(DEMO_EMAIL, Role.COORDINATOR, sorted(application.config.partnerships),
                          password_hash=hash_password(password))
    else:
        accounts.set_password_hash(user.id, hash_password(password))
    return password


@app.command()
def web(ctx: typer.Context,
        bind: Annotated[str | None, typer.Option("--bind", help="host:port [default: web.bind, 127.0.0.1:8080]")] = None,
        ) -> None:
    """Serve the staff web interface alone (`escalations run` serves it beside the mail service)."""
    settings = get_settings(ctx)
    if bind is not None:
        settings.web = settings.web.model_copy(update={"bind": bind})
    configure_logging(settings.log_format if settings.log_format != "console" else "json", logging.INFO)
    from escalations.app import build_app

    application = build_app(settings)
    server = web_server(application)
    stop = threading.Event()

    def _stop(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    for line in web_lines(server):
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    try:
        server.run(stop)
    finally:
        application.close()


def _partnerships(application: App, given: list[str] | None) -> list[str]:
    known = sorted(application.config.partnerships)
    if not given:
        return known
    unknown = [p for p in given if p not in application.config.partnerships]
    if unknown:
        raise typer.BadParameter(f"no partnership {', '.join(unknown)} (one of: {', '.join(known)})",
                                 param_hint="--partnership")
    return sorted(set(given))


@users_app.command("add")
def users_add(ctx: typer.Context, email: Annotated[str, typer.Argument(help="Their work email address")],
              role: Annotated[Role, typer.Option("--role", help="viewer | coordinator | admin")],
              partnership: Annotated[list[str] | None, typer.Option(
                  "--partnership", help="A partnership id they see (repeat for more) [default: every one]")] = None,
              oidc: Annotated[bool, typer.Option(
                  "--oidc", help="No password: they sign in through OpenID Connect with this role")] = False) -> None:
    """Add a staff account. A local account gets a random first password, printed once; they set up
    their authenticator app (TOTP) when they first sign in."""
    from escalations.web.accounts import AccountError
    from escalations.web.passwords import hash_password, new_password

    if role is Role.PRACTITIONER:
        raise typer.BadParameter("practitioners sign in with a link mailed to the address on their case",
                                 param_hint="--role")
    application = build(ctx)
    partnerships = _partnerships(application, partnership)
    password = None if oidc else new_password()
    try:
        accounts_of(application).add_user(email, role, partnerships,
                                          password_hash=hash_password(password) if password else None)
    except AccountError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from None
    console.print(f"added {email.strip().lower()}: {role.value} of {', '.join(partnerships)}", highlight=False)
    if password:
        console.print(f"first password (shown once): {password}", highlight=False, markup=False)


@users_app.command("list")
def users_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every staff account, its role and partnerships, how it signs in, its last sign-in."""
    application = build(ctx, read_only=True)
    users = accounts_of(application).users()
    rows: list[dict[str, Any]] = [
        {"email": u.email, "role": u.role, "partnerships": u.partnerships, "sign_in": _sign_in_kind(u),
         "last_sign_in_at": u.last_sign_in_at.isoformat() if u.last_sign_in_at else None,
         "disabled": u.disabled_at is not None} for u in users]
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table("email", "role", "partnerships", "sign-in", "last sign-in (London)", "disabled", title="Staff accounts")
    for u in users:
        table.add_row(u.email, u.role, ", ".join(u.partnerships), _sign_in_kind(u),
                      local(u.last_sign_in_at) if u.last_sign_in_at else "never", "yes" if u.disabled_at else "")
    console.print(table)


def _sign_in_kind(u: WebUser) -> str:
    if not u.password_hash:
        return "OpenID Connect"
    return "password + TOTP" if u.totp_confirmed_at else "password (TOTP not set up)"


@users_app.command("disable")
def users_disable(ctx: typer.Context, email: Annotated[str, typer.Argument(help="The account's email address")]) -> None:
    """Disable an account and end its sessions now."""
    application = build(ctx)
    if not accounts_of(application).disable_user(email):
        err.print(f"no account {email.strip().lower()}", markup=False, highlight=False)
        raise typer.Exit(1)
    console.print(f"disabled {email.strip().lower()}; its sessions are ended", highlight=False)


@users_app.command("reset")
def users_reset(ctx: typer.Context, email: Annotated[str, typer.Argument(help="The account's email address")]) -> None:
    """A new random password (printed once) and a new authenticator set-up at the next sign-in."""
    from escalations.web.passwords import hash_password, new_password

    application = build(ctx)
    accounts = accounts_of(application)
    user = accounts.user(email)
    if user is None or user.id is None:
        err.print(f"no account {email.strip().lower()}", markup=False, highlight=False)
        raise typer.Exit(1)
    password = new_password()
    accounts.reset_local(user.id, hash_password(password))
    console.print(f"new password for {user.email} (shown once): {password}", highlight=False, markup=False)


@audit_app.command("list")
def audit_list(ctx: typer.Context,
               case: Annotated[str | None, typer.Option("--case", help="A case reference")] = None,
               user: Annotated[str | None, typer.Option("--user", help="A person's email address")] = None,
               limit: Annotated[int, typer.Option("--limit", help="At most this many rows, newest first")] = 200,
               as_json: JsonOpt = False) -> None:
    """Audit rows, newest first: every view of personal data and every action in the web interface."""
    from escalations.web.accounts import AuditFilter

    application = build(ctx, read_only=True)
    rows = accounts_of(application).audit_rows(AuditFilter(case_ref=case, user_email=user, limit=limit))
    data = [{"at": r.at.isoformat(), "user": r.user_email, "role": r.role, "action": r.action, "case": r.case_ref,
             "detail": r.detail, "ip": r.ip, "route": r.route} for r in rows]
    if as_json:
        print_json(data)
        return
    from rich.table import Table

    table = Table("when (London)", "who", "role", "action", "case", "detail", "from", title="Audit trail")
    for r, d in zip(rows, data, strict=True):
        table.add_row(local(r.at), d["user"], d["role"], d["action"], d["case"] or "", d["detail"] or "", d["ip"] or "")
    console.print(table)
