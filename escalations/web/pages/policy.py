"""Policy and configuration, read-only: each partnership's ladder in words (roles by name, not
codes), the deadline calculator of ``escalations policy timeline``, and the result of ``config check``.
Administrators still change these by editing YAML."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from escalations.policy_files import ConfigError, ConfigIssue, load_config
from escalations.routing.policy.directory import role_name
from escalations.routing.policy.model import CHILD_STATUSES, Partnership, Stage
from escalations.routing.policy.plan import StagePlan, timeline
from escalations.web.auth import STAFF, CaseNotFound, require
from escalations.web.context import application
from escalations.web.pages.common import CHILD_STATUS, LONDON, page


@dataclass(frozen=True)
class StageWords:
    number: int
    name: str
    asked: str
    action: str
    timescale: str
    notified: tuple[str, ...]
    clause: str


def _names(p: Partnership, parties: list[str]) -> str:
    return ", ".join(role_name(p, x) for x in parties) or "the practitioners"


def _timescale(stage: Stage) -> str:
    ts = stage.timescale or (stage.decision_maker.decision_within if stage.decision_maker else None)
    parts = [f"reached within {stage.reach_within.describe()}"] if stage.reach_within else []
    parts.append(ts.describe() if ts else "no timescale set by the policy")
    return "; ".join(parts)


def _notified(p: Partnership, stage: Stage) -> tuple[str, ...]:
    out = []
    for n in stage.notifications:
        cond = f" when the child has {' or '.join(CHILD_STATUS.get(s, s).lower() for s in n.when_child_status)}" \
            if n.when_child_status else ""
        if n.when_immediate_risk is not None:
            cond += " when the child is at immediate risk" if n.when_immediate_risk else " when there is no immediate risk"
        out.append(f"{_names(p, list(n.notify))}{cond} ({n.clause})")
    return tuple(out)


def ladder(p: Partnership) -> list[dict[str, Any]]:
    routes = []
    for r in p.routes:
        stages = [StageWords(n, f"{s.label}: {s.name}" if s.label else s.name, _names(p, list(s.asked)), s.action,
                             _timescale(s), _notified(p, s), s.clause) for n, s in enumerate(r.stages, start=1)]
        routes.append({"route": r, "default": r is p.default_route, "stages": stages})
    return routes


def config_result(application_config_dir: Any) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    """(errors, warnings) of the configuration as ``escalations config check`` reads it."""
    from escalations.cli.policy import placeholder_warnings

    try:
        cfg = load_config(application_config_dir)
    except ConfigError as exc:
        return list(exc.issues), []
    return [], [*cfg.warnings, *placeholder_warnings(application_config_dir)]


def _calculator(request: Request, p: Partnership) -> tuple[dict[str, str], list[StagePlan], str | None]:
    q = request.query_params
    values = {k: q.get(k, "") for k in ("opened_date", "opened_time", "child_status", "needed_by", "immediate_risk")}
    if not values["opened_date"]:
        return values, [], None
    try:
        opened = datetime.combine(date.fromisoformat(values["opened_date"]),
                                  time.fromisoformat(values["opened_time"] or "10:00"), tzinfo=LONDON)
        needed = date.fromisoformat(values["needed_by"]) if values["needed_by"] else None
    except ValueError:
        return values, [], "Enter the date as YYYY-MM-DD and the time as HH:MM"
    status = values["child_status"] if values["child_status"] in CHILD_STATUSES else None
    plans = timeline(p, opened, child_status=status, needed_by=needed,
                     immediate_risk=values["immediate_risk"] == "yes")
    return values, plans, None


def policy_index(request: Request) -> Response:
    user = require(request, *STAFF)
    app = application(request)
    mine = [p for pid, p in sorted(app.config.partnerships.items()) if pid in user.partnerships]
    errors, warnings = config_result(app.settings.config_dir)
    return page(request, "pages/policy_index.html.j2", "policy", {"partnerships": mine, "config_errors": errors,
                                                                  "config_warnings": warnings})


def policy_page(request: Request) -> Response:
    user = require(request, *STAFF)
    app = application(request)
    pid = request.path_params["pid"]
    p = app.config.partnerships.get(pid)
    if p is None or pid not in user.partnerships:
        raise CaseNotFound()
    values, plans, error = _calculator(request, p)
    return page(request, "pages/policy.html.j2", "policy", {
        "p": p, "routes": ladder(p), "values": values, "plans": plans, "calc_error": error,
        "child_statuses": CHILD_STATUS,
        "immediate": p.immediate_risk, "immediate_asked": _names(p, list(p.immediate_risk.asked))
        if p.immediate_risk else ""})


routes = [Route("/policy", policy_index, name="policy"), Route("/policy/{pid}", policy_page, name="policy_one")]
