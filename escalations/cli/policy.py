"""Administrators' tools: ``escalations config check`` and ``escalations policy show / timeline``."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from escalations.cli.base import JsonOpt, SettingsNotValid, app
from escalations.policy_files import ConfigError, ConfigIssue, load_config
from escalations.routing.policy.model import CHILD_STATUSES, Partnership, PolicyConfig, Stage, Timescale
from escalations.routing.policy.plan import StagePlan, timeline
from escalations.settings import Settings, default_config_dir

config_app = typer.Typer(help="Check the partnership configuration (YAML under config/).", no_args_is_help=True)
policy_app = typer.Typer(help="Show a partnership's encoded escalation policy and preview its deadlines.",
                         no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(policy_app, name="policy")


def _config_dir(ctx: typer.Context) -> Path:
    """The --config folder (or ESCALATIONS_CONFIG), also when other settings are not valid."""
    obj = ctx.find_root().obj
    if isinstance(obj, Settings):
        return obj.config_dir
    if isinstance(obj, SettingsNotValid) and obj.config_dir is not None:
        return obj.config_dir
    return default_config_dir()


def _rel(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _issue_text(i: ConfigIssue) -> str:
    return str(ConfigIssue(_rel(i.file), i.line, i.field, i.message))


def _issue_json(i: ConfigIssue) -> dict[str, Any]:
    return {"file": _rel(i.file), "line": i.line, "field": i.field, "message": i.message}


def _load(ctx: typer.Context, err: Console) -> PolicyConfig:
    # A ConfigError goes to the CLI's one set-up error printer (file:line, exit 2).
    return load_config(_config_dir(ctx))


def _partnership(cfg: PolicyConfig, pid: str, err: Console) -> Partnership:
    p = cfg.partnerships.get(pid)
    if p is None:
        err.print(f"unknown partnership {pid!r}; known: {', '.join(sorted(cfg.partnerships))}")
        raise typer.Exit(2)
    return p


_PLACEHOLDER_DOMAINS = ("example.org", "example.net")
_ADDRESS = re.compile(r"[\w.+-]+@(?:[\w-]+\.)*(example\.(?:org|net))\b", re.IGNORECASE)


def placeholder_warnings(config_dir: Path) -> list[ConfigIssue]:
    """Contacts still on the shipped example domains: a live service would mail nobody real."""
    out = []
    for path in sorted([*config_dir.glob("agencies/*.yaml"), *config_dir.glob("partnerships/*.yaml")]):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue  # load_config reports it
        domains = [n for n, line in enumerate(lines, 1)
                   if line.lstrip().startswith(("domains:", "- example.")) and
                   any(d in line.split("#", 1)[0] for d in _PLACEHOLDER_DOMAINS)]
        addresses = [n for n, line in enumerate(lines, 1) if _ADDRESS.search(line.split("#", 1)[0])]
        if domains:
            out.append(ConfigIssue(str(path), domains[0], "domains", f"{len(domains)} agency domain list(s) are "
                                   "still the placeholder example.org/example.net: write the agencies' real domains"))
        if addresses:
            out.append(ConfigIssue(str(path), addresses[0], "contacts", f"{len(addresses)} address(es) are still "
                                   "placeholders on example.org/example.net: replace them with the real people"))
    return out


def _settings_of(ctx: typer.Context) -> tuple[Any, list[Any]]:
    """The Settings object (None when they are not valid) and the set-up errors found building it."""
    obj = ctx.find_root().obj
    errors = list(getattr(obj, "errors", None) or [])
    return (None if errors or not hasattr(obj, "mailboxes") else obj), errors


_SECRET_FILES = ("password_file", "client_secret_file", "certificate_file", "service_account_file",
                 "refresh_token_file", "ca_file")


def _secret_errors(settings: Any) -> list[Any]:
    """Secrets the settings name but this machine does not have: sign-in would fail at run time."""
    from escalations.errors import SetupError

    accounts = [(f"mailbox {m.name}: auth.", m.auth) for m in settings.mailboxes]
    if settings.relay is not None:
        accounts.append(("ESCALATIONS_RELAY__AUTH__", settings.relay.auth))
    out = []
    for prefix, auth in accounts:
        def name(field: str, prefix: str = prefix) -> str:
            return prefix + (field.upper() if prefix.endswith("__") else field)

        for field in ("password_env", "client_secret_env"):
            env = getattr(auth, field)
            if env and not os.environ.get(env):
                out.append(SetupError(name(field), f"names the environment variable {env}, which is not set "
                                                   "(put it in the service's environment file)"))
        for field in _SECRET_FILES:
            path = getattr(auth, field)
            if path is not None and not os.access(path, os.R_OK):
                out.append(SetupError(name(field), f"{path} does not exist or is not readable by this user"))
    relay_ca = settings.relay.ca_file if settings.relay is not None else None
    if relay_ca is not None and not os.access(relay_ca, os.R_OK):
        out.append(SetupError("ESCALATIONS_RELAY__CA_FILE", f"{relay_ca} does not exist or is not readable"))
    return out


def _mail_warnings(settings: Any, cfg: PolicyConfig) -> list[str]:
    out = []
    for m in settings.mailboxes:
        if cfg.partnership_for_address(m.username) is None:
            out.append(f"mailbox {m.name}: username {m.username} is no partnership's mailbox in the configuration; "
                       "mail found there is quarantined (no_partnership_mailbox)")
    return out


@dataclass
class _Check:
    """What `config check` found, before it is printed."""

    config_dir: Path
    setup_errors: list[Any]
    issues: list[ConfigIssue]
    cfg: PolicyConfig | None
    warnings: list[ConfigIssue]
    mail_notes: list[str]
    mail: dict[str, Any] | None

    def failed(self, strict: bool) -> bool:
        return bool(self.setup_errors or self.issues or (strict and (self.warnings or self.mail_notes)))


def _mail_settings(settings: Any) -> dict[str, Any]:
    r = settings.relay
    return {"relay": {"host": r.host, "port": r.port, "security": r.security, "auth": r.auth.method.value}
            if r else None, "sent_dir": None if r else str(settings.sent_dir),
            "mailboxes": [{"name": m.name, "host": m.host, "port": m.port, "username": m.username,
                           "folder": m.folder, "auth": m.auth.method.value} for m in settings.mailboxes],
            "mailboxes_file": str(settings.mailboxes_file) if settings.mailboxes_file else None}


def _run_check(ctx: typer.Context) -> _Check:
    settings, setup_errors = _settings_of(ctx)
    if settings is not None:
        setup_errors = _secret_errors(settings)
    config_dir = _config_dir(ctx)
    issues: list[ConfigIssue] = []
    cfg: PolicyConfig | None = None
    try:
        cfg = load_config(config_dir)
    except ConfigError as exc:
        issues = exc.issues
    warnings = [*(cfg.warnings if cfg else []), *placeholder_warnings(config_dir)]
    mail_notes = _mail_warnings(settings, cfg) if settings is not None and cfg is not None else []
    mail = _mail_settings(settings) if settings is not None else None
    return _Check(config_dir, setup_errors, issues, cfg, warnings, mail_notes, mail)


def _check_json(c: _Check, strict: bool) -> str:
    return json.dumps({
        "ok": not c.failed(strict),
        "settings_errors": [{"setting": e.setting, "message": e.message} for e in c.setup_errors],
        "errors": [_issue_json(i) for i in c.issues],
        "partnerships": {pid: {"policy_version": p.policy_version, "rules_version": p.rules_version,
                               "directory_version": p.directory_version, "mailboxes": p.mailboxes,
                               "routes": [r.id for r in p.routes], "agencies": len(p.agencies)}
                         for pid, p in (c.cfg.partnerships.items() if c.cfg else [])},
        "mail": c.mail,
        "warnings": [_issue_json(w) for w in c.warnings] + [{"message": n} for n in c.mail_notes],
    })


def _print_check(c: _Check, out: Console, err: Console) -> None:
    def say(console: Console, text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    for e in c.setup_errors:
        say(err, f"error: {e.setting}: {e.message}")
    for i in c.issues:
        say(err, _issue_text(i))
    if c.cfg is not None:
        table = Table(title=f"Configuration OK: {c.config_dir}")
        for col in ("Partnership", "Mailbox", "Policy version", "Routes", "Stages", "Agencies"):
            table.add_column(col)
        for p in c.cfg.partnerships.values():
            table.add_row(p.id, ", ".join(p.mailboxes), p.policy_version, ", ".join(r.id for r in p.routes),
                          str(sum(len(r.stages) for r in p.routes)), str(len(p.agencies)))
        out.print(table)
    if c.mail is not None:
        relay = c.mail["relay"]
        say(out, f"outgoing mail: relay {relay['host']}:{relay['port']} ({relay['security']})" if relay
            else f"outgoing mail: no relay: written to {c.mail['sent_dir']}")
        say(out, "mailboxes: " + (", ".join(f"{m['name']} ({m['username']} on {m['host']}:{m['port']})"
                                            for m in c.mail["mailboxes"]) or "none"))
    for w in c.warnings:
        say(out, f"warning: {_issue_text(w)}")
    for n in c.mail_notes:
        say(out, f"warning: {n}")
    if c.setup_errors:
        err.print(f"{len(c.setup_errors)} settings error(s).")
    if c.issues:
        err.print(f"{len(c.issues)} configuration error(s).")


@config_app.command("check")
def config_check(ctx: typer.Context, as_json: JsonOpt = False,
                 strict: Annotated[bool, typer.Option("--strict", help="Warnings fail the check too.")] = False
                 ) -> None:
    """Validate partnerships, agencies, mailboxes and the relay together; errors name file, line and
    field. Exit 2 when the settings are wrong, 1 when the configuration is (or, with --strict, has warnings)."""
    out, err = Console(), Console(stderr=True)
    c = _run_check(ctx)
    if as_json:
        out.print_json(_check_json(c, strict))
    else:
        _print_check(c, out, err)
    if c.setup_errors:
        raise typer.Exit(2)
    if c.failed(strict):
        raise typer.Exit(1)


def _who(parties: list[str]) -> str:
    return ", ".join(parties)


def _timescale(stage: Stage) -> str:
    parts = []
    if stage.reach_within:
        parts.append(f"reach within {stage.reach_within.describe()}")
    ts: Timescale | None = stage.timescale or (stage.decision_maker.decision_within if stage.decision_maker else None)
    parts.append(ts.describe() if ts else "none set by the policy")
    return "; ".join(parts)


def _stage_json(p: Partnership, number: int, stage: Stage) -> dict[str, Any]:
    data = stage.model_dump(mode="json", exclude_none=True)
    return {"stage": number, **data, "timescale_text": _timescale(stage)}


@policy_app.command("show")
def policy_show(
    ctx: typer.Context,
    partnership: Annotated[str, typer.Argument(help="Partnership id, e.g. city-and-hackney")],
    as_json: JsonOpt = False,
) -> None:
    """The encoded ladder(s): stage, who is asked, timescale, clause."""
    out, err = Console(), Console(stderr=True)
    p = _partnership(_load(ctx, err), partnership, err)
    if as_json:
        ir = p.immediate_risk
        out.print_json(json.dumps({
            "partnership": p.id, "name": p.name, "policy_version": p.policy_version,
            "rules_version": p.rules_version, "directory_version": p.directory_version,
            "policy": p.policy.model_dump(mode="json"), "mailboxes": p.mailboxes,
            "secure_mail": p.secure_mail.model_dump(mode="json") if p.secure_mail else None,
            "secure_route": p.secure_route.model_dump(mode="json") if p.secure_route else None,
            "immediate_risk": ir.model_dump(mode="json", exclude_none=True) if ir else None,
            "routes": [{"id": r.id, "name": r.name, "default": r is p.default_route, "clause": r.clause,
                        "keywords": r.keywords,
                        "stages": [_stage_json(p, n, s) for n, s in enumerate(r.stages, start=1)]}
                       for r in p.routes],
        }, ensure_ascii=False))
        return
    date_text = f", {p.policy.date:%B %Y}" if p.policy.date else ""
    out.print(f"[bold]{p.name}[/bold] — {p.policy.title} ({p.policy.version}{date_text})")
    out.print(f"Policy version {p.policy_version} (rules {p.rules_version}, people {p.directory_version}); mailbox {', '.join(p.mailboxes)}; "
              f"working day ends {p.working_day_end:%H:%M} ({p.bank_holidays} bank holidays)")
    if p.secure_mail:
        out.print(f"Secure mail: {p.secure_mail.means} [{p.secure_mail.clause}]")
    if p.secure_route:
        out.print(f"Secure route (full details only to): {', '.join(p.secure_route.domains)} "
                  f"[{p.secure_route.clause}]")
    for r in p.routes:
        table = Table(title=f"{r.name} ({r.id}{', default' if r is p.default_route else ''}) — {r.clause}",
                      show_lines=True)
        for col in ("#", "Stage", "Who is asked", "Timescale", "Also notified", "Clause"):
            table.add_column(col)
        if p.immediate_risk and r is p.default_route:
            ir = p.immediate_risk
            then = f"then {ir.bypass_to if ir.bypass_mandatory else ir.continue_at or 'stage 1'}"
            table.add_row("0", f"Immediate risk ({then})", _who(ir.asked), ir.timescale.describe(), "", ir.clause)
        for n, s in enumerate(r.stages, start=1):
            notes = []
            for note in s.notifications:
                cond = f" if {' or '.join(note.when_child_status)}" if note.when_child_status else ""
                if note.when_immediate_risk is not None:
                    cond += " if immediate risk" if note.when_immediate_risk else " if no immediate risk"
                notes.append(f"{_who(note.notify)}{cond} [{note.clause}]")
            name = f"{s.label}: {s.name}" if s.label else s.name
            table.add_row(str(n), name, _who(s.asked), _timescale(s), "\n".join(notes), s.clause)
        out.print(table)


def _parse_when(value: str, what: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO date-time (e.g. 2026-12-23T17:30)", param_hint=what) from None


def _parse_needed_by(value: str) -> date | datetime:
    try:
        return date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO date or date-time", param_hint="--needed-by") from None


def _iso(p: Partnership, t: datetime | None) -> str | None:
    return t.astimezone(p.tz).isoformat() if t else None


def _plan_json(p: Partnership, plan: StagePlan) -> dict[str, Any]:
    return {
        "stage": plan.number, "id": plan.stage_id, "name": plan.name, "label": plan.label,
        "asked": list(plan.asked_parties), "notified": list(plan.notified_parties),
        "opens": _iso(p, plan.opens), "due": _iso(p, plan.due), "policy_due": _iso(p, plan.policy_due),
        "due_rule": plan.due_rule, "due_clause": plan.due_clause,
        "shortened_by_needed_by": plan.shortened_by_needed_by, "escalate_by": _iso(p, plan.escalate_by),
        "clause": plan.clause, "notification_clauses": list(plan.notification_clauses),
        "asked_contacts": [r.email for r in plan.asked], "notified_contacts": [r.email for r in plan.notified],
    }


def _local(p: Partnership, t: datetime | None) -> str:
    if t is None:
        return "—"
    lt = t.astimezone(p.tz)
    return f"{lt:%a} {lt.day} {lt:%b %Y %H:%M %Z}"


@policy_app.command("timeline")
def policy_timeline(
    ctx: typer.Context,
    partnership: Annotated[str, typer.Argument(help="Partnership id, e.g. tri-borough")],
    opened: Annotated[str, typer.Option("--opened", help="When the case opened (ISO; naive = local time)")],
    immediate_risk: Annotated[bool, typer.Option("--immediate-risk", help="The child is at immediate risk")] = False,
    child_status: Annotated[str | None, typer.Option(
        "--child-status", help=f"One of {', '.join(CHILD_STATUSES)}")] = None,
    needed_by: Annotated[str | None, typer.Option(
        "--needed-by", help="The referral's timescale that protects the child (ISO date or date-time)")] = None,
    route: Annotated[str | None, typer.Option("--route", help="Route id (default: the default route)")] = None,
    borough: Annotated[str | None, typer.Option("--borough", help="Borough (Tri-borough)")] = None,
    raising_agency: Annotated[str | None, typer.Option("--raising-agency", help="Agency raising the concern")] = None,
    other_agency: Annotated[str | None, typer.Option("--other-agency", help="Agency the concern is about")] = None,
    as_json: JsonOpt = False,
) -> None:
    """What happens if nobody resolves anything: each stage, who is asked and notified, and when it falls due."""
    out, err = Console(), Console(stderr=True)
    p = _partnership(_load(ctx, err), partnership, err)
    if child_status is not None and child_status not in CHILD_STATUSES:
        raise typer.BadParameter(f"{child_status!r} is not one of {', '.join(CHILD_STATUSES)}",
                                 param_hint="--child-status")
    if route is not None and route not in {r.id for r in p.routes}:
        raise typer.BadParameter(f"{route!r} is not a route of {p.id} ({', '.join(r.id for r in p.routes)})",
                                 param_hint="--route")
    plans = timeline(p, _parse_when(opened, "--opened"), route_id=route, child_status=child_status,
                     immediate_risk=immediate_risk, needed_by=_parse_needed_by(needed_by) if needed_by else None,
                     raising_agency=raising_agency, other_agency=other_agency, borough=borough)
    route_id = plans[-1].route_id if plans else p.route(route).id
    if as_json:
        out.print_json(json.dumps({"partnership": p.id, "route": route_id, "policy_version": p.policy_version,
                                   "stages": [_plan_json(p, pl) for pl in plans]}, ensure_ascii=False))
        return
    table = Table(title=f"{p.name}: {route_id} — if nobody resolves anything", show_lines=True)
    for col in ("#", "Stage", "Asked", "Notified", "Opens", "Due", "Rule", "Clause"):
        table.add_column(col)
    for pl in plans:
        due = _local(p, pl.due)
        if pl.escalate_by:
            due += f"\n(reach by {_local(p, pl.escalate_by)})"
        table.add_row(str(pl.number), pl.name, _who(list(pl.asked_parties)), _who(list(pl.notified_parties)),
                      _local(p, pl.opens), due, pl.due_rule, pl.due_clause or pl.clause)
    out.print(table)
